"""Result types and input checks shared by the metrics."""

from __future__ import annotations

__all__ = [
    "MetricError",
    "MetricResult",
]

import dataclasses
from typing import Any

import torch
from torch import Tensor

from ppgen.inference.metrics.features import FeatureSpec, resolve_features


class MetricError(ValueError):
    """Raised for inputs a metric cannot use (wrong shapes, non-finite values, too few points)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetricResult:
    """A sample-quality number that says what it is and what it was computed on.

    Attributes:
        name: the metric (``"mmd"``, ``"kid"``, ``"frechet_distance"``...).
        value: the statistic.
        p_value: the p-value of the test "x and y come from one distribution", where defined.
        stderr: a standard error of ``value``, where defined (the metric's docstring says how).
        num_x: number of points in ``x`` (the model's samples).
        num_y: number of points in ``y`` (the reference data).
        features: what the statistic was computed on (``"raw"``, ``"digits-classifier"``,
            the name of a user's feature function...).
        details: the settings that produced it (bandwidth, permutations, k...).
    """

    name: str
    value: float
    p_value: float | None = None
    stderr: float | None = None
    num_x: int
    num_y: int
    features: str = "raw"
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        out = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}

    def __str__(self) -> str:
        text = f"{self.name} = {self.value:.4g}"
        if self.stderr is not None:
            text += f" ± {self.stderr:.2g}"
        if self.p_value is not None:
            text += f" (p = {self.p_value:.3g})"
        return text + f" [{self.features}; n_x={self.num_x}, n_y={self.num_y}]"


_BLOCK = 512  # rows of a kernel matrix held at once: memory O(_BLOCK * N)


def _as_points(x: Tensor, what: str, *, min_points: int = 1) -> Tensor:
    """``x`` as a float64 CPU matrix ``(N, D)`` (event dims flattened), checked at the edge."""
    if not torch.is_tensor(x):
        raise MetricError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise MetricError(
            f"{what} has shape {tuple(x.shape)}; pass a batch (N, *event_shape), e.g. (N, 2)"
        )
    if x.shape[0] < min_points:
        raise MetricError(f"{what} holds {x.shape[0]} point(s); this needs at least {min_points}")
    out = x.detach().reshape(x.shape[0], -1).to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(out).all():
        raise MetricError(f"{what} holds non-finite values (NaN or inf); remove them first")
    return out


def _check_pair(fx: Tensor, fy: Tensor, min_points: int = 2) -> None:
    for f, what in ((fx, "x"), (fy, "y")):
        if f.shape[0] < min_points:
            raise MetricError(
                f"{what} holds {f.shape[0]} point(s); this needs at least {min_points}"
            )
        if not torch.isfinite(f).all():
            raise MetricError(f"{what} (or its features) holds non-finite values; remove them")


def _pair(
    x: Tensor, y: Tensor, features: FeatureSpec, default: str, min_points: int = 2
) -> tuple[Tensor, Tensor, str]:
    _as_points(x, "x")
    _as_points(y, "y")
    fx, fy, label = resolve_features(x, y, features, default)
    _check_pair(fx, fy, min_points)
    return fx, fy, label


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _check_permutations(num_permutations: int) -> None:
    if num_permutations < 0:
        raise MetricError(f"num_permutations must be >= 0, got {num_permutations}")
