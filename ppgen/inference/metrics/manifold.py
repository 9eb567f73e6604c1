"""k-NN manifold metrics: precision, recall, density and coverage."""

from __future__ import annotations

__all__ = [
    "PrecisionRecall",
    "precision_recall",
]

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from ppgen.inference.metrics.base import (
    _BLOCK,
    MetricError,
    MetricResult,
    _pair,
)
from ppgen.inference.metrics.features import FeatureSpec
from ppgen.inference.metrics.registry import MetricInputs, Row, register_metric


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrecisionRecall(MetricResult):
    """k-NN precision, recall, density and coverage (see :func:`precision_recall`).

    Attributes:
        precision: share of samples inside the data manifold (sample fidelity).
        recall: share of data inside the samples' manifold (diversity).
        density: how many data balls hold a sample, on average over samples, divided by k
            (1 in expectation when the distributions agree; above 1 for samples crowding the
            data's dense regions).
        coverage: share of data points whose ball holds at least one sample.
        k: the neighbour defining each ball's radius.
    """

    precision: float
    recall: float
    density: float
    coverage: float
    k: int

    def __str__(self) -> str:
        return (
            f"precision {self.precision:.3f}, recall {self.recall:.3f}, density "
            f"{self.density:.3f}, coverage {self.coverage:.3f} [k={self.k}; {self.features}; "
            f"n_x={self.num_x}, n_y={self.num_y}]"
        )


def _kth_neighbour_radius(z: Tensor, k: int) -> Tensor:
    """Distance of each point to its k-th nearest *other* point, ``(N,)`` (blocked)."""
    radii = torch.empty(z.shape[0], dtype=z.dtype)
    for start in range(0, z.shape[0], _BLOCK):
        stop = min(start + _BLOCK, z.shape[0])
        d = torch.cdist(z[start:stop], z)  # (B, N)
        rows = torch.arange(stop - start)
        d[rows, rows + start] = math.inf  # a point is not its own neighbour
        radii[start:stop] = d.kthvalue(k, dim=1).values
    return radii


def _ball_hits(points: Tensor, centres: Tensor, radii: Tensor) -> tuple[Tensor, Tensor]:
    """For each point, how many balls ``B(centre_i, radius_i)`` hold it ``(N,)``; and for each
    ball whether any point falls in it ``(M,)`` (blocked over points)."""
    hits = torch.empty(points.shape[0], dtype=torch.long)
    reached = torch.zeros(centres.shape[0], dtype=torch.bool)
    for start in range(0, points.shape[0], _BLOCK):
        stop = min(start + _BLOCK, points.shape[0])
        inside = torch.cdist(points[start:stop], centres) <= radii[None]  # (B, M)
        hits[start:stop] = inside.sum(1)
        reached |= inside.any(0)
    return hits, reached


@torch.no_grad()
def precision_recall(
    x: Tensor, y: Tensor, k: int = 5, *, features: FeatureSpec = None
) -> PrecisionRecall:
    r"""k-NN precision and recall (Kynkaanniemi et al. 2019) and density and coverage
    (Naeem et al. 2020) of samples ``x`` against data ``y``.

    Each point's ball has the radius of its k-th nearest neighbour within its own set. With
    :math:`B_y` the union of the data's balls and :math:`B_x` the samples':

    .. math::
        \mathrm{precision} = \tfrac1N \textstyle\sum_j 1[x_j \in B_y], \quad
        \mathrm{recall} = \tfrac1M \sum_i 1[y_i \in B_x], \\
        \mathrm{density} = \tfrac{1}{kN} \textstyle\sum_j \sum_i 1[x_j \in B(y_i, r_i)], \quad
        \mathrm{coverage} = \tfrac1M \sum_i 1[\exists j: x_j \in B(y_i, r_i)].

    Arguments:
        x: the model's samples ``(N, *event_shape)``.
        y: the reference data ``(M, *event_shape)``.
        k: the neighbour that sets the radii (5 in both papers).
        features: default ``"auto"``: the fixed digits classifier for 8x8 digits, else raw.

    Returns:
        A :class:`PrecisionRecall`; ``value`` is the harmonic mean of precision and recall
        (a one-number summary; read the four fields).

    References:
        Kynkaanniemi et al., Improved Precision and Recall Metric..., arXiv:1904.06991.
        Naeem et al., Reliable Fidelity and Diversity Metrics..., arXiv:2002.09797.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.rand(1000, 2, generator=g)             # data on the unit square
        >>> x = 0.5 * torch.rand(1000, 2, generator=g)       # samples on a quarter of it
        >>> r = precision_recall(x, y, k=5)
        >>> r.precision > 0.95, 0.2 < r.recall < 0.35
        (True, True)
    """
    fx, fy, label = _pair(x, y, features, "auto")
    if not 1 <= k < min(fx.shape[0], fy.shape[0]):
        raise MetricError(f"k must lie in [1, {min(fx.shape[0], fy.shape[0]) - 1}], got {k}")
    radius_y = _kth_neighbour_radius(fy, k)
    radius_x = _kth_neighbour_radius(fx, k)
    hits_x, covered_y = _ball_hits(fx, fy, radius_y)
    hits_y, _ = _ball_hits(fy, fx, radius_x)
    precision = float((hits_x > 0).double().mean())
    recall = float((hits_y > 0).double().mean())
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return PrecisionRecall(
        name="precision_recall",
        value=f1,
        num_x=fx.shape[0],
        num_y=fy.shape[0],
        features=label,
        details={"value": "harmonic mean of precision and recall"},
        precision=precision,
        recall=recall,
        density=float(hits_x.double().sum() / (k * fx.shape[0])),
        coverage=float(covered_y.double().mean()),
        k=k,
    )


def _prdc_rows(pr: dict[str, Any]) -> list[Row]:
    on = f"{pr['features']}, k={pr['k']}"
    return [
        ("precision / recall", f"{pr['precision']:.3f} / {pr['recall']:.3f}", "", "", on),
        ("density / coverage", f"{pr['density']:.3f} / {pr['coverage']:.3f}", "", "", on),
    ]


@register_metric("prdc", rows=_prdc_rows, aliases=("precision_recall",))
def _prdc_entry(inputs: MetricInputs) -> dict[str, Any]:
    """k-NN precision/recall/density/coverage (k = 5) on the data's declared features."""
    x = inputs.require_samples()
    return precision_recall(x, inputs.reference, k=5, features=inputs.features).to_dict()
