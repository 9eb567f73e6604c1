"""Every use of Pyro's private internals by the objectives, in one place, written for Pyro 1.9.

ppgen keeps parameters in modules, never in Pyro's global param store, and trains with plain
torch optimizers through ``differentiable_loss``. Three Pyro ELBOs need more than the public
API for that, and the workarounds live here so a Pyro upgrade is checked against one file:

- the JIT ELBOs feed parameters to the compiled trace by name from the global param store:
  :func:`lend_parameters` lends the model's parameters to a temporary store scope (it writes the
  store's private ``_params``, ``_param_to_name`` and ``_constraints``);
- Pyro 1.9's ``JitTrace_ELBO.differentiable_loss`` doubles the gradient, and its
  ``JitTraceMeanField_ELBO`` recompiles at every call: :func:`jit_trace_loss` and
  :func:`jit_mean_field_loss` work around each;
- ``TraceGraph_ELBO`` has no ``differentiable_loss``: :func:`tracegraph_loss` uses its private
  ``_loss_and_surrogate_loss``.

The tests in ``tests/inference/test_objectives.py`` (every ELBO's gradient against pPCA's
closed form, nothing left in the global store) are the check after an upgrade.
"""

from __future__ import annotations

__all__ = [
    "PYRO_VERSION",
    "JitUnsupportedError",
    "jit_mean_field_loss",
    "jit_parameters",
    "jit_trace_loss",
    "lend_parameters",
    "tracegraph_loss",
]

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pyro
import torch
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn
from torch.distributions import biject_to, constraints, transform_to

PYRO_VERSION = "1.9"  # the Pyro release whose internals this module is written against


class JitUnsupportedError(ValueError):
    """A JIT ELBO cannot run this model (a parameter it cannot be fed, or a program
    ``torch.jit.trace`` cannot compile); the plain ELBO of the same name without ``Jit`` can."""


class _Mapped(constraints.Constraint):
    """A constraint that only carries the map from a parameter's unconstrained leaf to the value
    its program uses, so the param store reproduces that value exactly (``transform_to`` of it
    is the map; registered below for this private class only)."""

    def __init__(self, transform: Any) -> None:
        super().__init__()
        self.transform = transform

    def check(self, value: Tensor) -> Tensor:
        return torch.ones(value.shape, dtype=torch.bool, device=value.device)


@transform_to.register(_Mapped)
def _mapped_transform(constraint: _Mapped) -> Any:
    return constraint.transform


class _ParamSites(Messenger):
    """Records, for each parameter statement, its value and the constraint the param store
    held for it when it ran (a PyroModule's PyroParam) or the statement's own."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: dict[str, tuple[Tensor, Any]] = {}

    def _pyro_post_param(self, msg: dict[str, Any]) -> None:
        name = msg["name"]
        store = pyro.get_param_store()
        if name in store._params:
            constraint = store._constraints.get(name, constraints.real)
        else:
            constraint = msg["kwargs"].get("constraint", constraints.real)
        self.sites.setdefault(name, (msg["value"], constraint))


def jit_parameters(
    model_fn: Callable[..., Any], guide_fn: Callable[..., Any], args: tuple[Tensor, ...]
) -> dict[str, tuple[Tensor, Any]]:
    """Per parameter name of the programs, the unconstrained leaf tensor to feed a JIT ELBO
    with and the map to the value the program uses. Raises :class:`JitUnsupportedError` for a
    parameter with no such leaf."""
    from pyro import poutine

    recorder = _ParamSites()
    with torch.no_grad(), poutine.block(), recorder:
        guide_fn(*args)
        model_fn(*args)
    named = {}
    for name, (value, constraint) in recorder.sites.items():
        ref = getattr(value, "unconstrained", None)
        leaf = ref() if callable(ref) else None
        if leaf is None and isinstance(value, nn.Parameter):
            leaf = value  # an unconstrained parameter served as it is
        if leaf is None:
            raise JitUnsupportedError(
                f"parameter {name!r} is a tensor computed from others, with no unconstrained "
                "leaf the JIT can be fed"
            )
        # the map the program applied: the constraint's transform (Pyro's param store uses
        # transform_to, a wrapped program may use biject_to); whichever reproduces the value
        for transform in (transform_to(constraint), biject_to(constraint)):
            if transform(leaf).shape == value.shape and torch.equal(transform(leaf), value):
                break
        else:
            raise JitUnsupportedError(
                f"parameter {name!r}: no map of its constraint {constraint} gives the value "
                "the program used from its unconstrained leaf"
            )
        named[name] = (leaf, transform)
    return named


@contextlib.contextmanager
def lend_parameters(named: dict[str, tuple[Tensor, Any]]) -> Iterator[None]:
    """Lend ``named`` parameters (from :func:`jit_parameters`) to a temporary scope of Pyro's
    global param store, restored on exit: nothing leaks into the user's store, and gradients
    land on the module's own leaf tensors. Also silences torch's deprecation of the
    ``torch.jit.trace`` that Pyro's JIT ELBOs are built on."""
    store = pyro.get_param_store()
    with store.scope():
        for name, (leaf, transform) in named.items():
            store._params[name] = leaf
            store._param_to_name[leaf] = name
            store._constraints[name] = _Mapped(transform)
        with warnings.catch_warnings():
            # torch 2.x deprecates the torch.jit.trace that Pyro's JIT ELBOs are built on
            warnings.filterwarnings("ignore", "`torch.jit.trace` is deprecated",
                                    DeprecationWarning)
            yield


def jit_trace_loss(jit: Any, model_fn: Any, guide_fn: Any, *args: Tensor) -> Tensor:
    """``JitTrace_ELBO``'s differentiable loss. Pyro 1.9's ``differentiable_loss`` adds the
    surrogate's gradient to a loss that is itself still attached (twice the gradient); keep
    only the surrogate's gradient, as ``Trace_ELBO`` does."""
    value, surrogate = jit.loss_and_surrogate_loss(model_fn, guide_fn, *args)
    return surrogate + (value - surrogate).detach()


def jit_mean_field_loss(jit: Any, model_fn: Any, guide_fn: Any, *args: Tensor) -> Tensor:
    """``JitTraceMeanField_ELBO``'s differentiable loss. Pyro 1.9's tests a different attribute
    than the one it caches its compiled loss in, and so recompiles at every call; point the
    tested one at the cache."""
    if getattr(jit, "_differentiable_loss", None) is not None:
        jit._loss_and_surrogate_loss = jit._differentiable_loss
    return jit.differentiable_loss(model_fn, guide_fn, *args)


def tracegraph_loss(elbo: Any, model_fn: Any, guide_fn: Any, *args: Tensor) -> Tensor:
    """``TraceGraph_ELBO``'s loss with the gradient of its surrogate: it has no
    ``differentiable_loss``, and its ELBO value is still attached to the graph, so only the
    value is kept of it."""
    value, surrogate = elbo._loss_and_surrogate_loss(model_fn, guide_fn, args, {})
    return surrogate + (-value - surrogate).detach()
