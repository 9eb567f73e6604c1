r"""2-D toy densities with seedable samplers and, where analytic, their true log-density.

Every toy has fixed split sizes (train 10,000, val 2,000, test 5,000, see :data:`SPLIT_SIZES`)
drawn with fixed seeds, so a split is the same on every machine. Each sampler draws i.i.d.
points, so a split is an i.i.d. sample of the density below.

======================  ===================================================  ==========  =========
name                    density                                              log p       entropy
======================  ===================================================  ==========  =========
``moons``               scikit-learn ``make_moons(noise=0.05)``              none        none
``8gaussians``          8 Gaussians, std 0.1, on the circle of radius 2      analytic    closed
``grid25``              5x5 Gaussians, std 0.05, centers ``{-4,-2,0,2,4}^2``  analytic    closed
``checkerboard``        uniform on the 8 dark cells of a 4x4 board           analytic    closed
``rings``               4 circles (radii 0.75..3), Gaussian noise 0.08       analytic    numerical
``pinwheel``            5 spiral arms (Johnson et al. 2016; FFJORD's)        none        none
``2spirals``            2 interleaved spirals (FFJORD's)                     none        none
======================  ===================================================  ==========  =========

*closed*: the entropy of a well-separated Gaussian mixture is
:math:`\log K + 1 + \log(2\pi\sigma^2)` up to the overlap of the components, whose contribution
is below 1e-10 nats here (the nearest centers are 15 and 40 standard deviations apart);
the checkerboard's is :math:`\log 8` exactly. *numerical*: the rings' entropy is the radial
integral :math:`-\int_0^\infty 2\pi\rho\, p(\rho) \log p(\rho)\, d\rho` computed with adaptive
quadrature (``scipy.integrate.quad``, absolute error below 1e-9 nats).

The samplers follow the conventions of FFJORD (Grathwohl et al. 2019, arXiv:1810.01367) with two
changes that make every toy an i.i.d. draw: the rings' angles and circles and the pinwheel's arms
are drawn at random instead of evenly, so the rings' density is the exact mixture below.

Example:
    >>> from ppgen.datasets import toy
    >>> x = toy.sample_toy("grid25", 1000, seed=0)
    >>> centers, std = toy.mixture_modes("grid25")
    >>> x.shape, centers.shape, std
    (torch.Size([1000, 2]), torch.Size([25, 2]), 0.05)
"""

from __future__ import annotations

__all__ = [
    "SPLIT_SIZES",
    "TOY_DATASETS",
    "load_toy",
    "mixture_modes",
    "sample_toy",
    "toy_entropy",
    "toy_log_prob",
]

import math
import zlib
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ppgen.datasets.base import Dataset
from ppgen.datasets.validation import DataError

SPLIT_SIZES = {"train": 10_000, "val": 2_000, "test": 5_000}
_SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}

Sampler = Callable[[int, np.random.RandomState], np.ndarray]
LogProb = Callable[[Tensor], Tensor]


# ---- moons ------------------------------------------------------------------------------------


def _moons(n: int, rng: np.random.RandomState) -> np.ndarray:
    from sklearn.datasets import make_moons

    x, _ = make_moons(n, noise=0.05, random_state=rng)
    return x


# ---- Gaussian mixtures: 8gaussians, grid25 ----------------------------------------------------

_8G_CENTERS = (
    np.array([(math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)) for k in range(8)])
    * 2.0
)
_8G_STD = 0.1
# 5x5 grid of spacing 2 with std 0.05, as in VEEGAN (arXiv:1705.07761) and PacGAN (1712.04086).
_GRID_CENTERS = np.array([(i, j) for i in range(-4, 5, 2) for j in range(-4, 5, 2)], dtype=float)
_GRID_STD = 0.05
_MIXTURES = {"8gaussians": (_8G_CENTERS, _8G_STD), "grid25": (_GRID_CENTERS, _GRID_STD)}


def _mixture_sampler(centers: np.ndarray, std: float) -> Sampler:
    def sample(n: int, rng: np.random.RandomState) -> np.ndarray:
        k = rng.randint(0, len(centers), size=n)
        return centers[k] + std * rng.randn(n, 2)

    return sample


def _mixture_log_prob(centers_np: np.ndarray, std: float) -> LogProb:
    def log_prob(x: Tensor) -> Tensor:
        centers = torch.as_tensor(centers_np, dtype=x.dtype, device=x.device)
        sq = ((x[:, None, :] - centers[None]) ** 2).sum(-1)  # (N, K)
        log_comp = -0.5 * sq / std**2 - math.log(2 * math.pi * std**2)
        return torch.logsumexp(log_comp, dim=1) - math.log(len(centers_np))

    return log_prob


def _mixture_entropy(centers: np.ndarray, std: float) -> float:
    # well-separated isotropic mixture: log K + entropy of one 2-D Gaussian
    return math.log(len(centers)) + 1.0 + math.log(2 * math.pi * std**2)


# ---- checkerboard -----------------------------------------------------------------------------


def _checkerboard(n: int, rng: np.random.RandomState) -> np.ndarray:
    x1 = rng.rand(n) * 4 - 2
    x2 = rng.rand(n) - rng.randint(0, 2, n) * 2 + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1)


def _checkerboard_log_prob(x: Tensor) -> Tensor:
    # uniform (1/8) on the cells of [-2, 2)^2 whose floor(x1) + floor(x2) is even
    inside = ((x >= -2) & (x < 2)).all(dim=1)
    dark = torch.remainder(torch.floor(x).sum(dim=1), 2) == 0
    out = torch.full_like(x[:, 0], -math.inf)
    return out.masked_fill(inside & dark, -math.log(8.0))


# ---- rings ------------------------------------------------------------------------------------

_RING_RADII = (0.75, 1.5, 2.25, 3.0)
_RING_STD = 0.08


def _rings(n: int, rng: np.random.RandomState) -> np.ndarray:
    radius = np.asarray(_RING_RADII)[rng.randint(0, len(_RING_RADII), size=n)]
    angle = rng.rand(n) * 2 * math.pi
    circle = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return circle + _RING_STD * rng.randn(n, 2)


def _rings_log_prob(x: Tensor) -> Tensor:
    r"""A circle of radius r with a uniform angle, convolved with N(0, s^2 I), has density
    :math:`\frac{1}{2\pi s^2} e^{-(\rho^2 + r^2)/2s^2} I_0(\rho r / s^2)` at radius :math:`\rho`;
    written with the scaled Bessel function ``i0e`` so that it never overflows."""
    rho = x.norm(dim=1)[:, None]  # (N, 1)
    r = torch.as_tensor(_RING_RADII, dtype=x.dtype, device=x.device)[None]  # (1, 4)
    s2 = _RING_STD**2
    log_comp = (
        -math.log(2 * math.pi * s2)
        - (rho - r) ** 2 / (2 * s2)
        + torch.log(torch.special.i0e(rho * r / s2))
    )
    return torch.logsumexp(log_comp, dim=1) - math.log(len(_RING_RADII))


# -int_0^inf 2 pi rho p(rho) log p(rho) d rho by scipy.integrate.quad (epsabs=epsrel=1e-12, the
# range split at r +- 8 s around every circle); tests/datasets/test_toy.py recomputes it.
_RINGS_ENTROPY = 2.623182770300312


# ---- pinwheel, 2spirals -----------------------------------------------------------------------


def _pinwheel(n: int, rng: np.random.RandomState) -> np.ndarray:
    radial_std, tangential_std, num_arms, rate = 0.3, 0.1, 5, 0.25
    arms = np.linspace(0, 2 * math.pi, num_arms, endpoint=False)
    features = rng.randn(n, 2) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    angles = arms[rng.randint(0, num_arms, size=n)] + rate * np.exp(features[:, 0])
    cos, sin = np.cos(angles), np.sin(angles)
    # x = 2 R(angle)^T f, as FFJORD's einsum("ti,tij->tj")
    return 2 * np.stack(
        [
            features[:, 0] * cos + features[:, 1] * sin,
            -features[:, 0] * sin + features[:, 1] * cos,
        ],
        axis=1,
    )


def _two_spirals(n: int, rng: np.random.RandomState) -> np.ndarray:
    t = np.sqrt(rng.rand(n)) * 540 * (2 * math.pi) / 360
    x = np.stack([-np.cos(t) * t + rng.rand(n) * 0.5, np.sin(t) * t + rng.rand(n) * 0.5], axis=1)
    sign = np.where(rng.rand(n) < 0.5, 1.0, -1.0)[:, None]
    return sign * x / 3 + rng.randn(n, 2) * 0.1


# ---- the registry -----------------------------------------------------------------------------

# name -> (sampler, true log-density or None, entropy thunk or None)
TOY_DATASETS: dict[str, tuple[Sampler, LogProb | None, Callable[[], float] | None]] = {
    "moons": (_moons, None, None),
    "8gaussians": (
        _mixture_sampler(_8G_CENTERS, _8G_STD),
        _mixture_log_prob(_8G_CENTERS, _8G_STD),
        lambda: _mixture_entropy(_8G_CENTERS, _8G_STD),
    ),
    "grid25": (
        _mixture_sampler(_GRID_CENTERS, _GRID_STD),
        _mixture_log_prob(_GRID_CENTERS, _GRID_STD),
        lambda: _mixture_entropy(_GRID_CENTERS, _GRID_STD),
    ),
    "checkerboard": (_checkerboard, _checkerboard_log_prob, lambda: math.log(8.0)),
    "rings": (_rings, _rings_log_prob, lambda: _RINGS_ENTROPY),
    "pinwheel": (_pinwheel, None, None),
    "2spirals": (_two_spirals, None, None),
}


def _entry(name: str) -> tuple[Sampler, LogProb | None, Callable[[], float] | None]:
    if name not in TOY_DATASETS:
        raise DataError(f"unknown toy density {name!r}; known: {sorted(TOY_DATASETS)}")
    return TOY_DATASETS[name]


def sample_toy(name: str, n: int, seed: int = 0) -> Tensor:
    """Draw ``n`` i.i.d. points of toy density ``name``, reproducibly from ``seed``.

    Arguments:
        name: a key of :data:`TOY_DATASETS`.
        n: number of points.
        seed: seeds a private ``numpy.random.RandomState`` (no global state is touched).

    Returns:
        ``Tensor[n, 2]``, float32.
    """
    sampler, _, _ = _entry(name)
    if n < 1:
        raise DataError(f"sample_toy needs n >= 1, got {n}")
    return torch.as_tensor(sampler(n, np.random.RandomState(seed)), dtype=torch.float32)


def toy_log_prob(name: str) -> LogProb | None:
    """The true log-density ``x (N, 2) -> Tensor[N]`` of toy ``name`` in nats, or None where it
    is not analytic. The checkerboard's is ``-inf`` outside its support."""
    return _entry(name)[1]


def toy_entropy(name: str) -> float | None:
    """The differential entropy of toy ``name`` in nats, or None where it is not known (see the
    module docstring for which values are closed-form and which are numerical)."""
    thunk = _entry(name)[2]
    return None if thunk is None else float(thunk())


def mixture_modes(name: str) -> tuple[Tensor, float]:
    """The modes of a Gaussian-mixture toy, for mode-coverage metrics.

    Arguments:
        name: ``"8gaussians"`` or ``"grid25"``.

    Returns:
        ``(centers Tensor[K, 2] float32, std)``: the K component means and their common
        standard deviation.
    """
    if name not in _MIXTURES:
        raise DataError(
            f"{name!r} is not a Gaussian-mixture toy; mixture_modes knows {sorted(_MIXTURES)}"
        )
    centers, std = _MIXTURES[name]
    return torch.as_tensor(centers, dtype=torch.float32), float(std)


def load_toy(name: str, split: str) -> Dataset:
    """The split (``"train"``, ``"val"`` or ``"test"``) of toy density ``name``.

    Its declarations for sample-quality metrics: features are the raw 2-D coordinates, and the
    Gaussian-mixture toys carry their :func:`mixture_modes` (for mode coverage)."""
    sampler, log_prob, _ = _entry(name)
    seed = (zlib.crc32(name.encode()) % 100_000) * 10 + _SPLIT_SEEDS[split]  # stable per name
    x = sampler(SPLIT_SIZES[split], np.random.RandomState(seed))
    return Dataset(
        name,
        torch.as_tensor(x, dtype=torch.float32),
        "continuous",
        None,
        split,
        true_log_prob=log_prob,
        entropy=toy_entropy(name),
        feature_space="raw",
        modes=mixture_modes(name) if name in _MIXTURES else None,
    )
