"""Layers of PixelCNN and Gated PixelCNN: causal masks, masked convolutions with incremental
(one pixel, one row) evaluation for fast sampling, and the two causal networks. The families
themselves live in :mod:`ppgen.models.autoregressive.pixelcnn`; their output distribution, the
discretized logistic mixture, is shared with the VAE and lives in
:mod:`ppgen.models.distributions` (re-exported here under its old name).
"""

from __future__ import annotations

__all__ = [
    "DiscretizedLogisticMixture",
    "MaskedConv2d",
    "channel_groups",
    "conv_mask",
]

import abc
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppgen.models.base import building_on_meta
from ppgen.models.distributions import DiscretizedLogisticMixture

if TYPE_CHECKING:
    from ppgen.models.autoregressive.pixelcnn import PixelCNNConfig

MaskType = Literal["A", "B"]


# ---- masked convolutions ----------------------------------------------------------------------


def channel_groups(width: int, channels: int) -> Tensor:
    """The colour group (``0..channels-1``) of each of ``width`` features, in contiguous blocks."""
    if building_on_meta():  # a size count: the shape is all that matters
        return torch.empty(width, dtype=torch.long)
    return torch.arange(width) * channels // width


def conv_mask(
    kernel_size: tuple[int, int],
    center: tuple[int, int],
    in_groups: Tensor,
    out_groups: Tensor,
    mask_type: MaskType,
) -> Tensor:
    """The 0/1 weight mask of a causal convolution (van den Oord et al. 2016, section 3.4).

    A kernel tap before ``center`` in raster order is on; taps after it are off. At ``center``
    the output feature of group ``g`` sees input features of groups ``< g`` (mask ``"A"``) or
    ``<= g`` (mask ``"B"``), which orders the colour channels within a pixel.

    Arguments:
        kernel_size: ``(kh, kw)``.
        center: the tap that lies over the output's own pixel.
        in_groups: the group of each input feature, ``(in_channels,)``.
        out_groups: the group of each output feature, ``(out_channels,)``.
        mask_type: ``"A"`` or ``"B"``.

    Returns:
        ``Tensor[out_channels, in_channels, kh, kw]`` of zeros and ones.

    Example:
        >>> m = conv_mask((3, 3), (1, 1), torch.zeros(1), torch.zeros(1), "A")
        >>> m[0, 0]
        tensor([[1., 1., 1.],
                [1., 0., 0.],
                [0., 0., 0.]])
    """
    kh, kw = kernel_size
    if building_on_meta():  # a size count: the shape is all that matters
        return torch.empty(len(out_groups), len(in_groups), kh, kw)
    rows, cols = torch.arange(kh)[:, None], torch.arange(kw)[None, :]
    before = (rows < center[0]) | ((rows == center[0]) & (cols < center[1]))  # (kh, kw)
    at = (rows == center[0]) & (cols == center[1])
    if mask_type == "A":
        sees = out_groups[:, None] > in_groups[None, :]
    else:
        sees = out_groups[:, None] >= in_groups[None, :]
    mask = before[None, None] | (at[None, None] & sees[:, :, None, None])
    return mask.to(torch.get_default_dtype())


class MaskedConv2d(nn.Conv2d):
    """A convolution with a fixed 0/1 weight mask and explicit (possibly one-sided) padding.

    Besides the full ``forward``, it computes single outputs for incremental sampling from a
    *canvas*: a zero-bordered map holding the input computed so far, with ``margin`` pixels of
    zeros on every side (so reads there equal the zero padding of ``forward``).

    Arguments:
        in_channels: input features.
        out_channels: output features.
        kernel_size: ``(kh, kw)``.
        padding: zeros added ``(left, right, top, bottom)``.
        mask: ``(out_channels, in_channels, kh, kw)`` or None for an unmasked convolution.

    Shapes:
        ``forward``: ``(N, in, H, W) -> (N, out, H', W')``; ``at``: ``(N, out)``;
        ``row``: ``(N, out, W)``; ``pointwise`` (1x1 kernels): ``(N, in) -> (N, out)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        padding: tuple[int, int, int, int] = (0, 0, 0, 0),
        mask: Tensor | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size)
        if mask is None:
            mask = torch.ones_like(self.weight)
        if mask.shape != self.weight.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != {tuple(self.weight.shape)}")
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)
        self.pad = tuple(padding)

    def masked_weight(self) -> Tensor:
        return self.weight * self.mask

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, self.pad), self.masked_weight(), self.bias)

    def at(self, canvas: Tensor, margin: int, r: int, c: int) -> Tensor:
        """The output at pixel ``(r, c)`` from a canvas with ``margin`` zeros around it."""
        kh, kw = self.kernel_size
        r0, c0 = margin + r - self.pad[2], margin + c - self.pad[0]
        window = canvas[:, :, r0 : r0 + kh, c0 : c0 + kw].reshape(canvas.shape[0], -1)
        return F.linear(window, self.masked_weight().flatten(1), self.bias)

    def row(self, canvas: Tensor, margin: int, r: int, width: int) -> Tensor:
        """The outputs of row ``r`` (all ``width`` columns) from a canvas."""
        kh, kw = self.kernel_size
        r0, c0 = margin + r - self.pad[2], margin - self.pad[0]
        window = canvas[:, :, r0 : r0 + kh, c0 : c0 + width + kw - 1]
        return F.conv2d(window, self.masked_weight(), self.bias)[:, :, 0, :]

    def pointwise(self, h: Tensor) -> Tensor:
        """A 1x1 convolution applied to one pixel's features."""
        assert self.kernel_size == (1, 1), "pointwise needs a 1x1 kernel"
        return F.linear(h, self.masked_weight().flatten(1), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pad={self.pad}"


def _conv1x1(in_groups: Tensor, out_groups: Tensor, masked: bool = True) -> MaskedConv2d:
    """A 1x1 convolution, mask B over channel groups (or unmasked)."""
    mask = conv_mask((1, 1), (0, 0), in_groups, out_groups, "B") if masked else None
    return MaskedConv2d(len(in_groups), len(out_groups), (1, 1), mask=mask)


def _gate(h: Tensor) -> Tensor:
    """Gated activation ``tanh(a) * sigmoid(b)`` over the two halves of dim 1 (eq. 2 of
    van den Oord et al. 2016b)."""
    a, b = h.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def _at(canvas: Tensor, margin: int, r: int, c: int) -> Tensor:
    """A canvas's features at pixel ``(r, c)``, ``(N, channels)``."""
    return canvas[:, :, margin + r, margin + c]


def _put(canvas: Tensor, margin: int, r: int, c: int, value: Tensor) -> None:
    canvas[:, :, margin + r, margin + c] = value


# ---- the networks -----------------------------------------------------------------------------


class _ResidualBlock(nn.Module):
    """PixelCNN residual block (van den Oord et al. 2016a, figure 5): ReLU, 1x1 to ``h``, ReLU,
    kxk mask B, ReLU, 1x1 to ``2h``, plus the input (projected by a 1x1 when widths differ)."""

    def __init__(self, in_width: int, h: int, k: int, cfg: PixelCNNConfig) -> None:
        super().__init__()
        channels = cfg.event_shape[0]
        g_in, g_h, g_out = (channel_groups(w, channels) for w in (in_width, h, 2 * h))
        self.reduce = _conv1x1(g_in, g_h)
        mask = conv_mask((k, k), (k // 2, k // 2), g_h, g_h, "B")
        self.conv = MaskedConv2d(h, h, (k, k), (k // 2,) * 4, mask)
        self.expand = _conv1x1(g_h, g_out)
        self.skip = None if in_width == 2 * h else _conv1x1(g_in, g_out)
        self.embed = None if cfg.num_classes is None else nn.Embedding(cfg.num_classes, h)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, s: Tensor, context: Tensor | None) -> Tensor:
        a = self.conv(F.relu(self.reduce(F.relu(s))))
        if self.embed is not None:
            a = a + self.embed(context)[:, :, None, None]
        skip = s if self.skip is None else self.skip(s)
        return skip + self.expand(self.dropout(F.relu(a)))

    def step(
        self, s: Tensor, canvas: Tensor, margin: int, r: int, c: int, bias: Tensor | None
    ) -> Tensor:
        """The block at one pixel; ``canvas`` caches the bottleneck map the kxk conv reads."""
        _put(canvas, margin, r, c, F.relu(self.reduce.pointwise(F.relu(s))))
        a = self.conv.at(canvas, margin, r, c)
        if bias is not None:
            a = a + bias
        skip = s if self.skip is None else self.skip.pointwise(s)
        return skip + self.expand.pointwise(F.relu(a))


class _Head(nn.Module):
    """ELU, 1x1 mask B, ELU, 1x1 mask B to ``C * P`` outputs (channel ``c``'s ``P``
    parameters are outputs ``c*P .. c*P + P - 1``). ELU rather than the papers' ReLU, as in
    PixelCNN++: with few features per colour group, a ReLU unit can be off for every input and
    cut a channel off from the ones before it for good."""

    def __init__(self, in_width: int, cfg: PixelCNNConfig) -> None:
        super().__init__()
        channels = cfg.event_shape[0]
        width = 2 * cfg.hidden[-1]
        g_in, g_mid = channel_groups(in_width, channels), channel_groups(width, channels)
        g_out = channel_groups(channels * cfg.params_per_subpixel, channels)
        self.hidden = _conv1x1(g_in, g_mid)
        self.out = _conv1x1(g_mid, g_out)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(F.elu(self.hidden(F.elu(h))))

    def pointwise(self, h: Tensor) -> Tensor:
        return self.out.pointwise(F.elu(self.hidden.pointwise(F.elu(h))))


class _Net(nn.Module, abc.ABC):
    """A causal network: ``forward`` maps scaled images to per-sub-pixel parameters; the
    incremental interface (``start``/``pixel``/``write``/``end_row``) computes the same
    parameters one pixel at a time from cached activations."""

    def __init__(self, cfg: PixelCNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.margin = max(cfg.kernel_size, cfg.first_kernel_size) // 2

    def canvas(self, like: Tensor, n: int, channels: int) -> Tensor:
        _, height, width = self.cfg.event_shape
        m = self.margin
        return like.new_zeros(n, channels, height + 2 * m, width + 2 * m)

    @abc.abstractmethod
    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        """``(N, C, H, W)`` scaled to [-1, 1] -> ``(N, C*P, H, W)``."""

    @abc.abstractmethod
    def start(self, like: Tensor, n: int, context: Tensor | None) -> dict[str, Any]:
        """Empty caches for ``n`` images."""

    @abc.abstractmethod
    def pixel(self, state: dict[str, Any], r: int, c: int) -> Tensor:
        """The parameters at pixel ``(r, c)``, ``(N, C*P)``, from the caches."""

    def write(self, state: dict[str, Any], r: int, c: int, channel: int, value: Tensor) -> None:
        """Record the scaled value drawn for sub-pixel ``(channel, r, c)``."""
        m = self.margin
        state["x"][:, channel, m + r, m + c] = value

    def end_row(self, state: dict[str, Any], r: int) -> None:  # noqa: B027 - optional hook
        """Called once row ``r`` is complete."""


class _PixelCNNNet(_Net):
    def __init__(self, cfg: PixelCNNConfig) -> None:
        super().__init__(cfg)
        channels = cfg.event_shape[0]
        k0, width = cfg.first_kernel_size, 2 * cfg.hidden[0]
        mask = conv_mask(
            (k0, k0),
            (k0 // 2, k0 // 2),
            torch.arange(channels),
            channel_groups(width, channels),
            "A",
        )
        self.conv_in = MaskedConv2d(channels, width, (k0, k0), (k0 // 2,) * 4, mask)
        blocks = []
        for h in cfg.hidden:
            blocks.append(_ResidualBlock(width, h, cfg.kernel_size, cfg))
            width = 2 * h
        self.blocks = nn.ModuleList(blocks)
        self.head = _Head(width, cfg)

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        s = self.conv_in(x)
        for block in self.blocks:
            s = block(s, context)
        return self.head(s)

    def start(self, like: Tensor, n: int, context: Tensor | None) -> dict[str, Any]:
        return {
            "x": self.canvas(like, n, self.cfg.event_shape[0]),
            "u": [self.canvas(like, n, b.conv.in_channels) for b in self.blocks],
            "bias": [None if b.embed is None else b.embed(context) for b in self.blocks],
        }

    def pixel(self, state: dict[str, Any], r: int, c: int) -> Tensor:
        m = self.margin
        s = self.conv_in.at(state["x"], m, r, c)
        for block, canvas, bias in zip(self.blocks, state["u"], state["bias"], strict=True):
            s = block.step(s, canvas, m, r, c, bias)
        return self.head.pointwise(s)


class _GatedLayer(nn.Module):
    """One Gated PixelCNN layer (van den Oord et al. 2016b, figure 2).

    Vertical stack: a ``(k//2 + 1) x k`` convolution whose output at row ``r`` sees input rows
    ``r - k//2 .. r`` (every column in reach), gated. Horizontal stack: a ``1 x (k//2 + 1)``
    convolution over the row up to the pixel (mask A or B at the pixel itself), plus a 1x1 link
    from the vertical pre-activations *shifted down one row* (so only rows above reach it),
    gated, a 1x1 and a residual connection (none in the first layer).
    """

    def __init__(self, in_width: int, h: int, k: int, first: bool, cfg: PixelCNNConfig) -> None:
        super().__init__()
        channels = cfg.event_shape[0]
        g_in = torch.arange(channels) if first else channel_groups(in_width, channels)
        g_h = channel_groups(h, channels)
        g_2h = torch.cat([g_h, g_h])  # tanh half and sigmoid half share the groups
        self.first = first
        self.v_conv = MaskedConv2d(in_width, 2 * h, (k // 2 + 1, k), (k // 2, k // 2, k // 2, 0))
        mask = conv_mask((1, k // 2 + 1), (0, k // 2), g_in, g_2h, "A" if first else "B")
        self.h_conv = MaskedConv2d(in_width, 2 * h, (1, k // 2 + 1), (k // 2, 0, 0, 0), mask)
        self.link = _conv1x1(torch.zeros(2 * h), torch.zeros(2 * h), masked=False)
        self.h_out = _conv1x1(g_h, g_h)
        self.skip = None if first or in_width == h else _conv1x1(g_in, g_h)
        num_classes = cfg.num_classes
        self.embed_v = None if num_classes is None else nn.Embedding(num_classes, 2 * h)
        self.embed_h = None if num_classes is None else nn.Embedding(num_classes, 2 * h)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, v: Tensor, h: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        v_pre = self.v_conv(v)  # (N, 2h, H, W); row r sees rows <= r
        shifted = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]  # row r now sees rows < r only
        h_pre = self.h_conv(h) + self.link(shifted)
        if self.embed_v is not None and self.embed_h is not None:
            v_pre = v_pre + self.embed_v(context)[:, :, None, None]
            h_pre = h_pre + self.embed_h(context)[:, :, None, None]
        h_new = self.h_out(self.dropout(_gate(h_pre)))
        if not self.first:
            h_new = h_new + (h if self.skip is None else self.skip(h))
        return _gate(v_pre), h_new


class _GatedPixelCNNNet(_Net):
    def __init__(self, cfg: PixelCNNConfig) -> None:
        super().__init__(cfg)
        channels = cfg.event_shape[0]
        widths = [cfg.hidden[0], *cfg.hidden]
        layers, in_width = [], channels
        for i, h in enumerate(widths):
            k = cfg.first_kernel_size if i == 0 else cfg.kernel_size
            layers.append(_GatedLayer(in_width, h, k, i == 0, cfg))
            in_width = h
        self.layers = nn.ModuleList(layers)
        self.head = _Head(in_width, cfg)

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        v, h = x, x
        for layer in self.layers:
            v, h = layer(v, h, context)
        return self.head(h)

    def start(self, like: Tensor, n: int, context: Tensor | None) -> dict[str, Any]:
        x = self.canvas(like, n, self.cfg.event_shape[0])
        _, height, width = self.cfg.event_shape
        widths = [layer.h_out.out_channels for layer in self.layers]

        def bias(embed: nn.Embedding | None) -> Tensor | None:
            return None if embed is None else embed(context)

        return {
            "x": x,
            # inputs of layer i's convolutions: the image for i = 0, layer i-1's outputs after
            "v_in": [x] + [self.canvas(like, n, w) for w in widths[:-1]],
            "h_in": [x] + [self.canvas(like, n, w) for w in widths[:-1]],
            # vertical pre-activations, filled one finished row at a time
            "v_pre": [like.new_zeros(n, 2 * w, height, width) for w in widths],
            "bias_v": [bias(layer.embed_v) for layer in self.layers],
            "bias_h": [bias(layer.embed_h) for layer in self.layers],
        }

    def pixel(self, state: dict[str, Any], r: int, c: int) -> Tensor:
        m = self.margin
        h = None
        for i, layer in enumerate(self.layers):
            if r > 0:
                link = layer.link.pointwise(state["v_pre"][i][:, :, r - 1, c])
            else:  # the shifted map is zero on row 0: the link is its bias
                link = layer.link.bias.expand(state["x"].shape[0], -1)
            h_pre = layer.h_conv.at(state["h_in"][i], m, r, c) + link
            if state["bias_h"][i] is not None:
                h_pre = h_pre + state["bias_h"][i]
            h_new = layer.h_out.pointwise(_gate(h_pre))
            if not layer.first:
                h_new = h_new + (h if layer.skip is None else layer.skip.pointwise(h))
            if i + 1 < len(self.layers):
                _put(state["h_in"][i + 1], m, r, c, h_new)
            h = h_new
        assert h is not None
        return self.head.pointwise(h)

    def end_row(self, state: dict[str, Any], r: int) -> None:
        m, width = self.margin, self.cfg.event_shape[2]
        for i, layer in enumerate(self.layers):
            v_pre = layer.v_conv.row(state["v_in"][i], m, r, width)  # (N, 2h, W)
            state["v_pre"][i][:, :, r] = v_pre
            if state["bias_v"][i] is not None:
                v_pre = v_pre + state["bias_v"][i][:, :, None]
            if i + 1 < len(self.layers):
                state["v_in"][i + 1][:, :, m + r, m : m + width] = _gate(v_pre)
