"""A user's own Pyro program, wrapped into the protocol with :func:`from_pyro`.

The built-in families are examples of what a user can write, not the only things ppgen can
train and score. ``from_pyro(model_fn, guide_fn, ...)`` turns any pair of Pyro programs (plain
functions or bound methods of a ``PyroModule``) into a protocol object, so ``ppgen.fit``,
``ppgen.evaluate``, ``ppgen.posterior``, the metrics and checkpoints work unchanged.

Conventions the wrapped programs follow:
    ``model_fn(x=None)`` draws or observes the data at site ``"x"`` inside
    ``pyro.plate("data", N)``; latent sites are any other sample sites. ``guide_fn(x=None)`` (if
    any) samples the same latent sites.

Parameters: those of the ``PyroModule`` the functions are bound to, plus every
``pyro.param`` statement inside them. The latter are captured into this module (never Pyro's
global param store) the first time the programs run on ``example`` data, so they are ordinary
``nn.Parameter`` s that optimizers, ``state_dict`` and checkpoints see. Constrained params are
stored unconstrained and transformed on use, as Pyro does.
"""

from __future__ import annotations

__all__ = [
    "BoundPyroProgram",
    "ExactPyroProgram",
    "ImplicitPyroProgram",
    "PyroProgramConfig",
    "from_pyro",
]

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import pyro
import torch
from pyro import poutine
from pyro.infer import Predictive
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn
from torch.distributions import biject_to, constraints

from ppgen.models.base import AbstractGenerativeModel, ModelConfig, _per_example_log_weight


@dataclasses.dataclass(frozen=True, kw_only=True)
class PyroProgramConfig(ModelConfig):
    """Configuration of a wrapped program: the data facts and a display name."""

    name: str = "pyro_program"


class _CaptureParams(Messenger):
    """Serves ``pyro.param`` statements from the owner's ``nn.ParameterDict``, creating each
    (unconstrained) on first use."""

    def __init__(self, owner: _PyroProgram) -> None:
        super().__init__()
        self.owner = owner

    def _pyro_param(self, msg: dict[str, Any]) -> None:
        name = msg["name"]
        constraint = msg["kwargs"].get("constraint", constraints.real)
        key = name.replace(".", "__")
        params = self.owner.user_params
        if key not in params:
            args = msg["args"]
            if len(args) < 2:
                raise ValueError(f"pyro.param({name!r}) has no initial value")
            init = args[1]() if callable(args[1]) else args[1]
            with torch.no_grad():
                unconstrained = biject_to(constraint).inv(torch.as_tensor(init))
            params[key] = nn.Parameter(unconstrained.detach().clone())
            self.owner._constraints[key] = constraint
        msg["value"] = biject_to(constraint)(params[key])
        msg["done"] = True


class _PyroProgram(AbstractGenerativeModel):
    """The shared body of the three wrappers (one per declared likelihood capability)."""

    Config: ClassVar = PyroProgramConfig
    _model_fn: Callable[..., Any]
    _guide_fn: Callable[..., Any] | None

    def __init__(
        self,
        config: PyroProgramConfig | None = None,
        model_fn: Callable[..., Any] | None = None,
        guide_fn: Callable[..., Any] | None = None,
        example: Tensor | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(config, **fields)
        if model_fn is None:
            raise ValueError(
                "a wrapped Pyro program cannot be rebuilt from its config alone; rebuild it "
                "with ppgen.from_pyro(...) and load weights with ppgen.checkpoint.load_into"
            )
        self._model_fn = model_fn
        self._guide_fn = guide_fn
        owners = {getattr(fn, "__self__", None) for fn in (model_fn, guide_fn)}
        self.user_modules = nn.ModuleList(m for m in owners if isinstance(m, nn.Module))
        self.user_params = nn.ParameterDict()
        self._constraints: dict[str, constraints.Constraint] = {}
        if example is not None:
            with torch.no_grad():
                self._run(self._model_fn, example)
                if self._guide_fn is not None:
                    self._run(self._guide_fn, example)

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        with pyro.settings.context(module_local_params=True), _CaptureParams(self):
            return fn(*args)

    def model(self, x: Tensor | None = None, context: Tensor | None = None) -> Any:
        return self._run(self._model_fn, x)

    def guide(self, x: Tensor | None = None, context: Tensor | None = None) -> Any:
        if self._guide_fn is None:
            return None
        return self._run(self._guide_fn, x)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            draws = Predictive(self.model, num_samples=n, return_sites=["x"])()["x"]
        return draws.reshape(n, -1, *self.event_shape)[:, 0]

    def extra_repr(self) -> str:
        return f"name={self.config.name!r}, " + super().extra_repr()


class ExactPyroProgram(_PyroProgram):
    """A wrapped program with no latent sites: its trace's log-density is exact."""

    likelihood: ClassVar = "exact"
    default_objective: ClassVar = "mle"

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        self._check_x(x)
        trace = poutine.trace(self.model).get_trace(x)
        return _per_example_log_weight(trace, poutine.Trace(), x.shape[0])


class BoundPyroProgram(_PyroProgram):
    """A wrapped program with latents and a guide: scored by ELBO/IWAE/AIS, trained by SVI."""

    likelihood: ClassVar = "bound"
    default_objective: ClassVar = "elbo"


class ImplicitPyroProgram(_PyroProgram):
    """A wrapped program with an implicit density (e.g. a deterministic generator)."""

    likelihood: ClassVar = "none"
    default_objective: ClassVar = "adversarial"


_BY_KIND: dict[str, type[_PyroProgram]] = {
    "exact": ExactPyroProgram,
    "bound": BoundPyroProgram,
    "none": ImplicitPyroProgram,
}


def from_pyro(
    model_fn: Callable[..., Any],
    guide_fn: Callable[..., Any] | None = None,
    *,
    event_shape: tuple[int, ...],
    likelihood: Literal["exact", "bound", "none"] = "bound",
    kind: Literal["binary", "discrete", "continuous"] = "continuous",
    levels: int | None = None,
    example: Tensor | None = None,
    name: str = "pyro_program",
) -> _PyroProgram:
    """Wrap a user's Pyro ``model_fn``/``guide_fn`` into the ppgen protocol.

    Arguments:
        model_fn: ``model_fn(x=None)``, observing ``x`` at site ``"x"`` under
            ``pyro.plate("data", N)``.
        guide_fn: the variational family over the latent sites (needed for ``"bound"``).
        event_shape: the shape of one data point.
        likelihood: ``"exact"`` (no latents), ``"bound"`` (latents + guide) or ``"none"``.
        kind: the data kind, as for datasets.
        levels: the number of levels of discrete data.
        example: a batch to run the programs on once, creating their ``pyro.param`` s as
            module parameters before training (pass it whenever the programs use ``pyro.param``).
        name: a display name.

    Example:
        >>> import pyro, pyro.distributions as dist, torch, ppgen
        >>> def model(x=None):
        ...     loc = pyro.param("loc", torch.zeros(2))
        ...     with pyro.plate("data", 1 if x is None else len(x)):
        ...         return pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)
        >>> m = ppgen.from_pyro(model, event_shape=(2,), likelihood="exact",
        ...                     example=torch.zeros(3, 2))
        >>> dict(m.named_parameters())["user_params.loc"].shape
        torch.Size([2])
    """
    if likelihood not in _BY_KIND:
        raise ValueError(f"likelihood must be exact, bound or none, got {likelihood!r}")
    if likelihood == "bound" and guide_fn is None:
        raise ValueError("likelihood='bound' needs a guide_fn (the variational family)")
    if example is not None and math.prod(example.shape[1:]) != math.prod(event_shape):
        raise ValueError(f"example has shape {tuple(example.shape)}, event_shape is {event_shape}")
    cls = _BY_KIND[likelihood]
    config = PyroProgramConfig(event_shape=tuple(event_shape), kind=kind, levels=levels, name=name)
    return cls(config, model_fn=model_fn, guide_fn=guide_fn, example=example)
