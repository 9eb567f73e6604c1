r"""The one-dimensional conditionals shared by NADE and MADE, by data kind.

Each autoregressive step outputs ``P`` numbers per dimension that parametrize
:math:`p(x_d \mid x_{<d})`:

- ``"binary"``: one logit (Bernoulli), ``P = 1``;
- ``"discrete"``: ``L`` logits (categorical over the levels), ``P = L``;
- ``"continuous"``: a mixture of ``K`` Gaussians, ``P = 3K`` (mixture logits, means, log-scales
  clamped below at -7), as in RNADE (Uria et al. 2013, arXiv:1306.0186);
- ``"logistic"``: discrete data through a mixture of ``K`` logistics discretized to the ``L``
  levels (Salimans et al. 2017), ``P = 3K`` whatever ``L``: the compact choice for 8-bit data,
  where a categorical would need ``L = 256`` outputs per dimension.

:func:`conditional_kind` picks between ``"discrete"`` (categorical) and ``"logistic"`` for
discrete data: ``output="auto"`` takes the logistic mixture from :data:`LOGISTIC_FROM_LEVELS`
levels on, the threshold PixelCNN's ``"auto"`` uses, so every autoregressive family makes the
same choice for the same data.

Sampling is a deterministic function of noise drawn up front (``u ~ U[0, 1)`` per dimension, and
``eps ~ N(0, 1)`` for continuous data), so two samplers fed the same noise draw the same points.
"""

from __future__ import annotations

__all__ = [
    "LOGISTIC_FROM_LEVELS",
    "check_output",
    "conditional_kind",
    "draw_noise",
    "initialize_logistic",
    "log_prob_dims",
    "num_params",
    "sample_dims",
    "softplus",
    "spread_mixture",
]

import math

import torch
from torch import Tensor

from ppgen.models.distributions import DiscretizedLogisticMixture, softplus

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# Log-scales are clamped below (as PixelCNN++'s, twin in ppgen/models/distributions.py): without
# it an input far from the data (|x| ~ 1e3) meets a scale of e^-40 and (x - loc)^2 / scale^2
# overflows float32, giving log p = -inf instead of a finite value.
_LOG_SCALE_MIN = -7.0

#: ``output="auto"`` gives discrete data with at least this many levels a discretized logistic
#: mixture rather than a categorical. 256 is 8-bit data: there a categorical needs 256 outputs
#: per dimension against ``3K = 15`` (K = 5), so default MADE on 28x28 images holds ~100 million
#: output weights (a 1.66 GB checkpoint, 20 s a step on CPU) against ~6 million, and the published
#: 8-bit results use the logistic mixture (PixelCNN++). Below it (binary, the 17-level digits)
#: the categorical is cheap and assumes nothing about how neighbouring levels relate. The same
#: threshold as PixelCNN's ``"auto"``.
LOGISTIC_FROM_LEVELS = 256


def conditional_kind(kind: str, levels: int | None, output: str = "auto") -> str:
    """The conditional family for data of ``kind``: ``"binary"``, ``"continuous"``, or for
    discrete data ``"discrete"`` (categorical) or ``"logistic"`` as ``output`` says
    (``"categorical"``, ``"logistic"`` or ``"auto"``: see :data:`LOGISTIC_FROM_LEVELS`)."""
    if kind != "discrete":
        return kind
    if output == "auto":
        assert levels is not None
        return "logistic" if levels >= LOGISTIC_FROM_LEVELS else "discrete"
    return "logistic" if output == "logistic" else "discrete"


def check_output(output: str, kind: str) -> None:
    """Refuse ``output="logistic"`` for data that is not discrete, in one line."""
    if output == "logistic" and kind != "discrete":
        raise ValueError(
            f"output='logistic' is for discrete data (integer levels), got {kind} data; use "
            "output='auto' (Bernoulli for binary, Gaussians for continuous data)"
        )


@torch.no_grad()
def spread_mixture(bias: Tensor, kind: str) -> None:
    """Spread the output biases of mixture conditionals at construction, ``bias (D, 3, K)``
    (logits, locations, log-scales): Gaussian means over [-2, 2] (continuous); for the
    logistic, locations over the [-1, 1] scale of the levels at ``+-(1 - 1/K)`` with scales of
    half their spacing, so each conditional starts close to uniform over the levels (about
    ``log2 L`` bits per dimension) rather than peaked on a few."""
    k = bias.shape[-1]
    if kind == "continuous":
        bias[:, 1] = torch.linspace(-2, 2, k) if k > 1 else 0.0
        return
    edge = 1.0 - 1.0 / k
    bias[:, 1] = torch.linspace(-edge, edge, k) if k > 1 else 0.0
    bias[:, 2] = math.log(edge / max(k - 1, 1)) if k > 1 else math.log(0.5)


@torch.no_grad()
def initialize_logistic(bias: Tensor, flat: Tensor, levels: int | None) -> None:
    """Start each logistic-mixture conditional near the data's marginal, ``bias (D, 3K)``:
    equal weights, the K components at the marginal's quantiles ``(j + 1/2) / K`` on the
    [-1, 1] scale, scales the marginal's spread over K (at least one bin). A component at an
    edge level moves 3 scales past it, so the edge bin (which extends to infinity) takes
    nearly all its mass: a pixel that is almost always 0 starts near 0 bits, not 0.45."""
    assert levels is not None
    d, k = flat.shape[1], bias.shape[1] // 3
    half = 1.0 / (levels - 1)
    y = flat * (2.0 * half) - 1.0  # (N, D) on [-1, 1]
    probs = (torch.arange(k, dtype=y.dtype, device=y.device) + 0.5) / k
    loc = torch.quantile(y, probs, dim=0).T  # (D, K)
    spread = y.std(0) if len(y) > 1 else torch.ones(d, dtype=y.dtype, device=y.device)
    scale = (spread / k).clamp_min(half)[:, None].expand(d, k)
    loc = torch.where(loc <= -1.0 + half / 2, -1.0 - 3 * scale, loc)
    loc = torch.where(loc >= 1.0 - half / 2, 1.0 + 3 * scale, loc)
    bias[:, :k] = 0.0
    bias[:, k : 2 * k] = loc
    bias[:, 2 * k :] = torch.log(scale)


def num_params(kind: str, levels: int | None, components: int) -> int:
    """``P``, the number of outputs per dimension for conditionals of ``kind``."""
    if kind == "binary":
        return 1
    if kind == "discrete":
        assert levels is not None
        return levels
    return 3 * components


def _logistic(params: Tensor, levels: int | None) -> DiscretizedLogisticMixture:
    """The discretized logistic mixture of ``params (..., 3K)`` over ``levels`` levels."""
    assert levels is not None
    logits, loc, log_scale = params.chunk(3, dim=-1)
    return DiscretizedLogisticMixture(logits, loc, log_scale, levels, validate_args=False)


def log_prob_dims(params: Tensor, x: Tensor, kind: str, levels: int | None = None) -> Tensor:
    """Per-dimension conditional log-probabilities in nats (``levels``: for ``"logistic"``).

    Shapes:
        ``params``: ``(..., P)``; ``x``: ``(...)`` -> ``(...)``.
    """
    if kind == "binary":
        logit = params[..., 0]
        return x * logit - softplus(logit)  # x log s(l) + (1 - x) log(1 - s(l))
    if kind == "discrete":
        return params.log_softmax(-1).gather(-1, x.long().unsqueeze(-1)).squeeze(-1)
    if kind == "logistic":
        return _logistic(params, levels).log_prob(x)
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
    ``eps ~ N(0, 1)`` (for ``"logistic"``, a second uniform: the logistic's quantile), both of
    ``shape``."""
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    eps = None
    if kind == "continuous":
        eps = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    elif kind == "logistic":
        eps = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    return u, eps


def sample_dims(
    params: Tensor, u: Tensor, eps: Tensor | None, kind: str, levels: int | None = None
) -> Tensor:
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
    if kind == "logistic":
        return _logistic(params, levels).draw(torch.stack([u, eps], -1)).to(params.dtype)
    logits, loc, log_scale = params.chunk(3, dim=-1)
    log_scale = log_scale.clamp(min=_LOG_SCALE_MIN)
    cdf = logits.softmax(-1).cumsum(-1)
    k = (cdf < u.unsqueeze(-1)).sum(-1, keepdim=True).clamp_(max=logits.shape[-1] - 1)
    return (loc.gather(-1, k) + log_scale.gather(-1, k).exp() * eps.unsqueeze(-1)).squeeze(-1)
