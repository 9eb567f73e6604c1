"""Layers shared by three or more families: MLPs and masked (autoregressive) MLPs.

Family-private layers live in the family's own module; a layer moves here once a third family
needs it (see STYLE.md, section 1).
"""

from __future__ import annotations

__all__ = ["MLP", "MaskedLinear", "MaskedMLP", "autoregressive_degrees"]

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Sequential):
    """A multi-layer perceptron ``in -> hidden... -> out`` with an activation between layers.

    Arguments:
        in_features: input width.
        out_features: output width.
        hidden: hidden widths, e.g. ``(256, 256)``; empty for a single linear layer.
        activation: the activation module class.
        dropout: dropout probability after each hidden activation.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
    ) -> None:
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), activation()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 ``mask`` (a buffer).

    Shapes:
        ``mask``: ``(out_features, in_features)``.
    """

    def __init__(self, in_features: int, out_features: int, mask: Tensor, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        if mask.shape != (out_features, in_features):
            raise ValueError(f"mask shape {tuple(mask.shape)} != {(out_features, in_features)}")
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def autoregressive_degrees(
    order: Tensor,
    hidden: Sequence[int],
    generator: torch.Generator | None = None,
    sort: bool = False,
) -> list[Tensor]:
    """MADE degrees (Germain et al. 2015, arXiv:1502.03509, eq. 12-13).

    ``order[d]`` is the position (0-based) of input ``d`` in the autoregressive order; input
    ``d`` gets degree ``order[d] + 1``. Hidden units get degrees in ``[1, D - 1]``: drawn with
    ``generator`` when given (the paper's random connectivity), else spread evenly (deterministic).
    With ``sort``, each hidden layer's degrees are in ascending order (the same multiset), so the
    masks are block-triangular (MAF/IAF use this to skip masked-out blocks).

    Returns:
        ``[input degrees, hidden layer 1 degrees, ...]``.
    """
    num_inputs = order.numel()
    degrees = [order.long() + 1]
    for h in hidden:
        low = min(int(degrees[-1].min()), num_inputs - 1)
        if generator is None:
            d = torch.arange(h) % max(num_inputs - 1, 1) + 1
            d = d.clamp(min=low)
        else:
            d = torch.randint(low, max(num_inputs, low + 1), (h,), generator=generator)
        degrees.append(d.sort().values if sort else d)
    return degrees


class MaskedMLP(nn.Module):
    """An autoregressive MLP: output block ``d`` sees only inputs earlier than ``d`` in ``order``.

    Context features (if any) feed every hidden unit. The masks are buffers and can be rebuilt
    for another order/connectivity in place with :meth:`set_masks` (order-agnostic training).

    Arguments:
        num_inputs: D.
        out_per_dim: outputs per input dimension (K).
        hidden: hidden widths.
        context_features: width of the optional context.
        order: the autoregressive position of each input (default: the identity order).
        activation: the activation module class.
        dropout: dropout after each hidden activation.
        sorted_degrees: give each hidden layer's units ascending degrees (see
            :func:`autoregressive_degrees`); the same function class, a block-triangular layout.

    Shapes:
        ``forward(x (N, D), context (N, C))`` -> ``(N, D, K)``.
    """

    def __init__(
        self,
        num_inputs: int,
        out_per_dim: int,
        hidden: Sequence[int] = (64, 64),
        context_features: int = 0,
        order: Tensor | None = None,
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
        sorted_degrees: bool = False,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("MaskedMLP needs at least one hidden layer")
        self.sorted_degrees = sorted_degrees
        self.num_inputs = num_inputs
        self.out_per_dim = out_per_dim
        self.hidden = tuple(hidden)
        self.context_features = context_features
        widths = [num_inputs + context_features, *hidden]
        self.layers = nn.ModuleList(
            MaskedLinear(w_in, w_out, torch.ones(w_out, w_in))
            for w_in, w_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.output = MaskedLinear(widths[-1], num_inputs * out_per_dim,
                                   torch.ones(num_inputs * out_per_dim, widths[-1]))
        self.activation = activation()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.set_masks(torch.arange(num_inputs) if order is None else order)

    @torch.no_grad()
    def set_masks(self, order: Tensor, generator: torch.Generator | None = None) -> None:
        """Rebuild every mask for autoregressive ``order`` (in place, so buffers keep identity)."""
        degrees = autoregressive_degrees(order.cpu(), self.hidden, generator, self.sorted_degrees)
        c = self.context_features
        for layer, d_in, d_out in zip(self.layers, degrees[:-1], degrees[1:], strict=True):
            mask = (d_out[:, None] >= d_in[None, :]).to(layer.mask.dtype)
            if layer is self.layers[0] and c:
                mask = torch.cat([mask, mask.new_ones(len(d_out), c)], dim=1)
            layer.mask.copy_(mask)
        d_out = degrees[0].repeat_interleave(self.out_per_dim)  # output j belongs to input j // K
        mask = (d_out[:, None] > degrees[-1][None, :]).to(self.output.mask.dtype)
        self.output.mask.copy_(mask)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = x if context is None else torch.cat([x, context], dim=-1)
        for layer in self.layers:
            h = self.dropout(self.activation(layer(h)))
        return self.output(h).unflatten(-1, (self.num_inputs, self.out_per_dim))
