"""Checks of data at the edge: type, shape, dtype, finiteness, support, and (for continuous
training data) degenerate columns.

Every failure raises :class:`DataError` (a ``ValueError``; :class:`DataTypeError`, also a
``TypeError``, for an argument of the wrong type) naming the problem and the fix, before any
work is done.
"""

from __future__ import annotations

__all__ = [
    "DataError",
    "DataTypeError",
    "as_batch",
    "check_batch",
    "check_continuous_columns",
]

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


class DataError(ValueError):
    """Raised for data that ppgen cannot use as given."""


class DataTypeError(DataError, TypeError):
    """Raised for an argument of the wrong type where data is expected (a numpy array, a list,
    a path...): a ``TypeError``, and a :class:`DataError` so that every data refusal is caught
    the same way."""


def as_batch(data: Any, *, what: str) -> tuple[Tensor, Tensor | None]:
    """``(x, labels)`` of a :class:`~ppgen.datasets.Dataset` or a tensor, refusing anything else.

    The one place the entry points (``fit``, ``evaluate``) turn their data argument into a
    tensor, so a numpy array, a list or a file name is refused the same way everywhere, before
    any work: one line naming the argument and the fix.

    Arguments:
        data: a Dataset (its ``data`` and ``labels``) or a tensor (no labels).
        what: how to name the argument in the message (``"fit's data"``).

    Returns:
        ``(x, labels)``; ``labels`` is None for a tensor or a Dataset without labels.

    Raises:
        DataTypeError: for any other type.
    """
    from ppgen.datasets.base import Dataset  # base imports this module

    if isinstance(data, Dataset):
        return data.data, data.labels
    if torch.is_tensor(data):
        return data, None
    kind = type(data)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    if isinstance(data, str | bytes) or hasattr(data, "__fspath__"):
        fix = f"load the file first: ppgen.datasets.load({str(data)!r}, split)"
    else:
        fix = "wrap an array with ppgen.datasets.from_array(x) (or pass torch.as_tensor(x))"
    raise DataTypeError(f"{what} must be a ppgen Dataset or a torch.Tensor, got {name}; {fix}")


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
        raise DataTypeError(
            f"{what} must be a torch.Tensor, got {type(x).__name__}; wrap an array with "
            "ppgen.datasets.from_array(x) (or pass torch.as_tensor(x))"
        )
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


# ---- degenerate continuous data ---------------------------------------------------------------

COLLINEAR_TOLERANCE = 1e-9
"""Two columns with ``|corr| > 1 - COLLINEAR_TOLERANCE`` are near-duplicates."""
_MAX_PAIRWISE_COLUMNS = 1024  # above this, only constant columns are looked for (cost N x D^2)
_SCREEN_ROWS = 1024  # rows of the pairwise screen (plus the extreme rows of columns flat there)
_SCREEN_TOLERANCE = 1e-6  # looser than COLLINEAR_TOLERANCE: the screen sees a subset of rows
_NAMED = 6  # columns named in a message; the rest are counted


def check_continuous_columns(x: Tensor, *, what: str = "data") -> Tensor:
    """Refuse continuous data whose density is degenerate: a constant column, or two columns
    that are (near-)exact linear functions of each other.

    A continuous density of such data lives on a lower-dimensional set, so its maximum
    likelihood is unbounded: a flow or a VAE trained on it reports meaningless figures (Glow
    4e11 bits/dim, others a negative bits/dim, each labelled exact) instead of failing. The
    check is for data declared ``"continuous"``; discrete data scored by a continuous model is
    dequantized first, so its constant pixels (digits' borders) are fine and not refused here.

    "Columns" are the scalar dimensions of one point (the flattened event). A column is
    constant when its minimum equals its maximum; two non-constant columns are near-duplicates
    when ``|corr| > 1 - COLLINEAR_TOLERANCE`` (1e-9) over all rows, in float64 (an exact copy,
    a negated or rescaled copy). Needs 2 rows for the constant check and 3 for the pairwise
    one (any two columns of 2 points are collinear). The pairwise check runs for at most
    1024 non-constant columns: a screen on 1024 evenly spaced rows (all rows when there are
    fewer), plus the extreme rows of any column that is flat on those (so no varying column
    looks constant to it), finds candidates with ``|corr| > 1 - 1e-6``, each then measured on
    every row. Cost about ``min(N, 1024) x D^2`` multiply-adds.

    Arguments:
        x: ``(N, *event_shape)``, finite.
        what: how to name the data in the message.

    Returns:
        ``x`` unchanged.

    Raises:
        DataError: naming the columns, with the fix (drop them, or declare the data discrete).
    """
    n = x.shape[0]
    if n < 2 or x.numel() == 0:
        return x
    flat = x.detach().reshape(n, -1)
    event_shape = tuple(x.shape[1:])
    lo, hi = flat.amin(0), flat.amax(0)  # (min/max with indices are 4x slower)
    constant = (lo == hi).nonzero().flatten().tolist()
    live = (lo != hi).nonzero().flatten()
    copies: list[tuple[int, int, float]] = []
    if n >= 3 and 2 <= len(live) <= _MAX_PAIRWISE_COLUMNS:
        copies = _near_duplicates(flat[:, live])
        copies = [(int(live[j]), int(live[i]), c) for j, i, c in copies]
    if not constant and not copies:
        return x
    parts = []
    if constant:
        names = [_column(c, event_shape) for c in constant]
        parts.append(f"{_listed(names)} {'is' if len(names) == 1 else 'are'} constant "
                     "(zero variance)")
    if copies:
        names = [
            f"{_column(j, event_shape)} duplicates {_column(i, event_shape)} (|corr| = {_corr(c)})"
            for j, i, c in copies
        ]
        parts.append(_listed(names))
    raise DataError(
        f"{what} is continuous but {' and '.join(parts)}: a continuous density of such data is "
        "degenerate (its likelihood is unbounded); drop those columns (0-based indices), or "
        "treat the data as discrete (kind='discrete', levels=L; from the command line "
        "FILE#kind=discrete,levels=L)"
    )


def _near_duplicates(flat: Tensor) -> list[tuple[int, int, float]]:
    """``(j, i, corr)`` for each column j that is a near-duplicate of an earlier column i."""
    n, d = flat.shape
    rows = torch.arange(n, device=flat.device)
    if n > _SCREEN_ROWS:
        rows = torch.linspace(0, n - 1, _SCREEN_ROWS, device=flat.device).long()
        sub = flat[rows]
        flat_there = (sub.min(0).values == sub.max(0).values).nonzero().flatten()
        # a column constant on these rows varies elsewhere: add the rows where it does
        extra = torch.cat([flat[:, flat_there].argmin(0), flat[:, flat_there].argmax(0)])
        rows = torch.unique(torch.cat([rows, extra]))
    screen = _standardized(flat[rows])
    corr = (screen.T @ screen).abs_()
    candidates = torch.triu(corr > 1 - _SCREEN_TOLERANCE, diagonal=1).nonzero().tolist()
    if not candidates:
        return []
    found: dict[int, tuple[int, float]] = {}
    for i, j in candidates:  # i < j, in order: each column is matched to its first original
        if j in found or i in found:
            continue
        if len(rows) < n:  # measured on every row, two columns at a time (memory O(N))
            pair = _standardized(flat[:, [i, j]])
            c = float((pair[:, 0] @ pair[:, 1]).abs())
        else:
            c = float(corr[i, j])
        if c > 1 - COLLINEAR_TOLERANCE:
            found[j] = (i, c)
    return [(j, i, c) for j, (i, c) in sorted(found.items())]


def _standardized(a: Tensor) -> Tensor:
    """Columns centred and scaled to unit norm, in float64 (their dot products are corr)."""
    a = a.to(torch.float64)
    a = a - a.mean(0)
    return a / a.norm(dim=0).clamp_min(torch.finfo(torch.float64).tiny)


def _column(index: int, event_shape: tuple[int, ...]) -> str:
    if len(event_shape) == 1:
        return f"column {index}"
    at = []
    for size in reversed(event_shape):
        index, r = divmod(index, size)
        at.append(r)
    return f"element {tuple(reversed(at))}"


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMED])
    return shown if len(names) <= _NAMED else f"{shown} and {len(names) - _NAMED} more"


def _corr(c: float) -> str:
    gap = 1 - c
    return "1" if gap <= 0 else f"1 - {gap:.1g}"
