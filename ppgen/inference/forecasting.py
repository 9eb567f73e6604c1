"""Forecasting: sample paths of a sequence model's future given an observed past.

``ppgen.forecast(m, history, horizon=H, num_samples=S, seed=...)`` works for any model with the
forecasting capability (:class:`ppgen.models.sequences.SequenceModel`); each family says how it
conditions on the history in ``forecast_method`` (exact Kalman filtering, a recurrent state run
over the history, or a guide used as an importance proposal), and the result carries it.

Example:
    >>> import ppgen, numpy as np
    >>> ds = ppgen.datasets.from_series(np.sin(np.arange(300) / 4.0), window=12)
    >>> m = ppgen.build("lgssm", ds, state=2)
    >>> paths = ppgen.forecast(m, ds.series[:50], horizon=4, num_samples=100, seed=0)
    >>> paths.shape
    torch.Size([100, 4, 1])
"""

from __future__ import annotations

__all__ = ["forecast", "forecast_crps"]

import numbers
from typing import Any

import torch
from torch import Tensor

from ppgen.models.base import AbstractGenerativeModel, check_finite_parameters
from ppgen.models.sequences.common import SequenceModel, check_history


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"forecast: {name} must be a positive int, got {value!r}")
    return int(value)


def forecast(
    model: AbstractGenerativeModel,
    history: Any,
    *,
    horizon: int,
    num_samples: int = 100,
    seed: int | None = None,
) -> Tensor:
    """Draw ``num_samples`` sample paths of the next ``horizon`` steps given the observed past.

    Arguments:
        model: a sequence model (``lgssm``, ``seq-ar``, ``dmm``): ``model.forecast_method``
            says how it conditions on the history.
        history: the observed past, ``(L, *step)`` (``(L, D)`` for windows of ``(T, D)``; ``(L,)``
            for a univariate model), in the units the model was trained on (standardized,
            for the embedded series). Any length L >= 1, not only the training window.
        horizon: steps to draw after the history.
        num_samples: sample paths.
        seed: seeds a private generator (the global RNG is left alone); None: nondeterministic.

    Returns:
        ``Tensor[num_samples, horizon, *step]``.

    Raises:
        ValueError: a model without the capability, a bad history (shape, NaN, levels), a
            non-positive horizon or count, or non-finite weights; before any work.
    """
    if not isinstance(model, SequenceModel):
        from ppgen import models

        able = [n for n in models.names() if issubclass(models.get(n), SequenceModel)]
        raise ValueError(
            f"{type(model).__name__} cannot forecast: it models fixed-size points, not "
            f"sequences; use a sequence family ({', '.join(able)})"
        )
    horizon = _count(horizon, "horizon")
    num_samples = _count(num_samples, "num_samples")
    check_finite_parameters(model)
    past = check_history(model, history)
    ref = next(model.parameters())
    generator = torch.Generator(device=ref.device)
    if seed is not None:
        generator.manual_seed(int(seed) % 2**63)
    else:
        generator.seed()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            paths = model.forecast_paths(past, horizon, num_samples, generator)
    finally:
        model.train(was_training)
    return paths.reshape(num_samples, horizon, *model.event_shape[1:])


def forecast_crps(paths: Tensor, truth: Tensor) -> Tensor:
    """The empirical CRPS of sample paths against the truth, per step and variable.

    Uses Pyro's ``crps_empirical`` (``E|X - y| - E|X - X'| / 2`` over the samples).

    Arguments:
        paths: ``(S, H, *step)`` sample paths (:func:`forecast`).
        truth: ``(H, *step)`` observed values.

    Returns:
        ``(H, *step)`` CRPS values (lower is better; in the data's units).
    """
    from pyro.ops.stats import crps_empirical

    return crps_empirical(paths, truth)
