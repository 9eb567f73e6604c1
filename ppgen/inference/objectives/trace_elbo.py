"""Pyro's trace ELBOs as estimators of the ``"elbo"`` objective: ``Trace_ELBO``,
``TraceMeanField_ELBO`` and ``TraceGraph_ELBO``, each through a loss plain torch optimizers
can step; beta and warm-up scale the latent sites."""

from __future__ import annotations

__all__ = ["TraceELBO", "TraceGraphELBO", "TraceMeanFieldELBO"]

from torch import Tensor

from ppgen.inference.objectives.elbo import (
    ELBOSettings,
    ELBOVariant,
    make_pyro_elbo,
    register_elbo,
    scale_latents,
)
from ppgen.inference.objectives.pyro_compat import tracegraph_loss
from ppgen.models.base import AbstractGenerativeModel


@register_elbo
class TraceELBO(ELBOVariant):
    """Pyro's ``Trace_ELBO`` (vectorized particles), through its ``differentiable_loss``."""

    name = "Trace_ELBO"

    def __init__(self, settings: ELBOSettings) -> None:
        super().__init__(settings)
        self.pyro_elbo = make_pyro_elbo(self.name, settings.num_particles)

    def loss(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None, beta: float
    ) -> Tensor:
        model_fn, guide_fn = scale_latents(model.model, beta), scale_latents(model.guide, beta)
        return self.pyro_elbo.differentiable_loss(model_fn, guide_fn, x, context) / x.shape[0]


@register_elbo
class TraceMeanFieldELBO(TraceELBO):
    """Pyro's ``TraceMeanField_ELBO``: the analytic KL where Pyro knows it."""

    name = "TraceMeanField_ELBO"


@register_elbo
class TraceGraphELBO(TraceELBO):
    """Pyro's ``TraceGraph_ELBO``: Rao-Blackwellized score-function terms for discrete latents
    (its surrogate loss carries the gradient)."""

    name = "TraceGraph_ELBO"

    def loss(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None, beta: float
    ) -> Tensor:
        model_fn, guide_fn = scale_latents(model.model, beta), scale_latents(model.guide, beta)
        return tracegraph_loss(self.pyro_elbo, model_fn, guide_fn, x, context) / x.shape[0]
