r"""The core of every flow: transforms with ``call_and_ladj``, lazy layers, the flow distribution.

A normalizing flow is a bijection :math:`f` from data :math:`x` to a base variable
:math:`z = f(x)` with a simple density :math:`p_Z`, so that

.. math:: \log p(x) = \log p_Z(f(x)) + \log \left| \det \frac{\partial f(x)}{\partial x} \right| .

**Direction.** As in zuko, a transform's *call* maps data to base (``x -> z``): density evaluation
is one call, sampling is the inverse (``z -> x``). :meth:`FlowTransform.call_and_ladj` returns
``z`` and :math:`\log|\det J_f(x)|` in one pass, and :meth:`FlowTransform.inv_and_ladj` returns
``x`` and :math:`\log|\det J_{f^{-1}}(z)|` in one pass, so neither direction ever recomputes the
other (no monkey-patching of torch, no hidden caches).

**Lazy layers.** A layer is an ``nn.Module`` (a :class:`LazyTransform`) whose ``forward(context)``
returns a :class:`FlowTransform`; :class:`Flow` composes layers and a base into a
:class:`NormalizingFlow`, a real Pyro/torch ``Distribution`` with ``log_prob``, ``sample``,
``rsample``, ``expand`` and :meth:`NormalizingFlow.rsample_and_log_prob`.

**Sequential directions are declared.** A transform whose call needs D sequential network passes
(an IAF layer's ``x -> z``) sets ``sequential_call``. :meth:`NormalizingFlow.log_prob` refuses
such a flow with :class:`SequentialDensityError` unless it was built with
``allow_sequential=True``: density evaluation never falls silently into the D-pass direction.
A flow's own samples get their log-density in the one-pass direction through
:meth:`NormalizingFlow.rsample_and_log_prob` (and :func:`flow_sample` inside a Pyro guide).
"""

from __future__ import annotations

__all__ = [
    "AbstractFlow",
    "ComposedTransform",
    "Flow",
    "FlowConfig",
    "FlowTransform",
    "InverseTransform",
    "LazyComposedTransform",
    "LazyInverse",
    "LazyTransform",
    "NormalizingFlow",
    "SequentialDensityError",
    "StandardNormal",
    "flow_sample",
]

import abc
import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import pyro
import pyro.distributions as dist
import torch
from torch import Size, Tensor, nn
from torch.distributions import Distribution, Transform, constraints

from ppgen.datasets.transforms import DataTransform, logit_transform
from ppgen.models.base import AbstractGenerativeModel, ExplicitDensity, ModelConfig, pyro_program
from ppgen.models.capabilities import InitializesFromData
from ppgen.models.conditioning import DifferentiableDensity

_LOG_2PI = math.log(2 * math.pi)


class SequentialDensityError(ValueError):
    """A density was asked of a flow whose data-to-base direction takes D sequential passes."""


# ---- transforms -------------------------------------------------------------------------------


class FlowTransform(Transform):
    r"""A bijection :math:`z = f(x)` that returns its log-abs-det-Jacobian with its value.

    Subclasses implement :meth:`call_and_ladj` and :meth:`inv_and_ladj`. The torch
    ``Transform`` API (``t(x)``, ``t.inv(z)``, ``log_abs_det_jacobian``) is derived from them,
    so a flow transform works wherever torch or Pyro expects a ``Transform``.

    Arguments:
        event_dim: how many rightmost dims form one event in the domain (1 for vectors,
            3 for ``(C, H, W)`` images).
        codomain_event_dim: the same for the codomain (default: ``event_dim``); a transform that
            flattens an image into a vector has 3 and 1.

    Class attributes:
        sequential_call: True when the call (data -> base) takes D sequential network passes.
        sequential_inverse: True when the inverse (base -> data) does.
    """

    bijective = True
    sequential_call: ClassVar[bool] = False
    sequential_inverse: ClassVar[bool] = False

    def __init__(self, event_dim: int, codomain_event_dim: int | None = None) -> None:
        super().__init__(cache_size=0)
        self._domain_event_dim = event_dim
        self._codomain_event_dim = event_dim if codomain_event_dim is None else codomain_event_dim

    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self._domain_event_dim)

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, self._codomain_event_dim)

    @abc.abstractmethod
    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""``z = f(x)`` and :math:`\log|\det \partial f(x) / \partial x|`, shape ``batch``."""

    @abc.abstractmethod
    def inv_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        r"""``x = f^{-1}(z)`` and :math:`\log|\det \partial f^{-1}(z) / \partial z|`."""

    def inverse(self, z: Tensor) -> Tensor:
        """``x = f^{-1}(z)`` alone (a transform may skip its log-det work, e.g. a CNF's trace)."""
        return self.inv_and_ladj(z)[0]

    # torch's Transform API, derived
    def _call(self, x: Tensor) -> Tensor:
        return self.call_and_ladj(x)[0]

    def _inverse(self, z: Tensor) -> Tensor:
        return self.inverse(z)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """torch's API; recomputes the call (prefer :meth:`call_and_ladj`)."""
        return self.call_and_ladj(x)[1]

    @property
    def inv(self) -> FlowTransform:  # type: ignore[override]
        """The inverse transform (call and inverse swapped)."""
        return InverseTransform(self)


class InverseTransform(FlowTransform):
    """The inverse of a :class:`FlowTransform`: its call is the other's inverse."""

    def __init__(self, transform: FlowTransform) -> None:
        super().__init__(transform._codomain_event_dim, transform._domain_event_dim)
        self.transform = transform

    @property
    def sequential_call(self) -> bool:  # type: ignore[override]
        return self.transform.sequential_inverse

    @property
    def sequential_inverse(self) -> bool:  # type: ignore[override]
        return self.transform.sequential_call

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.transform.inv_and_ladj(x)

    def inv_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.transform.call_and_ladj(z)

    def inverse(self, z: Tensor) -> Tensor:
        return self.transform.call_and_ladj(z)[0]

    @property
    def inv(self) -> FlowTransform:  # type: ignore[override]
        return self.transform

    def forward_shape(self, shape: Size) -> Size:
        return self.transform.inverse_shape(shape)

    def inverse_shape(self, shape: Size) -> Size:
        return self.transform.forward_shape(shape)


class ComposedTransform(FlowTransform):
    r""":math:`f = f_n \circ \dots \circ f_1`; log-dets add up.

    Arguments:
        transforms: :math:`f_1, \dots, f_n`, applied in this order by the call.
    """

    def __init__(self, transforms: Sequence[FlowTransform]) -> None:
        if not transforms:
            raise ValueError("a composed transform needs at least one transform")
        super().__init__(transforms[0]._domain_event_dim, transforms[-1]._codomain_event_dim)
        self.transforms = list(transforms)

    @property
    def sequential_call(self) -> bool:  # type: ignore[override]
        return any(t.sequential_call for t in self.transforms)

    @property
    def sequential_inverse(self) -> bool:  # type: ignore[override]
        return any(t.sequential_inverse for t in self.transforms)

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x, total = self.transforms[0].call_and_ladj(x)
        for t in self.transforms[1:]:
            x, ladj = t.call_and_ladj(x)
            total = total + ladj
        return x, total

    def inv_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        z, total = self.transforms[-1].inv_and_ladj(z)
        for t in reversed(self.transforms[:-1]):
            z, ladj = t.inv_and_ladj(z)
            total = total + ladj
        return z, total

    def inverse(self, z: Tensor) -> Tensor:
        for t in reversed(self.transforms):
            z = t.inverse(z)
        return z

    def forward_shape(self, shape: Size) -> Size:
        for t in self.transforms:
            shape = t.forward_shape(shape)
        return shape

    def inverse_shape(self, shape: Size) -> Size:
        for t in reversed(self.transforms):
            shape = t.inverse_shape(shape)
        return shape


# ---- lazy layers ------------------------------------------------------------------------------


class LazyTransform(nn.Module, abc.ABC):
    """A layer: a module whose ``forward(context)`` builds a :class:`FlowTransform`.

    Parameters live in the module; the transform returned by ``forward`` holds no state of its
    own beyond references to them, so building it is cheap and it reflects the current weights.
    """

    @abc.abstractmethod
    def forward(self, context: Tensor | None = None) -> FlowTransform:
        """The transform :math:`z = f(x \\mid c)` for context ``c`` (None when unconditional)."""

    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Data-dependent initialization from a batch ``x`` of this layer's inputs; returns the
        batch transformed by the (initialized) layer. Default: no initialization."""
        return self(context).call_and_ladj(x)[0]

    @property
    def inv(self) -> LazyTransform:
        """The lazy inverse layer (call and inverse swapped)."""
        return LazyInverse(self)


class LazyInverse(LazyTransform):
    """A layer whose transform is the inverse of ``layer``'s."""

    def __init__(self, layer: LazyTransform) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, context: Tensor | None = None) -> FlowTransform:
        return self.layer(context).inv

    @property
    def inv(self) -> LazyTransform:
        return self.layer


class LazyComposedTransform(LazyTransform):
    """Layers applied in order (data -> base); a layer itself, so flows nest.

    Arguments:
        layers: the layers, first applied first.
    """

    def __init__(self, *layers: LazyTransform) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, context: Tensor | None = None) -> FlowTransform:
        return ComposedTransform([layer(context) for layer in self.layers])

    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer.initialize(x, context)
        return x


# ---- distributions ----------------------------------------------------------------------------


class StandardNormal(dist.TorchDistribution):
    r"""A diagonal normal :math:`\mathcal{N}(0, \tau^2 I)` over ``event_shape``: the base density.

    A lean ``torch.distributions.Distribution`` (log-density in two ops) with ``rsample``,
    ``expand`` and a temperature :math:`\tau` (Glow's reduced-temperature sampling).

    Arguments:
        event_shape: the shape of one draw.
        batch_shape: independent copies.
        temperature: the standard deviation :math:`\tau`.
        like: a tensor whose device and dtype the draws take.
    """

    arg_constraints: ClassVar[dict] = {}
    has_rsample = True

    def __init__(
        self,
        event_shape: Size | Sequence[int],
        batch_shape: Size | Sequence[int] = (),
        temperature: float = 1.0,
        like: Tensor | None = None,
    ) -> None:
        self.temperature = float(temperature)
        self._like = torch.empty(0) if like is None else like
        super().__init__(Size(batch_shape), Size(event_shape), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def mean(self) -> Tensor:
        return self._like.new_zeros(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> Tensor:
        return self._like.new_full(self.batch_shape + self.event_shape, self.temperature**2)

    def expand(self, batch_shape: Size | Sequence[int], _instance: Any = None) -> StandardNormal:
        return StandardNormal(self.event_shape, batch_shape, self.temperature, self._like)

    def log_prob(self, z: Tensor) -> Tensor:
        dims = tuple(range(-len(self.event_shape), 0))
        n = math.prod(self.event_shape)
        t2 = self.temperature**2
        const = n * (0.5 * _LOG_2PI + math.log(self.temperature))
        return z.square().sum(dims).mul(-0.5 / t2) - const

    def rsample(
        self, sample_shape: Size | Sequence[int] = (), generator: torch.Generator | None = None
    ) -> Tensor:
        shape = Size(sample_shape) + self.batch_shape + self.event_shape
        z = torch.randn(
            shape, generator=generator, device=self._like.device, dtype=self._like.dtype
        )
        return z if self.temperature == 1.0 else z * self.temperature


class NormalizingFlow(dist.TorchDistribution):
    r"""The distribution of :math:`x = f^{-1}(z)`, :math:`z \sim p_Z`.

    .. math:: \log p(x) = \log p_Z(f(x)) + \log \left| \det J_f(x) \right|

    A Pyro ``TorchDistribution``: usable in ``pyro.sample`` (plates expand it), and with
    ``log_prob``, ``sample``, ``rsample`` and ``expand``.

    Arguments:
        transform: :math:`f`, from data to base.
        base: :math:`p_Z`, a distribution over ``transform``'s codomain.
        event_shape: the event shape of :math:`x`.
        allow_sequential: permit :meth:`log_prob` when ``transform``'s call is sequential
            (D network passes, e.g. an IAF's). Without it, such a ``log_prob`` raises
            :class:`SequentialDensityError`.

    Shapes:
        ``log_prob(x)``: ``x`` of shape ``(*sample, *batch, *event)`` -> ``(*sample, *batch)``.
    """

    arg_constraints: ClassVar[dict] = {}

    def __init__(
        self,
        transform: FlowTransform,
        base: Distribution,
        event_shape: Size | Sequence[int],
        allow_sequential: bool = False,
    ) -> None:
        self.transform = transform
        self.base = base
        self.allow_sequential = allow_sequential
        super().__init__(base.batch_shape, Size(event_shape), validate_args=False)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return bool(self.base.has_rsample)

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape: Size | Sequence[int], _instance: Any = None) -> NormalizingFlow:
        return NormalizingFlow(
            self.transform, self.base.expand(Size(batch_shape)), self.event_shape,
            self.allow_sequential,
        )

    def log_prob(self, x: Tensor) -> Tensor:
        if self.transform.sequential_call and not self.allow_sequential:
            raise SequentialDensityError(
                "this flow's data-to-base direction is sequential (an inverse autoregressive "
                f"flow: {math.prod(self.event_shape)} network passes per density), and it was "
                "built without allow_sequential=True. For the density of the flow's own samples "
                "use rsample_and_log_prob() (one pass; flow_sample() in a Pyro guide); to score "
                "arbitrary points anyway, build it with allow_sequential=True."
            )
        z, ladj = self.transform.call_and_ladj(x)
        return self.base.log_prob(z) + ladj

    def rsample(self, sample_shape: Size | Sequence[int] = ()) -> Tensor:
        z = self.base.rsample(Size(sample_shape))
        return self.transform.inverse(z)

    def sample(self, sample_shape: Size | Sequence[int] = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def rsample_and_log_prob(
        self, sample_shape: Size | Sequence[int] = ()
    ) -> tuple[Tensor, Tensor]:
        """A reparameterized draw and its log-density, in the base-to-data direction only
        (one pass for an IAF)."""
        z = self.base.rsample(Size(sample_shape))
        x, ladj = self.transform.inv_and_ladj(z)
        return x, self.base.log_prob(z) - ladj


def flow_sample(
    name: str, flow: NormalizingFlow, sample_shape: Size | Sequence[int] = ()
) -> Tensor:
    """``pyro.sample`` a site from a flow with the log-density of the draw computed in the
    same (base-to-data) pass: the way to use an IAF as a Pyro guide.

    The draw takes the batch shape of the enclosing vectorized plates (e.g. ``"data"`` and an
    outer ``"particles"`` plate), then enters the trace as ``Delta(x, log_density=log q(x))``,
    as Pyro's ``AutoContinuous`` guides do. A replayed or conditioned value other than the draw
    gets log-density ``-inf``: score other values with ``flow.log_prob`` explicitly.

    Arguments:
        name: the site name (e.g. ``"z"``).
        flow: the (conditional) flow distribution.
        sample_shape: extra leading sample dims.

    Returns:
        The draw ``x``.
    """
    from pyro.poutine.runtime import get_plates

    shape = list(flow.batch_shape)
    for frame in get_plates():
        if frame.vectorized and frame.dim is not None:
            while len(shape) < -frame.dim:
                shape.insert(0, 1)
            shape[frame.dim] = frame.size
    batch = Size(shape)
    if batch != flow.batch_shape:
        flow = flow.expand(torch.broadcast_shapes(batch, flow.batch_shape))
    x, log_q = flow.rsample_and_log_prob(sample_shape)
    delta = dist.Delta(x, log_density=log_q, event_dim=len(flow.event_shape))
    return pyro.sample(name, delta)


class Flow(nn.Module):
    r"""A lazy normalizing flow: ``forward(context)`` returns a :class:`NormalizingFlow`.

    Arguments:
        layers: the layers, data to base.
        event_shape: the shape of one data point :math:`x`.
        base_shape: the shape of :math:`z` (default: ``event_shape``; image flows that factor
            out end with a flat vector).
        allow_sequential: see :class:`NormalizingFlow`.

    Example:
        >>> from ppgen.models.flows import Flow, MaskedAffineAutoregressive
        >>> flow = Flow([MaskedAffineAutoregressive(3, hidden=[16])], event_shape=(3,))
        >>> x = flow().sample((4,))
        >>> flow().log_prob(x).shape
        torch.Size([4])
    """

    def __init__(
        self,
        layers: Sequence[LazyTransform],
        event_shape: Sequence[int],
        base_shape: Sequence[int] | None = None,
        allow_sequential: bool = False,
    ) -> None:
        super().__init__()
        self.transform = LazyComposedTransform(*layers)
        self.event_shape = Size(event_shape)
        self.base_shape = Size(event_shape if base_shape is None else base_shape)
        self.allow_sequential = allow_sequential
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def forward(
        self,
        context: Tensor | None = None,
        base: Distribution | None = None,
        temperature: float = 1.0,
    ) -> NormalizingFlow:
        """The flow :math:`p(x \\mid c)`.

        Arguments:
            context: context features ``(*batch, C)``; the batch shape of the result is
                ``context.shape[:-1]``.
            base: a base distribution to use instead of the standard normal (e.g. a VAE
                encoder's diagonal Gaussian, for an IAF posterior).
            temperature: the base standard deviation when ``base`` is None.
        """
        if base is None:
            batch = Size() if context is None else context.shape[:-1]
            base = StandardNormal(self.base_shape, batch, temperature, like=self._anchor)
        return NormalizingFlow(self.transform(context), base, self.event_shape,
                               self.allow_sequential)

    def initialize(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Data-dependent initialization of every layer on batch ``x``; returns ``f(x)``."""
        return self.transform.initialize(x, context)


def broadcast_context(context: Tensor, batch_shape: Size) -> Tensor:
    """``context (*b, C)`` expanded to ``(*batch_shape, C)`` (particle dims on the left)."""
    if context.shape[:-1] == batch_shape:
        return context
    return context.expand(*torch.broadcast_shapes(batch_shape, context.shape[:-1]),
                          context.shape[-1])


def sum_event(t: Tensor, event_dim: int) -> Tensor:
    """Sum over the rightmost ``event_dim`` dims."""
    return t.sum(tuple(range(-event_dim, 0))) if event_dim else t


def soft_clamp(s: Tensor, bound: float) -> Tensor:
    r""":math:`b \tanh(s / b)`: identity near 0, smoothly bounded in :math:`(-b, b)`, symmetric,
    so a scale :math:`e^s` can both contract and expand.

    Computed as :math:`2b\,\sigma(2s/b) - b`, the same function: torch's CPU ``tanh`` costs
    about six times its vectorized ``sigmoid`` (85 vs 14 us on 32k floats here), and this clamp
    runs in every coupling and autoregressive layer."""
    return torch.sigmoid(s * (2.0 / bound)).mul(2.0 * bound).sub_(bound)


# ---- the family base ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlowConfig(ModelConfig):
    """Hyperparameters every flow family shares.

    Arguments:
        transforms: the number of flow steps (coupling, autoregressive or CNF blocks).
        hidden: the conditioner's hidden widths (MLP units, or conv channels for image layers).
        logit_alpha: the logit transform's ``alpha`` for discrete data after dequantization.
        standardize: start with an :class:`~ppgen.models.flows.layers.ActNorm` initialized on
            the first training batch (per-dimension mean and standard deviation).
        whiten: add a :class:`~ppgen.models.flows.whiten.Whiten` layer after it (vector
            layouts), initialized to whiten the first training batch, so the flow starts as the
            full-covariance Gaussian fitted to that batch and training starts no worse than it:
            ``"on"``, ``"off"``, or ``"auto"`` (currently off: see :attr:`whiten_auto_on`). On a
            small correlated table ``"on"`` keeps a flow from losing to a single Gaussian.
    """

    transforms: int = 5
    hidden: tuple[int, ...] = (128, 128)
    logit_alpha: float = 0.05
    standardize: bool = True
    whiten: Literal["auto", "on", "off"] = "auto"

    #: What ``whiten="auto"`` means: off for now. With the layer on, a default MAF on moons ended
    #: 600 steps at 0.56 nats against 0.41 without it (whitening rotates the two moons into a
    #: basis its autoregressive layers fit more slowly), while on small correlated tables it
    #: helped (breast cancer: MAF 12.4 -> 10.5 nats); pass ``whiten="on"`` for small tables.
    whiten_auto_on: ClassVar[bool] = False

    @property
    def whitens(self) -> bool:
        """Whether the flow has the whitening layer (see ``whiten``)."""
        return self.whiten == "on" or (self.whiten == "auto" and self.kind == "continuous"
                                       and self.whiten_auto_on)

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.transforms) < 1:
            raise ValueError(f"transforms must be >= 1, got {self.transforms}")
        if not isinstance(self.hidden, tuple) or not self.hidden:
            raise ValueError(
                f"hidden must be a non-empty list of widths, e.g. [64, 64] (on the command "
                f"line --model.hidden=64,64 or --model.hidden=64,), got {self.hidden!r}"
            )
        if any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be positive, got {self.hidden}")
        if not 0.0 < self.logit_alpha < 0.5:
            raise ValueError(f"logit_alpha must lie in (0, 0.5), got {self.logit_alpha}")


class AbstractFlow(AbstractGenerativeModel, DifferentiableDensity, InitializesFromData):
    r"""Shared body of the flow families: a :class:`Flow` in the model's space, plus the data
    transform (dequantization and logit for discrete data, with its log-det counted).

    .. math:: \log p(x) = \log p_Z(f(t(x))) + \log|\det J_f(t(x))| + \log|\det J_t(x)|

    where :math:`t` is the identity for continuous data and the (stochastic) dequantization and
    logit map for discrete data, which makes ``log_prob`` a lower bound on the discrete
    likelihood in expectation (``dequantizes`` is True and ``ppgen.evaluate`` says so).

    Final subclasses implement :meth:`_layers`.
    """

    likelihood: ClassVar = "exact"
    default_objective: ClassVar = "mle"
    conditioning_methods: ClassVar = ("nuts",)
    allow_sequential: ClassVar[bool] = False

    def __init__(self, config: FlowConfig | None = None, **fields: Any) -> None:
        super().__init__(config, **fields)
        cfg = self.config
        alpha = None if cfg.kind == "continuous" else cfg.logit_alpha
        self.data_transform = DataTransform(cfg.kind, cfg.levels, alpha)
        layers, base_shape = self._layers()
        self.flow = Flow(layers, cfg.event_shape, base_shape, self.allow_sequential)

    @abc.abstractmethod
    def _layers(self) -> tuple[list[LazyTransform], tuple[int, ...]]:
        """The layers (data to base) and the base shape."""

    @property
    def dequantizes(self) -> bool:
        return self.data_transform.dequantizes

    def _dtype(self) -> torch.dtype:
        return self.flow._anchor.dtype

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Log-density of the data as given, in nats, shape ``(N,)``."""
        self._check_x(x)
        z, ladj = self.data_transform(x.to(self._dtype()))
        return self.flow(context).log_prob(z) + ladj

    def continuous_log_prob(self, v: Tensor, context: Tensor | None = None) -> Tensor:
        r"""The exact density of continuous points ``v`` (data units), differentiable in ``v``:
        ``log_prob`` for continuous data; for discrete data with ``L`` levels the dequantized
        density :math:`q(v)` on :math:`[0, L)^D`, the data transform without its noise
        (``v = x + u``), for conditioning by NUTS (``ppgen.impute``)."""
        v = v.to(self._dtype())
        if self.config.kind == "continuous":
            return self.flow(context).log_prob(v)
        t = self.data_transform
        levels = float(t.levels)
        y = v / levels
        ladj = v.new_full((v.shape[0],), -v[0].numel() * math.log(levels))
        if t.logit_alpha is not None:
            y, log_dz = logit_transform(y, t.logit_alpha)
            ladj = ladj + log_dz.reshape(v.shape[0], -1).sum(1)
        return self.flow(context).log_prob(y) + ladj

    def distribution(self, context: Tensor | None = None) -> Distribution:  # type: ignore[override]
        """The model's density as a distribution over the data as given: the flow itself for
        continuous data, else the dequantized density wrapped by ``ExplicitDensity``."""
        if self.config.kind == "continuous":
            return self.flow(context)
        return ExplicitDensity(self, context=context)

    @pyro_program
    def model(self, x: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        n = 1 if x is None else x.shape[0]
        if x is not None:
            x = self._check_x(x).to(self._dtype())
        with pyro.plate("data", n):
            return pyro.sample("x", self.distribution(context), obs=x)

    @torch.no_grad()
    def _sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """Draw ``n`` points in the data's units (quantized levels for discrete data).

        Arguments:
            n: the number of draws.
            seed: seeds a private generator (the global RNG is left alone).
            generator: a ``torch.Generator`` to draw with.
            context: unused by the unconditional families.
            temperature: the base standard deviation (Glow's temperature; 1 is the model).
        """
        anchor = self.flow._anchor
        generator = self.sampling_generator(seed, generator)
        flow = self.flow(context)
        z = torch.randn((n, *self.flow.base_shape), generator=generator, device=anchor.device,
                        dtype=anchor.dtype)
        x = flow.transform.inverse(z * temperature if temperature != 1.0 else z)
        return self.data_transform.inverse(x).reshape(n, *self.event_shape)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent initialization (ActNorm layers) on the first training batch."""
        self._check_x(x)
        z, _ = self.data_transform(x.to(self._dtype()))
        self.flow.initialize(z)

    def extra_repr(self) -> str:
        cfg = self.config
        return f"transforms={cfg.transforms}, hidden={list(cfg.hidden)}, " + super().extra_repr()
