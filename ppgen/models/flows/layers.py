r"""Layers shared by several flows: normalization, reshaping, permutation, invertible linear maps.

Every layer takes the ``shape`` of one event it acts on: ``(D,)`` for vectors (event_dim 1) or
``(C, H, W)`` for images (event_dim 3, parameters per channel). All of them broadcast over any
number of leading batch dims.
"""

from __future__ import annotations

__all__ = [
    "ActNorm",
    "BatchNorm",
    "FactorOut",
    "Flatten",
    "InvertibleLinear",
    "Permutation",
    "Squeeze",
]

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Size, Tensor, nn

from ppgen.models.flows.core import FlowTransform, LazyTransform


def _param_shape(shape: Sequence[int]) -> tuple[tuple[int, ...], int, int]:
    """(parameter shape, event_dim, spatial multiplier) for a vector or image event shape."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 1:
        return shape, 1, 1
    if len(shape) == 3:
        c, h, w = shape
        return (c, 1, 1), 3, h * w
    raise ValueError(f"flow layers take (D,) or (C, H, W) events, got {shape}")


def _batch(x: Tensor, event_dim: int) -> Size:
    return x.shape[: x.dim() - event_dim]


# ---- elementwise affine: actnorm and batch norm -------------------------------------------------


class _ElementwiseAffine(FlowTransform):
    """``z = x * exp(s) + b`` with ``s, b`` broadcast per feature or channel."""

    def __init__(self, shift: Tensor | None, log_scale: Tensor, event_dim: int, mult: int) -> None:
        super().__init__(event_dim)
        self.shift, self.log_scale, self.mult = shift, log_scale, mult

    def _ladj(self, x: Tensor) -> Tensor:
        return (self.log_scale.sum() * self.mult).expand(_batch(x, self._domain_event_dim))

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = x * self.log_scale.exp()
        if self.shift is not None:
            z = z + self.shift
        return z, self._ladj(x)

    def inv_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x = z if self.shift is None else z - self.shift
        x = x * torch.exp(-self.log_scale)
        return x, -self._ladj(z)


class ActNorm(LazyTransform):
    r"""Activation normalization (Kingma & Dhariwal 2018): :math:`z = x e^{s} + b` per feature
    (vectors) or per channel (images), initialized from data so that the first batch comes out
    with zero mean and unit variance.

    The data-dependent initialization runs once, through :meth:`initialize` (the family's
    ``initialize`` hook, which the trainer calls before the first step and never on resume); the
    buffer ``initialized`` records it in the state dict, so a loaded model is never re-initialized.

    Arguments:
        shape: the event shape, ``(D,)`` or ``(C, H, W)``.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions, arXiv:1807.03039.
    """

    initialized: Tensor

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        pshape, self.event_dim, self.mult = _param_shape(shape)
        self.shift = nn.Parameter(torch.zeros(pshape))
        self.log_scale = nn.Parameter(torch.zeros(pshape))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, context: Tensor | None = None) -> FlowTransform:
        return _ElementwiseAffine(self.shift, self.log_scale, self.event_dim, self.mult)

    @torch.no_grad()
    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if not bool(self.initialized):
            flat = x.movedim(-self.event_dim, 0).reshape(x.shape[-self.event_dim], -1)
            if flat.shape[1] > 1:
                mean = flat.mean(1)
                std = flat.std(1).clamp_min(1e-3)
                shape = self.shift.shape
                self.log_scale.copy_(-std.log().reshape(shape))
                self.shift.copy_((-mean / std).reshape(shape))
                self.initialized.fill_(True)
        return super().initialize(x, context)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.shift.shape)}, initialized={bool(self.initialized)}"


class _BatchNormTransform(FlowTransform):
    def __init__(self, layer: BatchNorm, batch_stats: bool) -> None:
        super().__init__(layer.event_dim)
        self.layer, self.batch_stats = layer, batch_stats

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        layer = self.layer
        if not self.batch_stats:
            return layer.running_mean, layer.running_var
        flat = x.movedim(-layer.event_dim, 0).reshape(x.shape[-layer.event_dim], -1)
        mean, var = flat.mean(1), flat.var(1, unbiased=False)
        with torch.no_grad():
            layer.running_mean.lerp_(mean.reshape(layer.running_mean.shape), layer.momentum)
            layer.running_var.lerp_(var.reshape(layer.running_var.shape), layer.momentum)
        return mean.reshape(layer.running_mean.shape), var.reshape(layer.running_var.shape)

    def _log_scale(self, var: Tensor) -> Tensor:
        return self.layer.log_gamma - 0.5 * torch.log(var + self.layer.eps)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, var = self._stats(x)
        s = self._log_scale(var)
        z = (x - mean) * s.exp() + self.layer.beta
        ladj = (s.sum() * self.layer.mult).expand(_batch(x, self.layer.event_dim))
        return z, ladj

    def inv_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        layer = self.layer
        s = self._log_scale(layer.running_var)
        x = (z - layer.beta) * torch.exp(-s) + layer.running_mean
        return x, (-s.sum() * layer.mult).expand(_batch(z, layer.event_dim))


class BatchNorm(LazyTransform):
    r"""Batch normalization as a flow layer (Dinh et al. 2017, section 3.7):
    :math:`z = (x - \mu) / \sqrt{\sigma^2 + \epsilon}\, e^{\gamma} + \beta`.

    In training mode :math:`\mu, \sigma^2` are the batch's (so the log-det is that of the batch
    map, not a per-example Jacobian) and update running averages; in eval mode, and always for
    the inverse, the running averages are used, which makes it an ordinary per-example bijection.

    Arguments:
        shape: the event shape, ``(D,)`` or ``(C, H, W)``.
        momentum: the running averages' update rate.
        eps: added to the variance.
    """

    running_mean: Tensor
    running_var: Tensor

    def __init__(self, shape: Sequence[int], momentum: float = 0.05, eps: float = 1e-5) -> None:
        super().__init__()
        pshape, self.event_dim, self.mult = _param_shape(shape)
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(pshape))
        self.beta = nn.Parameter(torch.zeros(pshape))
        self.register_buffer("running_mean", torch.zeros(pshape))
        self.register_buffer("running_var", torch.ones(pshape))

    def forward(self, context: Tensor | None = None) -> FlowTransform:
        return _BatchNormTransform(self, batch_stats=self.training)


# ---- reshaping and permutations ---------------------------------------------------------------


class _Reshape(FlowTransform):
    """A volume-preserving rearrangement (ladj 0) given by two functions."""

    def __init__(self, forward: object, inverse: object, event_dim: int, out_event_dim: int,
                 shapes: tuple[Size, Size]) -> None:
        super().__init__(event_dim, out_event_dim)
        self._f, self._g = forward, inverse
        self._shapes = shapes

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        batch = _batch(x, self._domain_event_dim)
        return self._f(x), x.new_zeros(batch)  # type: ignore[operator]

    def inv_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        batch = _batch(z, self._codomain_event_dim)
        return self._g(z), z.new_zeros(batch)  # type: ignore[operator]

    def forward_shape(self, shape: Size) -> Size:
        n = len(shape) - self._domain_event_dim
        return Size(shape[:n]) + self._shapes[1]

    def inverse_shape(self, shape: Size) -> Size:
        n = len(shape) - self._codomain_event_dim
        return Size(shape[:n]) + self._shapes[0]


class Flatten(LazyTransform):
    """``(C, H, W) -> (C H W,)`` (or any event shape to a vector); log-det 0.

    Arguments:
        shape: the event shape to flatten.
    """

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = Size(shape)

    def forward(self, context: Tensor | None = None) -> FlowTransform:
        k, shape = len(self.shape), self.shape
        return _Reshape(
            lambda x: x.flatten(-k) if k > 1 else x,
            lambda z: z.unflatten(-1, shape) if k > 1 else z,
            k, 1, (shape, Size([math.prod(shape)])),
        )

    def extra_repr(self) -> str:
        return f"shape={tuple(self.shape)}"


class Squeeze(LazyTransform):
    """Space-to-depth: ``(C, H, W) -> (4C, H/2, W/2)``, each 2x2 patch into channels (Dinh et al.
    2017, figure 3); log-det 0.

    Arguments:
        shape: the input event shape ``(C, H, W)`` with even ``H`` and ``W``.
    """

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        c, h, w = (int(s) for s in shape)
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs even height and width, got {(c, h, w)}")
        self.shape = (c, h, w)

    def forward(self, context: Tensor | None = None) -> FlowTransform:
        c, h, w = self.shape

        def squeeze(x: Tensor) -> Tensor:
            n = x.dim() - 3
            x = x.reshape(*x.shape[:n], c, h // 2, 2, w // 2, 2)  # (..., C, H/2, 2, W/2, 2)
            x = x.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)  # (..., C, 2, 2, H/2, W/2)
            return x.reshape(*x.shape[:n], 4 * c, h // 2, w // 2)

        def unsqueeze(z: Tensor) -> Tensor:
            n = z.dim() - 3
            z = z.reshape(*z.shape[:n], c, 2, 2, h // 2, w // 2)
            z = z.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)  # (..., C, H/2, 2, W/2, 2)
            return z.reshape(*z.shape[:n], c, h, w)

        return _Reshape(squeeze, unsqueeze, 3, 3,
                        (Size(self.shape), Size((4 * c, h // 2, w // 2))))

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


class Permutation(LazyTransform):
    """``z = x[..., perm]`` on vectors; log-det 0.

    Arguments:
        perm: a permutation of ``range(D)``.
    """

    perm: Tensor
    inverse_perm: Tensor

    def __init__(self, perm: Tensor) -> None:
        super().__init__()
        perm = torch.as_tensor(perm, dtype=torch.long)
        if not perm.is_meta and not torch.equal(perm.sort().values, torch.arange(len(perm))):
            raise ValueError("perm must be a permutation of range(D)")
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", perm.argsort())

    def forward(self, context: Tensor | None = None) -> FlowTransform:
        d = len(self.perm)
        # index_select, not x[..., perm]: the same gather at a sixth of advanced indexing's cost
        return _Reshape(lambda x: x.index_select(-1, self.perm),
                        lambda z: z.index_select(-1, self.inverse_perm), 1, 1,
                        (Size([d]), Size([d])))


class _FactorOutTransform(FlowTransform):
    def __init__(self, layer: FactorOut, inner: FlowTransform) -> None:
        super().__init__(3, 1)
        self.layer, self.inner = layer, inner

    @property
    def sequential_call(self) -> bool:  # type: ignore[override]
        return self.inner.sequential_call

    @property
    def sequential_inverse(self) -> bool:  # type: ignore[override]
        return self.inner.sequential_inverse

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k = self.layer.factored
        z_inner, ladj = self.inner.call_and_ladj(x[..., k:, :, :])
        return torch.cat([x[..., :k, :, :].flatten(-3), z_inner], dim=-1), ladj

    def inv_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        k, (_, h, w) = self.layer.factored, self.layer.shape
        x_inner, ladj = self.inner.inv_and_ladj(z[..., k * h * w :])
        x_out = z[..., : k * h * w].unflatten(-1, (k, h, w))
        return torch.cat([x_out, x_inner], dim=-3), ladj

    def inverse(self, z: Tensor) -> Tensor:
        k, (_, h, w) = self.layer.factored, self.layer.shape
        x_inner = self.inner.inverse(z[..., k * h * w :])
        return torch.cat([z[..., : k * h * w].unflatten(-1, (k, h, w)), x_inner], dim=-3)

    def forward_shape(self, shape: Size) -> Size:
        return Size(shape[:-3]) + Size([math.prod(self.layer.shape)])

    def inverse_shape(self, shape: Size) -> Size:
        return Size(shape[:-1]) + Size(self.layer.shape)


class FactorOut(LazyTransform):
    r"""The multi-scale split (Dinh et al. 2017, section 3.6): the first ``factored`` channels go
    straight to the base; the others continue through ``inner``, whose output is a flat vector.

    The result is the flat vector ``(z_factored, z_inner)``, so nesting ``FactorOut`` layers
    builds the whole multi-scale architecture, and the base is a standard normal over D.

    Arguments:
        shape: the input event shape ``(C, H, W)``.
        factored: how many channels to factor out.
        inner: the layer (e.g. a :class:`~ppgen.models.flows.core.LazyComposedTransform`) for
            the remaining ``(C - factored, H, W)``, ending in a flat vector.
    """

    def __init__(self, shape: Sequence[int], factored: int, inner: LazyTransform) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        if not 0 < factored < self.shape[0]:
            raise ValueError(f"factored must lie in (0, {self.shape[0]}), got {factored}")
        self.factored = factored
        self.inner = inner

    def forward(self, context: Tensor | None = None) -> FlowTransform:
        return _FactorOutTransform(self, self.inner(context))

    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        k = self.factored
        z_inner = self.inner.initialize(x[..., k:, :, :], context)
        return torch.cat([x[..., :k, :, :].flatten(-3), z_inner], dim=-1)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, factored={self.factored}"


# ---- invertible linear map / 1x1 convolution ----------------------------------------------------


class _InvertibleLinearTransform(FlowTransform):
    def __init__(self, layer: InvertibleLinear) -> None:
        super().__init__(layer.event_dim)
        self.layer = layer

    def _apply(self, w: Tensor, x: Tensor) -> Tensor:
        if self.layer.event_dim == 1:
            return x @ w.T
        return (w @ x.flatten(-2)).unflatten(-1, x.shape[-2:])  # 1x1 conv over channels

    def _ladj(self, x: Tensor) -> Tensor:
        layer = self.layer
        return (layer.log_s.sum() * layer.mult).expand(_batch(x, layer.event_dim))

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply(self.layer.weight(), x), self._ladj(x)

    def inv_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._apply(self.layer.inverse_weight(), z), -self._ladj(z)


class InvertibleLinear(LazyTransform):
    r"""An invertible linear map :math:`z = W x` over features (vectors) or channels (images:
    Glow's invertible 1x1 convolution), LU-decomposed so the log-det costs O(C):

    .. math:: W = P L (U + \operatorname{diag}(\sigma \odot e^{s})), \qquad
        \log|\det W| = \textstyle\sum_i s_i \quad (\times HW \text{ for images})

    with :math:`P` a fixed permutation, :math:`L` unit lower triangular, :math:`U` strictly upper
    triangular, :math:`\sigma` fixed signs.

    Arguments:
        shape: the event shape, ``(D,)`` or ``(C, H, W)``.
        init: ``"rotation"`` (a random orthogonal matrix, as in Glow) or ``"identity"``.

    References:
        Glow: Generative Flow with Invertible 1x1 Convolutions, arXiv:1807.03039, section 3.2.
    """

    permutation: Tensor
    sign_s: Tensor
    lower_mask: Tensor
    eye: Tensor

    def __init__(self, shape: Sequence[int],
                 init: Literal["rotation", "identity"] = "rotation") -> None:
        super().__init__()
        pshape, self.event_dim, self.mult = _param_shape(shape)
        c = pshape[0]
        if init == "rotation":
            q = torch.linalg.qr(torch.randn(c, c, dtype=torch.float64))[0]
        elif init == "identity":
            q = torch.eye(c, dtype=torch.float64)
        else:
            raise ValueError(f"init must be 'rotation' or 'identity', got {init!r}")
        p, lower, upper = torch.linalg.lu(q)
        s = upper.diagonal()
        self.register_buffer("permutation", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(c, c), -1))
        self.register_buffer("eye", torch.eye(c))
        self.lower = nn.Parameter(lower.float() * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(s.abs().log().float())

    def _factors(self) -> tuple[Tensor, Tensor]:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return lower, upper

    def weight(self) -> Tensor:
        """:math:`W`, shape ``(C, C)``."""
        lower, upper = self._factors()
        return self.permutation @ lower @ upper

    def inverse_weight(self) -> Tensor:
        r""":math:`W^{-1} = U^{-1} L^{-1} P^\top` by triangular solves."""
        lower, upper = self._factors()
        l_inv_pt = torch.linalg.solve_triangular(lower, self.permutation.T, upper=False,
                                                 unitriangular=True)
        return torch.linalg.solve_triangular(upper, l_inv_pt, upper=True)

    def forward(self, context: Tensor | None = None) -> FlowTransform:
        return _InvertibleLinearTransform(self)

    def extra_repr(self) -> str:
        return f"features={self.log_s.shape[0]}, event_dim={self.event_dim}"
