"""A user's own Pyro program, wrapped into the protocol with :func:`from_pyro`.

The built-in families are examples of what a user can write, not the only things ppgen can
train and score. ``from_pyro(model_fn, guide_fn, ...)`` turns any pair of Pyro programs (plain
functions or bound methods of a ``PyroModule``) into a protocol object, so ``ppgen.fit``,
``ppgen.evaluate``, ``ppgen.posterior``, the metrics and checkpoints work unchanged.

Conventions the wrapped programs follow:
    ``model_fn(x=None)`` draws or observes the data at site ``"x"`` inside
    ``pyro.plate("data", N)``; latent sites are any other sample sites. ``guide_fn(x=None)`` (if
    any) samples the same latent sites.

Parameters, all ordinary ``nn.Parameter`` s of the wrapper that optimizers, ``state_dict`` and
checkpoints see:

- those of every ``nn.Module`` the programs reach by name: the owner of a bound method, and
  modules among a plain function's closure variables and the global names its code uses;
- every ``pyro.param`` statement inside the programs, captured into the wrapper (never Pyro's
  global param store) when the programs first run on ``example`` data; constrained params are
  stored unconstrained and transformed on use, as Pyro does;
- a module's own parameters met in a ``pyro.module(name, net)`` statement (or a ``PyroModule``'s
  parameter statements) are served *as they are* and trained in place, never copied.

A parameter statement that first runs after the wrapper was built (no ``example`` given) would
never reach the optimizer, so it raises :class:`LateParameterError` naming the fix.

A module that defines ``__eq__`` without ``__hash__`` (a dataclass-style module) cannot be a
torch submodule (torch keeps modules in sets); its parameters and buffers are held by reference
instead, and ``.to()``/``train()`` are forwarded to it.
"""

from __future__ import annotations

__all__ = [
    "BoundPyroProgram",
    "ExactPyroProgram",
    "ImplicitPyroProgram",
    "LateParameterError",
    "PyroProgramConfig",
    "from_pyro",
]

import dataclasses
import inspect
import math
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import pyro
import torch
from pyro import poutine
from pyro.infer import Predictive
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn
from torch.distributions import biject_to, constraints

from ppgen.models.base import AbstractGenerativeModel, ModelConfig
from ppgen.models.capabilities import ImplicitModel
from ppgen.models.traces import log_weight_per_example


@dataclasses.dataclass(frozen=True, kw_only=True)
class PyroProgramConfig(ModelConfig):
    """Configuration of a wrapped program: the data facts and a display name."""

    name: str = "pyro_program"


class LateParameterError(ValueError):
    """A parameter statement ran for the first time after the wrapper was built, so no
    optimizer would ever see that parameter."""


class _CaptureParams(Messenger):
    """Serves ``pyro.param`` statements from the owner: a module's own ``nn.Parameter`` as it is
    (adopted if the owner does not hold it yet), anything else from the owner's
    ``nn.ParameterDict``, created (unconstrained) on first use."""

    def __init__(self, owner: _PyroProgram) -> None:
        super().__init__()
        self.owner = owner

    def _pyro_param(self, msg: dict[str, Any]) -> None:
        name = msg["name"]
        args = msg["args"]
        init = args[1] if len(args) > 1 else None
        constraint = msg["kwargs"].get("constraint", constraints.real)
        if isinstance(init, nn.Parameter) and isinstance(constraint, type(constraints.real)):
            # a module's parameter (pyro.module, a PyroModule's statement): trained in place
            self.owner._adopt(name, init)
            msg["value"] = init
            msg["done"] = True
            return
        key = name.replace(".", "__")
        params = self.owner.user_params
        if key not in params:
            if init is None:
                return  # e.g. a PyroModule's PyroParam: Pyro serves it from its module
            self.owner._check_open(name)
            init = init() if callable(init) else init
            with torch.no_grad():
                unconstrained = biject_to(constraint).inv(torch.as_tensor(init))
            params[key] = nn.Parameter(unconstrained.detach().clone())
            self.owner._constraints[key] = constraint
            self.owner._known = None
        value = biject_to(constraint)(params[key])
        if value is not params[key]:  # Pyro's mark of a constrained param (its JIT reads it)
            value.unconstrained = weakref.ref(params[key])
        msg["value"] = value
        msg["done"] = True


class _ByReference(nn.Module):
    """The parameters and buffers of a module torch cannot register as a submodule (one that
    defines ``__eq__`` without ``__hash__``), held by reference under flattened names.
    ``.to()``/``.double()`` and ``train()``/``eval()`` act on the module itself."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.__dict__["target"] = module
        self._collect()

    def _collect(self) -> None:
        self._parameters.clear()
        self._buffers.clear()
        stack: list[tuple[str, nn.Module]] = [("", self.__dict__["target"])]
        while stack:  # walked by hand: torch's walkers put every module in a set
            prefix, module = stack.pop()
            for name, p in module._parameters.items():
                if p is not None:
                    self._parameters.setdefault(prefix + name, p)
            for name, b in module._buffers.items():
                if b is not None and name not in module._non_persistent_buffers_set:
                    self._buffers.setdefault(prefix + name, b)
            stack += [(f"{prefix}{n}__", m) for n, m in module._modules.items() if m is not None]

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> _ByReference:
        self.__dict__["target"]._apply(fn)
        self._collect()
        return self

    def train(self, mode: bool = True) -> _ByReference:
        self.__dict__["target"].train(mode)
        return super().train(mode)


def _modules_reached(fn: Callable[..., Any] | None) -> list[nn.Module]:
    """The modules a program reaches by name: the owner of a bound method, and the modules among
    a function's closure variables and the global names its code uses."""
    if fn is None:
        return []
    found = []
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, nn.Module):
        found.append(owner)
    func = inspect.unwrap(getattr(fn, "__func__", fn))
    if inspect.isfunction(func):
        names = inspect.getclosurevars(func)
        for value in (*names.nonlocals.values(), *names.globals.values()):
            if isinstance(value, nn.Module):
                found.append(value)
    return found


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
        # by identity: a module may define __eq__ without __hash__ (then it is held by reference)
        reached = {id(m): m for m in _modules_reached(model_fn) + _modules_reached(guide_fn)}
        self.user_modules = nn.ModuleList(
            m if type(m).__hash__ is not None else _ByReference(m) for m in reached.values()
        )
        self.user_params = nn.ParameterDict()
        self._constraints: dict[str, constraints.Constraint] = {}
        self._known: set[int] | None = None  # ids of the parameters held, rebuilt on demand
        self._open = True  # parameter statements may create or adopt parameters
        if example is not None:
            with torch.no_grad():
                self._run(self._model_fn, example)
                if self._guide_fn is not None:
                    self._run(self._guide_fn, example)
        self._open = False

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        # module_local_params off: a user's PyroModule built under Pyro's default setting cannot
        # run with it on. A PyroModule's PyroParam then writes itself into the global store:
        # such new names are removed again. (Not store.scope(): its get_state strips the
        # ``unconstrained`` attribute from live params that Pyro's JIT replays.)
        store = pyro.get_param_store()
        before = set(store.keys())
        try:
            with pyro.settings.context(module_local_params=False), _CaptureParams(self):
                return fn(*args)
        finally:
            for name in set(store.keys()) - before:
                del store[name]

    def _check_open(self, name: str) -> None:
        if not self._open:
            raise LateParameterError(
                f"the parameter statement {name!r} first ran after the model was built, so "
                "training would never update it; pass example=a data batch to ppgen.from_pyro "
                "(the programs then run once at construction and every parameter is registered)"
            )

    def _adopt(self, name: str, p: nn.Parameter) -> None:
        """Hold a module's parameter met in a parameter statement (if not held already)."""
        if self._known is None or id(p) not in self._known:
            self._known = {id(q) for q in self.parameters()}
        if id(p) in self._known:
            return
        self._check_open(name)
        self.user_params[name.replace(".", "__")] = p
        self._known.add(id(p))

    def model(self, x: Tensor | None = None, context: Tensor | None = None) -> Any:
        return self._run(self._model_fn, x)

    def guide(self, x: Tensor | None = None, context: Tensor | None = None) -> Any:
        if self._guide_fn is None:
            return None
        return self._run(self._guide_fn, x)

    @torch.no_grad()
    def _sample(
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
        return log_weight_per_example(trace, poutine.Trace(), x.shape[0])


class BoundPyroProgram(_PyroProgram):
    """A wrapped program with latents and a guide: scored by ELBO/IWAE/AIS, trained by SVI."""

    likelihood: ClassVar = "bound"
    default_objective: ClassVar = "elbo"


class ImplicitPyroProgram(_PyroProgram, ImplicitModel):
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
            module parameters before training (pass it whenever the programs use
            ``pyro.param`` or ``pyro.module``; without it such a statement raises
            :class:`LateParameterError`).
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
