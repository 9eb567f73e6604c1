r"""The probability-flow ODE of a diffusion model and its exact likelihood (Song et al. 2021).

The deterministic samplers of :mod:`~ppgen.models.diffusion.samplers` solve, in the scaled
variable :math:`u = x/\alpha` and the noise-to-signal ratio :math:`\sigma = s/\alpha`
(:math:`\alpha = \sqrt{\bar\alpha}`, :math:`s = \sqrt{1 - \bar\alpha}`),

.. math:: \frac{du}{d\sigma} = f(u, \sigma) = \hat\epsilon(\alpha u, t(\sigma)),

from the prior :math:`x_T \sim \mathcal N(0, I)` at :math:`\sigma_T` down to :math:`\sigma = 0`,
where :math:`u = x_0`. That ODE is a continuous normalizing flow, so by the instantaneous change
of variables (Chen et al. 2018), integrating it the other way, from the data at
:math:`\sigma = 0` to :math:`\sigma_T`,

.. math:: \log p(x_0) = \log\mathcal N(\alpha_T u(\sigma_T); 0, I) + D\log\alpha_T
    + \int_0^{\sigma_T} \operatorname{tr}\frac{\partial f}{\partial u}(u(\sigma), \sigma)\,
    d\sigma,

the exact log-density of the model these samplers draw from in the limit of many steps (up to
the solver's tolerances). The trace is exact (D vector-Jacobian products) or Hutchinson's
unbiased estimate; the integration reuses the continuous-flow machinery of FFJORD
(:func:`~ppgen.models.flows.ffjord.integrate_with_trace`). Below :math:`t = 1`, where a
discrete-time network was never trained, the network is evaluated at the time of
:meth:`NoiseSchedule.time_at` (linear in :math:`\sigma` down to 0); the ODE is still a flow, and
its density still exact.

References:
    Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole. Score-Based Generative Modeling through
    Stochastic Differential Equations. arXiv:2011.13456, section 4.3 and appendix D.2.
    Chen, Rubanova, Bettencourt, Duvenaud. Neural Ordinary Differential Equations.
    arXiv:1806.07366 (the instantaneous change of variables, theorem 1).
    Karras, Aittala, Aila, Laine. Elucidating the Design Space of Diffusion-Based Generative
    Models. arXiv:2206.00364 (the variance-exploding form, eq. 4).
"""

from __future__ import annotations

__all__ = ["ADAPTIVE_SOLVERS", "EXACT_TRACE_MAX_DIMS", "probability_flow_log_prob"]

import math
from typing import Literal

import torch
from torch import Tensor

from ppgen.models.diffusion.samplers import ContinuousDenoise
from ppgen.models.diffusion.schedule import NoiseSchedule, ScheduleError
from ppgen.models.flows.ffjord import integrate_with_trace

#: ``trace="auto"`` uses the exact trace up to this many dimensions, Hutchinson's above.
EXACT_TRACE_MAX_DIMS = 64
#: The ``torchdiffeq`` methods with error control, whose tolerances bound the likelihood's error.
ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")


@torch.no_grad()
def probability_flow_log_prob(
    schedule: NoiseSchedule,
    denoise: ContinuousDenoise,
    y0: Tensor,
    *,
    parameterization: Literal["epsilon", "x0", "v"] = "epsilon",
    trace: Literal["exact", "hutchinson"] = "exact",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = "dopri5",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, int]:
    r"""The log-density of ``y0`` (in the chain's space) under the probability-flow ODE.

    Arguments:
        schedule: the model's noise schedule (with :math:`\bar\alpha_T > 0`).
        denoise: the network at ``(x_t, t)``, ``t`` a float time in [0, T].
        y0: points ``(N, *event_shape)`` in the chain's space.
        parameterization: what ``denoise`` predicts (``"epsilon"`` or ``"v"``; an x0-predictor
            has no noise prediction at :math:`\sigma = 0`).
        trace: ``"exact"`` or ``"hutchinson"`` (one Rademacher probe per example).
        rtol, atol: the adaptive solver's tolerances.
        solver: a ``torchdiffeq`` method.
        generator: the random generator of Hutchinson's probe.

    Returns:
        ``(log p(y0) in nats (N,), the number of function evaluations)``.

    Example:
        >>> s = NoiseSchedule(100)
        >>> zero = lambda x, t: (0 * x, None)  # eps = 0: u stays put
        >>> lp, nfe = probability_flow_log_prob(s, zero, torch.zeros(3, 2))
        >>> a_T = s.alpha_sigma_at(100.0)[0]
        >>> torch.allclose(lp, torch.full((3,), 2 * math.log(a_T) - math.log(2 * math.pi)))
        True
    """
    if parameterization == "x0":
        raise ValueError(
            "the probability-flow likelihood needs a noise (or v) prediction at sigma = 0; "
            "an x0-predicting model has none: build with parameterization='epsilon' or 'v'"
        )
    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
    T = schedule.timesteps
    alpha_T, s_T = schedule.alpha_sigma_at(float(T))
    if alpha_T == 0.0:
        raise ScheduleError(
            "the probability-flow likelihood integrates to sigma_T = s_T / alpha_T, infinite "
            "at zero terminal SNR; build without zero_terminal_snr"
        )
    shape = y0.shape[1:]
    d = math.prod(shape)

    def f(sigma: Tensor, u: Tensor) -> Tensor:  # u: (N, D)
        sig = float(sigma.detach())
        alpha = 1.0 / math.sqrt(1.0 + sig * sig)
        s = sig * alpha
        x = (alpha * u).view(-1, *shape)
        pred, _ = denoise(x, schedule.time_at(sig))
        eps = pred if parameterization == "epsilon" else s * x + alpha * pred
        return eps.reshape(u.shape)

    u_T, integral, nfe = integrate_with_trace(
        f, y0.reshape(-1, d), 0.0, s_T / alpha_T, trace=trace, rtol=rtol, atol=atol,
        solver=solver, generator=generator,
    )
    x_T = alpha_T * u_T
    prior = -0.5 * (x_T.pow(2).sum(-1) + d * math.log(2 * math.pi))
    return prior + d * math.log(alpha_T) + integral, nfe
