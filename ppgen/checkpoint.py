"""Checkpoints: one file holding weights, config, optimizer, RNG states and step.

Safety and integrity, in order of the checks on load:

1. **Atomic writes.** A checkpoint is written to a temporary file in the same directory,
   flushed and fsynced, then renamed over the old one (``os.replace``) and the directory is
   fsynced. A crash or kill at any point leaves either the old file or the new one, whole.
2. **A header with a checksum.** The file is ``MAGIC | sha256(payload) | len(payload) | payload``.
   A truncated, bit-flipped or foreign file is refused with a :class:`CheckpointError` (a
   ``ValueError``) naming the file, before anything is unpickled.
3. **No code on load.** The payload is read with ``torch.load(weights_only=True)``: a pickle that
   would import or call anything beyond tensors and plain containers is refused. There is no
   fallback to unsafe loading. (torch >= 2.6 is recommended; its safe loader fixed known bypasses.)
4. **A schema for every field that is read** (:func:`validate_payload`): a file with a valid
   checksum but the wrong structure (a missing key, a list where a dict belongs, a step that is
   not a non-negative int, an RNG state a generator refuses, malformed optimizer state...) is
   refused with a :class:`CheckpointError` naming the file and the field path, e.g.
   ``runs/x/checkpoint.pt: field 'optimizers.model' is a list, expected a dict``, never a
   ``KeyError`` or ``TypeError`` from deep inside a resume. :func:`check_training_state` adds the
   checks that need the live objects (tensor shapes, optimizer groups).
5. **The architecture is rebuilt from the config** (``Config.from_dict``), then the weights are
   loaded strictly; a mismatch names the first differing config key.

Files written by :func:`write_atomic` get the mode ``open()`` would give them: a new file
``0o666 & ~umask``, a file it replaces keeps its mode. A target that exists and is not a regular
file (or a symlink to one) -- a directory, FIFO, socket or device -- is refused, nothing written.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "check_training_state",
    "load",
    "load_into",
    "model_payload",
    "model_from_payload",
    "payload_kind",
    "read_checkpoint",
    "remove_partial_writes",
    "save",
    "validate_payload",
    "write_atomic",
    "write_checkpoint",
]

import contextlib
import errno
import glob
import hashlib
import importlib
import io
import math
import os
import random
import re
import secrets
import stat
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppgen.models import family_name, get
from ppgen.models.base import MAX_PARAMETERS, AbstractGenerativeModel

MAGIC = b"PPGEN-CHECKPOINT-1\n"
_HEADER = len(MAGIC) + 32 + 8
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupted, unsafe or mismatched."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, unwritable directory...). The previous
    file at that path, if any, is intact."""


def write_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temp file, fsync, rename, fsync dir).

    Raises:
        OSError: when the disk is full or the directory unwritable; the previous file at
            ``path`` is then left untouched.
    """
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    blob = MAGIC + hashlib.sha256(data).digest() + struct.pack("<Q", len(data)) + data
    write_atomic(path, blob, "checkpoint")


def write_atomic(path: str | os.PathLike, data: bytes, what: str = "file") -> None:
    """Write ``data`` to ``path`` whole or not at all: a temp file ``.NAME.XXXX.tmp`` in the same
    directory, flushed and fsynced, renamed over ``path``, then the directory fsynced. A kill
    at any point leaves the old file or the new one; only the temp file can be left over
    (:func:`remove_partial_writes` deletes it).

    The file gets the mode ``open(path, "wb")`` would give it: a new file ``0o666 & ~umask``
    (the temp file is created with mode 0o666 and the kernel applies the umask, and a default
    ACL, as for ``open``); a file it replaces keeps its permission bits. A symlink at ``path`` is
    replaced by the file (the file it pointed to is left alone).

    Raises:
        CheckpointWriteError: ``path`` exists and is not a regular file or a symlink to one (a
            directory, FIFO, socket or device: nothing is written), or the disk is full or the
            directory unwritable; the previous file at ``path`` is intact.
    """
    path = Path(path)
    mode = None
    try:
        st = os.stat(path)  # follows a symlink: a link to a regular file is fine
    except FileNotFoundError:
        pass  # a new file (or a dangling symlink, replaced like a missing file)
    except OSError as e:
        raise CheckpointWriteError(
            e.errno, f"cannot write {what} {path}: {e.strerror}; nothing was written"
        ) from e
    else:
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointWriteError(
                errno.EEXIST,
                f"cannot write {what} {path}: it exists and is {_file_kind(st.st_mode)}, not a "
                "regular file; remove it or choose another path (nothing was written)",
            )
        mode = stat.S_IMODE(st.st_mode)
    try:
        fd, tmp = _create_temp(path)
    except OSError as e:
        raise CheckpointWriteError(
            e.errno, f"cannot write {what} {path}: {e.strerror}; the previous one is intact"
        ) from e
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, CheckpointWriteError):
            raise CheckpointWriteError(
                e.errno,
                f"cannot write {what} {path}: {e.strerror}; the previous one is intact",
            ) from e
        raise
    _fsync_dir(path.parent)


def _create_temp(path: Path) -> tuple[int, str]:
    """Create ``.NAME.XXXXXXXX.tmp`` beside ``path`` exclusively, with mode 0o666 less the
    umask (``tempfile.mkstemp`` would force 0o600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(path))


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def remove_partial_writes(directory: str | os.PathLike, names: tuple[str, ...]) -> None:
    """Delete the temp files a :func:`write_atomic` of ``directory/NAME`` (for each of
    ``names``) left when its process died mid-write. Call it only where no other process can be
    writing those files (the trainer holds its run lock)."""
    directory = Path(directory)
    for name in names:
        for p in directory.glob(f".{glob.escape(name)}.*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", kind: str = "any"
) -> dict[str, Any]:
    """Read and verify a checkpoint file; returns its payload dict, its structure validated.

    Arguments:
        path: the file.
        map_location: where tensors go (the trainer reads with ``"cpu"``: RNG states stay there).
        kind: the structure expected (see :func:`validate_payload`): ``"model"`` (a file of
            :func:`save` or a ``best.pt``), ``"training"`` (a run's ``checkpoint.pt``),
            ``"features"`` (the metrics' feature-network cache), ``"loadable"`` (model or
            training: what :func:`load` accepts) or ``"any"`` (whichever the payload is).

    Raises:
        CheckpointError: missing, not a ppgen checkpoint, truncated, corrupted, holding
            anything but tensors and plain containers, or of the wrong structure; the message
            names the file and, for a structure error, the field.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror})") from None
    if not blob.startswith(MAGIC):
        raise CheckpointError(
            f"{path}: not a ppgen checkpoint (bad header); ppgen only loads files written by "
            "ppgen.save or ppgen fit"
        )
    if len(blob) < _HEADER:
        raise CheckpointError(f"{path}: truncated checkpoint ({len(blob)} bytes)")
    digest = blob[len(MAGIC) : len(MAGIC) + 32]
    (size,) = struct.unpack("<Q", blob[len(MAGIC) + 32 : _HEADER])
    data = blob[_HEADER:]
    if len(data) != size:
        raise CheckpointError(
            f"{path}: truncated or padded checkpoint ({len(data)} payload bytes, expected {size})"
        )
    if hashlib.sha256(data).digest() != digest:
        raise CheckpointError(f"{path}: corrupted checkpoint (checksum mismatch)")
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every unpickling failure becomes one line
        raise CheckpointError(f"{path}: {_load_failure(e)}") from None
    validate_payload(payload, str(path), kind)
    return payload


_PLAIN = "plain data (tensors, numbers, strings, lists, dicts)"


def _load_failure(e: Exception) -> str:
    """What is wrong with a payload ``torch.load(weights_only=True)`` refused, in one line."""
    text = str(e)
    name = re.search(r"GLOBAL ([\w.]+)", text)
    if name is not None:  # a pickle naming a callable or class: what a code-running file does
        return (
            f"refused to load: the payload holds {name.group(1)} (a class or function), which is "
            f"not {_PLAIN}; ppgen never unpickles anything else, as that could run code"
        )
    detail = text.split("WeightsUnpickler error:", 1)[-1]
    detail = detail.split("Check the documentation of torch.load", 1)[0]
    detail = " ".join(detail.split("This is an internal miniz error", 1)[0].split()).rstrip(".")
    if not isinstance(e, RuntimeError | EOFError):  # weights_only's refusals (and warnings)
        return (
            f"refused to load: the payload is not a pickle of {_PLAIN} ({detail}); ppgen never "
            "unpickles anything else, as that could run code"
        )
    if "resize storage" in detail:
        detail = "a tensor's size, stride or offset reaches beyond its storage"
    return (
        f"malformed payload: {detail or type(e).__name__}; the checksum matches, so the file was "
        "written this way (write it again with ppgen.save or ppgen fit)"
    )


# ---- the schema ---------------------------------------------------------------------------------
#
# Every field any reader takes from a payload (load, load_into, model_from_payload,
# check_compatible, the trainer's resume (RunDirectory.resume reads with kind="training") and
# its RNG streams, History.from_dict, the metrics' feature cache) is checked here, so that a
# reader can index the payload without a KeyError or TypeError. Extra keys are ignored (a newer
# writer may add some) except where a reader passes them on as keywords (the history).

_KINDS = ("model", "training", "features")
_TRAINING_KEYS = (
    "model",
    "raw_state_dict",
    "objective",
    "optimizers",
    "ema_decay",
    "rng",
    "rng_streams",
    "step",
    "history",
)
# the fields of ppgen.inference.trainer.History (which this module may not import; a test keeps
# the two in step) and what each holds
_HISTORY_FIELDS = (
    "train",
    "val",
    "best_step",
    "best_val",
    "steps",
    "out",
    "skipped_steps",
    "elapsed",
    "diagnostics",
    "stopped_early",
    "restored_best",
)
_MT_WORDS = 624  # words of a Mersenne Twister state (numpy's and random's)
_U32 = 2**32 - 1


class _Invalid(Exception):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.path = path
        self.problem = problem


def _join(path: str, key: Any) -> str:
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]".replace("'", '"')


def _a(value: Any) -> str:
    """``value``'s type, as an error message says it: "a list", "None", "a tensor"..."""
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        return "a tensor"
    cls = type(value)
    if cls in (bool, int, float, str, list, tuple, dict, bytes, complex, set, frozenset):
        return ("an " if cls.__name__[0] in "aeiou" else "a ") + cls.__name__
    if isinstance(value, dict):
        return "a dict"
    return f"an object of type {cls.__module__}.{cls.__qualname__}"


def _fail(path: str, value: Any, expected: str) -> _Invalid:
    return _Invalid(path, f"is {_a(value)}, expected {expected}")


def _field(d: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in d:
        raise _Invalid(_join(path, key), "is missing")
    return d[key]


def _dict(value: Any, path: str, keys: str = "str") -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise _fail(path, value, "a dict")
    for k in value:
        if keys == "str" and not isinstance(k, str):
            raise _Invalid(_join(path, k), f"has a key of type {type(k).__name__}, expected str")
        if keys == "int" and (type(k) is not int or k < 0):
            raise _Invalid(_join(path, k), f"has the key {k!r}, expected a non-negative int")
    return value


def _int(value: Any, path: str, lo: int = 0, hi: int | None = None) -> int:
    if type(value) is not int:
        raise _fail(path, value, "an int")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise _Invalid(path, f"is {value}, expected an int {rng}")
    return value


def _real(value: Any, path: str, finite: bool = False) -> float:
    if type(value) not in (int, float):
        raise _fail(path, value, "a number")
    if finite and not math.isfinite(value):
        raise _Invalid(path, f"is {value}, expected a finite number")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _fail(path, value, "a str")
    return value


def _tensor(value: Any, path: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise _fail(path, value, "a tensor")
    if value.layout != torch.strided or value.is_meta:
        raise _Invalid(path, f"is a {value.layout} tensor on {value.device}, expected a dense one")
    return value


def _state_dict(value: Any, path: str) -> dict[str, torch.Tensor]:
    for k, v in _dict(value, path).items():
        _tensor(v, _join(path, k))
    return value


def _plain(value: Any, path: str) -> None:
    """None, bool, int, float, str, and lists, tuples and str-keyed dicts of them."""
    if value is None or type(value) in (bool, int, float, str):
        return
    if type(value) in (list, tuple):
        for i, v in enumerate(value):
            _plain(v, f"{path}[{i}]")
        return
    if type(value) is dict:
        for k, v in _dict(value, path).items():
            _plain(v, _join(path, k))
        return
    raise _Invalid(
        path,
        f"holds {_a(value)}, which is not plain data (None, bool, int, float, str, "
        "lists, tuples, dicts with str keys)",
    )


def _model(value: Any, path: str) -> None:
    d = _dict(value, path)
    _check_format(d, path)
    family = _str(_field(d, "family", path), _join(path, "family"))
    if not family or (":" in family and not re.fullmatch(r"[\w.]+:[\w.]+", family)):
        raise _Invalid(
            _join(path, "family"), f"is {family!r}, expected a family name or 'module:Class'"
        )
    config = _dict(_field(d, "config", path), _join(path, "config"))
    _plain(config, _join(path, "config"))
    _state_dict(_field(d, "state_dict", path), _join(path, "state_dict"))
    dtype = d.get("dtype")
    if dtype is not None and not isinstance(dtype, str):
        raise _fail(_join(path, "dtype"), dtype, "a str or None")


def _check_format(d: dict[str, Any], path: str) -> None:
    version = _field(d, "format", path)
    if type(version) is not int or version != FORMAT_VERSION:
        raise _Invalid(
            _join(path, "format"),
            f"is {version!r}, expected {FORMAT_VERSION} (this ppgen reads checkpoint format "
            f"{FORMAT_VERSION}; a file of another version needs the ppgen that wrote it)",
        )


def _hyper(value: Any, path: str) -> None:
    """An optimizer's hyperparameter: a scalar, a tensor, or a list/tuple of those (betas)."""
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return
    if type(value) in (list, tuple):
        for i, v in enumerate(value):
            if type(v) in (list, tuple):
                raise _fail(f"{path}[{i}]", v, "a number, str, bool, None or tensor")
            _hyper(v, f"{path}[{i}]")
        return
    raise _fail(path, value, "a number, str, bool, None, tensor or a list of them")


def _optimizer(value: Any, path: str) -> None:
    """A ``torch.optim.Optimizer.state_dict()``: {"state": {id: {name: value}},
    "param_groups": [{"params": [id, ...], hyperparameter: value, ...}]}."""
    d = _dict(value, path)
    groups_path = _join(path, "param_groups")
    groups = _field(d, "param_groups", path)
    if type(groups) is not list:
        raise _fail(groups_path, groups, "a list")
    ids: set[int] = set()
    for i, group in enumerate(groups):
        gpath = f"{groups_path}[{i}]"
        params = _field(_dict(group, gpath), "params", gpath)
        if type(params) is not list:
            raise _fail(_join(gpath, "params"), params, "a list")
        for j, pid in enumerate(params):
            _int(pid, f"{_join(gpath, 'params')}[{j}]")
            if pid in ids:
                raise _Invalid(f"{_join(gpath, 'params')}[{j}]", f"repeats parameter id {pid}")
            ids.add(pid)
        for k, v in group.items():
            if k != "params":
                _hyper(v, _join(gpath, k))
    spath = _join(path, "state")
    for pid, entry in _dict(_field(d, "state", path), spath, keys="int").items():
        epath = _join(spath, pid)
        if pid not in ids:
            raise _Invalid(epath, f"is the state of parameter {pid}, which no group holds")
        for k, v in _dict(entry, epath).items():
            if not (isinstance(v, torch.Tensor) or v is None or type(v) in (bool, int, float)):
                raise _fail(_join(epath, k), v, "a tensor or a number")


def _rng(value: Any, path: str) -> None:
    """A process's random state as the trainer saves it: torch's generator state (uint8), numpy's
    legacy state as a list, Python's as a list, and optionally the CUDA generators'. Each part
    is tried on a throwaway generator, so the trainer's restore cannot fail."""
    d = _dict(value, path)
    tpath = _join(path, "torch")
    t = _tensor(_field(d, "torch", path), tpath)
    if t.dtype != torch.uint8 or t.dim() != 1:
        raise _Invalid(
            tpath, f"is a {t.dtype} tensor of shape {tuple(t.shape)}, expected uint8 1-D"
        )
    try:
        torch.Generator().set_state(t.cpu())
    except RuntimeError as e:
        raise _Invalid(
            tpath, f"is not a torch generator state ({str(e).splitlines()[0]})"
        ) from None

    npath = _join(path, "numpy")
    state = _field(d, "numpy", path)
    if type(state) not in (list, tuple) or len(state) != 5:
        raise _fail(npath, state, "a list of 5 (name, keys, pos, has_gauss, cached)")
    name, keys, pos, has_gauss, cached = state
    _str(name, f"{npath}[0]")
    keys = _tensor(keys, f"{npath}[1]")
    if keys.dtype != torch.int64 or tuple(keys.shape) != (_MT_WORDS,):
        raise _Invalid(
            f"{npath}[1]",
            f"is a {keys.dtype} tensor of shape {tuple(keys.shape)}, "
            f"expected int64 of shape ({_MT_WORDS},)",
        )
    if bool(((keys < 0) | (keys > _U32)).any()):
        raise _Invalid(f"{npath}[1]", f"holds values outside [0, {_U32}]")
    for i, (v, hi) in enumerate(((pos, _MT_WORDS), (has_gauss, 1)), start=2):
        _real(v, f"{npath}[{i}]", finite=True)
        if not (float(v).is_integer() and 0 <= v <= hi):
            raise _Invalid(f"{npath}[{i}]", f"is {v!r}, expected a whole number in [0, {hi}]")
    _real(cached, f"{npath}[4]", finite=True)
    try:
        np.random.RandomState().set_state(
            (name, keys.cpu().numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached))
        )
    except (ValueError, TypeError) as e:
        raise _Invalid(npath, f"is not a numpy random state ({e})") from None

    ppath = _join(path, "random")
    state = _field(d, "random", path)
    if type(state) not in (list, tuple) or len(state) != 3:
        raise _fail(ppath, state, "a list of 3 (version, internal state, gauss)")
    version, internal, gauss = state
    _int(version, f"{ppath}[0]")
    if type(internal) not in (list, tuple) or len(internal) != _MT_WORDS + 1:
        raise _fail(f"{ppath}[1]", internal, f"a list of {_MT_WORDS + 1} ints")
    for i, word in enumerate(internal):
        _int(word, f"{ppath}[1][{i}]", 0, _U32)
    if gauss is not None:
        _real(gauss, f"{ppath}[2]", finite=True)
    try:
        random.Random().setstate((version, tuple(internal), gauss))
    except (ValueError, TypeError, OverflowError) as e:
        raise _Invalid(ppath, f"is not a Python random state ({e})") from None

    if "cuda" in d:
        cpath = _join(path, "cuda")
        states = d["cuda"]
        if type(states) not in (list, tuple):
            raise _fail(cpath, states, "a list of tensors")
        for i, t in enumerate(states):
            t = _tensor(t, f"{cpath}[{i}]")
            if t.dtype != torch.uint8 or t.dim() != 1:
                raise _Invalid(
                    f"{cpath}[{i}]",
                    f"is a {t.dtype} tensor of shape {tuple(t.shape)}, expected uint8 1-D",
                )


def _records(value: Any, path: str, required: tuple[str, ...]) -> None:
    if type(value) is not list:
        raise _fail(path, value, "a list")
    for i, record in enumerate(value):
        rpath = f"{path}[{i}]"
        for k, v in _dict(record, rpath).items():
            if k == "step":
                _int(v, _join(rpath, k))
            elif v is not None:
                _real(v, _join(rpath, k))
        for k in required:
            _field(record, k, rpath)


def _history(value: Any, path: str) -> None:
    """What ``History.from_dict`` takes: its fields (any may be absent), typed."""
    d = _dict(value, path)
    for k in d:
        if k not in _HISTORY_FIELDS:
            raise _Invalid(
                _join(path, k),
                f"is not a field of the training history ({', '.join(_HISTORY_FIELDS)})",
            )
    for k, required in (
        ("train", ("step",)),
        ("val", ("step", "val_loss")),
        ("diagnostics", ("step",)),
    ):
        if k in d:
            _records(d[k], _join(path, k), required)
    for k in ("steps", "skipped_steps"):
        if k in d:
            _int(d[k], _join(path, k))
    if d.get("best_step") is not None:
        _int(d["best_step"], _join(path, "best_step"))
    if d.get("best_val") is not None:
        _real(d["best_val"], _join(path, "best_val"))
    if "elapsed" in d:
        _real(d["elapsed"], _join(path, "elapsed"))
    if d.get("out") is not None:
        _str(d["out"], _join(path, "out"))
    for k in ("stopped_early", "restored_best"):
        if k in d and not isinstance(d[k], bool):
            raise _Invalid(_join(path, k), f"is a {type(d[k]).__name__}, expected a bool")


def _training(d: dict[str, Any]) -> None:
    _model(_field(d, "model", ""), "model")
    raw = _field(d, "raw_state_dict", "")
    if raw is not None:
        _state_dict(raw, "raw_state_dict")
    objective = _dict(_field(d, "objective", ""), "objective")
    _str(_field(objective, "name", "objective"), "objective.name")
    options = _dict(_field(objective, "options", "objective"), "objective.options")
    _plain(options, "objective.options")
    _state_dict(_field(objective, "state_dict", "objective"), "objective.state_dict")
    for g, state in _dict(_field(d, "optimizers", ""), "optimizers").items():
        _optimizer(state, _join("optimizers", g))
    decay = _field(d, "ema_decay", "")
    if decay is not None:
        _real(decay, "ema_decay")
        if not 0 <= decay <= 1:
            raise _Invalid("ema_decay", f"is {decay!r}, expected a number in [0, 1] or None")
    if (raw is None) != (decay is None):
        raise _Invalid(
            "raw_state_dict",
            "is None although ema_decay is set"
            if raw is None
            else "is set although ema_decay is None",
        )
    streams = d.get("rng_streams")
    if streams is not None:
        for v, state in _dict(streams, "rng_streams", keys="int").items():
            _rng(state, _join("rng_streams", v))
    if not streams:  # the trainer then reads "rng" (stream 0, as older checkpoints had it)
        _rng(_field(d, "rng", ""), "rng")
    elif "rng" in d:
        _rng(d["rng"], "rng")
    _int(_field(d, "step", ""), "step")
    _history(_field(d, "history", ""), "history")


def _features(d: dict[str, Any]) -> None:
    _str(_field(d, "kind", ""), "kind")
    _int(_field(d, "version", ""), "version")
    if "binary" in d and type(d["binary"]) is not bool:
        raise _fail("binary", d["binary"], "a bool")
    for k, v in _dict(_field(d, "accuracy", ""), "accuracy").items():
        _real(v, _join("accuracy", k))
    _state_dict(_field(d, "state_dict", ""), "state_dict")


def payload_kind(payload: Mapping[str, Any]) -> str:
    """Which structure a payload claims: ``"features"`` (the metrics' cache), ``"training"`` (a
    run's checkpoint: it has any of the training fields) or ``"model"``."""
    if payload.get("kind") == "ppgen-digits-features":
        return "features"
    if any(k in payload for k in _TRAINING_KEYS):
        return "training"
    return "model"


def validate_payload(payload: Any, source: str, kind: str = "any") -> str:
    """Check the structure of a payload; returns its kind.

    Every field a reader takes from a checkpoint is checked here (presence, type, range, and
    the RNG states by a trial on a throwaway generator), so that code indexing a validated
    payload meets no ``KeyError``/``TypeError``.

    Arguments:
        payload: what ``torch.load`` returned.
        source: the file, for the message.
        kind: ``"model"``, ``"training"``, ``"features"``, ``"loadable"`` (model or training) or
            ``"any"`` (as :func:`payload_kind` says).

    Raises:
        CheckpointError: ``"{source}: field 'a.b' is a list, expected a dict"`` and the like.
    """
    if kind not in (*_KINDS, "any", "loadable"):
        raise ValueError(f"kind must be one of {(*_KINDS, 'any', 'loadable')}, got {kind!r}")
    if not isinstance(payload, dict):
        raise CheckpointError(f"{source}: the payload is {_a(payload)}, expected a dict")
    claimed = payload_kind(payload)
    if kind == "loadable" and claimed == "features":
        raise CheckpointError(f"{source}: holds a feature-network cache, not a model")
    if kind in _KINDS and claimed != kind:
        # judged as what the caller expects: the message names what is missing for that kind
        claimed = kind
    try:
        if claimed == "model":
            _model(payload, "")
        else:
            _check_format(payload, "")
            (_training if claimed == "training" else _features)(payload)
    except _Invalid as e:
        raise CheckpointError(f"{source}: field {e.path!r} {e.problem}") from None
    return claimed


def check_training_state(
    payload: Mapping[str, Any],
    source: str,
    model: torch.nn.Module,
    objective: torch.nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
) -> None:
    """Check a validated training payload against the live objects it will be loaded into, so
    that loading it (and the first steps after) cannot fail: every tensor of the model's and the
    objective's state dicts (raw and EMA weights) present with the live shape and kind of dtype,
    an optimizer state for every live group with the same groups, parameter counts and
    hyperparameter types, and its per-parameter tensors of the parameters' shapes.

    The optimizer check loads the saved state into a throwaway optimizer and takes a step, which
    can advance values it loaded in place (Adam's step counts): give it a copy of a payload you
    go on using (the trainer's resume does).

    Raises:
        CheckpointError: naming ``source`` and the field.
    """
    try:
        live = model.state_dict()
        # with EMA the trainer keeps model.state_dict as its running average (lerp_ in place):
        # the dtypes must then be the live ones exactly
        ema = payload["ema_decay"] is not None
        _same_tensors(payload["model"]["state_dict"], live, "model.state_dict", exact=ema)
        if payload["raw_state_dict"] is not None:
            _same_tensors(payload["raw_state_dict"], live, "raw_state_dict")
        _same_tensors(
            payload["objective"]["state_dict"], objective.state_dict(), "objective.state_dict"
        )
        for g, opt in optimizers.items():
            saved = _field(payload["optimizers"], g, "optimizers")
            _same_optimizer(saved, opt, _join("optimizers", g))
            _try_optimizer(saved, opt, _join("optimizers", g))
    except _Invalid as e:
        raise CheckpointError(f"{source}: field {e.path!r} {e.problem}") from None


def _kind(t: torch.Tensor) -> str:
    if t.is_complex():
        return "complex"
    if t.is_floating_point():
        return "floating"
    return "bool" if t.dtype == torch.bool else "integer"


def _same_tensors(
    saved: dict[str, torch.Tensor],
    live: Mapping[str, Any],
    path: str,
    kinds: bool = True,
    exact: bool = False,
) -> None:
    for k, ref in live.items():
        t = _field(saved, k, path)
        if not isinstance(ref, torch.Tensor):
            continue
        if t.shape != ref.shape:
            raise _Invalid(
                _join(path, k), f"has shape {tuple(t.shape)}, expected {tuple(ref.shape)}"
            )
        if exact and t.dtype != ref.dtype:
            raise _Invalid(_join(path, k), f"is a {t.dtype} tensor, expected {ref.dtype}")
        if kinds and _kind(t) != _kind(ref):
            raise _Invalid(
                _join(path, k), f"is a {t.dtype} tensor, expected {_kind(ref)} ({ref.dtype})"
            )
    for k in saved:
        if k not in live:
            raise _Invalid(_join(path, k), "is not in the module being loaded (an unexpected key)")


def _try_optimizer(saved: dict[str, Any], opt: torch.optim.Optimizer, path: str) -> None:
    """Load ``saved`` into a throwaway optimizer of ``opt``'s class over "meta" copies of its
    parameters (shapes and dtypes, no memory) and take a step: what the optimizer itself
    requires of its state (each per-parameter entry, each hyperparameter) is checked by the
    optimizer, whatever its class. Warnings count as failures (a complex moment cast to real)."""
    import warnings

    params = [
        [torch.nn.Parameter(torch.empty_like(p, device="meta")) for p in group["params"]]
        for group in opt.param_groups
    ]
    groups = [
        {**{k: v for k, v in group.items() if k != "params"}, "params": ps}
        for group, ps in zip(opt.param_groups, params, strict=True)
    ]
    try:
        trial = type(opt)(groups)
    except Exception:  # noqa: BLE001 - an optimizer this trial cannot rebuild: the checks above
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            trial.load_state_dict(saved)
            for ps in params:
                for p in ps:
                    p.grad = torch.zeros_like(p)
            trial.step()
    except Exception as e:  # noqa: BLE001 - whatever the optimizer refuses, in one line
        detail = " ".join(f"{type(e).__name__}: {e}".split())
        raise _Invalid(path, f"does not work in {type(opt).__name__} ({detail})") from None


def _same_hyper(saved: Any, ref: Any, path: str) -> None:
    if ref is None or type(ref) is bool:
        ok = saved is None or type(saved) is bool
    elif type(ref) in (int, float) or isinstance(ref, torch.Tensor):
        ok = type(saved) in (int, float) or (
            isinstance(saved, torch.Tensor) and saved.numel() == 1
        )
    elif type(ref) in (list, tuple):
        if type(saved) not in (list, tuple) or len(saved) != len(ref):
            raise _fail(path, saved, f"a list of {len(ref)}")
        for i, (s, r) in enumerate(zip(saved, ref, strict=True)):
            _same_hyper(s, r, f"{path}[{i}]")
        return
    else:
        ok = type(saved) is type(ref)
    if not ok:
        raise _fail(path, saved, f"{_a(ref)} as the optimizer has")


def _same_optimizer(saved: dict[str, Any], opt: torch.optim.Optimizer, path: str) -> None:
    groups_path = _join(path, "param_groups")
    groups = saved["param_groups"]
    if len(groups) != len(opt.param_groups):
        raise _Invalid(
            groups_path, f"has {len(groups)} groups, the optimizer {len(opt.param_groups)}"
        )
    shapes: dict[int, tuple[torch.Size, str]] = {}
    for i, (group, ref) in enumerate(zip(groups, opt.param_groups, strict=True)):
        gpath = f"{groups_path}[{i}]"
        if len(group["params"]) != len(ref["params"]):
            raise _Invalid(
                _join(gpath, "params"),
                f"lists {len(group['params'])} parameters, the optimizer has {len(ref['params'])}",
            )
        shapes.update(
            (pid, (p.shape, _kind(p)))
            for pid, p in zip(group["params"], ref["params"], strict=True)
        )
        for k, v in ref.items():
            if k not in ("params", "param_names"):
                _same_hyper(_field(group, k, gpath), v, _join(gpath, k))
    spath = _join(path, "state")
    for pid, entry in saved["state"].items():
        for k, v in entry.items():
            if not isinstance(v, torch.Tensor):
                continue
            if v.dim() > 0 and v.shape != shapes[pid][0]:
                raise _Invalid(
                    _join(_join(spath, pid), k),
                    f"has shape {tuple(v.shape)}, its parameter {tuple(shapes[pid][0])}",
                )
            if _kind(v) in ("complex", "bool") and _kind(v) != shapes[pid][1]:
                raise _Invalid(
                    _join(_join(spath, pid), k),
                    f"is a {v.dtype} tensor, its parameter {shapes[pid][1]}",
                )


def model_payload(model: AbstractGenerativeModel) -> dict[str, Any]:
    """What a checkpoint records about a model: family, config and weights."""
    name = family_name(model)
    cls = type(model)
    floating = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return {
        "format": FORMAT_VERSION,
        "family": name if name is not None else f"{cls.__module__}:{cls.__qualname__}",
        "config": model.config.to_dict(),
        "state_dict": model.state_dict(),
        "dtype": str(floating[0]).removeprefix("torch.") if floating else None,
    }


def _resolve_class(
    family: str,
    model_class: type[AbstractGenerativeModel] | None,
    trust_import: bool,
    source: str = "checkpoint",
) -> type[AbstractGenerativeModel]:
    if model_class is not None:
        return model_class
    if ":" not in family:
        try:
            return get(family)
        except ValueError as e:
            raise CheckpointError(f"{source}: field 'family': {e}") from None
    if not trust_import:
        raise CheckpointError(
            f"{source}: this checkpoint holds a user-defined model {family!r}; pass "
            "model_class=YourClass (or trust_import=True to import it by name)"
        )
    module, _, qualname = family.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise CheckpointError(
            f"{source}: cannot import {family!r} named by field 'family': {e}"
        ) from None
    if not (isinstance(obj, type) and issubclass(obj, AbstractGenerativeModel)):
        raise CheckpointError(f"{source}: {family!r} is not a ppgen model class")
    return obj


def model_from_payload(
    payload: dict[str, Any],
    model_class: type[AbstractGenerativeModel] | None = None,
    trust_import: bool = False,
    source: str = "checkpoint",
    max_parameters: int | None = MAX_PARAMETERS,
) -> AbstractGenerativeModel:
    """Rebuild the architecture from the recorded config (refused past ``max_parameters``
    values before anything is allocated), then load the weights strictly.

    ``payload`` is a model payload (:func:`model_payload`, or a training checkpoint's
    ``"model"``); it is validated here too, so a hand-made dict gets the same one-line errors."""
    return _model_from_payload(payload, model_class, trust_import, source, "", max_parameters)


def _model_from_payload(
    payload: dict[str, Any],
    model_class: type[AbstractGenerativeModel] | None,
    trust_import: bool,
    source: str,
    prefix: str,
    max_parameters: int | None = MAX_PARAMETERS,
) -> AbstractGenerativeModel:
    validate_payload(payload, source, "model")
    cls = _resolve_class(payload["family"], model_class, trust_import, source)
    try:
        config = cls.Config.from_dict(payload["config"])
        cls.check_size(config, max_parameters)
        model = cls(config)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as e:
        raise CheckpointError(
            f"{source}: cannot rebuild {cls.__name__} from its config: {e}"
        ) from None
    dtype = payload.get("dtype")
    if dtype in ("float16", "bfloat16", "float32", "float64"):  # saved in float64: load so
        model.to(getattr(torch, dtype))
    _load_state(model, payload["state_dict"], source, _join(prefix, "state_dict"))
    return model


def _load_state(
    model: AbstractGenerativeModel, state: dict[str, Any], source: str, field: str = "state_dict"
) -> None:
    try:
        _same_tensors(state, model.state_dict(), field, kinds=False)
    except _Invalid as e:
        raise CheckpointError(
            f"{source}: weights do not fit {type(model).__name__}: field {e.path!r} {e.problem}"
        ) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = " ".join(str(e).split())
        raise CheckpointError(
            f"{source}: weights do not fit {type(model).__name__}: {first}"
        ) from None


def first_config_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """The first key (sorted) whose value differs between two config dicts, or None."""
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<missing>") != b.get(key, "<missing>"):
            return key
    return None


def check_compatible(model: AbstractGenerativeModel, payload: dict[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` naming the first mismatch between ``model`` and a payload."""
    mine = model_payload(model)
    if payload["family"] != mine["family"]:
        raise CheckpointError(
            f"{source}: holds a {payload['family']!r} model, not {mine['family']!r}"
        )
    key = first_config_difference(mine["config"], payload["config"])
    if key is not None:
        raise CheckpointError(
            f"{source}: config differs at {key!r}: checkpoint has "
            f"{payload['config'].get(key, '<missing>')!r}, model has "
            f"{mine['config'].get(key, '<missing>')!r}"
        )


def save(model: AbstractGenerativeModel, path: str | os.PathLike) -> None:
    """Save ``model`` (family, config, weights) to one file, atomically; :func:`load`
    rebuilds it with the same ``log_prob`` to the bit."""
    write_checkpoint(path, model_payload(model))


def load(
    path: str | os.PathLike,
    model_class: type[AbstractGenerativeModel] | None = None,
    map_location: Any = "cpu",
    trust_import: bool = False,
    max_parameters: int | None = MAX_PARAMETERS,
) -> AbstractGenerativeModel:
    """Load a model saved by :func:`save` or written by ``ppgen fit`` (its weights; for a run's
    checkpoint, the EMA weights when training used EMA).

    Arguments:
        path: the file.
        model_class: the class of a user-defined model (built-in families are found by name).
        map_location: where tensors go (``"cpu"``, ``"cuda"``...).
        trust_import: import a user-defined class by the module path recorded in the file.
        max_parameters: refuse a config whose model holds more values (default 2**28).

    Raises:
        CheckpointError: for any unusable file (see the module docstring).
    """
    payload = read_checkpoint(path, map_location, kind="loadable")
    prefix = ""
    if "model" in payload:  # a training checkpoint: prefer its evaluation weights
        payload, prefix = payload["model"], "model"
    model = _model_from_payload(payload, model_class, trust_import, str(path), prefix,
                                max_parameters)
    if isinstance(map_location, str | torch.device):
        model.to(map_location)
    return model


def load_into(model: AbstractGenerativeModel, path: str | os.PathLike) -> AbstractGenerativeModel:
    """Load the weights of a checkpoint into an existing ``model`` of the same config."""
    payload = read_checkpoint(path, kind="loadable")
    prefix = ""
    if "model" in payload:
        payload, prefix = payload["model"], "model"
    check_compatible(model, payload, str(path))
    _load_state(model, payload["state_dict"], str(path), _join(prefix, "state_dict"))
    return model
