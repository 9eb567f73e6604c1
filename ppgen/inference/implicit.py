"""Reading an implicit model through its Pyro program: what it observes, what it generates.

An implicit model (``likelihood = "none"``) puts its data at site ``"x"`` as a ``Delta`` whose
location is a deterministic function of the latent sites (a GAN's ``G(z)``). One trace of
``model(x)`` with the latents drawn from the prior gives both halves adversarial training and
sample-based estimators need, in the same space: the value *observed* at ``"x"`` (the data as the
program sees it, e.g. dequantized by the program itself) and the Delta's location (a fresh
model sample, differentiable in the generator's parameters). Nothing here names a family.
"""

from __future__ import annotations

__all__ = [
    "ImplicitSiteError",
    "delta_location",
    "observed_and_generated",
    "resolve_observation_scale",
    "smooth_delta",
]

from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from pyro.poutine.messenger import Messenger
from torch import Tensor

from ppgen.models.base import AbstractGenerativeModel
from ppgen.models.capabilities import ImplicitModel


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


# ---- the smoothed observation of an implicit model (AIS, posterior sampling) -------------------

class _SmoothDelta(Messenger):
    r"""Replaces a deterministic (``Delta``) observation at site ``"x"`` by a Gaussian one,
    :math:`p(x \mid z) = \mathcal N(x; g(z), s^2 I)` (Wu et al. 2017, arXiv:1611.04273), so an
    implicit model's likelihood can be estimated (AIS) and its latents inferred (NUTS).

    Sites whose ``fn`` is not a Delta (once ``Independent``/``Masked`` wrappers are removed) pass
    through unchanged, so wrapping an explicit model is a no-op.
    """

    def __init__(self, scale: float | None) -> None:
        super().__init__()
        self.scale = scale

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if msg["name"] != "x" or not msg["is_observed"]:
            return
        fn, event_dim = msg["fn"], 0
        while True:
            if isinstance(fn, dist.Independent | torch.distributions.Independent):
                event_dim += fn.reinterpreted_batch_ndims
                fn = fn.base_dist
            elif isinstance(fn, dist.MaskedDistribution):
                fn = fn.base_dist
            else:
                break
        if isinstance(fn, dist.ExpandedDistribution) and isinstance(fn.base_dist, dist.Delta):
            base = fn.base_dist
            v = base.v.expand(fn.batch_shape + base.event_shape)
            event_dim += base.event_dim
        elif isinstance(fn, dist.Delta):
            v, event_dim = fn.v, event_dim + fn.event_dim
        else:
            return
        if self.scale is None:
            raise ValueError(
                "the model's observed site 'x' is deterministic (a Delta: an implicit model); "
                "its likelihood needs a Gaussian observation scale s: pass "
                "observation_scale=s (e.g. from ppgen.inference.likelihood."
                "select_observation_scale(model, val_data)) or set the model's "
                "observation_scale (an ImplicitModel, ppgen.models.capabilities)"
            )
        msg["fn"] = dist.Normal(v, torch.as_tensor(self.scale, dtype=v.dtype, device=v.device)
                                ).to_event(event_dim)


def smooth_delta(fn: Callable[..., Any], scale: float | None) -> Callable[..., Any]:
    """``fn`` (a Pyro program) with a deterministic observation at ``"x"`` made Gaussian with
    standard deviation ``scale`` (see :class:`_SmoothDelta`); a no-op on explicit models."""

    def smoothed(*args: Any, **kwargs: Any) -> Any:
        with _SmoothDelta(scale):
            return fn(*args, **kwargs)

    return smoothed


def resolve_observation_scale(model: AbstractGenerativeModel, scale: float | None) -> float | None:
    """The Gaussian observation scale for an implicit model: the option, else the model's own
    (an :class:`~ppgen.models.capabilities.ImplicitModel`'s ``observation_scale``); None for a
    model that has neither (an explicit model, whose ``"x"`` site needs none)."""
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"observation_scale must be positive, got {scale}")
        return float(scale)
    return model.observation_scale if isinstance(model, ImplicitModel) else None
