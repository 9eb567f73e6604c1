"""Checks of data at the edge: shape, dtype, finiteness, support.

Every failure raises :class:`DataError` (a ``ValueError``) naming the problem and the fix, before
any work is done.
"""

from __future__ import annotations

__all__ = ["DataError", "check_batch"]

from collections.abc import Sequence

import torch
from torch import Tensor


class DataError(ValueError):
    """Raised for data that ppgen cannot use as given."""


def check_batch(
    x: Tensor,
    event_shape: Sequence[int],
    kind: str,
    levels: int | None,
    *,
    what: str = "data",
) -> Tensor:
    """Validate ``x`` of shape ``(N, *event_shape)`` for a model or dataset of ``kind``.

    Arguments:
        x: the batch.
        event_shape: the expected shape of one point.
        kind: ``"binary"``, ``"discrete"`` or ``"continuous"``.
        levels: number of levels (discrete/binary), else None.
        what: how to name ``x`` in the message.

    Returns:
        ``x`` unchanged.
    """
    if not torch.is_tensor(x):
        raise DataError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_complex() or x.dtype == torch.bool:
        raise DataError(f"{what} has dtype {x.dtype}; convert it to a real float or int tensor")
    if x.dtype in (torch.uint16, torch.uint32, torch.uint64):  # torch has few ops for these
        raise DataError(f"{what} has dtype {x.dtype}; convert it with x.long() or x.float()")
    event_shape = tuple(int(s) for s in event_shape)
    if x.dim() != 1 + len(event_shape) or tuple(x.shape[1:]) != event_shape:
        raise DataError(
            f"{what} has shape {tuple(x.shape)}, expected (N, {', '.join(map(str, event_shape))})"
            f"; reshape it so that the first dim is the batch and the rest is {event_shape}"
        )
    if x.shape[0] == 0:
        raise DataError(f"{what} is empty (0 examples); pass at least one example")
    # one reduction first: a NaN or inf anywhere makes the sum non-finite (the exact, 4-pass
    # check runs only then, e.g. when finite values overflow the sum)
    if x.is_floating_point() and not bool(torch.isfinite(x.sum())):
        bad = ~torch.isfinite(x)
        if bad.any():
            count = int(bad.sum())
            raise DataError(
                f"{what} holds {count} non-finite value(s) (NaN or inf); remove or impute them"
            )
    if kind in ("binary", "discrete"):
        assert levels is not None, "discrete data without levels"
        if x.is_floating_point() and not torch.equal(x, torch.round(x)):
            raise DataError(
                f"{what} is declared {kind} but holds non-integer values; pass integers "
                f"0..{levels - 1}, or declare kind='continuous'"
            )
        lo, hi = x.min().item(), x.max().item()
        if lo < 0 or hi > levels - 1:
            raise DataError(
                f"{what} is declared {kind} with {levels} levels but holds values in "
                f"[{lo:g}, {hi:g}]; values must lie in 0..{levels - 1}"
            )
    elif kind != "continuous":
        raise DataError(f"unknown data kind {kind!r}; use binary, discrete or continuous")
    return x
