r"""The samplers: ancestral DDPM (with respacing) and DDIM, loops over a schedule's steps, and
two few-step solvers of the probability-flow ODE, DPM-Solver++(2M) and EDM's Heun method.

Each loop takes the schedule, a ``denoise(x_t, t) -> (prediction, raw variance or None)``
callable and the starting noise :math:`x_T`; the network stays outside the schedule (diffusers'
split of pipeline and scheduler). Two preallocated buffers alternate as the state of the DDPM
and DDIM loops, so a step allocates nothing but the network's output.

The ODE solvers call ``denoise`` at continuous times ``t`` in [0, T] (floats; the schedule's
:meth:`~NoiseSchedule.sigma_at` interpolates between its integer times) on the grid of
:meth:`~NoiseSchedule.sampling_times`. Their notation, with
:math:`\alpha_t = \sqrt{\bar\alpha_t}`, :math:`s_t = \sqrt{1-\bar\alpha_t}`, the half
log-SNR :math:`\lambda_t = \log(\alpha_t / s_t)` and the noise-to-signal ratio
:math:`\sigma_t = s_t / \alpha_t = e^{-\lambda_t}`: the probability-flow ODE of the
variance-preserving chain is, in the scaled variable :math:`u = x / \alpha_t` (EDM's
variance-exploding form, Karras et al. 2022, eq. 4 with :math:`s(t) = 1`),

.. math:: \frac{du}{d\sigma} = \hat\epsilon(\alpha u, t(\sigma))
    = \frac{u - D(u; \sigma)}{\sigma},\qquad D = \hat x_0,

which DDIM solves with Euler steps in :math:`\sigma` (Song et al. 2021, eq. 14), Heun's method
with a second-order correction, and DPM-Solver++ exactly in its linear part with a multistep
second-order estimate of :math:`\hat x_0` over :math:`\lambda`.
"""

from __future__ import annotations

__all__ = [
    "Denoise",
    "network_calls",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_heun",
]

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from ppgen.models.diffusion.schedule import NoiseSchedule, ScheduleError, Spacing

Denoise = Callable[[Tensor, int], tuple[Tensor, "Tensor | None"]]
ContinuousDenoise = Callable[[Tensor, float], tuple[Tensor, "Tensor | None"]]
Parameterization = Literal["epsilon", "x0", "v"]


def sample_ddpm(
    schedule: NoiseSchedule,
    denoise: Denoise,
    x: Tensor,
    steps: int,
    generator: torch.Generator | None = None,
    *,
    parameterization: Literal["epsilon", "x0", "v"] = "epsilon",
    variance: Literal["small", "large", "learned"] = "small",
    clip: float | None = None,
) -> Tensor:
    """Ancestral sampling (Ho et al. Algorithm 2) from :math:`x_T` = ``x`` down to :math:`x_0`.

    With ``steps == T`` every step of ``schedule`` runs and the draw is exactly from the model;
    with fewer, the chain of :meth:`NoiseSchedule.respaced` (Nichol & Dhariwal, section 4),
    whose steps the network sees at their original times.

    Arguments:
        schedule: the model's noise schedule.
        denoise: the network at ``(x_t, t)`` (original times ``t``).
        x: :math:`x_T`, e.g. ``torch.randn(n, *event_shape)``.
        steps: the number of network calls.
        generator: the random generator of the noise.
        parameterization: what ``denoise`` predicts.
        variance: the reverse variances (``"learned"``: ``denoise`` returns the raw output).
        clip: clamp the predicted x0 to ``[-clip, clip]``.

    Returns:
        :math:`x_0` in the chain's space.

    Example:
        >>> s = NoiseSchedule(10)
        >>> zero = lambda x, t: (torch.zeros_like(x), None)
        >>> sample_ddpm(s, zero, torch.randn(4, 2), steps=5).shape
        torch.Size([4, 2])
    """
    if steps == schedule.timesteps:
        sched, times = schedule, list(range(1, steps + 1))
    else:
        sched, times = schedule.respaced(steps)
    spare, scratch = torch.empty_like(x), torch.empty_like(x)  # ping-pong buffers
    fixed: Literal["small", "large"] = "small" if variance == "learned" else variance
    for i in range(len(times), 0, -1):  # i indexes the (respaced) chain, times[i - 1] the net
        t = times[i - 1]
        pred, raw = denoise(x, t)
        var: Tensor | Literal["small", "large"] = fixed
        if raw is not None:
            var = sched.reverse_log_variance(i, "small", x, torch.sigmoid(raw))  # type: ignore[assignment]
        if parameterization == "epsilon":
            eps, x0 = pred, None
        else:
            eps, x0 = (
                None,
                pred if parameterization == "x0" else schedule.x0_from_velocity(pred, t, x),
            )
        out = sched.step(
            eps, i, x, generator, x0=x0, variance=var, clip=clip, out=spare, scratch=scratch
        )
        x, spare = out, x
    return x


def sample_ddim(
    schedule: NoiseSchedule,
    denoise: Denoise,
    x: Tensor,
    steps: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    *,
    parameterization: Literal["epsilon", "x0", "v"] = "epsilon",
    clip: float | None = None,
) -> Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12) over the trailing times
    :meth:`NoiseSchedule.ddim_timesteps`, from :math:`x_T` = ``x`` down to :math:`x_0`.

    Arguments:
        schedule: the model's noise schedule.
        denoise: the network at ``(x_t, t)``.
        x: :math:`x_T`.
        steps: the number of network calls.
        eta: 0 (deterministic given x_T) to 1 (the DDPM posterior variances).
        generator: the random generator of the noise (``eta > 0``).
        parameterization: what ``denoise`` predicts.
        clip: clamp the predicted x0 to ``[-clip, clip]``, recomputing epsilon from it.

    Returns:
        :math:`x_0` in the chain's space.

    Example:
        >>> s = NoiseSchedule(10)
        >>> zero = lambda x, t: (torch.zeros_like(x), None)
        >>> sample_ddim(s, zero, torch.randn(4, 2), steps=3).shape
        torch.Size([4, 2])
    """
    times = schedule.ddim_timesteps(steps)
    spare, scratch = torch.empty_like(x), torch.empty_like(x)
    for t, s in zip(times, [*times[1:], 0], strict=True):
        pred, _ = denoise(x, t)
        if parameterization == "epsilon":
            eps, x0 = pred, None
        else:
            eps, x0 = (
                None,
                pred if parameterization == "x0" else schedule.x0_from_velocity(pred, t, x),
            )
        out = schedule.ddim_step(
            eps, t, s, x, eta, generator, x0=x0, clip=clip, out=spare, scratch=scratch
        )
        x, spare = out, x
    return x


def network_calls(sampler: str, steps: int) -> int:
    """The network calls of one draw: ``steps`` for DDPM, DDIM and DPM-Solver++(2M);
    ``2 steps - 1`` for Heun (two per step but the last, EDM Algorithm 1)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def _eps_and_x0(
    pred: Tensor, x: Tensor, alpha: float, s: float, parameterization: Parameterization,
    clip: float | None,
) -> tuple[Tensor, Tensor]:
    r"""The network's output as :math:`(\hat\epsilon, \hat x_0)` at a time with
    :math:`\alpha_t = ` ``alpha`` and :math:`s_t = ` ``s``: eq. (15) of Ho et al. for epsilon,
    :math:`\hat x_0 = \alpha x - s\hat v`, :math:`\hat\epsilon = s x + \alpha\hat v` for v
    (Salimans & Ho 2022). With ``clip``, :math:`\hat x_0` is clamped and :math:`\hat\epsilon`
    recomputed from it, as in :meth:`NoiseSchedule.ddim_step`."""
    if parameterization == "epsilon":
        eps, x0 = pred, (x - s * pred) / alpha
    elif parameterization == "v":
        eps, x0 = s * x + alpha * pred, alpha * x - s * pred
    else:
        eps, x0 = (x - alpha * pred) / s, pred
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
        eps = (x - alpha * x0) / s
    return eps, x0


def sample_dpmpp_2m(
    schedule: NoiseSchedule,
    denoise: ContinuousDenoise,
    x: Tensor,
    steps: int,
    *,
    spacing: Spacing = "uniform",
    parameterization: Parameterization = "epsilon",
    clip: float | None = None,
) -> Tensor:
    r"""DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Algorithm 2): a deterministic
    second-order multistep solver of the probability-flow ODE in data prediction, ``steps``
    network calls from :math:`x_T` = ``x`` to :math:`x_0`.

    On the grid :math:`t_0 = T > \dots > t_K = 0` of :meth:`NoiseSchedule.sampling_times`,
    with :math:`h_i = \lambda_{t_i} - \lambda_{t_{i-1}}` and
    :math:`x_\theta = \hat x_0` (clamped to ``[-clip, clip]`` when set, the "thresholding" of
    Lu et al. section 3.2):

    1. :math:`\tilde x_{t_1} = \frac{s_{t_1}}{s_{t_0}} \tilde x_{t_0}
       - \alpha_{t_1}(e^{-h_1} - 1)\, x_\theta(\tilde x_{t_0}, t_0)` (Algorithm 2, line 3:
       DPM-Solver++(1), which is DDIM, eq. 9);
    2. for i = 2..K: :math:`r_i = h_{i-1}/h_i`,
       :math:`D_i = (1 + \tfrac{1}{2r_i}) x_\theta(\tilde x_{t_{i-1}}, t_{i-1})
       - \tfrac{1}{2r_i} x_\theta(\tilde x_{t_{i-2}}, t_{i-2})` (lines 5-6);
    3. :math:`\tilde x_{t_i} = \frac{s_{t_i}}{s_{t_{i-1}}}\tilde x_{t_{i-1}}
       - \alpha_{t_i}(e^{-h_i} - 1) D_i` (line 7).

    The last step ends at :math:`s_{t_K} = 0` (:math:`\lambda = +\infty`, :math:`h_K =
    \infty`, so :math:`r_K = 0`) and is taken at first order, :math:`D_K =
    x_\theta(\tilde x_{t_{K-1}}, t_{K-1})`, which makes step 3 return it: the "lower order
    final step" Lu et al. (section 4.1 and appendix) recommend below 15 steps. At zero terminal
    SNR (:math:`\alpha_T = 0`, :math:`h_1 = \infty`) step 1 is the same formula with
    :math:`e^{-h_1} = 0` and step 2 falls back to first order (:math:`1/r_2 = 0`).

    Arguments:
        schedule: the model's noise schedule.
        denoise: the network at ``(x_t, t)``, ``t`` a float time in [0, T].
        x: :math:`x_T`.
        steps: K, the number of network calls.
        spacing: the time grid (:meth:`NoiseSchedule.sampling_times`).
        parameterization: what ``denoise`` predicts.
        clip: clamp the predicted x0 to ``[-clip, clip]``.

    Returns:
        :math:`x_0` in the chain's space.

    Example:
        >>> s = NoiseSchedule(10)
        >>> zero = lambda x, t: (torch.zeros_like(x), None)
        >>> sample_dpmpp_2m(s, zero, torch.randn(4, 2), steps=3).shape
        torch.Size([4, 2])
    """
    times = schedule.sampling_times(steps, spacing)
    coef = [schedule.alpha_sigma_at(t) for t in times]  # (alpha_t, s_t)
    lam = [_half_log_snr(a, s) for a, s in coef]
    previous: Tensor | None = None  # x_theta at t_{i-2}
    for i in range(1, len(times)):
        (a_prev, s_prev), (a_i, s_i) = coef[i - 1], coef[i]
        pred, _ = denoise(x, times[i - 1])
        _, x0 = _eps_and_x0(pred, x, a_prev, s_prev, parameterization, clip)
        h = lam[i] - lam[i - 1]
        if previous is None or s_i == 0.0:  # step 1 and the final step: first order
            d = x0
        else:
            r = (lam[i - 1] - lam[i - 2]) / h
            half = 0.5 / r  # 0 when h_{i-1} = inf (zero terminal SNR)
            d = (1 + half) * x0 - half * previous  # step 2
        # step 3: s_i / s_{i-1} x - alpha_i (e^{-h} - 1) D; the ratio is 0 at the final step
        x = (s_i / s_prev) * x + (a_i * -math.expm1(-h)) * d
        previous = x0
    return x


def sample_heun(
    schedule: NoiseSchedule,
    denoise: ContinuousDenoise,
    x: Tensor,
    steps: int,
    *,
    spacing: Spacing = "karras",
    parameterization: Parameterization = "epsilon",
    clip: float | None = None,
) -> Tensor:
    r"""EDM's deterministic sampler (Karras et al. 2022, arXiv:2206.00364, Algorithm 1): Heun's
    second-order method on the probability-flow ODE, ``steps`` steps and ``2 steps - 1`` network
    calls from :math:`x_T` = ``x`` to :math:`x_0`.

    In :math:`u = x/\alpha` on the grid :math:`\sigma_0 > \dots > \sigma_K = 0`
    (:meth:`NoiseSchedule.sampling_times`; EDM's own grid is ``spacing="karras"``), with
    :math:`d(u, \sigma) = (u - D(u;\sigma))/\sigma = \hat\epsilon(\alpha u, t(\sigma))`
    (Algorithm 1 with :math:`S_{churn} = 0`, so :math:`\hat t_i = t_i` and
    :math:`\hat x_i = x_i`):

    1. :math:`u_0 = x_T / \alpha_{t_0}` (line 2, the chain's prior scaled into :math:`u`);
    2. :math:`d_i = d(u_i, \sigma_i)` (line 7);
    3. :math:`u_{i+1} = u_i + (\sigma_{i+1} - \sigma_i) d_i` (line 8: an Euler step, DDIM);
    4. if :math:`\sigma_{i+1} \neq 0`: :math:`d'_i = d(u_{i+1}, \sigma_{i+1})` and
       :math:`u_{i+1} = u_i + (\sigma_{i+1} - \sigma_i)(\tfrac12 d_i + \tfrac12 d'_i)`
       (lines 9-11: the trapezoidal correction);
    5. :math:`x_0 = u_K` (:math:`\alpha_{t_K} = 1`).

    Arguments:
        schedule: the model's noise schedule (with :math:`\bar\alpha_T > 0`).
        denoise: the network at ``(x_t, t)``, ``t`` a float time in [0, T].
        x: :math:`x_T`.
        steps: K, the number of steps (:func:`network_calls` gives the calls).
        spacing: the time grid.
        parameterization: what ``denoise`` predicts.
        clip: clamp the predicted x0 to ``[-clip, clip]`` (so ``d`` uses the clamped D).

    Returns:
        :math:`x_0` in the chain's space.

    Example:
        >>> s = NoiseSchedule(10)
        >>> zero = lambda x, t: (torch.zeros_like(x), None)
        >>> sample_heun(s, zero, torch.randn(4, 2), steps=3).shape
        torch.Size([4, 2])
    """
    times = schedule.sampling_times(steps, spacing)
    coef = [schedule.alpha_sigma_at(t) for t in times]
    if coef[0][0] == 0.0:
        raise ScheduleError(
            "the Heun sampler integrates in x / alpha, undefined at zero terminal SNR "
            "(alpha_T = 0); use sampler='dpm++2m'"
        )

    def d(u: Tensor, i: int) -> Tensor:
        a, s = coef[i]
        pred, _ = denoise(a * u, times[i])
        return _eps_and_x0(pred, a * u, a, s, parameterization, clip)[0]

    sigma = [s / a for a, s in coef]
    u = x / coef[0][0]  # step 1
    for i in range(len(times) - 1):
        d_i = d(u, i)  # step 2
        u_next = u + (sigma[i + 1] - sigma[i]) * d_i  # step 3
        if sigma[i + 1] != 0.0:  # step 4
            u_next = u + (sigma[i + 1] - sigma[i]) * (0.5 * d_i + 0.5 * d(u_next, i + 1))
        u = u_next
    return u  # step 5


def _half_log_snr(alpha: float, s: float) -> float:
    r""":math:`\lambda = \log(\alpha / s)`, :math:`\pm\infty` at the ends."""
    if alpha == 0.0:
        return -math.inf
    if s == 0.0:
        return math.inf
    return math.log(alpha / s)
