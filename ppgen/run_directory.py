"""Reading a run directory as untrusted data.

A run directory (``config.json``, ``best.pt``, ``checkpoint.pt``...) may come from anywhere: a
colleague, a download, an archive. Opening one must never run code from it. The rules, applied
before anything is imported or built:

1. ``config.json`` is plain JSON, at most :data:`MAX_CONFIG_BYTES`, an object whose known fields
   have the expected types; anything else is a :class:`RunDirectoryError` naming the file.
2. The family and the model config recorded in ``config.json`` must agree with the checkpoint's;
   a run directory whose two records disagree is refused (one of them was edited or swapped).
3. A run that names code to import (a user's class ``package.module:Class`` or a *builder*
   function) is refused with :class:`UntrustedCodeError` unless the caller opts in with
   ``trust_code=True`` (``--trust-code`` on the command line). Trusting a run directory means
   running the named module's top-level code and calling the builder with arguments taken from
   ``config.json``: do it only for runs you made or whose maker you trust.
4. Even when trusted, the module is imported from the import path as it is (installed packages,
   ``PYTHONPATH``): ppgen never adds the current directory or the run directory to ``sys.path``.

Registered families (``ppgen list``) need no trust: they are rebuilt from the checkpoint's config
and loaded with ``torch.load(weights_only=True)`` (see :mod:`ppgen.checkpoint`).
"""

from __future__ import annotations

__all__ = [
    "MAX_CONFIG_BYTES",
    "RunDirectoryError",
    "RunRecord",
    "UntrustedCodeError",
    "checkpoint_path",
    "build_from",
    "import_object",
    "load_run",
    "read_config",
]

import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ppgen import checkpoint as ckpt
from ppgen import models
from ppgen.models.base import AbstractGenerativeModel

MAX_CONFIG_BYTES = 16 * 2**20
"""A ``config.json`` larger than this (16 MiB) is refused unread: ppgen writes a few kB."""

# the type of each field of config.json that a command reads (others are kept, never read)
_CONFIG_FIELDS: dict[str, type | tuple[type, ...]] = {
    "family": str,
    "model": dict,
    "fit": dict,
    "data": str,
    "builder": str,
    "builder_options": dict,
    "argv": list,
}


class RunDirectoryError(ckpt.CheckpointError):
    """A run directory that cannot be used: a malformed ``config.json``, records that disagree."""


class UntrustedCodeError(RunDirectoryError):
    """A run directory or checkpoint names code to import and the caller did not trust it."""


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What a run directory says about itself: where its weights are and its ``config.json``.

    Attributes:
        checkpoint: the file the weights were read from (``best.pt``, else ``checkpoint.pt``,
            or the file the caller named).
        config: the validated ``config.json`` (empty when the run has none).
    """

    checkpoint: Path
    config: dict[str, Any]

    @property
    def data(self) -> str | None:
        """The ``--data`` the run was trained on, when recorded."""
        return self.config.get("data")


def checkpoint_path(run: str | os.PathLike) -> Path:
    """The weights of ``run``: the file itself, or a run directory's ``best.pt`` (the best
    validation weights), else its ``checkpoint.pt``."""
    path = Path(run)
    if path.is_file():
        return path
    if not path.exists():
        raise RunDirectoryError(f"{run}: no such file or run directory")
    for candidate in ("best.pt", "checkpoint.pt"):
        if (path / candidate).is_file():
            return path / candidate
    raise RunDirectoryError(f"{run}: no best.pt or checkpoint.pt in this run directory")


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` as plain data, validated: an object whose known fields have the types
    ppgen writes. A missing file is an empty record.

    Raises:
        RunDirectoryError: naming the file, for unreadable, oversized or malformed content.
    """
    path = Path(path)
    if not path.exists():
        return {}
    if not path.is_file():
        raise RunDirectoryError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise RunDirectoryError(
            f"{path}: {size} bytes, more than a run config can be ({MAX_CONFIG_BYTES}); "
            "refusing to read it"
        )
    try:
        text = path.read_bytes().decode("utf-8")
        config = json.loads(text)
    except UnicodeDecodeError as e:
        raise RunDirectoryError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise RunDirectoryError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from None
    except RecursionError:
        raise RunDirectoryError(f"{path}: JSON nested too deeply") from None
    if not isinstance(config, dict):
        raise RunDirectoryError(
            f"{path}: holds a JSON {type(config).__name__}, expected an object with the run's "
            "family, model config and fit settings"
        )
    for field, expected in _CONFIG_FIELDS.items():
        if field in config and not isinstance(config[field], expected):
            raise RunDirectoryError(
                f"{path}: field {field!r} is a {_json_type(config[field])}, expected a "
                f"{_json_type(expected)}"
            )
    family = config.get("family")
    if family is not None and ":" not in family and family not in models.names():
        raise RunDirectoryError(
            f"{path}: unknown family {family!r}; known: {', '.join(models.names())}"
        )
    return config


def _json_type(value: Any) -> str:
    kind = value if isinstance(value, type) else type(value)
    return {dict: "JSON object", list: "JSON array", str: "string", bool: "boolean",
            int: "number", float: "number", type(None): "null"}.get(kind, kind.__name__)


def import_object(name: str, what: str = "model") -> Any:
    """The object ``package.module:Qual.Name`` names, imported from the import path as it is.

    The current directory is not added to ``sys.path`` (a module there is found only when it
    already is on the path, e.g. ``PYTHONPATH=.``): a file in whatever directory a command runs
    in must not shadow or inject code.
    """
    module, sep, qualname = name.partition(":")
    if not sep or not module or not qualname:
        raise ValueError(f"{what} {name!r}: expected package.module:Name")
    try:
        obj: Any = importlib.import_module(module)
    except ModuleNotFoundError as e:
        hint = ""
        top = module.split(".")[0]
        if (Path.cwd() / f"{top}.py").exists() or (Path.cwd() / top).is_dir():
            hint = (
                f"; ./{top} is here, but ppgen never puts the current directory on the import "
                "path: run with PYTHONPATH=. (or install the package)"
            )
        raise ValueError(f"cannot import {what} {name!r}: {e}{hint}") from None
    except ImportError as e:
        raise ValueError(f"cannot import {what} {name!r}: {e}") from None
    try:
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except AttributeError as e:
        raise ValueError(f"cannot import {what} {name!r}: {e}") from None
    return obj


def _untrusted(source: Path, role: str, name: str) -> UntrustedCodeError:
    return UntrustedCodeError(
        f"{source}: names code to import ({role} {name!r}); refused. Importing it runs that "
        "module's code: pass --trust-code (Python: trust_code=True) only for a run you trust"
    )


def _check_agreement(config_path: Path, config: dict[str, Any], payload: dict[str, Any],
                     source: Path) -> None:
    """config.json's family and model config against the checkpoint's."""
    family = config.get("family")
    if family is not None and family != payload["family"]:
        raise RunDirectoryError(
            f"{config_path}: family {family!r} disagrees with {source.name}'s "
            f"{payload['family']!r}; the run directory was altered: refusing to use it"
        )
    if "model" in config:
        key = ckpt.first_config_difference(config["model"], payload["config"])
        if key is not None:
            raise RunDirectoryError(
                f"{config_path}: model config differs from {source.name}'s at {key!r} "
                f"({config['model'].get(key, '<missing>')!r} vs "
                f"{payload['config'].get(key, '<missing>')!r}); the run directory was altered: "
                "refusing to use it"
            )


def _builder_spec(config_path: Path, config: dict[str, Any]) -> dict[str, Any]:
    facts = config.get("model", {})
    shape = facts.get("event_shape")
    if not (isinstance(shape, list) and shape
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise RunDirectoryError(
            f"{config_path}: field 'model.event_shape' must be a list of positive integers"
        )
    if not isinstance(facts.get("kind"), str):
        raise RunDirectoryError(f"{config_path}: field 'model.kind' must be a string")
    levels = facts.get("levels")
    if levels is not None and (not isinstance(levels, int) or isinstance(levels, bool)):
        raise RunDirectoryError(f"{config_path}: field 'model.levels' must be an integer or null")
    return {"event_shape": tuple(shape), "kind": facts["kind"], "levels": levels}


def build_from(
    name: str, spec: dict[str, Any], options: dict[str, Any]
) -> AbstractGenerativeModel:
    """A model from a registered family name, or (already trusted) ``package.module:Name``: a
    protocol subclass or a builder function taking the data facts and options as keywords."""
    if ":" not in name:  # parsed and size-checked by the family's config before allocating
        cls = models.get(name)
        config = cls.config_from(**spec, **options)
        cls.check_size(config)
        return cls(config)
    obj = import_object(name)
    if isinstance(obj, type) and not issubclass(obj, AbstractGenerativeModel):
        obj = None
    if obj is None or not callable(obj):
        raise ValueError(
            f"{name!r} is neither a subclass of ppgen.models.AbstractGenerativeModel nor a "
            "function returning one (a builder taking event_shape, kind, levels and the "
            "--model.X options)"
        )
    model = obj(**spec, **options)
    if not isinstance(model, AbstractGenerativeModel):
        raise ValueError(
            f"{name!r} returned a {type(model).__name__}, not a ppgen model (a subclass of "
            "ppgen.models.AbstractGenerativeModel, e.g. what ppgen.from_pyro returns)"
        )
    return model


def load_run(
    run: str | os.PathLike, *, trust_code: bool = False, map_location: Any = "cpu"
) -> tuple[AbstractGenerativeModel, RunRecord]:
    """Load the model of a run directory (or of one checkpoint file) as untrusted data.

    Arguments:
        run: a run directory (its ``best.pt``, else ``checkpoint.pt``) or a checkpoint file.
        trust_code: allow importing the user code the run names (a ``module:Class`` family or
            a builder function), which runs that code. Off by default.
        map_location: where the weights go.

    Returns:
        The model and the run's :class:`RunRecord`.

    Raises:
        UntrustedCodeError: the run names code to import and ``trust_code`` is False (raised
            before anything is imported).
        RunDirectoryError / CheckpointError: a malformed ``config.json`` or checkpoint, or
            records that disagree; each names the file.
    """
    path = checkpoint_path(run)
    config_path = path.parent / "config.json"
    config = read_config(config_path)
    payload = ckpt.read_checkpoint(path, map_location)
    if "model" in payload and isinstance(payload["model"], dict):  # a training checkpoint
        payload = payload["model"]
    if not isinstance(payload.get("family"), str) or not isinstance(payload.get("config"), dict):
        raise ckpt.CheckpointError(f"{path}: no model family and config recorded")
    _check_agreement(config_path, config, payload, path)
    builder = config.get("builder")
    if builder is not None:
        if not trust_code:
            raise _untrusted(config_path, "builder", builder)
        options = config.get("builder_options", {})
        model = build_from(builder, _builder_spec(config_path, config), options)
        ckpt.load_into(model, path)
    else:
        family = payload["family"]
        model_class = None
        if ":" in family:
            if not trust_code:
                raise _untrusted(path, "model class", family)
            model_class = import_object(family)
            if not (isinstance(model_class, type)
                    and issubclass(model_class, AbstractGenerativeModel)):
                raise ValueError(f"{family!r} is not a ppgen model class")
        model = ckpt.model_from_payload(payload, model_class, source=str(path))
    if isinstance(map_location, str | torch.device):
        model.to(map_location)
    return model, RunRecord(checkpoint=path, config=config)
