r"""The estimators that read a model directly: its exact density, its ELBO, the importance-
weighted bound IWAE-k, and the Parzen-window baseline. Each registers itself with
:func:`ppgen.inference.likelihood.register_estimator` when this module is imported (the package
``ppgen.inference`` imports it, so ``evaluate`` finds them whatever was imported first); AIS and
BDMC live in :mod:`ppgen.inference.ais`.

IWAE runs ``model.model`` / ``model.guide`` as Pyro programs under an outer
``pyro.plate("particles", K)`` placed to the left of the program's own plates, so K particles of
N examples are one vectorized pass (the particle-broadcast contract of every family); the trace
helpers are :mod:`ppgen.models.traces`.
"""

from __future__ import annotations

__all__ = [
    "IWAE_PARTICLES",
    "estimate_elbo",
    "estimate_exact",
    "estimate_iwae",
    "estimate_ode",
    "estimate_parzen",
    "select_parzen_bandwidth",
]

import math
from typing import Any

import torch
from torch import Tensor

from ppgen.datasets.base import Dataset
from ppgen.inference.implicit import observed_and_generated
from ppgen.inference.likelihood import Kind, evaluate, register_estimator
from ppgen.models import traces
from ppgen.models.base import AbstractGenerativeModel

IWAE_PARTICLES = 1000


@register_estimator("exact")
def estimate_exact(
    model: AbstractGenerativeModel, x: Tensor, context: Tensor | None = None, **_: Any
) -> tuple[Tensor, Kind]:
    """The model's exact ``log_prob``; a lower bound when the model dequantizes."""
    if model.likelihood != "exact":
        raise ValueError(
            f"{type(model).__name__} has no exact likelihood (declares {model.likelihood!r}); "
            "use estimator='auto'"
        )
    kind: Kind = "lower_bound" if model.dequantizes else "exact"
    return model.log_prob(x, context), kind


@register_estimator("elbo")
def estimate_elbo(
    model: AbstractGenerativeModel,
    x: Tensor,
    context: Tensor | None = None,
    *,
    num_particles: int | None = None,
    **options: Any,
) -> tuple[Tensor, Kind]:
    """The family's per-example evidence lower bound (``model.elbo``); ``options`` go to
    ``model.elbo`` (e.g. diffusion's ``method="importance", num_t=64``)."""
    if model.likelihood == "none":
        raise ValueError(f"{type(model).__name__} is implicit: it has no ELBO; use 'ais'")
    if options:
        import inspect

        try:
            inspect.signature(model.elbo).bind(x, context, **options)
        except TypeError as e:
            name = type(model).__name__
            raise ValueError(f"{name}.elbo does not take {sorted(options)}: {e}") from None
    return model.elbo(x, context, **options), "lower_bound"


@register_estimator("ode")
def estimate_ode(
    model: AbstractGenerativeModel,
    x: Tensor,
    context: Tensor | None = None,
    *,
    num_particles: int | None = None,
    **options: Any,
) -> tuple[Tensor, Kind, tuple[str, ...]]:
    """The likelihood of the model's probability-flow ODE (``model.ode_log_prob``), for
    families that declare ``probability_flow`` (diffusion): exact up to the solver's
    tolerances with the exact trace on continuous data, an estimate with Hutchinson's trace, a
    lower bound on discrete data (dequantized). ``options`` (``trace``, ``rtol``, ``atol``,
    ``solver``) go to ``model.ode_log_prob``; its notes (the solver, its tolerances and its
    number of function evaluations) go into the Evaluation's notes."""
    if not model.probability_flow:
        raise ValueError(
            f"{type(model).__name__} defines no probability-flow ODE (it does not declare "
            "probability_flow): the 'ode' estimator scores diffusion models; use "
            "estimator='auto'"
        )
    if num_particles is not None:
        raise ValueError("the 'ode' estimator takes no num_particles (it solves one ODE)")
    if options:
        import inspect

        try:
            inspect.signature(model.ode_log_prob).bind(x, context, **options)
        except TypeError as e:
            name = type(model).__name__
            raise ValueError(f"{name}.ode_log_prob does not take {sorted(options)}: {e}") from None
    values, kind, notes = model.ode_log_prob(x, context, **options)
    if kind not in ("exact", "lower_bound", "estimate"):
        raise ValueError(f"{type(model).__name__}.ode_log_prob returned kind {kind!r}")
    return values, kind, tuple(notes)  # type: ignore[return-value]


@register_estimator("parzen", num_particles=10_000, shared_draws=True)
def estimate_parzen(
    model: AbstractGenerativeModel,
    x: Tensor,
    context: Tensor | None = None,
    *,
    num_particles: int = 10_000,
    bandwidth: float | None = None,
    **_: Any,
) -> tuple[Tensor, Kind]:
    r"""Parzen-window estimate from model samples: **a discouraged baseline**, kept only to
    reproduce numbers from the GAN literature. Use ``"ais"`` for implicit models.

    A Gaussian kernel density on ``n = num_particles`` generated points :math:`g_j` (the Delta
    locations at the implicit model's ``"x"`` site, drawn from the prior), scored at the
    values the model observes (for discrete data, its program's dequantized ``v + u``):

    .. math:: \log \hat p(x) = \log \frac{1}{n} \sum_{j=1}^{n}
        \mathcal{N}(x;\, g_j, h^2 I).

    Theis et al. (2016) show why it should not be trusted: in more than a few dimensions it is
    far from the true log-likelihood even with millions of samples, and it can rank models in
    the wrong order; a model that memorizes its training data scores well. Labelled
    ``estimate`` (it is neither exact nor a bound).

    Arguments:
        model: an implicit model (its ``"x"`` site a Delta).
        x: data ``(N, *event_shape)``.
        context: context rows for a conditional model.
        num_particles: generated points in the kernel density.
        bandwidth: kernel width ``h`` in the model's space; None uses Scott's rule on the
            generated points (choose it on validation data with :func:`select_parzen_bandwidth`).

    Returns:
        ``(Tensor[N] of log-density estimates in nats, "estimate")``.

    References:
        Theis, van den Oord & Bethge (2016), A note on the evaluation of generative models,
        arXiv:1511.01844. Breuleux, Bengio & Vincent (2011), Neural Computation 23(8).
    """
    observed, generated = observed_and_generated(model, x, context)
    pool = [generated.reshape(len(x), -1)]
    while sum(len(p) for p in pool) < num_particles:
        pool.append(observed_and_generated(model, x, context)[1].reshape(len(x), -1))
    samples = torch.cat(pool)[:num_particles]  # (n, D)
    points = observed.reshape(len(x), -1)  # (N, D)
    n, d = samples.shape
    if bandwidth is None:  # Scott's rule on the generated points
        bandwidth = float(samples.std(0).mean()) * n ** (-1.0 / (d + 4))
    if not bandwidth > 0:
        raise ValueError(f"the Parzen bandwidth must be positive, got {bandwidth}")
    log_kernel = []
    for chunk in samples.split(4096):
        sq = torch.cdist(points.double(), chunk.double()).pow(2)  # (N, chunk)
        log_kernel.append(-0.5 * sq / bandwidth**2)
    log_norm = 0.5 * d * math.log(2 * math.pi * bandwidth**2) + math.log(n)
    value = torch.logsumexp(torch.cat(log_kernel, dim=1), dim=1) - log_norm
    return value.to(x.dtype), "estimate"


def select_parzen_bandwidth(
    model: AbstractGenerativeModel,
    data: Dataset | Tensor,
    grid: tuple[float, ...] | None = None,
    num_particles: int = 10_000,
    seed: int = 0,
) -> float:
    """The Parzen bandwidth (from ``grid``) that maximizes the mean estimate on ``data``
    (validation data, never the test split), as in Goodfellow et al. (2014).

    Arguments:
        model: an implicit model.
        data: validation data.
        grid: candidate bandwidths in the model's space (default: 20 values log-spaced from
            1e-3 to 10 times the data's standard deviation).
        num_particles: generated points in the kernel density.
        seed: seeds the draws, the same for every candidate.

    Returns:
        The best bandwidth.
    """
    x = data.data if isinstance(data, Dataset) else data
    if grid is None:
        scale = float(x.reshape(len(x), -1).float().std(0).mean().clamp_min(1e-3))
        grid = tuple(float(v) for v in torch.logspace(-3, 1, 20) * scale)
    scores = [
        evaluate(model, data, estimator="parzen", num_particles=num_particles, seed=seed,
                 bandwidth=h, mc_examples=0).nats
        for h in grid
    ]
    return grid[min(range(len(grid)), key=scores.__getitem__)]


@register_estimator("iwae", num_particles=IWAE_PARTICLES)
def estimate_iwae(
    model: AbstractGenerativeModel,
    x: Tensor,
    context: Tensor | None = None,
    *,
    num_particles: int = IWAE_PARTICLES,
    particle_chunk: int | None = None,
    **_: Any,
) -> tuple[Tensor, Kind]:
    r"""The importance-weighted bound IWAE-k (Burda et al. 2016, arXiv:1509.00519).

    .. math:: \mathcal L_k(x) = \mathbb E_{z_{1:k} \sim q(z \mid x)}
        \log \frac1k \sum_{i=1}^k \frac{p(x, z_i)}{q(z_i \mid x)} \le \log p(x),

    non-decreasing in k and converging to :math:`\log p(x)`. The default k is
    :data:`IWAE_PARTICLES` (1000). Particles run vectorized, in chunks that bound memory.

    Arguments:
        model: a model with a guide over its latent sites (``likelihood = "bound"``).
        x: ``(N, *event_shape)`` data.
        context: labels of a conditional model.
        num_particles: k.
        particle_chunk: particles per vectorized pass (default: from a memory budget).

    Returns:
        ``(Tensor[N] of the bound in nats, "lower_bound")``.

    Example:
        >>> import ppgen, torch
        >>> from ppgen.inference.estimators import estimate_iwae
        >>> m = ppgen.build("independent", ppgen.datasets.load("moons", "val"))
        >>> estimate_iwae(m, torch.zeros(3, 2))[0].shape  # no latents: exact log p
        torch.Size([3])
    """
    if num_particles < 1:
        raise ValueError(f"num_particles must be positive, got {num_particles}")
    if model.likelihood == "none":
        raise ValueError(
            f"{type(model).__name__} is implicit (no guide, no density at 'x'): use 'ais'"
        )
    mt, gt, nesting = traces.probe(model.model, model.guide, x, context)
    chunk = traces.particle_chunk(num_particles, model, x.shape[0], particle_chunk)
    parts = []
    for start in range(0, num_particles, chunk):
        kc = min(chunk, num_particles - start)
        parts.append(
            traces.importance_log_weights(model.model, model.guide, x, context, kc, nesting)
        )
    return traces.log_mean_exp(torch.cat(parts)), "lower_bound"
