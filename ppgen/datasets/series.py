r"""Sequences: windows of time series as datasets of shape ``(N, T, D)`` (time first).

A series is an array of shape ``(L, D)``: ``L`` rows in time, one column per variable (a 1-D
array is one variable). It becomes a :class:`SeriesDataset` by these documented rules:

**Split in time, never shuffled.** The rows are cut into three contiguous parts, the first 70%
for ``train``, the next 15% for ``val`` and the last 15% for ``test`` (``split="all"``: the
whole series). Windows are cut *inside* each part, so no window of the training split holds a
row of a later part: a model never trains on the future of what it is scored on.

**Windows.** A window is ``T`` consecutive rows (``window=T``). Training windows start every
``stride`` rows (default 1: every window); validation and test windows do not overlap
(stride ``T``), so every held-out row is scored once. A part shorter than ``T`` rows is an
error naming the part, its length and the fix.

**Standardization** (on by default): each variable is centered and scaled by the mean and
standard deviation of the *training part only*, and the same affine map is applied to every
split, so held-out rows leak nothing into the scaling. Likelihoods are of the standardized data;
``SeriesDataset.mean`` / ``std`` map back (``x * std + mean``), and the log-density of the raw
data is ``log p(standardized) - T * sum(log std)`` per window.

**Kind.** Sequences are ``"continuous"`` here (the sequence families also model discrete data,
e.g. a binary or a 17-level image row by row, through ``ppgen.datasets.from_array`` windows of
shape ``(N, T, D)``; series files are read as continuous).

**Missing values.** User series must be complete: NaN or infinite values are refused naming
the row and column (fill or interpolate them first). The embedded ``co2`` series, weekly with
gaps, is averaged by calendar month (``resample("MS").mean()``, as statsmodels' own examples do)
and the 5 months with no weekly value at all are filled by linear interpolation in time between
the neighbouring months.

**Files** (``ppgen.datasets.load("series.csv#window=24", split)``): a ``.npy``, ``.npz`` or
``.csv`` file with one column per variable and one row per time step (the rules of
:mod:`ppgen.datasets.arrays` for reading), plus the options ``window`` (required: it says the
file is a series), ``stride`` (training windows) and ``standardize`` (``true``/``false``).

Embedded series (see :data:`SERIES`): ``lorenz`` (simulated, no dependency), and ``co2``,
``sunspots``, ``elnino``, ``macro`` from ``statsmodels.datasets`` (``pip install
ppgen[sequences]``).

Example:
    >>> import numpy as np
    >>> t = np.arange(200.0)
    >>> ds = from_series(np.stack([np.sin(t / 5), np.cos(t / 7)], 1), window=10, split="test")
    >>> ds.event_shape, ds.kind, len(ds), ds.rows
    ((10, 2), 'continuous', 3, (170, 200))
"""

from __future__ import annotations

__all__ = [
    "SERIES",
    "SPLIT_FRACTIONS",
    "SeriesDataset",
    "from_series",
    "load_series",
    "lorenz_log_prob",
    "lorenz_series",
    "series_split_rows",
    "windows",
]

import dataclasses
import functools
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ppgen.datasets.base import SPLITS, Dataset
from ppgen.datasets.validation import DataError

#: Fractions of the rows in the train, val and test parts (contiguous, in this order).
SPLIT_FRACTIONS = (0.70, 0.15, 0.15)

#: The embedded series: name -> (window, description).
SERIES: dict[str, tuple[int, str]] = {
    "lorenz": (32, "noisy stochastic Lorenz-63, 3 variables, 3000 steps (simulated, seed 0)"),
    "co2": (24, "Mauna Loa CO2, monthly means of the weekly data 1958-2001 (statsmodels)"),
    "sunspots": (16, "yearly sunspot activity 1700-2008 (statsmodels)"),
    "elnino": (24, "monthly sea surface temperature, El Nino region, 1950-2010 (statsmodels)"),
    "macro": (16, "US quarterly growth of real GDP, consumption and investment in % "
                  "(100 x log-difference), 1959-2009 (statsmodels macrodata)"),
}


@dataclasses.dataclass(frozen=True, eq=False)
class SeriesDataset(Dataset):
    """A split of windows of one series (a :class:`~ppgen.datasets.Dataset` whose points are
    windows of shape ``(T, D)``), with what forecasting and scoring against the raw scale need.

    Attributes:
        series: the whole split as one standardized series, ``Tensor[L_split, D]`` (the windows
            are cut from it); for ``"test"`` scored with its history, see :attr:`history`.
        history: every row before this split (standardized), ``Tensor[L_before, D]``.
        mean: the per-variable mean the data was centered by (``Tensor[D]``; zeros if not
            standardized).
        std: the per-variable scale (``Tensor[D]``; ones if not standardized).
        rows: ``(first, end)`` row range of this split in the full series.
    """

    series: Tensor | None = None
    history: Tensor | None = None
    mean: Tensor | None = None
    std: Tensor | None = None
    rows: tuple[int, int] = (0, 0)


def windows(series: Tensor, window: int, stride: int = 1) -> Tensor:
    """Every window of ``window`` consecutive rows starting each ``stride`` rows:
    ``(L, D) -> (N, window, D)`` with ``N = (L - window) // stride + 1`` (a copy)."""
    return series.unfold(0, window, stride).permute(0, 2, 1).contiguous()


def series_split_rows(length: int, split: str) -> tuple[int, int]:
    """The ``(first, end)`` rows of ``split`` in a series of ``length`` rows
    (:data:`SPLIT_FRACTIONS`, contiguous in time)."""
    if split == "all":
        return 0, length
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {(*SPLITS, 'all')}")
    n_train = int(round(SPLIT_FRACTIONS[0] * length))
    n_val = int(round(SPLIT_FRACTIONS[1] * length))
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val),
              "test": (n_train + n_val, length)}
    return bounds[split]


def _check_count(value: Any, name: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 1:
        raise DataError(f"{what}: {name} must be a positive int, got {value!r}")
    return int(value)


def _as_series(array: Any, what: str) -> np.ndarray:
    """``array`` as a float64 ``(L, D)`` array, or a one-line :class:`DataError`."""
    if isinstance(array, list | tuple) and array and all(
        isinstance(a, list | tuple | np.ndarray) for a in array
    ):
        lengths = {len(a) if isinstance(a, list | tuple) else a.shape[0] for a in array}
        if len(lengths) > 1:
            raise DataError(
                f"{what}: ragged rows (lengths {sorted(lengths)[:5]}); a series has the same "
                "number of variables in every row: pad or drop the short rows"
            )
    try:
        x = array.detach().cpu().double().numpy() if torch.is_tensor(array) else np.asarray(array)
    except (ValueError, TypeError) as e:
        raise DataError(
            f"{what}: ragged or non-numeric series ({e}); pass one (L, D) array: rows in time, "
            "one column per variable, every row the same length"
        ) from None
    if x.dtype == object:
        raise DataError(
            f"{what}: ragged or non-numeric series (an object array); pass one (L, D) numeric "
            "array, every row the same length (several series of different lengths: load "
            "each on its own)"
        )
    if x.dtype.kind not in "biuf":
        raise DataError(f"{what}: dtype {x.dtype}; a series holds real numbers")
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise DataError(
            f"{what}: shape {x.shape}; a series is (L, D): rows in time, one column per "
            "variable (for windows already cut, (N, T, D), use ppgen.datasets.from_array)"
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{what}: empty series (shape {x.shape})")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{what}: {int(bad.sum())} missing or non-finite value(s), the first at row "
            f"{row + 1}, column {col + 1} (1-based); sequences must be complete: fill or "
            "interpolate the gaps first"
        )
    return x


def from_series(
    array: Any,
    window: int,
    split: str = "train",
    *,
    stride: int | None = None,
    standardize: bool = True,
    name: str = "series",
) -> SeriesDataset:
    """Windows of one series as a dataset, split in time (rules in the module docstring).

    Arguments:
        array: the series, shape ``(L, D)`` or ``(L,)``: rows in time, one column per variable.
        window: ``T``, the number of rows of one window (the model's sequence length).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        stride: rows between window starts (default: 1 for ``train`` and ``all``, ``window`` for
            ``val`` and ``test``).
        standardize: center and scale each variable by the training part's mean and std.
        name: the dataset's name (in errors and reports).

    Returns:
        A :class:`SeriesDataset` of ``N`` windows, ``event_shape == (window, D)``.

    Raises:
        DataError: ragged, non-numeric, empty or non-finite series; a window longer than the
            split's part; a bad window or stride.
    """
    x = _as_series(array, name)
    window = _check_count(window, "window", name)
    length = x.shape[0]
    first, end = series_split_rows(length, split)
    if stride is None:
        stride = window if split in ("val", "test") else 1
    stride = _check_count(stride, "stride", name)
    if end - first < window:
        part = "series" if split == "all" else f"{split} part (rows {first + 1}-{end})"
        raise DataError(
            f"{name}: window={window} is longer than the {part}, which has {end - first} rows "
            f"of {length}; use window <= {max(end - first, 1)} or a longer series"
        )
    if standardize:
        t0, t1 = series_split_rows(length, "train") if split != "all" else (0, length)
        train_part = x[t0:t1]
        mean = train_part.mean(0)
        std = train_part.std(0)
        if (std <= 0).any() or not np.isfinite(std).all():
            col = int(np.argmax(~(std > 0)))
            raise DataError(
                f"{name}: variable {col + 1} is constant on the training part; it cannot be "
                "standardized: drop it or pass standardize=False"
            )
    else:
        mean, std = np.zeros(x.shape[1]), np.ones(x.shape[1])
    z = (x - mean) / std
    if np.abs(z).max() > np.finfo(np.float32).max:
        raise DataError(f"{name}: values beyond the float32 range; rescale the series")
    full = torch.as_tensor(z, dtype=torch.float32)
    part = full[first:end]
    data = windows(part, window, stride)
    return SeriesDataset(
        name, data, "continuous", None, split,
        series=part, history=full[:first],
        mean=torch.as_tensor(mean, dtype=torch.float32),
        std=torch.as_tensor(std, dtype=torch.float32), rows=(first, end),
    )


# ---- embedded series ----------------------------------------------------------------------------


def lorenz_series(
    length: int = 3000,
    *,
    seed: int = 0,
    dt: float = 0.01,
    substeps: int = 5,
    process_scale: float = 1.0,
    observation_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    r"""A noisy stochastic Lorenz-63 system observed with Gaussian noise: the known generator.

    .. math::
        ds = f(s)\,dt + \sigma_p\,dW, \quad f(s) = (10 (s_2 - s_1),\ s_1 (28 - s_3) - s_2,\
        s_1 s_2 - \tfrac83 s_3), \qquad x_k = s(k\,\Delta) + \sigma_o\,\epsilon_k

    integrated by Euler-Maruyama with step ``dt``, observed every ``substeps`` steps
    (``Delta = dt * substeps``), started on the attractor after 1000 burn-in steps.
    Deterministic for a given ``seed``.

    Returns:
        ``(observations, states)``, both ``(length, 3)`` float64.
    """
    rng = np.random.RandomState(seed)
    s = np.array([1.0, 1.0, 25.0]) + rng.randn(3)

    def step(s: np.ndarray) -> np.ndarray:
        drift = np.array([10.0 * (s[1] - s[0]), s[0] * (28.0 - s[2]) - s[1],
                          s[0] * s[1] - 8.0 / 3.0 * s[2]])
        return s + drift * dt + process_scale * math.sqrt(dt) * rng.randn(3)

    for _ in range(1000):
        s = step(s)
    states = np.empty((length, 3))
    for k in range(length):
        for _ in range(substeps):
            s = step(s)
        states[k] = s
    obs = states + observation_scale * rng.randn(length, 3)
    return obs, states


def lorenz_log_prob(
    x: Any,
    *,
    particles: int = 4000,
    seed: int = 0,
    dt: float = 0.01,
    substeps: int = 5,
    process_scale: float = 1.0,
    observation_scale: float = 1.0,
) -> Tensor:
    r"""The log-density of windows of :func:`lorenz_series` observations under the true
    generator, by a bootstrap particle filter (an *estimate*: consistent as ``particles`` grows,
    biased low by Jensen's inequality for few particles).

    The first state of a window follows the system's stationary law (the 20,000 states of a
    long simulated run, seed 1, all used for the first step's predictive density); each next
    step propagates every particle by the generator's
    Euler-Maruyama substeps, weights it by the Gaussian observation density, accumulates the log
    of the mean weight (the one-step predictive density) and resamples.

    Arguments:
        x: windows in the raw units of :func:`lorenz_series`, ``(N, T, 3)``.
        particles: particles per window.
        seed: the filter's random stream.

    Returns:
        ``Tensor[N]`` of log p(window) in nats (raw units: add ``T * sum(log std)`` to score
        standardized windows).
    """
    xs = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    if xs.dim() != 3 or xs.shape[-1] != 3:
        raise DataError(f"lorenz_log_prob: windows must be (N, T, 3), got {tuple(xs.shape)}")
    g = torch.Generator().manual_seed(seed)
    _, states = lorenz_series(20000, seed=1, dt=dt, substeps=substeps,
                              process_scale=process_scale, observation_scale=observation_scale)
    pool = torch.as_tensor(states)
    n, steps, _ = xs.shape
    total = torch.zeros(n, dtype=torch.float64)
    noise = process_scale * math.sqrt(dt)
    const = -1.5 * math.log(2 * math.pi * observation_scale**2)

    def weights(t: int, s: Tensor) -> Tensor:
        resid = xs[:, t, None, :] - s
        return const - 0.5 * (resid**2).sum(-1) / observation_scale**2

    # the stationary law is invariant under the dynamics, so the first state is stationary too:
    # its predictive density is averaged over the whole pool (far less variance than P draws)
    log_w = weights(0, pool[None])  # (N, pool)
    total = total + torch.logsumexp(log_w, 1) - math.log(len(pool))
    idx = torch.multinomial(torch.softmax(log_w, 1), particles, replacement=True, generator=g)
    s = pool[idx]
    for t in range(1, steps):
        for _ in range(substeps):
            a, b, c = s[..., 0], s[..., 1], s[..., 2]
            drift = torch.stack([10.0 * (b - a), a * (28.0 - c) - b, a * b - 8.0 / 3.0 * c], -1)
            s = s + drift * dt + noise * torch.randn(s.shape, generator=g, dtype=s.dtype)
        log_w = weights(t, s)  # (N, P)
        total = total + torch.logsumexp(log_w, 1) - math.log(particles)
        idx = torch.multinomial(torch.softmax(log_w, 1), particles, replacement=True,
                                generator=g)
        s = torch.gather(s, 1, idx[..., None].expand(-1, -1, 3))
    return total


@functools.cache
def _lorenz_default() -> np.ndarray:
    return lorenz_series()[0]


def _statsmodels(name: str) -> Any:
    try:
        import statsmodels.datasets as smd
    except ImportError:
        raise DataError(
            f"the embedded series {name!r} ships with statsmodels, which is not installed: "
            "pip install 'ppgen[sequences]' (or pip install statsmodels)"
        ) from None
    return smd


def raw_series(name: str) -> np.ndarray:
    """The embedded series ``name`` (see :data:`SERIES`) as an ``(L, D)`` float64 array in its
    own units, before windowing and standardization (the module docstring says how ``co2``'s
    gaps are filled)."""
    if name == "lorenz":
        return _lorenz_default().copy()
    smd = _statsmodels(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas/statsmodels deprecation chatter
        if name == "co2":
            weekly = smd.co2.load_pandas().data["co2"]
            monthly = weekly.resample("MS").mean().interpolate(method="time")
            return monthly.to_numpy(dtype=np.float64)[:, None]
        if name == "sunspots":
            return smd.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(np.float64)[:, None]
        if name == "elnino":
            table = smd.elnino.load_pandas().data.drop(columns=["YEAR"])
            return table.to_numpy(np.float64).reshape(-1)[:, None]  # year by year, Jan..Dec
        if name == "macro":
            md = smd.macrodata.load_pandas().data[["realgdp", "realcons", "realinv"]]
            return 100.0 * np.diff(np.log(md.to_numpy(np.float64)), axis=0)
    raise DataError(f"unknown series {name!r}; embedded series: {sorted(SERIES)}")


def load_series(
    name: str, split: str = "train", *, window: int | None = None, stride: int | None = None
) -> SeriesDataset:
    """Embedded series ``name`` (:data:`SERIES`) as windows, split in time and standardized on
    the training part (module docstring). ``window`` defaults to the series' documented one."""
    if name not in SERIES:
        raise DataError(f"unknown series {name!r}; embedded series: {sorted(SERIES)}")
    default_window, _ = SERIES[name]
    return from_series(
        raw_series(name), window if window is not None else default_window, split,
        stride=stride, name=name,
    )


def _parse_bool(value: str, what: str) -> bool:
    low = value.strip().lower()
    if low in ("1", "true", "yes"):
        return True
    if low in ("0", "false", "no"):
        return False
    raise DataError(f"{what}: standardize must be true or false, got {value!r}")


def is_series_spec(name: str | Path) -> bool:
    """True when ``name`` is a file spec asking for series windows (a ``window=`` option)."""
    _, _, opts = str(name).partition("#")
    return any(o.strip().startswith("window=") for o in opts.split(","))


def load_series_file(
    spec: str | Path, split: str = "train", key: str | None = None
) -> SeriesDataset:
    """A ``.npy``/``.npz``/``.csv`` series file as windows:
    ``"path#window=T[,stride=S][,standardize=false][,key=NAME]"`` (module docstring)."""
    from ppgen.datasets import arrays

    file, options = arrays.parse_file_spec(spec, ("window", "stride", "standardize", "key"))
    what = str(file)
    key = key if key is not None else options.get("key")
    suffix = file.suffix.lower()
    if suffix not in arrays.FILE_SUFFIXES:
        raise DataError(f"{what}: unsupported series file {suffix!r}; use .npy, .npz or .csv")
    if not file.is_file():
        raise DataError(f"{what}: no such file")
    if key is not None and suffix != ".npz":
        raise DataError(f"{what}: key= selects an array of a .npz file only")
    for opt in ("window", "stride"):
        if opt in options:
            try:
                options[opt] = int(options[opt])
            except ValueError:
                raise DataError(
                    f"{what}: {opt} must be an integer, got {options[opt]!r}"
                ) from None
    standardize = _parse_bool(options.get("standardize", "true"), what)
    if suffix == ".npy":
        array = arrays._read_npy(file)
    elif suffix == ".npz":
        array, _ = arrays._read_npz(file, key)
    else:
        array, _ = arrays._read_csv(file)
    return from_series(array, options["window"], split, stride=options.get("stride"),
                       standardize=standardize, name=what)
