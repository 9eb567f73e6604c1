r"""Masked autoregressive flows: MAF (density in one pass) and IAF (sampling in one pass).

Both are built from one autoregressive affine map with a MADE conditioner
(:class:`~ppgen.models.nets.MaskedMLP`),

.. math:: A: \; w_i = v_i\, e^{a_i(v_{<i})} + b_i(v_{<i}), \qquad
    \log|\det J_A| = \textstyle\sum_i a_i,

which is one network pass forwards (the network reads its input :math:`v`) and D sequential
passes backwards (:math:`v_i` needs :math:`v_{<i}`).

**Which direction is one pass.** In MAF the data-to-base call is :math:`A` (``log_prob`` in one
pass, sampling sequential); in IAF it is :math:`A^{-1}` (sampling in one pass, the density of
arbitrary data sequential, the density of its own samples in one pass through
``rsample_and_log_prob``). The sequential direction is declared (``sequential_call``), and
:class:`~ppgen.models.flows.core.NormalizingFlow` refuses a sequential ``log_prob`` unless the
flow was built with ``allow_sequential=True``. The ``iaf`` *family* opts in (it is a density
model of data, trained by maximum likelihood, so it must score data); its documentation says so.

**The sequential direction reuses work.** A MADE hidden unit of degree :math:`k` depends only on
inputs :math:`v_{<k}`, so once :math:`v_{<k}` is known it is final. The inverse therefore computes,
at step :math:`k`, only the units of degree :math:`k` in each layer and the output of dimension
:math:`k`, with the units sorted by degree so every step reads a prefix of the previous layer:
the D steps together cost about one network pass of arithmetic, not D passes (zuko and nflows
rerun the whole network D times).
"""

from __future__ import annotations

__all__ = [
    "IAF",
    "IAFConfig",
    "MAF",
    "MAFConfig",
    "MaskedAffineAutoregressive",
]

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from ppgen.models.flows.core import (
    AbstractFlow,
    FlowConfig,
    FlowTransform,
    LazyTransform,
    broadcast_context,
    soft_clamp,
)
from ppgen.models.flows.coupling import input_layers
from ppgen.models.nets import MaskedMLP, autoregressive_degrees


class _AutoregressiveAffine(FlowTransform):
    """The map A (one pass) and its inverse (sequential); ``inverted`` swaps call and inverse."""

    def __init__(self, layer: MaskedAffineAutoregressive, context: Tensor | None,
                 inverted: bool) -> None:
        super().__init__(1)
        self.layer, self.context, self.inverted = layer, context, inverted

    @property
    def sequential_call(self) -> bool:  # type: ignore[override]
        return self.inverted

    @property
    def sequential_inverse(self) -> bool:  # type: ignore[override]
        return not self.inverted

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._sequential(x) if self.inverted else self._parallel(x)

    def inv_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._parallel(z) if self.inverted else self._sequential(z)

    # 1. one pass: w = v exp(a(v)) + b(v)
    def _parallel(self, v: Tensor) -> tuple[Tensor, Tensor]:
        layer = self.layer
        c = None if self.context is None else broadcast_context(self.context, v.shape[:-1])
        out = layer.net(v, c)  # (..., D, 2)
        shift, a = out[..., 0], soft_clamp(out[..., 1], layer.soft_clamp)
        return torch.addcmul(shift, v, a.exp()), a.sum(-1)

    # 2. D steps: v_k = (w_k - b_k(v_<k)) exp(-a_k(v_<k)), units computed once, in degree order
    def _sequential(self, w: Tensor) -> tuple[Tensor, Tensor]:
        layer, net = self.layer, self.layer.net
        d = layer.features
        batch = w.shape[:-1]
        w_pos = w.reshape(-1, d)[:, layer.pos_to_input]  # (N, D), columns in autoregressive order
        n = w_pos.shape[0]
        weights, biases = [], []
        prev_perm: Tensor | None = None
        for i, (lin, perm) in enumerate(zip(net.layers, layer.unit_perms, strict=True)):
            wt = (lin.weight * lin.mask)[perm]
            wt = wt[:, : d][:, layer.pos_to_input] if i == 0 else wt[:, prev_perm]
            weights.append(wt)
            biases.append(lin.bias[perm])
            prev_perm = perm
        first = net.layers[0]
        pre1 = biases[0].expand(n, -1)
        if self.context is not None:
            c = broadcast_context(self.context, batch).reshape(n, -1)
            w_ctx = (first.weight * first.mask)[layer.unit_perms[0], d:]
            pre1 = torch.addmm(biases[0], c, w_ctx.T)
        h_last = len(net.hidden)
        out_w = (net.output.weight * net.output.mask).view(d, 2, -1)[layer.pos_to_input]
        out_w = out_w[:, :, layer.unit_perms[-1]]  # (D, 2, H_L), rows in autoregressive order
        out_b = net.output.bias.view(d, 2)[layer.pos_to_input]  # (D, 2)
        act, bound, ends = net.activation, layer.soft_clamp, layer.degree_ends

        grad = torch.is_grad_enabled()
        # no grad: fill preallocated buffers in place; with grad: grow by concatenation
        v_pos = w_pos.new_empty(n, d) if not grad else w_pos[:, :0]
        hs = [w_pos.new_empty(n, len(p)) if not grad else w_pos[:, :0] for p in layer.unit_perms]
        log_scales = []
        for k in range(d):
            if k > 0:
                for j in range(h_last):
                    s, e = ends[j][k - 1], ends[j][k]
                    if e == s:
                        continue
                    src = v_pos[:, :k] if j == 0 else hs[j - 1][:, : ends[j - 1][k]]
                    base = pre1[:, s:e] if j == 0 else biases[j][s:e]
                    blk = act(torch.addmm(base, src, weights[j][s:e, : src.shape[1]].T))
                    if grad:
                        hs[j] = torch.cat([hs[j], blk], dim=1)
                    else:
                        hs[j][:, s:e] = blk
            e = ends[-1][k]
            if e:
                params = torch.addmm(out_b[k], hs[-1][:, :e], out_w[k, :, :e].T)  # (N, 2)
            else:
                params = out_b[k].expand(n, 2)
            a = soft_clamp(params[:, 1], bound)
            v_k = (w_pos[:, k] - params[:, 0]) * torch.exp(-a)
            log_scales.append(a)
            if grad:
                v_pos = torch.cat([v_pos, v_k[:, None]], dim=1)
            else:
                v_pos[:, k] = v_k
        v = v_pos[:, layer.order].reshape(w.shape)  # back to input order
        ladj = -torch.stack(log_scales, dim=-1).sum(-1)
        return v, ladj.reshape(batch)


class MaskedAffineAutoregressive(LazyTransform):
    r"""An affine autoregressive layer with a MADE conditioner, MAF or IAF orientation.

    MAF (``inverted=False``): the call (data -> base) is :math:`z = A(x)`, one pass; the
    inverse (sampling) is sequential. IAF (``inverted=True``): the call is :math:`A^{-1}`
    (sequential), the inverse :math:`x = A(z)` one pass. See the module docstring for the
    work-reusing sequential direction.

    Arguments:
        features: D.
        context: width of the context features, fed to every first-layer unit.
        hidden: MADE hidden widths.
        order: the autoregressive position of each feature (default: ``0..D-1``).
        inverted: IAF orientation.
        soft_clamp: the bound of the log-scale :math:`a`.

    References:
        Papamakarios, Pavlakou, Murray. Masked Autoregressive Flow for Density Estimation,
        arXiv:1705.07057. Kingma et al. Improved Variational Inference with Inverse
        Autoregressive Flow, arXiv:1606.04934. Germain et al. MADE, arXiv:1502.03509.

    Example:
        >>> import torch
        >>> layer = MaskedAffineAutoregressive(4, hidden=[16], inverted=True)
        >>> z = torch.randn(5, 4)
        >>> x, ladj = layer().inv_and_ladj(z)   # IAF sampling: one pass
        >>> torch.allclose(layer().call_and_ladj(x)[0], z, atol=1e-5)
        True
    """

    order: Tensor
    pos_to_input: Tensor

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        order: Tensor | None = None,
        inverted: bool = False,
        soft_clamp: float = 3.0,
    ) -> None:
        super().__init__()
        order = torch.arange(features) if order is None else torch.as_tensor(order).long()
        if not torch.equal(order.sort().values, torch.arange(features)):
            raise ValueError("order must be a permutation of range(features)")
        self.features, self.inverted, self.soft_clamp = features, inverted, float(soft_clamp)
        self.net = MaskedMLP(features, 2, hidden, context, order=order)
        nn.init.zeros_(self.net.output.weight)
        nn.init.zeros_(self.net.output.bias)
        # MaskedMLP's deterministic degrees; units sorted by degree, and how many have degree <= k
        degrees = autoregressive_degrees(order, tuple(hidden))
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("pos_to_input", order.argsort(), persistent=False)
        self.degree_ends: list[list[int]] = []
        for j, deg in enumerate(degrees[1:]):
            perm = deg.argsort(stable=True)
            self.register_buffer(f"unit_perm{j}", perm, persistent=False)
            sorted_deg = deg[perm]
            self.degree_ends.append(
                [int((sorted_deg <= k).sum()) for k in range(features + 1)]
            )

    @property
    def unit_perms(self) -> list[Tensor]:
        """Per hidden layer, the unit indices sorted by MADE degree."""
        return [getattr(self, f"unit_perm{j}") for j in range(len(self.net.hidden))]

    def forward(self, context: Tensor | None = None) -> FlowTransform:
        return _AutoregressiveAffine(self, context, self.inverted)

    def extra_repr(self) -> str:
        kind = "IAF" if self.inverted else "MAF"
        return f"{kind}, features={self.features}"


# ---- the families -------------------------------------------------------------------------------


def _orders(features: int, transforms: int) -> list[Tensor]:
    """Identity and reversed orders, alternating (Papamakarios et al. 2017)."""
    ident = torch.arange(features)
    return [ident if i % 2 == 0 else ident.flip(0) for i in range(transforms)]


@dataclasses.dataclass(frozen=True, kw_only=True)
class MAFConfig(FlowConfig):
    """Configuration of :class:`MAF`.

    Arguments:
        soft_clamp: bound of the autoregressive log-scales.
    """

    soft_clamp: float = 3.0


class MAF(AbstractFlow):
    r"""Masked autoregressive flow: ``transforms`` MADE-conditioned affine autoregressive layers,
    alternating between the identity and the reversed order.

    ``log_prob`` is one network pass per layer; ``sample`` is sequential over the D dimensions,
    with the work-reusing inverse (about one network pass of arithmetic in D small steps).
    Image-shaped data is flattened in raster order.

    References:
        Papamakarios, Pavlakou, Murray. Masked Autoregressive Flow for Density Estimation,
        arXiv:1705.07057.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("moons", "val")
        >>> m = ppgen.build("maf", ds, transforms=3, hidden=[32, 32])
        >>> m.log_prob(ds.data[:4]).shape
        torch.Size([4])
    """

    Config: ClassVar = MAFConfig

    def _layers(self) -> tuple[list[LazyTransform], tuple[int, ...]]:
        cfg = self.config
        d = cfg.num_dims
        layers = input_layers(cfg.event_shape, "vector", cfg.standardize)
        layers += [MaskedAffineAutoregressive(d, 0, cfg.hidden, order, soft_clamp=cfg.soft_clamp)
                   for order in _orders(d, cfg.transforms)]
        return layers, (d,)


@dataclasses.dataclass(frozen=True, kw_only=True)
class IAFConfig(FlowConfig):
    """Configuration of :class:`IAF`.

    Arguments:
        soft_clamp: bound of the autoregressive log-scales.
    """

    soft_clamp: float = 3.0


class IAF(AbstractFlow):
    r"""Inverse autoregressive flow: sampling in one network pass per layer.

    **Its density of data is sequential and this family says so.** Scoring a data point needs
    :math:`z = f(x)`, the inverse of the one-pass direction: D sequential steps per layer. ppgen
    makes those steps reuse work (each MADE unit is computed once, in degree order), so a
    ``log_prob`` costs about one network pass of arithmetic spread over D small steps, about
    D times the kernel launches of MAF's. The family opts into this explicitly
    (``allow_sequential = True``), because as a density model it is trained by maximum
    likelihood on data; the building block :class:`MaskedAffineAutoregressive` (``inverted=True``)
    inside a :class:`~ppgen.models.flows.core.Flow` refuses it unless asked. Use IAF layers where
    they shine: as a variational posterior (see :func:`~ppgen.models.flows.core.flow_sample`),
    where only the density of the flow's own samples is needed, in one pass.

    References:
        Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling. Improved Variational Inference
        with Inverse Autoregressive Flow, arXiv:1606.04934.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("moons", "val")
        >>> m = ppgen.build("iaf", ds, transforms=3, hidden=[32, 32])
        >>> m.sample(4, seed=0).shape
        torch.Size([4, 2])
    """

    Config: ClassVar = IAFConfig
    allow_sequential: ClassVar[bool] = True

    def _layers(self) -> tuple[list[LazyTransform], tuple[int, ...]]:
        cfg = self.config
        d = cfg.num_dims
        layers = input_layers(cfg.event_shape, "vector", cfg.standardize)
        layers += [MaskedAffineAutoregressive(d, 0, cfg.hidden, order, inverted=True,
                                              soft_clamp=cfg.soft_clamp)
                   for order in _orders(d, cfg.transforms)]
        return layers, (d,)

    def extra_repr(self) -> str:
        d = self.config.num_dims
        return f"density=sequential ({d} steps per layer), " + super().extra_repr()
