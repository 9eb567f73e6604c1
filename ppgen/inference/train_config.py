"""The settings of one training run, declared once.

:class:`TrainConfig` is the single declaration of what :func:`ppgen.fit` accepts: its fields are
``fit``'s keyword arguments, their defaults and their help texts; ``ppgen fit``'s flags are
generated from the same fields (:func:`add_arguments`), so no setting lacks a flag and no flag
documents a different default. Values are checked once, here (:meth:`TrainConfig.validate`),
before any work is done.

``None`` in ``lr``, ``ema``, ``clip_grad`` and ``objective`` means "the family's default"
(the model's ``fit_defaults()``), resolved by :meth:`TrainConfig.with_family_defaults`, the same
for the Python API and the command line.
"""

from __future__ import annotations

__all__ = ["FitError", "TrainConfig", "add_arguments", "from_arguments"]

import argparse
import dataclasses
import math
from typing import Any, Literal

PATIENCE_AUTO = "auto"


class FitError(ValueError):
    """Training cannot start or go on (bad arguments, a locked run directory...)."""


def _field(default: Any, help: str, *, flag: bool = True, choices: tuple[str, ...] | None = None,
           factory: Any = None) -> Any:
    metadata = {"help": help, "flag": flag, "choices": choices}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything :func:`ppgen.fit` needs besides the model, the data and the run directory.

    Example:
        >>> cfg = TrainConfig(steps=100, lr=0.01)
        >>> cfg.replace(steps=200).steps, cfg.lr
        (200, 0.01)
    """

    steps: int = _field(2000, "total optimizer steps (with --resume, including those done)")
    batch_size: int = _field(128, "examples per step (the global batch under torchrun)")
    lr: float | None = _field(None, "Adam learning rate (default: the family's, else 1e-3)")
    seed: int = _field(0, "seeds torch, numpy, random and the batch order")
    device: str = _field("auto", "auto (CUDA when present), cpu, cuda, cuda:1...")
    resume: bool = _field(False, "continue from the run directory's last good checkpoint "
                                 "(starts from scratch, and says so, when there is none yet)")
    overwrite: bool = _field(False, "replace a run already in the run directory")
    progress: bool = _field(True, "show a progress bar")
    objective: str | None = _field(None, "training objective (default: the family's)")
    objective_options: dict[str, Any] = _field(
        None, "the objective's keyword options (--objective.X=V)", flag=False, factory=dict
    )
    ema: float | None = _field(None, "EMA decay of the weights, e.g. 0.999 (0: off; default: "
                                     "the family's)")
    clip_grad: float | None = _field(None, "max gradient norm per parameter group")
    weight_decay: float = _field(0.0, "Adam weight decay")
    eval_every: int | None = _field(None, "steps between validations (default steps // 20)")
    patience: int | Literal["auto"] | None = _field(
        PATIENCE_AUTO, "with validation data: validations without improvement before stopping "
        "early, keeping the best weights ('auto': 10; 0 or none: train every step and keep the "
        "last weights)"
    )
    checkpoint_every: int | None = _field(None, "steps between checkpoints (default "
                                                "eval_every)")
    log_every: int = _field(10, "steps between history records")
    diagnostics_every: int | None = _field(None, "steps between records of the objective's "
                                                 "diagnostics (default log_every)")
    on_nonfinite: Literal["raise", "skip"] = _field(
        "raise", "on a non-finite loss: stop, or skip the step", choices=("raise", "skip")
    )
    max_skipped: int = _field(10, "with on_nonfinite=skip: consecutive skips before stopping")
    precision: Literal["float32", "bf16"] = _field(
        "float32", "bf16 runs each training loss under autocast", choices=("float32", "bf16")
    )
    compile: bool | str = _field(False, "torch.compile the networks: true (inductor) or a "
                                        "backend name (eager, aot_eager, inductor)")
    accumulate: int = _field(1, "gradient accumulation: micro-batches per process and step")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes``; unknown names are a :class:`FitError` naming them."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise FitError(
                f"unknown fit settings {unknown}; known: "
                f"{', '.join(f.name for f in dataclasses.fields(self))}"
            )
        return dataclasses.replace(self, **changes)

    def with_family_defaults(self, defaults: dict[str, Any]) -> TrainConfig:
        """Fill the settings left to the family (``None``) from its ``fit_defaults()``."""
        ema = self.ema if self.ema is not None else defaults.get("ema")
        return dataclasses.replace(
            self,
            lr=self.lr if self.lr is not None else defaults.get("lr", 1e-3),
            ema=None if ema == 0 else ema,  # ema=0 switches off a family's default EMA
            clip_grad=self.clip_grad if self.clip_grad is not None else defaults.get("clip_grad"),
            objective=self.objective or defaults.get("objective"),
            objective_options={**defaults.get("objective_options", {}),
                               **(self.objective_options or {})},
        )

    def validate(self) -> TrainConfig:
        """Check every setting; returns ``self``. Raises :class:`FitError` naming the first
        bad one and what it accepts."""
        for name in ("steps", "batch_size", "log_every", "accumulate"):
            _positive_int(name, getattr(self, name))
        for name in ("eval_every", "checkpoint_every", "diagnostics_every"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if not isinstance(self.max_skipped, int) or self.max_skipped < 0:
            raise FitError(f"max_skipped must be a non-negative integer, got {self.max_skipped!r}")
        if self.patience not in (None, PATIENCE_AUTO):
            _positive_int("patience", self.patience)
        for name in ("lr", "ema", "clip_grad"):
            value = getattr(self, name)
            if value is not None and (not _number(value) or value < 0):
                raise FitError(f"{name} must be a non-negative number, got {value!r}")
        if not _number(self.weight_decay) or self.weight_decay < 0:
            raise FitError(
                f"weight_decay must be a non-negative number, got {self.weight_decay!r}"
            )
        if self.ema is not None and not 0 <= self.ema < 1:
            raise FitError(f"ema must be in [0, 1), got {self.ema!r}")
        if self.on_nonfinite not in ("raise", "skip"):
            raise FitError(f"on_nonfinite must be 'raise' or 'skip', got {self.on_nonfinite!r}")
        if self.precision not in ("float32", "bf16"):
            raise FitError(f"precision must be 'float32' or 'bf16', got {self.precision!r}")
        if not isinstance(self.compile, bool | str) or self.compile == "":
            raise FitError(
                f"compile must be a bool or a torch.compile backend name, got {self.compile!r}"
            )
        if not isinstance(self.objective_options, dict):
            raise FitError(
                f"objective_options must be a dict, got {type(self.objective_options).__name__}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready data (what ``config.json`` records under ``fit``)."""
        return dataclasses.asdict(self)


def _number(value: Any) -> bool:
    """A finite real number (not a bool)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise FitError(f"{name} must be a positive integer, got {value!r}")


# ---- the command line ---------------------------------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _optional(convert: Any) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() in ("none", "null", "") else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its errors
    return parse


def _patience(text: str) -> int | str | None:
    if text.lower() in ("none", "null", "never", "0"):  # 0: never stop early
        return None
    if text.lower() == PATIENCE_AUTO:
        return PATIENCE_AUTO
    return int(text)


_patience.__name__ = "patience (an integer, auto or none)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per :class:`TrainConfig` field to ``parser`` (``--batch-size``; booleans
    that default to true as ``--no-X``), with the field's help, default and choices."""
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if not meta.get("flag", True):
            continue
        default = f.default
        if f.name == "compile":  # --compile, and --compile-backend NAME to choose the backend
            parser.add_argument("--compile", action="store_true", help=meta["help"])
            parser.add_argument(
                "--compile-backend", default=None, metavar="NAME",
                help="torch.compile backend for --compile (default inductor; aot_eager, eager...)",
            )
            continue
        if isinstance(default, bool):
            flag = _flag(f.name) if not default else "--no-" + f.name.replace("_", "-")
            parser.add_argument(
                flag, dest=f.name, action="store_false" if default else "store_true",
                help=f"{meta['help']}: on by default; this flag turns it off" if default
                else meta["help"],
            )
            continue
        kind = {"int": int, "float": float}.get(
            str(f.type).split(" | ")[0].strip("'\""), str
        )
        convert: Any = _patience if f.name == "patience" else (
            _optional(kind) if default is None else kind)
        parser.add_argument(
            _flag(f.name), dest=f.name, type=convert, default=default,
            choices=meta.get("choices"),
            # a None default ("the family's", "steps // 20"...) is explained by the help itself
            help=meta["help"] if default is None else f"{meta['help']} (default: {default})",
        )


def from_arguments(args: argparse.Namespace, **extra: Any) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``ppgen fit`` arguments (``extra``: settings that do
    not come from flags, e.g. the ``--objective.X`` options)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if hasattr(args, f.name)}
    if values.get("compile"):
        values["compile"] = getattr(args, "compile_backend", None) or True
    return TrainConfig(**values, **extra).validate()
