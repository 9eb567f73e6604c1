"""Mode coverage and the high-quality fraction of samples from a known mixture."""

from __future__ import annotations

__all__ = [
    "ModeCoverage",
    "mode_coverage",
]

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from ppgen.inference.metrics.base import (
    MetricError,
    MetricResult,
    _as_points,
)
from ppgen.inference.metrics.registry import MetricInputs, Row, register_metric


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModeCoverage(MetricResult):
    """Mode coverage of samples from a known mixture (see :func:`mode_coverage`).

    Attributes:
        modes_covered: the number of modes holding at least ``min_share`` of the samples
            within ``threshold * std`` of their centre.
        num_modes: the number of modes K.
        high_quality_fraction: the share of samples within ``threshold * std`` of the nearest
            centre.
        counts: high-quality samples per mode, ``K`` integers.
        reverse_kl: KL(q || w) in nats between the high-quality samples' distribution over
            modes ``q`` and the mixture weights ``w`` (nan when no sample is high quality).
        threshold: the radius in units of ``std``.
        min_share: the share of all samples a mode needs to count as covered.
    """

    modes_covered: int
    num_modes: int
    high_quality_fraction: float
    counts: tuple[int, ...]
    reverse_kl: float
    threshold: float
    min_share: float

    def __str__(self) -> str:
        return (
            f"modes covered {self.modes_covered}/{self.num_modes}, high-quality fraction "
            f"{self.high_quality_fraction:.3f}, reverse KL {self.reverse_kl:.3f} nats "
            f"[n={self.num_x}, {self.threshold:g} std, min share {self.min_share:.3g}]"
        )


@torch.no_grad()
def mode_coverage(
    samples: Tensor,
    centers: Tensor,
    std: float,
    threshold: float = 3.0,
    min_share: float | None = None,
    weights: Tensor | None = None,
) -> ModeCoverage:
    r"""Which modes of a known Gaussian mixture the samples reach, and how many samples are good.

    Each sample is assigned to its nearest centre; it is *high quality* when it lies within
    ``threshold * std`` of that centre (Metz et al. 2017; Srivastava et al. 2017). A mode is
    *covered* when its high-quality samples make up at least ``min_share`` of all samples; the
    default, a fifth of the share a uniform mixture gives each mode (``0.2 / K``), is PacGAN's
    rule (20 of the 100 samples a mode expects out of 2500 for 25 modes).

    Arguments:
        samples: the model's samples, ``(N, *event_shape)`` (flattened to ``(N, D)``).
        centers: the mixture's centres, ``(K, D)`` (e.g. from
            ``ppgen.datasets.toy.mixture_modes(name)``).
        std: the components' standard deviation (isotropic).
        threshold: the radius, in units of ``std``, within which a sample is high quality.
        min_share: the share of all samples a mode needs to be covered (default ``0.2 / K``).
        weights: the mixture weights ``(K,)`` for the reverse KL (default uniform).

    Returns:
        A :class:`ModeCoverage`; ``value`` is the covered fraction ``modes_covered / K``.

    Shapes:
        ``samples``: ``(N, D)`` or ``(N, *event_shape)``; ``centers``: ``(K, D)``.

    References:
        Metz et al., Unrolled Generative Adversarial Networks, arXiv:1611.02163.
        Srivastava et al., VEEGAN, arXiv:1705.07761.
        Lin et al., PacGAN, arXiv:1712.04086.

    Example:
        >>> import torch
        >>> centers = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
        >>> samples = torch.tensor([[0.1, 0.0], [0.0, -0.2], [5.0, 5.0], [0.05, 0.1]])
        >>> r = mode_coverage(samples, centers, std=0.1)
        >>> r.modes_covered, r.num_modes, r.high_quality_fraction, r.counts
        (1, 2, 0.75, (3, 0))
    """
    x = _as_points(samples, "samples")
    c = _as_points(centers, "centers")
    if c.shape[1] != x.shape[1]:
        raise MetricError(
            f"centers have {c.shape[1]} dims but samples have {x.shape[1]}; pass centres in the "
            "samples' space"
        )
    if not (math.isfinite(std) and std > 0):
        raise MetricError(f"std must be a positive number, got {std}")
    if not threshold > 0:
        raise MetricError(f"threshold must be positive, got {threshold}")
    k = c.shape[0]
    share = 0.2 / k if min_share is None else float(min_share)
    if not 0.0 <= share <= 1.0:
        raise MetricError(f"min_share must lie in [0, 1], got {min_share}")
    if weights is None:
        w = torch.full((k,), 1.0 / k, dtype=torch.float64)
    else:
        w = weights.detach().to("cpu", torch.float64).reshape(-1)
        if w.shape[0] != k or (w < 0).any() or not torch.isclose(w.sum(), w.new_tensor(1.0)):
            raise MetricError(f"weights must be {k} non-negative numbers summing to 1")
    dist, nearest = torch.cdist(x, c).min(dim=1)  # (N,), (N,)
    good = dist <= threshold * std
    counts = torch.bincount(nearest[good], minlength=k)  # (K,)
    n = x.shape[0]
    covered = int((counts >= share * n).sum()) if share > 0 else int((counts > 0).sum())
    total = int(counts.sum())
    if total == 0:
        reverse_kl = math.nan
    else:
        q = counts.double() / total
        nz = q > 0
        reverse_kl = float((q[nz] * (q[nz].log() - w[nz].log())).sum())
    return ModeCoverage(
        name="mode_coverage",
        value=covered / k,
        num_x=n,
        num_y=k,
        features="raw",
        details={"std": float(std)},
        modes_covered=covered,
        num_modes=k,
        high_quality_fraction=float(good.double().mean()),
        counts=tuple(int(v) for v in counts),
        reverse_kl=reverse_kl,
        threshold=float(threshold),
        min_share=share,
    )


def _modes_rows(mc: dict[str, Any]) -> list[Row]:
    return [
        (
            "modes covered",
            f"{mc['modes_covered']}/{mc['num_modes']}",
            f"high-quality {mc['high_quality_fraction']:.3f}",
            "",
            f"{mc['threshold']:g} std, reverse KL {mc['reverse_kl']:.3f}",
        )
    ]


@register_metric(
    "modes",
    rows=_modes_rows,
    aliases=("mode_coverage",),
    applies=lambda inputs: inputs.modes is not None,
    skipped="no known mixture modes for these data",
)
def _modes_entry(inputs: MetricInputs) -> dict[str, Any]:
    """Mode coverage of the samples on the mixture modes the data declare (``Dataset.modes``)."""
    assert inputs.modes is not None, "registered with applies: only called where modes are known"
    return mode_coverage(inputs.require_samples(), *inputs.modes).to_dict()
