"""CIFAR-10 as users download it: the binary version read as raw bytes, the python version only
through a restricted unpickler.

- **Binary** (``cifar-10-batches-bin/data_batch_1.bin`` ... ``test_batch.bin``): records of one
  label byte (0..9) and 3072 pixel bytes (the 1024 red, then green, then blue values of a 32x32
  image, row by row). Read with :func:`numpy.frombuffer`; nothing in the file is interpreted
  beyond bytes.
- **Python** (``cifar-10-batches-py/data_batch_1`` ... ``test_batch``): each batch is a pickle of
  a dict ``{"data": uint8 array (N, 3072), "labels": [N ints], "batch_label", "filenames"}``.
  A pickle can name any importable callable and have it called, so these files are read by
  :class:`RestrictedUnpickler`: its ``find_class`` refuses every global except the names a
  uint8 numpy array's pickle uses (``numpy...multiarray._reconstruct``, ``numpy.ndarray``,
  ``numpy.dtype``, ``_codecs.encode``, protocol 5's ``numpy..._frombuffer``), and for those it
  returns ppgen's own inert stand-ins (never numpy's or Python's): they record the array's
  shape and bytes and build a plain ``uint8`` array from them, refusing any other dtype (and
  ``bytes``, which protocols 0-2 name for an empty byte string). Everything else a pickle can
  hold without a global (dicts, lists, tuples, bytes, str, numbers, None, booleans) passes;
  a file that asks for anything more is refused with a :class:`~ppgen.datasets.DataError`
  naming the global, before that global is touched.

A folder holding ``data_batch_1`` (or ``data_batch_1.bin``) reads every ``data_batch_*`` in it:
the 50,000 training images; ``test_batch`` is the 10,000 test images, given as its own file.
Nothing is downloaded: the user points at files.
"""

from __future__ import annotations

__all__ = ["RestrictedUnpickler", "from_cifar", "is_cifar_path", "read_cifar_python"]

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppgen.datasets.base import Dataset
from ppgen.datasets.validation import DataError

_PIXELS = 3 * 32 * 32
_RECORD = 1 + _PIXELS
_CIFAR_NAME = re.compile(r"^(data_batch_\d+|test_batch)(\.bin)?$")
#: the largest batch file read (a real CIFAR-10 batch is 30.7 MB; CIFAR-100's train file 155 MB)
MAX_FILE_BYTES = 512 * 2**20


def is_cifar_path(path: str | os.PathLike) -> bool:
    """True for a CIFAR-10 batch file (``data_batch_N``, ``test_batch``, optionally ``.bin``)
    or a folder holding ``data_batch_1`` or ``data_batch_1.bin``."""
    p = Path(str(path).split("#", 1)[0])
    if p.is_dir():
        return (p / "data_batch_1").is_file() or (p / "data_batch_1.bin").is_file()
    return bool(_CIFAR_NAME.match(p.name))


# ---- the restricted unpickler -----------------------------------------------------------------


class _DType:
    """Stands in for ``numpy.dtype`` while unpickling: records the type code and byte order."""

    def __init__(self, code: Any = None, align: Any = False, copy: Any = False) -> None:
        self.code = code.decode("latin1") if isinstance(code, bytes) else code
        self.order = "|"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) >= 2 and isinstance(state[1], str | bytes):
            order = state[1]
            self.order = order.decode("latin1") if isinstance(order, bytes) else order


class _Array:
    """Stands in for ``numpy.ndarray`` while unpickling: its state (version, shape, dtype,
    Fortran order, raw bytes) becomes a plain ``uint8`` array, and any other dtype is refused."""

    def __init__(self) -> None:
        self.value: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != 5:
            raise pickle.UnpicklingError("an array's state is not (version, shape, dtype, "
                                         "order, bytes)")
        _, shape, dtype, fortran, raw = state
        if not isinstance(dtype, _DType) or dtype.code not in ("u1", "uint8", "B"):
            code = getattr(dtype, "code", type(dtype).__name__)
            raise pickle.UnpicklingError(
                f"holds an array of dtype {code!r}; ppgen reads only uint8 pixel arrays"
            )
        if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise pickle.UnpicklingError(f"holds an array of shape {shape!r}")
        if isinstance(raw, str):
            raw = raw.encode("latin1")
        if not isinstance(raw, bytes) or len(raw) != int(np.prod(shape, dtype=np.int64)):
            raise pickle.UnpicklingError(f"an array of shape {shape} with the wrong byte count")
        array = np.frombuffer(raw, dtype=np.uint8).reshape(shape, order="F" if fortran else "C")
        self.value = np.ascontiguousarray(array)


def _reconstruct(cls: Any, shape: Any, code: Any) -> _Array:
    if cls is not _Array:
        raise pickle.UnpicklingError("_reconstruct of something other than an array")
    return _Array()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> _Array:
    """Protocol 5's array constructor, through the same checks as :class:`_Array`."""
    array = _Array()
    array.__setstate__((1, shape, dtype, order == "F", bytes(buf) if isinstance(
        buf, bytearray) else buf))
    return array


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode beyond a latin1 string")
    return text.encode("latin1")


def _bytes(*args: Any) -> bytes:
    if not args:
        return b""
    if len(args) == 1 and isinstance(args[0], list) and all(
        isinstance(v, int) and 0 <= v < 256 for v in args[0]
    ):
        return bytes(args[0])
    raise pickle.UnpicklingError("bytes() beyond an empty string or a list of byte values")


_STAND_INS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _Array,
    ("numpy", "dtype"): _DType,
    ("_codecs", "encode"): _latin1,
    ("builtins", "bytes"): _bytes,
    ("__builtin__", "bytes"): _bytes,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for plain data: ``find_class`` refuses every global except the names of a
    uint8 numpy array's pickle, for which it returns inert stand-ins (see the module docstring).

    Example:
        >>> import io, pickle
        >>> RestrictedUnpickler(io.BytesIO(pickle.dumps({"a": [1, b"x", 2.5]}))).load()
        {'a': [1, b'x', 2.5]}
        >>> try:
        ...     RestrictedUnpickler(io.BytesIO(pickle.dumps(print))).load()
        ... except pickle.UnpicklingError as e:
        ...     print(str(e).split(":")[0])
        refused global builtins.print
    """

    def find_class(self, module: str, name: str) -> Any:
        stand_in = _STAND_INS.get((module, name))
        if stand_in is None:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: only plain data (containers, bytes, str, "
                "numbers) and uint8 arrays are read"
            )
        return stand_in

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id: only plain data is read")


def _plain(value: Any) -> Any:
    """The unpickled value with every array stand-in replaced by its array."""
    if isinstance(value, _Array):
        if value.value is None:
            raise pickle.UnpicklingError("an array without its data")
        return value.value
    if isinstance(value, _DType):
        raise pickle.UnpicklingError("a bare dtype")
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass a CIFAR-10 batch file or its folder")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}: {size:,} bytes, more than a CIFAR batch ({MAX_FILE_BYTES:,})")
    return path.read_bytes()


def read_cifar_python(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` of a CIFAR-10 (or CIFAR-100:
    ``fine_labels``) python-version batch, read through :class:`RestrictedUnpickler`.

    Raises:
        DataError: a file that is not a pickle, asks for any global beyond a uint8 array's, or
            does not hold ``data`` (N, 3072) and N labels.
    """
    path = Path(path)
    raw = _read_bytes(path)
    try:
        obj = _plain(RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load())
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, OverflowError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not read as a CIFAR python batch: {e}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: a CIFAR python batch holds a dict, got {type(obj).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    data = batch.get("data")
    labels = batch.get("labels", batch.get("fine_labels"))
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != _PIXELS:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(
            f"{path}: 'data' must be a uint8 array of shape (N, {_PIXELS}) (32x32 RGB), got "
            f"{shape}"
        )
    if not isinstance(labels, list | tuple) or len(labels) != len(data) or not all(
        isinstance(v, int) and 0 <= v < 100 for v in labels
    ):
        raise DataError(f"{path}: 'labels' must be {len(data)} class numbers")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def read_cifar_binary(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` of a CIFAR-10 binary batch:
    records of 1 label byte and 3072 pixel bytes."""
    path = Path(path)
    raw = _read_bytes(path)
    if not raw or len(raw) % _RECORD:
        raise DataError(
            f"{path}: {len(raw):,} bytes is not a whole number of CIFAR-10 records (1 label "
            f"byte + {_PIXELS} pixel bytes = {_RECORD} each); is it the binary version of "
            "CIFAR-10 (CIFAR-100's records have 2 label bytes)?"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise DataError(
            f"{path}: record {bad} has label byte {labels[bad]}, outside CIFAR-10's 0..9; is it "
            "a CIFAR-10 binary batch?"
        )
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def _read_one(path: Path) -> tuple[np.ndarray, np.ndarray]:
    return read_cifar_binary(path) if path.suffix == ".bin" else read_cifar_python(path)


def from_cifar(path: str | os.PathLike, *, name: str | None = None) -> Dataset:
    """A dataset of 32x32 RGB images (``(N, 3, 32, 32)``, 256 levels, with labels) from a
    CIFAR-10 batch file (binary ``*.bin`` or python) or a folder of them (every
    ``data_batch_*``: the training set).

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "test_batch.bin"
        >>> _ = f.write_bytes(bytes([3] + [7] * 3072 + [9] + [200] * 3072))
        >>> ds = from_cifar(f)
        >>> ds.event_shape, ds.levels, ds.labels.tolist(), ds.data[1, 2, 31, 31].item()
        ((3, 32, 32), 256, [3, 9], 200.0)
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(
            (f for f in path.iterdir() if _CIFAR_NAME.match(f.name)
             and f.name.startswith("data_batch_")),
            key=lambda f: int(re.findall(r"\d+", f.name)[0]),
        )
        binary = [f for f in files if f.suffix == ".bin"]
        files = binary or files  # a folder with both versions: the binary one
    else:
        files = [path]
    parts = [_read_one(f) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    data = torch.from_numpy(images.astype(np.float32))
    return Dataset(name or str(path), data, "discrete", 256, labels=torch.from_numpy(labels))
