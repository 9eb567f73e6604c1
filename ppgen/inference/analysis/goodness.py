"""Agreement between a model's ``sample`` and its own ``log_prob``."""

from __future__ import annotations

__all__ = [
    "GoodnessOfFit",
    "goodness_of_fit",
]

import dataclasses
import math
from typing import Literal

import torch
from torch import Tensor

from ppgen.models.base import AbstractGenerativeModel


@dataclasses.dataclass(frozen=True)
class GoodnessOfFit:
    """Agreement between a model's samples and its own ``log_prob`` (see :func:`goodness_of_fit`).

    Attributes:
        p_value: uniform on (0, 1) when ``sample`` and ``log_prob`` describe one distribution.
        statistic: the Kolmogorov-Smirnov distance of the PIT values from uniform (``method=
            "conditional"``), or nan (``"nearest-neighbor"``: Pyro's test returns a p-value).
        method: ``"conditional"`` or ``"nearest-neighbor"``.
        num_samples: samples drawn.
        exact: True when the test is exact (discrete conditionals enumerated); False when it
            rests on quadrature (continuous) or asymptotics (nearest-neighbour).
    """

    p_value: float
    statistic: float
    method: str
    num_samples: int
    exact: bool

    def __str__(self) -> str:
        return (
            f"sample/log_prob agreement ({self.method}, n={self.num_samples}): p = "
            f"{self.p_value:.3g}"
            + ("" if math.isnan(self.statistic) else f", KS D = {self.statistic:.4f}")
        )


def _log_prob(model: AbstractGenerativeModel, x: Tensor, context: Tensor | None) -> Tensor:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    out = []
    for start in range(0, x.shape[0], 4096):
        xb = x[start : start + 4096].to(device=device, dtype=dtype)
        cb = None if context is None else context[start : start + 4096].to(device)
        out.append(model.log_prob(xb, cb).detach().double().cpu())
    return torch.cat(out)


def _conditional_pit(
    model: AbstractGenerativeModel,
    x: Tensor,
    context: Tensor | None,
    g: torch.Generator,
    grid_size: int,
) -> tuple[Tensor, bool]:
    """One randomized PIT value per sample under the model's full conditional of one randomly
    chosen coordinate, computed from ``log_prob`` alone. ``(N,)``, and whether it is exact."""
    n = x.shape[0]
    flat = x.reshape(n, -1).to("cpu", torch.float64)  # (N, D)
    dims = torch.randint(flat.shape[1], (n,), generator=g)  # (N,)
    rows = torch.arange(n)
    current = flat[rows, dims]  # (N,)
    cfg = model.config
    if cfg.kind != "continuous":
        assert cfg.levels is not None
        values = torch.arange(cfg.levels, dtype=torch.float64)  # (L,)
        exact = True
    else:
        lo, hi = flat.min(0).values, flat.max(0).values
        pad = 0.25 * (hi - lo).clamp_min(1e-6)
        steps = torch.linspace(0, 1, grid_size, dtype=torch.float64)
        values = (lo - pad)[:, None] + (hi - lo + 2 * pad)[:, None] * steps  # (D, G)
        values = values[dims]  # (N, G)
        exact = False
    k = values.shape[-1]
    values = values.expand(n, k)
    lp = torch.empty(n, k, dtype=torch.float64)
    chunk = max(1, 2_000_000 // (k * flat.shape[1]))  # samples per block of variants
    for start in range(0, n, chunk):
        part = slice(start, min(start + chunk, n))
        m = part.stop - part.start
        variants = flat[part, None, :].repeat(1, k, 1)  # (m, K, D): x with x_d set to each value
        variants[torch.arange(m)[:, None], torch.arange(k)[None, :], dims[part, None]] = values[
            part
        ]
        ctx = None if context is None else context[part].repeat_interleave(k, dim=0)
        lp[part] = _log_prob(model, variants.reshape(m * k, *x.shape[1:]), ctx).reshape(m, k)
    v = torch.rand(n, generator=g, dtype=torch.float64)
    if exact:
        probs = torch.softmax(lp, dim=1)  # (N, L): p(x_d = l | x_-d)
        level = current.long()
        below = (probs * (torch.arange(k)[None, :] < level[:, None])).sum(1)
        return below + v * probs[rows, level], True
    # continuous: trapezoid rule on the grid, then linear interpolation of the CDF at x_d
    dens = (lp - lp.max(1, keepdim=True).values).exp()  # (N, G), unnormalized
    widths = values[:, 1:] - values[:, :-1]  # (N, G - 1)
    cells = 0.5 * (dens[:, 1:] + dens[:, :-1]) * widths
    cdf = torch.cat([torch.zeros(n, 1, dtype=torch.float64), cells.cumsum(1)], dim=1)
    cdf = cdf / cdf[:, -1:]
    j = torch.searchsorted(values.contiguous(), current[:, None]).squeeze(1).clamp(1, k - 1)
    left, right = values[rows, j - 1], values[rows, j]
    frac = ((current - left) / (right - left)).clamp(0, 1)
    return cdf[rows, j - 1] + frac * (cdf[rows, j] - cdf[rows, j - 1]), False


@torch.no_grad()
def goodness_of_fit(
    model: AbstractGenerativeModel,
    *,
    num_samples: int = 1000,
    method: Literal["conditional", "nearest-neighbor"] = "conditional",
    context: Tensor | None = None,
    grid_size: int = 512,
    seed: int = 0,
) -> GoodnessOfFit:
    r"""Test that a model's ``sample`` and its own ``log_prob`` describe the same distribution.

    ``"conditional"`` (default, any dimension): for each sample pick a coordinate d at random
    and compute the model's full conditional :math:`p(x_d \mid x_{-d})` from ``log_prob``
    alone, by enumerating the levels (discrete data: exact) or on a ``grid_size`` grid
    (continuous: quadrature); the randomized PIT of :math:`x_d` under it is uniform when the
    samples come from the density. The p-value combines (Bonferroni) Kolmogorov-Smirnov tests of
    the PIT values and of their folding :math:`|2u - 1|`, which sees a too wide or too narrow
    sampler (a U-shaped or humped PIT) that KS alone is weak against. Because
    the full conditionals of a positive density determine it (Brook's lemma), any disagreement
    between ``sample`` and ``log_prob`` has power. Cost: ``num_samples * levels`` (or
    ``* grid_size``) log-density evaluations.

    ``"nearest-neighbor"``: Pyro's :func:`pyro.distributions.testing.gof.auto_goodness_of_fit`
    (nearest-neighbour volumes against densities), for low-dimensional continuous data; it
    needs more than 1000 samples per dimension.

    Arguments:
        model: a model with an exact ``log_prob`` (``likelihood = "exact"``, not dequantizing).
        num_samples: samples drawn.
        method: ``"conditional"`` or ``"nearest-neighbor"``.
        context: contexts for a conditional model, ``(num_samples, ...)``.
        grid_size: quadrature points for continuous conditionals.
        seed: seeds sampling and the coordinate choice.

    Returns:
        A :class:`GoodnessOfFit`.

    Example:
        >>> import ppgen
        >>> m = ppgen.build("independent", ppgen.datasets.load("digits", "val"))
        >>> goodness_of_fit(m, num_samples=300).p_value > 0.01
        True
    """
    from scipy.stats import kstest

    if model.likelihood != "exact" or model.dequantizes:
        raise ValueError(
            f"{type(model).__name__} has no exact log_prob of its samples (likelihood="
            f"{model.likelihood!r}, dequantizes={model.dequantizes}); the check needs one"
        )
    if model.conditional and context is None:
        raise ValueError(f"{type(model).__name__} is conditional: pass context for the samples")
    if method not in ("conditional", "nearest-neighbor"):
        raise ValueError(f"method must be 'conditional' or 'nearest-neighbor', got {method!r}")
    was_training = model.training
    model.eval()
    try:
        x = model.sample(num_samples, seed=seed, context=context).detach()
        if method == "nearest-neighbor":
            from pyro.distributions.testing.gof import InvalidTest, auto_goodness_of_fit

            if model.config.kind != "continuous":
                raise ValueError(
                    "method='nearest-neighbor' needs continuous data; use 'conditional'"
                )
            probs = _log_prob(model, x, context).exp()
            try:
                p = float(auto_goodness_of_fit(x.reshape(num_samples, -1).double().cpu(), probs))
            except InvalidTest as e:
                raise ValueError(
                    f"Pyro's nearest-neighbour test refuses: {e} (it needs more than 1000 "
                    "samples per dimension); raise num_samples or use method='conditional'"
                ) from None
            return GoodnessOfFit(p, math.nan, method, num_samples, exact=False)
        g = torch.Generator().manual_seed(int(seed))
        u, exact = _conditional_pit(model, x, context, g, grid_size)
    finally:
        model.train(was_training)
    u = u.clamp(0, 1)
    # KS on u sees shifts; KS on the folded |2u - 1| sees dispersion (a U-shaped or humped PIT,
    # where KS on u is weak). Both are uniform under the null: Bonferroni-combine the two.
    plain = kstest(u.numpy(), "uniform")
    folded = kstest((2 * u - 1).abs().numpy(), "uniform")
    p_value = min(1.0, 2 * min(float(plain.pvalue), float(folded.pvalue)))
    return GoodnessOfFit(p_value, float(plain.statistic), method, num_samples, exact)
