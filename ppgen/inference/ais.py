r"""Annealed importance sampling (AIS) over a model's latent sites, bidirectional Monte Carlo
(BDMC) to bound its error on simulated data, and the observation scale of an implicit model.

AIS (Neal 2001) anneals from the prior to the posterior of the latents through
:math:`p(z)\,p(x \mid z)^{\beta_t}` with HMC transitions; the mean of its importance weights is
unbiased for :math:`p(x)`, so its log is an *estimate* that is low in expectation (labelled
``estimate``). On an implicit model (a ``Delta`` at ``"x"``), the observation is smoothed to
``Normal(G(z), s)`` first (:func:`ppgen.inference.implicit.smooth_delta`).

References:
    Neal (2001), Annealed importance sampling, arXiv:physics/9803008.
    Wu, Burda, Salakhutdinov, Grosse (2017), On the quantitative analysis of decoder-based
    generative models, arXiv:1611.04273.
    Grosse, Ghahramani, Adams (2015), Sandwiching the marginal likelihood using bidirectional
    Monte Carlo, arXiv:1511.02543.
"""

from __future__ import annotations

__all__ = [
    "AIS_PARTICLES",
    "Sandwich",
    "annealing_schedule",
    "bdmc",
    "estimate_ais",
    "select_observation_scale",
]

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import pyro
import torch
from pyro import poutine
from torch import Tensor

from ppgen.datasets.base import Dataset
from ppgen.inference.implicit import resolve_observation_scale, smooth_delta
from ppgen.inference.likelihood import Kind, evaluate, register_estimator
from ppgen.models import traces
from ppgen.models.base import AbstractGenerativeModel

AIS_PARTICLES = 16


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
        >>> from ppgen.inference.ais import annealing_schedule
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
        with traces.particles(self.k, self.nesting):
            mt = poutine.trace(poutine.condition(self.model_fn, data=z)).get_trace(
                self.x, self.context
            )
            log_f1 = traces.log_density(mt, None, rank, self.data_dim, self.k, self.n) + ladj
            if self.guide_fn is None:
                log_f0 = traces.log_density(mt, self.names, rank, self.data_dim, self.k, self.n)
            else:
                gt = poutine.trace(poutine.condition(self.guide_fn, data=z)).get_trace(
                    self.x, self.context
                )
                log_f0 = traces.log_density(gt, self.names, rank, self.data_dim, self.k, self.n)
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
    model_fn = smooth_delta(model.model, resolve_observation_scale(model, observation_scale))
    xp = x if probe_x is None else probe_x
    mt, gt, nesting = traces.probe(model_fn, model.guide, xp, context)
    names = traces.latent_names(mt)
    if not names:
        raise ValueError("AIS needs latent sites; this model has none (use 'exact' or 'iwae')")
    if initial not in ("auto", "guide", "prior"):
        raise ValueError(f"initial must be auto, guide or prior, got {initial!r}")
    guided = set(traces.latent_names(gt)) if gt is not None else set()
    use_guide = initial == "guide" or (initial == "auto" and set(names) <= guided)
    if use_guide and not set(names) <= guided:
        raise ValueError(
            f"initial='guide' needs the guide to sample every latent site {names}; it samples "
            f"{sorted(guided)}; use initial='prior'"
        )
    data_dim = traces.data_dim(mt)
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
        traces.require_local(mt.nodes[name])
    n = xp.shape[0]
    target = _AnnealingTarget(
        model_fn, model.guide if use_guide else None, x, context, names, transforms,
        event_dims, nesting, data_dim, k, n,
    )
    return target, {"use_guide": use_guide}


def _initial_latents(target: _AnnealingTarget) -> dict[str, Tensor]:
    """K draws per example from f_0 (the guide, or the prior inside the model)."""
    fn = target.guide_fn if target.guide_fn is not None else target.model_fn
    with torch.no_grad(), traces.particles(target.k, target.nesting):
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
    chunk = traces.particle_chunk(num_particles, model, x.shape[0], particle_chunk)
    parts = []
    for start in range(0, num_particles, chunk):
        kc = min(chunk, num_particles - start)
        target, _info = _ais_target(model, x, context, kc, initial, observation_scale)
        z0 = _initial_latents(target)
        parts.append(_run_ais(target, z0, betas, leapfrog_steps=leapfrog_steps,
                              step_size=step_size, target_accept=target_accept))
    return traces.log_mean_exp(torch.cat(parts)), "estimate"


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
    scale = resolve_observation_scale(model, observation_scale)
    model_fn = smooth_delta(model.model, scale)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        # 1. simulate (x, z) ~ p: N draws under an outer plate left of the program's plates
        with torch.no_grad():
            probe = poutine.trace(model_fn).get_trace(None, context)
            nesting = traces.plate_nesting(probe)
            if context is None:
                with pyro.plate("bdmc", num_examples, dim=-(nesting + 1)):
                    tr = poutine.trace(model_fn).get_trace(None, context)
            else:
                tr = probe
        n = num_examples if context is None else context.shape[0]
        x = tr.nodes["x"]["value"].reshape(n, *model.event_shape)
        latents = traces.latent_names(tr)
        z_true = {nm: tr.nodes[nm]["value"].reshape(n, *tr.nodes[nm]["fn"].event_shape)
                  for nm in latents}
        target, _info = _ais_target(model, x, context, num_particles, initial, scale)
        kw = {"leapfrog_steps": leapfrog_steps, "step_size": step_size,
              "target_accept": target_accept}
        # 2. forward AIS from f_0: a stochastic lower bound
        lower = traces.log_mean_exp(_run_ais(target, _initial_latents(target), betas, **kw))
        # 3. reverse AIS from the exact latents: minus a lower bound on log 1/p(x)
        z0 = {nm: v.unsqueeze(0).expand(num_particles, *v.shape) for nm, v in z_true.items()}
        upper = -traces.log_mean_exp(_run_ais(target, z0, betas, reverse=True, **kw))
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
                      **{"mc_examples": 0, **ais_options})  # only the value is compared
        scores.append(-ev.nats)
    return float(grid[int(torch.tensor(scores).argmax())])
