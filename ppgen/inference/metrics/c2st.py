"""The classifier two-sample test."""

from __future__ import annotations

__all__ = [
    "c2st",
]

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from ppgen.inference.metrics.base import (
    _BLOCK,
    MetricError,
    MetricResult,
    _generator,
    _pair,
)
from ppgen.inference.metrics.features import FeatureSpec
from ppgen.inference.metrics.registry import (
    MetricInputs,
    Row,
    register_metric,
    statistic_rows,
)


def _train_classifier(
    z: Tensor, labels: Tensor, steps: int, hidden: int, seed: int
) -> Callable[[Tensor], Tensor]:
    """A small MLP (two ReLU layers) trained full-batch with Adam; returns ``z -> P(label 1)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(
            torch.nn.Linear(z.shape[1], hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, 1),
        )
        z, labels = z.float(), labels.float()
        opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad()
                logits = net(z).squeeze(1)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
                loss.backward()
                opt.step()
    return lambda q: torch.sigmoid(net(q.float()).squeeze(1)).double()


def _knn_classifier(z: Tensor, labels: Tensor, k: int) -> Callable[[Tensor], Tensor]:
    def predict(q: Tensor) -> Tensor:
        out = torch.empty(q.shape[0], dtype=torch.float64)
        for start in range(0, q.shape[0], _BLOCK):
            idx = torch.cdist(q[start : start + _BLOCK], z).topk(k, largest=False).indices
            out[start : start + _BLOCK] = labels[idx].mean(1)
        return out

    return predict


@torch.no_grad()
def c2st(
    x: Tensor,
    y: Tensor,
    *,
    classifier: Literal["mlp", "knn"] = "mlp",
    features: FeatureSpec = None,
    test_fraction: float = 0.5,
    steps: int = 300,
    hidden: int = 64,
    seed: int = 0,
) -> MetricResult:
    r"""Classifier two-sample test: can a classifier tell samples from data on held-out points?

    Both sets are cut to the same size (so chance accuracy is 1/2), pooled, labelled and split
    at random into a training and a test part; features are standardized with the training
    part's statistics. A small MLP (or a k-NN vote, ``k = sqrt(n_train)``) is trained to tell
    the two apart, and ``value`` is its accuracy on the test part. Under the null the test
    labels are exchangeable given the trained classifier, so the number of correctly
    classified "x" points among the predicted "x" points is hypergeometric; ``p_value`` is that
    exact, one-sided tail (accuracy above chance). ``stderr`` is the binomial
    :math:`\sqrt{a(1-a)/n_{test}}`.

    Arguments:
        x: the model's samples ``(N, *event_shape)``.
        y: the reference data ``(M, *event_shape)``.
        classifier: ``"mlp"`` or ``"knn"``.
        features: default ``"raw"``.
        test_fraction: the share of pooled points held out for testing.
        steps: full-batch Adam steps of the MLP.
        hidden: the MLP's width.
        seed: seeds the subsampling, the split and the MLP.

    Returns:
        A :class:`MetricResult` with ``value`` (test accuracy), ``stderr`` and ``p_value``.

    References:
        Lopez-Paz & Oquab, Revisiting Classifier Two-Sample Tests, arXiv:1610.06545.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g)
        >>> c2st(x + 2.0, y).value > 0.8
        True
    """
    from scipy.stats import hypergeom

    if classifier not in ("mlp", "knn"):
        raise MetricError(f"classifier must be 'mlp' or 'knn', got {classifier!r}")
    if not 0.0 < test_fraction < 1.0:
        raise MetricError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    fx, fy, label = _pair(x, y, features, "raw", min_points=4)
    g = _generator(seed)
    size = min(fx.shape[0], fy.shape[0])
    fx = fx[torch.randperm(fx.shape[0], generator=g)[:size]]
    fy = fy[torch.randperm(fy.shape[0], generator=g)[:size]]
    z = torch.cat([fx, fy])  # (2s, F)
    labels = torch.cat([torch.ones(size), torch.zeros(size)]).double()
    order = torch.randperm(2 * size, generator=g)
    num_test = max(2, round(test_fraction * 2 * size))
    test, train = order[:num_test], order[num_test:]
    mean, std = z[train].mean(0), z[train].std(0).clamp_min(1e-12)
    z = (z - mean) / std
    if classifier == "mlp":
        predict = _train_classifier(z[train], labels[train], steps, hidden, seed)
    else:
        k = max(1, int(math.sqrt(train.numel())) | 1)  # odd: no ties in the vote
        predict = _knn_classifier(z[train], labels[train], k)
    predicted = (predict(z[test]) > 0.5).double()
    truth = labels[test]
    accuracy = float((predicted == truth).double().mean())
    # Under H0: T = #(predicted 1 and truly 1) ~ Hypergeom(n_test, #truly 1, #predicted 1),
    # and accuracy = (2T + n_test - #pred 1 - #truly 1) / n_test grows with T.
    t = int((predicted * truth).sum())
    p_value = float(hypergeom.sf(t - 1, num_test, int(truth.sum()), int(predicted.sum())))
    return MetricResult(
        name="c2st",
        value=accuracy,
        stderr=math.sqrt(accuracy * (1 - accuracy) / num_test),
        p_value=min(1.0, p_value),
        num_x=size,
        num_y=size,
        features=label,
        details={
            "classifier": classifier,
            "num_train": int(train.numel()),
            "num_test": num_test,
            "test": "exact hypergeometric, one-sided",
        },
    )


def _c2st_rows(r: dict[str, Any]) -> list[Row]:
    (row,) = statistic_rows("C2ST accuracy", "± {}")(r)
    on = f"{row[4]}, {r['details']['classifier']}" if "details" in r else row[4]
    return [(*row[:4], on)]


@register_metric("c2st", rows=_c2st_rows)
def _c2st_entry(inputs: MetricInputs) -> dict[str, Any]:
    """The classifier two-sample test on the raw points."""
    return c2st(inputs.require_samples(), inputs.reference, seed=inputs.seed).to_dict()
