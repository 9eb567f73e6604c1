"""Reading an implicit model through its Pyro program: what it observes, what it generates.

An implicit model (``likelihood = "none"``) puts its data at site ``"x"`` as a ``Delta`` whose
location is a deterministic function of the latent sites (a GAN's ``G(z)``). One trace of
``model(x)`` with the latents drawn from the prior gives both halves adversarial training and
sample-based estimators need, in the same space: the value *observed* at ``"x"`` (the data as the
program sees it, e.g. dequantized by the program itself) and the Delta's location (a fresh
model sample, differentiable in the generator's parameters). Nothing here names a family.
"""

from __future__ import annotations

__all__ = ["ImplicitSiteError", "delta_location", "observed_and_generated"]

import pyro.distributions as dist
from pyro import poutine
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from torch import Tensor

from ppgen.models.base import AbstractGenerativeModel


class ImplicitSiteError(ValueError):
    """The model's ``"x"`` site is not a deterministic (Delta) function of its latents."""


def delta_location(fn: dist.Distribution) -> Tensor:
    """The location of a (possibly reshaped, masked or expanded) ``Delta`` distribution,
    broadcast to the distribution's full shape ``batch_shape + event_shape``.

    Raises:
        ImplicitSiteError: ``fn`` is not built on a ``Delta``.
    """
    shape = fn.batch_shape + fn.event_shape
    base = fn
    while not isinstance(base, dist.Delta):
        if isinstance(base, dist.Independent | MaskedDistribution | ExpandedDistribution):
            base = base.base_dist
        else:
            raise ImplicitSiteError(
                f"the 'x' site has a {type(fn).__name__} distribution, not a Delta: adversarial "
                "training and sample-based estimators need an implicit model whose 'x' is a "
                "deterministic function of its latents (pyro.sample('x', dist.Delta(g(z)), obs=x))"
            )
    return base.v.expand(shape)


def observed_and_generated(
    model: AbstractGenerativeModel, x: Tensor, context: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One trace of ``model.model(x, context)`` with the latents drawn from the prior.

    Returns:
        ``(observed, generated)``: the value observed at site ``"x"`` and the location of its
        Delta (a model sample per example), both of shape ``(N, *event_shape)`` in the space of
        the ``"x"`` site. ``generated`` carries gradients to the generator's parameters.

    Raises:
        ImplicitSiteError: the ``"x"`` site is missing, unobserved or not a Delta.
    """
    trace = poutine.trace(model.model).get_trace(x, context)
    site = trace.nodes.get("x")
    if site is None or site["type"] != "sample" or not site["is_observed"]:
        raise ImplicitSiteError(
            f"{type(model).__name__}.model(x) has no observed sample site 'x'; observe the data "
            "there inside pyro.plate('data', N)"
        )
    observed = site["value"]
    generated = delta_location(site["fn"])
    if generated.shape != observed.shape:
        generated = generated.expand(observed.shape)
    return observed, generated
