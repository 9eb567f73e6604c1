r"""A conditional MADE: an autoregressive likelihood :math:`p(x \mid c)` as a building block.

.. math:: p(x \mid c) = \prod_{d=1}^{D} p(x_d \mid x_{<d}, c)

One masked MLP (``ppgen.models.nets.MaskedMLP``) with the context ``c`` feeding every hidden
unit outputs the parameters of all D conditionals in one pass, so :meth:`ConditionalMADE.log_prob`
costs one network pass and sampling D passes. Used as a VAE decoder (``VAE(decoder="made")``,
with ``c = z``): a decoder that models the dependencies between pixels given the code, which a
factorized decoder cannot. The conditionals match the data kind: Bernoulli (binary), categorical
over the levels (discrete: an exact discrete likelihood) or a Gaussian (continuous).

Example:
    >>> import torch
    >>> from ppgen.models.autoregressive.decoder import MADEDecoder
    >>> dec = MADEDecoder((1, 2, 2), "binary", None, hidden=(16,), context_features=3)
    >>> px = dec(torch.randn(5, 3))  # p(x | c) for 5 contexts
    >>> px.batch_shape, px.event_shape
    (torch.Size([5]), torch.Size([1, 2, 2]))
    >>> px.log_prob(px.sample()).shape
    torch.Size([5])
"""

from __future__ import annotations

__all__ = ["ConditionalMADE", "MADEDecoder"]

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import pyro.distributions as dist
import torch
from torch import Size, Tensor, nn
from torch.distributions import constraints

from ppgen.models.autoregressive import _conditionals as cond
from ppgen.models.nets import MaskedMLP


class MADEDecoder(nn.Module):
    """A masked MLP whose ``forward(context)`` returns the distribution :math:`p(x \\mid c)`
    (zuko-style: a module that builds a distribution from a context).

    Arguments:
        event_shape: the shape of one data point.
        kind: ``"binary"``, ``"discrete"`` or ``"continuous"``.
        levels: the number of levels of discrete data.
        hidden: hidden widths of the masked MLP.
        context_features: C, the width of the context.

    Shapes:
        ``forward(c (..., C))`` -> a distribution with batch shape ``...`` and event shape
        ``event_shape``.
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        kind: str,
        levels: int | None,
        hidden: Sequence[int] = (64,),
        context_features: int = 0,
    ) -> None:
        super().__init__()
        self.event_shape = Size(event_shape)
        self.kind, self.levels = kind, levels
        self.num_params = cond.num_params(kind, levels, 1)
        d = math.prod(self.event_shape)
        # deterministic (even) hidden degrees, the identity order
        self.net = MaskedMLP(d, self.num_params, tuple(hidden) or (4 * d,), context_features)
        # hidden units have degrees >= 1, so the first conditional sees no hidden unit: a direct
        # (unmasked) context-to-output map lets every conditional, the first included, see c
        self.skip = nn.Linear(context_features, d * self.num_params, bias=False)

    def forward(self, context: Tensor) -> ConditionalMADE:
        return ConditionalMADE(self, context)

    def conditionals(self, x: Tensor, context: Tensor) -> Tensor:
        """The parameters of every conditional, ``x (..., D)``, ``c (..., C)`` -> ``(..., D, P)``
        (output d depends on ``x[..., :d]`` and ``c`` only)."""
        inp = x / (self.levels - 1) if self.kind == "discrete" and self.levels else x
        return self.net(inp, context) + self.skip(context).unflatten(-1, (-1, self.num_params))


class ConditionalMADE(dist.TorchDistribution):
    r""":math:`p(x \mid c) = \prod_d p(x_d \mid x_{<d}, c)` for a batch of contexts.

    ``log_prob`` is one pass of the masked network; ``sample`` is D passes (dimension d drawn
    from its conditional given the dimensions before it). Values and contexts broadcast over
    leading (particle) dims.
    """

    arg_constraints: ClassVar[dict] = {}
    has_rsample = False

    def __init__(self, decoder: MADEDecoder, context: Tensor,
                 batch_shape: Size | None = None) -> None:
        self.decoder, self.context = decoder, context
        shape = context.shape[:-1] if batch_shape is None else Size(batch_shape)
        super().__init__(shape, decoder.event_shape, validate_args=False)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        if self.decoder.kind == "continuous":
            return constraints.independent(constraints.real, len(self.event_shape))
        levels = self.decoder.levels or 2
        return constraints.independent(constraints.integer_interval(0, levels - 1),
                                       len(self.event_shape))

    def expand(self, batch_shape: Size, _instance: Any = None) -> ConditionalMADE:
        shape = Size(batch_shape)
        return ConditionalMADE(self.decoder, self.context.expand(*shape, self.context.shape[-1]),
                               shape)

    def log_prob(self, value: Tensor) -> Tensor:
        k = len(self.event_shape)
        flat = value.flatten(-k) if k else value.unsqueeze(-1)  # (..., D)
        lead = torch.broadcast_shapes(flat.shape[:-1], self.context.shape[:-1])
        x = flat.expand(*lead, flat.shape[-1]).to(self.context.dtype)
        c = self.context.expand(*lead, self.context.shape[-1])
        params = self.decoder.conditionals(x, c)  # (..., D, P)
        return cond.log_prob_dims(params, x, self.decoder.kind).sum(-1)

    @torch.no_grad()
    def sample(self, sample_shape: Size = Size(),  # noqa: B008
               generator: torch.Generator | None = None) -> Tensor:
        shape = Size(sample_shape) + self.batch_shape
        c = self.context.expand(*shape, self.context.shape[-1]).reshape(-1, self.context.shape[-1])
        n, d, kind = c.shape[0], math.prod(self.event_shape), self.decoder.kind
        u, eps = cond.draw_noise((n, d), kind, generator, c.device, c.dtype)
        x = c.new_zeros(n, d)
        for i in range(d):  # dimension i given the dimensions before it (identity order)
            params = self.decoder.conditionals(x, c)[:, i]
            x[:, i] = cond.sample_dims(params, u[:, i], None if eps is None else eps[:, i], kind)
        return x.reshape(*shape, *self.event_shape)
