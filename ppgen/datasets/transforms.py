r"""Dequantization and the logit transform, with their log-determinants counted.

A continuous density :math:`p_z` on the model's space scores discrete data :math:`v \in
\{0..L-1\}^D` through

.. math::
    y = (v + u) / L, \quad u \sim U[0, 1)^D, \qquad
    z = \operatorname{logit}(\alpha + (1 - 2\alpha) y),

    \log P(v) \;\ge\; \mathbb{E}_u\big[\log p_z(z) + \log|\partial z / \partial y| - D \log L\big].

:class:`DataTransform` returns ``z`` and the per-example ``ladj`` (every term but
:math:`\log p_z(z)`), so ``log p_z(z) + ladj`` is in the units of the data as given, and
``bits/dim = -(log p_z(z) + ladj) / (D ln 2)``: the same as the usual
``(nll_unit + D ln L) / (D ln 2)`` (Theis et al. 2016, arXiv:1511.01844).
"""

from __future__ import annotations

__all__ = ["DataTransform", "dequantize", "logit_transform", "quantize"]

import math

import torch
from torch import Tensor, nn


def dequantize(v: Tensor, levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantization: ``(v + u) / levels`` with ``u ~ U[0, 1)``, in ``[0, 1)``."""
    u = torch.rand(v.shape, generator=generator, device=v.device, dtype=v.dtype)
    return (v + u) / levels


def quantize(y: Tensor, levels: int) -> Tensor:
    """The inverse of :func:`dequantize` up to the noise: ``floor(y * levels)`` clipped to the
    levels, as float (the dtype of ``y``)."""
    return torch.floor(y * levels).clamp_(0, levels - 1)


def logit_transform(y: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    r"""``z = logit(alpha + (1 - 2 alpha) y)`` and the per-element ``log|dz/dy|``.

    :math:`dz/dy = (1 - 2\alpha) / (s (1 - s))` with :math:`s = \alpha + (1 - 2\alpha) y`.
    Finite for ``y`` in ``[0, 1]`` (the ends included) whenever ``alpha > 0``: :math:`1 - s` is
    computed as :math:`\alpha + (1 - 2\alpha)(1 - y)`, never as ``1 - s``, so it stays
    :math:`\ge \alpha` even where ``s`` rounds to 1 in the dtype.

    Raises:
        ValueError: ``alpha`` outside ``(0, 0.5)``.
    """
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"logit alpha must lie in (0, 0.5), got {alpha}")
    s = alpha + (1 - 2 * alpha) * y
    s_complement = alpha + (1 - 2 * alpha) * (1 - y)
    log_s, log_s_complement = torch.log(s), torch.log(s_complement)
    z = log_s - log_s_complement
    log_dz_dy = math.log1p(-2 * alpha) - log_s - log_s_complement
    return z, log_dz_dy


class DataTransform(nn.Module):
    """Maps data as given to a continuous model's space and back, counting every Jacobian.

    Arguments:
        kind: the data kind; ``"binary"``/``"discrete"`` data is dequantized.
        levels: number of levels of discrete data.
        logit_alpha: if not None, apply the logit transform with this ``alpha`` (discrete data
            only, where the dequantized values lie in ``[0, 1)``).

    Shapes:
        ``forward(x)``: ``x`` of shape ``(N, *event)`` -> ``z`` of the same shape and ``ladj`` of
        shape ``(N,)``, with ``log p_data(x) (>=) log p_z(z) + ladj``.
    """

    def __init__(
        self, kind: str, levels: int | None = None, logit_alpha: float | None = None
    ) -> None:
        super().__init__()
        if kind in ("binary", "discrete") and (levels is None or levels < 2):
            raise ValueError(f"{kind} data needs levels >= 2")
        if logit_alpha is not None and not 0.0 < logit_alpha < 0.5:
            raise ValueError(f"logit_alpha must lie in (0, 0.5), got {logit_alpha}")
        if logit_alpha is not None and kind == "continuous":
            raise ValueError("the logit transform needs data in [0, 1]: use it on discrete data")
        self.kind = kind
        self.levels = levels
        self.logit_alpha = logit_alpha

    @property
    def dequantizes(self) -> bool:
        """True for discrete data: the score is a lower bound on the discrete likelihood."""
        return self.kind != "continuous"

    def forward(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        ladj = x.new_zeros(n)
        if not self.dequantizes:
            return x, ladj
        assert self.levels is not None
        num_dims = x[0].numel()
        z = dequantize(x, self.levels, generator)
        ladj = ladj - num_dims * math.log(self.levels)
        if self.logit_alpha is not None:
            z, log_dz = logit_transform(z, self.logit_alpha)
            ladj = ladj + log_dz.reshape(n, -1).sum(1)
        return z, ladj

    def inverse(self, z: Tensor) -> Tensor:
        """Model space back to data as given (discrete data is quantized to its levels)."""
        if not self.dequantizes:
            return z
        assert self.levels is not None
        y = z
        if self.logit_alpha is not None:
            y = (torch.sigmoid(z) - self.logit_alpha) / (1 - 2 * self.logit_alpha)
        return quantize(y, self.levels)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, levels={self.levels}, logit_alpha={self.logit_alpha}"
