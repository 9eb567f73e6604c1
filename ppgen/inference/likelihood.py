r"""Likelihood estimators, each labelled with what it is: exact, a lower bound, or an estimate.

Every estimator returns per-example log-likelihoods (or bounds/estimates) of the data **as
given**, in nats; :class:`Evaluation` turns them into mean negative log-likelihood, bits/dim and
standard errors. ``bits/dim = nats / (D ln 2)``.

``estimator="auto"`` picks by the family's declared capability: ``exact`` -> the exact
``log_prob``; ``bound`` -> IWAE; ``none`` -> AIS. A continuous density scored on discrete data
(uniform dequantization) is a stochastic *lower bound* on the discrete likelihood, and is
labelled so.
"""

from __future__ import annotations

__all__ = [
    "AIS_PARTICLES",
    "DEFAULT_PARTICLES",
    "ESTIMATORS",
    "IWAE_PARTICLES",
    "Estimate",
    "Evaluation",
    "GlobalLatentError",
    "WeightError",
    "Sandwich",
    "annealing_schedule",
    "bdmc",
    "bits_per_dim",
    "estimate_ais",
    "estimate_elbo",
    "estimate_exact",
    "estimate_iwae",
    "evaluate",
    "importance_log_weights",
    "register_estimator",
    "select_parzen_bandwidth",
    "select_observation_scale",
    "smooth_delta",
]

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from ppgen.datasets.base import Dataset
from ppgen.models.base import AbstractGenerativeModel

Kind = Literal["exact", "lower_bound", "estimate"]
LN2 = math.log(2.0)


def bits_per_dim(nats: float | Tensor, num_dims: int) -> float | Tensor:
    """Convert a negative log-likelihood per example in nats to bits per dimension."""
    return nats / (num_dims * LN2)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A self-describing number: ``value`` with its ``stderr``, ``kind`` and ``unit``."""

    value: float
    stderr: float
    kind: Kind
    unit: str

    def __str__(self) -> str:
        return f"{self.value:.4f} ± {self.stderr:.4f} {self.unit} ({self.kind})"


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The likelihood of a dataset under a model.

    Attributes:
        per_example: ``Tensor[N]``, log p(x_i) (or its bound/estimate) in nats.
        kind: ``"exact"``, ``"lower_bound"`` or ``"estimate"``.
        estimator: how it was computed (``"exact"``, ``"elbo"``, ``"iwae-1000"``, ``"ais"``...).
        num_dims: D of one data point.
        convention: how discrete data met the model (exact discrete likelihood, or uniform
            dequantization with the Jacobians counted).
        nats: mean negative log-likelihood per example in nats (lower is better).
        stderr: its standard error over examples, in nats.
        bits_per_dim: ``nats / (D ln 2)``; ``bits_per_dim_stderr`` likewise.
    """

    per_example: Tensor
    kind: Kind
    estimator: str
    num_dims: int
    convention: str

    @property
    def num_examples(self) -> int:
        return int(self.per_example.shape[0])

    @property
    def nats(self) -> float:
        return float(-self.per_example.double().mean())

    @property
    def stderr(self) -> float:
        n = self.num_examples
        if n < 2:
            return float("nan")
        return float(self.per_example.double().std(unbiased=True) / math.sqrt(n))

    @property
    def bits_per_dim(self) -> float:
        return float(bits_per_dim(self.nats, self.num_dims))

    @property
    def bits_per_dim_stderr(self) -> float:
        return float(bits_per_dim(self.stderr, self.num_dims))

    def as_estimate(self, unit: Literal["nats", "bits/dim"] = "bits/dim") -> Estimate:
        if unit == "nats":
            return Estimate(self.nats, self.stderr, self.kind, "nats")
        return Estimate(self.bits_per_dim, self.bits_per_dim_stderr, self.kind, "bits/dim")

    def to_dict(self) -> dict[str, Any]:
        return {
            "nats": self.nats,
            "stderr": self.stderr,
            "bits_per_dim": self.bits_per_dim,
            "bits_per_dim_stderr": self.bits_per_dim_stderr,
            "kind": self.kind,
            "estimator": self.estimator,
            "num_examples": self.num_examples,
            "num_dims": self.num_dims,
            "convention": self.convention,
        }

    def __str__(self) -> str:
        return (
            f"{self.bits_per_dim:.4f} ± {self.bits_per_dim_stderr:.4f} bits/dim "
            f"({self.nats:.3f} ± {self.stderr:.3f} nats; {self.kind}, {self.estimator}, "
            f"n={self.num_examples})"
        )


# An estimator maps (model, x, context, num_particles, generator) -> (per-example log p, kind).
EstimatorFn = Callable[..., tuple[Tensor, Kind]]
ESTIMATORS: dict[str, EstimatorFn] = {}
# estimator="auto" picks by the family's declared likelihood capability.
_AUTO = {"exact": "exact", "bound": "iwae", "none": "ais"}


# The number of particles an estimator uses when ``num_particles`` is not given (for labels).
DEFAULT_PARTICLES: dict[str, int] = {}


def register_estimator(
    name: str, num_particles: int | None = None
) -> Callable[[EstimatorFn], EstimatorFn]:
    """Decorator adding an estimator function under ``name``.

    Arguments:
        name: the name ``ppgen.evaluate(estimator=...)`` takes.
        num_particles: the estimator's default number of particles, if it has one; recorded in
            :data:`DEFAULT_PARTICLES` so evaluations are labelled with it (``"iwae-1000"``).
    """

    def add(fn: EstimatorFn) -> EstimatorFn:
        ESTIMATORS[name] = fn
        if num_particles is not None:
            DEFAULT_PARTICLES[name] = num_particles
        return fn

    return add


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


@register_estimator("parzen", num_particles=10_000)
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
    from ppgen.inference.implicit import observed_and_generated

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
                 bandwidth=h).nats
        for h in grid
    ]
    return grid[min(range(len(grid)), key=scores.__getitem__)]


def _convention(model: AbstractGenerativeModel) -> str:
    cfg = model.config
    if model.likelihood == "none":  # implicit: only a smoothed version has a likelihood
        data = "the data" if cfg.kind == "continuous" else f"the {cfg.levels}-level data"
        return (
            f"likelihood of {data} as given under the implicit model smoothed by Gaussian "
            "noise (AIS: observation model N(g(z), s^2 I); Parzen: a kernel around samples)"
        )
    if cfg.kind == "continuous":
        return "continuous density of the data as given"
    if model.dequantizes:
        return (
            f"uniform dequantization of {cfg.levels} levels to [0,1) (Jacobians of every "
            "rescaling/logit counted): a lower bound on the discrete likelihood"
        )
    return f"exact discrete likelihood over {cfg.levels} levels"


@torch.no_grad()
def evaluate(
    model: AbstractGenerativeModel,
    data: Dataset | Tensor,
    estimator: str = "auto",
    num_particles: int | None = None,
    batch_size: int = 500,
    seed: int = 0,
    context: Tensor | None = None,
    **options: Any,
) -> Evaluation:
    """Score ``data`` under ``model`` with a labelled estimator.

    Arguments:
        model: any ppgen model.
        data: a :class:`~ppgen.datasets.Dataset` (its labels become the context for a
            conditional model) or a tensor ``(N, *event_shape)``.
        estimator: ``"auto"``, or a name in :data:`ESTIMATORS` (``"exact"``, ``"elbo"``,
            ``"iwae"``, ``"ais"``... as the families register them).
        num_particles: particles for IWAE/AIS-style estimators (their default when None).
        batch_size: examples per forward pass.
        seed: seeds torch so a stochastic estimator is reproducible.
        context: context rows for a conditional model when ``data`` is a tensor.
        **options: estimator-specific options (e.g. AIS's ``num_steps``), passed through; the
            family's ``estimator_defaults(name)`` fill the ones not given.

    Returns:
        An :class:`Evaluation` with per-example values, kind, estimator and units.
    """
    if isinstance(data, Dataset):
        x = data.data
        if model.conditional and context is None:
            context = data.labels
    else:
        x = data
    model._check_x(x)
    if model.conditional and context is None:
        raise ValueError(f"{type(model).__name__} is conditional: pass context (labels)")
    if estimator == "auto":
        name = model.default_estimator or _AUTO[model.likelihood]
    else:
        name = estimator
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; known: {sorted(ESTIMATORS)}")
    fn = ESTIMATORS[name]
    options = {**model.estimator_defaults(name), **options}  # the caller's options win
    if num_particles is None:
        num_particles = options.pop("num_particles", None)
    options.pop("num_particles", None)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    was_training = model.training
    model.eval()
    kinds: set[str] = set()
    chunks = []
    rank, world = _rank_and_world()
    shard = torch.arange(x.shape[0]).tensor_split(world)[rank]  # contiguous, as under torchrun
    x = x[shard]
    context = None if context is None else context[shard]
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size].to(device=device, dtype=dtype)
                cb = None if context is None else context[start : start + batch_size].to(device)
                kwargs = dict(options)
                if num_particles is not None:
                    kwargs["num_particles"] = num_particles
                lp, kind = fn(model, xb, cb, **kwargs)
                kinds.add(kind)
                chunks.append(lp.detach().double().cpu())
    finally:
        model.train(was_training)
    per_example = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.float64)
    if world > 1:  # gather every rank's values, in order, on every rank
        import torch.distributed as torch_dist

        gathered: list[Any] = [None] * world
        torch_dist.all_gather_object(gathered, (per_example, sorted(kinds)))
        per_example = torch.cat([g[0] for g in gathered])
        kinds = {k for g in gathered for k in g[1]}
    assert len(kinds) == 1, f"estimator {name} mixed kinds {kinds}"
    k = num_particles if num_particles is not None else DEFAULT_PARTICLES.get(name)
    label = name if k is None or name in ("exact", "elbo") else f"{name}-{k}"
    return Evaluation(per_example, kinds.pop(), label,  # type: ignore[arg-type]
                      model.config.num_dims, _convention(model))


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size when a process group is running (torchrun)."""
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank(), torch_dist.get_world_size()
    return 0, 1


# ---- latent-variable estimators from Pyro traces: IWAE, AIS, BDMC -------------------------------
#
# Every estimator below runs ``model.model`` / ``model.guide`` as Pyro programs under an outer
# ``pyro.plate("particles", K)`` placed to the left of the program's own plates, so K particles
# of N examples are one vectorized pass (the particle-broadcast contract of every family). Sites
# inside ``pyro.plate("data", N)`` give one log-density per (particle, example); a latent site
# outside the data plate (a global latent) has no per-example bound and is refused.

IWAE_PARTICLES = 1000
AIS_PARTICLES = 16
_ELEMENT_BUDGET = 2**25  # particles per chunk: at most ~this many scalars in a (K, N, D, levels)


class GlobalLatentError(ValueError):
    """A latent site lies outside ``pyro.plate("data", N)``: per-example estimates need local
    latents."""


class WeightError(ValueError):
    """Importance log-weights with no usable value: NaN or +inf anywhere, or -inf for every
    particle of an example (so log-mean-exp would return NaN, +inf or -inf)."""


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
                "select_observation_scale(model, val_data)) or give the model an "
                "observation_scale property"
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


def _observation_scale(model: AbstractGenerativeModel, scale: float | None) -> float | None:
    """The Gaussian observation scale for an implicit model: the option, else the model's."""
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"observation_scale must be positive, got {scale}")
        return float(scale)
    return model.observation_scale


def _sample_sites(trace: Any) -> dict[str, dict[str, Any]]:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site_is_subsample(site)
        and not site["infer"].get("_deterministic", False)
    }


def _latent_names(trace: Any) -> list[str]:
    return [n for n, s in _sample_sites(trace).items() if not s["is_observed"]]


def _plate_nesting(*traces: Any) -> int:
    """The number of batch dims the programs' own plates occupy (Pyro's max_plate_nesting)."""
    nest = 0
    for trace in traces:
        for site in _sample_sites(trace).values():
            for frame in site["cond_indep_stack"]:
                if frame.vectorized and frame.dim is not None:
                    nest = max(nest, -frame.dim)
    return nest


def _data_dim(trace: Any) -> int:
    """The batch dim of ``pyro.plate("data", N)`` at the observed site ``"x"``."""
    site = trace.nodes.get("x")
    if site is None or site["type"] != "sample" or not site["is_observed"]:
        raise ValueError("the model has no observed site 'x'; observe the data at site 'x'")
    for frame in site["cond_indep_stack"]:
        if frame.name == "data" and frame.dim is not None:
            return frame.dim
    raise ValueError("the observed site 'x' must lie inside pyro.plate('data', N)")


def _require_local(site: dict[str, Any]) -> None:
    if not any(f.name == "data" for f in site["cond_indep_stack"]):
        raise GlobalLatentError(
            f"site {site['name']!r} lies outside pyro.plate('data', N): a per-example estimate "
            "(IWAE, AIS) needs every site inside the data plate; use estimator='elbo' for "
            "models with global latents"
        )


def _per_example(lp: Tensor, site: dict[str, Any], rank: int, data_dim: int,
                 k: int, n: int) -> Tensor:
    """A site's log-density (its batch shape, particles at dim ``-rank``) as ``(K, N)``:
    summed over every plate other than particles and data."""
    _require_local(site)
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


def _log_density(
    trace: Any, names: list[str] | None, rank: int, data_dim: int, k: int, n: int
) -> Tensor:
    """Sum of the per-example log-densities ``(K, N)`` of sites ``names`` (all when None)."""
    trace.compute_log_prob()
    sites = _sample_sites(trace)
    total = None
    for name, site in sites.items():
        if names is not None and name not in names:
            continue
        lp = _per_example(site["log_prob"], site, rank, data_dim, k, n)
        total = lp if total is None else total + lp
    if total is None:
        raise ValueError("the program has no sample site to score")
    return total


def _particles(k: int, nesting: int) -> pyro.plate:
    return pyro.plate("particles", k, dim=-(nesting + 1))


def _probe(
    model_fn: Callable[..., Any], guide_fn: Callable[..., Any] | None, x: Tensor,
    context: Tensor | None,
) -> tuple[Any, Any | None, int]:
    """One untimed run of the programs: their traces and the plate nesting."""
    with torch.no_grad():
        mt = poutine.trace(model_fn).get_trace(x, context)
        gt = None if guide_fn is None else poutine.trace(guide_fn).get_trace(x, context)
    return mt, gt, _plate_nesting(mt, *([] if gt is None else [gt]))


def _chunk(k: int, model: AbstractGenerativeModel, n: int, chunk: int | None) -> int:
    if chunk is not None:
        if chunk < 1:
            raise ValueError(f"particle_chunk must be positive, got {chunk}")
        return min(k, chunk)
    per_particle = n * model.config.num_dims * max(model.config.levels or 1, 1)
    return max(1, min(k, _ELEMENT_BUDGET // max(per_particle, 1)))


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
    with _particles(k, nesting):
        gt = poutine.trace(guide_fn).get_trace(x, context)
        mt = poutine.trace(poutine.replay(model_fn, trace=gt)).get_trace(x, context)
    rank, data_dim = nesting + 1, _data_dim(mt)
    proposed = _latent_names(gt)
    scored = [nm for nm, site in _sample_sites(mt).items()
              if site["is_observed"] or nm in proposed]
    log_p = _log_density(mt, scored, rank, data_dim, k, n)
    if not proposed:
        return log_p
    return log_p - _log_density(gt, proposed, rank, data_dim, k, n)


def _log_mean_exp(log_w: Tensor, dim: int = 0) -> Tensor:
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
        >>> from ppgen.inference.likelihood import estimate_iwae
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
    mt, gt, nesting = _probe(model.model, model.guide, x, context)
    chunk = _chunk(num_particles, model, x.shape[0], particle_chunk)
    parts = []
    for start in range(0, num_particles, chunk):
        kc = min(chunk, num_particles - start)
        parts.append(importance_log_weights(model.model, model.guide, x, context, kc, nesting))
    return _log_mean_exp(torch.cat(parts)), "lower_bound"


# ---- AIS ----------------------------------------------------------------------------------------


def annealing_schedule(
    num_steps: int, schedule: str | Sequence[float] | Tensor = "sigmoid", delta: float = 4.0
) -> Tensor:
    r"""Inverse temperatures :math:`0 = \beta_0 < \dots < \beta_T = 1` for AIS.

    Arguments:
        num_steps: T.
        schedule: ``"sigmoid"`` (Grosse et al. 2015, arXiv:1511.02543, and Wu et al. 2017:
            :math:`\tilde\beta_t = \sigma(\delta (2t/T - 1))` rescaled to [0, 1], dense at both
            ends), ``"linear"``, ``"geometric"`` (:math:`10^{-4(1 - t/T)}`, dense near 0), or
            an explicit sequence of T+1 values from 0 to 1, non-decreasing.
        delta: the sigmoid's steepness.

    Returns:
        ``Tensor[T + 1]`` in float64.

    Example:
        >>> from ppgen.inference.likelihood import annealing_schedule
        >>> annealing_schedule(4, "linear").tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if not isinstance(schedule, str):
        betas = torch.as_tensor(schedule, dtype=torch.float64).flatten()
        if (
            betas.numel() < 2
            or betas[0] != 0
            or betas[-1] != 1
            or (betas.diff() < 0).any()
        ):
            raise ValueError("an explicit AIS schedule must rise from 0 to 1 (non-decreasing)")
        return betas
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    t = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
    if schedule == "linear":
        betas = t
    elif schedule == "sigmoid":
        s = torch.sigmoid(delta * (2 * t - 1))
        betas = (s - s[0]) / (s[-1] - s[0])
    elif schedule == "geometric":
        betas = 10 ** (-4 * (1 - t))
        betas[0] = 0.0
    else:
        raise ValueError(f"unknown AIS schedule {schedule!r}; use sigmoid, linear or geometric")
    betas[-1] = 1.0
    return betas


@dataclasses.dataclass
class _AnnealingTarget:
    """The AIS path :math:`\\log f_\\beta = (1-\\beta)\\log f_0 + \\beta \\log f_1` over the
    unconstrained latent values of K particles x N examples, with f_0 the guide (or the prior)
    and f_1 the joint p(x, z)."""

    model_fn: Callable[..., Any]
    guide_fn: Callable[..., Any] | None  # None: f_0 is the prior
    x: Tensor | None
    context: Tensor | None
    names: list[str]
    transforms: dict[str, Any]
    event_dims: dict[str, int]
    nesting: int
    data_dim: int
    k: int
    n: int

    def log_f(self, u: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(log f_0, log f_1)``, each ``(K, N)``, at unconstrained values ``u``."""
        rank = self.nesting + 1
        z, ladj = {}, None
        for name in self.names:
            t, v = self.transforms[name], u[name]
            z[name] = t(v)
            # log|det J| of the site's transform, one value per chain (K, N)
            j = torch.as_tensor(t.log_abs_det_jacobian(v, z[name]), dtype=v.dtype)
            j = j.expand(v.shape[: v.dim() - t.codomain.event_dim])
            j = j.reshape(self.k, self.n, -1).sum(-1)
            ladj = j if ladj is None else ladj + j
        assert ladj is not None
        with _particles(self.k, self.nesting):
            mt = poutine.trace(poutine.condition(self.model_fn, data=z)).get_trace(
                self.x, self.context
            )
            log_f1 = _log_density(mt, None, rank, self.data_dim, self.k, self.n) + ladj
            if self.guide_fn is None:
                log_f0 = _log_density(mt, self.names, rank, self.data_dim, self.k, self.n)
            else:
                gt = poutine.trace(poutine.condition(self.guide_fn, data=z)).get_trace(
                    self.x, self.context
                )
                log_f0 = _log_density(gt, self.names, rank, self.data_dim, self.k, self.n)
        return log_f0 + ladj, log_f1

    def with_grad(
        self, u: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        """``log f_0``, ``log f_1`` and their gradients in ``u`` (chains are independent, so
        the gradient of the sum is each chain's own gradient)."""
        leaves = [u[nm].detach().requires_grad_(True) for nm in self.names]
        with torch.enable_grad():
            lf0, lf1 = self.log_f(dict(zip(self.names, leaves, strict=True)))
            g0 = torch.autograd.grad(lf0.sum(), leaves, retain_graph=True, allow_unused=True)
            g1 = torch.autograd.grad(lf1.sum(), leaves, allow_unused=True)
        zero = [torch.zeros_like(v) for v in leaves]
        g0 = [z if g is None else g for g, z in zip(g0, zero, strict=True)]
        g1 = [z if g is None else g for g, z in zip(g1, zero, strict=True)]
        return lf0.detach(), lf1.detach(), g0, g1


def _chain_view(t: Tensor, like: Tensor) -> Tensor:
    """A per-chain ``(K, N)`` tensor shaped to broadcast against a value ``(K, N, ...)``."""
    return t.reshape(t.shape + (1,) * (like.dim() - t.dim()))


def _hmc_step(
    target: _AnnealingTarget,
    beta: float,
    u: list[Tensor],
    cache: tuple[Tensor, Tensor, list[Tensor], list[Tensor]],
    step_size: Tensor,
    leapfrog_steps: int,
) -> tuple[list[Tensor], tuple[Tensor, Tensor, list[Tensor], list[Tensor]], Tensor]:
    """One HMC transition per chain leaving :math:`f_\\beta` invariant (Neal 2011, leapfrog
    with a Metropolis correction). Returns the new state, its cache and the acceptance mask."""
    names = target.names

    def log_fb(lf0: Tensor, lf1: Tensor) -> Tensor:
        return (1 - beta) * lf0 + beta * lf1

    def grad_b(g0: list[Tensor], g1: list[Tensor]) -> list[Tensor]:
        return [(1 - beta) * a + beta * b for a, b in zip(g0, g1, strict=True)]

    lf0, lf1, g0, g1 = cache
    p = [torch.randn_like(v) for v in u]
    kinetic0 = sum(0.5 * q.pow(2).reshape(target.k, target.n, -1).sum(-1) for q in p)
    eps = [_chain_view(step_size, v) for v in u]
    grad = grad_b(g0, g1)
    q_u = list(u)
    p = [pi + 0.5 * e * g for pi, e, g in zip(p, eps, grad, strict=True)]
    new = cache
    for i in range(leapfrog_steps):
        q_u = [v + e * pi for v, e, pi in zip(q_u, eps, p, strict=True)]
        new = target.with_grad(dict(zip(names, q_u, strict=True)))
        grad = grad_b(new[2], new[3])
        scale = 1.0 if i < leapfrog_steps - 1 else 0.5
        p = [pi + scale * e * g for pi, e, g in zip(p, eps, grad, strict=True)]
    kinetic1 = sum(0.5 * q.pow(2).reshape(target.k, target.n, -1).sum(-1) for q in p)
    log_accept = (log_fb(new[0], new[1]) - kinetic1) - (log_fb(lf0, lf1) - kinetic0)
    accept = torch.rand_like(log_accept).log() < log_accept.nan_to_num(nan=-math.inf)
    u_next = [torch.where(_chain_view(accept, a), b, a) for a, b in zip(u, q_u, strict=True)]
    cache_next = (
        torch.where(accept, new[0], lf0),
        torch.where(accept, new[1], lf1),
        [torch.where(_chain_view(accept, a), b, a) for a, b in zip(g0, new[2], strict=True)],
        [torch.where(_chain_view(accept, a), b, a) for a, b in zip(g1, new[3], strict=True)],
    )
    return u_next, cache_next, accept


def _run_ais(
    target: _AnnealingTarget,
    z0: dict[str, Tensor],
    betas: Tensor,
    *,
    leapfrog_steps: int,
    step_size: float,
    target_accept: float,
    reverse: bool = False,
) -> Tensor:
    """AIS log-weights ``(K, N)`` along ``betas`` from latent values ``z0`` (Neal 2001).

    Forward (``reverse=False``): ``z0 ~ f_0``; the result estimates log Z_1/Z_0 = log p(x) from
    below in expectation. Reverse: ``z0`` exact posterior draws; the result is the reverse chain's
    weight, whose negation bounds log p(x) from above in expectation (BDMC, Grosse et al. 2015).
    """
    names = target.names
    u = [target.transforms[nm].inv(z0[nm]).detach() for nm in names]
    cache = target.with_grad(dict(zip(names, u, strict=True)))
    log_w = torch.zeros_like(cache[0])
    eps = torch.full((1, target.n), step_size, dtype=log_w.dtype, device=log_w.device)
    bs = betas.tolist()
    if reverse:
        bs = bs[::-1]
    for t in range(1, len(bs)):
        # 1. weight update at the current state, eq. (3) of Neal (2001)
        log_w = log_w + (bs[t] - bs[t - 1]) * (cache[1] - cache[0])
        if t == len(bs) - 1:
            break  # the last transition would not change the weight
        # 2. a transition leaving f_{beta_t} invariant; per-example step size adapted towards
        #    the target acceptance rate from the particles' mean acceptance (Wu et al. 2017)
        u, cache, accept = _hmc_step(target, bs[t], u, cache, eps.expand(target.k, -1),
                                     leapfrog_steps)
        rate = accept.to(eps.dtype).mean(0, keepdim=True)
        eps = (eps * torch.where(rate > target_accept, 1.02, 0.98)).clamp(1e-4, 1.0)
    return log_w


def _ais_target(
    model: AbstractGenerativeModel,
    x: Tensor | None,
    context: Tensor | None,
    k: int,
    initial: str,
    observation_scale: float | None,
    probe_x: Tensor | None = None,
) -> tuple[_AnnealingTarget, dict[str, Any]]:
    """The annealing target and a probe trace for ``model`` on ``x`` with K particles."""
    model_fn = smooth_delta(model.model, _observation_scale(model, observation_scale))
    xp = x if probe_x is None else probe_x
    mt, gt, nesting = _probe(model_fn, model.guide, xp, context)
    names = _latent_names(mt)
    if not names:
        raise ValueError("AIS needs latent sites; this model has none (use 'exact' or 'iwae')")
    if initial not in ("auto", "guide", "prior"):
        raise ValueError(f"initial must be auto, guide or prior, got {initial!r}")
    guided = set(_latent_names(gt)) if gt is not None else set()
    use_guide = initial == "guide" or (initial == "auto" and set(names) <= guided)
    if use_guide and not set(names) <= guided:
        raise ValueError(
            f"initial='guide' needs the guide to sample every latent site {names}; it samples "
            f"{sorted(guided)}; use initial='prior'"
        )
    data_dim = _data_dim(mt)
    if data_dim != -nesting:
        raise ValueError(
            "AIS expects pyro.plate('data', N) to be the outermost plate of the program"
        )
    transforms, event_dims = {}, {}
    for name in names:
        fn = mt.nodes[name]["fn"]
        if fn.support.is_discrete:
            raise ValueError(f"AIS with HMC needs continuous latents; site {name!r} is discrete")
        transforms[name] = torch.distributions.biject_to(fn.support)
        event_dims[name] = fn.event_dim
        _require_local(mt.nodes[name])
    n = xp.shape[0]
    target = _AnnealingTarget(
        model_fn, model.guide if use_guide else None, x, context, names, transforms,
        event_dims, nesting, data_dim, k, n,
    )
    return target, {"use_guide": use_guide}


def _initial_latents(target: _AnnealingTarget) -> dict[str, Tensor]:
    """K draws per example from f_0 (the guide, or the prior inside the model)."""
    fn = target.guide_fn if target.guide_fn is not None else target.model_fn
    with torch.no_grad(), _particles(target.k, target.nesting):
        tr = poutine.trace(fn).get_trace(target.x, target.context)
    out = {}
    for name in target.names:
        site = tr.nodes[name]
        out[name] = site["value"].detach().expand(
            site["fn"].batch_shape + site["fn"].event_shape
        ).reshape(target.k, target.n, *site["fn"].event_shape)
    return out


@register_estimator("ais", num_particles=AIS_PARTICLES)
def estimate_ais(
    model: AbstractGenerativeModel,
    x: Tensor,
    context: Tensor | None = None,
    *,
    num_particles: int = AIS_PARTICLES,
    num_steps: int = 200,
    schedule: str | Sequence[float] | Tensor = "sigmoid",
    leapfrog_steps: int = 5,
    step_size: float = 0.05,
    target_accept: float = 0.65,
    initial: Literal["auto", "guide", "prior"] = "auto",
    observation_scale: float | None = None,
    particle_chunk: int | None = None,
    **_: Any,
) -> tuple[Tensor, Kind]:
    r"""Annealed importance sampling (Neal 2001, arXiv:physics/9803008) of log p(x) with HMC
    transitions over the latent sites, as Wu et al. (2017, arXiv:1611.04273) do for
    decoder-based models.

    The chain anneals from :math:`f_0` (the guide q(z|x) when it samples every latent site,
    else the prior) to the joint :math:`f_1 = p(x, z)` through
    :math:`f_\beta = f_0^{1-\beta} f_1^\beta`; each particle's weight
    :math:`\log w = \sum_t (\beta_t - \beta_{t-1}) (\log f_1 - \log f_0)(z_{t-1})` is an
    unbiased estimate of p(x), and :math:`\log \frac1K \sum_k w_k` estimates log p(x) (from
    below in expectation). Constrained latents move in unconstrained space (Jacobians counted).

    An **implicit** model, whose site ``"x"`` is a deterministic ``Delta``, is scored under the
    Gaussian observation model :math:`\mathcal N(x; g(z), s^2 I)` with ``s`` =
    ``observation_scale`` or the model's ``observation_scale`` property (a ValueError when
    neither is set; :func:`select_observation_scale` picks one on validation data).

    Arguments:
        model: any model with continuous latent sites inside the data plate.
        x: ``(N, *event_shape)`` data.
        context: labels of a conditional model.
        num_particles: independent chains per example (K).
        num_steps: annealing steps T.
        schedule: ``"sigmoid"``, ``"linear"``, ``"geometric"`` or explicit betas (see
            :func:`annealing_schedule`).
        leapfrog_steps: leapfrog steps per HMC transition.
        step_size: the initial leapfrog step size, adapted per example towards
            ``target_accept`` (x1.02 / x0.98 per step, as Wu et al.).
        target_accept: the acceptance rate the step size adapts to.
        initial: ``"auto"``, ``"guide"`` or ``"prior"``: the initial distribution f_0.
        observation_scale: s for implicit models.
        particle_chunk: particles per vectorized pass.

    Returns:
        ``(Tensor[N] in nats, "estimate")``.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("moons", "val").subset(4)
        >>> m = ppgen.build("vae", ds, latent=2, hidden=[8])
        >>> ev = ppgen.evaluate(m, ds, "ais", num_particles=2, num_steps=5)
        >>> ev.kind, ev.estimator
        ('estimate', 'ais-2')
    """
    if num_particles < 1 or leapfrog_steps < 1:
        raise ValueError("num_particles and leapfrog_steps must be positive")
    betas = annealing_schedule(num_steps, schedule)
    chunk = _chunk(num_particles, model, x.shape[0], particle_chunk)
    parts = []
    for start in range(0, num_particles, chunk):
        kc = min(chunk, num_particles - start)
        target, _info = _ais_target(model, x, context, kc, initial, observation_scale)
        z0 = _initial_latents(target)
        parts.append(_run_ais(target, z0, betas, leapfrog_steps=leapfrog_steps,
                              step_size=step_size, target_accept=target_accept))
    return _log_mean_exp(torch.cat(parts)), "estimate"


@dataclasses.dataclass(frozen=True)
class Sandwich:
    """Bidirectional Monte Carlo bounds on log p(x) of simulated data (Grosse et al. 2015).

    Attributes:
        lower: ``Tensor[N]``, forward AIS (a stochastic lower bound), nats.
        upper: ``Tensor[N]``, reverse AIS from the exact latents (a stochastic upper bound).
        x: the simulated data ``(N, *event_shape)``.
    """

    lower: Tensor
    upper: Tensor
    x: Tensor

    @property
    def gap(self) -> float:
        """Mean upper - lower in nats: AIS's error on data like these is at most about this."""
        return float((self.upper - self.lower).mean())

    def __str__(self) -> str:
        return (
            f"BDMC: lower {float(self.lower.mean()):.3f}, upper {float(self.upper.mean()):.3f},"
            f" gap {self.gap:.3f} nats (n={self.lower.shape[0]})"
        )


def bdmc(
    model: AbstractGenerativeModel,
    num_examples: int = 16,
    context: Tensor | None = None,
    *,
    num_particles: int = AIS_PARTICLES,
    num_steps: int = 200,
    schedule: str | Sequence[float] | Tensor = "sigmoid",
    leapfrog_steps: int = 5,
    step_size: float = 0.05,
    target_accept: float = 0.65,
    initial: Literal["auto", "guide", "prior"] = "auto",
    observation_scale: float | None = None,
    seed: int = 0,
) -> Sandwich:
    """The BDMC sandwich (Grosse et al. 2015, arXiv:1511.02543; Wu et al. 2017): simulate
    ``(x, z)`` from the model, run forward AIS on ``x`` (lower bound) and reverse AIS from the
    exact ``z`` (upper bound). The gap bounds AIS's error with these settings on data resembling
    the model's own samples, checking the schedule before trusting AIS on real data.

    Arguments:
        model: the model (implicit models use the Gaussian observation scale, as in
            :func:`estimate_ais`).
        num_examples: simulated examples (ignored for a conditional model: one per context row).
        context: labels of a conditional model.
        seed: seeds the simulation and the chains.
        (others): as :func:`estimate_ais`.

    Returns:
        A :class:`Sandwich`.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("moons", "val")
        >>> m = ppgen.build("vae", ds, latent=2, hidden=[8])
        >>> s = bdmc(m, num_examples=3, num_particles=2, num_steps=5)
        >>> s.lower.shape, s.upper.shape
        (torch.Size([3]), torch.Size([3]))
    """
    betas = annealing_schedule(num_steps, schedule)
    scale = _observation_scale(model, observation_scale)
    model_fn = smooth_delta(model.model, scale)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        # 1. simulate (x, z) ~ p: N draws under an outer plate left of the program's plates
        with torch.no_grad():
            probe = poutine.trace(model_fn).get_trace(None, context)
            nesting = _plate_nesting(probe)
            if context is None:
                with pyro.plate("bdmc", num_examples, dim=-(nesting + 1)):
                    tr = poutine.trace(model_fn).get_trace(None, context)
            else:
                tr = probe
        n = num_examples if context is None else context.shape[0]
        x = tr.nodes["x"]["value"].reshape(n, *model.event_shape)
        latents = _latent_names(tr)
        z_true = {nm: tr.nodes[nm]["value"].reshape(n, *tr.nodes[nm]["fn"].event_shape)
                  for nm in latents}
        target, _info = _ais_target(model, x, context, num_particles, initial, scale)
        kw = {"leapfrog_steps": leapfrog_steps, "step_size": step_size,
              "target_accept": target_accept}
        # 2. forward AIS from f_0: a stochastic lower bound
        lower = _log_mean_exp(_run_ais(target, _initial_latents(target), betas, **kw))
        # 3. reverse AIS from the exact latents: minus a lower bound on log 1/p(x)
        z0 = {nm: v.unsqueeze(0).expand(num_particles, *v.shape) for nm, v in z_true.items()}
        upper = -_log_mean_exp(_run_ais(target, z0, betas, reverse=True, **kw))
    return Sandwich(lower.detach(), upper.detach(), x)


def select_observation_scale(
    model: AbstractGenerativeModel,
    data: Dataset | Tensor,
    grid: Sequence[float] | None = None,
    *,
    context: Tensor | None = None,
    num_examples: int = 64,
    seed: int = 0,
    **ais_options: Any,
) -> float:
    """The Gaussian observation scale ``s`` that maximizes the AIS estimate of log p(data) for an
    implicit model (Wu et al. 2017 pick s on validation data the same way).

    Arguments:
        model: an implicit model whose ``"x"`` site is a Delta.
        data: validation data (a Dataset or a tensor); the first ``num_examples`` are used.
        grid: candidate scales; default: the data's standard deviation times
            ``(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)``.
        context: labels of a conditional model (taken from a Dataset when None).
        num_examples: examples scored per candidate.
        seed: seeds every AIS run alike (common random numbers across candidates).
        **ais_options: passed to :func:`estimate_ais` (e.g. ``num_steps``).

    Returns:
        The best scale, a float.

    Example:
        >>> import pyro, pyro.distributions as dist, torch, ppgen
        >>> def generator(x=None):  # x = 2 z: a deterministic (implicit) model
        ...     with pyro.plate("data", 1 if x is None else len(x)):
        ...         z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...         return pyro.sample("x", dist.Delta(2 * z, event_dim=1), obs=x)
        >>> g = ppgen.from_pyro(generator, event_shape=(2,), likelihood="none")
        >>> x = 2 * torch.randn(8, 2) + 0.3 * torch.randn(8, 2)
        >>> s = select_observation_scale(g, x, [0.03, 0.3, 3.0], num_particles=2, num_steps=10)
        >>> s in (0.03, 0.3, 3.0)
        True
    """
    if isinstance(data, Dataset):
        x = data.data
        if model.conditional and context is None:
            context = data.labels
    else:
        x = data
    x = x[:num_examples]
    context = None if context is None else context[:num_examples]
    if grid is None:
        sd = float(x.double().std()) or 1.0
        grid = [sd * f for f in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)]
    if not grid or any(not s > 0 for s in grid):
        raise ValueError("grid must hold positive scales")
    scores = []
    for s in grid:
        ev = evaluate(model, x, "ais", seed=seed, context=context, observation_scale=float(s),
                      **ais_options)
        scores.append(-ev.nats)
    return float(grid[int(torch.tensor(scores).argmax())])
