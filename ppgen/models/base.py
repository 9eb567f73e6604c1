"""The protocol every ppgen family follows.

A family is a final subclass of :class:`AbstractGenerativeModel`: a ``PyroModule`` whose
``model``/``guide`` are real Pyro programs, whose parameters all live in the module, and which
*declares* its likelihood capability in the class attribute ``likelihood``. The shared inference
layer (``ppgen.inference``) reads these declarations and never probes a family with ``hasattr``.

Each family has a frozen, keyword-only :class:`ModelConfig` subclass. The config records every
architectural choice plus the facts about the data the model was built for (``event_shape``,
``kind``, ``levels``), so a checkpoint holding ``config.to_dict()`` and a ``state_dict`` is
enough to rebuild the model exactly (see ``ppgen.checkpoint``).
"""

from __future__ import annotations

__all__ = [
    "AbstractGenerativeModel",
    "DataKind",
    "ExplicitDensity",
    "LikelihoodKind",
    "ModelConfig",
    "pyro_program",
]

import abc
import dataclasses
import functools
import itertools
import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeVar

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, pyro_method
from pyro.nn.module import _PyroModuleMeta
from torch import Tensor

LikelihoodKind = Literal["exact", "bound", "none"]
DataKind = Literal["binary", "discrete", "continuous"]

_F = TypeVar("_F", bound=Callable[..., Any])


def pyro_program(fn: _F) -> _F:
    """Mark a method as a Pyro program (``model``, ``guide`` or a helper they call).

    Applies Pyro's ``pyro_method`` and runs the body with ``module_local_params=True``, scoped to
    the call: parameters stay in the module (never in Pyro's global param store), so two models in
    one process cannot see each other's weights, and importing ppgen changes no global setting.
    """

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with pyro.settings.context(module_local_params=True):
            return fn(*args, **kwargs)

    return pyro_method(wrapped)  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Base of every family's configuration: the data facts a model is built for.

    Family configs subclass this with their hyperparameters (``hidden``, ``transforms``,
    ``latent``, ``timesteps``...). Lists given for tuple fields are stored as tuples, so configs
    stay hashable and compare equal after a JSON round trip.

    Arguments:
        event_shape: the shape of one data point, e.g. ``(2,)`` or ``(1, 8, 8)``.
        kind: ``"binary"`` (0/1), ``"discrete"`` (integers ``0..levels-1``) or ``"continuous"``.
        levels: the number of levels for discrete data, 2 for binary, None for continuous data.
    """

    event_shape: tuple[int, ...]
    kind: DataKind = "continuous"
    levels: int | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        if self.kind not in ("binary", "discrete", "continuous"):
            raise ValueError(f"kind must be binary, discrete or continuous, got {self.kind!r}")
        if self.kind == "binary" and self.levels not in (None, 2):
            raise ValueError(f"binary data has 2 levels, got levels={self.levels}")
        if self.kind == "binary":
            object.__setattr__(self, "levels", 2)
        if self.kind == "discrete" and (self.levels is None or self.levels < 2):
            raise ValueError(f"discrete data needs levels >= 2, got levels={self.levels}")
        if any(int(s) <= 0 for s in self.event_shape):
            raise ValueError(f"event_shape must be positive, got {self.event_shape}")

    @property
    def num_dims(self) -> int:
        """D, the number of scalar dimensions of one data point."""
        return math.prod(self.event_shape)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"{cls.__name__} has no field {unknown[0]!r} (known: {sorted(names)}); "
                "was this config written for another family or version?"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


class _ProtocolMeta(_PyroModuleMeta, abc.ABCMeta):
    """Lets a ``PyroModule`` also be an ABC with abstract methods."""


class AbstractGenerativeModel(PyroModule, metaclass=_ProtocolMeta):
    """Base of every family. Final subclasses implement the members below.

    Class attributes every family declares:
        likelihood: ``"exact"`` (``log_prob`` is the exact density of the model), ``"bound"``
            (``elbo`` is a lower bound on log p(x) through model/guide), or ``"none"`` (implicit).
        Config: the family's :class:`ModelConfig` subclass.
        default_objective: the name of the objective in ``ppgen.inference.objectives`` that fits
            this family by default (``"mle"``, ``"elbo"``, ``"denoising"``, ``"adversarial"``).
        default_estimator: the estimator ``ppgen.evaluate(estimator="auto")`` uses, or None for
            the choice by capability (``exact`` -> ``"exact"``, ``bound`` -> ``"iwae"``,
            ``none`` -> ``"ais"``). Diffusion, whose closed-form bound is tighter and cheaper
            than IWAE over a T-step chain, declares ``"elbo"``.

    Instance attributes:
        config: the frozen config the model was built from.
        event_shape: ``torch.Size`` of one data point.

    Hooks with defaults (override where the family needs them):
        :meth:`initialize` (data-dependent init, run once before the first training step),
        :meth:`fit_defaults` (trainer defaults, e.g. EMA for diffusion),
        :meth:`denoising_loss` (the per-example loss of the ``"denoising"`` objective),
        :meth:`elbo` (per-example lower bound; the default uses model/guide traces),
        :meth:`make_discriminator` (the critic adversarial training builds for an implicit model),
        :meth:`estimator_defaults` (options a family wants for an estimator, e.g. AIS steps),
        :meth:`elbo_parts` (that bound split into a data term and KL terms, for beta/warm-up/
        free bits; the default uses traces),
        :attr:`dequantizes` (True when a continuous density scores discrete data),
        :attr:`conditional` (True when ``model``/``sample`` take ``context``: the trainer then
        passes the dataset's labels).
    """

    likelihood: ClassVar[LikelihoodKind]
    Config: ClassVar[type[ModelConfig]]
    default_objective: ClassVar[str] = "mle"
    default_estimator: ClassVar[str | None] = None

    def __init__(self, config: ModelConfig | None = None, **fields: Any) -> None:
        super().__init__()
        config = self.config_from(config, **fields)
        if not isinstance(config, self.Config):
            raise TypeError(
                f"{type(self).__name__} takes a {self.Config.__name__}, got {config!r}"
            )
        self.config = config
        self.event_shape = torch.Size(config.event_shape)

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def config_from(cls, config: ModelConfig | None = None, **fields: Any) -> ModelConfig:
        """Accept either a config or its fields (nanoGPT/minGPT style)."""
        if config is not None and fields:
            return config.replace(**fields)
        if config is not None:
            return config
        known = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(
                f"{cls.__name__} has no hyperparameter {unknown[0]!r}; known: {sorted(known)}"
            )
        return cls.Config(**fields)

    # ---- the protocol -------------------------------------------------------------------------

    @abc.abstractmethod
    def model(self, x: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        """The generative story as a Pyro program; ``x`` is observed at site ``"x"`` under
        ``pyro.plate("data", N)``. With ``x=None`` it draws one point per context row (or one)."""

    def guide(self, x: Tensor | None = None, context: Tensor | None = None) -> None:
        """The variational family; families without latent variables have an empty guide."""

    def sampling_generator(
        self, seed: int | None, generator: torch.Generator | None
    ) -> torch.Generator | None:
        """The generator ``sample`` draws with: a private one seeded with ``seed`` on the model's
        device (the global RNG is left alone), else the caller's ``generator``."""
        if seed is None:
            return generator
        ref = next(itertools.chain(self.parameters(), self.buffers()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        return torch.Generator(device=device).manual_seed(seed)

    @abc.abstractmethod
    def sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """Draw ``n`` points, shape ``(n, *event_shape)``, in the data's own units."""

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact log-density of ``x`` in nats, shape ``(N,)``. Only families declaring
        ``likelihood = "exact"`` implement it."""
        raise NotImplementedError(
            f"{type(self).__name__} declares likelihood={self.likelihood!r}: it has no exact "
            "log_prob; use ppgen.evaluate, which picks the right estimator."
        )

    def elbo(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """A per-example lower bound on log p(x) in nats, shape ``(N,)``.

        The default is the one-particle Monte Carlo ELBO from traces of ``model``/``guide``
        (summing each site's log-density over event dims, keeping the data dim). Families with a
        closed-form or lower-variance bound (diffusion's KL sum) override it.
        """
        from pyro import poutine

        guide_trace = poutine.trace(self.guide).get_trace(x, context)
        model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(
            x, context
        )
        return _per_example_log_weight(model_trace, guide_trace, x.shape[0])

    def elbo_parts(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The per-example ELBO split into a data term and KL terms, for training objectives
        that weight them (beta-VAE, KL warm-up, free bits).

        Returns ``(log_lik, kl)`` with ``elbo = log_lik - kl.sum(-1)``: ``log_lik`` of shape
        ``(N,)`` is the one-sample estimate of E_q[log p(x | z)] (every observed site), ``kl`` of
        shape ``(N, G)`` holds G groups of KL(q || p) terms. The default builds them from one
        pair of ``model``/``guide`` traces with one group per latent site (Monte Carlo
        ``log q(z) - log p(z)``); families with a closed-form KL (the VAE's Gaussian posterior
        and prior, one group per latent dimension) override it without traces.
        """
        from pyro import poutine

        guide_trace = poutine.trace(self.guide).get_trace(x, context)
        model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(
            x, context
        )
        n = x.shape[0]
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        log_lik = x.new_zeros(n)
        kl = []
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            lp = _spread(site["log_prob"], n)
            if site["is_observed"]:
                log_lik = log_lik + lp
            elif name in guide_trace.nodes:
                kl.append(_spread(guide_trace.nodes[name]["log_prob"], n) - lp)
        kl_terms = torch.stack(kl, -1) if kl else x.new_zeros(n, 0)
        return log_lik, kl_terms

    # ---- hooks --------------------------------------------------------------------------------

    @property
    def dequantizes(self) -> bool:
        """True when this model scores discrete data through a continuous density after
        uniform dequantization, which makes its log_prob a (stochastic) lower bound on the
        discrete data's log-likelihood rather than an exact value."""
        return False

    @property
    def conditional(self) -> bool:
        """True when the model takes ``context`` (class labels); the trainer then passes the
        dataset's ``labels`` as ``context`` to every objective call."""
        return False

    @property
    def observation_scale(self) -> float | None:
        """For implicit models (``likelihood = "none"``) whose ``"x"`` site is a deterministic
        (Delta) function of the latents: the standard deviation ``s`` of the Gaussian observation
        model ``p(x | z) = N(g(z), s^2 I)`` under which likelihood estimators (AIS) and latent
        inversion (NUTS) score data (Wu et al. 2017, arXiv:1611.04273). None for models whose
        ``"x"`` site has a real density."""
        return None

    def make_discriminator(self) -> torch.nn.Module:
        """A fresh discriminator (critic) for adversarial training of an implicit model: a
        module mapping a batch ``(N, *event_shape)`` in the space of the ``"x"`` site to scores
        ``(N,)``. The ``"adversarial"`` objective builds and owns it (so it lands in the training
        checkpoint). Default: a LeakyReLU MLP (128, 128) on the flattened points."""
        from ppgen.models.nets import MLP

        net = MLP(self.config.num_dims, 1, (128, 128), torch.nn.LeakyReLU)
        return torch.nn.Sequential(torch.nn.Flatten(), net, torch.nn.Flatten(0))

    def initialize(self, x: Tensor) -> None:  # noqa: B027 - a hook with an empty default
        """Data-dependent initialization, called once on the first training batch (never again
        on resume). Default: nothing."""

    def denoising_loss(
        self, x: Tensor, context: Tensor | None = None, **options: Any
    ) -> Tensor:
        """Per-example loss ``(N,)`` of the ``"denoising"`` objective (diffusion families, which
        declare ``default_objective = "denoising"``). Default: this family has none."""
        raise ValueError(
            f"{type(self).__name__} has no denoising loss; fit it with its default objective "
            f"{self.default_objective!r}"
        )
    def estimator_defaults(self, estimator: str) -> dict[str, Any]:
        """Options this family wants for likelihood estimator ``estimator`` when the caller of
        ``ppgen.evaluate`` does not set them (e.g. a GAN's AIS schedule length); the caller's
        explicit options win. Default: none."""
        return {}

    def fit_defaults(self) -> dict[str, Any]:
        """Trainer keyword defaults this family wants (e.g. ``{"ema": 0.999}``); the user's
        explicit arguments win."""
        return {}

    # ---- conveniences shared by every family --------------------------------------------------

    def distribution(self, context: Tensor | None = None) -> ExplicitDensity:
        """The model's density as a Pyro/torch distribution (exact-likelihood families)."""
        return ExplicitDensity(self, context=context)

    def extra_repr(self) -> str:
        return f"likelihood={self.likelihood!r}, event_shape={tuple(self.event_shape)}"

    def _check_x(self, x: Tensor) -> Tensor:
        """Validate a batch against the config: shape, finiteness, support. Raises ValueError."""
        from ppgen.datasets.validation import check_batch

        return check_batch(x, self.config.event_shape, self.config.kind, self.config.levels)


def _per_example_log_weight(model_trace: Any, guide_trace: Any, n: int) -> Tensor:
    """log p(x, z) - log q(z | x) per example, from traces whose sites live in plate ``data``.

    Sites outside the data plate (global latents) are spread evenly over the N examples.
    """
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    total = None
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            lp = site["log_prob"]
            if total is None:
                total = lp.new_zeros(n)
            if lp.dim() == 0 or lp.shape[-1] != n:
                total = total + sign * lp.sum() / n  # a global site, shared by all examples
            else:
                total = total + sign * lp.reshape(-1, n).sum(0)
    assert total is not None, "the traces hold no sample site"
    return total


def _spread(lp: Tensor, n: int) -> Tensor:
    """A site's log-density as one value per example, ``(N,)``: summed over other plates, or
    spread evenly over the N examples for a site outside the data plate."""
    if lp.dim() == 0 or lp.shape[-1] != n:
        return lp.sum().expand(n) / n
    return lp.reshape(-1, n).sum(0)


_SCALAR = torch.Size()  # the empty shape, a shared default argument


class ExplicitDensity(dist.TorchDistribution):
    """A model's exact density wrapped as a Pyro distribution, so ``pyro.sample("x", ...)``,
    ``log_prob``, ``sample`` and ``expand`` work with any tool that takes a distribution.

    ``log_prob`` flattens the batch dims, calls ``model.log_prob`` and restores them; ``sample``
    draws ``prod(sample_shape + batch_shape)`` points with ``model.sample``.
    """

    arg_constraints: ClassVar[dict] = {}
    has_rsample = False

    def __init__(
        self,
        model: AbstractGenerativeModel,
        context: Tensor | None = None,
        batch_shape: torch.Size = _SCALAR,
        validate_args: bool | None = False,
    ) -> None:
        self.model = model
        self.context = context
        super().__init__(torch.Size(batch_shape), model.event_shape, validate_args=False)

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> ExplicitDensity:
        return ExplicitDensity(self.model, self.context, torch.Size(batch_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        event_dims = len(self.event_shape)
        batch = value.shape[: value.dim() - event_dims]
        flat = value.reshape(-1, *self.event_shape)
        return self.model.log_prob(flat, self.context).reshape(batch)

    def sample(self, sample_shape: torch.Size = _SCALAR) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        n = max(math.prod(shape), 1)
        with torch.no_grad():
            x = self.model.sample(n, context=self.context)
        return x.reshape(*shape, *self.event_shape)
