r"""``"repaint"``: conditioning a diffusion model's reverse chain on the observed cells
(RePaint, Lugmayr et al. 2022, arXiv:2201.09865).

For a model implementing :class:`~ppgen.models.conditioning.ReverseDiffusion`, every reverse
step :math:`y_t \to y_{t-1}` is split by the mask:

.. math:: y_{t-1} = m \odot y^{known}_{t-1} + (1 - m) \odot y^{unknown}_{t-1},\qquad
    y^{known}_{t-1} \sim q(y_{t-1} \mid y_0 = x),\quad
    y^{unknown}_{t-1} \sim p_\theta(y_{t-1} \mid y_t),

the observed part a forward-noised copy of the data, the missing part one step of the model's
own reverse chain (Algorithm 1 of the paper). **Resampling** (the paper's "jumps"): after
reaching time t on a grid every ``jump_length`` steps, the state is noised forward again by
``jump_length`` steps with :math:`q(y_{t+j} \mid y_t)` and walked down once more, ``resamplings``
times in all, so the missing part can harmonize with the observed part.

**What is approximate.** The draws are *not* from the model's conditional
:math:`p(x_m \mid x_o)`: the reverse kernel of the missing part sees the observed part only
through the current noisy state, and the replaced observed part is drawn from the forward
process given the data, not from the model's posterior over the chain given :math:`x_o`; the two
agree only where the model's reverse chain matches the forward process exactly. Resampling
reduces the mismatch (the paper's ablation) without removing it, and nothing bounds the error:
no diagnostic can certify these draws, and none is claimed. The method is labelled
``exact=False``. The observed cells of the result equal the input exactly.
"""

from __future__ import annotations

__all__ = ["jump_schedule", "repaint"]

from typing import Any

import torch
from torch import Tensor

from ppgen.inference.conditioning.api import MethodResult, register_imputer
from ppgen.models.base import AbstractGenerativeModel
from ppgen.models.conditioning import ReverseDiffusion


def jump_schedule(timesteps: int, jump_length: int, resamplings: int) -> list[int]:
    """The times the RePaint chain visits, from T down to 0 (the paper's ``get_schedule_jump``
    with ``jump_n_sample = resamplings``): going down one step at a time, at each time on the
    grid ``0, j, 2j, ... < T - j`` it jumps back up ``j`` steps, ``resamplings - 1`` times.

    Example:
        >>> jump_schedule(4, 2, 2)
        [4, 3, 2, 1, 0, 1, 2, 1, 0]
    """
    jumps = {j: resamplings - 1 for j in range(0, max(timesteps - jump_length, 0), jump_length)}
    t = timesteps
    times = [t]
    while t >= 1:
        t -= 1
        times.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                times.append(t)
    return times


def _supports(model: AbstractGenerativeModel, observed: Tensor) -> str | None:
    if not isinstance(model, ReverseDiffusion):
        return f"{type(model).__name__} has no reverse diffusion chain"
    return None


@register_imputer("repaint", supports=_supports, exact=False)
def repaint(
    model: AbstractGenerativeModel,
    x: Tensor,
    observed: Tensor,
    num_samples: int,
    generator: torch.Generator,
    seed: int,
    context: Tensor | None = None,
    *,
    jump_length: int = 10,
    resamplings: int = 10,
    **options: Any,
) -> MethodResult:
    """RePaint (module docstring); S completions of each row, drawn together.

    Arguments:
        jump_length: j, steps of each forward jump (the paper's 10).
        resamplings: r, passes over each stretch of j steps (the paper's 10; 1: no
            resampling). The network runs about ``T * r`` times.
    """
    if options:
        raise ValueError(
            f"method 'repaint' takes jump_length=, resamplings=; got {sorted(options)}"
        )
    for name, value in (("jump_length", jump_length), ("resamplings", resamplings)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if context is not None:
        raise ValueError("repaint: the model takes no context")
    assert isinstance(model, ReverseDiffusion)
    n = x.shape[0]
    times = jump_schedule(model.diffusion_timesteps, jump_length, resamplings)
    with torch.no_grad():
        y0 = model.to_chain(x).unsqueeze(0).expand(num_samples, *x.shape).reshape(-1, *x.shape[1:])
        y = torch.randn(y0.shape, generator=generator, device=y0.device, dtype=y0.dtype)
        calls = 0
        for t_last, t_cur in zip(times[:-1], times[1:], strict=True):
            if t_cur < t_last:  # one reverse step, the observed part replaced
                unknown = model.reverse_step(y, t_last, generator)
                known = y0 if t_cur == 0 else model.forward_noise(y0, 0, t_cur, generator)
                y = torch.where(observed, known, unknown)
                calls += 1
            else:  # a jump back up: q(y_{t_cur} | y_{t_last})
                y = model.forward_noise(y, t_last, t_cur, generator)
        draws = model.from_chain(y).reshape(num_samples, n, *x.shape[1:])
    diagnostics: dict[str, Any] = {
        "network_calls": calls,
        "jump_length": jump_length,
        "resamplings": resamplings,
        "notes": [
            f"RePaint ({calls} reverse steps, jumps of {jump_length} steps, {resamplings} "
            "resamplings): approximate conditional draws (the observed part is replaced by a "
            "forward-noised copy at each step; not the model's exact conditional, and no "
            "diagnostic bounds the error)"
        ],
    }
    return MethodResult(draws, diagnostics)
