"""Paired comparison of two models' per-example log-likelihoods on shared data."""

from __future__ import annotations

__all__ = [
    "Comparison",
    "MixedKindsError",
    "compare",
]

import dataclasses
import math
from typing import Any

from torch import Tensor

from ppgen.datasets.base import Dataset
from ppgen.inference.analysis.bootstrap import (
    ConfidenceInterval,
    _as_values,
    bootstrap_ci,
)
from ppgen.inference.likelihood import LN2, BoundCheck, Evaluation, check_bound, evaluate
from ppgen.models.base import AbstractGenerativeModel


class MixedKindsError(ValueError):
    """Raised when asked to compare values of different kinds (exact vs bound/estimate)."""


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A paired comparison of two models' per-example log-likelihoods on the same data.

    Attributes:
        name_a: the first model's label; ``name_b`` the second's.
        kind_a: the kind of the first model's values; ``kind_b`` the second's.
        num_examples: N, the shared test points.
        num_dims: D.
        mean_difference: mean of ``log p_a(x_i) - log p_b(x_i)`` in nats (> 0: A is better).
        stderr: its standard error (paired: the standard deviation of the differences / sqrt N).
        ci: the bootstrap CI of ``mean_difference``.
        bits_per_dim_difference: ``mean_difference / (D ln 2)`` (> 0: A is better).
        t_statistic: the paired t statistic; ``p_value`` its two-sided p-value (N - 1 dof).
        wilcoxon_p_value: the two-sided Wilcoxon signed-rank p-value (no normality assumed).
        mixed_kinds: True when the kinds differ (only with ``allow_mixed_kinds=True``, or a
            bound against an exact value of the same model).
        note: what the difference means given the kinds.
        mc_stderr: the Monte Carlo standard error of ``mean_difference`` (the two estimators'
            own noise, independent of the spread over examples; 0 for two exact values, None
            when either was not measured).
        bound_check: for a lower bound against an exact value of the *same* model, whether the
            bound lands on the wrong side of it beyond its Monte Carlo error
            (:func:`~ppgen.inference.likelihood.check_bound`); None otherwise.
    """

    name_a: str
    name_b: str
    kind_a: str
    kind_b: str
    num_examples: int
    num_dims: int
    mean_difference: float
    stderr: float
    ci: ConfidenceInterval
    bits_per_dim_difference: float
    t_statistic: float
    p_value: float
    wilcoxon_p_value: float
    mixed_kinds: bool
    note: str
    mc_stderr: float | None = None
    bound_check: BoundCheck | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["ci"] = self.ci.to_dict()
        out["bound_check"] = None if self.bound_check is None else self.bound_check.to_dict()
        return out

    def __str__(self) -> str:
        better = self.name_a if self.mean_difference > 0 else self.name_b
        c = self.ci
        lines = [
            f"paired comparison on {self.num_examples} examples: {self.name_a} ({self.kind_a}) "
            f"vs {self.name_b} ({self.kind_b})",
            f"  mean log p_a - log p_b = {self.mean_difference:.4f} ± {self.stderr:.4f} nats "
            f"({self.bits_per_dim_difference:+.5f} bits/dim)" + _mc(self.mc_stderr),
            f"  {c.level:.0%} {c.method} bootstrap CI [{c.low:.4f}, {c.high:.4f}] nats",
            f"  paired t = {self.t_statistic:.3f}, p {_p(self.p_value)}; Wilcoxon signed-rank "
            f"p {_p(self.wilcoxon_p_value)}",
            f"  higher likelihood: {better}"
            + ("" if self.p_value < 1 - c.level else " (not significant at this level)"),
            f"  note: {self.note}",
        ]
        if self.mixed_kinds and self.bound_check is None:
            lines.insert(1, "  WARNING: mixed kinds were compared on request (see note)")
        if self.bound_check is not None:
            prefix = "  WARNING: " if self.bound_check.wrong_side else "  same model: "
            lines.append(prefix + str(self.bound_check))
        return "\n".join(lines)


def _mc(mc_stderr: float | None) -> str:
    if mc_stderr is None:
        return "; Monte Carlo error not measured"
    if mc_stderr == 0.0:
        return ""
    return f"; Monte Carlo ± {mc_stderr:.4f} nats"


def _p(p: float) -> str:
    """``= 0.012`` or, for a p-value that underflowed to 0, ``< 1e-300``."""
    return "< 1e-300" if p == 0.0 else f"= {p:.3g}"


def _kind_note(kind_a: str, kind_b: str) -> str:
    if kind_a == kind_b == "exact":
        return "both values are exact: the difference is the exact per-example log-ratio"
    if kind_a == kind_b == "lower_bound":
        return (
            "both values are lower bounds: their difference is neither a bound nor an estimate "
            "of the true difference (each bound has its own gap)"
        )
    if kind_a == kind_b:
        return f"both values are of kind {kind_a!r}: estimator noise adds to the difference"
    if kind_a == "exact" and kind_b == "lower_bound":
        return (
            "MIXED: A is exact, B a lower bound, so the difference over-states A's advantage: "
            "it is an upper bound on the true difference"
        )
    if kind_a == "lower_bound" and kind_b == "exact":
        return (
            "MIXED: A is a lower bound, B exact, so the difference under-states A's advantage: "
            "it is a lower bound on the true difference"
        )
    return f"MIXED: A is {kind_a!r}, B is {kind_b!r}: the difference has no guaranteed direction"


def _name(model: Any, default: str) -> str:
    if isinstance(model, AbstractGenerativeModel):
        return type(model).__name__
    return default


def compare(
    model_a: AbstractGenerativeModel | Evaluation,
    model_b: AbstractGenerativeModel | Evaluation,
    data: Dataset | Tensor | None = None,
    *,
    estimator: str = "auto",
    allow_mixed_kinds: bool = False,
    level: float = 0.95,
    num_bootstrap: int = 2000,
    seed: int = 0,
    names: tuple[str, str] | None = None,
    same_model: bool = False,
    **options: Any,
) -> Comparison:
    r"""Paired comparison of two models on the same data: mean difference, CI and tests.

    With :math:`d_i = \log p_A(x_i) - \log p_B(x_i)` on shared test points, reports
    :math:`\bar d` with its paired standard error :math:`s_d / \sqrt N`, a bootstrap CI (BCa),
    the paired t-test and the Wilcoxon signed-rank test. Pairing removes the variance the two
    models share (hard test points are hard for both), so it detects far smaller differences
    than comparing two error bars.

    Values of different kinds (an exact log-likelihood against a lower bound or an estimate)
    are refused with a :class:`MixedKindsError` unless ``allow_mixed_kinds=True``; the result
    then says so (``mixed_kinds``, ``note``, and a warning line in its text).

    When A and B are the same model (``same_model=True``, e.g. two Evaluations of one model),
    one scored exactly and one by a lower bound (say an ELBO against the exact log p), the
    bound must not land above the exact value: the result's ``bound_check`` says whether it
    does beyond the bound's Monte Carlo error (a fault) or within it (noise), and a wrong side
    is printed as a warning. Such a pair is compared without ``allow_mixed_kinds``.

    Arguments:
        model_a: a ppgen model, or an ``Evaluation`` already computed on ``data``.
        model_b: likewise.
        data: the shared test data (a ``Dataset`` or a tensor); not needed for two Evaluations.
        estimator: passed to :func:`ppgen.evaluate` for models.
        allow_mixed_kinds: compare values of different kinds anyway (labelled in the result).
        level: the CI's nominal coverage.
        num_bootstrap: bootstrap resamples.
        seed: seeds the evaluation (stochastic estimators) and the bootstrap.
        names: labels for A and B (default: their class names).
        same_model: A and B are one model scored two ways (enables ``bound_check``).
        **options: estimator options for :func:`ppgen.evaluate` (e.g. ``num_particles``).

    Returns:
        A :class:`Comparison`; ``print`` it for a readable report.

    Example:
        >>> import ppgen
        >>> train = ppgen.datasets.load("moons", "train")
        >>> test = ppgen.datasets.load("moons", "test")
        >>> a = ppgen.build("independent", train, components=4)
        >>> a.initialize(train.data)  # mixture components spread over each coordinate's range
        >>> b = ppgen.build("independent", train)  # N(0, 1) per dimension
        >>> c = compare(a, b, test, names=("spread", "standard"))
        >>> c.mean_difference > 0, c.p_value < 1e-6, c.kind_a
        (True, True, 'exact')
    """
    from scipy import stats

    evs = []
    for model, label in ((model_a, "model_a"), (model_b, "model_b")):
        if isinstance(model, Evaluation):
            evs.append(model)
        elif isinstance(model, AbstractGenerativeModel):
            if data is None:
                raise ValueError(f"pass data to evaluate {label} on")
            evs.append(evaluate(model, data, estimator=estimator, seed=seed, **options))
        else:
            raise ValueError(
                f"{label} must be a ppgen model or an Evaluation, got {type(model).__name__}"
            )
    ev_a, ev_b = evs
    if ev_a.num_examples != ev_b.num_examples:
        raise ValueError(
            f"the two evaluations hold {ev_a.num_examples} and {ev_b.num_examples} examples; a "
            "paired comparison needs the same test points, in the same order"
        )
    if ev_a.num_dims != ev_b.num_dims:
        raise ValueError(f"the models score data of {ev_a.num_dims} and {ev_b.num_dims} dims")
    mixed = ev_a.kind != ev_b.kind
    bound_vs_exact = same_model and {ev_a.kind, ev_b.kind} == {"exact", "lower_bound"}
    if mixed and not allow_mixed_kinds and not bound_vs_exact:
        raise MixedKindsError(
            f"model A's values are {ev_a.kind!r} ({ev_a.estimator}) but model B's are "
            f"{ev_b.kind!r} ({ev_b.estimator}): their difference is not a difference of "
            "log-likelihoods. Evaluate both with the same kind of estimator, or pass "
            "allow_mixed_kinds=True (CLI: --allow-mixed-kinds) to compare them anyway; the "
            "result is then labelled as mixed"
        )
    d = _as_values(ev_a.per_example - ev_b.per_example, "the per-example differences")
    n = d.numel()
    ci = bootstrap_ci(d, level=level, num_bootstrap=num_bootstrap, seed=seed)
    sd = float(d.std())
    stderr = sd / math.sqrt(n)
    if sd == 0.0:
        t_stat = 0.0 if float(d.mean()) == 0.0 else math.copysign(math.inf, float(d.mean()))
        p_t = 1.0 if t_stat == 0.0 else 0.0
    else:
        t_stat = float(d.mean()) / stderr
        p_t = float(2 * stats.t.sf(abs(t_stat), df=n - 1))
    nonzero = d[d != 0].numpy()
    p_w = float(stats.wilcoxon(nonzero).pvalue) if nonzero.size > 0 else 1.0
    mc = None if ev_a.mc_stderr is None or ev_b.mc_stderr is None else math.hypot(
        ev_a.mc_stderr, ev_b.mc_stderr)
    check, note = None, _kind_note(ev_a.kind, ev_b.kind)
    if bound_vs_exact:
        bound, exact = (ev_a, ev_b) if ev_a.kind == "lower_bound" else (ev_b, ev_a)
        check = check_bound(bound, exact)
        note = (
            "one model, scored by a lower bound and exactly: the difference is the bound's gap "
            "(bound - exact <= 0, up to the bound's Monte Carlo error)"
        )
    name_a, name_b = names or (_name(model_a, "A"), _name(model_b, "B"))
    if name_a == name_b and names is None:
        name_a, name_b = f"A ({name_a})", f"B ({name_b})"
    return Comparison(
        name_a=name_a,
        name_b=name_b,
        kind_a=ev_a.kind,
        kind_b=ev_b.kind,
        num_examples=n,
        num_dims=ev_a.num_dims,
        mean_difference=ci.value,
        stderr=stderr,
        ci=ci,
        bits_per_dim_difference=ci.value / (ev_a.num_dims * LN2),
        t_statistic=t_stat,
        p_value=p_t,
        wilcoxon_p_value=p_w,
        mixed_kinds=mixed,
        note=note,
        mc_stderr=mc,
        bound_check=check,
    )

