"""Calibration of a density: highest-density-region coverage and marginal PIT."""

from __future__ import annotations

__all__ = [
    "HDRCoverage",
    "PIT",
    "hdr_coverage",
    "pit",
]

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ppgen.datasets.base import Dataset
from ppgen.inference.analysis.bootstrap import (
    _data_parts,
)
from ppgen.inference.likelihood import evaluate
from ppgen.models.base import AbstractGenerativeModel


def _draw(
    model: AbstractGenerativeModel, n: int, labels: Tensor | None, seed: int
) -> tuple[Tensor, Tensor | None]:
    """``n`` samples; a conditional model gets the data's labels, cycled, as context."""
    context = None
    if model.conditional:
        if labels is None:
            raise ValueError(
                f"{type(model).__name__} is conditional: pass a Dataset with labels, so samples "
                "can be drawn with the data's contexts"
            )
        context = labels[torch.arange(n) % labels.shape[0]]
    with torch.no_grad():
        x = model.sample(n, seed=seed, context=context)
    return x.detach(), context


@dataclasses.dataclass(frozen=True)
class HDRCoverage:
    """Highest-density-region coverage of a density on data (see :func:`hdr_coverage`).

    Attributes:
        levels: the HDR probability levels alpha, ``(L,)``.
        coverage: the share of data points inside each alpha-HDR, ``(L,)``.
        stderr: the binomial standard error of each coverage under calibration,
            ``sqrt(alpha (1 - alpha) (1/N + 1/S))`` (data and threshold sampling).
        thresholds: the log-density thresholds ``t_alpha`` (nats), ``(L,)``.
        p_value: two-sample Kolmogorov-Smirnov p-value between the log-densities of the data
            and of the model's samples (uniform under calibration).
        max_deviation: the largest ``|coverage - alpha|`` over the levels.
        num_examples: N data points; ``num_samples`` S model samples.
        kind: the kind of the log-density values used as the score.
    """

    levels: tuple[float, ...]
    coverage: tuple[float, ...]
    stderr: tuple[float, ...]
    thresholds: tuple[float, ...]
    p_value: float
    max_deviation: float
    num_examples: int
    num_samples: int
    kind: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def __str__(self) -> str:
        rows = ", ".join(
            f"{a:.2f}: {c:.3f}" for a, c in zip(self.levels, self.coverage, strict=True)
        )
        return (
            f"HDR coverage (level: share of data inside) {rows}; max |coverage - level| = "
            f"{self.max_deviation:.3f}, KS p = {self.p_value:.3g} (N={self.num_examples}, "
            f"S={self.num_samples}, {self.kind})"
        )


_LEVELS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@torch.no_grad()
def hdr_coverage(
    model: AbstractGenerativeModel,
    data: Dataset | Tensor,
    levels: Sequence[float] = _LEVELS,
    *,
    num_samples: int = 10_000,
    estimator: str = "auto",
    seed: int = 0,
    **options: Any,
) -> HDRCoverage:
    r"""Calibration of a density: the share of data inside its alpha-HDR, against alpha.

    The alpha highest-density region is :math:`\{x : \log p(x) \ge t_\alpha\}` with
    :math:`t_\alpha` the :math:`(1 - \alpha)`-quantile of :math:`\log p` over ``num_samples``
    of the model's own samples, so it holds probability alpha under the model. When the data
    come from the model, the share of data points inside is alpha for every alpha (the
    calibration curve lies on the diagonal, within ``stderr``). Coverage above alpha: the model
    puts too little density where the data are dense (too broad); below: data fall in regions
    the model thinks unlikely (too narrow or missing modes).

    The check needs only a score that is computed the same way on data and samples, so it also
    runs on a bound or estimate (the HDRs are then of that score); ``kind`` records which.

    Arguments:
        model: a ppgen model that can sample and be scored by :func:`ppgen.evaluate`.
        data: the test data (a conditional model needs a Dataset with labels).
        levels: the probability levels alpha in (0, 1).
        num_samples: S, model samples that set the thresholds.
        estimator: passed to :func:`ppgen.evaluate`.
        seed: seeds sampling and the estimator.
        **options: estimator options.

    Returns:
        An :class:`HDRCoverage`.

    References:
        Hyndman, Computing and Graphing Highest Density Regions, The American Statistician 1996.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("moons", "test")
        >>> m = ppgen.build("independent", ds, components=2)
        >>> own = m.sample(2000, seed=1)  # data from the model itself: calibrated
        >>> r = hdr_coverage(m, own, levels=[0.5, 0.9], num_samples=4000)
        >>> all(abs(c - a) < 4 * s for a, c, s in zip(r.levels, r.coverage, r.stderr))
        True
    """
    from scipy.stats import ks_2samp

    alphas = torch.tensor([float(a) for a in levels], dtype=torch.float64)
    if alphas.numel() == 0 or not ((alphas > 0) & (alphas < 1)).all():
        raise ValueError(f"levels must be numbers in (0, 1), got {list(levels)}")
    if num_samples < 10:
        raise ValueError(f"num_samples must be at least 10, got {num_samples}")
    x, labels = _data_parts(data)
    samples, context = _draw(model, num_samples, labels, seed)
    options = {"mc_examples": 0, **options}  # per-example values only: no Monte Carlo error
    ev_data = evaluate(model, data, estimator=estimator, seed=seed, **options)
    ev_model = evaluate(
        model, samples, estimator=estimator, seed=seed + 1, context=context, **options
    )
    s_data, s_model = ev_data.per_example, ev_model.per_example
    thresholds = torch.quantile(s_model, 1 - alphas)  # (L,)
    coverage = (s_data[None, :] >= thresholds[:, None]).double().mean(1)  # (L,)
    n, s = s_data.numel(), s_model.numel()
    stderr = (alphas * (1 - alphas) * (1 / n + 1 / s)).sqrt()
    return HDRCoverage(
        levels=tuple(alphas.tolist()),
        coverage=tuple(coverage.tolist()),
        stderr=tuple(stderr.tolist()),
        thresholds=tuple(thresholds.tolist()),
        p_value=float(ks_2samp(s_data.numpy(), s_model.numpy()).pvalue),
        max_deviation=float((coverage - alphas).abs().max()),
        num_examples=n,
        num_samples=s,
        kind=ev_data.kind,
    )


@dataclasses.dataclass(frozen=True)
class PIT:
    """Probability integral transform of each 1-D marginal (see :func:`pit`).

    Attributes:
        values: ``(N, D)`` PIT values, uniform on (0, 1) per dimension under calibration.
        p_values: ``(D,)`` Kolmogorov-Smirnov p-values of uniformity per dimension.
        p_value: Bonferroni-combined p-value ``min(1, D * min p_d)``.
        num_samples: S model samples behind the marginal CDFs.
    """

    values: Tensor
    p_values: Tensor
    p_value: float
    num_samples: int

    def histogram(self, bins: int = 10) -> Tensor:
        """Counts of PIT values in ``bins`` equal bins of (0, 1), per dimension: ``(D, bins)``."""
        idx = (self.values * bins).long().clamp_(0, bins - 1)  # (N, D)
        counts = torch.zeros(self.values.shape[1], bins, dtype=torch.long)
        return counts.scatter_add_(1, idx.T, torch.ones_like(idx.T))

    def __str__(self) -> str:
        return (
            f"PIT over {self.values.shape[1]} marginal(s) of {self.values.shape[0]} points: "
            f"min KS p = {float(self.p_values.min()):.3g}, Bonferroni p = {self.p_value:.3g} "
            f"(S={self.num_samples})"
        )


@torch.no_grad()
def pit(
    model: AbstractGenerativeModel,
    data: Dataset | Tensor,
    *,
    num_samples: int = 10_000,
    seed: int = 0,
) -> PIT:
    r"""Probability integral transform of the data under each 1-D marginal of the model.

    The marginal CDF of dimension d is the empirical CDF of ``num_samples`` model samples; the
    randomized rank :math:`u = (\#\{s < x\} + V (\#\{s = x\} + 1)) / (S + 1)`,
    :math:`V \sim U(0, 1)`, is *exactly* uniform when the data come from the model, for
    continuous and discrete data alike (ties are broken at random). A U-shaped histogram means
    a marginal too narrow; a hump, too wide; a slope, shifted.

    Arguments:
        model: a ppgen model that can sample.
        data: the test data (flattened to ``(N, D)``).
        num_samples: S.
        seed: seeds sampling and the tie-breaking.

    Returns:
        A :class:`PIT`.

    References:
        Gneiting, Balabdaoui & Raftery, Probabilistic forecasts, calibration and sharpness,
        JRSS-B 2007.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("moons", "test")
        >>> m = ppgen.build("independent", ds)
        >>> r = pit(m, m.sample(500, seed=3), num_samples=2000)
        >>> r.values.shape, r.p_value > 0.01
        (torch.Size([500, 2]), True)
    """
    from scipy.stats import kstest

    x, labels = _data_parts(data)
    samples, _ = _draw(model, num_samples, labels, seed)
    flat_x = x.reshape(x.shape[0], -1).to("cpu", torch.float64)  # (N, D)
    flat_s = samples.reshape(num_samples, -1).to("cpu", torch.float64)  # (S, D)
    if flat_s.shape[1] != flat_x.shape[1]:
        raise ValueError(f"data have {flat_x.shape[1]} dims but samples {flat_s.shape[1]}")
    sorted_s = flat_s.T.contiguous().sort(dim=1).values  # (D, S)
    queries = flat_x.T.contiguous()  # (D, N)
    less = torch.searchsorted(sorted_s, queries, right=False)
    equal = torch.searchsorted(sorted_s, queries, right=True) - less
    g = torch.Generator().manual_seed(int(seed))
    v = torch.rand(queries.shape, generator=g, dtype=torch.float64)
    u = ((less + v * (equal + 1)) / (num_samples + 1)).T  # (N, D)
    p_values = torch.tensor([kstest(u[:, d].numpy(), "uniform").pvalue for d in range(u.shape[1])])
    return PIT(
        values=u,
        p_values=p_values,
        p_value=float(min(1.0, u.shape[1] * float(p_values.min()))),
        num_samples=num_samples,
    )
