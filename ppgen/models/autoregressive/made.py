r"""MADE: a masked autoencoder whose masks make its outputs autoregressive conditionals.

One MLP (``ppgen.models.nets.MaskedMLP``) outputs the parameters of every conditional in one
pass; binary 0/1 masks on its weights make output ``d`` depend only on the inputs before ``d`` in
an ordering ``o``, so

.. math:: p_k(x) = \prod_{i=1}^{D} p(x_{o_i} \mid x_{o_{<i}}; \text{mask } k)

is an exact, normalized density for every mask ``k`` (an ordering plus a hidden-unit
connectivity). Order-agnostic training cycles through ``num_masks`` masks, one per training
step (Germain et al. 2015, section 4; Uria et al. 2014). At evaluation the model is the
**ensemble**, the uniform mixture of the first ``ensemble`` masks' densities,

.. math:: p(x) = \frac{1}{E} \sum_{k=1}^{E} p_k(x),

still exact and normalized: :meth:`MADE.log_prob` computes it with a log-sum-exp and
:meth:`MADE.sample` draws from it (a mask chosen uniformly per point, then that mask's
ordering), so the samples and the likelihood describe one distribution.
"""

from __future__ import annotations

__all__ = ["MADE", "MADEConfig"]

import dataclasses
import math
from typing import ClassVar, Literal

import pyro
import torch
import torch.nn.functional as F
from torch import Tensor

from ppgen.models.autoregressive import _conditionals as cond
from ppgen.models.base import AbstractGenerativeModel, ModelConfig, pyro_program
from ppgen.models.capabilities import InitializesFromData
from ppgen.models.conditioning import ExactConditional
from ppgen.models.nets import MaskedMLP


@dataclasses.dataclass(frozen=True, kw_only=True)
class MADEConfig(ModelConfig):
    """Configuration of :class:`MADE`. The defaults reach <= 2.00 test bits/dim on digits
    (docs/benchmarks.md).

    Arguments:
        hidden: hidden widths of the masked MLP.
        num_masks: masks (ordering + connectivity) cycled in training, one per step.
        ensemble: masks averaged at evaluation and sampling (the first ``ensemble``); None is
            all ``num_masks``.
        dropout: dropout after each hidden layer, in training only.
        components: Gaussians per conditional for continuous data (1: a Gaussian), logistics
            per conditional for discrete data with the logistic output.
        output: for discrete data, ``"categorical"`` (a softmax over the ``L`` levels, ``L``
            outputs per dimension), ``"logistic"`` (a discretized logistic mixture, ``3 *
            components`` outputs per dimension whatever ``L``) or ``"auto"``: categorical below
            256 levels, logistic from 256 on (8-bit data; see
            ``_conditionals.LOGISTIC_FROM_LEVELS`` for why).
        order: the ordering of mask 0: ``order[d]`` is the position of dimension ``d`` (a
            permutation), or None for the identity order. Masks 1.. draw random orderings.
        connectivity: ``"random"`` hidden degrees (the paper) or ``"even"`` (deterministic).
        mask_seed: seeds the random orderings and connectivities of the masks.
        order_agnostic: train on a fresh random ordering and connectivity at every step
            (connectivity-agnostic MADE, Germain et al. 2015, section 4.2; order-agnostic NADE,
            Uria et al. 2014) instead of cycling ``num_masks`` fixed masks, so that the model
            has an exact conditional for *any* observed set (``ppgen.impute``): the ordering
            that puts the observed coordinates first. Evaluation still uses the ensemble of the
            first ``ensemble`` fixed masks.
    """

    hidden: tuple[int, ...] = (512, 512)
    num_masks: int = 8
    ensemble: int | None = None
    dropout: float = 0.3
    components: int = 5
    output: Literal["auto", "categorical", "logistic"] = "auto"
    order: tuple[int, ...] | None = None
    connectivity: Literal["random", "even"] = "random"
    mask_seed: int = 0
    order_agnostic: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"MADE needs hidden=[H, ...] with widths >= 1, got {self.hidden}")
        if self.num_masks < 1:
            raise ValueError(f"num_masks must be >= 1, got {self.num_masks}")
        if self.ensemble is not None and not 1 <= self.ensemble <= self.num_masks:
            raise ValueError(
                f"ensemble must lie in 1..num_masks={self.num_masks} (or None for all), got "
                f"{self.ensemble}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.components < 1:
            raise ValueError(f"components must be >= 1, got {self.components}")
        cond.check_output(self.output, self.kind)
        if self.order is not None and sorted(self.order) != list(range(self.num_dims)):
            raise ValueError(
                f"order must be a permutation of 0..{self.num_dims - 1} (one position per "
                f"dimension), got {list(self.order)}"
            )
        if self.connectivity not in ("random", "even"):
            raise ValueError(f"connectivity must be 'random' or 'even', got {self.connectivity!r}")

    @property
    def conditional_kind(self) -> str:
        """The conditionals' family: ``"binary"``, ``"discrete"`` (categorical),
        ``"logistic"`` or ``"continuous"`` (``output`` resolved for this data)."""
        return cond.conditional_kind(self.kind, self.levels, self.output)

    @property
    def num_ensemble(self) -> int:
        """E, the number of masks in the evaluation mixture."""
        return self.num_masks if self.ensemble is None else self.ensemble


class MADE(AbstractGenerativeModel, ExactConditional, InitializesFromData):
    r"""MADE with order-agnostic training and a mask ensemble: an exact density.

    In ``train()`` mode each :meth:`log_prob` call uses the next mask in turn (a counter buffer,
    saved in checkpoints, so resumed training continues the cycle) with dropout: that is the
    training objective. In ``eval()`` mode :meth:`log_prob` is the exact log-density of the
    ensemble mixture. :meth:`sample` always draws from the ensemble mixture without dropout.

    Inputs enter the network by value (discrete levels scaled to ``[0, 1]``); conditionals are
    Bernoulli (binary), categorical over the levels or a discretized logistic mixture (discrete,
    by ``output``; the logistic from 256 levels on by default) or a mixture of ``components``
    Gaussians (continuous).

    Arguments:
        config: a :class:`MADEConfig`, or its fields as keywords.

    Shapes:
        ``log_prob(x)``: ``x (N, *event_shape)`` -> ``(N,)`` nats.
        ``sample(n)`` -> ``(n, *event_shape)``.

    References:
        Germain, Gregor, Murray & Larochelle, MADE: Masked Autoencoder for Distribution
        Estimation, ICML 2015, arXiv:1502.03509.
        Uria, Murray & Larochelle, A Deep and Tractable Density Estimator, ICML 2014,
        arXiv:1310.1757 (order-agnostic training, ensembles of orderings).

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("digits", split="val")
        >>> m = ppgen.build("made", ds, hidden=[64], num_masks=2).eval()
        >>> m.log_prob(ds.data[:4]).shape, m.sample(3, seed=0).shape
        (torch.Size([4]), torch.Size([3, 1, 8, 8]))
    """

    likelihood: ClassVar = "exact"
    Config: ClassVar = MADEConfig
    default_objective: ClassVar = "mle"
    conditioning_methods: ClassVar = ("exact-ancestral", "gibbs")

    def __init__(self, config: MADEConfig | None = None, **fields: object) -> None:
        super().__init__(config, **fields)
        cfg = self.config
        d = cfg.num_dims
        self.cond_kind = cfg.conditional_kind
        self.num_params = cond.num_params(self.cond_kind, cfg.levels, cfg.components)
        self.net = MaskedMLP(d, self.num_params, cfg.hidden, dropout=cfg.dropout)
        # the position of each dimension under every mask's ordering (K, D)
        self.register_buffer("orders", self._make_orders(), persistent=False)
        self.register_buffer("mask_step", torch.zeros((), dtype=torch.long))
        self._mask = -1  # the mask index whose masks the net holds now
        self.use_mask(0)
        if self.cond_kind in ("continuous", "logistic"):
            cond.spread_mixture(self.net.output.bias.view(d, 3, cfg.components), self.cond_kind)

    # ---- masks --------------------------------------------------------------------------------

    def _make_orders(self) -> Tensor:
        cfg = self.config
        d = cfg.num_dims
        orders = []
        for k in range(cfg.num_masks):
            if k == 0:
                order = torch.arange(d) if cfg.order is None else torch.tensor(cfg.order)
            else:
                order = torch.randperm(d, generator=self._generator(k, "order"))
            orders.append(order)
        return torch.stack(orders)

    def _generator(self, k: int, what: str) -> torch.Generator:
        salt = {"order": 1, "connectivity": 2}[what]
        return torch.Generator().manual_seed(self.config.mask_seed * 1_000_003 + 10 * k + salt)

    def use_mask(self, k: int) -> None:
        """Set the network's masks to mask ``k`` (its ordering and connectivity)."""
        if k == self._mask:
            return
        if not 0 <= k < self.config.num_masks:
            raise ValueError(f"mask index must lie in 0..{self.config.num_masks - 1}, got {k}")
        if self.orders.is_meta:  # a size count on the meta device: no mask values to set
            self._mask = k
            return
        random = self.config.connectivity == "random"
        gen = self._generator(k, "connectivity") if random else None
        self.net.set_masks(self.orders[k].cpu(), generator=gen)
        self._mask = k

    def _use_order(self, order: Tensor, generator: torch.Generator | None) -> None:
        """Set the network's masks to the ordering ``order`` (``order[d]`` = position of
        dimension ``d``), not one of the fixed masks (order-agnostic training, conditioning)."""
        if self.orders.is_meta:
            return
        random = self.config.connectivity == "random"
        self.net.set_masks(order.cpu(), generator=generator if random else None)
        self._mask = -2  # no fixed mask

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: ANN001, ANN201
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._mask = -1  # the loaded mask buffers may belong to another mask
        return result

    # ---- the density --------------------------------------------------------------------------

    def conditionals(self, x: Tensor, mask: int) -> Tensor:
        """The parameters of every conditional under mask ``mask``, in data-dimension order:
        output ``d`` depends only on the inputs before ``d`` in that mask's ordering.

        Shapes:
            ``x (N, D)`` flattened data -> ``(N, D, P)``.
        """
        self.use_mask(mask)
        return self.net(self._encode(x))

    def _conditional(self, x: Tensor, mask: int, dim: int) -> Tensor:
        """The parameters of conditional ``dim`` alone, ``(N, P)``: the hidden layers, then only
        the output rows of ``dim`` (a third of the cost of a full pass at D = 64, L = 17).
        Equal to ``conditionals(x, mask)[:, dim]`` in eval mode."""
        self.use_mask(mask)
        net = self.net
        h = self._encode(x)
        for layer in net.layers:
            h = net.dropout(net.activation(layer(h)))
        rows = slice(dim * self.num_params, (dim + 1) * self.num_params)
        out = net.output
        return F.linear(h, out.weight[rows] * out.mask[rows], out.bias[rows])

    def _encode(self, x: Tensor) -> Tensor:
        if self.config.kind == "discrete":
            assert self.config.levels is not None
            return x / (self.config.levels - 1)
        return x

    def log_prob_mask(self, x: Tensor, mask: int) -> Tensor:
        """``log p_k(x)`` of one mask ``k`` (flattened ``x (N, D)``) -> ``(N,)``."""
        params = self.conditionals(x, mask)
        return cond.log_prob_dims(params, x, self.cond_kind, self.config.levels).sum(-1)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        self._check_context(context)
        self._check_x(x)
        flat = x.reshape(x.shape[0], -1).to(self.net.output.weight.dtype)
        if self.training and self.config.order_agnostic:  # a fresh ordering every step
            self.mask_step += 1
            self._use_order(torch.randperm(self.config.num_dims), torch.Generator().manual_seed(
                int(torch.randint(2**62, ())) if self.config.connectivity == "random" else 0))
            return cond.log_prob_dims(self.net(self._encode(flat)), flat, self.config.kind).sum(-1)
        if self.training:  # order-agnostic training: the next mask in turn
            k = int(self.mask_step) % self.config.num_masks
            self.mask_step += 1
            return self.log_prob_mask(flat, k)
        e = self.config.num_ensemble
        per_mask = torch.stack([self.log_prob_mask(flat, k) for k in range(e)])  # (E, N)
        return torch.logsumexp(per_mask, dim=0) - math.log(e)

    @pyro_program
    def model(self, x: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        """``x ~ MADE`` under ``pyro.plate("data", N)``: the exact density as one site."""
        self._check_context(context)
        n = 1 if x is None else x.shape[0]
        with pyro.plate("data", n):
            return pyro.sample("x", self.distribution(), obs=x)

    # ---- sampling -----------------------------------------------------------------------------

    @torch.no_grad()
    def _sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """Draw ``n`` points from the ensemble mixture (no dropout, in any mode): a mask chosen
        uniformly per point, then D passes of the network in that mask's ordering.

        Arguments:
            n: the number of points.
            seed: seeds a private generator (reproducible draws).
            generator: a torch generator (ignored when ``seed`` is given).
            context: unused (MADE here is unconditional); must be None.

        Returns:
            ``Tensor[n, *event_shape]``.
        """
        self._check_context(context)
        if n < 1:
            raise ValueError(f"sample needs n >= 1, got {n}")
        weight = self.net.output.weight
        device, dtype = weight.device, weight.dtype
        generator = self.sampling_generator(seed, generator)
        d, e, kind = self.config.num_dims, self.config.num_ensemble, self.cond_kind
        levels = self.config.levels
        which = torch.randint(e, (n,), generator=generator, device=device)
        u, eps = cond.draw_noise((n, d), kind, generator, device, dtype)
        x = torch.zeros(n, d, device=device, dtype=dtype)
        was_training = self.training
        self.eval()
        try:
            for k in range(e):
                rows = (which == k).nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
                xk = x[rows]
                for dim in torch.argsort(self.orders[k]).tolist():  # dimensions in order
                    params = self._conditional(xk, k, dim)
                    xk[:, dim] = cond.sample_dims(
                        params, u[rows, dim], None if eps is None else eps[rows, dim], kind,
                        levels,
                    )
                x[rows] = xk
        finally:
            self.train(was_training)
        return x.reshape(n, *self.event_shape)

    # ---- conditioning (ppgen.impute) ----------------------------------------------------------

    def _first_masks(self, observed: Tensor) -> list[int]:
        """The ensemble masks whose ordering puts every observed dimension first."""
        flat = observed.reshape(-1).to(self.orders.device)
        out = []
        for k in range(self.config.num_ensemble):
            pos = self.orders[k]
            if bool(flat.all()) or int(pos[flat].max()) < int(pos[~flat].min()):
                out.append(k)
        return out

    def _observed_first_order(self, observed: Tensor) -> Tensor:
        """Positions of the ordering with the observed dimensions first, each part in
        ascending dimension order (order-agnostic models)."""
        flat = observed.reshape(-1).cpu()
        sequence = torch.cat([flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)])
        return torch.argsort(sequence)

    def _conditioning_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.config.mask_seed * 1_000_003 + 7)

    def exact_conditional_reason(self, observed: Tensor) -> str | None:
        if self.config.order_agnostic or self._first_masks(observed):
            return None
        return (
            f"none of MADE's {self.config.num_ensemble} ensemble orderings puts the observed "
            "coordinates first (build it with order_agnostic=True for an exact answer to any "
            "mask)"
        )

    def exact_conditional_note(self, observed: Tensor) -> str:
        """Which model the exact conditional belongs to (the ensemble, part of it, or the
        observed-first ordering of an order-agnostic model)."""
        first = self._first_masks(observed)
        e = self.config.num_ensemble
        if len(first) == e:
            return f"the exact conditional of the {e}-mask ensemble"
        if first:
            return (
                f"the exact conditional of the mixture of ensemble masks {first} (the orderings "
                f"that put the observed coordinates first), a sub-model of the {e}-mask ensemble"
            )
        return (
            "the exact conditional of the order-agnostic model under the ordering that puts "
            "the observed coordinates first (not the ensemble's, which is intractable here)"
        )

    def _conditional_log_probs(self, flat: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
        """Per-component ``log p_k(x)`` and ``log p_k(x_o)``, ``(K, N)`` each, for the masks
        used to condition (see :meth:`exact_conditional_note`)."""
        obs = observed.reshape(-1).to(flat.device)
        first = self._first_masks(observed)
        per_dim = []
        if first:
            for k in first:
                per_dim.append(cond.log_prob_dims(self.conditionals(flat, k), flat,
                                                  self.config.kind))
        else:
            self._use_order(self._observed_first_order(observed), self._conditioning_generator())
            per_dim.append(cond.log_prob_dims(self.net(self._encode(flat)), flat,
                                              self.config.kind))
        stacked = torch.stack(per_dim)  # (K, N, D)
        return stacked.sum(-1), stacked[..., obs].sum(-1)

    def log_prob_conditional(
        self, x: Tensor, observed: Tensor, context: Tensor | None = None
    ) -> Tensor:
        r""":math:`\log p(x_m \mid x_o)` in nats, ``(N,)``: with the mixture over the masks
        that put the observed dimensions first,
        :math:`\log \sum_k p_k(x) - \log \sum_k p_k(x_o)`."""
        flat = x.reshape(x.shape[0], -1).to(self.net.output.weight.dtype)
        was_training = self.training
        self.eval()
        try:
            joint, marginal = self._conditional_log_probs(flat, observed)
        finally:
            self.train(was_training)
        return torch.logsumexp(joint, 0) - torch.logsumexp(marginal, 0)

    @torch.no_grad()
    def sample_conditional(
        self, x: Tensor, observed: Tensor, num_samples: int, generator: torch.Generator,
        context: Tensor | None = None,
    ) -> Tensor:
        """Exact draws of the missing dimensions: a mask ``k`` drawn with probability
        proportional to ``p_k(x_o)`` (the mixture's posterior over components), then the
        missing dimensions in that mask's ordering from its conditionals."""
        n = x.shape[0]
        weight = self.net.output.weight
        kind = self.config.kind
        flat = x.reshape(n, -1).to(weight.dtype)
        obs = observed.reshape(-1).to(flat.device)
        was_training = self.training
        self.eval()
        try:
            first = self._first_masks(observed)
            _, marginal = self._conditional_log_probs(flat, observed)  # (K, N)
            s, d = num_samples, flat.shape[1]
            probs = torch.softmax(marginal.double(), 0).T  # (N, K)
            which = torch.multinomial(probs.float(), s, replacement=True, generator=generator
                                      ).T.reshape(-1)  # (S N,) component per draw
            u, eps = cond.draw_noise((s * n, d), kind, generator, flat.device, flat.dtype)
            out = flat.repeat(s, 1)  # (S N, D)
            plans = first if first else [-1]
            for j, k in enumerate(plans):
                rows = (which == j).nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
                if k >= 0:
                    order, mask_id = self.orders[k], k
                else:
                    order, mask_id = self._observed_first_order(observed).to(flat.device), -1
                xk = out[rows]
                if mask_id < 0:
                    self._use_order(order, self._conditioning_generator())
                for dim in torch.argsort(order).tolist():
                    if bool(obs[dim]):
                        continue
                    if mask_id >= 0:
                        params = self._conditional(xk, mask_id, dim)
                    else:
                        params = self.net(self._encode(xk))[:, dim]
                    xk[:, dim] = cond.sample_dims(
                        params, u[rows, dim], None if eps is None else eps[rows, dim], kind
                    )
                out[rows] = xk
        finally:
            self.train(was_training)
        return out.reshape(s, n, *self.event_shape)

    # ---- hooks --------------------------------------------------------------------------------

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Start each conditional at the data's marginal: output biases get the marginal
        log-frequencies (binary/discrete), the marginal mean and scale (continuous) or
        components at the marginal's quantiles (logistic)."""
        flat = x.reshape(x.shape[0], -1).to(self.net.output.bias.dtype)  # (N, D)
        bias = self.net.output.bias.view(self.config.num_dims, self.num_params)
        kind = self.cond_kind
        if kind == "logistic":
            cond.initialize_logistic(bias, flat, self.config.levels)
        elif kind == "binary":
            p = (flat.mean(0) * len(flat) + 0.5) / (len(flat) + 1.0)
            bias[:, 0] = torch.log(p) - torch.log1p(-p)
        elif kind == "discrete":
            levels = self.num_params
            counts = torch.stack([(flat == v).sum(0) for v in range(levels)], dim=1)
            bias.copy_(torch.log((counts + 0.5) / (len(flat) + 0.5 * levels)))
        elif len(flat) > 1:
            k = self.config.components
            mean, std = flat.mean(0), flat.std(0).clamp_min(1e-3)
            spread = torch.linspace(-1, 1, k, dtype=flat.dtype, device=flat.device)
            bias[:, k : 2 * k] = mean[:, None] + std[:, None] * (spread if k > 1 else 0.0)
            bias[:, 2 * k :] = torch.log(std)[:, None] - 0.5 * math.log(k)

    def _check_context(self, context: Tensor | None) -> None:
        if context is not None:
            raise ValueError(f"{type(self).__name__} is unconditional: pass context=None")

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"{super().extra_repr()}, kind={cfg.kind!r}, conditionals={self.cond_kind!r}, "
            f"hidden={list(cfg.hidden)}, "
            f"num_masks={cfg.num_masks}, ensemble={cfg.num_ensemble}, dropout={cfg.dropout}"
        )

