"""``ppgen.fit``: the shared training loop, and the run directory's training curve drawn by the
caller.

The trainer (:func:`ppgen.inference.trainer.fit`) computes and records numbers and never draws;
drawing lives up here, beside :mod:`ppgen.reports`. :func:`fit` is what ``ppgen.fit`` and
``ppgen fit`` call: the trainer, with ``training_curve.png`` drawn into the run directory with
its records (at the first checkpoint, then at most every :data:`CURVE_INTERVAL_S` seconds, and at
the end or when a signal stops the run), so a run directory holds the figure however the run
ends. A caller of the trainer itself draws it with :func:`ppgen.reports.write_training_curve`.

Importing this module imports no plotting library: matplotlib is imported at the first figure.
"""

from __future__ import annotations

__all__ = ["CURVE_INTERVAL_S", "fit"]

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor

from ppgen.datasets.base import Dataset
from ppgen.inference import trainer
from ppgen.inference.train_config import TrainConfig
from ppgen.models.base import AbstractGenerativeModel

CURVE_INTERVAL_S = 30.0
"""The training curve is drawn at most this often at checkpoints (a figure costs 0.1-0.5 s; a
checkpoint may come every step); always at the end."""


def fit(
    model: AbstractGenerativeModel,
    data: Dataset | Tensor,
    config: TrainConfig | None = None,
    *,
    val: Dataset | Tensor | None = None,
    out: str | os.PathLike | None = None,
    run_info: dict[str, Any] | None = None,
    on_checkpoint: Callable[[trainer.History, bool], None] | None = None,
    **settings: Any,
) -> trainer.History:
    """Fit ``model`` to ``data`` (:func:`ppgen.inference.trainer.fit`, which describes every
    argument) and draw the run directory's ``training_curve.png`` with its records.

    Arguments:
        model: any ppgen model.
        data: the training :class:`~ppgen.datasets.Dataset` (or a tensor).
        config: a :class:`~ppgen.inference.train_config.TrainConfig` (default: its defaults).
        val: validation data (best weights, early stopping).
        out: the run directory (None: in memory, nothing drawn).
        run_info: plain JSON data added to ``config.json``.
        on_checkpoint: called as ``on_checkpoint(history, final)`` after the figure.
        **settings: any ``TrainConfig`` field (``steps=500, lr=1e-3``).

    Returns:
        The :class:`~ppgen.inference.trainer.History`.

    Example:
        >>> import ppgen
        >>> train = ppgen.datasets.load("digits", split="train")
        >>> m = ppgen.build("independent", train)
        >>> ppgen.fit(m, train, steps=5, batch_size=100, lr=0.05, progress=False).steps
        5
    """
    curve = None if out is None else _TrainingCurve(Path(out))
    if curve is not None and on_checkpoint is not None:
        callback = on_checkpoint

        def both(history: trainer.History, final: bool) -> None:
            curve(history, final)
            callback(history, final)

        on_checkpoint = both
    return trainer.fit(model, data, config, val=val, out=out, run_info=run_info,
                       on_checkpoint=on_checkpoint or curve, **settings)


class _TrainingCurve:
    """Draws ``training_curve.png`` into a run directory (atomically) at the first record, then
    at most every :data:`CURVE_INTERVAL_S` seconds, and at the last (``final``); nothing before
    the first logged record."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._last = -math.inf

    def __call__(self, history: trainer.History, final: bool) -> None:
        now = time.monotonic()
        if not (final or now - self._last >= CURVE_INTERVAL_S):
            return
        self._last = now
        if not history.train and not history.val:
            return
        from ppgen.reports import write_training_curve

        write_training_curve(history, self.out)
