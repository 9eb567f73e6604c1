"""Reading Pyro traces of a model's programs: per-example log-densities, plates and particles.

Every family is a pair of Pyro programs (``model``, ``guide``) that observe the data at site
``"x"`` inside ``pyro.plate("data", N)``. The protocol's default ELBO (:mod:`ppgen.models.base`)
and the inference layer's estimators (IWAE, AIS, the Renyi objective, posterior sampling) all
read such traces the same way; the helpers live here, once, below both, because ``models/``
never imports ``inference/``.

Particles: the estimators run the programs under an outer ``pyro.plate("particles", K)`` placed
to the left of the programs' own plates (:func:`particles`), so K particles of N examples are one
vectorized pass. A site inside the data plate then has one log-density per (particle, example)
(:func:`per_example`); a latent site outside it (a global latent) has no per-example value and
is refused by the per-example estimators (:class:`GlobalLatentError`), while the one-sample ELBO
spreads it evenly over the examples (:func:`spread_over_examples`).
"""

from __future__ import annotations

__all__ = [
    "ELEMENT_BUDGET",
    "GlobalLatentError",
    "WeightError",
    "data_dim",
    "importance_log_weights",
    "latent_names",
    "log_weight_per_example",
    "log_density",
    "log_mean_exp",
    "particle_chunk",
    "particles",
    "per_example",
    "plate_nesting",
    "probe",
    "require_local",
    "sample_sites",
    "spread_over_examples",
]

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor

if TYPE_CHECKING:
    from ppgen.models.base import AbstractGenerativeModel

ELEMENT_BUDGET = 2**25  # particles per chunk: at most ~this many scalars in a (K, N, D, levels)


class GlobalLatentError(ValueError):
    """A latent site lies outside ``pyro.plate("data", N)``: per-example estimates need local
    latents."""


class WeightError(ValueError):
    """Importance log-weights with no usable value: NaN or +inf anywhere, or -inf for every
    particle of an example (so log-mean-exp would return NaN, +inf or -inf)."""


def sample_sites(trace: Any) -> dict[str, dict[str, Any]]:
    """The trace's sample sites that carry a density: subsample and deterministic sites left
    out."""
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site_is_subsample(site)
        and not site["infer"].get("_deterministic", False)
    }


def latent_names(trace: Any) -> list[str]:
    """The names of the trace's unobserved (latent) sample sites, in program order."""
    return [n for n, s in sample_sites(trace).items() if not s["is_observed"]]


def plate_nesting(*traces: Any) -> int:
    """The number of batch dims the programs' own plates occupy (Pyro's max_plate_nesting)."""
    nest = 0
    for trace in traces:
        for site in sample_sites(trace).values():
            for frame in site["cond_indep_stack"]:
                if frame.vectorized and frame.dim is not None:
                    nest = max(nest, -frame.dim)
    return nest


def data_dim(trace: Any) -> int:
    """The batch dim of ``pyro.plate("data", N)`` at the observed site ``"x"``."""
    site = trace.nodes.get("x")
    if site is None or site["type"] != "sample" or not site["is_observed"]:
        raise ValueError("the model has no observed site 'x'; observe the data at site 'x'")
    for frame in site["cond_indep_stack"]:
        if frame.name == "data" and frame.dim is not None:
            return frame.dim
    raise ValueError("the observed site 'x' must lie inside pyro.plate('data', N)")


def require_local(site: dict[str, Any]) -> None:
    """Raise :class:`GlobalLatentError` unless ``site`` lies inside ``pyro.plate("data", N)``."""
    if not any(f.name == "data" for f in site["cond_indep_stack"]):
        raise GlobalLatentError(
            f"site {site['name']!r} lies outside pyro.plate('data', N): a per-example estimate "
            "(IWAE, AIS) needs every site inside the data plate; use estimator='elbo' for "
            "models with global latents"
        )


def per_example(lp: Tensor, site: dict[str, Any], rank: int, data_dim: int,
                k: int, n: int) -> Tensor:
    """A site's log-density (its batch shape, particles at dim ``-rank``) as ``(K, N)``:
    summed over every plate other than particles and data; a site outside the data plate is
    refused (:func:`require_local`)."""
    require_local(site)
    if lp.dim() > rank:
        raise ValueError(
            f"site {site['name']!r} has batch shape {tuple(lp.shape)} wider than its plates; "
            "declare event dims with .to_event()"
        )
    lp = lp.reshape((1,) * (rank - lp.dim()) + tuple(lp.shape))
    others = [d for d in range(1, rank) if d != rank + data_dim]
    if others:
        lp = lp.sum(others)
    return lp.expand(k, n)


def spread_over_examples(lp: Tensor, n: int) -> Tensor:
    """A site's log-density (no particle dim) as one value per example, ``(N,)``: summed over
    other plates, or spread evenly over the N examples for a site outside the data plate (so
    the one-sample ELBO of a model with global latents still sums to the batch's bound)."""
    if lp.dim() == 0 or lp.shape[-1] != n:
        return lp.sum().expand(n) / n
    return lp.reshape(-1, n).sum(0)


def log_weight_per_example(model_trace: Any, guide_trace: Any, n: int) -> Tensor:
    """``log p(x, z) - log q(z | x)`` per example, ``(N,)``, from one pair of traces (no
    particle dim) whose sites live in plate ``data``: the one-sample ELBO. Sites outside the
    data plate (global latents) are spread evenly over the N examples
    (:func:`spread_over_examples`)."""
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
            total = total + sign * spread_over_examples(lp, n)
    assert total is not None, "the traces hold no sample site"
    return total


def log_density(
    trace: Any, names: list[str] | None, rank: int, data_dim: int, k: int, n: int
) -> Tensor:
    """Sum of the per-example log-densities ``(K, N)`` of sites ``names`` (all when None)."""
    trace.compute_log_prob()
    total = None
    for name, site in sample_sites(trace).items():
        if names is not None and name not in names:
            continue
        lp = per_example(site["log_prob"], site, rank, data_dim, k, n)
        total = lp if total is None else total + lp
    if total is None:
        raise ValueError("the program has no sample site to score")
    return total


def particles(k: int, nesting: int) -> pyro.plate:
    """The outer ``pyro.plate("particles", k)``, left of the programs' ``nesting`` plate dims."""
    return pyro.plate("particles", k, dim=-(nesting + 1))


def probe(
    model_fn: Callable[..., Any], guide_fn: Callable[..., Any] | None, x: Tensor,
    context: Tensor | None,
) -> tuple[Any, Any | None, int]:
    """One untimed run of the programs: their traces and the plate nesting."""
    with torch.no_grad():
        mt = poutine.trace(model_fn).get_trace(x, context)
        gt = None if guide_fn is None else poutine.trace(guide_fn).get_trace(x, context)
    return mt, gt, plate_nesting(mt, *([] if gt is None else [gt]))


def particle_chunk(k: int, model: AbstractGenerativeModel, n: int, chunk: int | None) -> int:
    """Particles per vectorized pass: ``chunk`` when given (at most ``k``), else as many as
    keep a ``(K, N, D, levels)`` tensor within :data:`ELEMENT_BUDGET` scalars."""
    if chunk is not None:
        if chunk < 1:
            raise ValueError(f"particle_chunk must be positive, got {chunk}")
        return min(k, chunk)
    per_particle = n * model.config.num_dims * max(model.config.levels or 1, 1)
    return max(1, min(k, ELEMENT_BUDGET // max(per_particle, 1)))


def importance_log_weights(
    model_fn: Callable[..., Any],
    guide_fn: Callable[..., Any],
    x: Tensor,
    context: Tensor | None,
    num_particles: int,
    nesting: int,
) -> Tensor:
    r"""Per-example importance log-weights :math:`\log p(x, z_k) - \log q(z_k \mid x)`,
    :math:`z_k \sim q`, for K particles in one vectorized pass.

    Latent sites of the model that the guide does not sample are drawn from the prior inside
    the model; their prior terms cancel and are left out.

    Arguments:
        model_fn: a Pyro program observing ``x`` at site ``"x"`` in ``pyro.plate("data", N)``.
        guide_fn: the proposal over (some of) its latent sites.
        x: the data, ``(N, *event_shape)``.
        context: the programs' second argument (labels of a conditional model), or None.
        num_particles: K.
        nesting: the number of plate dims the programs use (particles go to their left).

    Returns:
        ``Tensor[K, N]`` of log-weights (differentiable where the guide reparameterizes).
    """
    k, n = num_particles, x.shape[0]
    with particles(k, nesting):
        gt = poutine.trace(guide_fn).get_trace(x, context)
        mt = poutine.trace(poutine.replay(model_fn, trace=gt)).get_trace(x, context)
    rank, dim = nesting + 1, data_dim(mt)
    proposed = latent_names(gt)
    scored = [nm for nm, site in sample_sites(mt).items()
              if site["is_observed"] or nm in proposed]
    log_p = log_density(mt, scored, rank, dim, k, n)
    if not proposed:
        return log_p
    return log_p - log_density(gt, proposed, rank, dim, k, n)


def log_mean_exp(log_w: Tensor, dim: int = 0) -> Tensor:
    """``log (1/K) sum_k exp(log_w_k)`` over ``dim``; a :class:`WeightError` naming the examples
    when the weights give no finite value. A weight of -inf (a particle where the model has no
    density) counts as zero; finite others carry the estimate."""
    bad = torch.isnan(log_w) | (log_w == math.inf)
    if bool(bad.any()):
        where = bad.any(dim).flatten().nonzero().flatten().tolist()
        raise WeightError(
            f"{int(bad.sum())} importance log-weight(s) are NaN or +inf (example(s) {where[:10]});"
            " the model or the proposal returned a non-finite density: check that the data lie "
            "in the model's support and that its networks' outputs are finite"
        )
    dead = (log_w == -math.inf).all(dim)
    if bool(dead.any()):
        where = dead.flatten().nonzero().flatten().tolist()
        raise WeightError(
            f"all {log_w.shape[dim]} importance weights are zero (log-weight -inf) for "
            f"example(s) {where[:10]}: no particle landed where the model has density; use more "
            "particles or another estimator, or check that the data lie in the model's support"
        )
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])
