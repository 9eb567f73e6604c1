r"""``"nuts"``: NUTS over the missing coordinates with the model's exact joint density.

For a model implementing :class:`~ppgen.models.conditioning.DifferentiableDensity` (the flows,
FFJORD), the conditional :math:`p(x_m \mid x_o) \propto p(x_o, x_m)` is sampled by Pyro's
``MCMC(NUTS)`` on a Pyro program whose latent site ``"x_missing"`` holds the missing
coordinates and whose site ``"x"`` is the model's joint density with the assembled point
observed (``obs=``): the observed coordinates are conditioned, NUTS moves the rest.

Discrete data go through the dequantized density :math:`q(v)` on :math:`[0, L)^D`: the
missing coordinates are continuous in :math:`(0, L)` and the observed cells' dequantization
offsets :math:`u_o \in (0, 1)` are latent too (site ``"u_observed"``), so the chain targets
:math:`q(x_m, u_o \mid x_o) \propto q(x_o + u_o, v_m)`, whose ``floor(v_m)`` marginal is the
dequantized model's exact conditional over the levels. The draws are MCMC draws:
asymptotically exact; ``diagnostics`` gives R-hat, ESS, acceptance and divergences to judge
them by.
"""

from __future__ import annotations

__all__ = ["nuts"]

import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

from ppgen.inference.conditioning.api import MethodResult, register_imputer
from ppgen.models.base import AbstractGenerativeModel
from ppgen.models.conditioning import DifferentiableDensity


class _JointDensity(dist.TorchDistribution):
    """The model's ``continuous_log_prob`` as a distribution over ``(n, *event_shape)``
    points (scoring only: NUTS never samples it)."""

    arg_constraints: dict = {}  # noqa: RUF012
    support = constraints.real

    def __init__(
        self, model: DifferentiableDensity, event_shape: torch.Size, n: int,
        context: Tensor | None,
    ) -> None:
        self.model = model
        self.context = context
        super().__init__(torch.Size([n]), event_shape, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        return self.model.continuous_log_prob(value, self.context)


def _supports(model: AbstractGenerativeModel, observed: Tensor) -> str | None:
    if not isinstance(model, DifferentiableDensity):
        return f"{type(model).__name__} has no differentiable joint density"
    return None


def _stat(values: Tensor, fn: Any) -> float:
    finite = values[torch.isfinite(values)]
    return float(fn(finite)) if finite.numel() else math.nan


@register_imputer("nuts", supports=_supports, exact=False)
def nuts(
    model: AbstractGenerativeModel,
    x: Tensor,
    observed: Tensor,
    num_samples: int,
    generator: torch.Generator,
    seed: int,
    context: Tensor | None = None,
    *,
    num_chains: int = 2,
    warmup_steps: int = 100,
    num_draws: int | None = None,
    target_accept: float = 0.8,
    max_tree_depth: int = 8,
    **options: Any,
) -> MethodResult:
    r"""NUTS over the missing coordinates (see the module docstring).

    Arguments:
        num_chains: chains, run one after another, chain ``c`` seeded ``seed + c``.
        warmup_steps: adaptation steps per chain (discarded).
        num_draws: kept draws per chain; None is ``ceil(S / num_chains)``. The S completions
            are spread evenly over all kept draws.
        target_accept: NUTS's target acceptance probability.
        max_tree_depth: NUTS's tree depth limit.
    """
    from pyro.infer import MCMC, NUTS
    from pyro.infer.autoguide.initialization import init_to_value
    from pyro.ops.stats import effective_sample_size, split_gelman_rubin

    if options:
        raise ValueError(
            "method 'nuts' takes num_chains=, warmup_steps=, num_draws=, target_accept=, "
            f"max_tree_depth=; got {sorted(options)}"
        )
    for name, value, low in (("num_chains", num_chains, 1), ("warmup_steps", warmup_steps, 0),
                             ("max_tree_depth", max_tree_depth, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")
    assert isinstance(model, DifferentiableDensity)
    draws = num_draws if num_draws is not None else -(-num_samples // num_chains)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"num_draws must be an int >= 1 or None, got {num_draws!r}")
    n = x.shape[0]
    event = x.shape[1:]
    flat_obs = observed.reshape(-1)
    miss_idx = (~flat_obs).nonzero().squeeze(1)
    obs_idx = flat_obs.nonzero().squeeze(1)
    m = int(miss_idx.numel())
    discrete = model.config.kind != "continuous"
    levels = 2 if model.config.kind == "binary" else model.config.levels
    x_flat = x.reshape(n, -1)
    density = _JointDensity(model, event, n, context)

    def assemble(v_missing: Tensor, u_observed: Tensor | None) -> Tensor:
        full = x_flat.clone()
        if u_observed is not None:
            full[:, obs_idx] = x_flat[:, obs_idx] + u_observed
        full[:, miss_idx] = v_missing
        return full.reshape(n, *event)

    def program() -> None:
        with pyro.plate("data", n):
            if discrete:
                v = pyro.sample(
                    "x_missing",
                    dist.Uniform(x.new_zeros(()), x.new_full((), float(levels)))
                    .expand([n, m]).to_event(1),
                )
                u = pyro.sample(
                    "u_observed",
                    dist.Uniform(x.new_zeros(()), x.new_ones(())).expand([n, x_flat.shape[1]
                                                                          - m]).to_event(1),
                )
            else:
                v = pyro.sample(
                    "x_missing", dist.ImproperUniform(constraints.real, (n,), (m,))
                )
                u = None
            pyro.sample("x", density, obs=assemble(v, u))  # the observed coordinates, conditioned

    start = model.sample(n, generator=generator, context=context).reshape(n, -1)[:, miss_idx]
    init: dict[str, Tensor] = {"x_missing": start.to(x.dtype)}
    if discrete:
        init["x_missing"] = (init["x_missing"] + 0.5).clamp(0.01, levels - 0.01)
        init["u_observed"] = x.new_full((n, x_flat.shape[1] - m), 0.5)
    chains, accept, divergent, steps = [], [], 0, []
    for c in range(num_chains):
        torch.manual_seed(seed + c)
        kernel = NUTS(program, target_accept_prob=float(target_accept),
                      max_tree_depth=max_tree_depth, init_strategy=init_to_value(values=init),
                      jit_compile=False, max_plate_nesting=1)
        seen: dict[str, Any] = {}

        def record(kern: Any, params: Any, stage: str, i: int, seen: dict = seen) -> None:
            if stage == "Sample":  # this chain's post-warm-up acceptance and divergences
                seen.update(kern.diagnostics())

        mcmc = MCMC(kernel, num_samples=draws, warmup_steps=warmup_steps, num_chains=1,
                    disable_progbar=True, hook_fn=record)
        with torch.enable_grad():
            mcmc.run()
        chains.append(mcmc.get_samples()["x_missing"].detach())  # (T, n, m)
        accept.append(float(seen.get("acceptance rate", math.nan)))
        divergent += len(seen.get("divergences", []))
        steps.append(float(kernel.step_size))
    v_chains = torch.stack(chains)  # (C, T, n, m)
    values = torch.floor(v_chains).clamp(0, levels - 1) if discrete else v_chains
    full = x_flat.expand(num_chains, draws, n, -1).clone()
    full[..., miss_idx] = values.to(full.dtype)
    full = full.reshape(num_chains, draws, n, *event)
    pooled = full.reshape(num_chains * draws, n, *event)
    pick = torch.linspace(0, num_chains * draws - 1, num_samples).round().long()
    diagnostics: dict[str, Any] = {
        "num_chains": num_chains,
        "warmup_steps": warmup_steps,
        "draws_per_chain": draws,
        "acceptance_rate": sum(accept) / len(accept),
        "divergences": divergent,
        "step_size": sum(steps) / len(steps),
        "missing_dims": m,
    }
    flat_chains = v_chains.reshape(num_chains, draws, -1).double()
    if draws >= 4:  # fewer draws give meaningless (even negative) ESS figures
        ess = effective_sample_size(flat_chains, chain_dim=0, sample_dim=1)
        diagnostics["ess_min"] = _stat(ess, torch.min)
        diagnostics["ess_median"] = _stat(ess, torch.median)
    if num_chains >= 2 and draws >= 4:
        rhat = split_gelman_rubin(flat_chains, chain_dim=0, sample_dim=1)
        diagnostics["rhat_max"] = _stat(rhat, torch.max)
    diagnostics["notes"] = [
        f"NUTS over the missing coordinates ({num_chains} chains, {warmup_steps} warm-up "
        f"steps, {draws} draws each): MCMC draws from the exact conditional"
        + (" of the dequantized density" if discrete else "")
    ]
    return MethodResult(pooled[pick], diagnostics, full)
