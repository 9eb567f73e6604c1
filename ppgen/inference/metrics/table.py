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
from ppgen.inference.likelihood import Evaluation, evaluate
from ppgen.inference.metrics.base import (
    MetricError,
    _generator,
)
from ppgen.inference.metrics.c2st import c2st
from ppgen.inference.metrics.features import FeatureSpec
from ppgen.inference.metrics.frechet import frechet_distance
from ppgen.inference.metrics.kernel import energy_distance, kid, mmd
from ppgen.inference.metrics.manifold import precision_recall
from ppgen.inference.metrics.modes import mode_coverage
from ppgen.models.base import AbstractGenerativeModel

METRICS = ("likelihood", "mmd", "kid", "energy", "fd", "prdc", "c2st", "modes")

_ALIASES = {
    "frechet": "fd",
    "frechet_distance": "fd",
    "fid": "fd",
    "precision_recall": "prdc",
    "energy_distance": "energy",
    "mode_coverage": "modes",
    "nll": "likelihood",
}


def _metric_names(metrics: str | Sequence[str]) -> list[str]:
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    names: list[str] = []
    for item in (i.strip().lower() for i in items if i.strip()):
        chosen = list(METRICS) if item == "all" else [_ALIASES.get(item, item)]
        for name in chosen:
            if name not in METRICS:
                raise MetricError(
                    f"unknown metric {item!r}; choose from 'all' or {', '.join(METRICS)} "
                    f"(aliases: {', '.join(sorted(_ALIASES))})"
                )
            if name not in names:
                names.append(name)
    if not names:
        raise MetricError("no metric named; pass 'all' or a comma list such as 'mmd,fd'")
    return names


def _mixture_modes(data: Any) -> tuple[Tensor, float] | None:
    """The centres and std of a toy mixture's modes, where ppgen.datasets knows them."""
    name = getattr(data, "name", None)
    if name is None:
        return None
    try:
        from ppgen.datasets.toy import mixture_modes  # type: ignore[attr-defined]
    except ImportError:
        return None
    try:
        centers, std = mixture_modes(name)
    except (KeyError, ValueError):
        return None
    return torch.as_tensor(centers), float(std)


def _dataset_features(data: Any) -> str:
    """The feature map the table uses for ``data``: the digits classifier for 8x8 digits."""
    kind, levels = getattr(data, "kind", None), getattr(data, "levels", None)
    shape = tuple(data.data.shape[1:]) if hasattr(data, "data") else tuple(data.shape[1:])
    if shape in ((1, 8, 8), (8, 8)):
        if kind == "binary":
            return "digits-binary"
        if kind == "discrete" and levels == 17:
            return "digits"
    return "auto" if kind is None else "raw"


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
    features (the fixed digits classifier for 8x8 digits, raw points otherwise), a classifier
    two-sample test, and mode coverage where the data are a known toy mixture. The likelihood
    row is of *all* of ``data``, with its kind and a bootstrap CI
    (:func:`ppgen.inference.analysis.summarize`). Each entry records how long it took.

    Arguments:
        model: a ppgen model.
        data: a ``ppgen.datasets.Dataset`` (a conditional model samples with its labels) or a
            tensor ``(N, *event_shape)``.
        metrics: ``"all"`` or names from :data:`METRICS` (comma string or list): likelihood,
            mmd, kid, energy, fd, prdc, c2st, modes.
        seed: seeds sampling, subsets, permutations and bootstraps.
        num_samples: the most points per side.
        num_permutations: permutations for the MMD/KID/energy p-values.
        evaluation: an ``Evaluation`` of ``model`` on ``data`` already computed (skips
            re-scoring for the likelihood row).
        features: override the feature map of KID, FD and precision/recall.

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
    from ppgen.inference import analysis

    names = _metric_names(metrics)
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
    sample_names = [m for m in names if m != "likelihood"]
    x = None
    if sample_names:
        was_training = model.training
        model.eval()
        try:
            x = model.sample(n, seed=seed, context=context).detach().float().cpu()
        finally:
            model.train(was_training)
    feats = features if features is not None else _dataset_features(data)
    table: dict[str, Any] = {
        "data": getattr(data, "name", "tensor"),
        "split": getattr(data, "split", None),
        "num_samples": n,
        "seed": seed,
        "features": feats if isinstance(feats, str) else getattr(feats, "__name__", "custom"),
    }
    for name in names:
        start = time.perf_counter()
        entry: dict[str, Any]
        if name == "likelihood":
            ev = evaluation if evaluation is not None else evaluate(model, data, seed=seed)
            entry = analysis.summarize(ev, seed=seed).to_dict()
        else:
            assert x is not None
            if name == "mmd":
                entry = mmd(x, y, num_permutations=num_permutations, seed=seed).to_dict()
            elif name == "kid":
                r = kid(x, y, features=feats, num_permutations=num_permutations, seed=seed)
                entry = r.to_dict()
            elif name == "energy":
                r = energy_distance(x, y, num_permutations=num_permutations, seed=seed)
                entry = r.to_dict()
            elif name == "fd":
                entry = frechet_distance(x, y, features=feats, seed=seed).to_dict()
            elif name == "prdc":
                entry = precision_recall(x, y, k=5, features=feats).to_dict()
            elif name == "c2st":
                entry = c2st(x, y, seed=seed).to_dict()
            else:  # modes
                modes = _mixture_modes(data)
                if modes is None:
                    if "modes" in [_ALIASES.get(m, m) for m in _requested(metrics)]:
                        table[name] = {"skipped": "no known mixture modes for these data"}
                    continue
                entry = mode_coverage(x, *modes).to_dict()
        entry["seconds"] = time.perf_counter() - start
        table[name] = entry
    return table


def _requested(metrics: str | Sequence[str]) -> list[str]:
    """The names the user typed, without expanding 'all'."""
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    return [i.strip().lower() for i in items if i.strip() and i.strip().lower() != "all"]


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

    def num(v: Any, fmt: str = ".4g") -> str:
        return "" if v is None else format(v, fmt)

    rows = [("metric", "value", "uncertainty", "p-value", "computed on")]
    lk = table.get("likelihood")
    if lk is not None:
        level = f"{lk['level']:.0%}"
        rows.append(
            (
                "NLL (bits/dim)",
                f"{lk['bits_per_dim']:.4f}",
                f"± {lk['bits_per_dim_stderr']:.4f}, {level} CI [{lk['bits_per_dim_ci_low']:.4f}"
                f", {lk['bits_per_dim_ci_high']:.4f}]",
                "",
                f"{lk['kind']} ({lk['estimator']}), n={lk['num_examples']}",
            )
        )
        rows.append(
            (
                "NLL (nats)",
                f"{lk['nats']:.3f}",
                f"± {lk['stderr']:.3f}, {level} CI [{lk['ci_low']:.3f}, {lk['ci_high']:.3f}]",
                "",
                lk["kind"],
            )
        )
    labels = {
        "mmd": ("MMD^2 (Gaussian)", ""),
        "kid": ("KID", "± {} (std over subsets)"),
        "energy": ("energy distance", ""),
        "fd": ("Frechet distance", "± {} (bootstrap)"),
        "c2st": ("C2ST accuracy", "± {}"),
    }
    for key, (label, err) in labels.items():
        r = table.get(key)
        if r is None:
            continue
        on = r.get("features", "")
        if key == "c2st":
            on = f"{on}, {r['details']['classifier']}" if "details" in r else on
        rows.append(
            (
                label,
                num(r["value"]),
                err.format(num(r["stderr"], ".2g")) if r.get("stderr") is not None else "",
                num(r.get("p_value"), ".3g"),
                on,
            )
        )
    pr = table.get("prdc")
    if pr is not None:
        rows.append(
            (
                "precision / recall",
                f"{pr['precision']:.3f} / {pr['recall']:.3f}",
                "",
                "",
                f"{pr['features']}, k={pr['k']}",
            )
        )
        rows.append(
            (
                "density / coverage",
                f"{pr['density']:.3f} / {pr['coverage']:.3f}",
                "",
                "",
                f"{pr['features']}, k={pr['k']}",
            )
        )
    mc = table.get("modes")
    if mc is not None and "skipped" not in mc:
        rows.append(
            (
                "modes covered",
                f"{mc['modes_covered']}/{mc['num_modes']}",
                f"high-quality {mc['high_quality_fraction']:.3f}",
                "",
                f"{mc['threshold']:g} std, reverse KL {mc['reverse_kl']:.3f}",
            )
        )
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
