r"""Likelihood estimators, each labelled with what it is: exact, a lower bound, or an estimate.

Every estimator returns per-example log-likelihoods (or bounds/estimates) of the data **as
given**, in nats; :class:`Evaluation` turns them into mean negative log-likelihood, bits/dim and
standard errors. ``bits/dim = nats / (D ln 2)``.

``estimator="auto"`` picks by the family's declared capability: ``exact`` -> the exact
``log_prob``; ``bound`` -> IWAE; ``none`` -> AIS. A continuous density scored on discrete data
(uniform dequantization) is a stochastic *lower bound* on the discrete likelihood, and is
labelled so.

This module holds the units, :class:`Evaluation`, the estimator registry and :func:`evaluate`.
The estimators register themselves from their own modules, which the package
``ppgen.inference`` imports in order: the exact, ELBO, IWAE and Parzen estimators in
:mod:`ppgen.inference.estimators`, AIS and BDMC in :mod:`ppgen.inference.ais`. Their names stay
importable from here (resolved on first use, so this module imports neither); the Pyro-trace
helpers they share are :mod:`ppgen.models.traces`.
"""

from __future__ import annotations

__all__ = [
    "AIS_PARTICLES",
    "DEFAULT_PARTICLES",
    "ESTIMATORS",
    "IWAE_PARTICLES",
    "MC_EXAMPLES",
    "BoundCheck",
    "Estimate",
    "Evaluation",
    "GlobalLatentError",
    "Sandwich",
    "WeightError",
    "annealing_schedule",
    "bdmc",
    "bits_per_dim",
    "check_bound",
    "estimate_ais",
    "estimate_elbo",
    "estimate_exact",
    "estimate_iwae",
    "evaluate",
    "importance_log_weights",
    "register_estimator",
    "select_observation_scale",
    "select_parzen_bandwidth",
    "smooth_delta",
]

import dataclasses
import importlib
import math
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from ppgen.datasets.base import Dataset
from ppgen.datasets.validation import as_batch
from ppgen.inference.implicit import smooth_delta
from ppgen.models.base import AbstractGenerativeModel
from ppgen.models.traces import GlobalLatentError, WeightError, importance_log_weights

if TYPE_CHECKING:  # resolved at run time by __getattr__ below (they import this module)
    from ppgen.inference.ais import (
        AIS_PARTICLES,
        Sandwich,
        annealing_schedule,
        bdmc,
        estimate_ais,
        select_observation_scale,
    )
    from ppgen.inference.estimators import (
        IWAE_PARTICLES,
        estimate_elbo,
        estimate_exact,
        estimate_iwae,
        select_parzen_bandwidth,
    )

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

    Two uncertainties are reported, and they answer different questions:

    - ``stderr``: the spread over examples (the standard deviation of the per-example values
      over sqrt N): how much the mean would move on another sample of data;
    - ``mc_stderr``: the estimator's own Monte Carlo standard error: how much the mean would
      move, on *these* examples, with other random draws of the estimator (particles,
      dequantization noise, sampled timesteps). 0 for an exact estimator; None when it was not
      measured (``evaluate(..., mc_examples=0)``). A bound compared with an exact value of the
      same model on the same examples differs from it by its gap plus this noise only, so a
      bound above the exact value by more than a few ``mc_stderr`` is a fault
      (:func:`check_bound`).

    Attributes:
        per_example: ``Tensor[N]``, log p(x_i) (or its bound/estimate) in nats.
        kind: ``"exact"``, ``"lower_bound"`` or ``"estimate"``.
        estimator: how it was computed (``"exact"``, ``"elbo"``, ``"iwae-1000"``, ``"ais"``...).
        num_dims: D of one data point.
        convention: how discrete data met the model (exact discrete likelihood, or uniform
            dequantization with the Jacobians counted).
        mc_stderr: the Monte Carlo standard error of ``nats`` (see :func:`evaluate` for how it
            is measured), 0.0 for exact estimators, None when not measured.
        notes: remarks a reader of the number needs (e.g. a model built for another number of
            levels than the data declare); printed with it and kept in :meth:`to_dict`.
        nats: mean negative log-likelihood per example in nats (lower is better).
        stderr: its standard error over examples, in nats.
        bits_per_dim: ``nats / (D ln 2)``; ``bits_per_dim_stderr`` and
            ``mc_stderr_bits_per_dim`` likewise.
    """

    per_example: Tensor
    kind: Kind
    estimator: str
    num_dims: int
    convention: str
    mc_stderr: float | None = None
    notes: tuple[str, ...] = ()

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

    @property
    def mc_stderr_bits_per_dim(self) -> float | None:
        if self.mc_stderr is None:
            return None
        return float(bits_per_dim(self.mc_stderr, self.num_dims))

    def as_estimate(self, unit: Literal["nats", "bits/dim"] = "bits/dim") -> Estimate:
        if unit == "nats":
            return Estimate(self.nats, self.stderr, self.kind, "nats")
        return Estimate(self.bits_per_dim, self.bits_per_dim_stderr, self.kind, "bits/dim")

    def check_bound(self, exact: Evaluation | Tensor | float, k: float = 3.0) -> BoundCheck:
        """This bound against a known exact value of the same model on the same data: see
        :func:`check_bound`."""
        return check_bound(self, exact, k=k)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nats": self.nats,
            "stderr": self.stderr,
            "bits_per_dim": self.bits_per_dim,
            "bits_per_dim_stderr": self.bits_per_dim_stderr,
            "mc_stderr": self.mc_stderr,
            "mc_stderr_bits_per_dim": self.mc_stderr_bits_per_dim,
            "kind": self.kind,
            "estimator": self.estimator,
            "num_examples": self.num_examples,
            "num_dims": self.num_dims,
            "convention": self.convention,
            "notes": list(self.notes),
        }

    def __str__(self) -> str:
        if self.kind == "exact" and not self.mc_stderr:
            mc = ""
        elif self.mc_stderr is None:
            mc = "; Monte Carlo error not measured"
        else:
            mc = (f"; Monte Carlo ± {self.mc_stderr_bits_per_dim:.4f} bits/dim, "
                  f"{self.mc_stderr:.3f} nats")
        text = (
            f"{self.bits_per_dim:.4f} ± {self.bits_per_dim_stderr:.4f} bits/dim "
            f"({self.nats:.3f} ± {self.stderr:.3f} nats; {self.kind}, {self.estimator}, "
            f"n={self.num_examples}{mc})"
        )
        return "\n".join([text, *(f"  note: {n}" for n in self.notes)])


@dataclasses.dataclass(frozen=True)
class BoundCheck:
    """Is a lower bound on the right side of a known exact value? (see :func:`check_bound`).

    Attributes:
        excess: mean over examples of ``bound - exact`` log-likelihood, nats (a lower bound's
            expectation is <= 0; > 0 is the wrong side).
        mc_stderr: the Monte Carlo standard error of ``excess`` (the bound's; None when not
            measured).
        k: the threshold in standard errors.
        verdict: ``"ok"`` (at or below the exact value), ``"within noise"`` (above it by at
            most ``k`` Monte Carlo standard errors) or ``"wrong side"`` (above it beyond that).
    """

    excess: float
    mc_stderr: float | None
    k: float
    verdict: Literal["ok", "within noise", "wrong side"]

    @property
    def wrong_side(self) -> bool:
        return self.verdict == "wrong side"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"message": str(self)}

    def __str__(self) -> str:
        mc = "not measured" if self.mc_stderr is None else f"{self.mc_stderr:.4f}"
        head = (f"bound - exact = {self.excess:+.4f} nats per example "
                f"(Monte Carlo stderr {mc})")
        if self.verdict == "ok":
            return f"{head}: the bound is below the exact value, as it must be"
        if self.verdict == "within noise":
            return (f"{head}: above the exact value, but within {self.k:g} Monte Carlo "
                    "standard errors: estimator noise, not a fault")
        return (
            f"{head}: WRONG SIDE: a lower bound above the exact value of the same model by "
            f"more than {self.k:g} Monte Carlo standard errors; the bound or the exact value is "
            "wrong (a guide or density that does not normalize, a dequantization or Jacobian "
            "term missing, or two different models or data)"
        )


def check_bound(
    bound: Evaluation, exact: Evaluation | Tensor | float, k: float = 3.0
) -> BoundCheck:
    r"""Flag a lower bound that lands above a known exact value beyond its Monte Carlo error.

    On the same examples, :math:`\mathbb E[\hat{\mathcal L}(x_i)] \le \log p(x_i)` for each i, so
    the mean excess :math:`\bar e = \frac1N \sum_i (\hat{\mathcal L}(x_i) - \log p(x_i))` has
    expectation <= 0 and scatters around it by the bound's Monte Carlo standard error only
    (the spread over examples cancels: both are scored on the same points). ``excess > k *
    mc_stderr`` is then a fault, not noise; with k = 3 a correct bound is flagged with
    probability about 0.1% (normal approximation). A bound whose Monte Carlo error was not
    measured (None) and an exact "bound" (0) are judged on the excess alone (beyond float
    rounding).

    Arguments:
        bound: an Evaluation of kind ``"lower_bound"`` (ELBO, IWAE, a dequantized density).
        exact: the exact log-likelihood of the same model on the same data: an Evaluation of
            kind ``"exact"``, per-example values ``(N,)`` in nats, or their mean (a float).
        k: the threshold in Monte Carlo standard errors.

    Returns:
        A :class:`BoundCheck`.
    """
    if bound.kind != "lower_bound":
        raise ValueError(
            f"check_bound takes a lower bound; got kind {bound.kind!r} ({bound.estimator})"
        )
    if not k > 0:
        raise ValueError(f"k must be positive, got {k}")
    if isinstance(exact, Evaluation):
        if exact.kind != "exact":
            raise ValueError(
                f"the reference must be exact; got kind {exact.kind!r} ({exact.estimator})"
            )
        exact = exact.per_example
    if isinstance(exact, Tensor) and exact.dim() > 0:
        if exact.shape != bound.per_example.shape:
            raise ValueError(
                f"the exact values have shape {tuple(exact.shape)} but the bound "
                f"{tuple(bound.per_example.shape)}: score the same examples, in the same order"
            )
        excess = float((bound.per_example.double() - exact.double().cpu()).mean())
    else:
        excess = float(-bound.nats - float(exact))
    mc = bound.mc_stderr
    rounding = 1e-6 * max(1.0, abs(bound.nats))  # two float32 computations of one value
    if excess <= rounding:
        verdict: Literal["ok", "within noise", "wrong side"] = "ok"
    elif mc is not None and excess <= k * mc:
        verdict = "within noise"
    else:
        verdict = "wrong side"
    return BoundCheck(excess, mc, k, verdict)


# An estimator maps (model, x, context, num_particles, generator) -> (per-example log p, kind),
# or (per-example log p, kind, notes): notes (solver settings, function evaluations) a reader of
# the number needs, collected into the Evaluation's notes.
EstimatorFn = Callable[..., tuple[Tensor, Kind] | tuple[Tensor, Kind, tuple[str, ...]]]
ESTIMATORS: dict[str, EstimatorFn] = {}
# estimator="auto" picks by the family's declared likelihood capability.
_AUTO = {"exact": "exact", "bound": "iwae", "none": "ais"}


# The number of particles an estimator uses when ``num_particles`` is not given (for labels).
DEFAULT_PARTICLES: dict[str, int] = {}
# Estimators whose random draws are shared by the examples of one call (Parzen's sample pool):
# their Monte Carlo error is measured per batch, not per example (see ``evaluate``).
_SHARED_DRAWS: set[str] = set()


def register_estimator(
    name: str, num_particles: int | None = None, *, shared_draws: bool = False
) -> Callable[[EstimatorFn], EstimatorFn]:
    """Decorator adding an estimator function under ``name``.

    Arguments:
        name: the name ``ppgen.evaluate(estimator=...)`` takes.
        num_particles: the estimator's default number of particles, if it has one; recorded in
            :data:`DEFAULT_PARTICLES` so evaluations are labelled with it (``"iwae-1000"``).
        shared_draws: True when the examples of one call share random draws whose outcome
            moves their conditional means together (a pool of model samples); False (the
            default) when each example's draws are its own, or shared draws leave every
            example's conditional mean unchanged (a proposal fitted on the batch, for an
            unbiased importance sampler). It decides how :func:`evaluate` measures the
            Monte Carlo error.
    """

    def add(fn: EstimatorFn) -> EstimatorFn:
        ESTIMATORS[name] = fn
        if num_particles is not None:
            DEFAULT_PARTICLES[name] = num_particles
        if shared_draws:
            _SHARED_DRAWS.add(name)
        else:
            _SHARED_DRAWS.discard(name)
        return fn

    return add


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


MC_EXAMPLES = 128  # examples scored a second time to measure the Monte Carlo error


@torch.no_grad()
def evaluate(
    model: AbstractGenerativeModel,
    data: Dataset | Tensor,
    estimator: str = "auto",
    num_particles: int | None = None,
    batch_size: int = 500,
    seed: int = 0,
    context: Tensor | None = None,
    mc_examples: int | None = MC_EXAMPLES,
    mask: Tensor | str | None = None,
    progress: bool | None = None,
    **options: Any,
) -> Evaluation:
    r"""Score ``data`` under ``model`` with a labelled estimator.

    **Monte Carlo error.** A stochastic estimator (ELBO, IWAE, AIS, a dequantized density,
    diffusion's bound with sampled times, Parzen) is run a second, independent time (another
    seed) on ``mc_examples`` examples drawn at random; with :math:`d_i` the difference of the
    two runs on example i, :math:`d_i^2 / 2` is an unbiased estimate of that example's Monte
    Carlo variance :math:`\sigma_i^2`, and since examples draw their own random numbers the
    variance of the dataset mean is :math:`\sum_i \sigma_i^2 / N^2`, estimated by
    :math:`\overline{d^2/2} / N` over the re-scored examples. Its square root is
    ``Evaluation.mc_stderr``. For an estimator whose examples share draws (Parzen's sample
    pool, ``register_estimator(shared_draws=True)``) the whole data are re-scored in the same
    batches and the variance is :math:`\sum_b n_b^2 d_b^2 / (2 N^2)` over batches (batches
    draw independently), which counts the correlation. The reported value itself is the first
    run's, the same number as without the error measurement. An exact result (kind
    ``"exact"``) is deterministic: ``mc_stderr`` is 0 and nothing is re-scored.

    Cost: ``min(N, mc_examples)`` examples scored once more (128 by default: +128/N of the
    evaluation's cost, double for N <= 128; all N for a shared-draws estimator); the estimate
    of the error itself is then good to about +-10% (its relative standard deviation is about
    ``1/sqrt(2 mc_examples)`` when examples' errors are alike). ``mc_examples=None`` re-scores
    every example; ``0`` skips the measurement (``mc_stderr`` None).

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
        mc_examples: examples re-scored to measure the Monte Carlo error (None: all; 0: none).
        mask: condition on the observed coordinates (True = observed; a name of
            ``ppgen.masks.named`` or a bool tensor): the result is then the conditional
            :math:`\log p(x_m \mid x_o)`, exact where the model's ordering allows it, else an
            importance-sampling estimate, in bits per *missing* dimension
            (:mod:`ppgen.inference.conditioning.density`; ``estimator`` is then
            ``"auto"``, ``"exact-conditional"`` or ``"importance"``).
        progress: a progress bar over the batches on stderr: ``None`` (the default) shows one
            on a terminal once the evaluation has run for 2 seconds (AIS over a test set takes
            minutes), ``True`` always, ``False`` never.
        **options: estimator-specific options (e.g. AIS's ``num_steps``), passed through; the
            family's ``estimator_defaults(name)`` fill the ones not given.

    Returns:
        An :class:`Evaluation` with per-example values, kind, estimator, units, the Monte Carlo
        standard error and notes (e.g. a model built for other levels than the data's).
    """
    if mask is not None:  # the conditional density of the missing part (issue 20)
        from ppgen.inference.conditioning.density import evaluate_conditional

        if num_particles is not None:
            options["num_particles"] = num_particles
        return evaluate_conditional(model, data, mask, seed, estimator, context, **options)
    x, labels = as_batch(data, what="ppgen.evaluate's data=")
    if model.conditional and context is None:
        context = labels
    context = model.check_inputs(x, context)  # weights, data and labels, before any work
    if model.conditional and context is None:
        raise ValueError(f"{type(model).__name__} is conditional: pass context (labels)")
    chosen: dict[str, Any] = {}
    why = None
    if estimator == "auto":  # the model chooses by the data's size (its own estimator, options)
        name, chosen, why = model.choose_estimator(int(x.shape[0]))
        name = name or model.default_estimator or _AUTO[model.likelihood]
    else:
        name = estimator
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; known: {sorted(ESTIMATORS)}")
    if mc_examples is not None and (isinstance(mc_examples, bool)
                                    or not isinstance(mc_examples, int) or mc_examples < 0):
        raise ValueError(
            f"mc_examples must be a non-negative integer or None, got {mc_examples!r}"
        )
    notes = _data_notes(model, data) + ((why,) if why else ())
    fn = ESTIMATORS[name]
    options = {**model.estimator_defaults(name), **chosen, **options}  # the caller's win
    if num_particles is None:
        num_particles = options.pop("num_particles", None)
    options.pop("num_particles", None)
    if num_particles is not None:
        options["num_particles"] = num_particles
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    was_training = model.training
    model.eval()
    rank, world = _rank_and_world()
    shard = torch.arange(x.shape[0]).tensor_split(world)[rank]  # contiguous, as under torchrun
    x = x[shard]
    context = None if context is None else context[shard]
    shared = name in _SHARED_DRAWS
    mc: tuple[float, int] | None = None
    try:
        run = dict(fn=fn, model=model, options=options, batch_size=batch_size,
                   device=device, dtype=dtype, progress=progress and rank == 0)
        per_example, kinds, found = _score(x=x, context=context, seed=seed, **run)
        notes = (*notes, *found)
        if mc_examples != 0 and kinds != {"exact"} and x.shape[0] > 0:
            mc = _mc_variance_terms(run, x, context, per_example, seed, shared,
                                    mc_examples, world)
    finally:
        model.train(was_training)
    if world > 1:  # gather every rank's values, in order, on every rank
        import torch.distributed as torch_dist

        gathered: list[Any] = [None] * world
        torch_dist.all_gather_object(gathered, (per_example, sorted(kinds), mc))
        per_example = torch.cat([g[0] for g in gathered])
        kinds = {k for g in gathered for k in g[1]}
        parts = [g[2] for g in gathered if g[2] is not None]
        mc = (sum(p[0] for p in parts), sum(p[1] for p in parts)) if parts else None
    assert len(kinds) == 1, f"estimator {name} mixed kinds {kinds}"
    k = num_particles if num_particles is not None else DEFAULT_PARTICLES.get(name)
    kind = kinds.pop()
    label = name if k is None or name in ("exact", "elbo") else f"{name}-{k}"
    if name == "exact" and kind == "lower_bound":
        label = "dequantized"  # the model's exact density, of the dequantized data
    n_total = per_example.shape[0]
    if kind == "exact":
        mc_stderr: float | None = 0.0
    elif mc is None or n_total == 0:
        mc_stderr = None
    elif shared:  # mc = (sum over batches of n_b^2 d_b^2 / 2, batches)
        mc_stderr = math.sqrt(mc[0]) / n_total
    else:  # mc = (sum over re-scored examples of d_i^2 / 2, their count)
        mc_stderr = math.sqrt(mc[0] / mc[1] / n_total)
    return Evaluation(per_example, kind, label,  # type: ignore[arg-type]
                      model.config.num_dims, _convention(model), mc_stderr, notes)


def _score(
    fn: EstimatorFn, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None,
    options: dict[str, Any], batch_size: int, device: torch.device, dtype: torch.dtype,
    seed: int, progress: bool | None = False, desc: str = "evaluate",
) -> tuple[Tensor, set[str], tuple[str, ...]]:
    """One run of an estimator over ``x`` in batches, on a forked RNG seeded with ``seed``:
    per-example values (float64, CPU), the kinds the batches returned and their notes (each
    distinct note once, in order)."""
    kinds: set[str] = set()
    notes: dict[str, None] = {}
    chunks = []
    starts = range(0, x.shape[0], batch_size)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in _progress_bar(starts, progress, desc):
            xb = x[start : start + batch_size].to(device=device, dtype=dtype)
            cb = None if context is None else context[start : start + batch_size].to(device)
            lp, kind, *extra = fn(model, xb, cb, **options)
            kinds.add(kind)
            notes.update(dict.fromkeys(extra[0] if extra else ()))
            chunks.append(lp.detach().double().cpu())
    values = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.float64)
    return values, kinds, tuple(notes)


def _progress_bar(batches: range, progress: bool | None, desc: str) -> Iterable[int]:
    """``batches``, through a tqdm bar on stderr when ``progress`` is True, or None on a
    terminal (then the bar appears only once the loop has run for 2 seconds)."""
    if progress is False or (progress is None and not sys.stderr.isatty()) or len(batches) < 2:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, desc=desc, unit="batch", dynamic_ncols=True, file=sys.stderr,
                delay=0 if progress else 2.0, leave=False)


_MC_DESC = "Monte Carlo error"  # the re-scoring run's bar


def _mc_seed(seed: int) -> int:
    """The seed of the Monte Carlo replicate: another stream than ``seed``'s."""
    return (seed * 6364136223846793005 + 1442695040888963407) % 2**63


def _mc_variance_terms(
    run: dict[str, Any], x: Tensor, context: Tensor | None, first: Tensor, seed: int,
    shared: bool, mc_examples: int | None, world: int,
) -> tuple[float, int]:
    """Re-score (a random subset of) this rank's examples with an independent seed; return the
    sum of the variance terms and their count (see :func:`evaluate`)."""
    n = x.shape[0]
    if shared:  # the same batches, every example: per-batch mean differences
        second, _, _ = _score(x=x, context=context, seed=_mc_seed(seed), desc=_MC_DESC, **run)
        total, batches = 0.0, 0
        for start in range(0, n, run["batch_size"]):
            a = first[start : start + run["batch_size"]]
            b = second[start : start + run["batch_size"]]
            total += float(a.numel() ** 2 * (a.mean() - b.mean()) ** 2 / 2)
            batches += 1
        return total, batches
    m = n if mc_examples is None else min(n, math.ceil(mc_examples / world))
    g = torch.Generator().manual_seed(_mc_seed(seed))
    idx = torch.randperm(n, generator=g)[:m].sort().values
    second, _, _ = _score(x=x[idx], context=None if context is None else context[idx],
                          desc=_MC_DESC, seed=_mc_seed(seed), **run)
    d = first[idx] - second
    return float((d.pow(2) / 2).sum()), m


def _data_notes(model: AbstractGenerativeModel, data: Dataset | Tensor) -> tuple[str, ...]:
    """Notes on a dataset whose declared kind/levels differ from those the model was built
    for: the data pass validation (their values lie in the model's support) but the number is
    a likelihood over the model's levels, not comparable with one over the data's."""
    if not isinstance(data, Dataset):
        return ()
    mine, theirs = model.config.levels, data.levels
    if mine == theirs:
        return ()
    def what(levels: int | None) -> str:
        return "continuous data" if levels is None else f"{levels} levels"
    if mine is not None and theirs is not None:
        return (
            f"the model was built for {mine} levels but dataset {data.name!r} declares "
            f"{theirs}: this is a likelihood over the model's {mine} levels (a uniform model "
            f"scores log2({mine}) = {math.log2(mine):.3f} bits/dim, against "
            f"{math.log2(theirs):.3f} over {theirs} levels), not comparable with a model built "
            f"for the data's levels; build the model on this data to compare",
        )
    return (
        f"the model was built for {what(mine)} but dataset {data.name!r} holds "
        f"{what(theirs)}: "
        + ("a density of the values as given, not a probability of their levels, "
           if mine is None else "a probability of the values taken as the model's levels, ")
        + "not comparable with a model built for the data; build the model on this data to "
          "compare",
    )


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size when a process group is running (torchrun)."""
    import torch.distributed as torch_dist

    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank(), torch_dist.get_world_size()
    return 0, 1


# Names that moved to the estimators' own modules, still importable from here: resolved on first
# use (PEP 562), so this module imports neither of the modules that import it.
_MOVED = {
    **dict.fromkeys(
        ("IWAE_PARTICLES", "estimate_elbo", "estimate_exact", "estimate_iwae",
         "estimate_parzen", "select_parzen_bandwidth"),
        "ppgen.inference.estimators",
    ),
    **dict.fromkeys(
        ("AIS_PARTICLES", "Sandwich", "annealing_schedule", "bdmc", "estimate_ais",
         "select_observation_scale"),
        "ppgen.inference.ais",
    ),
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
