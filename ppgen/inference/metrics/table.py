"""The table behind ``ppgen evaluate --metrics``: every metric of a model on data."""

from __future__ import annotations

__all__ = [
    "METRICS",
    "format_table",
    "metrics_table",
]

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ppgen.datasets.base import Dataset
from ppgen.inference.likelihood import Evaluation
from ppgen.inference.metrics.base import MetricError, _generator
from ppgen.inference.metrics.features import FeatureSpec
from ppgen.inference.metrics.registry import METRICS, MetricInputs, Row, resolve_names
from ppgen.models.base import AbstractGenerativeModel


@torch.no_grad()
def metrics_table(
    model: AbstractGenerativeModel,
    data: Dataset | Tensor,
    metrics: str | Sequence[str] = "all",
    *,
    seed: int = 0,
    num_samples: int = 2000,
    num_permutations: int = 200,
    evaluation: Evaluation | None = None,
    features: FeatureSpec = None,
) -> dict[str, Any]:
    """Likelihood and sample quality of a model on data, as one JSON-ready table.

    Draws ``n = min(len(data), num_samples)`` samples from the model and compares them with
    ``n`` data points (a seeded random subset when the data are larger): MMD and energy
    distance on the raw points, KID, Frechet distance and precision/recall/density/coverage on
    the features the data declare (``Dataset.feature_space``: the fixed digits classifier's for
    the digits, the raw points for the toys and by default), a classifier two-sample test, and
    mode coverage where the data declare mixture modes (``Dataset.modes``: the Gaussian-mixture
    toys). The likelihood row is of *all* of ``data``, with its kind and a bootstrap CI
    (:func:`ppgen.inference.analysis.summarize`). Each entry records how long it took. The
    metrics are those of the registry :data:`METRICS` (see
    :func:`~ppgen.inference.metrics.registry.register_metric` to add one).

    Arguments:
        model: a ppgen model.
        data: a ``ppgen.datasets.Dataset`` (a conditional model samples with its labels) or a
            tensor ``(N, *event_shape)``.
        metrics: ``"all"`` (every registered metric that applies to the data) or names from
            :data:`METRICS` or their aliases (comma string or list): likelihood, mmd, kid,
            energy, fd, c2st, prdc, modes. A metric named outright that does not apply (modes
            on data without known modes) is recorded as ``{"skipped": reason}``.
        seed: seeds sampling, subsets, permutations and bootstraps.
        num_samples: the most points per side.
        num_permutations: permutations for the MMD/KID/energy p-values.
        evaluation: an ``Evaluation`` of ``model`` on ``data`` already computed (skips
            re-scoring for the likelihood row).
        features: override the feature map of KID, FD and precision/recall (default: the
            data's declared ``feature_space``; for a bare tensor ``"auto"``, see
            :func:`~ppgen.inference.metrics.features.resolve_features`).

    Returns:
        A dict: ``{"data", "num_samples", "seed", "features", <metric>: {...}}``; print it with
        :func:`format_table`.

    Example:
        >>> import ppgen
        >>> test = ppgen.datasets.load("moons", "test")
        >>> m = ppgen.build("independent", test)
        >>> table = metrics_table(m, test, metrics="likelihood,mmd", num_samples=300)
        >>> table["mmd"]["p_value"] < 0.01, table["likelihood"]["kind"]
        (True, 'exact')
    """
    names, explicit = resolve_names(metrics)
    x_all = data.data if isinstance(data, Dataset) else data
    labels = data.labels if isinstance(data, Dataset) else None
    if tuple(x_all.shape[1:]) != tuple(model.event_shape):
        raise MetricError(
            f"data points have shape {tuple(x_all.shape[1:])} but the model's event shape is "
            f"{tuple(model.event_shape)}; pass the data the model was trained for"
        )
    g = _generator(seed)
    n = min(x_all.shape[0], int(num_samples))
    idx = torch.randperm(x_all.shape[0], generator=g)[:n]
    y = x_all[idx].float().cpu()
    context = None
    if model.conditional:
        if labels is None:
            raise MetricError("a conditional model needs a Dataset with labels for its samples")
        context = labels[idx]
    x = None
    if any(METRICS[name].needs_samples for name in names):
        was_training = model.training
        model.eval()
        try:
            x = model.sample(n, seed=seed, context=context).detach().float().cpu()
        finally:
            model.train(was_training)
    # the data declare their feature space (a bare tensor declares nothing: "auto")
    feats = features
    if feats is None:
        feats = data.feature_space if isinstance(data, Dataset) else "auto"
    table: dict[str, Any] = {
        "data": data.name if isinstance(data, Dataset) else "tensor",
        "split": data.split if isinstance(data, Dataset) else None,  # (Tensor.split is a method)
        "num_samples": n,
        "seed": seed,
        "features": feats if isinstance(feats, str) else getattr(feats, "__name__", "custom"),
    }
    inputs = MetricInputs(
        model=model,
        data=data,
        samples=x,
        reference=y,
        features=feats,
        seed=seed,
        num_permutations=num_permutations,
        evaluation=evaluation,
    )
    for name in names:
        metric = METRICS[name]
        if metric.applies is not None and not metric.applies(inputs):
            if name in explicit:  # asked for by name: say why there is no number
                table[name] = {"skipped": metric.skipped}
            continue  # through "all": left out
        start = time.perf_counter()
        entry = metric.compute(inputs)
        entry["seconds"] = time.perf_counter() - start
        table[name] = entry
    return table


def format_table(table: dict[str, Any]) -> str:
    """A :func:`metrics_table` result as aligned text, one metric per line.

    Example:
        >>> print(format_table({"data": "moons", "num_samples": 10, "seed": 0,
        ...                     "fd": {"value": 0.5, "stderr": 0.1, "p_value": None,
        ...                            "features": "raw", "num_x": 10, "num_y": 10}}))
        ... # doctest: +NORMALIZE_WHITESPACE
        sample quality on moons (10 samples vs 10 data points, seed 0)
        metric                      value       uncertainty               p-value  computed on
        Frechet distance            0.5         ± 0.1 (bootstrap)                  raw
    """

    rows: list[Row] = [("metric", "value", "uncertainty", "p-value", "computed on")]
    for name, metric in METRICS.items():  # in the registry's order
        entry = table.get(name)
        if entry is not None and "skipped" not in entry:
            rows.extend(metric.rows(entry))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    widths = [max(w, m) for w, m in zip(widths, (26, 10, 24, 7, 0), strict=True)]
    head = (
        f"sample quality on {table.get('data', '?')} ({table.get('num_samples', '?')} samples vs "
        f"{table.get('num_samples', '?')} data points, seed {table.get('seed', '?')})"
    )
    lines = [head]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
