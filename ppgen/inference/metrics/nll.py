"""The likelihood row of the metrics table: bits/dim and nats of all the data, with a CI."""

from __future__ import annotations

__all__: list[str] = []

from typing import Any

from ppgen.inference.analysis import summarize
from ppgen.inference.likelihood import evaluate
from ppgen.inference.metrics.registry import MetricInputs, Row, register_metric


def _likelihood_rows(lk: dict[str, Any]) -> list[Row]:
    level = f"{lk['level']:.0%}"
    return [
        (
            "NLL (bits/dim)",
            f"{lk['bits_per_dim']:.4f}",
            f"± {lk['bits_per_dim_stderr']:.4f}, {level} CI [{lk['bits_per_dim_ci_low']:.4f}"
            f", {lk['bits_per_dim_ci_high']:.4f}]",
            "",
            f"{lk['kind']} ({lk['estimator']}), n={lk['num_examples']}",
        ),
        (
            "NLL (nats)",
            f"{lk['nats']:.3f}",
            f"± {lk['stderr']:.3f}, {level} CI [{lk['ci_low']:.3f}, {lk['ci_high']:.3f}]",
            "",
            lk["kind"],
        ),
    ]


@register_metric("likelihood", rows=_likelihood_rows, aliases=("nll",), needs_samples=False)
def _likelihood_entry(inputs: MetricInputs) -> dict[str, Any]:
    """The labelled likelihood of *all* the data (kind, estimator) with a bootstrap CI
    (:func:`ppgen.inference.analysis.summarize`); reuses ``evaluation`` when given."""
    ev = inputs.evaluation
    if ev is None:
        ev = evaluate(inputs.model, inputs.data, seed=inputs.seed)
    return summarize(ev, seed=inputs.seed).to_dict()
