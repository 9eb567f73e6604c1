"""Observation masks for conditioning a model on part of ``x``: ``True`` = observed.

A mask says which coordinates of a data point are known. :func:`named` builds the common ones
for an ``event_shape``; the name says which part is **missing** (hidden from the model and
imputed): ``"bottom-half"`` observes the top half of an image and asks for the bottom half.

- ``"bottom-half"``, ``"top-half"``: the last / first half of the rows (dim -2 of an image,
  ``(C, H, W)`` or ``(H, W)``; of a flat ``(D,)`` point, its last / first half);
- ``"right-half"``, ``"left-half"``: the last / first half of the columns (dim -1);
- ``"center"``: the central block (half the height and half the width; the middle half of a
  flat point);
- ``"random:P"``: a fraction ``P`` in ``(0, 1)`` of the coordinates, chosen uniformly at random
  with ``seed`` (missing completely at random); ``num_examples=N`` draws one such mask per
  example.

Any bool tensor whose shape broadcasts to ``(N, *event_shape)`` is a mask too;
:func:`check_mask` validates one before any work.

Example:
    >>> import ppgen
    >>> m = ppgen.masks.named("bottom-half", (1, 8, 8))
    >>> m.shape, int(m.sum()), bool(m[0, 0, 0]), bool(m[0, 7, 0])
    (torch.Size([1, 8, 8]), 32, True, False)
"""

from __future__ import annotations

__all__ = ["NAMES", "MaskError", "check_mask", "describe", "named"]

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: The fixed mask names :func:`named` knows (plus ``"random:P"``).
NAMES = ("bottom-half", "top-half", "left-half", "right-half", "center")


class MaskError(ValueError):
    """A mask of the wrong name, dtype or shape (a ``ValueError``: bad input)."""


def _shape(event_shape: Sequence[int] | torch.Size) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in event_shape)
    except TypeError:
        raise MaskError(
            f"event_shape must be a tuple of ints, e.g. (1, 8, 8), got {event_shape!r}"
        ) from None
    if not shape or min(shape) < 1:
        raise MaskError(f"event_shape must be a non-empty tuple of sizes >= 1, got {shape}")
    return shape


def _halves(size: int) -> tuple[slice, slice]:
    """The first and last half of ``range(size)`` (the middle one goes to the first half)."""
    cut = size - size // 2
    return slice(0, cut), slice(cut, size)


def named(
    name: str,
    event_shape: Sequence[int] | torch.Size,
    seed: int | None = None,
    num_examples: int | None = None,
) -> Tensor:
    """The mask called ``name`` for points of ``event_shape`` (True = observed).

    Arguments:
        name: one of :data:`NAMES` (the part that is missing) or ``"random:P"`` with a fraction
            ``P`` in ``(0, 1)`` of missing coordinates.
        event_shape: the shape of one data point, e.g. ``(1, 8, 8)`` or ``(30,)``.
        seed: seeds the ``random:P`` choice (None is 0, so the default is reproducible too);
            ignored by the fixed names.
        num_examples: for ``random:P``, draw an independent mask per example and return
            ``(num_examples, *event_shape)``; None gives one mask for every example.

    Returns:
        A bool tensor of shape ``event_shape`` (or ``(num_examples, *event_shape)``).

    Raises:
        MaskError: an unknown name, a fraction outside ``(0, 1)``, a bad ``event_shape``.
    """
    shape = _shape(event_shape)
    if not isinstance(name, str):
        raise MaskError(f"mask name must be a string, got {type(name).__name__}")
    if name.startswith("random:"):
        return _random(name, shape, seed, num_examples)
    if name not in NAMES:
        raise MaskError(
            f"unknown mask {name!r}; known: {', '.join(NAMES)}, random:P (P in (0, 1)), or pass "
            "a bool tensor (True = observed)"
        )
    if num_examples is not None:
        raise MaskError(f"num_examples is for random:P masks; {name!r} is one fixed mask")
    observed = torch.ones(shape, dtype=torch.bool)
    image = len(shape) >= 2
    if name in ("bottom-half", "top-half"):
        first, last = _halves(shape[-2] if image else shape[-1])
        part = last if name == "bottom-half" else first
        if image:
            observed[..., part, :] = False
        else:
            observed[..., part] = False
    elif name in ("right-half", "left-half"):
        first, last = _halves(shape[-1])
        observed[..., last if name == "right-half" else first] = False
    else:  # center: the middle half of each of the last two dims (of the only dim when flat)
        def middle(size: int) -> slice:
            lo = size // 4
            return slice(lo, lo + max(1, size // 2))

        if image:
            observed[..., middle(shape[-2]), middle(shape[-1])] = False
        else:
            observed[..., middle(shape[-1])] = False
    return observed


def _random(
    name: str, shape: tuple[int, ...], seed: int | None, num_examples: int | None
) -> Tensor:
    text = name[len("random:"):]
    try:
        p = float(text)
    except ValueError:
        raise MaskError(
            f"mask {name!r}: write random:P with P the missing fraction, e.g. random:0.5"
        ) from None
    if not 0.0 < p < 1.0:
        raise MaskError(f"mask {name!r}: the missing fraction must lie in (0, 1), got {p}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise MaskError(f"seed must be an int or None, got {seed!r}")
    if num_examples is not None and (
        isinstance(num_examples, bool)
        or not isinstance(num_examples, numbers.Integral)
        or num_examples < 1
    ):
        raise MaskError(f"num_examples must be a positive int or None, got {num_examples!r}")
    d = math.prod(shape)
    hidden = min(d - 1, max(1, round(p * d))) if d > 1 else 1
    generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    rows = 1 if num_examples is None else int(num_examples)
    observed = torch.ones(rows, d, dtype=torch.bool)
    for r in range(rows):
        observed[r, torch.randperm(d, generator=generator)[:hidden]] = False
    if num_examples is None:
        return observed[0].reshape(shape)
    return observed.reshape(rows, *shape)


def check_mask(
    mask: Any, event_shape: Sequence[int] | torch.Size, num_examples: int | None = None
) -> Tensor:
    """Validate ``mask`` for a batch of ``num_examples`` points of ``event_shape``.

    Arguments:
        mask: a bool tensor (or numpy bool array) whose shape broadcasts to
            ``(num_examples, *event_shape)``: ``event_shape`` for one mask shared by every
            example, ``(N, *event_shape)`` for one per example (dims of size 1 broadcast).
        event_shape: the shape of one data point.
        num_examples: N; None checks the event part only and returns an ``event_shape`` mask
            (or ``(N, *event_shape)`` when ``mask`` has that many dims).

    Returns:
        The mask as a bool tensor, expanded to ``(num_examples, *event_shape)`` (a view), or to
        ``event_shape`` when ``num_examples`` is None and the mask has no batch dim.

    Raises:
        MaskError: not a tensor, not bool, or a shape that does not broadcast.
    """
    shape = _shape(event_shape)
    if isinstance(mask, np.ndarray):
        if mask.dtype != np.bool_:
            raise MaskError(
                f"mask must hold bools (True = observed), got a numpy {mask.dtype} array: pass "
                "mask.astype(bool) or (mask > 0.5)"
            )
        mask = torch.from_numpy(mask)
    if not isinstance(mask, Tensor):
        raise MaskError(
            f"mask must be a bool tensor (True = observed) or a mask name ({', '.join(NAMES)}, "
            f"random:P), got {type(mask).__name__}"
        )
    if mask.dtype != torch.bool:
        raise MaskError(
            f"mask must be a bool tensor (True = observed), got dtype {mask.dtype}: pass "
            "mask.bool() or (mask > 0.5)"
        )
    if mask.dim() > len(shape) + 1:
        raise MaskError(
            f"mask has shape {tuple(mask.shape)}: too many dims for points of shape {shape}; "
            f"pass {shape} (one mask for all) or (N, *{shape}) (one per example)"
        )
    target = shape if num_examples is None and mask.dim() <= len(shape) else (
        (mask.shape[0] if num_examples is None else int(num_examples), *shape)
    )
    try:
        torch.broadcast_shapes(tuple(mask.shape), target)
        out = mask.expand(target)
    except RuntimeError:
        raise MaskError(
            f"mask has shape {tuple(mask.shape)}, which does not broadcast to the data's "
            f"{target}; pass {shape} (one mask for all) or {target} (one per example)"
        ) from None
    return out


def describe(mask: Tensor) -> str:
    """A one-line summary: observed and missing coordinate counts."""
    total = mask.numel()
    seen = int(mask.sum())
    return f"{seen} of {total} coordinates observed, {total - seen} missing"
