r"""Coupling flows: NICE (additive coupling) and RealNVP (affine coupling, multi-scale).

A coupling layer splits :math:`x = (x_a, x_b)` and maps

.. math:: z_a = x_a, \qquad z_b = x_b \odot e^{s(x_a)} + t(x_a), \qquad
    \log|\det J| = \textstyle\sum s(x_a),

one network pass in both directions. The log-scale is soft-clamped,
:math:`s = b \tanh(\hat s / b)`, so a layer can both contract and expand while staying
numerically tame. NICE fixes :math:`s = 0` and ends with a diagonal scaling.

Vector layers split the features in halves (after a fixed even/odd permutation, so alternating
halves are Dinh et al.'s alternating even/odd partitions); image layers use checkerboard or
channel masks with a small convolutional conditioner.
"""

from __future__ import annotations

__all__ = [
    "AffineCoupling",
    "ConvAffineCoupling",
    "DiagonalScale",
    "NICE",
    "NICEConfig",
    "RealNVP",
    "RealNVPConfig",
]

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from ppgen.models.flows.core import (
    AbstractFlow,
    FlowConfig,
    FlowTransform,
    LazyComposedTransform,
    LazyTransform,
    broadcast_context,
    soft_clamp,
)
from ppgen.models.flows.layers import (
    ActNorm,
    BatchNorm,
    FactorOut,
    Flatten,
    Permutation,
    Squeeze,
)
from ppgen.models.flows.whiten import Whiten
from ppgen.models.nets import MLP

Layout = Literal["auto", "vector", "image"]
Norm = Literal["auto", "actnorm", "batchnorm", "none"]


# ---- vector coupling --------------------------------------------------------------------------


class _CouplingTransform(FlowTransform):
    def __init__(self, layer: AffineCoupling, context: Tensor | None) -> None:
        super().__init__(1)
        self.layer, self.context = layer, context

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k = self.layer.split
        a, b = x[..., :k], x[..., k:]
        return (a, b) if self.layer.parity == 0 else (b, a)

    def _merge(self, cond: Tensor, trans: Tensor) -> Tensor:
        parts = (cond, trans) if self.layer.parity == 0 else (trans, cond)
        return torch.cat(parts, dim=-1)

    def _params(self, cond: Tensor) -> tuple[Tensor, Tensor | None]:
        layer = self.layer
        h = cond
        if self.context is not None:
            h = torch.cat([cond, broadcast_context(self.context, cond.shape[:-1])], dim=-1)
        out = layer.net(h)
        if layer.additive:
            return out, None
        shift, raw = out.chunk(2, dim=-1)
        return shift, soft_clamp(raw, layer.soft_clamp)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        cond, trans = self._split(x)
        shift, s = self._params(cond)
        if s is None:
            return self._merge(cond, trans + shift), x.new_zeros(x.shape[:-1])
        return self._merge(cond, torch.addcmul(shift, trans, s.exp())), s.sum(-1)

    def inv_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        cond, trans = self._split(z)
        shift, s = self._params(cond)
        if s is None:
            return self._merge(cond, trans - shift), z.new_zeros(z.shape[:-1])
        return self._merge(cond, (trans - shift) * torch.exp(-s)), -s.sum(-1)


class AffineCoupling(LazyTransform):
    r"""Affine (or additive) coupling on vectors.

    With ``parity=0`` the first ``features // 2`` features condition the rest; with
    ``parity=1`` the other way round. :math:`z_b = x_b e^{s(x_a, c)} + t(x_a, c)`, where
    :math:`s, t` come from an MLP (zero-initialized output: the layer starts as the identity).

    Arguments:
        features: D (at least 2).
        context: width of the context features (0: unconditional).
        hidden: the MLP's hidden widths.
        parity: which half conditions (0 or 1).
        additive: NICE's additive coupling (:math:`s = 0`).
        soft_clamp: the bound :math:`b` of the log-scale.
        activation: the MLP's activation class.

    References:
        NICE, arXiv:1410.8516; Density estimation using Real NVP, arXiv:1605.08803.
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        parity: int = 0,
        additive: bool = False,
        soft_clamp: float = 3.0,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        if features < 2:
            raise ValueError(f"a coupling layer needs at least 2 features, got {features}")
        self.features, self.split, self.parity = features, features // 2, parity % 2
        self.additive, self.soft_clamp = additive, float(soft_clamp)
        n_cond = self.split if self.parity == 0 else features - self.split
        n_trans = features - n_cond
        act = functools.partial(nn.ReLU, inplace=True) if activation is nn.ReLU else activation
        self.net = MLP(n_cond + context, n_trans * (1 if additive else 2), hidden, act)  # type: ignore[arg-type]
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, context: Tensor | None = None) -> FlowTransform:
        return _CouplingTransform(self, context)

    def extra_repr(self) -> str:
        kind = "additive" if self.additive else "affine"
        return f"{kind}, features={self.features}, parity={self.parity}"


class _DiagonalScaleTransform(FlowTransform):
    def __init__(self, log_scale: Tensor) -> None:
        super().__init__(1)
        self.log_scale = log_scale

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[:-1])

    def inv_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z * torch.exp(-self.log_scale), -self.log_scale.sum().expand(z.shape[:-1])


class DiagonalScale(LazyTransform):
    r"""NICE's final scaling layer :math:`z = x \odot e^{s}` (Dinh et al. 2014, section 3.3).

    Arguments:
        features: D.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(features))

    def forward(self, context: Tensor | None = None) -> FlowTransform:
        return _DiagonalScaleTransform(self.log_scale)


# ---- image coupling ---------------------------------------------------------------------------


class _ConvNet(nn.Sequential):
    """conv3x3 -> act -> (conv1x1 -> act)* -> conv3x3, the last zero-initialized."""

    def __init__(self, c_in: int, c_out: int, hidden: Sequence[int]) -> None:
        layers: list[nn.Module] = []
        width = c_in
        for i, h in enumerate(hidden):
            k = 3 if i == 0 else 1
            layers += [nn.Conv2d(width, h, k, padding=k // 2), nn.ReLU(inplace=True)]
            width = h
        last = nn.Conv2d(width, c_out, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        super().__init__(*layers, last)


class _ConvCouplingTransform(FlowTransform):
    def __init__(self, layer: ConvAffineCoupling, context: Tensor | None) -> None:
        super().__init__(3)
        self.layer, self.context = layer, context

    def _net(self, h: Tensor) -> Tensor:
        batch = h.shape[:-3]
        if self.context is not None:
            c = broadcast_context(self.context, batch)
            c = c[..., None, None].expand(*c.shape, *h.shape[-2:])
            h = torch.cat([h, c], dim=-3)
        out = self.layer.net(h.reshape(-1, *h.shape[-3:]))
        return out.reshape(*batch, *out.shape[-3:])

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(conditioning input, shift, log-scale) for the transformed part."""
        layer = self.layer
        if layer.mask_kind == "checkerboard":
            b = layer.mask
            out = self._net(torch.cat([x * b, b.expand(*x.shape[:-3], *b.shape)], dim=-3))
            keep = 1.0 - b
        else:
            out = self._net(self._split(x)[0])
            keep = None
        if layer.additive:
            shift, s = out, None
        else:
            shift, raw = out.chunk(2, dim=-3)
            s = soft_clamp(raw, layer.soft_clamp)
        if keep is not None:
            shift = shift * keep
            s = None if s is None else s * keep
        return shift, s, keep

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k = self.layer.split
        a, b = x[..., :k, :, :], x[..., k:, :, :]
        return (a, b) if self.layer.parity == 0 else (b, a)

    def _merge(self, cond: Tensor, trans: Tensor) -> Tensor:
        parts = (cond, trans) if self.layer.parity == 0 else (trans, cond)
        return torch.cat(parts, dim=-3)

    def _apply(self, x: Tensor, sign: int) -> tuple[Tensor, Tensor]:
        shift, s, _ = self._params(x)
        batch = x.shape[:-3]
        if self.layer.mask_kind == "checkerboard":
            target, cond = x, None
        else:
            cond, target = self._split(x)
        if s is None:
            y = target + shift if sign > 0 else target - shift
            ladj = x.new_zeros(batch)
        elif sign > 0:
            y = torch.addcmul(shift, target, s.exp())
            ladj = s.flatten(-3).sum(-1)
        else:
            y = (target - shift) * torch.exp(-s)
            ladj = -s.flatten(-3).sum(-1)
        return (y if cond is None else self._merge(cond, y)), ladj

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply(x, +1)

    def inv_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply(z, -1)


class ConvAffineCoupling(LazyTransform):
    r"""Affine (or additive) coupling on images with a checkerboard or channel mask.

    Checkerboard (``mask="checkerboard"``): pixels with :math:`(i + j) \bmod 2 =` ``parity`` stay,
    the others are scaled and shifted; the conditioner sees the kept pixels and the mask.
    Channel (``mask="channel"``): the first (``parity=0``) or last half of the channels conditions
    the other half. The conditioner is conv3x3, conv1x1..., conv3x3 with ``hidden`` channels
    (zero-initialized output).

    Arguments:
        shape: the event shape ``(C, H, W)``.
        hidden: the conditioner's channels.
        mask: ``"checkerboard"`` or ``"channel"`` (needs ``C >= 2``).
        parity: which pixels / half condition.
        additive: additive coupling (:math:`s = 0`).
        soft_clamp: the bound of the log-scale.
        context: width of context features, broadcast over the pixels as extra channels.

    References:
        Density estimation using Real NVP, arXiv:1605.08803, section 3.4.
    """

    mask: Tensor

    def __init__(
        self,
        shape: Sequence[int],
        hidden: Sequence[int] = (64, 64),
        mask: Literal["checkerboard", "channel"] = "checkerboard",
        parity: int = 0,
        additive: bool = False,
        soft_clamp: float = 3.0,
        context: int = 0,
    ) -> None:
        super().__init__()
        c, h, w = (int(s) for s in shape)
        self.shape, self.mask_kind, self.parity = (c, h, w), mask, parity % 2
        self.additive, self.soft_clamp = additive, float(soft_clamp)
        factor = 1 if additive else 2
        if mask == "checkerboard":
            grid = torch.arange(h)[:, None] + torch.arange(w)[None, :]
            self.register_buffer("mask", ((grid % 2) == self.parity).float()[None])  # (1, H, W)
            self.split = 0
            self.net = _ConvNet(c + 1 + context, factor * c, hidden)
        elif mask == "channel":
            if c < 2:
                raise ValueError(f"a channel coupling needs at least 2 channels, got {c}")
            self.register_buffer("mask", torch.ones(1, 1, 1))
            self.split = c // 2
            n_cond = self.split if self.parity == 0 else c - self.split
            self.net = _ConvNet(n_cond + context, factor * (c - n_cond), hidden)
        else:
            raise ValueError(f"mask must be 'checkerboard' or 'channel', got {mask!r}")

    def forward(self, context: Tensor | None = None) -> FlowTransform:
        return _ConvCouplingTransform(self, context)

    def extra_repr(self) -> str:
        kind = "additive" if self.additive else "affine"
        return f"{kind}, shape={self.shape}, mask={self.mask_kind}, parity={self.parity}"


# ---- shared layout helpers (used by RealNVP and Glow) -------------------------------------------


def resolve_layout(event_shape: Sequence[int], layout: str, scales: int) -> str:
    """``"image"`` or ``"vector"`` for ``layout="auto"``: image when the event is ``(C, H, W)``
    with H and W divisible by ``2 ** scales``'s squeezes."""
    if layout not in ("auto", "vector", "image"):
        raise ValueError(f"layout must be auto, vector or image, got {layout!r}")
    fits = len(event_shape) == 3 and all(s % (2 ** max(scales - 1, 0)) == 0
                                         for s in event_shape[1:])
    if layout == "image" and not fits:
        raise ValueError(
            f"layout='image' needs a (C, H, W) event with H and W divisible by "
            f"2**(scales - 1) = {2 ** max(scales - 1, 0)}, got {tuple(event_shape)}; use "
            "layout='vector' or fewer scales"
        )
    if layout == "auto":
        return "image" if fits else "vector"
    return layout


def steps_per_scale(transforms: int, scales: int) -> list[int]:
    """Split ``transforms`` steps over ``scales`` levels, earlier levels taking the remainder."""
    if scales < 1:
        raise ValueError(f"scales must be >= 1, got {scales}")
    if transforms < scales:
        raise ValueError(
            f"transforms={transforms} < scales={scales}: every scale needs at least one flow "
            "step; raise transforms or lower scales"
        )
    q, r = divmod(transforms, scales)
    return [q + (i < r) for i in range(scales)]


def input_layers(
    event_shape: Sequence[int], layout: str, standardize: bool, whiten: bool = False
) -> list[LazyTransform]:
    """Flatten (vector layout on a non-vector event), the standardizing ActNorm and, for the
    vector layout when ``whiten``, the :class:`~ppgen.models.flows.whiten.Whiten` layer that
    makes the flow start as the Gaussian fitted to the first batch."""
    layers: list[LazyTransform] = []
    d = math.prod(event_shape)
    if layout == "vector" and len(event_shape) != 1:
        layers.append(Flatten(event_shape))
    if standardize:
        layers.append(ActNorm((d,) if layout == "vector" else tuple(event_shape)))
    if whiten and layout == "vector" and d > 1:
        layers.append(Whiten(d))
    return layers


def even_odd(features: int) -> Permutation:
    """The permutation putting even features first, so alternating halves alternate parity."""
    return Permutation(torch.cat([torch.arange(0, features, 2), torch.arange(1, features, 2)]))


def norm_layer(norm: str, shape: Sequence[int]) -> list[LazyTransform]:
    """The normalization layer after a coupling (none, actnorm or batchnorm)."""
    if norm == "actnorm":
        return [ActNorm(shape)]
    if norm == "batchnorm":
        return [BatchNorm(shape)]
    if norm == "none":
        return []
    raise ValueError(f"norm must be auto, actnorm, batchnorm or none, got {norm!r}")


# ---- NICE ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class NICEConfig(FlowConfig):
    """Configuration of :class:`NICE` (fields of :class:`~ppgen.models.flows.core.FlowConfig`)."""


class NICE(AbstractFlow):
    r"""NICE: additive coupling layers and a final diagonal scaling (volume-preserving couplings).

    .. math:: z = e^{s} \odot (g_T \circ \dots \circ g_1)(x), \qquad
        g_i: z_b = x_b + m_i(x_a), \qquad \log|\det J| = \textstyle\sum_d s_d

    Image-shaped data is flattened (as in the paper's MNIST model); ``transforms`` is the number
    of coupling layers, alternating which half is updated.

    References:
        Dinh, Krueger, Bengio. NICE: Non-linear Independent Components Estimation,
        arXiv:1410.8516.

    Example:
        >>> import ppgen
        >>> m = ppgen.build("nice", ppgen.datasets.load("moons", "val"), transforms=4, hidden=[32])
        >>> m.sample(3, seed=0).shape
        torch.Size([3, 2])
    """

    Config: ClassVar = NICEConfig

    def _layers(self) -> tuple[list[LazyTransform], tuple[int, ...]]:
        cfg = self.config
        d = cfg.num_dims
        layers = input_layers(cfg.event_shape, "vector", cfg.standardize, cfg.whitens)
        if d > 2:
            layers.append(even_odd(d))
        layers += [AffineCoupling(d, 0, cfg.hidden, i % 2, additive=True)
                   for i in range(cfg.transforms)]
        layers.append(DiagonalScale(d))
        return layers, (d,)


# ---- RealNVP ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class RealNVPConfig(FlowConfig):
    """Configuration of :class:`RealNVP`.

    Arguments:
        layout: ``"image"`` (checkerboard/channel masks, squeeze, multi-scale factor-out),
            ``"vector"`` (MLP couplings on the flattened data) or ``"auto"`` (image for
            ``(C, H, W)`` data, else vector).
        scales: multi-scale levels for the image layout.
        norm: normalization after each coupling: ``"actnorm"``, ``"batchnorm"``, ``"none"``, or
            ``"auto"``: actnorm in the image layout (deep multi-scale stacks need it), none in
            the vector layout (as in zuko/nflows, whose shallow MLP stacks train without).
        soft_clamp: bound of the coupling log-scales.
    """

    layout: Layout = "auto"
    scales: int = 2
    norm: Norm = "auto"
    soft_clamp: float = 3.0


class RealNVP(AbstractFlow):
    r"""RealNVP: affine coupling layers with alternating masks, optional batch/act normalization,
    and for images a multi-scale architecture.

    Image layout, per scale: checkerboard couplings, a squeeze, channel couplings, then half the
    channels are factored out to the base; the last scale has checkerboard couplings only.
    ``transforms`` couplings are spread over ``scales`` levels. Vector layout: ``transforms`` MLP
    couplings alternating halves (even/odd features).

    References:
        Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP, arXiv:1605.08803.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("digits", "val")
        >>> m = ppgen.build("realnvp", ds, transforms=4, hidden=[16])
        >>> m.log_prob(ds.data[:2]).shape
        torch.Size([2])
    """

    Config: ClassVar = RealNVPConfig

    def _layers(self) -> tuple[list[LazyTransform], tuple[int, ...]]:
        cfg = self.config
        d = cfg.num_dims
        layout = resolve_layout(cfg.event_shape, cfg.layout, cfg.scales)
        layers = input_layers(cfg.event_shape, layout, cfg.standardize, cfg.whitens)
        if layout == "vector":
            norm = "none" if cfg.norm == "auto" else cfg.norm
            if d > 2:
                layers.append(even_odd(d))
            for i in range(cfg.transforms):
                layers.append(AffineCoupling(d, 0, cfg.hidden, i % 2, soft_clamp=cfg.soft_clamp))
                if i < cfg.transforms - 1:
                    layers += norm_layer(norm, (d,))
            return layers, (d,)
        counts = steps_per_scale(cfg.transforms, cfg.scales)
        return layers + self._scale(tuple(cfg.event_shape), counts), (d,)

    def _scale(self, shape: tuple[int, ...], counts: list[int]) -> list[LazyTransform]:
        cfg = self.config
        c, h, w = shape
        n = counts[0]

        norm = "actnorm" if cfg.norm == "auto" else cfg.norm

        def coupling(s: tuple[int, ...], mask: str, i: int) -> list[LazyTransform]:
            return [ConvAffineCoupling(s, cfg.hidden, mask, i % 2,  # type: ignore[arg-type]
                                       soft_clamp=cfg.soft_clamp), *norm_layer(norm, s)]

        if len(counts) == 1:
            layers = [x for i in range(n) for x in coupling(shape, "checkerboard", i)]
            return [*layers, Flatten(shape)]
        n_board = math.ceil(n / 2)
        layers = [x for i in range(n_board) for x in coupling(shape, "checkerboard", i)]
        squeezed = (4 * c, h // 2, w // 2)
        layers.append(Squeeze(shape))
        layers += [x for i in range(n - n_board) for x in coupling(squeezed, "channel", i)]
        kept = (2 * c, h // 2, w // 2)
        inner = LazyComposedTransform(*self._scale(kept, counts[1:]))
        layers.append(FactorOut(squeezed, 2 * c, inner))
        return layers

    def extra_repr(self) -> str:
        cfg = self.config
        layout = resolve_layout(cfg.event_shape, cfg.layout, cfg.scales)
        return f"layout={layout!r}, norm={cfg.norm!r}, " + super().extra_repr()
