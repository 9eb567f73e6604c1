"""Layers shared by three or more families: MLPs and masked (autoregressive) MLPs.

Family-private layers live in the family's own module; a layer moves here once a third family
needs it (see STYLE.md, section 1).
"""

from __future__ import annotations

__all__ = [
    "MLP",
    "MaskedLinear",
    "MaskedMLP",
    "SinusoidalTimeEmbedding",
    "TimeMLP",
    "UNet",
    "autoregressive_degrees",
]

import math
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

    def __init__(
        self, in_features: int, out_features: int, mask: Tensor, bias: bool = True
    ) -> None:
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
        # in place: a ReLU's input here is always a fresh linear output, which no backward needs
        self.activation = activation(inplace=True) if activation is nn.ReLU else activation()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.set_masks(torch.arange(num_inputs) if order is None else order)

    @torch.no_grad()
    def set_masks(self, order: Tensor, generator: torch.Generator | None = None) -> None:
        """Rebuild every mask for autoregressive ``order`` (in place, so buffers keep identity)."""
        if self.output.mask.is_meta:  # a size count on the meta device: no values to set
            return
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


# ---- diffusion denoisers: a time embedding, a time-conditioned MLP, a small U-Net ---------------


class SinusoidalTimeEmbedding(nn.Module):
    r"""The transformer's sinusoidal position embedding of a (diffusion) time ``t``:

    .. math:: e(t) = [\sin(t\omega_0), \dots, \sin(t\omega_{k-1}),
        \cos(t\omega_0), \dots, \cos(t\omega_{k-1})],\quad
        \omega_i = \text{max\_period}^{-i/k},\ k = \lfloor\text{features}/2\rfloor

    (zero-padded to ``features`` when it is odd).

    Arguments:
        features: the embedding width.
        max_period: the longest wavelength, 10000 as in Vaswani et al.

    Shapes:
        ``forward(t (...))`` -> ``(..., features)``; ``t`` may be integer or float.

    References:
        Vaswani et al. Attention Is All You Need. arXiv:1706.03762 (section 3.5).
        Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239.

    Example:
        >>> SinusoidalTimeEmbedding(8)(torch.tensor([0, 10, 999])).shape
        torch.Size([3, 8])
    """

    def __init__(self, features: int, max_period: float = 10_000.0) -> None:
        super().__init__()
        if features < 2:
            raise ValueError(f"the time embedding needs at least 2 features, got {features}")
        self.features = features
        half = features // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / half)
        self.register_buffer("freqs", freqs.to(torch.get_default_dtype()), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        args = t.to(self.freqs.dtype)[..., None] * self.freqs  # (..., half)
        e = torch.cat([args.sin(), args.cos()], dim=-1)
        if self.features % 2:
            e = F.pad(e, (0, 1))
        return e

    def extra_repr(self) -> str:
        return f"features={self.features}"


class TimeMLP(nn.Module):
    r"""A time-conditioned MLP, the denoiser of vector data: each hidden layer is
    :math:`h_{l} = \text{SiLU}(W_l h_{l-1} + b_l + U_l\, \phi(t))` with :math:`\phi` a
    sinusoidal embedding followed by a linear layer and SiLU.

    Arguments:
        in_features: D, the width of ``x``.
        out_features: the output width (D, or 2D with learned variances).
        hidden: hidden widths (at least one).
        time_features: the width of the time embedding.

    Shapes:
        ``forward(x (..., D), t)`` -> ``(..., out_features)``; ``t`` has the leading shape of
        ``x`` or is a scalar (one time for the whole batch, embedded once).

    Example:
        >>> net = TimeMLP(2, 2, hidden=[32, 32])
        >>> net(torch.randn(5, 3, 2), torch.tensor(7)).shape
        torch.Size([5, 3, 2])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (256, 256, 256),
        time_features: int = 128,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("TimeMLP needs at least one hidden layer (hidden=[...])")
        widths = [in_features, *hidden]
        self.embedding = SinusoidalTimeEmbedding(time_features)
        self.time = nn.Sequential(nn.Linear(time_features, time_features), nn.SiLU())
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.time_proj = nn.ModuleList(nn.Linear(time_features, b) for b in hidden)
        self.out = nn.Linear(widths[-1], out_features)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        e = self.time(self.embedding(t))  # (..., time_features), or (time_features,)
        h = x
        for layer, proj in zip(self.layers, self.time_proj, strict=True):
            h = F.silu(layer(h) + proj(e))
        return self.out(h)


def _groups(channels: int) -> int:
    """GroupNorm groups: up to 8, dividing ``channels``."""
    return math.gcd(channels, 8)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding added in between, with a skip."""

    def __init__(self, in_channels: int, out_channels: int, time_features: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(time_features, out_channels)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(e)[..., None, None]  # (B or 1, C, 1, 1)
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """A small time-conditioned U-Net for image-shaped data ``(C, H, W)`` (digits: 1x8x8).

    One residual block per resolution level on the way down and up, a stride-2 convolution
    between levels, nearest-neighbour upsampling on the way back, skip connections by
    concatenation, and a residual block in the middle (Ho et al. 2020, appendix B, without
    attention: at 8x8 a convolution already sees most of the image).

    Arguments:
        in_channels: C.
        out_channels: output channels (C, or 2C with learned variances).
        hidden: channels per resolution level; level ``i`` runs at ``H / 2^i``, so H and W
            must be divisible by ``2^(len(hidden) - 1)``.
        time_features: the width of the time embedding.

    Shapes:
        ``forward(x (..., C, H, W), t)`` -> ``(..., out_channels, H, W)``; leading dims are
        flattened around the convolutions; ``t`` has the leading shape of ``x`` or is a scalar.

    References:
        Ronneberger, Fischer, Brox. U-Net. arXiv:1505.04597.
        Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239.

    Example:
        >>> net = UNet(1, 1, hidden=[8, 16])
        >>> net(torch.randn(2, 3, 1, 8, 8), torch.randint(0, 1000, (2, 3))).shape
        torch.Size([2, 3, 1, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: Sequence[int] = (32, 64),
        time_features: int = 128,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("UNet needs at least one level (hidden=[channels, ...])")
        hidden = list(hidden)
        self.hidden = tuple(hidden)
        self.embedding = SinusoidalTimeEmbedding(time_features)
        self.time = nn.Sequential(
            nn.Linear(time_features, time_features),
            nn.SiLU(),
            nn.Linear(time_features, time_features),
        )
        self.stem = nn.Conv2d(in_channels, hidden[0], 3, padding=1)
        widths = [hidden[0], *hidden]
        self.down = nn.ModuleList(
            _ResBlock(a, b, time_features) for a, b in zip(widths, hidden, strict=False)
        )
        self.downsample = nn.ModuleList(
            nn.Conv2d(c, c, 3, stride=2, padding=1) for c in hidden[:-1]
        )
        self.mid = _ResBlock(hidden[-1], hidden[-1], time_features)
        self.up = nn.ModuleList(_ResBlock(2 * c, c, time_features) for c in hidden)
        self.upsample = nn.ModuleList(
            nn.Conv2d(b, a, 3, padding=1) for a, b in zip(hidden[:-1], hidden[1:], strict=True)
        )
        self.head = nn.Sequential(
            nn.GroupNorm(_groups(hidden[0]), hidden[0]),
            nn.SiLU(),
            nn.Conv2d(hidden[0], out_channels, 3, padding=1),
        )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        lead = x.shape[:-3]
        h = x.reshape(-1, *x.shape[-3:])  # (B, C, H, W)
        t = t.reshape(-1) if t.dim() > 0 else t.reshape(1)  # (B,) or (1,)
        e = F.silu(self.time(self.embedding(t)))
        h = self.stem(h)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, e)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, e)
        for i in reversed(range(len(self.up))):
            h = self.up[i](torch.cat([h, skips[i]], dim=1), e)
            if i > 0:
                h = self.upsample[i - 1](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.head(h)
        return out.reshape(*lead, *out.shape[1:])
