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
4. **The architecture is rebuilt from the config** (``Config.from_dict``), then the weights are
   loaded strictly; a mismatch names the first differing config key.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CheckpointWriteError",
    "load",
    "load_into",
    "model_payload",
    "model_from_payload",
    "read_checkpoint",
    "remove_partial_writes",
    "save",
    "write_atomic",
    "write_checkpoint",
]

import contextlib
import glob
import hashlib
import importlib
import io
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

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

    Raises:
        CheckpointWriteError: the disk is full or the directory unwritable; the previous file
            at ``path`` is intact.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointWriteError(
            e.errno, f"cannot write {what} {path}: {e.strerror}; the previous one is intact"
        ) from e
    try:
        with os.fdopen(fd, "wb") as f:
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


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint file; returns its payload dict.

    Raises:
        CheckpointError: missing, not a ppgen checkpoint, truncated, corrupted, or holding
            anything but tensors and plain containers.
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
    except Exception as e:  # noqa: BLE001 - any unpickling failure is reported the same way
        raise CheckpointError(
            f"{path}: refused to load: the payload holds objects beyond tensors and plain "
            f"containers, which could run code ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unknown checkpoint format version")
    return payload


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
    family: str, model_class: type[AbstractGenerativeModel] | None, trust_import: bool
) -> type[AbstractGenerativeModel]:
    if model_class is not None:
        return model_class
    if ":" not in family:
        return get(family)
    if not trust_import:
        raise CheckpointError(
            f"this checkpoint holds a user-defined model {family!r}; pass model_class=YourClass "
            "(or trust_import=True to import it by name)"
        )
    module, _, qualname = family.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, AbstractGenerativeModel)):
        raise CheckpointError(f"{family!r} is not a ppgen model class")
    return obj


def model_from_payload(
    payload: dict[str, Any],
    model_class: type[AbstractGenerativeModel] | None = None,
    trust_import: bool = False,
    source: str = "checkpoint",
    max_parameters: int | None = MAX_PARAMETERS,
) -> AbstractGenerativeModel:
    """Rebuild the architecture from the recorded config (refused past ``max_parameters``
    values before anything is allocated), then load the weights strictly."""
    cls = _resolve_class(payload["family"], model_class, trust_import)
    try:
        config = cls.Config.from_dict(payload["config"])
        cls.check_size(config, max_parameters)
        model = cls(config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{source}: cannot rebuild {cls.__name__} from its config: {e}"
        ) from None
    dtype = payload.get("dtype")
    if dtype in ("float16", "bfloat16", "float32", "float64"):  # saved in float64: load so
        model.to(getattr(torch, dtype))
    _load_state(model, payload["state_dict"], source)
    return model


def _load_state(model: AbstractGenerativeModel, state: dict[str, Any], source: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
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
    payload = read_checkpoint(path, map_location)
    if "model" in payload:  # a training checkpoint: prefer its evaluation weights
        payload = payload["model"]
    model = model_from_payload(payload, model_class, trust_import, source=str(path),
                               max_parameters=max_parameters)
    if isinstance(map_location, str | torch.device):
        model.to(map_location)
    return model


def load_into(model: AbstractGenerativeModel, path: str | os.PathLike) -> AbstractGenerativeModel:
    """Load the weights of a checkpoint into an existing ``model`` of the same config."""
    payload = read_checkpoint(path)
    if "model" in payload:
        payload = payload["model"]
    check_compatible(model, payload, str(path))
    _load_state(model, payload["state_dict"], str(path))
    return model
