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
    "MAX_PARAMETERS",
    "AbstractGenerativeModel",
    "ConfigError",
    "ConfigTypeError",
    "DataKind",
    "ExplicitDensity",
    "LikelihoodKind",
    "ModelConfig",
    "ModelSizeError",
    "SampleSizeError",
    "building_on_meta",
    "check_finite_parameters",
    "pyro_program",
]

import abc
import dataclasses
import difflib
import functools
import itertools
import math
import numbers
import types
import typing
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, pyro_method
from pyro.nn.module import _PyroModuleMeta
from torch import Tensor

from ppgen.datasets.validation import check_batch
from ppgen.models.capabilities import CAPABILITIES
from ppgen.models.traces import log_weight_per_example, spread_over_examples

LikelihoodKind = Literal["exact", "bound", "none"]
DataKind = Literal["binary", "discrete", "continuous"]

_F = TypeVar("_F", bound=Callable[..., Any])

#: The largest model :func:`ppgen.build` and :func:`ppgen.load` construct unless the caller
#: raises it (``max_parameters=N``): 2**28 = 268,435,456 values in parameters and buffers, about
#: 1 GiB in float32. A config (from build keyword arguments, a checkpoint or a run's
#: ``config.json``) asking for more is refused before anything is allocated.
MAX_PARAMETERS = 2**28


class ConfigError(ValueError):
    """A hyperparameter out of its range, or a name no field of the family's config has."""


class ConfigTypeError(ConfigError, TypeError):
    """A hyperparameter of the wrong type (a str where an int is expected, a float for a
    width...). Both a ``TypeError`` and a ``ValueError``, so callers that catch bad input as
    ``ValueError`` (the CLI's one-line errors) catch it too."""


class ModelSizeError(ValueError):
    """A config whose model would hold more values than the caller's ``max_parameters``."""


class SampleSizeError(ValueError):
    """``sample(n)`` whose result cannot fit in the memory that is free."""


def building_on_meta() -> bool:
    """True while a model is constructed under ``with torch.device("meta")`` (the size check of
    :meth:`AbstractGenerativeModel.parameter_count`): construction code that computes values
    from tensors (masks, schedules) skips that work, since meta tensors hold no data."""
    return torch.get_default_device().type == "meta"


#: Working memory one chunk of :meth:`AbstractGenerativeModel.sample` may take (256 MiB).
SAMPLE_CHUNK_BYTES = 2**28


def _check_count(n: Any, name: str, where: str) -> int:
    """``n`` as a Python int >= 1, or a one-line error naming ``name``."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise ConfigTypeError(
            f"{where}: {name} must be a positive int ({name} >= 1), got {n!r} "
            f"({type(n).__name__})"
        )
    if int(n) < 1:
        raise ValueError(f"{where}: {name} must be a positive int ({name} >= 1), got {int(n)}")
    return int(n)


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device``: CUDA's free memory; on the CPU,
    ``MemAvailable`` of ``/proc/meminfo`` bounded by the process's address-space limit
    (``RLIMIT_AS``) less what it maps now. None where it cannot be known."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    free: int | None = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            mapped = 0
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmSize:"):
                        mapped = int(line.split()[1]) * 1024
            room = max(0, soft - mapped)
            free = room if free is None else min(free, room)
    except (ImportError, OSError, ValueError):
        pass
    return free


def check_finite_parameters(model: torch.nn.Module) -> None:
    """Raise ``ValueError`` naming the first parameter or floating buffer of ``model`` that
    holds NaN or infinity: such a model scores ``nan`` and draws garbage, so
    :meth:`AbstractGenerativeModel.sample` and ``ppgen.evaluate`` refuse it."""
    from torch.nn.parameter import is_lazy

    named = itertools.chain(model.named_parameters(), model.named_buffers())
    for name, t in named:
        if is_lazy(t) or t.is_meta or not t.is_floating_point() or t.numel() == 0:
            continue
        finite = torch.isfinite(t.detach())
        if not bool(finite.all()):
            nan = int(torch.isnan(t.detach()).sum())
            inf = t.numel() - int(finite.sum()) - nan
            raise ValueError(
                f"{type(model).__name__} has non-finite weights: {name!r} holds {nan} NaN and "
                f"{inf} infinite values of {t.numel()}; retrain it or load another checkpoint"
            )


def _family_label(config_cls: type) -> str:
    name = config_cls.__name__
    return name[: -len("Config")] if name.endswith("Config") and name != "ModelConfig" else name


@functools.cache
def _field_types(config_cls: type) -> dict[str, Any]:
    """The resolved annotation of every field of a config class (PEP 563 strings resolved)."""
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(config_cls)}


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _describe(tp: Any) -> str:
    """A short human name of a field type: ``int``, ``a tuple of ints``, ``one of ['a', 'b']``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return f"one of {list(typing.get_args(tp))}"
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(parts) + " or None"
    if origin is tuple:
        return "a list of ints (or one int)"
    return getattr(tp, "__name__", str(tp))


def _coerce(config_cls: type, name: str, tp: Any, value: Any, minimum: int) -> Any:
    """``value`` for field ``name`` of annotation ``tp``, checked and normalized; raises
    :class:`ConfigTypeError` for a wrong type and :class:`ConfigError` for a bad value."""
    family = _family_label(config_cls)

    def wrong() -> ConfigTypeError:
        return ConfigTypeError(
            f"{family}: hyperparameter {name!r} expects {_describe(tp)}, got {value!r} "
            f"({type(value).__name__})"
        )

    def too_small(v: Any) -> ConfigError:
        what = "a positive size" if minimum >= 1 else f"an int >= {minimum}"
        return ConfigError(f"{family}: hyperparameter {name!r} must be {what}, got {v!r}")

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            try:
                return _coerce(config_cls, name, rest[0], value, minimum)
            except ConfigTypeError:
                raise wrong() from None
        return value  # a union this layer does not model: the family checks it
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) or value not in choices:
            raise ConfigError(
                f"{family}: {name} must be one of {list(choices)}, got {value!r}"
            )
        return value
    if origin is tuple:
        # One width where a list of widths is expected (``--model.hidden=16``) is a list of one:
        # every family reads it the same way (the VAE always did).
        items = [value] if _is_int(value) else value
        if not isinstance(items, list | tuple):
            raise wrong()
        if any(not _is_int(v) for v in items):
            raise wrong()
        out = tuple(int(v) for v in items)
        for v in out:
            if v < minimum:
                raise too_small(v)
        return out
    if tp is bool:
        if not isinstance(value, bool | np.bool_):  # numpy's bool too
            raise wrong()
        return bool(value)
    if tp is int:
        if not _is_int(value):
            raise wrong()
        if int(value) < minimum:
            raise too_small(int(value))
        return int(value)
    if tp is float:
        if not _is_real(value):
            raise wrong()
        if not math.isfinite(float(value)):
            raise ConfigError(
                f"{family}: hyperparameter {name!r} must be a finite number, got {value!r}"
            )
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    return value


def unknown_field_error(
    config_cls: type, name: str, what: str = "hyperparameter", family: str | None = None
) -> ConfigError:
    """The error for a field name the config does not have: the family, the name, the nearest
    known name and every known one."""
    known = sorted(f.name for f in dataclasses.fields(config_cls))
    near = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return ConfigError(
        f"{family or _family_label(config_cls)} has no {what} {name!r}{hint}; known: {known}"
    )


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

    #: Integer fields (and tuple-of-int fields) that may be 0; every other one is a size >= 1.
    #: ``order`` holds positions 0..D-1, ``warmup`` is a step count, ``mask_seed`` a seed, and
    #: ``transforms`` may be 0 where no flow uses it (a flow family requires >= 1 itself).
    zero_allowed: ClassVar[frozenset[str]] = frozenset(
        {"order", "warmup", "mask_seed", "transforms"}
    )

    def __post_init__(self) -> None:
        self._coerce_fields()
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

    def _coerce_fields(self) -> None:
        """The one hyperparameter parser of every family, driven by the field annotations: a
        list given for a tuple field is stored as a tuple (configs stay hashable and compare
        equal after a JSON round trip), one int given for a tuple of ints is a tuple of one, a
        numpy int or float is a Python one; a wrong type is a :class:`ConfigTypeError`, a size
        below 1 (below 0 for :attr:`zero_allowed` fields), a non-finite float or a value outside
        a ``Literal``'s choices a :class:`ConfigError`, each naming the family and the field.
        Ranges particular to a family (``dropout < 1``, odd kernel sizes) stay in its own
        ``__post_init__``, which runs after this."""
        cls = type(self)
        for name, tp in _field_types(cls).items():
            minimum = 0 if name in cls.zero_allowed else 1
            value = _coerce(cls, name, tp, getattr(self, name), minimum)
            object.__setattr__(self, name, value)

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
        if not isinstance(data, dict):
            raise ConfigTypeError(
                f"{_family_label(cls)}: a config is a mapping of field names to values, got "
                f"{type(data).__name__}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names, key=str)
        if unknown:
            error = unknown_field_error(cls, str(unknown[0]), "field")
            raise ConfigError(
                f"{error}; was this config written for another family or version?"
            )
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in data and f.default is dataclasses.MISSING)
        if missing:
            raise ConfigError(f"{_family_label(cls)}: the config lacks field {missing[0]!r}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (an unknown name is a :class:`ConfigError`)."""
        names = {f.name for f in dataclasses.fields(self)}
        for name in changes:
            if name not in names:
                raise unknown_field_error(type(self), name)
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
        conditioning_methods: the names of the imputation methods of ``ppgen.impute`` that
            apply to this family, most preferred first (``ppgen.models.conditioning``).

    Instance attributes:
        config: the frozen config the model was built from.
        event_shape: ``torch.Size`` of one data point.

    Members with defaults (override where the family needs them):
        :meth:`elbo` (per-example lower bound; the default uses model/guide traces),
        :meth:`elbo_parts` (that bound split into a data term and KL terms, for beta/warm-up/
        free bits; the default uses traces).

    Declarations with defaults:
        :meth:`fit_defaults` (trainer defaults, e.g. EMA for diffusion),
        :meth:`estimator_defaults` (options a family wants for an estimator, e.g. AIS steps),
        :attr:`dequantizes` (True when a continuous density scores discrete data),
        :attr:`conditional` (True when ``model``/``sample`` take ``context``: the trainer then
        passes the dataset's labels), :attr:`context_classes`.

    What only some families can do is a *capability* (:mod:`ppgen.models.capabilities`), which a
    family declares among its bases and the shared layer checks with ``isinstance``:
    :class:`~ppgen.models.capabilities.DenoisingModel` (``denoising_loss``),
    :class:`~ppgen.models.capabilities.ImplicitModel` (``make_discriminator``,
    ``observation_scale``), :class:`~ppgen.models.capabilities.InitializesFromData`
    (``initialize``). These used to be hooks with defaults on this class; a subclass that still
    defines one without declaring its capability is registered with it, with a
    ``DeprecationWarning`` (:meth:`__init_subclass__`).
    """

    likelihood: ClassVar[LikelihoodKind]
    Config: ClassVar[type[ModelConfig]]
    default_objective: ClassVar[str] = "mle"
    default_estimator: ClassVar[str | None] = None
    #: True when the family defines a probability-flow ODE whose likelihood
    #: :meth:`ode_log_prob` computes (diffusion); the ``"ode"`` estimator reads it.
    probability_flow: ClassVar[bool] = False
    #: The objective that fits this family on incomplete data (a dataset with a ``mask``, from
    #: ``from_array(x, missing="mask")``), or None: the family cannot train on missing values
    #: and ``ppgen.fit`` refuses such data for it before any work. A family that names one
    #: implements :meth:`observed_log_weights`.
    incomplete_data_objective: ClassVar[str | None] = None
    #: Imputation methods (``ppgen.impute``) that apply to this family, most preferred first;
    #: see :mod:`ppgen.models.conditioning`. Empty: the family cannot be conditioned.
    conditioning_methods: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass that defines a former protocol hook (``initialize``, ``denoising_loss``,
        ``make_discriminator``, ``observation_scale``) without declaring its capability keeps
        working: it is registered with the capability, and a ``DeprecationWarning`` says which
        base to add."""
        super().__init_subclass__(**kwargs)
        for name, capability in CAPABILITIES.items():
            if name in vars(cls) and not issubclass(cls, capability):
                warnings.warn(
                    f"{cls.__qualname__} defines {name!r} without declaring its capability; "
                    f"declare it: class {cls.__name__}(..., {capability.__name__}) with "
                    f"{capability.__name__} from ppgen.models.capabilities (the hook on "
                    "AbstractGenerativeModel is deprecated)",
                    DeprecationWarning,
                    stacklevel=3,
                )
                capability.register(cls)

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
            raise unknown_field_error(cls.Config, unknown[0], family=cls.__name__)
        missing = sorted(f.name for f in dataclasses.fields(cls.Config)
                         if f.name not in fields and f.default is dataclasses.MISSING)
        if missing:
            raise ConfigError(f"{cls.__name__} needs {missing[0]!r} (the data's facts)")
        try:
            return cls.Config(**fields)
        except ConfigError as e:  # name the family built, not the config class it shares
            label, text = _family_label(cls.Config), str(e)
            if label != cls.__name__ and text.startswith(label):
                raise type(e)(cls.__name__ + text[len(label):]) from None
            raise

    @classmethod
    def parameter_count(cls, config: ModelConfig) -> int:
        """The number of values (parameters and buffers) a model built from ``config`` holds,
        counted exactly without allocating them: the model is built under
        ``torch.device("meta")``, whose tensors have shapes and no storage."""
        with torch.device("meta"):
            model = cls(config)
        return sum(t.numel() for t in itertools.chain(model.parameters(), model.buffers()))

    @classmethod
    def check_size(cls, config: ModelConfig, max_parameters: int | None = MAX_PARAMETERS) -> None:
        """Refuse ``config`` in one line (:class:`ModelSizeError`) when the model it describes
        would hold more than ``max_parameters`` values (default :data:`MAX_PARAMETERS`, 2**28,
        about 1 GiB in float32); None skips the check. :func:`ppgen.build` and
        :func:`ppgen.load` call it before they allocate anything, so a config with enormous
        widths (from keyword arguments, a checkpoint or a run's ``config.json``) cannot exhaust
        the memory. A user's class that cannot be built on the meta device is not checked."""
        if max_parameters is None:
            return
        limit = _check_count(max_parameters, "max_parameters", cls.__name__)
        try:
            count = cls.parameter_count(config)
        except (NotImplementedError, RuntimeError):
            if cls.__module__.startswith("ppgen."):
                raise
            return
        if count > limit:
            raise ModelSizeError(
                f"{cls.__name__} with this config would hold {count:,} parameters (and "
                f"buffers), over the limit of {limit:,} ({limit * 4 / 2**30:.2g} GiB in "
                f"float32); shrink the config or pass max_parameters={count} to allow it"
            )

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

    def sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
        **options: Any,
    ) -> Tensor:
        """Draw ``n`` points, shape ``(n, *event_shape)``, in the data's own units.

        The one entry point of every family's sampling: it checks ``n`` (an int >= 1; numpy
        ints are accepted, bools and floats are not), refuses a model with non-finite weights
        (:func:`check_finite_parameters`), and estimates the memory the draw needs: a result that
        cannot fit in the free memory is refused in one line with the figure
        (:class:`SampleSizeError`); a large one that fits is drawn in chunks of
        :meth:`sample_chunk_size` points into one preallocated tensor (with ``seed``, the chunks
        draw from one generator seeded once, so the result is reproducible). Below the chunk size
        the family's :meth:`_sample` runs once, exactly as called. ``options`` are the family's
        own (``temperature``, ``sampler``, ``method``...).
        """
        n = _check_count(n, "n", type(self).__name__ + ".sample")
        check_finite_parameters(self)
        chunk = self.sample_chunk_size()
        if n <= chunk:
            return self._sample(n, seed=seed, generator=generator, context=context, **options)
        self._check_sample_memory(n, chunk)
        rows = torch.is_tensor(context) and context.dim() >= 1 and context.shape[0] == n
        with torch.random.fork_rng(enabled=seed is not None, devices=[]):
            if seed is not None:  # families that draw from torch's global RNG stay reproducible
                torch.manual_seed(seed)
            gen = self.sampling_generator(seed, generator)
            out: Tensor | None = None
            for start in range(0, n, chunk):
                k = min(chunk, n - start)
                ctx = context[start : start + k] if rows else context
                part = self._sample(k, seed=None, generator=gen, context=ctx, **options)
                if out is None:
                    out = part.new_empty((n, *part.shape[1:]))
                out[start : start + k] = part
        assert out is not None
        return out

    def _sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """The family's draw of ``n`` points (``n`` already checked): every family implements
        it; callers use :meth:`sample`. A user's class that overrides ``sample`` itself keeps
        working (without the checks above)."""
        raise NotImplementedError(f"{type(self).__name__} implements no _sample")

    def sample_chunk_size(self) -> int:
        """Points per chunk when :meth:`sample` draws a large ``n``: about
        :data:`SAMPLE_CHUNK_BYTES` of working memory, counted as 16 values per data dimension
        per point (activations of the networks a draw runs through). 65,536 points for 8x8
        images in float32, 2,097,152 for 2-D points."""
        per_point = 16 * max(1, math.prod(self.event_shape)) * self._value_bytes()
        return max(1, SAMPLE_CHUNK_BYTES // per_point)

    def _value_bytes(self) -> int:
        ref = next(itertools.chain(self.parameters(), self.buffers()), None)
        if ref is None or not ref.is_floating_point():
            return torch.finfo(torch.get_default_dtype()).bits // 8
        return ref.element_size()

    def _check_sample_memory(self, n: int, chunk: int) -> None:
        """Refuse a draw whose result plus one working chunk exceeds the free memory."""
        ref = next(itertools.chain(self.parameters(), self.buffers()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        width = self._value_bytes()
        d = max(1, math.prod(self.event_shape))
        need = n * d * width + chunk * d * width * 16
        free = available_memory(device)
        if free is not None and need > free:
            raise SampleSizeError(
                f"{type(self).__name__}.sample(n={n}) needs about {need / 2**30:.1f} GiB (n x "
                f"{d} values x {width} bytes, plus a working chunk) but about "
                f"{free / 2**30:.1f} GiB of {device.type} memory is free; draw fewer points per "
                "call (in a loop)"
            )

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
        guide_trace = poutine.trace(self.guide).get_trace(x, context)
        model_trace = poutine.trace(poutine.replay(self.model, trace=guide_trace)).get_trace(
            x, context
        )
        return log_weight_per_example(model_trace, guide_trace, x.shape[0])

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
            lp = spread_over_examples(site["log_prob"], n)
            if site["is_observed"]:
                log_lik = log_lik + lp
            elif name in guide_trace.nodes:
                kl.append(spread_over_examples(guide_trace.nodes[name]["log_prob"], n) - lp)
        kl_terms = torch.stack(kl, -1) if kl else x.new_zeros(n, 0)
        return log_lik, kl_terms

    def observed_log_weights(
        self,
        x: Tensor,
        mask: Tensor | None,
        num_particles: int = 1,
        context: Tensor | None = None,
    ) -> Tensor:
        r"""Importance log-weights of the observed cells only, ``(K, N)`` in nats:
        :math:`\log w_k = \log p(x_{obs} \mid z_k) + \log p(z_k) - \log q(z_k \mid x_{obs})`,
        :math:`z_k \sim q`, so that :math:`\log \frac1K \sum_k w_k` is a lower bound on
        :math:`\log p(x_{obs})` (the MIWAE bound, Mattei & Frellsen 2019, arXiv:1812.02633).

        The capability behind :attr:`incomplete_data_objective`; ``mask`` (bool, ``x``'s shape,
        True = observed; None = all observed) says which cells count, and the values of ``x``
        in missing cells are never read. Default: this family has none.
        """
        raise ValueError(
            f"{type(self).__name__} cannot score incomplete data (it has no likelihood of the "
            "observed cells only)"
        )

    # ---- declarations -------------------------------------------------------------------------

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
    def context_classes(self) -> int | None:
        """K for a class-conditional model, whose ``context`` is one label in ``0..K-1`` per
        example (a conditional VAE's ``context_classes``, a PixelCNN's ``num_classes``); None
        for an unconditional model, or a conditional one whose context is not a class label."""
        return None

    def check_context(self, context: Any, n: int | None) -> Tensor | None:
        """Validate ``context`` for a batch of ``n`` examples, before any work, the same way for
        every family; returns it as a long tensor on the model's device (None for an
        unconditional model). Raises ``ValueError``: context given to an unconditional model or
        missing for a conditional one, not one label per example (a single label is repeated
        for all ``n``), non-integer labels, or labels outside ``0..K-1`` for a model with
        :attr:`context_classes` K. ``n=None`` checks the labels only (any count)."""
        name = type(self).__name__
        if not self.conditional:
            if context is not None:
                raise ValueError(
                    f"{name} is unconditional: pass context=None, or build a class-conditional "
                    "model to condition on labels"
                )
            return None
        classes = self.context_classes
        if context is None:
            if classes is None:
                raise ValueError(f"{name} is conditional: pass context")
            raise ValueError(
                f"{name} is class-conditional ({classes} classes): pass context, a tensor of "
                f"labels in 0..{classes - 1}"
            )
        if classes is None:
            return context
        context = torch.as_tensor(context)
        if context.dim() == 0 and n is not None:
            context = context.expand(n)
        if n is not None and context.shape != (n,):
            raise ValueError(
                f"context has shape {tuple(context.shape)}; pass one label per example, ({n},)"
            )
        if context.is_complex() or context.dtype == torch.bool:
            raise ValueError(f"context holds {context.dtype} values; pass integer class labels")
        if context.is_floating_point() and not bool(
            (torch.isfinite(context) & (context == context.round())).all()
        ):
            raise ValueError("context holds non-integer labels; pass class indices")
        if context.numel() and (int(context.min()) < 0 or int(context.max()) >= classes):
            raise ValueError(
                f"context labels lie in [{int(context.min())}, {int(context.max())}]; labels must "
                f"lie in 0..{classes - 1} ({name} was built for {classes} classes)"
            )
        ref = next(itertools.chain(self.parameters(), self.buffers()), None)
        return context.long().to(ref.device) if ref is not None else context.long()

    def check_inputs(self, x: Tensor, context: Any = None) -> Tensor | None:
        """Everything a scoring call checks before any work, in one place: finite weights
        (:func:`check_finite_parameters`), the batch against the config (shape, finiteness,
        support) and, for a conditional model, the context (:meth:`check_context`). Returns the
        context to use (validated labels as a long tensor; unchanged for an unconditional
        model). Raises ``ValueError``."""
        check_finite_parameters(self)
        self._check_x(x)
        if not self.conditional:
            return context
        return self.check_context(context, x.shape[0])

    def ode_log_prob(
        self, x: Tensor, context: Tensor | None = None, **options: Any
    ) -> tuple[Tensor, str, tuple[str, ...]]:
        """The log-likelihood of ``x`` under the family's probability-flow ODE, for families
        declaring :attr:`probability_flow`: ``(per-example nats (N,), kind, notes)``, kind
        ``"exact"`` (exact trace, continuous data: exact up to the solver's tolerances),
        ``"estimate"`` (Hutchinson's trace) or ``"lower_bound"`` (discrete data, dequantized),
        notes naming the solver, its tolerances and its function evaluations."""
        raise ValueError(
            f"{type(self).__name__} defines no probability-flow ODE; use estimator='auto'"
        )
    def choose_estimator(self, num_examples: int) -> tuple[str | None, dict[str, Any], str | None]:
        """What ``ppgen.evaluate(estimator="auto")`` uses for ``num_examples`` examples of this
        model's data: ``(estimator, options, note)``. The estimator None is
        :attr:`default_estimator` or the choice by capability; the options are merged over
        :meth:`estimator_defaults` (the caller's own win); the note, when not None, says in the
        Evaluation what was chosen and why. A family whose exact estimator costs too much at
        image scale (diffusion's T-step bound) picks a cheaper one here. Default: no choice by
        size."""
        return None, {}, None

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
        return check_batch(x, self.config.event_shape, self.config.kind, self.config.levels)


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
