r"""User data: arrays and ``.npy`` / ``.npz`` / ``.csv`` files, validated at the edge.

**Kind and levels** are taken from the arguments when given; otherwise they are inferred from
the whole array (before any split, so every split agrees) by these documented rules, and any
case the rules cannot decide is an error rather than a guess:

- ``bool`` arrays are ``"binary"``;
- floating-point arrays are ``"continuous"`` (even when every value happens to be an integer:
  pass ``kind="discrete"`` to say otherwise);
- integer arrays with values in ``0..1`` are ``"binary"``; with values in ``0..255`` they are
  ``"discrete"`` with ``levels = max + 1``. The largest level present may be below the true
  number of levels (8-bit images whose brightest pixel is 250 give 251 levels, not 256):
  pass ``levels=`` to override;
- integer arrays with negative values or values above 255 raise :class:`DataError`: pass
  ``kind="continuous"``, or shift them to ``0..L-1`` and pass ``kind="discrete", levels=L``.

``kind="discrete"`` without ``levels`` takes ``levels = max + 1``; ``levels=L`` without ``kind``
means ``"discrete"`` (``"binary"`` for ``L = 2``).

**Splits.** ``split="all"`` is the whole array. ``"train"``, ``"val"`` and ``"test"`` come from
one fixed permutation ``numpy.random.RandomState(0).permutation(N)``: the last
``N // 10`` points are test, the ``N // 10`` before them val, the rest train (so 80/10/10; at
least 10 points are needed).

**Files** (``ppgen.datasets.load(path, split)``):

- ``.npy``: one array (``numpy.save``); pickled object arrays are refused.
- ``.npz``: the data array is the one named by ``key=`` if given, else the only array in the
  file, else the array named ``"x"``, else ``"data"``; integer class labels are read from
  ``"labels"`` or ``"y"`` when present (shape ``(N,)``).
- ``.csv``: comma-separated numbers, one point per row, UTF-8 (a leading byte-order mark, as
  spreadsheets write "CSV UTF-8", is dropped). Numbers are read as ``numpy.loadtxt`` and
  ``pandas.read_csv`` read them: ASCII decimal or scientific notation (``1``, ``-2.5``,
  ``.5``, ``1e-3``) with ASCII spaces around them ignored; ``1_0``, ``0x1F``, ``1,5``,
  Unicode digits or spaces are not numbers (Python's ``float()`` takes some of them). Empty
  cells, pandas' missing-value markers (``NA``, ``null``...), ``nan`` and ``inf`` are missing
  or infinite values and refused like any non-number, naming the row and column (1-based, as a
  spreadsheet shows them); with ``missing="mask"`` (``table.csv#missing=mask``) missing cells
  are kept as missing values instead (the dataset's ``mask``), and a table whose observed cells
  are all integers follows the integer rules above. The first non-blank row is a header, and
  skipped, when none of its non-empty cells reads as a number or a missing/infinite marker
  (so pandas' ``to_csv`` header ``,a,b`` is one); it must have as many columns as the data.
  If every cell is an integer literal (within int64) the array is integer (the rules above
  apply), else float. Blank rows, and rows whose cells are all empty (``,,``, as spreadsheets
  export trailing rows), are skipped.

Options may ride on the path after ``#`` (so they work from the command line too):
``ppgen fit made --data "pixels.npy#kind=discrete,levels=256"``.

Example:
    >>> import numpy as np, ppgen
    >>> ds = ppgen.datasets.from_array(np.random.RandomState(0).randint(0, 4, (50, 3)))
    >>> ds.kind, ds.levels, ds.split, len(ds)
    ('discrete', 4, 'all', 50)
    >>> len(ppgen.datasets.from_array(np.zeros((50, 3)), split="test"))
    5
"""

from __future__ import annotations

__all__ = [
    "FILE_SUFFIXES",
    "from_array",
    "infer_kind",
    "is_file_spec",
    "load_file",
    "parse_file_spec",
    "split_indices",
]

import csv
import io
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppgen.datasets.base import SPLITS, Dataset
from ppgen.datasets.validation import DataError

FILE_SUFFIXES = (".npy", ".npz", ".csv")
_MAX_INFERRED_LEVEL = 255
_MAX_LEVELS = 2**24  # integers above this are not exact in float32


def infer_kind(
    array: np.ndarray, kind: str | None = None, levels: int | None = None, *, what: str = "data"
) -> tuple[str, int | None]:
    """Decide ``(kind, levels)`` of ``array`` by the rules in the module docstring.

    Arguments:
        array: the data, any shape.
        kind: ``"binary"``, ``"discrete"``, ``"continuous"`` or None (infer).
        levels: number of levels, or None (infer for discrete data).
        what: how to name the data in error messages (a file path).

    Returns:
        ``(kind, levels)`` with ``levels`` None for continuous data and 2 for binary data.

    Raises:
        DataError: when the rules cannot decide, or the arguments contradict each other.
    """
    if kind not in (None, "binary", "discrete", "continuous"):
        raise DataError(f"{what}: unknown kind {kind!r}; use binary, discrete or continuous")
    if levels is not None and (
        isinstance(levels, bool) or not isinstance(levels, int | np.integer)
    ):
        raise DataError(f"{what}: levels must be an int, got {levels!r}")
    if levels is not None and not 2 <= levels <= _MAX_LEVELS:
        raise DataError(f"{what}: levels must lie in 2..{_MAX_LEVELS}, got {levels}")
    if kind == "continuous":
        if levels is not None:
            raise DataError(f"{what}: continuous data takes no levels (got levels={levels})")
        return "continuous", None
    if kind == "binary":
        if levels not in (None, 2):
            raise DataError(f"{what}: binary data has 2 levels, got levels={levels}")
        return "binary", 2
    if levels is not None:
        return ("binary" if levels == 2 and kind is None else "discrete"), int(levels)
    # kind is "discrete" (levels to infer) or None (everything to infer)
    if array.dtype == np.bool_:
        return ("binary", 2) if kind is None else ("discrete", 2)
    is_int = np.issubdtype(array.dtype, np.integer)
    if kind is None and not is_int:
        return "continuous", None
    finite = array[np.isfinite(array)] if not is_int else array
    if finite.size == 0:
        raise DataError(f"{what} holds no finite values; nothing to infer levels from")
    lo, hi = finite.min().item(), finite.max().item()  # Python numbers: hi + 1 cannot wrap
    if kind == "discrete":
        if not is_int and not np.array_equal(finite, np.round(finite)):
            raise DataError(
                f"{what} is declared discrete but holds non-integer values; pass integers "
                "0..levels-1, or kind='continuous'"
            )
        if lo < 0:
            raise DataError(
                f"{what} is declared discrete but holds negative values (min {lo:g}); "
                "shift them to 0..L-1 and pass levels=L"
            )
        if hi + 1 > _MAX_LEVELS:
            raise DataError(f"{what}: max value {hi:g} needs more than {_MAX_LEVELS} levels")
        return "discrete", max(int(hi) + 1, 2)
    if lo < 0 or hi > _MAX_INFERRED_LEVEL:
        raise DataError(
            f"{what}: integer data in [{lo}, {hi}] is ambiguous (the rules infer discrete levels "
            f"only for 0..{_MAX_INFERRED_LEVEL}); pass kind='continuous', or shift the values "
            "to 0..L-1 and pass kind='discrete', levels=L"
        )
    if hi <= 1:
        return "binary", 2
    return "discrete", int(hi) + 1


def split_indices(n: int, split: str, *, what: str = "data") -> np.ndarray:
    """Indices of ``split`` among ``n`` points (see the module docstring).

    Arguments:
        n: the number of points.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        what: how to name the data in error messages.

    Returns:
        An int64 index array; the three splits partition ``range(n)``.
    """
    if split == "all":
        return np.arange(n)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {(*SPLITS, 'all')}")
    if n < 10:
        raise DataError(
            f"{what} has {n} points, too few for a train/val/test split (needs >= 10); "
            "use split='all'"
        )
    perm = np.random.RandomState(0).permutation(n)
    n_hold = n // 10
    n_train = n - 2 * n_hold
    parts = {
        "train": perm[:n_train],
        "val": perm[n_train : n_train + n_hold],
        "test": perm[n_train + n_hold :],
    }
    return parts[split]


def from_array(
    array: Any,
    kind: str | None = None,
    levels: int | None = None,
    name: str = "array",
    labels: Any | None = None,
    split: str = "all",
    missing: str = "error",
) -> Dataset:
    """A :class:`~ppgen.datasets.Dataset` from a user's array.

    Arguments:
        array: array-like of shape ``(N, *event_shape)`` (at least 2-D: use ``x[:, None]`` for
            N scalars); numpy array, torch tensor or nested lists.
        kind: ``"binary"``, ``"discrete"``, ``"continuous"``, or None to infer it (module
            docstring).
        levels: the number of levels of discrete data, or None to infer ``max + 1``.
        name: the dataset's name (shown in errors and reports).
        labels: optional integer class labels, shape ``(N,)`` (for conditional models).
        split: ``"all"`` or one of the fixed ``"train"``/``"val"``/``"test"`` splits.
        missing: what a NaN cell means: ``"error"`` (the default: NaN is refused) or
            ``"mask"``: the cell is missing, and the dataset carries a ``mask`` (True =
            observed) with NaN left in the missing cells. Families that train on incomplete
            data (the VAE, with the MIWAE bound) fit it; ``ppgen.impute`` fills it in. Infinite
            values are refused either way, and so is a column (a scalar dimension) with no
            observed cell.

    Returns:
        The validated dataset (data as float32).

    Shapes:
        ``array``: ``(N, *event_shape)``; ``labels``: ``(N,)``.

    Raises:
        DataError: for empty, non-numeric, non-finite, wrongly shaped or out-of-range data, or
            a kind the rules cannot infer.
    """
    x = _as_numpy(array, name)
    if x.ndim < 2:
        raise DataError(
            f"{name} has shape {x.shape}; data needs a batch dim and at least one event dim, "
            "e.g. (N, D): use x[:, None] for N scalars"
        )
    if x.shape[0] == 0 or x.size == 0:
        raise DataError(f"{name} is empty (shape {x.shape}); pass at least one example")
    if x.dtype.kind not in "biuf":  # timedelta64 counts as an integer to numpy: refused too
        raise DataError(
            f"{name} has dtype {x.dtype}; convert it to a real float, integer or bool array"
        )
    if missing not in ("error", "mask"):
        raise DataError(
            f"{name}: missing must be 'error' (refuse NaN) or 'mask' (NaN cells are missing), "
            f"got {missing!r}"
        )
    observed = None
    if np.issubdtype(x.dtype, np.floating):
        if missing == "mask":
            observed = ~np.isnan(x)
            _check_observed_columns(observed, name)
        finite = np.isfinite(x) if observed is None else np.isfinite(x) | ~observed
        bad = int((~finite).sum())
        if bad:
            what = "non-finite value(s) (NaN or inf); remove or impute them"
            if observed is not None:
                what = "infinite value(s); remove them or mark them missing (NaN)"
            elif np.isnan(x).any():
                what += (" (or pass missing='mask', FILE#missing=mask on the command line, to "
                         "keep NaN cells as missing values)")
            raise DataError(f"{name} holds {bad} {what}")
        if np.nanmax(np.abs(x), initial=0.0) > np.finfo(np.float32).max:
            raise DataError(f"{name} holds values beyond the float32 range; rescale the data")
    kind, levels = infer_kind(x, kind, levels, what=name)
    y = None
    if labels is not None:
        y_np = _as_numpy(labels, f"{name} labels")
        if y_np.shape != (x.shape[0],) or not np.issubdtype(y_np.dtype, np.integer):
            raise DataError(
                f"{name}: labels must be integers of shape ({x.shape[0]},), got dtype "
                f"{y_np.dtype} and shape {y_np.shape}"
            )
        y = torch.as_tensor(y_np, dtype=torch.long)
    idx = split_indices(x.shape[0], split, what=name)
    data = torch.as_tensor(np.ascontiguousarray(x[idx]).astype(np.float32))
    mask = None if observed is None else torch.as_tensor(np.ascontiguousarray(observed[idx]))
    return Dataset(name, data, kind, levels, split, labels=None if y is None else y[idx],
                   mask=mask)


def _check_observed_columns(observed: np.ndarray, name: str) -> None:
    """Refuse incomplete data with a column (scalar dimension) that has no observed cell:
    nothing can be learned or imputed for it."""
    flat = observed.reshape(observed.shape[0], -1)
    empty = np.flatnonzero(~flat.any(0))
    if empty.size:
        shown = ", ".join(map(str, empty[:6].tolist())) + (" ..." if empty.size > 6 else "")
        raise DataError(
            f"{name}: {empty.size} column(s) have no observed value (0-based: {shown}); drop "
            "them: nothing can be learned or imputed for a column that is always missing"
        )


def _as_numpy(array: Any, name: str) -> np.ndarray:
    try:
        if torch.is_tensor(array):
            t = array.detach().cpu()
            if t.dtype in (torch.bfloat16, torch.float16):
                t = t.float()  # numpy has no bfloat16; both are exact in float32
            return t.numpy()
        return np.asarray(array)
    except (ValueError, TypeError, RuntimeError) as e:
        raise DataError(f"{name} is not a rectangular numeric array ({e})") from None


# ---- files ------------------------------------------------------------------------------------


def is_file_spec(name: str | Path) -> bool:
    """True when ``name`` names a user file (by suffix, before any ``#options``)."""
    path = str(name).split("#", 1)[0]
    return path.lower().endswith(FILE_SUFFIXES)


def parse_file_spec(
    spec: str | Path, allowed: tuple[str, ...] = ("kind", "levels", "key", "missing")
) -> tuple[Path, dict[str, Any]]:
    """Split ``"path#kind=discrete,levels=256,key=x"`` into the path and its options.

    Arguments:
        spec: the path, optionally followed by ``#`` and comma-separated ``name=value`` options.
        allowed: the option names the file type takes (``levels`` and ``size`` are read as
            integers, the rest as strings).

    Returns:
        ``(path, options)``.
    """
    text = str(spec)
    path, _, opts = text.partition("#")
    options: dict[str, Any] = {}
    for item in filter(None, (o.strip() for o in opts.split(","))):
        k, eq, v = item.partition("=")
        k, v = k.strip(), v.strip()
        if not eq or k not in allowed:
            names = ", ".join(f"{a}=..." for a in allowed)
            raise DataError(f"{text}: cannot read option {item!r}; options are {names}")
        if k in ("levels", "size"):
            try:
                options[k] = int(v)
            except ValueError:
                raise DataError(f"{text}: {k} must be an integer, got {v!r}") from None
        else:
            options[k] = v
    return Path(path), options


def load_file(
    path: str | Path,
    split: str = "all",
    *,
    kind: str | None = None,
    levels: int | None = None,
    key: str | None = None,
    missing: str | None = None,
) -> Dataset:
    """Load a ``.npy``, ``.npz`` or ``.csv`` file as a dataset (rules in the module docstring).

    Arguments:
        path: the file; options may follow a ``#`` (``"x.npy#kind=discrete,levels=256"``).
        split: ``"all"``, ``"train"``, ``"val"`` or ``"test"``.
        kind: overrides the inferred kind.
        levels: overrides the inferred levels.
        key: the array to read from a ``.npz`` file.
        missing: ``"error"`` (default) or ``"mask"``: NaN cells (and, in a ``.csv`` file,
            empty cells and missing-value markers) are missing values, carried as the
            dataset's ``mask`` (see :func:`from_array`); also ``#missing=mask`` on the path.

    Returns:
        The dataset, named by the path.

    Raises:
        DataError: naming the file and the fix, for a missing, unreadable, empty, non-finite or
            wrongly shaped file.
    """
    file, options = parse_file_spec(path)
    kind = kind if kind is not None else options.get("kind")
    levels = levels if levels is not None else options.get("levels")
    key = key if key is not None else options.get("key")
    missing = missing if missing is not None else options.get("missing", "error")
    what = str(file)
    suffix = file.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(f"{what}: unsupported file type {suffix!r}; use one of {FILE_SUFFIXES}")
    if not file.is_file():
        raise DataError(f"{what}: no such file")
    if key is not None and suffix != ".npz":
        raise DataError(f"{what}: key= selects an array of a .npz file only")
    labels = None
    if suffix == ".npy":
        array = _read_npy(file)
    elif suffix == ".npz":
        array, labels = _read_npz(file, key)
    else:
        array, integers = _read_csv(file, allow_missing=missing == "mask")
        if integers and kind is None and levels is None and np.isnan(array).any():
            # integer cells around the holes: the rules for integers decide the kind, as they
            # would for the same table without holes
            kind, levels = infer_kind(array[~np.isnan(array)].astype(np.int64), what=what)
    return from_array(array, kind=kind, levels=levels, name=what, labels=labels, split=split,
                      missing=missing)


def _read_npy(file: Path) -> np.ndarray:
    try:
        with open(file, "rb") as f:  # our own handle: closed even when numpy raises
            array = np.load(f, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError, OSError, EOFError... for bad files
        raise DataError(
            f"{file}: cannot read it as a .npy array ({type(e).__name__}: {e}); write it with "
            "numpy.save(path, array) from a numeric array"
        ) from None
    if not isinstance(array, np.ndarray):
        raise DataError(f"{file}: holds no array; write it with numpy.save(path, array)")
    return array


def _read_npz(file: Path, key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with open(file, "rb") as f, np.load(f, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except Exception as e:
        raise DataError(
            f"{file}: cannot read it as a .npz archive ({type(e).__name__}: {e}); write it "
            "with numpy.savez(path, x=array)"
        ) from None
    if not arrays:
        raise DataError(
            f"{file}: the archive holds no arrays; write it with numpy.savez(path, x=...)"
        )
    if key is not None:
        if key not in arrays:
            raise DataError(f"{file}: no array {key!r}; the archive holds {sorted(arrays)}")
        data_key = key
    elif len(arrays) == 1:
        data_key = next(iter(arrays))
    elif "x" in arrays:
        data_key = "x"
    elif "data" in arrays:
        data_key = "data"
    else:
        raise DataError(
            f"{file}: holds arrays {sorted(arrays)} and none is named 'x' or 'data'; pass "
            f"key=NAME (or append '#key=NAME' to the path)"
        )
    label_key = next((k for k in ("labels", "y") if k in arrays and k != data_key), None)
    return arrays[data_key], None if label_key is None else arrays[label_key]


def _read_csv(file: Path, allow_missing: bool = False) -> tuple[np.ndarray, bool]:
    """The numbers of a CSV file (module docstring), and whether every number is an integer
    literal. With ``allow_missing``, missing cells (empty, ``NA``, ``nan``...) read as NaN."""
    blob = file.read_bytes()
    if blob.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(
            f"{file}: UTF-16 text (a spreadsheet's 'Unicode text'); save it as 'CSV UTF-8'"
        )
    try:  # utf-8-sig: the byte-order mark of a spreadsheet's "CSV UTF-8" is not data
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{file}: not UTF-8 text ({e}); a .csv file must hold comma-separated numbers"
        ) from None
    try:  # newline="": the csv module itself reads \n, \r\n and \r line ends
        records = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:  # NUL bytes, a field over the size limit...
        raise DataError(
            f"{file}: not readable as CSV ({e}); a .csv file holds comma-separated numbers"
        ) from None
    # (row number in the file, 1-based as a spreadsheet shows it; its cells), blank rows dropped
    rows = [
        (i + 1, [c.strip(_ASCII_SPACE) for c in r])
        for i, r in enumerate(records)
        if any(c.strip(_ASCII_SPACE) for c in r)
    ]
    header = None
    if rows and not any(_cell(c)[0] != "text" for c in rows[0][1] if c):
        header, rows = rows[0], rows[1:]  # a header: no non-empty cell of the first row parses
    if not rows:
        raise DataError(f"{file}: no data rows; a .csv file holds one point per row")
    width = len(rows[0][1])
    if header is not None and len(header[1]) != width:
        raise DataError(
            f"{file}: the header (row {header[0]}) has {len(header[1])} columns but row "
            f"{rows[0][0]} has {width}; every row needs the same number of values"
        )
    values = []
    all_int = True
    for number, row in rows:
        if len(row) != width:
            raise DataError(
                f"{file}: row {number} has {len(row)} columns, row {rows[0][0]} has {width}; "
                "every row needs the same number of values"
            )
        parsed = []
        for col, c in enumerate(row, 1):
            kind, value = _cell(c)
            if kind == "missing" and allow_missing:
                parsed.append(math.nan)
                continue
            if kind != "number":
                where = f"{file}: row {number}, column {col}"
                if kind == "text":
                    hint = (
                        " (and the row is no header: other cells of it are numbers)"
                        if number == rows[0][0] and header is None else ""
                    )
                    raise DataError(
                        f"{where} holds {c!r}, not a number{hint}; fix or remove it (numbers "
                        "are read as numpy and pandas read them: no '_', no ',' decimal mark)"
                    )
                what = "is empty" if not c else f"holds {c!r}"
                raise DataError(
                    f"{where} {what}: {'an' if kind == 'infinite' else 'a'} {kind} (non-finite) "
                    "value, not a number that can be "
                    "scored; fill it in or remove the row"
                    + ("" if kind == "infinite" else
                       ", or keep it as a missing value with FILE#missing=mask")
                )
            all_int = all_int and isinstance(value, int)
            parsed.append(value)
        values.append(parsed)
    if all_int:
        try:
            if not any(isinstance(v, float) for row in values for v in row):  # no NaN holes
                return np.array(values, dtype=np.int64), True
        except OverflowError:
            all_int = False  # beyond int64: read as floats, as numpy.loadtxt(dtype=float) does
    return np.array(values, dtype=np.float64), all_int


# Numbers as numpy.loadtxt and pandas.read_csv read them: ASCII digits in decimal or scientific
# notation, no underscores (Python's float() accepts "1_0" as 10), no Unicode digits or spaces
# (float() accepts "٣" and "\u2003 1"), no hex; ASCII spaces around a cell are ignored.
_ASCII_SPACE = " \t\n\r\f\v"
_INT_CELL = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT_CELL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
_INF_CELL = re.compile(r"[+-]?inf(inity)?", re.ASCII | re.IGNORECASE)
# pandas' default missing-value markers, and "nan" in any case as numpy reads it
_NA_CELLS = frozenset({
    "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
    "NULL", "None", "n/a", "null",
})
_NAN_CELL = re.compile(r"[+-]?nan", re.ASCII | re.IGNORECASE)


def _cell(c: str) -> tuple[str, int | float | None]:
    """Classify one stripped CSV cell: ``("number", value)`` for a finite number (an ``int``
    for an integer literal), ``("missing", None)``, ``("infinite", None)`` (including
    finite-looking literals beyond the float64 range, ``1e999``), or ``("text", None)``."""
    if _INT_CELL.fullmatch(c) and len(c) < 20:  # longer ones are beyond int64: floats
        return "number", int(c)
    if _FLOAT_CELL.fullmatch(c):
        value = float(c)
        return ("number", value) if math.isfinite(value) else ("infinite", None)
    if not c or c in _NA_CELLS or _NAN_CELL.fullmatch(c):
        return "missing", None
    if _INF_CELL.fullmatch(c):
        return "infinite", None
    return "text", None
