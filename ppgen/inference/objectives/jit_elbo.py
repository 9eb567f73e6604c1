"""Pyro's JIT-compiled trace ELBOs as estimators of the ``"elbo"`` objective, with
module-local parameters: ``JitTrace_ELBO`` and ``JitTraceMeanField_ELBO``.

Pyro's JIT feeds parameters to the compiled trace by name from the global param store, each as
an unconstrained leaf tensor that the store maps to its constrained value. ppgen keeps
parameters in modules, so each call lends the model's parameters (the same leaf tensors, with
the maps that give the values the programs use: a ``PyroParam``'s constraint, a captured
``pyro.param``'s) to a temporary param-store scope, restored on exit
(:func:`~ppgen.inference.objectives.pyro_compat.lend_parameters`): nothing leaks into the
user's global store, and gradients land on the module's parameters. A parameter the JIT cannot
be fed (a tensor computed from others, with no unconstrained leaf) raises
:class:`JitUnsupportedError` at the first call, naming it; so does a program the JIT cannot
compile when the plain ELBO runs it. With ``jit_fallback=True`` the objective warns once and
uses the plain ELBO instead.
"""

from __future__ import annotations

__all__ = ["JitTraceELBO", "JitTraceMeanFieldELBO", "JitUnsupportedError"]

import warnings
from typing import Any, ClassVar

from torch import Tensor

from ppgen.inference.objectives.elbo import (
    ELBOSettings,
    ELBOVariant,
    make_pyro_elbo,
    register_elbo,
    scale_latents,
)
from ppgen.inference.objectives.pyro_compat import (
    JitUnsupportedError,
    jit_mean_field_loss,
    jit_parameters,
    jit_trace_loss,
    lend_parameters,
)
from ppgen.inference.objectives.trace_elbo import TraceELBO, TraceMeanFieldELBO
from ppgen.models.base import AbstractGenerativeModel


@register_elbo
class JitTraceELBO(ELBOVariant):
    """Pyro's ``JitTrace_ELBO`` on module-local parameters (see the module's docstring); the
    plain ``Trace_ELBO`` after a fallback."""

    name = "JitTrace_ELBO"
    plain: ClassVar[type[TraceELBO]] = TraceELBO  # the same estimator without the JIT

    def __init__(self, settings: ELBOSettings) -> None:
        super().__init__(settings)
        self.pyro_elbo = make_pyro_elbo(self.name, settings.num_particles)
        self._compiled: Any = None  # (model_fn, guide_fn, parameters) once set up
        self._fallback: ELBOVariant | None = None

    def _jit_loss(self, model_fn: Any, guide_fn: Any, *args: Tensor) -> Tensor:
        return jit_trace_loss(self.pyro_elbo, model_fn, guide_fn, *args)

    def loss(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None, beta: float
    ) -> Tensor:
        if self._fallback is not None:
            return self._fallback.loss(model, x, context, beta)
        args = (x,) if context is None else (x, context)
        if self._compiled is None:
            try:
                beta = self.settings.beta  # compiled once, with the fixed beta (no warm-up)
                model_fn = scale_latents(model.model, beta)
                guide_fn = scale_latents(model.guide, beta)
                self._compiled = (model_fn, guide_fn, jit_parameters(model_fn, guide_fn, args))
                return self._call(x, args)
            except Exception as e:
                return self._failed(model, x, context, e)
        return self._call(x, args)

    def _call(self, x: Tensor, args: tuple[Tensor, ...]) -> Tensor:
        model_fn, guide_fn, named = self._compiled
        with lend_parameters(named):
            loss = self._jit_loss(model_fn, guide_fn, *args)
        return loss / x.shape[0]

    def _failed(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None,
        error: Exception,
    ) -> Tensor:
        """The first jitted call failed: an error of the program itself (the plain ELBO fails
        too) propagates as it is; a JIT-only failure is a :class:`JitUnsupportedError`, or,
        with ``jit_fallback=True``, a warning and the plain ELBO from then on."""
        self._compiled = None
        fallback = self.plain(self.settings)
        loss = fallback.loss(model, x, context, self.settings.beta)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if not isinstance(error, JitUnsupportedError):
            reason = f"{type(error).__name__} while compiling: {reason}"
        if not self.settings.jit_fallback:
            raise JitUnsupportedError(
                f"elbo={self.name!r} cannot run {type(model).__name__}: {reason}; use "
                f"elbo={self.plain.name!r} (the same estimator without the JIT), or pass "
                "jit_fallback=True (CLI: --objective.jit_fallback=true) to fall back to it "
                "with a warning"
            ) from error
        warnings.warn(
            f"elbo={self.name!r} cannot run {type(model).__name__} ({reason}); falling back "
            f"to {self.plain.name!r} as jit_fallback=True asks", RuntimeWarning, stacklevel=3,
        )
        self._fallback = fallback
        self.name = fallback.name  # type: ignore[misc] - the objective reports the one in use
        return loss


@register_elbo
class JitTraceMeanFieldELBO(JitTraceELBO):
    """Pyro's ``JitTraceMeanField_ELBO`` on module-local parameters; the plain
    ``TraceMeanField_ELBO`` after a fallback."""

    name = "JitTraceMeanField_ELBO"
    plain = TraceMeanFieldELBO

    def _jit_loss(self, model_fn: Any, guide_fn: Any, *args: Tensor) -> Tensor:
        return jit_mean_field_loss(self.pyro_elbo, model_fn, guide_fn, *args)
