r"""The conditional density of the missing part: ``ppgen.evaluate(model, data, mask=...)``.

:math:`\log p(x_m \mid x_o)` per example, in nats, labelled as every ppgen number is:

- ``exact``: a model implementing :class:`~ppgen.models.conditioning.ExactConditional` whose
  ordering allows the mask (the observed coordinates first) gives it directly
  (estimator ``"exact-conditional"``);
- ``estimate``: otherwise, for a model with an exact joint density,
  :math:`\log p(x) - \log \hat p(x_o)`, with

  .. math:: \hat p(x_o) = \frac1K \sum_{k=1}^K \frac{p(x_o, x_m^{(k)})}{q(x_m^{(k)})},
      \quad x_m^{(k)} \sim q,

  an importance-sampling estimate over the missing coordinates (estimator
  ``"is-K"``). The proposal :math:`q` is fitted per example to draws of ``ppgen.impute``
  (independent Gaussians with widened scales for continuous coordinates; per-coordinate level
  frequencies mixed with 50% uniform for discrete ones), so it covers the conditional's
  support. :math:`\hat p(x_o)` is unbiased; its log, and so the conditional, is an
  **estimate** (biased by Jensen's gap, which shrinks with K), reported with the delta-method
  Monte Carlo standard error :math:`\sqrt{\widehat{\mathrm{Var}}(w) / (K \bar w^2)}` per
  example. The estimate of the conditional log-density is biased *upward* (optimistic, fewer
  bits) by that Jensen gap, and the delta-method error understates it when the weights are
  heavy-tailed: the notes give the smallest importance-weight ESS over the examples; compare
  with a larger ``num_particles`` before trusting a digit. For a dequantized model
  :math:`p(x)` is itself the unbiased one-draw dequantization estimate, folded into the same
  weights.

A ratio of bounds is never reported as a bound: the families with only a bound on
:math:`\log p(x)` need their own estimator of :math:`\log p(x_o)`, added to
:data:`CONDITIONAL_DENSITIES` (tried in order, each with a ``supports`` check).
"""

from __future__ import annotations

__all__ = [
    "CONDITIONAL_DENSITIES",
    "ConditionalScore",
    "ConditionalDensityFn",
    "conditional_log_prob",
    "evaluate_conditional",
    "register_conditional_density",
]

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ppgen.inference.conditioning.api import _groups, impute, prepare
from ppgen.models.base import AbstractGenerativeModel
from ppgen.models.conditioning import ExactConditional


@dataclasses.dataclass
class ConditionalScore:
    """What a conditional-density estimator returns for rows sharing a mask.

    Attributes:
        value: ``log p(x_m | x_o)`` per example, nats, ``(n,)``.
        kind: ``"exact"`` or ``"estimate"``.
        label: the estimator's name (``"exact-conditional"``, ``"is-256"``).
        variance: the Monte Carlo variance of each value, ``(n,)``, or None (exact).
        notes: remarks for the reader (e.g. the smallest importance-weight ESS).
    """

    value: Tensor
    kind: str
    label: str
    variance: Tensor | None = None
    notes: tuple[str, ...] = ()


#: ``fn(model, x, observed, seed, context, **options) -> ConditionalScore`` for rows sharing
#: one mask ``observed`` (bool, ``event_shape``).
ConditionalDensityFn = Callable[..., ConditionalScore]
SupportsFn = Callable[[AbstractGenerativeModel, Tensor], "str | None"]

#: The conditional-density estimators, tried in order: ``(name, supports, fn)``.
CONDITIONAL_DENSITIES: list[tuple[str, SupportsFn, ConditionalDensityFn]] = []


def register_conditional_density(
    name: str, supports: SupportsFn
) -> Callable[[ConditionalDensityFn], ConditionalDensityFn]:
    """Decorator adding a conditional-density estimator (tried after those already there)."""

    def add(fn: ConditionalDensityFn) -> ConditionalDensityFn:
        CONDITIONAL_DENSITIES.append((name, supports, fn))
        return fn

    return add


def _exact_supports(model: AbstractGenerativeModel, observed: Tensor) -> str | None:
    if not isinstance(model, ExactConditional):
        return f"{type(model).__name__} has no exact conditional"
    return model.exact_conditional_reason(observed)


@register_conditional_density("exact-conditional", _exact_supports)
def _exact(
    model: AbstractGenerativeModel, x: Tensor, observed: Tensor, seed: int,
    context: Tensor | None = None, **_: Any,
) -> ConditionalScore:
    assert isinstance(model, ExactConditional)
    with torch.no_grad():
        value = model.log_prob_conditional(x, observed, context)
    return ConditionalScore(value, "exact", "exact-conditional")


def _joint_supports(model: AbstractGenerativeModel, observed: Tensor) -> str | None:
    if model.likelihood != "exact":
        return (
            f"{type(model).__name__} has no exact joint density (likelihood="
            f"{model.likelihood!r}) and no conditional-density estimator of its own"
        )
    return None


@register_conditional_density("importance", _joint_supports)
def _importance(
    model: AbstractGenerativeModel, x: Tensor, observed: Tensor, seed: int,
    context: Tensor | None = None, *, num_particles: int = 256, proposal_draws: int = 32,
    **impute_options: Any,
) -> ConditionalScore:
    """``log p(x) - log p_hat(x_o)`` by importance sampling (see the module docstring)."""
    n = x.shape[0]
    k = int(num_particles)
    if k < 2:
        raise ValueError(f"num_particles must be >= 2 for the importance estimate, got {k}")
    miss = (~observed.reshape(-1)).nonzero().squeeze(1)
    m = int(miss.numel())
    kind = model.config.kind
    fit = impute(model, x, observed, num_samples=int(proposal_draws), seed=seed,
                 context=context, **impute_options)
    draws = fit.samples.reshape(fit.num_samples, n, -1)[:, :, miss].double()  # (S, n, m)
    gen = torch.Generator(device=x.device).manual_seed(seed + 1)
    with torch.no_grad():
        if kind == "continuous":
            loc = draws.mean(0)
            scale = (1.5 * draws.std(0) if fit.num_samples > 1 else torch.ones_like(loc))
            scale = scale.clamp_min(0.05 * float(draws.std().clamp_min(1e-3)))
            eps = torch.randn((k, n, m), generator=gen, device=x.device, dtype=torch.float64)
            proposal = loc + scale * eps
            log_q = torch.distributions.Normal(loc, scale).log_prob(proposal).sum(-1)  # (K, n)
        else:
            levels = 2 if kind == "binary" else int(model.config.levels)
            onehot = torch.nn.functional.one_hot(draws.long(), levels).double().mean(0)
            probs = 0.5 * onehot + 0.5 / levels  # (n, m, L)
            pick = torch.multinomial(probs.reshape(-1, levels), k, replacement=True,
                                     generator=gen)  # (n m, K)
            proposal = pick.reshape(n, m, k).permute(2, 0, 1).double()
            log_q = probs.log().unsqueeze(0).expand(k, -1, -1, -1).gather(
                -1, pick.reshape(n, m, k).permute(2, 0, 1).unsqueeze(-1)
            ).squeeze(-1).sum(-1)
        full = x.reshape(1, n, -1).repeat(k, 1, 1)
        full[:, :, miss] = proposal.to(full.dtype)
        ctx = None if context is None else context.repeat(k)
        log_joint = model.log_prob(full.reshape(k * n, *x.shape[1:]), ctx).reshape(k, n).double()
        log_w = log_joint - log_q
        log_marginal = torch.logsumexp(log_w, 0) - math.log(k)
        w = (log_w - log_w.max(0).values).exp()
        rel_var = w.var(0, unbiased=True) / (k * w.mean(0) ** 2)  # Var(log p_hat(x_o)) approx.
        ess = w.sum(0) ** 2 / (w**2).sum(0)
        log_p = model.log_prob(x, context).double()
    note = (
        f"importance sampling over the missing coordinates: smallest weight ESS "
        f"{float(ess.min()):.1f} of {k}; the estimate is optimistic by Jensen's gap, larger "
        "with a small ESS"
    )
    return ConditionalScore(log_p - log_marginal, "estimate", f"is-{k}", rel_var, (note,))


def _pick(model: AbstractGenerativeModel, observed: Tensor, estimator: str) -> tuple[
    str, ConditionalDensityFn
]:
    reasons = []
    for name, supports, fn in CONDITIONAL_DENSITIES:
        if estimator not in ("auto", name):
            continue
        why = supports(model, observed)
        if why is None:
            return name, fn
        reasons.append(f"{name}: {why}")
    if estimator != "auto" and not reasons:
        known = [c[0] for c in CONDITIONAL_DENSITIES]
        raise ValueError(f"unknown conditional estimator {estimator!r}; known: {known}")
    raise ValueError(
        f"no conditional density of {type(model).__name__} for this mask: {'; '.join(reasons)}"
    )


def conditional_log_prob(
    model: AbstractGenerativeModel,
    x: Tensor,
    mask: Tensor | str,
    seed: int = 0,
    estimator: str = "auto",
    context: Tensor | None = None,
    **options: Any,
) -> tuple[ConditionalScore, Tensor]:
    r""":math:`\log p(x_m \mid x_o)` per example (see the module docstring).

    Arguments:
        model: a ppgen model.
        x: ``(N, *event_shape)`` data.
        mask: True = observed (a name or a bool tensor); at least one coordinate missing.
        seed: seeds the importance sampler and its proposal's draws.
        estimator: ``"auto"`` (the first of :data:`CONDITIONAL_DENSITIES` that applies),
            ``"exact-conditional"`` or ``"importance"``.
        context: labels of a class-conditional model.
        **options: the importance sampler's ``num_particles`` (256) and ``proposal_draws``
            (32), then options of the imputation method that fits the proposal.

    Returns:
        ``(score, missing-coordinate counts (N,))``: the :class:`ConditionalScore` of all
        ``N`` examples (kind ``exact`` only if every mask group was exact).
    """
    xv, observed, context = prepare(model, x, mask, context, seed, complete=True)
    missing = (~observed).reshape(xv.shape[0], -1).sum(1)
    if bool((missing == 0).any()):
        raise ValueError(
            "the mask leaves nothing missing in some examples: the conditional density of an "
            "empty set is 1; mark at least one coordinate missing (False) per example"
        )
    values = torch.empty(xv.shape[0], dtype=torch.float64)
    variance: Tensor | None = None
    kinds, labels = set(), set()
    notes: list[str] = []
    from ppgen.inference.posterior import _cuda_devices, _frozen

    with _frozen(model), torch.random.fork_rng(devices=_cuda_devices(xv)):
        torch.manual_seed(seed)
        for g, (pattern, rows) in enumerate(_groups(observed)):
            name, fn = _pick(model, pattern, estimator)
            cb = None if context is None else context[rows]
            score = fn(model, xv[rows], pattern, seed * 1000 + g, cb, **options)
            values[rows.cpu()] = score.value.detach().double().cpu()
            if score.variance is not None:
                variance = torch.zeros_like(values) if variance is None else variance
                variance[rows.cpu()] = score.variance.detach().double().cpu()
            kinds.add(score.kind)
            labels.add(score.label)
            notes.extend(n for n in score.notes if n not in notes)
    kind = "exact" if kinds == {"exact"} else "estimate"
    return ConditionalScore(values, kind, "+".join(sorted(labels)), variance, tuple(notes)), \
        missing.cpu()


def evaluate_conditional(
    model: AbstractGenerativeModel,
    data: Any,
    mask: Tensor | str,
    seed: int = 0,
    estimator: str = "auto",
    context: Tensor | None = None,
    **options: Any,
) -> Any:
    """``ppgen.evaluate(model, data, mask=mask)``: an ``Evaluation`` of the missing part given
    the observed part, in nats per example and bits per **missing** dimension
    (``num_dims`` is the number of missing coordinates per example, which must be the same
    for every example: a named mask, or per-example masks with equal counts)."""
    from ppgen.inference.likelihood import Evaluation, _convention

    score, missing = conditional_log_prob(model, data, mask, seed, estimator, context,
                                          **options)
    values, kind, label, variance = score.value, score.kind, score.label, score.variance
    counts = missing.unique()
    if counts.numel() != 1:
        raise ValueError(
            f"the mask leaves {int(counts.min())} to {int(counts.max())} coordinates missing "
            "per example; bits per missing dim needs the same count in every example (use a "
            "named mask or per-example masks with equal counts)"
        )
    n = values.shape[0]
    mc = 0.0 if kind == "exact" else (
        None if variance is None else math.sqrt(float(variance.sum())) / n
    )
    notes: tuple[str, ...] = (
        f"conditional: log p(x_missing | x_observed), {int(counts[0])} of "
        f"{model.config.num_dims} coordinates missing; bits per missing dim",
    )
    notes += score.notes
    return Evaluation(values, kind, label, int(counts[0]),  # type: ignore[arg-type]
                      _convention(model), mc, notes)
