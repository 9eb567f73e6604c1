r"""Data-space methods for models with an exact density: the exact conditional and Gibbs.

- ``"exact-ancestral"``: for a model implementing
  :class:`~ppgen.models.conditioning.ExactConditional` whose ordering puts the observed
  coordinates first, ancestral sampling of the missing ones from the model's own conditionals:
  independent, exact draws from :math:`p(x_m \mid x_o)`.
- ``"gibbs"``: for any model with an exact density of discrete data (no dequantization):
  Gibbs sampling over the levels of each missing coordinate, each full conditional
  :math:`p(x_d \mid x_{-d}) \propto p(x)` computed exactly by scoring every level. ``S``
  chains per example run in parallel (one per completion) for ``sweeps`` sweeps each; the
  completions are the chains' final states, **approximate** draws (a Markov chain after finite
  sweeps), with the split R-hat of ``log p(x)`` over each chain's second half as a check.
"""

from __future__ import annotations

__all__ = ["gibbs", "exact_ancestral", "split_rhat"]

from typing import Any

import torch
from torch import Tensor

from ppgen.inference.conditioning.api import MethodResult, register_imputer
from ppgen.models.base import AbstractGenerativeModel
from ppgen.models.conditioning import ExactConditional


def _exact_supports(model: AbstractGenerativeModel, observed: Tensor) -> str | None:
    if not isinstance(model, ExactConditional):
        return f"{type(model).__name__} has no exact conditional"
    return model.exact_conditional_reason(observed)


@register_imputer("exact-ancestral", supports=_exact_supports, exact=True)
def exact_ancestral(
    model: AbstractGenerativeModel,
    x: Tensor,
    observed: Tensor,
    num_samples: int,
    generator: torch.Generator,
    seed: int,
    context: Tensor | None = None,
    **options: Any,
) -> MethodResult:
    """Independent draws from the model's exact conditional (see the module docstring)."""
    if options:
        raise ValueError(f"method 'exact-ancestral' takes no options, got {sorted(options)}")
    assert isinstance(model, ExactConditional)
    with torch.no_grad():
        samples = model.sample_conditional(x, observed, num_samples, generator, context)
    note = model.exact_conditional_note(observed)
    diagnostics: dict[str, Any] = {"missing_dims": int((~observed).sum())}
    if note:
        diagnostics["notes"] = [note]
    return MethodResult(samples, diagnostics)


def _gibbs_supports(model: AbstractGenerativeModel, observed: Tensor) -> str | None:
    if model.likelihood != "exact":
        return f"{type(model).__name__} has no exact density (likelihood={model.likelihood!r})"
    if model.dequantizes or model.config.kind == "continuous":
        return "Gibbs over levels needs discrete data scored exactly (no dequantization)"
    return None


def split_rhat(trace: Tensor) -> Tensor:
    """Split R-hat (Gelman et al. 2013) of ``trace (C, T, n)``: ``C`` chains of ``T`` draws of
    ``n`` scalars -> ``(n,)``; each chain is split in two halves. NaN where a chain is
    constant."""
    c, t = trace.shape[:2]
    half = t // 2
    if half < 2:
        return torch.full(trace.shape[2:], float("nan"), dtype=torch.float64)
    parts = torch.cat([trace[:, :half], trace[:, half : 2 * half]], 0).double()  # (2C, h, n)
    m = parts.shape[1]
    means = parts.mean(1)
    within = parts.var(1, unbiased=True).mean(0)
    between = m * means.var(0, unbiased=True)
    var_plus = (m - 1) / m * within + between / m
    return (var_plus / within).sqrt()


@register_imputer("gibbs", supports=_gibbs_supports, exact=False)
def gibbs(
    model: AbstractGenerativeModel,
    x: Tensor,
    observed: Tensor,
    num_samples: int,
    generator: torch.Generator,
    seed: int,
    context: Tensor | None = None,
    *,
    sweeps: int = 20,
    init: str = "model",
    **options: Any,
) -> MethodResult:
    r"""Gibbs sampling over the levels of the missing coordinates with the exact joint density.

    Arguments:
        sweeps: full passes over the missing coordinates (each in a fresh random order).
        init: ``"model"`` starts each chain at the missing part of an unconditional model draw;
            ``"uniform"`` at uniformly random levels.

    The chains' traces of :math:`\log p(x)` give ``diagnostics["rhat_log_prob_max"]`` (over
    examples; near 1 when the chains mix) and the per-sweep change rate.
    """
    if options:
        raise ValueError(f"method 'gibbs' takes sweeps= and init=, got {sorted(options)}")
    if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps < 1:
        raise ValueError(f"sweeps must be an int >= 1, got {sweeps!r}")
    if init not in ("model", "uniform"):
        raise ValueError(f"init must be 'model' or 'uniform', got {init!r}")
    n = x.shape[0]
    levels = 2 if model.config.kind == "binary" else int(model.config.levels)
    flat_obs = observed.reshape(-1)
    missing = (~flat_obs).nonzero().squeeze(1)
    s = num_samples
    ctx = None if context is None else context.repeat(s)
    state = x.unsqueeze(0).repeat(s, *([1] * x.dim())).reshape(s * n, -1)  # (S n, D)
    if init == "model":
        draw = model.sample(s * n, generator=generator, context=ctx).reshape(s * n, -1)
        state[:, missing] = draw[:, missing].to(state.dtype)
    else:
        state[:, missing] = torch.randint(
            levels, (s * n, missing.numel()), generator=generator, device=x.device
        ).to(state.dtype)
    values = torch.arange(levels, device=x.device, dtype=state.dtype)
    trace, changed = [], 0.0

    def score(points: Tensor, c: Tensor | None) -> Tensor:
        return model.log_prob(points.reshape(-1, *x.shape[1:]), c)

    with torch.no_grad():
        for _ in range(sweeps):
            order = missing[torch.randperm(missing.numel(), generator=generator,
                                           device=x.device)]
            moved = 0
            for d in order.tolist():
                trial = state.unsqueeze(0).repeat(levels, 1, 1)  # (L, S n, D)
                trial[:, :, d] = values[:, None]
                c = None if ctx is None else ctx.repeat(levels)
                log_p = score(trial.reshape(-1, state.shape[1]), c).reshape(levels, s * n)
                u = torch.rand(s * n, generator=generator, device=x.device, dtype=log_p.dtype)
                probs = torch.softmax(log_p.double(), 0)
                pick = (probs.cumsum(0) < u.double()[None]).sum(0).clamp_max(levels - 1)
                new = values[pick]
                moved += int((new != state[:, d]).sum())
                state[:, d] = new
            changed = moved / max(1, missing.numel() * s * n)
            trace.append(score(state, ctx).reshape(s, n).double())
    samples = state.reshape(s, n, *x.shape[1:])
    stacked = torch.stack(trace, 1)  # (S, sweeps, n): S chains
    rhat = split_rhat(stacked) if s >= 2 or sweeps >= 4 else None
    diagnostics: dict[str, Any] = {
        "sweeps": sweeps,
        "missing_dims": int(missing.numel()),
        "change_rate_last_sweep": changed,
        "notes": [
            f"Gibbs sampling ({sweeps} sweeps from {init} starts): approximate draws from the "
            "exact conditional"
        ],
    }
    if rhat is not None and bool(torch.isfinite(rhat).any()):
        diagnostics["rhat_log_prob_max"] = float(rhat[torch.isfinite(rhat)].max())
    return MethodResult(samples, diagnostics)
