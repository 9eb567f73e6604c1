r"""Posteriors over latent variables, as ArviZ ``InferenceData``.

:func:`posterior` draws from :math:`p(z \mid x)` of any model with latent sites, with its
networks fixed, in one of two ways:

- ``method="guide"``: the amortized variational posterior q(z | x) (cheap, approximate);
- ``method="nuts"``: Pyro's ``MCMC(NUTS)`` over the latent sites of ``model.model`` with ``x``
  observed (asymptotically exact). An implicit model, whose ``"x"`` site is a deterministic
  ``Delta``, is given the Gaussian observation ``N(g(z), s^2 I)`` first (``observation_scale``),
  so NUTS inverts a GAN's generator.

The draws become an ``InferenceData`` through ``arviz.from_dict`` (the 0.x API, pinned by the
project's ``arviz<1``) with one small builder per group: ``posterior`` (each latent site, dims
``(chain, draw, example, <site>_dim...)``), ``sample_stats`` (``lp`` and, per method,
``log_weight`` or NUTS's ``diverging``/``step_size``/``acceptance_rate``), ``log_likelihood``
(log p(x_i | z), dims ``(chain, draw, example)``) and ``observed_data``.

:func:`amortization_gap` splits log p(x) - ELBO into the approximation and amortization gaps of
Cremer et al. (2018), per example. :func:`inspect_latents` computes the numbers behind
``ppgen inspect``; :func:`ppgen.reports.inspect_report` draws and prints them.
"""

from __future__ import annotations

__all__ = [
    "AmortizationGap",
    "LatentInspection",
    "amortization_gap",
    "decode_mean",
    "inspect_latents",
    "latent_sites",
    "posterior",
]

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import Tensor

from ppgen.datasets.base import Dataset
from ppgen.inference.implicit import resolve_observation_scale, smooth_delta
from ppgen.models import traces
from ppgen.models.base import AbstractGenerativeModel

Method = Literal["guide", "nuts"]


def _arviz() -> Any:
    """ArviZ, imported without its once-a-day notice about the 1.x refactor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


@contextlib.contextmanager
def _frozen(model: AbstractGenerativeModel) -> Iterator[None]:
    """The networks fixed: no parameter gradient is built while latents are inferred."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)


def _as_batch(
    model: AbstractGenerativeModel, x: Dataset | Tensor, context: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    if isinstance(x, Dataset):
        if model.conditional and context is None:
            context = x.labels
        x = x.data
    model._check_x(x)
    if model.conditional and context is None:
        raise ValueError(f"{type(model).__name__} is conditional: pass context (labels)")
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
        context = None if context is None else context.to(param.device)
    return x, context


def latent_sites(model: AbstractGenerativeModel, x: Tensor, context: Tensor | None = None
                 ) -> list[str]:
    """The names of the latent sample sites of ``model.model`` on ``x``."""
    with torch.no_grad():
        return traces.latent_names(poutine.trace(model.model).get_trace(x, context))


# ---- draws ------------------------------------------------------------------------------------


def _guide_draws(
    model: AbstractGenerativeModel, x: Tensor, context: Tensor | None, num: int, nesting: int,
    names: list[str],
) -> dict[str, Tensor]:
    """``num`` guide draws per example, each site ``(num, N, *event)``."""
    with torch.no_grad(), traces.particles(num, nesting):
        tr = poutine.trace(model.guide).get_trace(x, context)
    missing = [nm for nm in names if nm not in tr.nodes]
    if missing:
        raise ValueError(
            f"the guide of {type(model).__name__} does not sample {missing}; use method='nuts'"
        )
    return {nm: _full(tr.nodes[nm], num, x.shape[0]) for nm in names}


def _full(site: dict[str, Any], k: int, n: int) -> Tensor:
    fn = site["fn"]
    v = site["value"].detach().expand(fn.batch_shape + fn.event_shape)
    return v.reshape(k, n, *fn.event_shape)


def _nuts_draws(
    model_fn: Callable[..., Any], x: Tensor, context: Tensor | None, names: list[str],
    num_samples: int, num_chains: int, warmup_steps: int, seed: int,
    target_accept: float, max_tree_depth: int,
) -> tuple[dict[str, Tensor], dict[str, np.ndarray]]:
    """NUTS chains run one after another (no worker processes), each seeded ``seed + c``."""
    from pyro.infer import MCMC, NUTS

    def conditioned() -> Any:
        return model_fn(x, context)

    chains: list[dict[str, Tensor]] = []
    stats: dict[str, list[np.ndarray]] = {"diverging": [], "step_size": [],
                                          "acceptance_rate": []}
    for c in range(num_chains):
        pyro.set_rng_seed(seed + c)
        kernel = NUTS(conditioned, target_accept_prob=target_accept,
                      max_tree_depth=max_tree_depth, jit_compile=False)
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup_steps,
                    num_chains=1, disable_progbar=True)
        mcmc.run()
        samples = mcmc.get_samples()
        chains.append({nm: samples[nm].reshape(num_samples, x.shape[0], -1) for nm in names})
        diverging = np.zeros(num_samples, dtype=bool)
        diag = mcmc.diagnostics()
        div = diag.get("divergences", {}).get("chain 0", [])
        diverging[[int(i) for i in div if 0 <= int(i) < num_samples]] = True
        stats["diverging"].append(diverging)
        stats["step_size"].append(np.full(num_samples, float(kernel.step_size)))
        rate = float(diag.get("acceptance rate", {}).get("chain 0", math.nan))
        stats["acceptance_rate"].append(np.full(num_samples, rate))
    draws = {nm: torch.stack([ch[nm] for ch in chains]) for nm in names}  # (C, S, N, flat)
    return draws, {k: np.stack(v) for k, v in stats.items()}


def _score_draws(
    model_fn: Callable[..., Any], x: Tensor, context: Tensor | None, values: dict[str, Tensor],
    nesting: int,
) -> tuple[Tensor, Tensor]:
    """log p(x, z) and log p(x | z) per (draw, example) for draws ``(S, N, ...)``."""
    s, n = next(iter(values.values())).shape[:2]
    with torch.no_grad(), traces.particles(s, nesting):
        tr = poutine.trace(poutine.condition(model_fn, data=values)).get_trace(x, context)
    rank, data_dim = nesting + 1, traces.data_dim(tr)
    log_joint = traces.log_density(tr, None, rank, data_dim, s, n)
    observed = [nm for nm in traces.sample_sites(tr) if nm not in values]
    log_lik = traces.log_density(tr, observed, rank, data_dim, s, n)
    return log_joint, log_lik


# ---- the ArviZ groups: one builder each, None when absent -------------------------------------


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _posterior_group(draws: dict[str, Tensor], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    return {nm: _np(v.reshape(*shape, *v.shape[1:])) for nm, v in draws.items()}


def _sample_stats_group(
    log_joint: Tensor, shape: tuple[int, int], extra: dict[str, np.ndarray] | None,
    log_weight: Tensor | None,
) -> dict[str, np.ndarray] | None:
    out: dict[str, np.ndarray] = {"lp": _np(log_joint.sum(-1).reshape(shape))}
    if log_weight is not None:
        out["log_weight"] = _np(log_weight.reshape(*shape, -1))
    if extra:
        out.update(extra)
    return out


def _log_likelihood_group(log_lik: Tensor, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    return {"x": _np(log_lik.reshape(*shape, -1))}


def _observed_group(x: Tensor) -> dict[str, np.ndarray]:
    return {"x": _np(x)}


def _dims(name: str, event_shape: tuple[int, ...]) -> list[str]:
    if len(event_shape) == 1:
        return ["example", f"{name}_dim"]
    return ["example", *(f"{name}_dim_{i}" for i in range(len(event_shape)))]


def posterior(
    model: AbstractGenerativeModel,
    x: Dataset | Tensor,
    method: Method = "guide",
    num_samples: int = 500,
    num_chains: int = 2,
    seed: int = 0,
    *,
    context: Tensor | None = None,
    warmup_steps: int | None = None,
    target_accept: float = 0.8,
    max_tree_depth: int = 8,
    observation_scale: float | None = None,
) -> Any:
    r"""Draws from :math:`p(z \mid x)` with the networks fixed, as ``arviz.InferenceData``.

    Arguments:
        model: a model with latent sites (a VAE, a GAN, a wrapped Pyro program...).
        x: data ``(N, *event_shape)`` or a Dataset (labels become the context of a conditional
            model). NUTS samples the N examples' latents jointly; keep N small (a few points).
        method: ``"guide"`` (the amortized q(z | x)) or ``"nuts"`` (Pyro's ``MCMC(NUTS)``).
        num_samples: draws per chain.
        num_chains: chains (NUTS chains run one after another, seeded ``seed + c``; guide draws
            are split into ``num_chains`` groups).
        seed: seeds every draw.
        context: labels of a conditional model when ``x`` is a tensor.
        warmup_steps: NUTS adaptation steps (default: ``num_samples``).
        target_accept: NUTS's target acceptance probability.
        max_tree_depth: NUTS's maximum tree depth.
        observation_scale: the Gaussian scale ``s`` for an implicit model's Delta at ``"x"``
            (default: the model's ``observation_scale``).

    Returns:
        ``arviz.InferenceData`` with groups ``posterior`` (each latent site, dims ``(chain,
        draw, example, <site>_dim)``), ``sample_stats`` (``lp``: log p(x, z) summed over the
        examples; ``log_weight`` for guide draws: log p(x, z) - log q(z | x) per example;
        ``diverging``, ``step_size``, ``acceptance_rate`` for NUTS), ``log_likelihood``
        (``x``: log p(x_i | z), dims ``(chain, draw, example)``) and ``observed_data``.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("moons", "val").subset(3)
        >>> m = ppgen.build("vae", ds, latent=2, hidden=[8])
        >>> idata = ppgen.posterior(m, ds, num_samples=10)
        >>> dict(idata.posterior["z"].sizes)
        {'chain': 2, 'draw': 10, 'example': 3, 'z_dim': 2}
    """
    if method not in ("guide", "nuts"):
        raise ValueError(f"method must be 'guide' or 'nuts', got {method!r}")
    if num_samples < 1 or num_chains < 1:
        raise ValueError("num_samples and num_chains must be positive")
    az = _arviz()
    x, context = _as_batch(model, x, context)
    scale = resolve_observation_scale(model, observation_scale)
    model_fn = smooth_delta(model.model, scale)
    n = x.shape[0]
    with _frozen(model), torch.random.fork_rng(devices=_cuda_devices(x)):
        torch.manual_seed(seed)
        mt, gt, nesting = traces.probe(model_fn, model.guide if method == "guide" else None, x,
                                 context)
        names = traces.latent_names(mt)
        if not names:
            raise ValueError(
                f"{type(model).__name__} has no latent sites: there is no posterior to draw"
            )
        event_shapes = {nm: tuple(mt.nodes[nm]["fn"].event_shape) for nm in names}
        shape = (num_chains, num_samples)
        extra, log_weight = None, None
        if method == "guide":
            total = num_chains * num_samples
            draws = _guide_draws(model, x, context, total, nesting, names)
            log_joint, log_lik = _score_draws(model_fn, x, context, draws, nesting)
            with torch.no_grad(), traces.particles(total, nesting):
                gtr = poutine.trace(poutine.condition(model.guide, data=draws)).get_trace(
                    x, context
                )
            log_q = traces.log_density(gtr, names, nesting + 1, traces.data_dim(mt), total, n)
            log_weight = log_joint - log_q
        else:
            raw, extra = _nuts_draws(
                model_fn, x, context, names, num_samples, num_chains,
                num_samples if warmup_steps is None else warmup_steps, seed, target_accept,
                max_tree_depth,
            )
            draws = {nm: v.reshape(-1, n, *event_shapes[nm]) for nm, v in raw.items()}
            log_joint, log_lik = _score_draws(model_fn, x, context, draws, nesting)
    dims = {nm: _dims(nm, event_shapes[nm]) for nm in names}
    dims["log_weight"] = ["example"]
    dims["x"] = ["example"]
    coords: dict[str, Any] = {"example": np.arange(n)}
    for nm in names:
        for d, size in zip(dims[nm][1:], event_shapes[nm], strict=True):
            coords[d] = np.arange(size)
    idata = az.from_dict(
        posterior=_posterior_group(draws, shape),
        sample_stats=_sample_stats_group(log_joint, shape, extra, log_weight),
        log_likelihood=_log_likelihood_group(log_lik, shape),
        coords=coords,
        dims=dims,
        attrs={"method": method, "model": type(model).__name__},
    )
    x_dims = {"x": _dims("x", tuple(model.event_shape))}
    x_coords = {d: np.arange(s) for d, s in zip(x_dims["x"][1:], model.event_shape, strict=True)}
    observed = az.from_dict(observed_data=_observed_group(x), coords={**coords, **x_coords},
                            dims=x_dims)
    idata.extend(observed)
    return idata


def _cuda_devices(x: Tensor) -> list[torch.device]:
    return [x.device] if x.device.type == "cuda" else []


# ---- the amortization gap ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AmortizationGap:
    r"""Per-example decomposition of the inference gap (Cremer et al. 2018, arXiv:1801.03558):

    .. math:: \log p(x) - \mathcal L[q_\phi] =
        \underbrace{\log p(x) - \mathcal L[q^*]}_{\text{approximation}} +
        \underbrace{\mathcal L[q^*] - \mathcal L[q_\phi]}_{\text{amortization}}

    where :math:`q_\phi` is the amortized guide and :math:`q^*` the best per-example member of
    the variational family, found by optimizing a local diagonal Gaussian per example.

    Every term is a Monte Carlo estimate, so a gap can come out slightly negative by chance. The
    ``*_var`` tensors hold each per-example estimate's Monte Carlo variance (an ELBO's: the
    sample variance of its K log-weights / K; the IWAE's: the delta method,
    :math:`\mathrm{Var}[w] / (K \bar w^2)`, which understates it when the weights are heavy
    tailed), and :meth:`mc_stderr` the standard error of a gap's mean. :meth:`flags` reads a
    negative mean gap against it: within ``k`` standard errors it is noise; beyond, a sign of a
    problem (q* not converged, a guide richer than q*'s family, an unconverged IWAE).

    Attributes:
        log_px: ``Tensor[N]``, the log-likelihood estimate (nats).
        elbo_amortized: the ELBO of the amortized guide.
        elbo_optimal: the ELBO of the locally optimized q*.
        log_px_var: the Monte Carlo variance of each ``log_px`` (None: unknown); likewise
            ``elbo_amortized_var`` and ``elbo_optimal_var``.
    """

    log_px: Tensor
    elbo_amortized: Tensor
    elbo_optimal: Tensor
    log_px_var: Tensor | None = None
    elbo_amortized_var: Tensor | None = None
    elbo_optimal_var: Tensor | None = None

    @property
    def approximation(self) -> Tensor:
        """log p(x) - ELBO[q*]: the cost of the variational family."""
        return self.log_px - self.elbo_optimal

    @property
    def amortization(self) -> Tensor:
        """ELBO[q*] - ELBO[q_phi]: the cost of sharing one encoder across examples."""
        return self.elbo_optimal - self.elbo_amortized

    @property
    def total(self) -> Tensor:
        """log p(x) - ELBO[q_phi]."""
        return self.log_px - self.elbo_amortized

    def mc_stderr(self, gap: Literal["approximation", "amortization", "total"]) -> float | None:
        """The Monte Carlo standard error of the mean of ``gap`` over examples, nats (the two
        estimates in a gap use independent draws; examples too); None when unknown."""
        terms = {"approximation": (self.log_px_var, self.elbo_optimal_var),
                 "amortization": (self.elbo_optimal_var, self.elbo_amortized_var),
                 "total": (self.log_px_var, self.elbo_amortized_var)}[gap]
        if terms[0] is None or terms[1] is None:
            return None
        n = self.log_px.shape[0]
        return float((terms[0] + terms[1]).double().sum().sqrt()) / n

    def flags(self, k: float = 3.0) -> list[str]:
        """One line for each gap whose mean is negative (a bound above what it bounds): within
        ``k`` Monte Carlo standard errors, noise; beyond, a sign of a problem."""
        causes = {
            "approximation": (
                "ELBO[q*] lies above the IWAE estimate of log p(x): the IWAE has not converged "
                "(raise num_particles) or a density does not normalize"
            ),
            "amortization": (
                "the per-example q* scores below the amortized guide: its fit did not converge "
                "(raise gap_steps) or the guide is richer than q*'s diagonal Gaussian (e.g. an "
                "IAF), so the split into approximation and amortization is not meaningful"
            ),
        }
        out = []
        for name, cause in causes.items():
            mean = float(getattr(self, name).double().mean())
            if mean >= 0:
                continue
            mc = self.mc_stderr(name)  # type: ignore[arg-type]
            if mc is not None and -mean <= k * mc:
                out.append(f"the {name} gap is negative ({mean:.4f} nats) but within {k:g} "
                           f"Monte Carlo standard errors ({mc:.4f}): noise, read it as 0")
            else:
                where = "" if mc is None else f" ({-mean / mc:.1f} Monte Carlo standard errors)"
                out.append(f"WARNING: the {name} gap is negative ({mean:.4f} nats) beyond its "
                           f"Monte Carlo error{where}: {cause}")
        return out

    def table(self) -> str:
        """One row per example, in nats."""
        rows = ["example  log p(x)   ELBO[q]   ELBO[q*]  approx. gap  amort. gap"]
        for i in range(self.log_px.shape[0]):
            rows.append(
                f"{i:7d}  {float(self.log_px[i]):8.3f}  {float(self.elbo_amortized[i]):8.3f}  "
                f"{float(self.elbo_optimal[i]):8.3f}  {float(self.approximation[i]):11.3f}  "
                f"{float(self.amortization[i]):10.3f}"
            )
        return "\n".join(rows)

    def __str__(self) -> str:
        def term(name: Literal["approximation", "amortization", "total"]) -> str:
            mc = self.mc_stderr(name)
            value = f"{float(getattr(self, name).mean()):.3f}"
            return value if mc is None else f"{value} ± {mc:.3f}"

        mc = "" if self.mc_stderr("total") is None else "; ± Monte Carlo standard errors"
        head = (
            f"inference gap {term('total')} nats = approximation {term('approximation')} + "
            f"amortization {term('amortization')} (mean over {self.log_px.shape[0]} "
            f"examples{mc})"
        )
        return "\n".join([head, *(f"  {f}" for f in self.flags())])


def _local_guide(
    names: list[str], locs: dict[str, Tensor], log_scales: dict[str, Tensor],
    supports: dict[str, Any], data_dim: int,
) -> Callable[..., None]:
    """A per-example diagonal Gaussian (in unconstrained space) over each latent site."""

    def guide(x: Tensor | None = None, context: Tensor | None = None) -> None:
        with pyro.plate("data", locs[names[0]].shape[0], dim=data_dim):
            for nm in names:
                base = dist.Normal(locs[nm], log_scales[nm].exp()).to_event(locs[nm].dim() - 1)
                t = torch.distributions.biject_to(supports[nm])
                pyro.sample(nm, dist.TransformedDistribution(base, t))

    return guide


def amortization_gap(
    model: AbstractGenerativeModel,
    x: Dataset | Tensor,
    context: Tensor | None = None,
    *,
    num_particles: int = 1000,
    steps: int = 300,
    lr: float = 0.05,
    elbo_particles: int = 16,
    seed: int = 0,
) -> AmortizationGap:
    """The approximation and amortization gaps per example (Cremer et al. 2018).

    q* is a diagonal Gaussian per example (in each latent site's unconstrained space; Cremer et
    al.'s "FFG"), started at the moments of the guide's draws and fitted by Adam on the ELBO with
    the networks fixed. For the VAE's default diagonal-Gaussian encoder this is exactly the
    guide's family; for a richer guide (IAF), q* is a reference family and the amortization gap
    may come out negative. log p(x) is the tighter of IWAE-``num_particles`` with either q.

    Arguments:
        model: a model with an amortized guide over its latent sites.
        x: a few examples ``(N, *event_shape)`` or a Dataset.
        context: labels of a conditional model.
        num_particles: samples for the final ELBO and IWAE estimates.
        steps: Adam steps fitting q*.
        lr: Adam's learning rate.
        elbo_particles: samples per step of the ELBO gradient.
        seed: seeds every draw.

    Returns:
        An :class:`AmortizationGap`.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("moons", "val").subset(2)
        >>> m = ppgen.build("vae", ds, latent=2, hidden=[8])
        >>> gap = amortization_gap(m, ds, num_particles=50, steps=10)
        >>> gap.approximation.shape, gap.amortization.shape
        (torch.Size([2]), torch.Size([2]))
    """
    if model.likelihood != "bound":
        raise ValueError(
            f"{type(model).__name__} has no amortized guide (likelihood={model.likelihood!r})"
        )
    x, context = _as_batch(model, x, context)
    n = x.shape[0]
    with _frozen(model), torch.random.fork_rng(devices=_cuda_devices(x)):
        torch.manual_seed(seed)
        mt, gt, nesting = traces.probe(model.model, model.guide, x, context)
        names = traces.latent_names(mt)
        if not names or gt is None or not set(names) <= set(traces.latent_names(gt)):
            raise ValueError("the amortization gap needs a guide over every latent site")
        data_dim = traces.data_dim(mt)
        supports = {nm: mt.nodes[nm]["fn"].support for nm in names}
        draws = _guide_draws(model, x, context, 64, nesting, names)
        locs, log_scales = {}, {}
        for nm in names:
            u = torch.distributions.biject_to(supports[nm]).inv(draws[nm])
            locs[nm] = u.mean(0).clone().requires_grad_(True)
            log_scales[nm] = u.std(0).clamp_min(1e-4).log().clone().requires_grad_(True)
        local = _local_guide(names, locs, log_scales, supports, data_dim)
        opt = torch.optim.Adam([*locs.values(), *log_scales.values()], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            with torch.enable_grad():
                log_w = traces.importance_log_weights(model.model, local, x, context,
                                                      elbo_particles, nesting)
                (-log_w.mean(0).sum()).backward()
            opt.step()
        with torch.no_grad():
            elbo_q, elbo_q_var = _mean_log_weight(model.model, model.guide, x, context,
                                                  num_particles, nesting)
            elbo_star, elbo_star_var = _mean_log_weight(model.model, local, x, context,
                                                        num_particles, nesting)
            # IWAE with the guide, in estimate_iwae's chunks
            chunk = traces.particle_chunk(num_particles, model, n, None)
            log_w = torch.cat([
                traces.importance_log_weights(model.model, model.guide, x, context, k, nesting)
                for k in _chunks(num_particles, chunk)
            ])
            iwae_q, iwae_q_var = traces.log_mean_exp(log_w), _delta_var(log_w)
            log_w = torch.cat([
                traces.importance_log_weights(model.model, local, x, context, k, nesting)
                for k in _chunks(num_particles, 100)
            ])
            iwae_star = torch.logsumexp(log_w, 0) - math.log(num_particles)
            iwae_star_var = _delta_var(log_w)
    best = iwae_q >= iwae_star
    return AmortizationGap(
        torch.where(best, iwae_q, iwae_star).detach(), elbo_q.detach(), elbo_star.detach(),
        torch.where(best, iwae_q_var, iwae_star_var).detach(), elbo_q_var.detach(),
        elbo_star_var.detach(),
    )


def _delta_var(log_w: Tensor) -> Tensor:
    r"""The delta-method Monte Carlo variance of :math:`\log \frac1K \sum_k w_k` per example,
    :math:`\widehat{\mathrm{Var}}[w] / (K \bar w^2)`, from log-weights ``(K, N)`` (computed
    on weights scaled by their maximum, so it cannot overflow)."""
    k = log_w.shape[0]
    if k < 2:
        return torch.full_like(log_w[0], math.inf)
    w = (log_w - log_w.max(0).values).exp()
    return w.var(0) / (k * w.mean(0).pow(2))


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - s) for s in range(0, total, size)]


def _mean_log_weight(
    model_fn: Callable[..., Any], guide_fn: Callable[..., Any], x: Tensor,
    context: Tensor | None, k: int, nesting: int,
) -> tuple[Tensor, Tensor]:
    """The ELBO per example (the mean of K log-weights) and its Monte Carlo variance (their
    sample variance / K; inf for K = 1)."""
    sums, squares = [], []
    dtype = x.dtype
    for c in _chunks(k, 100):
        log_w = traces.importance_log_weights(model_fn, guide_fn, x, context, c, nesting)
        dtype, log_w = log_w.dtype, log_w.double()
        sums.append(log_w.sum(0))
        squares.append(log_w.pow(2).sum(0))
    total, total_sq = torch.stack(sums).sum(0), torch.stack(squares).sum(0)
    mean = total / k
    if k < 2:
        return mean.to(dtype), torch.full_like(mean, math.inf)
    var = ((total_sq - k * mean.pow(2)) / (k - 1)).clamp_min(0)
    return mean.to(dtype), var / k


# ---- decoding and inspection (the numbers; ppgen.reports draws them) ----------------------------


def decode_mean(
    model: AbstractGenerativeModel, latents: dict[str, Tensor], context: Tensor | None = None
) -> Tensor:
    """The mean of p(x | z) (the ``"x"`` site's distribution mean; a draw where the family's
    distribution has no finite mean) for M latent values per site, ``(M, *event_shape)``.

    Arguments:
        model: the model.
        latents: site name -> ``(M, *site_event_shape)``.
        context: one context row (shape ``(1,)``) for a conditional model.
    """
    m = next(iter(latents.values())).shape[0]
    with torch.no_grad():
        nesting = traces.plate_nesting(poutine.trace(model.model).get_trace(None, context))
        values = {nm: v.reshape(m, *([1] * nesting), *v.shape[1:]) for nm, v in latents.items()}
        with traces.particles(m, nesting):
            tr = poutine.trace(poutine.condition(model.model, data=values)).get_trace(None,
                                                                                       context)
    site = tr.nodes["x"]
    try:
        mean = site["fn"].mean
        if not torch.isfinite(mean).all():
            raise NotImplementedError
    except NotImplementedError:
        mean = site["value"]
    shape = site["fn"].batch_shape + site["fn"].event_shape
    return mean.expand(shape).reshape(m, -1, *model.event_shape)[:, 0]


@dataclasses.dataclass
class LatentInspection:
    """The numbers behind ``ppgen inspect`` (:func:`inspect_latents`); drawn and printed by
    :func:`ppgen.reports.inspect_report`.

    Attributes:
        indices: the inspected examples' indices in the data, ``(P,)``, sorted.
        method: ``"nuts"`` or ``"guide"``.
        sites: the latent site names.
        summary: ``az.summary`` of the posterior (a pandas DataFrame) with ESS and R-hat.
        posterior: the ``InferenceData`` of the inspected points.
        pair: label (``method``, and ``"guide"`` beside NUTS where the model has one) -> the
            first example's posterior draws ``(S, D)``, every site's coordinates side by side.
        dim_names: the D coordinate names of ``pair`` (``"z[0]"``...).
        gap: the per-example amortization gap, for models with a guide.
        codes: ``E_q[z | x]`` of every example ``(N, 2)`` (one 2-D latent site and a guide),
            else None.
        code_site: the site ``codes`` are of.
        labels: the data's labels ``(N,)`` (colouring ``codes``), or None.
        traversals: decoded means ``(R, steps, *event_shape)``: one row per latent coordinate,
            swept from its prior 5% to 95% quantile around the first example's posterior mean.
        traversal_labels: the R row names.
        interpolations: decoded means between consecutive examples' posterior means
            ``(P - 1, steps, *event_shape)``, None for one example.
        interpolation_labels: their row names (``"0->1"``...).
    """

    indices: Tensor
    method: str
    sites: list[str]
    summary: Any
    posterior: Any
    pair: dict[str, np.ndarray]
    dim_names: list[str]
    gap: AmortizationGap | None
    codes: np.ndarray | None
    code_site: str | None
    labels: np.ndarray | None
    traversals: Tensor
    traversal_labels: list[str]
    interpolations: Tensor | None
    interpolation_labels: list[str]


def inspect_latents(
    model: AbstractGenerativeModel,
    data: Dataset,
    num_points: int = 4,
    seed: int = 0,
    method: Method = "nuts",
    *,
    num_samples: int = 300,
    num_chains: int = 2,
    observation_scale: float | None = None,
    gap_steps: int = 300,
) -> LatentInspection:
    """Look inside a latent-variable model, in numbers: what ``ppgen inspect`` computes.

    For ``num_points`` examples of ``data``: the posterior (``method``) with ``az.summary``
    (mean, sd, HDI, MCSE, bulk/tail ESS, R-hat), the first example's draws (NUTS against the
    guide's where both exist) and, for models with a guide, the per-example amortization gap.
    Over the whole split: the guide's posterior means (2-D latents), latent traversals (each
    latent dimension swept from its prior 5% to 95% quantile around an example's posterior
    mean) and interpolations between examples, decoded. :func:`ppgen.reports.inspect_report`
    draws and prints them.

    Arguments:
        model: a model with latent sites.
        data: a Dataset (its labels colour the codes and condition a conditional model).
        num_points: examples inspected.
        seed: seeds the choice of examples and every draw.
        method: ``"nuts"`` or ``"guide"``.
        num_samples: posterior draws per chain.
        num_chains: chains.
        observation_scale: for implicit models (see :func:`posterior`).
        gap_steps: Adam steps fitting the per-example q* of :func:`amortization_gap`.

    Returns:
        A :class:`LatentInspection`.
    """
    az = _arviz()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[: min(num_points, len(data))].sort().values
    x_all, c_all = _as_batch(model, data, None)
    x, c = x_all[idx], None if c_all is None else c_all[idx]
    names = latent_sites(model, x, c)
    if not names:
        raise ValueError(f"{type(model).__name__} has no latent variables to inspect")
    has_guide = model.likelihood == "bound"
    if method == "guide" and not has_guide:
        raise ValueError(f"{type(model).__name__} has no guide; use method='nuts'")
    idata = posterior(model, x, method, num_samples, num_chains, seed, context=c,
                      observation_scale=observation_scale)
    summary = az.summary(idata, var_names=names)
    # 1. the first example's posterior, NUTS beside the guide where both exist
    sets = {method: {nm: idata.posterior[nm].values[:, :, 0] for nm in names}}
    if method == "nuts" and has_guide:
        guide = posterior(model, x, "guide", num_samples, num_chains, seed, context=c)
        sets["guide"] = {nm: guide.posterior[nm].values[:, :, 0] for nm in names}
    flat = {
        label: np.concatenate([v.reshape(-1, int(np.prod(v.shape[2:]))) for v in d.values()], 1)
        for label, d in sets.items()
    }
    dim_names = [f"{nm}[{i}]" for nm in names for i in range(int(np.prod(
        idata.posterior[nm].values.shape[3:])))]
    # 2. the amortization gap per example
    gap = amortization_gap(model, x, c, seed=seed, steps=gap_steps) if has_guide else None
    # 3. codes of the whole split: one guide draw mean per example (guide) for the scatter
    latent_dims = {nm: math.prod(idata.posterior[nm].values.shape[3:]) for nm in names}
    codes, code_site = None, None
    if has_guide and len(names) == 1 and latent_dims[names[0]] == 2:
        code_site = names[0]
        draws = posterior(model, x_all, "guide", 8, 1, seed, context=c_all).posterior
        codes = draws[code_site].values.mean(axis=(0, 1)).reshape(len(x_all), 2)
    # 4. traversals and interpolations around the inspected examples' posterior means
    rows, row_labels, between, between_labels = _traversals(model, idata, names, x, c, seed)
    return LatentInspection(
        indices=idx, method=method, sites=names, summary=summary, posterior=idata, pair=flat,
        dim_names=dim_names, gap=gap, codes=codes, code_site=code_site,
        labels=None if data.labels is None else data.labels.numpy(),
        traversals=rows, traversal_labels=row_labels, interpolations=between,
        interpolation_labels=between_labels,
    )


def _traversals(
    model: AbstractGenerativeModel, idata: Any, names: list[str], x: Tensor,
    context: Tensor | None, seed: int, steps: int = 9, max_dims: int = 8,
) -> tuple[Tensor, list[str], Tensor | None, list[str]]:
    """Decoded traversals of example 0 (one row per latent coordinate) and interpolations
    between consecutive examples, around their posterior means."""
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else x.dtype
    means = {nm: torch.as_tensor(idata.posterior[nm].values.mean(axis=(0, 1)), dtype=dtype,
                                 device=x.device) for nm in names}  # (N, *event)
    c0 = None if context is None else context[:1]
    # prior quantiles of each latent coordinate set the traversal range
    with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices(x)):
        torch.manual_seed(seed)
        probe = poutine.trace(model.model).get_trace(None, c0)
        nesting = traces.plate_nesting(probe)
        with traces.particles(512, nesting):
            tr = poutine.trace(model.model).get_trace(None, c0)
    prior = {nm: tr.nodes[nm]["value"].reshape(512, -1) for nm in names}
    lo = {nm: torch.quantile(p.double(), 0.05, dim=0).to(dtype) for nm, p in prior.items()}
    hi = {nm: torch.quantile(p.double(), 0.95, dim=0).to(dtype) for nm, p in prior.items()}
    # traversals of example 0: one row per latent coordinate
    rows, labels = [], []
    for nm in names:
        base = means[nm][0].reshape(-1)
        for d in range(min(base.numel(), max_dims)):
            grid = torch.linspace(0, 1, steps, dtype=dtype, device=x.device)
            z = base.expand(steps, -1).clone()
            z[:, d] = lo[nm][d] + grid * (hi[nm][d] - lo[nm][d])
            latents = {other: means[other][0].reshape(1, -1).expand(steps, -1)
                       for other in names if other != nm}
            latents[nm] = z
            shaped = {k: v.reshape(steps, *means[k].shape[1:]) for k, v in latents.items()}
            rows.append(decode_mean(model, shaped, c0).cpu())
            labels.append(f"{nm}[{d}]")
    # interpolations between consecutive inspected examples
    between, between_labels = None, []
    if x.shape[0] >= 2:
        inter = []
        t = torch.linspace(0, 1, steps, dtype=dtype, device=x.device)
        for i in range(x.shape[0] - 1):
            latents = {
                nm: (means[nm][i].reshape(1, -1) * (1 - t[:, None])
                     + means[nm][i + 1].reshape(1, -1) * t[:, None]).reshape(
                         steps, *means[nm].shape[1:])
                for nm in names
            }
            ci = None if context is None else context[i : i + 1]
            inter.append(decode_mean(model, latents, ci).cpu())
            between_labels.append(f"{i}->{i + 1}")
        between = torch.stack(inter)
    return torch.stack(rows), labels, between, between_labels


def __getattr__(name: str) -> Any:
    """``inspect`` and ``InspectReport`` moved to :mod:`ppgen.reports` (a report draws, and
    inference never draws): the old names still resolve, with a ``DeprecationWarning``."""
    moved = {"inspect": "inspect_report", "InspectReport": "InspectReport"}
    if name in moved:
        warnings.warn(
            f"ppgen.inference.posterior.{name} is deprecated: use ppgen.reports.{moved[name]}",
            DeprecationWarning,
            stacklevel=2,
        )
        import importlib

        return getattr(importlib.import_module("ppgen.reports"), moved[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
