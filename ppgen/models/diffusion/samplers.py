"""The samplers: ancestral DDPM (with respacing) and DDIM, loops over a schedule's steps.

Each loop takes the schedule, a ``denoise(x_t, t) -> (prediction, raw variance or None)``
callable and the starting noise :math:`x_T`; the network stays outside the schedule (diffusers'
split of pipeline and scheduler). Two preallocated buffers alternate as the state, so a step
allocates nothing but the network's output.
"""

from __future__ import annotations

__all__ = ["Denoise", "sample_ddim", "sample_ddpm"]

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from ppgen.models.diffusion.schedule import NoiseSchedule

Denoise = Callable[[Tensor, int], tuple[Tensor, "Tensor | None"]]


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
