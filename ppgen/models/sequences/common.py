r"""What the sequence families share: the time-first view of the data and the forecasting
capability.

A sequence family reads one data point of ``event_shape == (T, *step)`` as ``T`` time steps of a
``D = prod(step)``-dimensional observation (time first; ``(T,)`` is a univariate series, D = 1).
So windows of a series, ``(N, T, D)``, are its natural data, and any other data shape is a
sequence too: a ``(1, 8, 8)`` image is one step of 64 values, a 2-D point two steps of one. The
sequence families are ordinary families (the shared trainer, likelihood layer and checkpoint
format treat them as any other); their models run for any length, so a model trained on windows
of ``T`` steps scores and forecasts a series of any length (:meth:`SequenceModel.log_prob_series`,
:meth:`SequenceModel.forecast_paths`).

:class:`SequenceModel` is the capability ``ppgen.forecast`` checks: a family that can draw
sample paths of the future given an observed past.
"""

from __future__ import annotations

__all__ = ["SequenceModel", "check_history"]

import abc
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ppgen.models.base import AbstractGenerativeModel


def check_history(model: SequenceModel, history: Any, name: str = "history") -> Tensor:
    """``history`` as ``(L, D)`` on the model's device and dtype, or a one-line ``ValueError``.

    Accepts ``(L, *step)`` (one observed past of the model's per-step shape) or, for a
    univariate model, ``(L,)``. Refuses an empty, non-finite or wrongly shaped history, and
    values outside a discrete model's levels."""
    if not torch.is_tensor(history):
        try:
            history = torch.as_tensor(history)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{name} is not a numeric array ({e}); pass (L, D) values") from None
    if history.is_complex() or not (history.is_floating_point() or history.dtype in (
            torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)):
        raise ValueError(f"{name} holds {history.dtype} values; pass real numbers")
    step = tuple(model.event_shape[1:])
    d = model.step_dims
    if tuple(history.shape[1:]) == step or (history.dim() == 2 and history.shape[1] == d) or (
        d == 1 and history.dim() == 1
    ):
        flat = history.reshape(history.shape[0], d)
    else:
        raise ValueError(
            f"{name} has shape {tuple(history.shape)}; pass (L, {', '.join(map(str, step)) or 1})"
            f": L observed steps of the model's per-step shape (time first)"
        )
    if flat.shape[0] < 1:
        raise ValueError(f"{name} is empty; pass at least one observed step")
    ref = next(model.parameters())
    flat = flat.to(device=ref.device, dtype=ref.dtype)
    if not bool(torch.isfinite(flat).all()):
        raise ValueError(f"{name} holds NaN or infinite values; fill or interpolate the gaps")
    cfg = model.config
    if cfg.kind != "continuous":
        assert cfg.levels is not None
        if not bool(((flat == flat.round()) & (flat >= 0) & (flat <= cfg.levels - 1)).all()):
            raise ValueError(f"{name} must hold integer levels 0..{cfg.levels - 1}")
    return flat


class SequenceModel(AbstractGenerativeModel):
    """Base of the sequence families (``lgssm``, ``seq-ar``, ``dmm``): time-first data and
    forecasting.

    Class attributes:
        forecast_method: how :meth:`forecast_paths` conditions on the history, in words (shown
            by ``ppgen.forecast``'s result and the docs): exact filtering, a recurrent state run
            over the history, or a guide used as a proposal.
    """

    forecast_method: ClassVar[str] = ""

    @property
    def steps(self) -> int:
        """T, the number of time steps of one data point."""
        return int(self.event_shape[0])

    @property
    def step_dims(self) -> int:
        """D, the values observed at one time step."""
        return max(1, math.prod(self.event_shape[1:]))

    def _as_steps(self, x: Tensor) -> Tensor:
        """``(N, *event_shape)`` -> ``(N, T, D)``."""
        return x.reshape(*x.shape[: x.dim() - len(self.event_shape)], self.steps, self.step_dims)

    def _as_event(self, x: Tensor) -> Tensor:
        """``(N, T, D)`` -> ``(N, *event_shape)``."""
        return x.reshape(*x.shape[:-2], *self.event_shape)

    @abc.abstractmethod
    def log_prob_series(self, x: Tensor) -> Tensor:
        """The model's log-density (or, for ``dmm``, the quantity its estimators bound) of
        sequences of any length: ``(N, L, D) -> (N,)`` in nats. The model is stationary in form
        (the same transition at every step), so it applies to a length other than ``T``: the
        benchmark scores a test segment as ``log p(history + test) - log p(history)``."""

    @abc.abstractmethod
    def forecast_paths(
        self, history: Tensor, horizon: int, num_samples: int, generator: torch.Generator
    ) -> Tensor:
        """``num_samples`` sample paths of the next ``horizon`` steps given ``history`` of shape
        ``(L, D)`` (checked): ``(num_samples, horizon, D)``."""
