r"""The one-dimensional conditionals shared by NADE and MADE, by data kind.

Each autoregressive step outputs ``P`` numbers per dimension that parametrize
:math:`p(x_d \mid x_{<d})`:

- ``"binary"``: one logit (Bernoulli), ``P = 1``;
- ``"discrete"``: ``L`` logits (categorical over the levels), ``P = L``;
- ``"continuous"``: a mixture of ``K`` Gaussians, ``P = 3K`` (mixture logits, means, log-scales
  clamped below at -7), as in RNADE (Uria et al. 2013, arXiv:1306.0186).

Sampling is a deterministic function of noise drawn up front (``u ~ U[0, 1)`` per dimension, and
``eps ~ N(0, 1)`` for continuous data), so two samplers fed the same noise draw the same points.
"""

from __future__ import annotations

__all__ = ["draw_noise", "log_prob_dims", "num_params", "sample_dims", "softplus"]

import math

import torch
from torch import Tensor

from ppgen.models.distributions import softplus

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# Log-scales are clamped below (as PixelCNN++'s, twin in ppgen/models/distributions.py): without
# it an input far from the data (|x| ~ 1e3) meets a scale of e^-40 and (x - loc)^2 / scale^2
# overflows float32, giving log p = -inf instead of a finite value.
_LOG_SCALE_MIN = -7.0


def num_params(kind: str, levels: int | None, components: int) -> int:
    """``P``, the number of outputs per dimension for data of ``kind``."""
    if kind == "binary":
        return 1
    if kind == "discrete":
        assert levels is not None
        return levels
    return 3 * components


def log_prob_dims(params: Tensor, x: Tensor, kind: str) -> Tensor:
    """Per-dimension conditional log-probabilities in nats.

    Shapes:
        ``params``: ``(..., P)``; ``x``: ``(...)`` -> ``(...)``.
    """
    if kind == "binary":
        logit = params[..., 0]
        return x * logit - softplus(logit)  # x log s(l) + (1 - x) log(1 - s(l))
    if kind == "discrete":
        return params.log_softmax(-1).gather(-1, x.long().unsqueeze(-1)).squeeze(-1)
    logits, loc, log_scale = params.chunk(3, dim=-1)
    log_scale = log_scale.clamp(min=_LOG_SCALE_MIN)
    z = (x.unsqueeze(-1) - loc) * torch.exp(-log_scale)
    log_normal = -0.5 * z**2 - log_scale - _HALF_LOG_2PI
    return torch.logsumexp(logits.log_softmax(-1) + log_normal, dim=-1)


def draw_noise(
    shape: tuple[int, ...],
    kind: str,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor | None]:
    """The noise that determines a sample: ``u ~ U[0, 1)`` and, for continuous data,
    ``eps ~ N(0, 1)``, both of ``shape``."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    eps = None
    if kind == "continuous":
        eps = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return u, eps


def sample_dims(params: Tensor, u: Tensor, eps: Tensor | None, kind: str) -> Tensor:
    """Draw from the conditionals by inverse CDF with the given noise.

    Shapes:
        ``params``: ``(..., P)``; ``u``, ``eps``: ``(...)`` -> ``(...)``, in ``params.dtype``.
    """
    if kind == "binary":
        return (u < torch.sigmoid(params[..., 0])).to(params.dtype)
    if kind == "discrete":
        cdf = params.softmax(-1).cumsum(-1)
        k = (cdf < u.unsqueeze(-1)).sum(-1).clamp_(max=params.shape[-1] - 1)
        return k.to(params.dtype)
    assert eps is not None
    logits, loc, log_scale = params.chunk(3, dim=-1)
    log_scale = log_scale.clamp(min=_LOG_SCALE_MIN)
    cdf = logits.softmax(-1).cumsum(-1)
    k = (cdf < u.unsqueeze(-1)).sum(-1, keepdim=True).clamp_(max=logits.shape[-1] - 1)
    return (loc.gather(-1, k) + log_scale.gather(-1, k).exp() * eps.unsqueeze(-1)).squeeze(-1)
