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
    "ESTIMATORS",
    "Estimate",
    "Evaluation",
    "bits_per_dim",
    "evaluate",
    "register_estimator",
    "select_parzen_bandwidth",
]

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
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


def register_estimator(name: str) -> Callable[[EstimatorFn], EstimatorFn]:
    """Decorator adding an estimator function under ``name``."""

    def add(fn: EstimatorFn) -> EstimatorFn:
        ESTIMATORS[name] = fn
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
    model: AbstractGenerativeModel, x: Tensor, context: Tensor | None = None, **_: Any
) -> tuple[Tensor, Kind]:
    """The family's per-example evidence lower bound (``model.elbo``)."""
    if model.likelihood == "none":
        raise ValueError(f"{type(model).__name__} is implicit: it has no ELBO; use 'ais'")
    return model.elbo(x, context), "lower_bound"


@register_estimator("parzen")
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
        **options: estimator-specific options (e.g. AIS's ``num_steps``), passed through.

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
    label = name if num_particles is None or name in ("exact", "elbo") else f"{name}-{num_particles}"
    return Evaluation(per_example, kinds.pop(), label,  # type: ignore[arg-type]
                      model.config.num_dims, _convention(model))


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size when a process group is running (torchrun)."""
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank(), torch_dist.get_world_size()
    return 0, 1
