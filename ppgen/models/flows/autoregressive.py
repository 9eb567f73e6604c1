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
    "alternating_orders",
    "build_maf",
    "maf_layers",
]

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppgen.models.flows.core import (
    AbstractFlow,
    Flow,
    FlowConfig,
    FlowTransform,
    LazyTransform,
    broadcast_context,
    soft_clamp,
)
from ppgen.models.flows.coupling import input_layers
from ppgen.models.nets import MaskedMLP, autoregressive_degrees

Spans = tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int, int]]]


def _cols(t: Tensor, a: int, b: int) -> Tensor:
    """Columns ``a:b`` of ``t``; ``t`` itself for all of them (a bare alias upsets vmap)."""
    return t if a == 0 and b == t.shape[-1] else t[..., a:b]


class _StaircaseLinear(torch.autograd.Function):
    """``h @ (weight * mask).T + bias`` for a block-triangular mask, block by block.

    ``spans = (row_blocks, column_blocks)``: each row block ``(r0, r1, c0, c1)`` has a zero mask
    outside columns ``[c0, c1)``; each column block ``(c0, c1, r0, r1)`` has a zero mask outside
    rows ``[r0, r1)``. The forward product runs over row blocks into one buffer; the input
    gradient over column blocks and the weight gradient over row blocks (out of place, so the
    backward also works under ``vmap``, as ``jacobian(vectorize=True)`` needs).
    """

    @staticmethod
    def forward(ctx: Any, h: Tensor, weight: Tensor, mask: Tensor, bias: Tensor,
                spans: Spans) -> Tensor:
        w = weight * mask
        out = bias.expand(h.shape[0], w.shape[0]).clone()
        for r0, r1, c0, c1 in spans[0]:
            if c1 > c0:
                out[:, r0:r1].addmm_(h[:, c0:c1], w[r0:r1, c0:c1].T)
        ctx.save_for_backward(h, w, mask)
        ctx.spans, ctx.bias_dim = spans, bias.dim()
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        h, w, mask = ctx.saved_tensors
        rows, cols = ctx.spans
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.cat([_cols(g, r0, r1) @ w[r0:r1, c0:c1] for c0, c1, r0, r1 in cols],
                               dim=-1)
        if ctx.needs_input_grad[1]:
            n_in = w.shape[1]
            grad_w = torch.cat([
                F.pad(_cols(g, r0, r1).transpose(-1, -2) @ _cols(h, c0, c1), (c0, n_in - c1))
                for r0, r1, c0, c1 in rows], dim=-2) * mask
        if ctx.needs_input_grad[3]:
            grad_b = g.sum(-2) if ctx.bias_dim == 1 else g
        return grad_h, grad_w, None, grad_b, None


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

    def _first_bias(self, batch: torch.Size, n: int) -> Tensor:
        """The first layer's bias plus its context term, ``(n, H1)`` (or ``(H1,)``)."""
        net, d = self.layer.net, self.layer.features
        first = net.layers[0]
        if self.context is None:
            return first.bias
        c = broadcast_context(self.context, batch).reshape(n, -1)
        return torch.addmm(first.bias, c, (first.weight * first.mask)[:, d:].T)

    # 1. one pass: w = v exp(a(v)) + b(v)
    def _parallel(self, v: Tensor) -> tuple[Tensor, Tensor]:
        layer, net = self.layer, self.layer.net
        d = layer.features
        h = v.reshape(-1, d)
        if layer.blocks == 1:
            c = None if self.context is None else broadcast_context(self.context, v.shape[:-1])
            params = net(h, None if c is None else c.reshape(h.shape[0], -1))  # (N, D, 2)
        else:
            # hidden units sorted by degree make every masked weight a staircase: row block b
            # multiplies only the column span its mask can see (about (B+1)/2B of the work)
            first = self._first_bias(v.shape[:-1], h.shape[0])
            relu = isinstance(net.activation, nn.ReLU)
            for j, (lin, spans) in enumerate(zip([*net.layers, net.output], layer.spans,
                                                 strict=True)):
                bias = first if j == 0 else lin.bias
                h = _StaircaseLinear.apply(h, lin.weight, lin.mask, bias, spans)
                if j < len(net.layers):
                    h = h.relu_() if relu else net.activation(h)
            params = h.view(-1, d, 2)
        params = params.reshape(*v.shape, 2)
        shift, a = params[..., 0], soft_clamp(params[..., 1], layer.soft_clamp)
        return torch.addcmul(shift, v, a.exp()), a.sum(-1)

    # 2. D steps: v_k = (w_k - b_k(v_<k)) exp(-a_k(v_<k)), units computed once, in degree order
    def _sequential(self, w: Tensor) -> tuple[Tensor, Tensor]:
        layer, net = self.layer, self.layer.net
        d = layer.features
        batch = w.shape[:-1]
        w_pos = w.reshape(-1, d)[:, layer.pos_to_input]  # (N, D), columns in autoregressive order
        n = w_pos.shape[0]
        # masked weights, inputs and outputs in autoregressive order (hidden units are sorted)
        weights = [lin.weight * lin.mask for lin in net.layers]
        weights[0] = weights[0][:, :d][:, layer.pos_to_input]
        biases = [lin.bias for lin in net.layers]
        pre1 = self._first_bias(batch, n).expand(n, -1)
        out_w = (net.output.weight * net.output.mask).view(d, 2, -1)[layer.pos_to_input]
        out_b = net.output.bias.view(d, 2)[layer.pos_to_input]
        act, bound, ends = net.activation, layer.soft_clamp, layer.degree_ends

        grad = torch.is_grad_enabled()
        # no grad: fill preallocated buffers in place; with grad: grow by concatenation
        v_pos = w_pos.new_empty(n, d) if not grad else w_pos[:, :0]
        hs = [w_pos.new_empty(n, h) if not grad else w_pos[:, :0] for h in net.hidden]
        log_scales = []
        for k in range(d):
            if k > 0:
                for j in range(len(net.hidden)):
                    s, e = ends[j][k - 1], ends[j][k]  # the units of degree k
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

    The MADE (:class:`~ppgen.models.nets.MaskedMLP` with ``sorted_degrees=True``) has its hidden
    units in ascending degree, so each masked weight is block-triangular; the one-pass direction
    multiplies only the blocks its masks can see.

    Arguments:
        features: D.
        context: width of the context features, fed to every first-layer unit.
        hidden: MADE hidden widths.
        order: the autoregressive position of each feature (default: ``0..D-1``).
        inverted: IAF orientation.
        soft_clamp: the bound of the log-scale :math:`a`.
        blocks: row blocks of the one-pass evaluation (1: a plain masked MLP pass; ``B`` blocks
            skip the masked-out part of each weight, about ``(B - 1) / 2B`` of the arithmetic
            for the identity or reversed order, at the price of ``B`` smaller products).
            Default: 4 when ``features >= 16``, else 1.

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
        blocks: int | None = None,
    ) -> None:
        super().__init__()
        order = torch.arange(features) if order is None else torch.as_tensor(order).long()
        meta = order.is_meta  # a size count on the meta device: shapes only, no values
        if not meta and not torch.equal(order.sort().values, torch.arange(features)):
            raise ValueError("order must be a permutation of range(features)")
        self.features, self.inverted, self.soft_clamp = features, inverted, float(soft_clamp)
        self.net = MaskedMLP(features, 2, hidden, context, order=order, sorted_degrees=True)
        nn.init.zeros_(self.net.output.weight)
        nn.init.zeros_(self.net.output.bias)
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("pos_to_input", order.argsort(), persistent=False)
        self.blocks = int(blocks) if blocks is not None else (4 if features >= 16 else 1)
        if meta:
            self.degree_ends, self.spans = [], []
            return
        # how many units of each hidden layer have degree <= k (units are sorted by degree)
        degrees = autoregressive_degrees(order, tuple(hidden), sort=True)
        self.degree_ends = [[int((deg <= k).sum()) for k in range(features + 1)]
                            for deg in degrees[1:]]
        for lin, d_out, d_in in zip(self.net.layers, degrees[1:], degrees[:-1], strict=True):
            expected = (d_out[:, None] >= d_in[None, :]).to(lin.mask.dtype)
            assert torch.equal(lin.mask[:, : len(d_in)], expected), "MaskedMLP degrees changed"
        # one pass in row blocks: (row start, row end, column start, column end) per block
        self.blocks = int(blocks) if blocks is not None else (4 if features >= 16 else 1)
        masks = [lin.mask[:, :features] if i == 0 else lin.mask
                 for i, lin in enumerate([*self.net.layers, self.net.output])]
        self.spans = [self._spans(m, self.blocks) for m in masks]

    @staticmethod
    def _spans(mask: Tensor, blocks: int) -> Spans:
        """Rows cut into ``blocks`` equal runs, each with the column span its mask touches; and
        the column blocks those spans delimit, each with the row span touching it."""
        n_rows, n_cols = mask.shape
        cuts = sorted({round(i * n_rows / blocks) for i in range(blocks + 1)})
        rows = []
        for r0, r1 in zip(cuts[:-1], cuts[1:], strict=True):
            nz = mask[r0:r1].sum(0).nonzero()
            c0, c1 = (int(nz.min()), int(nz.max()) + 1) if len(nz) else (0, 0)
            rows.append((r0, r1, c0, c1))
        edges = sorted({0, n_cols, *(c for r in rows for c in r[2:])})
        cols = []
        for c0, c1 in zip(edges[:-1], edges[1:], strict=True):
            nz = mask[:, c0:c1].sum(1).nonzero()
            r0, r1 = (int(nz.min()), int(nz.max()) + 1) if len(nz) else (0, 0)
            cols.append((c0, c1, r0, r1))
        return rows, cols

    def forward(self, context: Tensor | None = None) -> FlowTransform:
        return _AutoregressiveAffine(self, context, self.inverted)

    def extra_repr(self) -> str:
        kind = "IAF" if self.inverted else "MAF"
        return f"{kind}, features={self.features}, blocks={self.blocks}"


# ---- the builder other families compose ------------------------------------------------------


def alternating_orders(features: int, transforms: int) -> list[Tensor]:
    """Identity and reversed orders, alternating (Papamakarios et al. 2017): ``transforms``
    permutations of ``range(features)``, so every dimension is conditioned on every other one
    after two layers."""
    ident = torch.arange(features)
    return [ident if i % 2 == 0 else ident.flip(0) for i in range(transforms)]


def maf_layers(
    features: int,
    transforms: int,
    hidden: Sequence[int] = (64, 64),
    *,
    context: int = 0,
    inverted: bool = False,
    soft_clamp: float = 3.0,
) -> list[MaskedAffineAutoregressive]:
    """``transforms`` :class:`MaskedAffineAutoregressive` layers over ``features`` dimensions
    in :func:`alternating_orders`, built in order (so a seeded build draws the same weights):
    the body of the MAF and IAF families and of :func:`build_maf`."""
    return [MaskedAffineAutoregressive(features, context, hidden, order, inverted=inverted,
                                       soft_clamp=soft_clamp)
            for order in alternating_orders(features, transforms)]


def build_maf(
    features: int,
    transforms: int,
    hidden: Sequence[int] = (64, 64),
    *,
    context: int = 0,
    inverted: bool = False,
    soft_clamp: float = 3.0,
    allow_sequential: bool = False,
) -> Flow:
    r"""A masked autoregressive flow over vectors of ``features`` dimensions, as a lazy
    :class:`~ppgen.models.flows.core.Flow`: the public builder other families compose (a VAE's
    flow prior or IAF posterior, a GAN's flow prior) instead of stacking layers by hand.

    Arguments:
        features: D, the dimension of the vectors (a latent code).
        transforms: the number of affine autoregressive layers, in alternating orders.
        hidden: the MADE hidden widths of every layer.
        context: the width of the context features every layer reads (0: none), e.g. an
            encoder's features ``h(x)`` for an IAF posterior.
        inverted: the IAF orientation (sampling, and the density of the flow's own draws, in
            one pass; the density of other points sequential); MAF (``False``) scores any point
            in one pass and samples sequentially.
        soft_clamp: the bound of the autoregressive log-scales.
        allow_sequential: let ``log_prob`` take the sequential direction (an IAF that must
            score points it did not draw); see :class:`~ppgen.models.flows.core.NormalizingFlow`.

    Example:
        >>> prior = build_maf(3, transforms=2, hidden=[16])
        >>> z = prior().rsample((5,))
        >>> prior().log_prob(z).shape
        torch.Size([5])
    """
    layers = maf_layers(features, transforms, hidden, context=context, inverted=inverted,
                        soft_clamp=soft_clamp)
    return Flow(layers, (features,), allow_sequential=allow_sequential)


# ---- the families -------------------------------------------------------------------------------


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
        layers = input_layers(cfg.event_shape, "vector", cfg.standardize, cfg.whitens)
        layers += maf_layers(d, cfg.transforms, cfg.hidden, soft_clamp=cfg.soft_clamp)
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
        layers = input_layers(cfg.event_shape, "vector", cfg.standardize, cfg.whitens)
        layers += maf_layers(d, cfg.transforms, cfg.hidden, inverted=True,
                             soft_clamp=cfg.soft_clamp)
        return layers, (d,)

    def extra_repr(self) -> str:
        d = self.config.num_dims
        return f"density=sequential ({d} steps per layer), " + super().extra_repr()
