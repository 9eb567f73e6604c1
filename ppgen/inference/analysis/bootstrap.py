"""Bootstrap confidence intervals and likelihood summaries in nats and bits/dim."""

from __future__ import annotations

__all__ = [
    "ConfidenceInterval",
    "LikelihoodSummary",
    "Method",
    "bootstrap_ci",
    "summarize",
]

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ppgen.datasets.base import Dataset
from ppgen.inference.likelihood import LN2, Evaluation

Method = Literal["bca", "percentile", "basic"]


@dataclasses.dataclass(frozen=True)
class ConfidenceInterval:
    """A statistic with its bootstrap confidence interval.

    Attributes:
        value: the statistic on the whole sample.
        low: lower end of the interval.
        high: upper end.
        level: the nominal coverage (e.g. 0.95).
        stderr: the bootstrap standard deviation of the statistic.
        method: ``"bca"``, ``"percentile"`` or ``"basic"``.
        num_bootstrap: resamples drawn.
        num_examples: the sample size.
    """

    value: float
    low: float
    high: float
    level: float
    stderr: float
    method: str
    num_bootstrap: int
    num_examples: int

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in ``[low, high]``."""
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}] ({self.level:.0%} "
            f"{self.method} bootstrap, n={self.num_examples})"
        )


def _mean(x: Tensor) -> Tensor:
    return x.mean(-1)


def _as_values(per_example: Tensor | Sequence[float] | Evaluation, what: str) -> Tensor:
    if isinstance(per_example, Evaluation):
        per_example = per_example.per_example
    values = torch.as_tensor(per_example).detach().to("cpu", torch.float64).reshape(-1)
    if values.numel() < 2:
        raise ValueError(f"{what} holds {values.numel()} value(s); a CI needs at least 2")
    if not torch.isfinite(values).all():
        raise ValueError(f"{what} holds non-finite values; remove them (or find why)")
    return values


def _data_parts(data: Dataset | Tensor) -> tuple[Tensor, Tensor | None]:
    if isinstance(data, Dataset):
        return data.data, data.labels
    if torch.is_tensor(data):
        return data, None
    raise ValueError(f"data must be a ppgen Dataset or a tensor, got {type(data).__name__}")


@torch.no_grad()
def bootstrap_ci(
    per_example: Tensor | Sequence[float] | Evaluation,
    statistic: Callable[[Tensor], Tensor] | None = None,
    *,
    level: float = 0.95,
    num_bootstrap: int = 2000,
    method: Method = "bca",
    seed: int = 0,
) -> ConfidenceInterval:
    r"""A bootstrap confidence interval for a statistic of per-example values (default: mean).

    Resamples the ``n`` values with replacement ``num_bootstrap`` times. ``"percentile"`` takes
    the :math:`\alpha/2` and :math:`1 - \alpha/2` quantiles of the resampled statistic;
    ``"basic"`` reflects them about the estimate; ``"bca"`` (the default) shifts the quantile
    levels by the bias correction :math:`z_0` and the jackknife acceleration :math:`a`, which
    makes the interval second-order accurate and transformation-respecting (Efron 1987;
    DiCiccio & Efron 1996), the better choice for skewed per-example log-likelihoods.

    Arguments:
        per_example: ``(N,)`` values (e.g. ``Evaluation.per_example``), or an ``Evaluation``.
        statistic: a function reducing the last dim, ``(..., N) -> (...)``; default the mean.
        level: the nominal coverage.
        num_bootstrap: resamples.
        method: ``"bca"``, ``"percentile"`` or ``"basic"``.
        seed: seeds the resampling.

    Returns:
        A :class:`ConfidenceInterval`.

    References:
        Efron, Better Bootstrap Confidence Intervals, JASA 1987.
        DiCiccio & Efron, Bootstrap Confidence Intervals, Statistical Science 1996.

    Example:
        >>> import torch
        >>> x = torch.randn(400, generator=torch.Generator().manual_seed(0)) + 3.0
        >>> ci = bootstrap_ci(x)
        >>> ci.contains(3.0), round(ci.stderr, 2)
        (True, 0.05)
    """
    values = _as_values(per_example, "per_example")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if num_bootstrap < 10:
        raise ValueError(f"num_bootstrap must be at least 10, got {num_bootstrap}")
    if method not in ("bca", "percentile", "basic"):
        raise ValueError(f"method must be 'bca', 'percentile' or 'basic', got {method!r}")
    stat = statistic or _mean
    n = values.numel()
    estimate = float(stat(values))
    g = torch.Generator().manual_seed(int(seed))
    chunk = max(1, 4_000_000 // n)  # resamples per block: memory O(4e6) doubles
    boot = torch.cat(
        [
            stat(values[torch.randint(n, (min(chunk, num_bootstrap - s), n), generator=g)])
            for s in range(0, num_bootstrap, chunk)
        ]
    )  # (B,)
    alpha = 1.0 - level
    probs = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)
    spread = float(boot.std())
    if spread == 0.0:  # a constant sample: no uncertainty to report
        low = high = estimate
    elif method == "percentile":
        low, high = (float(q) for q in torch.quantile(boot, probs))
    elif method == "basic":
        q_low, q_high = (float(q) for q in torch.quantile(boot, probs))
        low, high = 2 * estimate - q_high, 2 * estimate - q_low
    else:
        # bias correction: the share of resampled statistics below the estimate (ties halved)
        below = (boot < estimate).double().mean() + 0.5 * (boot == estimate).double().mean()
        eps = 1.0 / (num_bootstrap + 1)
        z0 = torch.special.ndtri(below.clamp(eps, 1 - eps))
        # acceleration from the jackknife (leave-one-out) values of the statistic
        jack = _jackknife(values, stat)
        d = jack.mean() - jack
        denom = 6.0 * d.pow(2).sum().pow(1.5)
        a = d.pow(3).sum() / denom if denom > 0 else torch.zeros((), dtype=torch.float64)
        z = torch.special.ndtri(probs)
        adjusted = torch.special.ndtr(z0 + (z0 + z) / (1 - a * (z0 + z)))
        low, high = (float(q) for q in torch.quantile(boot, adjusted))
    return ConfidenceInterval(
        value=estimate,
        low=low,
        high=high,
        level=level,
        stderr=spread,
        method=method,
        num_bootstrap=num_bootstrap,
        num_examples=n,
    )


def _jackknife(values: Tensor, stat: Callable[[Tensor], Tensor]) -> Tensor:
    """Leave-one-out values of ``stat``, ``(N,)``; closed form for the mean."""
    n = values.numel()
    if stat is _mean:
        return (values.sum() - values) / (n - 1)
    keep = ~torch.eye(n, dtype=torch.bool)
    out = []
    rows = max(1, 4_000_000 // n)
    for start in range(0, n, rows):
        mask = keep[start : start + rows]  # (R, N)
        out.append(stat(values.expand(mask.shape[0], n)[mask].reshape(mask.shape[0], n - 1)))
    return torch.cat(out)


@dataclasses.dataclass(frozen=True)
class LikelihoodSummary:
    """Mean negative log-likelihood with its standard error and bootstrap CI, in two units.

    Attributes:
        kind: ``"exact"``, ``"lower_bound"``, ``"estimate"`` (or ``"unknown"`` for bare values).
        estimator: how the per-example values were computed.
        num_examples: N.
        num_dims: D (bits/dim divides by ``D ln 2``).
        nats: mean negative log-likelihood per example, in nats.
        stderr: its standard error (sample standard deviation over sqrt N).
        ci: the bootstrap CI of ``nats``.
        bits_per_dim: ``nats / (D ln 2)``; ``bits_per_dim_stderr`` and ``bits_per_dim_ci``
            likewise (the same interval, rescaled).
        mc_stderr: the estimator's Monte Carlo standard error of ``nats`` (from the
            Evaluation; 0 for exact values, None when unknown). The CI covers the spread over
            examples only.
    """

    kind: str
    estimator: str
    num_examples: int
    num_dims: int
    nats: float
    stderr: float
    ci: ConfidenceInterval
    bits_per_dim: float
    bits_per_dim_stderr: float
    bits_per_dim_ci: ConfidenceInterval
    mc_stderr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "kind": self.kind,
            "estimator": self.estimator,
            "num_examples": self.num_examples,
            "num_dims": self.num_dims,
            "nats": self.nats,
            "stderr": self.stderr,
            "ci_low": self.ci.low,
            "ci_high": self.ci.high,
            "bits_per_dim": self.bits_per_dim,
            "bits_per_dim_stderr": self.bits_per_dim_stderr,
            "bits_per_dim_ci_low": self.bits_per_dim_ci.low,
            "bits_per_dim_ci_high": self.bits_per_dim_ci.high,
            "level": self.ci.level,
            "ci_method": self.ci.method,
            "mc_stderr": self.mc_stderr,
        }

    def __str__(self) -> str:
        b, c = self.bits_per_dim_ci, self.ci
        return (
            f"{self.bits_per_dim:.4f} ± {self.bits_per_dim_stderr:.4f} bits/dim, "
            f"{b.level:.0%} CI [{b.low:.4f}, {b.high:.4f}]; {self.nats:.3f} ± {self.stderr:.3f} "
            f"nats, CI [{c.low:.3f}, {c.high:.3f}] ({self.kind}, {self.estimator}, "
            f"n={self.num_examples}"
            + ("" if not self.mc_stderr else f"; Monte Carlo ± {self.mc_stderr:.3f} nats")
            + ")"
        )


def _rescaled(ci: ConfidenceInterval, scale: float) -> ConfidenceInterval:
    """The interval of ``scale * statistic`` (``scale > 0``)."""
    return dataclasses.replace(
        ci,
        value=ci.value * scale,
        low=ci.low * scale,
        high=ci.high * scale,
        stderr=ci.stderr * scale,
    )


def summarize(
    evaluation: Evaluation | Tensor,
    *,
    num_dims: int | None = None,
    level: float = 0.95,
    num_bootstrap: int = 2000,
    method: Method = "bca",
    seed: int = 0,
) -> LikelihoodSummary:
    """Standard error and bootstrap CI of the mean negative log-likelihood, nats and bits/dim.

    Arguments:
        evaluation: an :class:`~ppgen.inference.likelihood.Evaluation` (from
            ``ppgen.evaluate``), or bare per-example log-likelihoods ``(N,)`` in nats.
        num_dims: D, required with bare values (an Evaluation knows it).
        level: the CI's nominal coverage.
        num_bootstrap: bootstrap resamples.
        method: the bootstrap CI method (see :func:`bootstrap_ci`).
        seed: seeds the bootstrap.

    Returns:
        A :class:`LikelihoodSummary`.

    Example:
        >>> import ppgen
        >>> test = ppgen.datasets.load("digits", "test")
        >>> m = ppgen.build("independent", test)  # uniform over 17 levels: log2(17) bits/dim
        >>> s = summarize(ppgen.evaluate(m, test))
        >>> round(s.bits_per_dim, 4), s.kind, s.ci.low == s.ci.high
        (4.0875, 'exact', True)
    """
    if isinstance(evaluation, Evaluation):
        values, kind, estimator = evaluation.per_example, evaluation.kind, evaluation.estimator
        dims = evaluation.num_dims if num_dims is None else num_dims
        mc = evaluation.mc_stderr
    else:
        if num_dims is None:
            raise ValueError("pass num_dims with bare per-example values (bits/dim needs D)")
        values, kind, estimator, dims, mc = evaluation, "unknown", "given", num_dims, None
    nll = -_as_values(values, "the per-example log-likelihoods")
    ci = bootstrap_ci(nll, level=level, num_bootstrap=num_bootstrap, method=method, seed=seed)
    n = nll.numel()
    stderr = float(nll.std() / math.sqrt(n))
    scale = 1.0 / (dims * LN2)
    return LikelihoodSummary(
        kind=kind,
        estimator=estimator,
        num_examples=n,
        num_dims=dims,
        nats=ci.value,
        stderr=stderr,
        ci=ci,
        bits_per_dim=ci.value * scale,
        bits_per_dim_stderr=stderr * scale,
        bits_per_dim_ci=_rescaled(ci, scale),
        mc_stderr=mc,
    )
