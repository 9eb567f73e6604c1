"""One training loop for every family.

:func:`fit` reads only the protocol: the model's declared ``default_objective`` and hooks
(``initialize``, ``fit_defaults``, ``conditional``), and the objective's parameter groups,
schedule and losses. It owns devices, minibatches, optimizers, gradient clipping, the
non-finite guard, EMA, validation with best-checkpoint and early stopping, checkpoints and
exact resume, progress bars, signals (Ctrl-C / SIGTERM save and stop cleanly), a lock on the
run directory, and data-parallel training under ``torchrun`` (see
:mod:`ppgen.inference.distributed`).

With validation data, :func:`fit` stops early by default (``patience="auto"``) and returns the
model holding its best-validation weights, as Keras' ``restore_best_weights`` and Lightning's
best checkpoint do; ``patience=None`` trains every step and keeps the last weights.

A run directory is a record a later command can rely on, however the run ends: ``config.json``
is complete when training starts, ``checkpoint.pt``, ``history.json`` and the training curve are
written together at each checkpoint. A fit never replaces another run in its directory unless
asked to (``overwrite=True``), and ``resume=True`` on a directory without a checkpoint yet starts
from scratch, so a scheduler may always pass it.

Reproducibility: the batch at step ``s`` is a function of ``(seed, s)`` alone (epoch ``e`` uses the
permutation drawn from ``seed`` and ``e``), and the RNG states travel in the checkpoint, so
fitting 2N steps equals fitting N, stopping, and resuming N, to the bit on CPU.

Random streams: every global batch is cut into ``S = processes x accumulate`` equal contiguous
slices; slice ``v`` is processed (its loss, its dequantization noise, its latents) on random
stream ``v``, seeded ``seed + v`` (stream 0 is the one that built the model and objective). A
run therefore depends on ``S``, not on how ``S`` splits into processes and accumulation
micro-batches: 2 processes give the parameters of 1 process with ``accumulate=2``, up to float
summation order, and a 2-process run resumes in 1 process with ``accumulate=2`` exactly. Every
stream's state travels in the checkpoint.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_PATIENCE",
    "FitError",
    "History",
    "NonFiniteLossError",
    "RunExistsError",
    "TrainingInterrupted",
    "fit",
]

import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import random
import signal
import sys
import threading
import time
import types
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import torch
from torch import Tensor

from ppgen import checkpoint as ckpt
from ppgen.datasets.base import Dataset
from ppgen.datasets.validation import DataError, as_batch, check_batch, check_continuous_columns
from ppgen.inference import distributed as dist_utils
from ppgen.inference.objectives import AbstractObjective, make_objective
from ppgen.inference.train_config import FitError, TrainConfig
from ppgen.models.base import AbstractGenerativeModel


class NonFiniteLossError(FitError):
    """A loss or gradient became NaN/inf; the parameters are those of the last good step."""


class RunExistsError(FitError):
    """The run directory already holds a run (or something else) that the fit would replace."""


# Validations without improvement before a fit with validation data stops (``patience="auto"``).
# With the default ``eval_every = steps // 20`` this is half a run: an exact validation loss
# that still falls slowly (MADE on digits: every one of 20 validations of a 2000-step run
# improved) never stops, and a run that overfits stops and returns its best weights (the default
# Gated PixelCNN on digits, 2000 steps: best validation at step 600, 77.7 nats, then 93.3 by
# step 1300; it stops at 1600 with the step-600 weights, 1.787 +- 0.016 test bits/dim); a
# stochastic validation loss (a VAE's ELBO, a dequantized flow's) gets room for its noise.
DEFAULT_PATIENCE = 10


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after finishing a step and saving a checkpoint.

    Attributes:
        signum: the signal received.
        step: the number of completed steps.
        checkpoint: the checkpoint written, or None when training had no ``out`` directory.
    """

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"training interrupted by signal {signum} after step {step}")
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        """The conventional shell exit code: 128 + signal number (130 for SIGINT)."""
        return 128 + self.signum


@dataclasses.dataclass
class History:
    """What happened during :func:`fit`.

    Attributes:
        train: one record per logged step: ``{"step", "loss" (or "loss/<group>"), "time"}``.
        val: one record per validation: ``{"step", "val_loss"}``.
        best_step / best_val: the best validation so far (None without validation data).
        steps: completed steps.
        out: the run directory, if any.
        skipped_steps: steps skipped for a non-finite loss (``on_nonfinite="skip"``).
        stopped_early: training stopped before ``steps`` because validation stopped improving.
        restored_best: the model was left holding the weights of ``best_step`` (the best
            validation), not those of the last step.
        diagnostics: the objective's ``diagnostics()`` every ``diagnostics_every`` steps:
            ``{"step", ...}`` (e.g. a GAN's discriminator accuracies and gradient norms).
    """

    train: list[dict[str, float]] = dataclasses.field(default_factory=list)
    val: list[dict[str, float]] = dataclasses.field(default_factory=list)
    best_step: int | None = None
    best_val: float | None = None
    steps: int = 0
    out: str | None = None
    skipped_steps: int = 0
    elapsed: float = 0.0
    diagnostics: list[dict[str, float]] = dataclasses.field(default_factory=list)
    stopped_early: bool = False
    restored_best: bool = False

    def summary(self) -> str:
        """One line: the steps run, whether training stopped early, which weights the model holds.

        Example: ``"340 steps (stopped early: no improvement in 10 validations); best weights
        from step 240 (val loss 123.4)"``.
        """
        parts = [f"{self.steps} steps"]
        if self.stopped_early:
            parts[0] += " (stopped early: validation stopped improving)"
        if self.best_step is not None and self.best_val is not None:
            best = f"step {self.best_step} (val loss {self.best_val:.4g})"
            if self.restored_best or self.best_step == self.steps:
                parts.append(f"best weights from {best}")
            else:
                parts.append(f"last weights; the best validation was at {best}")
        return "; ".join(parts)

    @property
    def loss(self) -> list[float]:
        """The logged training loss (summed over groups) per logged step."""
        return [sum(v for k, v in r.items() if k.startswith("loss")) for r in self.train]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        return cls(**data)


# ---- small pieces ---------------------------------------------------------------------------


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and random together, as Pyro's ``set_rng_seed`` does.

    Raises:
        ValueError: ``seed`` is not an integer in ``[0, 2**32 - 1]`` (the range all three accept;
            a bool or a float is refused rather than rounded), before anything is seeded.
    """
    # numpy's legacy seeding takes [0, 2**32 - 1]; torch and random take more
    integer = isinstance(seed, int | np.integer) and not isinstance(seed, bool)
    if not (integer and 0 <= seed <= 2**32 - 1):
        raise ValueError(f"seed must be an integer in [0, 2**32 - 1], got {seed!r}")
    pyro.set_rng_seed(int(seed))


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            *map(float, np_state[2:]),
        ],
        "random": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])


def batch_indices(
    n: int, batch_size: int, seed: int, step: int, generator_device: str = "cpu"
) -> Tensor:
    """Indices of the batch used at ``step``: epoch ``e`` walks a permutation drawn from
    ``(seed, e)``, dropping the last partial batch. A pure function of its arguments."""
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size
    epoch, b = divmod(step, per_epoch)
    perm = _epoch_permutation(n, seed, epoch, generator_device)
    return perm[b * batch_size : (b + 1) * batch_size]


def _grad_norm(params: Sequence[torch.nn.Parameter], clip: float | None) -> Tensor:
    """The gradients' total 2-norm, clipped to ``clip`` when set. Without a clip only the norm
    is computed (it feeds the non-finite check): ``clip_grad_norm_(..., inf)`` would also
    multiply every gradient by 1, a pass over all of them each step (about 10% of a small
    VAE's step on CPU)."""
    if clip is not None:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is None:
        return torch.nn.utils.clip_grad_norm_(params, math.inf)
    grads = [p.grad for p in params if p.grad is not None]
    return get_total_norm(grads) if grads else torch.zeros(())


@functools.lru_cache(maxsize=4)
def _epoch_permutation(n: int, seed: int, epoch: int, generator_device: str) -> Tensor:
    """The permutation walked in ``epoch``: drawn once per epoch, not once per step."""
    g = torch.Generator(device=generator_device).manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class _EMA:
    """Exponential moving average of a model's parameters; buffers are copied, not averaged.

    Buffers hold structure or statistics the model computes (MADE's current masks, actnorm's
    initialized flag, batch-norm running moments); averaging a mask that changes every step
    would give a mask of no ordering, so the shadow takes the live model's buffers as they are.

    A dozen lines instead of ``torch.optim.swa_utils.AveragedModel``: that wrapper deep-copies
    the module and averages through ``forward``, whereas ppgen's families are used through
    ``log_prob``/``sample``/Pyro programs, and the trainer needs the averaged tensors as a plain
    state dict for checkpoints and swapping.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise FitError(f"ema must lie in (0, 1), got {decay}")
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._params = {k for k, _ in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if k in self._params and v.is_floating_point():
                s.lerp_(v, 1.0 - self.decay)
            else:
                s.copy_(v)

    @contextlib.contextmanager
    def swapped_in(self, model: torch.nn.Module) -> Iterator[None]:
        """Temporarily load the averaged weights into ``model``."""
        raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield
        finally:
            model.load_state_dict(raw)


class _SignalGuard:
    """Turns SIGINT/SIGTERM into a flag checked between steps (main thread only); a second
    SIGINT interrupts at once, as :class:`TrainingInterrupted` without a checkpoint (one line
    from the CLI, not a traceback from wherever the step was)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.step = 0  # the completed steps, kept up to date by the loop
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise TrainingInterrupted(signum, self.step, None)
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# The files a run writes atomically (checkpoint.write_atomic), and the hard link of the
# checkpoint rotation (_save_run): what a kill mid-write can leave behind is derived from them.
_RUN_FILES = ("checkpoint.pt", "best.pt", "config.json", "history.json", "training_curve.png")
_PREV_LINK = ".checkpoint.prev.pt.link"
# What a ppgen run directory may hold: a directory with anything else is not (only) a run.
_CHECKPOINTS = ("checkpoint.pt", "checkpoint.next.pt", "checkpoint.prev.pt")
_RUN_RECORDS = ("config.json", "best.pt", *_CHECKPOINTS)  # a run a fit would replace
_RUN_NAMES = frozenset({*_RUN_FILES, *_CHECKPOINTS, ".lock", _PREV_LINK})
_CURVE_INTERVAL_S = 30.0  # the training curve at most this often at checkpoints (0.1-0.5 s each)


def _is_run_file(name: str) -> bool:
    """A file a ppgen fit writes in its run directory (or an interrupted write's temp file)."""
    if name in _RUN_NAMES:
        return True
    return name.endswith(".tmp") and any(name.startswith(f".{n}.") for n in _RUN_FILES)


def _check_run_dir(out: Path, resume: bool, overwrite: bool) -> bool:
    """Refuse, before any work, a fit that would replace a run or resume from something else.

    Returns True when ``out`` holds a checkpoint to resume from. Without ``resume``, a
    directory holding a run (config.json, a checkpoint, best.pt) is refused unless
    ``overwrite``; with ``resume``, a directory without a checkpoint starts from scratch,
    unless it holds files that a ppgen run does not write (named in the error).
    """
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"out={str(out)!r} is a file, not a run directory")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    has_checkpoint = any(n in names for n in _CHECKPOINTS)
    if resume:
        if not has_checkpoint:
            foreign = [n for n in names if not _is_run_file(n)]
            if foreign:
                shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                raise RunExistsError(
                    f"{out} holds no ppgen checkpoint to resume from but other files ({shown}); "
                    "it is not a ppgen run directory: choose another out directory"
                )
        return has_checkpoint
    held = [n for n in _RUN_RECORDS if n in names]
    if held and not overwrite:
        _refuse_if_locked(out)  # a fit running there now: that is the news
        raise RunExistsError(
            f"{out} already holds a run ({', '.join(held)}); pass resume=True (--resume) to "
            "continue it, overwrite=True (--overwrite) to replace it, or choose another out "
            "directory"
        )
    return False


def _remove_run(out: Path) -> None:
    """Delete a previous run's files (``overwrite=True``): a file it left (an old best.pt)
    must never pass for this run's. Only under the run lock."""
    for name in (*_RUN_FILES, *_CHECKPOINTS):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out / name)


def _remove_stale_temp_files(out: Path) -> None:
    """Delete what an interrupted write left in ``out``. Only called under the run lock, so no
    other fit can be writing those files now."""
    ckpt.remove_partial_writes(out, _RUN_FILES)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out / _PREV_LINK)


def _in_use(out: Path, holder: str) -> FitError:
    return FitError(
        f"{out} is in use by another ppgen fit ({holder or 'another process'}); use another "
        "--out directory or wait for that run to finish"
    )


def _refuse_if_locked(out: Path) -> None:
    """Raise the lock's error when another fit holds ``out``'s lock now (a probe: released at
    once)."""
    import fcntl

    try:
        f = open(out / ".lock")  # noqa: SIM115 - closed below
    except OSError:
        return
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(out, f.read().strip()) from None
        except OSError:
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _run_lock(out: Path) -> Iterator[None]:
    """An exclusive lock on the run directory: two fits never interleave checkpoints."""
    import fcntl

    path = out / ".lock"
    f = open(path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise _in_use(out, f.read().strip()) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield
    finally:
        f.close()


def _as_tensors(
    data: Dataset | Tensor, model: AbstractGenerativeModel, what: str, arg: str = "data"
) -> tuple[Tensor, Tensor | None]:
    x, labels = as_batch(data, what=f"ppgen.fit's {arg}= ({what})")
    cfg = model.config
    check_batch(x, cfg.event_shape, cfg.kind, cfg.levels, what=what)
    if x.is_floating_point() and not torch.isfinite(x.to(_dtype(model))).all():
        raise DataError(
            f"{what} holds values beyond the range of the model's {_dtype(model)}; rescale them"
        )
    if arg == "data" and cfg.kind == "continuous" and model.likelihood != "none":
        check_continuous_columns(x, what=what)  # training data only: a val split may vary less
    if model.conditional and labels is None:
        raise DataError(f"{type(model).__name__} is conditional: {what} needs labels")
    if model.conditional:
        model.check_context(labels, x.shape[0])  # one label per example, in range: before work
    return x, (labels if model.conditional else None)


# ---- the loop ---------------------------------------------------------------------------------


def fit(
    model: AbstractGenerativeModel,
    data: Dataset | Tensor,
    config: TrainConfig | None = None,
    *,
    val: Dataset | Tensor | None = None,
    out: str | os.PathLike | None = None,
    run_info: dict[str, Any] | None = None,
    **settings: Any,
) -> History:
    """Fit ``model`` to ``data`` with its objective, through one shared loop.

    Arguments:
        model: any ppgen model.
        data: the training :class:`~ppgen.datasets.Dataset` (or a tensor).
        config: the training settings, a :class:`~ppgen.inference.train_config.TrainConfig`
            (default: its defaults). Every field is described there; the main ones:
            ``steps``, ``batch_size``, ``lr`` (None: the family's ``fit_defaults``, else
            1e-3), ``seed``, ``device``, ``resume``, ``overwrite``, ``objective`` and
            ``objective_options``, ``ema``, ``clip_grad``, ``patience``, ``precision``,
            ``compile``, ``accumulate``.
        val: validation data; enables ``best.pt``, early stopping and the return of the
            best-validation weights: with ``patience`` (``"auto"``: :data:`DEFAULT_PATIENCE`
            validations without improvement) the model is left holding the best weights;
            ``patience=None`` trains every step and leaves the last (the best stay in
            ``best.pt``).
        out: run directory for ``config.json``, ``checkpoint.pt``, ``best.pt``, ``history.json``
            and ``training_curve.png``; None trains in memory. A directory that already holds
            a run is refused (:class:`RunExistsError`) unless ``resume`` (continue it, falling
            back to ``checkpoint.prev.pt`` when the latest is invalid; from scratch, saying so,
            when it has no checkpoint yet) or ``overwrite`` (replace it).
        run_info: plain JSON data added to ``config.json`` when the run starts (e.g. the
            CLI's ``data`` name), so the record is complete however the run ends.
        **settings: any :class:`~ppgen.inference.train_config.TrainConfig` field, overriding
            ``config``'s (``fit(m, ds, steps=500, lr=1e-3)``).

    Returns:
        A :class:`History` (``best_step``, ``best_val``, ``stopped_early``, ``restored_best``
        and :meth:`History.summary`). The model is left on ``device``, in eval mode, holding
        the best-validation weights (with ``val`` and ``patience`` not None), else the last
        (EMA) weights.

    Raises:
        DataError / FitError: bad data or arguments, before any work is done.
        NonFiniteLossError: non-finite loss or gradient (the last good checkpoint stays whole).
        TrainingInterrupted: SIGINT/SIGTERM (after finishing the step and saving a checkpoint).
    """
    if settings.get("objective_options") is None:
        settings.pop("objective_options", None)
    cfg = (config or TrainConfig()).replace(**settings)
    cfg = cfg.with_family_defaults(model.fit_defaults()).validate()
    steps, batch_size, lr, seed, device = cfg.steps, cfg.batch_size, cfg.lr, cfg.seed, cfg.device
    resume, overwrite, progress = cfg.resume, cfg.overwrite, cfg.progress
    objective = cfg.objective or model.default_objective
    objective_options, ema, clip_grad = cfg.objective_options, cfg.ema, cfg.clip_grad
    weight_decay, eval_every, patience = cfg.weight_decay, cfg.eval_every, cfg.patience
    checkpoint_every, log_every = cfg.checkpoint_every, cfg.log_every
    diagnostics_every, on_nonfinite, max_skipped = (
        cfg.diagnostics_every, cfg.on_nonfinite, cfg.max_skipped)
    precision, compile, accumulate = cfg.precision, cfg.compile, cfg.accumulate
    if resume and out is None:
        raise FitError("resume=True needs out= (the run directory to resume from)")
    if resume and overwrite:
        raise FitError("resume=True continues the run in out, overwrite=True replaces it")
    if patience == "auto":
        patience = DEFAULT_PATIENCE
    if run_info is not None:
        try:
            json.dumps(run_info)
        except (TypeError, ValueError) as e:
            raise FitError(f"run_info must be plain JSON data: {e}") from None
    x_train, c_train = _as_tensors(data, model, "training data")
    # dynamic binarization: every batch a fresh Bernoulli draw, seeded by (seed, step)
    probs = data.binarize_probs if isinstance(data, Dataset) else None
    x_val, c_val = (None, None) if val is None else _as_tensors(val, model, "validation data",
                                                                  "val")
    out_dir = Path(out) if out is not None else None
    has_checkpoint = False
    if out_dir is not None:
        has_checkpoint = _check_run_dir(out_dir, resume, overwrite)
    patience = patience if x_val is not None else None
    best: dict[str, Any] | None = {} if patience is not None else None  # best weights, in memory
    eval_every = eval_every or max(steps // 20, 1)
    diagnostics_every = diagnostics_every or log_every
    checkpoint_every = checkpoint_every or eval_every

    ctx = dist_utils.init(resolve_device(device))
    device = ctx.device
    slices = ctx.world_size * accumulate
    if min(batch_size, len(x_train)) % slices:
        raise FitError(
            f"the global batch ({min(batch_size, len(x_train))}) must divide into processes x "
            f"accumulate = {ctx.world_size} x {accumulate} equal slices; choose another "
            "batch_size or accumulate"
        )
    # Every rank builds the same model and objective from the same stream; the training streams
    # (one per slice of the global batch) are set up below.
    seed_everything(seed)
    model.to(device)
    obj = make_objective(objective, model, **objective_options).to(device)
    groups = obj.param_groups(model)
    optimizers = {
        g: torch.optim.Adam(params, weight_decay=weight_decay, **obj.optimizer_options(g, lr))
        for g, params in groups.items()
    }
    ema_state = _EMA(model, ema) if ema is not None else None
    history = History(out=None if out is None else str(out))
    fit_args = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "objective": objective,
        "objective_options": objective_options,
        "ema": ema,
        "clip_grad": clip_grad,
        "weight_decay": weight_decay,
        "world_size": ctx.world_size,
        "precision": precision,
        "compile": compile,
        "accumulate": accumulate,
    }

    with contextlib.ExitStack() as stack:
        # from here a signal stops the run after its next step, with a checkpoint
        guard = stack.enter_context(_SignalGuard())
        if out_dir is not None and ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            stack.enter_context(_run_lock(out_dir))
            _remove_stale_temp_files(out_dir)
            if not has_checkpoint and (overwrite or resume):
                _remove_run(out_dir)  # nothing of another run may pass for this one's
        start = 0
        streams = _Streams(seed, ctx.rank, accumulate)
        records = _Records(out_dir if ctx.is_main else None)
        if has_checkpoint:
            start = _resume(out_dir, model, obj, optimizers, ema_state, history, streams, ctx)  # type: ignore[arg-type]
            records.config(model, fit_args, run_info, keep=True)
        else:
            if resume and ctx.is_main:
                print(f"ppgen: {out_dir} has no checkpoint yet; starting from scratch",
                      file=sys.stderr)
            records.config(model, fit_args, run_info, keep=False)
        if start == 0:
            with torch.no_grad():
                idx = batch_indices(len(x_train), batch_size, seed, 0)
                model.initialize(x_train[idx].to(device=device, dtype=_dtype(model)))
            if ema_state is not None:
                ema_state = _EMA(model, ema)  # type: ignore[arg-type]
            streams.start()
        model_ddp = dist_utils.wrap(model, obj, ctx)
        if compile:
            _compile_networks(model, obj, None if compile is True else compile)
        autocast = functools.partial(
            torch.autocast, device.type, dtype=torch.bfloat16, enabled=precision == "bf16"
        )
        bar = _progress(progress and ctx.is_main, start, steps)
        t0 = time.perf_counter() - history.elapsed
        consecutive_skips = 0
        step = guard.step = start
        if start > 0 and patience is not None and history.val:
            history.stopped_early = _validations_since_best(history) >= patience
            if history.stopped_early and ctx.is_main:
                print(f"ppgen: {out_dir} already stopped early at step {start} (no improvement "
                      f"in {patience} validations); nothing to train", file=sys.stderr)
        model.train()
        while step < steps and not history.stopped_early:
            idx = batch_indices(len(x_train), batch_size, seed, step)
            idx = dist_utils.shard(idx, ctx)
            if probs is not None:
                g = torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)
                xb = torch.bernoulli(probs[idx], generator=g)
            else:
                xb = x_train[idx]
            xb = xb.to(device=device, dtype=_dtype(model), non_blocking=True)
            cb = None if c_train is None else c_train[idx].to(device)
            micro = len(xb) // accumulate
            losses: dict[str, float] = {}
            skipped = False
            for group in obj.schedule(step):
                opt = optimizers[group]
                opt.zero_grad(set_to_none=True)
                # Each micro-batch's loss is a mean over its slice; the mean of the slices'
                # gradients (over micro-batches here, over ranks by DDP) is the global batch's.
                total = torch.zeros((), dtype=torch.float64, device=device)
                # Buffers a forward pass changes (batch-norm statistics, a mask counter) behave
                # as under DDP, which hands rank 0's to every rank before each forward: every
                # micro-batch starts from the step's buffers, and the step keeps the first's.
                buffers = _buffer_state(model) if accumulate > 1 else {}
                kept = buffers
                for j in range(accumulate):
                    if j == 1:
                        kept = _buffer_state(model)
                    if j > 0:
                        model.load_state_dict(buffers, strict=False)
                    part = slice(j * micro, (j + 1) * micro)
                    cj = None if cb is None else cb[part]
                    sync = j == accumulate - 1
                    with streams.use(j), dist_utils.maybe_no_sync(model_ddp, sync):
                        with autocast():
                            loss = model_ddp(xb[part], cj, group, step)
                        (loss / accumulate).backward()
                    total += loss.detach().double()
                if accumulate > 1:
                    model.load_state_dict(kept, strict=False)
                # the global mean loss: logged, and the same skip decision on every rank
                loss_mean = dist_utils.all_reduce_mean(total / accumulate, ctx)
                norm = _grad_norm(groups[group], clip_grad)
                bad_loss = not torch.isfinite(loss_mean).item()
                if bad_loss or not torch.isfinite(norm).item():
                    if on_nonfinite == "raise" or consecutive_skips >= max_skipped:
                        raise NonFiniteLossError(
                            f"non-finite {'loss' if bad_loss else 'gradient'} at "
                            f"step {step} (group {group!r}, loss={loss_mean.item()}); batch: "
                            f"{_batch_stats(xb)}. The last good checkpoint is kept. Lower the lr, "
                            "set clip_grad, or pass on_nonfinite='skip'."
                        )
                    opt.zero_grad(set_to_none=True)
                    skipped = True
                    continue
                opt.step()
                losses[f"loss/{group}" if len(groups) > 1 else "loss"] = loss_mean.item()
            consecutive_skips = consecutive_skips + 1 if skipped else 0
            history.skipped_steps += int(skipped)
            if ema_state is not None:
                ema_state.update(model)
            step += 1
            history.steps = guard.step = step
            if step % log_every == 0 or step == steps:
                history.train.append({"step": step, **losses, "time": time.perf_counter() - t0})
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
            if step % diagnostics_every == 0 or step == steps:
                diagnostics = obj.diagnostics()
                if diagnostics:
                    history.diagnostics.append({"step": step, **diagnostics})
            if bar is not None:
                bar.update(1)
            stop_early = False
            if x_val is not None and (step % eval_every == 0 or step == steps):
                stop_early = _validate(
                    model,
                    obj,
                    x_val,
                    c_val,
                    ema_state,
                    history,
                    step,
                    out_dir,
                    ctx,
                    patience,
                    batch_size,
                    best,
                )
                history.stopped_early = stop_early
            history.elapsed = time.perf_counter() - t0
            # a signal stops every rank after the same step (torchrun may signal one rank first)
            signum = dist_utils.all_reduce_max(guard.signum or 0, ctx)
            if signum:
                path = _save_run(
                    out_dir, model, obj, optimizers, ema_state, history, step, streams, ctx,
                    records, final=True,
                )
                if bar is not None:
                    bar.close()
                raise TrainingInterrupted(signum, step, path)
            if out_dir is not None and (
                step % checkpoint_every == 0 or step == steps or stop_early
            ):
                _save_run(out_dir, model, obj, optimizers, ema_state, history, step, streams, ctx,
                          records)
        if bar is not None:
            bar.close()
        history.elapsed = time.perf_counter() - t0
        if ema_state is not None:
            model.load_state_dict(ema_state.shadow)
        if best is not None and history.best_step is not None:
            _restore_best(model, best, out_dir, history, ctx)
        # buffers a forward pass changes (batch-norm statistics...) are rank 0's on every rank
        dist_utils.broadcast_buffers(model, ctx)
        model.eval()
        records.history(history, plot=True)
    dist_utils.barrier(ctx)
    return history


def _compile_networks(
    model: AbstractGenerativeModel, obj: AbstractObjective, backend: str | None
) -> None:
    """Compile every direct submodule of the model and the objective (what each child's
    ``nn.Module.compile`` would do, made to work for every network).

    Compiling the whole loss would trace Pyro's distribution objects, which are rebuilt at every
    step and so make dynamo recompile every step; the networks are where the time goes.

    Two differences from ``child.compile()``: (1) that compiles ``_call_impl``, a frame of
    torch.nn that dynamo skips, so a network whose ``forward`` is torch's own (an
    ``nn.Sequential`` MLP) silently stayed eager; here each child is entered through a frame of
    its own, from which torch.nn's frames are inlined (hooks still run), and which gives each
    child its own compile cache and recompile limit. (2) Shapes are static (``dynamic=False``):
    the training batch never changes shape, and symbolic shapes break ops such as ``torch.rand``
    with a size (dequantization); validation's other batch shapes compile once each. Inductor
    keeps eager's random numbers (``fallback_random``).
    """
    options: dict[str, Any] = {"dynamic": False}
    if backend is not None:
        options["backend"] = backend
    if backend in (None, "inductor"):
        # eager's random numbers (dequantization noise, dropout), not inductor's own: the run
        # stays a function of the seed, compiled or not
        options["options"] = {"fallback_random": True}
    with warnings.catch_warnings():
        # torch.compile imports inductor, whose import trips torch's own deprecation of
        # torch.jit.script_method (torch/utils/mkldnn.py): torch's business, not the user's
        warnings.filterwarnings("ignore", ".*torch.jit.script_method", DeprecationWarning)
        for owner in (model, obj):
            for name, child in owner.named_children():
                code = _call_module.__code__.replace(
                    co_name=f"_call_{type(child).__name__}_{name}"
                )
                call = types.FunctionType(code, _call_module.__globals__)
                compiled = torch.compile(functools.partial(call, child), **options)
                child._compiled_call_impl = functools.partial(_quiet, compiled)  # type: ignore[assignment]


def _call_module(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    return module._call_impl(*args, **kwargs)


def _quiet(compiled: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a compiled network without the warning dynamo's tracer trips on reading ``.grad``
    of a non-leaf input (e.g. a reparameterized latent): it concerns torch's internals."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The .grad attribute of a Tensor that is not a leaf")
        return compiled(*args, **kwargs)


class _Streams:
    """The random streams of this process's slices of the global batch.

    Slice ``v = rank * accumulate + j`` (micro-batch ``j`` of this rank) draws from stream ``v``:
    stream 0 continues the stream that built the model (seeded ``seed``), stream ``v > 0`` starts
    from ``seed + v``. With ``accumulate == 1`` the process's own RNG is its stream (no
    swapping); otherwise the states (torch, numpy, random, CUDA) are swapped in and out around
    each micro-batch.
    """

    def __init__(self, seed: int, rank: int, accumulate: int) -> None:
        self.seed = seed
        self.ids = [rank * accumulate + j for j in range(accumulate)]
        self.states: dict[int, dict[str, Any]] = {}

    def start(self) -> None:
        """Seed the streams of a fresh run (after the model and objective are built)."""
        built = _rng_state()
        for v in self.ids:
            if v != 0:
                seed_everything((self.seed + v) % 2**32)
            self.states[v] = built if v == 0 else _rng_state()
        _set_rng_state(self.states[self.ids[0]])

    @contextlib.contextmanager
    def use(self, j: int) -> Iterator[None]:
        """Run micro-batch ``j`` on its stream."""
        if len(self.ids) == 1:
            yield
            return
        v = self.ids[j]
        _set_rng_state(self.states[v])
        try:
            yield
        finally:
            self.states[v] = _rng_state()

    def state_dict(self) -> dict[int, dict[str, Any]]:
        """This process's streams by slice id (current states)."""
        if len(self.ids) == 1:
            return {self.ids[0]: _rng_state()}
        return dict(self.states)

    def load(self, saved: dict[int, dict[str, Any]], step: int) -> list[int]:
        """Restore this process's streams from a checkpoint's; a stream the checkpoint lacks
        (it was written with fewer slices) starts afresh from ``(seed, v, step)``. Returns the
        ids of such fresh streams."""
        fresh = []
        for v in self.ids:
            if v in saved:
                self.states[v] = saved[v]
            else:
                seed_everything((self.seed + v + 1_000_003 * step) % 2**32)
                self.states[v] = _rng_state()
                fresh.append(v)
        _set_rng_state(self.states[self.ids[0]])
        return fresh


def _buffer_state(model: AbstractGenerativeModel) -> dict[str, Tensor]:
    """Copies of the model's saved buffers (its state dict less its parameters)."""
    params = {k for k, _ in model.named_parameters()}
    return {k: v.clone() for k, v in model.state_dict().items() if k not in params}


def _dtype(model: AbstractGenerativeModel) -> torch.dtype:
    p = next(model.parameters(), None)
    return p.dtype if p is not None else torch.get_default_dtype()


def _batch_stats(x: Tensor) -> str:
    x = x.detach().double()
    return (
        f"shape {tuple(x.shape)}, mean {x.mean():.4g}, std {x.std():.4g}, "
        f"min {x.min():.4g}, max {x.max():.4g}"
    )


def _progress(enabled: bool, start: int, total: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="fit", dynamic_ncols=True, file=sys.stderr)


_VALIDATION_SEED = 2_147_483_629  # a fixed stream for validation, apart from training's


@torch.no_grad()
def _validate(
    model: AbstractGenerativeModel,
    obj: AbstractObjective,
    x_val: Tensor,
    c_val: Tensor | None,
    ema_state: _EMA | None,
    history: History,
    step: int,
    out_dir: Path | None,
    ctx: dist_utils.Context,
    patience: int | None,
    batch_size: int,
    best: dict[str, Any] | None,
) -> bool:
    """Record the validation loss; write best.pt on improvement (and keep a CPU copy of the
    validated weights in ``best["state"]`` when ``best`` is a dict). Returns True to stop early.

    Validation runs on its own random stream, seeded the same at every validation (common random
    numbers for stochastic losses, e.g. dequantization noise), inside ``fork_rng``: it never
    moves the training stream, so a run that validates when it stops and resumes stays exact.
    """
    device, dtype = ctx.device, _dtype(model)
    swap = ema_state.swapped_in(model) if ema_state is not None else contextlib.nullcontext()
    model.eval()
    total, count = 0.0, 0
    cuda = [device] if device.type == "cuda" else []
    with swap, torch.random.fork_rng(devices=cuda):
        torch.manual_seed(_VALIDATION_SEED)
        idx = dist_utils.shard(torch.arange(len(x_val)), ctx)
        for start in range(0, len(idx), max(batch_size, 256)):
            part = idx[start : start + max(batch_size, 256)]
            xb = x_val[part].to(device=device, dtype=dtype)
            cb = None if c_val is None else c_val[part].to(device)
            value = obj.validation_loss(model, xb, cb)
            if value is None:
                model.train()
                return False
            total += float(value) * len(part)
            count += len(part)
        total, count = dist_utils.all_reduce_sum((total, count), ctx)
        val_loss = total / count
        history.val.append({"step": step, "val_loss": val_loss})
        improved = history.best_val is None or val_loss < history.best_val
        if improved:
            history.best_val, history.best_step = val_loss, step
            if best is not None:
                best["state"] = {
                    k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
                }
            if out_dir is not None and ctx.is_main:
                ckpt.write_checkpoint(out_dir / "best.pt", ckpt.model_payload(model))
    model.train()
    if patience is None or improved:
        return False
    return _validations_since_best(history) >= patience


def _validations_since_best(history: History) -> int:
    return sum(1 for r in history.val if r["step"] > (history.best_step or 0))


def _restore_best(
    model: AbstractGenerativeModel,
    best: dict[str, Any],
    out_dir: Path | None,
    history: History,
    ctx: dist_utils.Context,
) -> None:
    """Load the best-validation weights: this process's copy, else (the best came before a
    resume) ``best.pt``; an unreadable best.pt leaves the last weights, and says so."""
    state = best.get("state")
    if state is None and out_dir is not None:
        try:
            payload = ckpt.read_checkpoint(out_dir / "best.pt", map_location="cpu")
            model.load_state_dict(payload["state_dict"])
        except (ckpt.CheckpointError, KeyError, TypeError, RuntimeError) as e:
            if ctx.is_main:
                print(f"ppgen: keeping the last weights: cannot read the best ones ({e})",
                      file=sys.stderr)
            return
    elif state is not None:
        model.load_state_dict(state)
    else:
        return
    history.restored_best = True


class _Records:
    """The run directory's records beside the checkpoints: ``config.json`` (once, at the start),
    ``history.json`` and ``training_curve.png`` (at each checkpoint and at the end), all written
    atomically. ``out`` is None in memory and on ranks other than 0: then it writes nothing."""

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self._last_plot = -math.inf

    def config(
        self,
        model: AbstractGenerativeModel,
        fit_args: dict[str, Any],
        run_info: dict[str, Any] | None,
        keep: bool,
    ) -> None:
        """Write ``config.json``; with ``keep`` (a resumed run) only when it is missing or lacks
        a key of ``run_info`` (a run of an older ppgen), keeping what it records."""
        if self.out is None:
            return
        path = self.out / "config.json"
        payload = ckpt.model_payload(model)
        config: dict[str, Any] = {
            "family": payload["family"],
            "model": payload["config"],
            "fit": fit_args,
            "argv": sys.argv,
            **(run_info or {}),
        }
        if keep:
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError):
                old = None
            if isinstance(old, dict):
                if all(k in old for k in config if k != "argv"):
                    return
                config = {**config, **old}
        ckpt.write_atomic(path, json.dumps(config, indent=2).encode(), "run config")

    def history(self, history: History, plot: bool) -> None:
        """Write ``history.json``, and the training curve when ``plot`` or when the last one is
        older than ``_CURVE_INTERVAL_S`` (a figure costs 0.1-0.5 s; a checkpoint may come every
        step)."""
        if self.out is None:
            return
        ckpt.write_atomic(self.out / "history.json",
                          json.dumps(history.to_dict(), indent=1).encode(), "history")
        now = time.monotonic()
        if plot or now - self._last_plot >= _CURVE_INTERVAL_S:
            _plot_curve(self.out, history)
            self._last_plot = now


def _save_run(
    out_dir: Path | None,
    model: AbstractGenerativeModel,
    obj: AbstractObjective,
    optimizers: dict[str, torch.optim.Optimizer],
    ema_state: _EMA | None,
    history: History,
    step: int,
    streams: _Streams,
    ctx: dist_utils.Context,
    records: _Records,
    final: bool = False,
) -> Path | None:
    """Write ``checkpoint.pt`` atomically, keeping the previous one as ``checkpoint.prev.pt``,
    then ``history.json`` and the training curve (always when ``final``), so a run stopped at
    any point has every record a later command reads.

    Every rank calls it (the random streams of all ranks are gathered); rank 0 writes."""
    if out_dir is None:
        return None
    rng_streams = dist_utils.gather_dicts(streams.state_dict(), ctx)
    if not ctx.is_main:
        return None
    eval_payload = ckpt.model_payload(model)
    if ema_state is not None:
        eval_payload["state_dict"] = ema_state.shadow
    payload = {
        "format": ckpt.FORMAT_VERSION,
        "model": eval_payload,
        "raw_state_dict": model.state_dict() if ema_state is not None else None,
        "objective": {"name": obj.name, "options": obj.options, "state_dict": obj.state_dict()},
        "optimizers": {g: o.state_dict() for g, o in optimizers.items()},
        "ema_decay": None if ema_state is None else ema_state.decay,
        "rng": rng_streams[0],  # stream 0, as older checkpoints had it
        "rng_streams": rng_streams,
        "step": step,
        "history": history.to_dict(),
    }
    path = out_dir / "checkpoint.pt"
    if path.exists():
        # the predecessor becomes checkpoint.prev.pt through a hard link (the same bytes), and
        # the new checkpoint is renamed over checkpoint.pt by write_checkpoint (temp file,
        # fsync, rename): checkpoint.pt is never absent nor partial, whenever a kill comes
        link = out_dir / _PREV_LINK
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        try:
            os.link(path, link)
        except OSError:  # a filesystem without hard links: a copy
            import shutil

            shutil.copyfile(path, link)
        os.replace(link, out_dir / "checkpoint.prev.pt")
        # rename() does nothing when both names already are the same file (a write killed after
        # the last rotation left checkpoint.prev.pt and checkpoint.pt one file): drop the link
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
    ckpt.write_checkpoint(path, payload)
    ckpt._fsync_dir(out_dir)
    records.history(history, plot=final)
    return path


def _resume(
    out_dir: Path,
    model: AbstractGenerativeModel,
    obj: AbstractObjective,
    optimizers: dict[str, torch.optim.Optimizer],
    ema_state: _EMA | None,
    history: History,
    streams: _Streams,
    ctx: dist_utils.Context,
) -> int:
    """Load the newest valid checkpoint of ``out_dir`` into the run; returns its step.

    A checkpoint that is invalid in any way (truncated, corrupted, a field missing or of the
    wrong type, weights or optimizer state that do not fit) is skipped for the next one
    (``checkpoint.next.pt``, ``checkpoint.prev.pt``), and the fallback is said in one line. A
    checkpoint of another model (family or config) is the caller's mistake, not damage: it
    stops the resume at once, as does resuming with EMA a run trained without it.
    """
    errors = []
    before = _run_state(model, obj, optimizers)
    for path in (out_dir / n for n in _CHECKPOINTS):
        if not path.exists():
            continue
        try:
            # the file's structure (every field typed), then what needs the live run: shapes
            # of every tensor, optimizer groups (tried on meta copies, no memory)
            payload = ckpt.read_checkpoint(path, map_location="cpu")
            saved = _SavedRun.parse(payload, path)
            ckpt.check_compatible(model, saved.model, str(path))
            # on a copy: the check's trial optimizer step advances Adam's step counts in place
            ckpt.check_training_state(copy.deepcopy(payload), str(path), model, obj, optimizers)
        except ckpt.CheckpointError as e:
            if "config differs" in str(e) or "holds a" in str(e):
                raise
            errors.append(str(e))
            continue
        if ema_state is not None and saved.ema_decay is None:
            raise FitError(f"{out_dir}: the run was trained without EMA; resume without ema")
        try:
            step = saved.apply(model, obj, optimizers, ema_state, history, streams, ctx)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            _set_run_state(model, obj, optimizers, before)
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            errors.append(f"{path}: does not fit this run ({first})")
            continue
        if errors and ctx.is_main:
            print(f"ppgen: {errors[-1]}; resuming from {path.name} instead", file=sys.stderr)
        history.out = str(out_dir)
        return step
    raise ckpt.CheckpointError(
        f"{out_dir}: nothing to resume from ({'; '.join(errors)}); move the damaged "
        "checkpoints away, or fit with overwrite=True (--overwrite) to start again"
    )


def _run_state(
    model: AbstractGenerativeModel,
    obj: AbstractObjective,
    optimizers: dict[str, torch.optim.Optimizer],
) -> dict[str, Any]:
    """A copy of what applying a checkpoint changes (to undo a checkpoint that does not fit)."""

    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "objective": copy.deepcopy(obj.state_dict()),
        "optimizers": {g: copy.deepcopy(o.state_dict()) for g, o in optimizers.items()},
    }


def _set_run_state(
    model: AbstractGenerativeModel,
    obj: AbstractObjective,
    optimizers: dict[str, torch.optim.Optimizer],
    state: dict[str, Any],
) -> None:
    model.load_state_dict(state["model"])
    obj.load_state_dict(state["objective"])
    for g, o in optimizers.items():
        o.load_state_dict(state["optimizers"][g])


def _field(payload: Any, path: Path, name: str, kinds: type | tuple[type, ...]) -> Any:
    """``payload[a][b]...`` for ``name = "a.b"``, checked against ``kinds``; a missing field or
    one of another type is a :class:`~ppgen.checkpoint.CheckpointError` naming the file and
    the field (a checksum only proves the bytes are those written, not what was written)."""
    value, walked = payload, []
    for key in name.split("."):
        if not isinstance(value, dict):
            raise ckpt.CheckpointError(
                f"{path}: invalid checkpoint: field {'.'.join(walked)!r} is a "
                f"{type(value).__name__}, not dict"
            )
        walked.append(key)
        if key not in value:
            raise ckpt.CheckpointError(
                f"{path}: invalid checkpoint: field {'.'.join(walked)!r} is missing"
            )
        value = value[key]
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
        raise ckpt.CheckpointError(
            f"{path}: invalid checkpoint: field {name!r} is a {type(value).__name__}, not "
            f"{' or '.join(k.__name__ for k in _tuple(kinds))}"
        )
    return value


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


@dataclasses.dataclass
class _SavedRun:
    """The fields of a training checkpoint that resuming reads, each checked for presence and
    type before anything is applied to the run."""

    model: dict[str, Any]
    raw_state_dict: dict[str, Any] | None
    objective_state: dict[str, Any]
    optimizers: dict[str, Any]
    ema_decay: float | None
    rng_streams: dict[int, dict[str, Any]]
    step: int
    history: History

    @classmethod
    def parse(cls, payload: dict[str, Any], path: Path) -> _SavedRun:
        model = _field(payload, path, "model", dict)
        _field(payload, path, "model.family", str)
        _field(payload, path, "model.config", dict)
        _field(payload, path, "model.state_dict", dict)
        raw = _field(payload, path, "raw_state_dict", (dict, type(None)))
        streams = payload.get("rng_streams")
        if streams is None and "rng" in payload:  # a checkpoint of an older ppgen: stream 0
            streams = {0: _field(payload, path, "rng", dict)}
        streams = _field({"rng_streams": streams} if streams is not None else {}, path,
                         "rng_streams", dict)
        for v, state in streams.items():
            if not isinstance(v, int) or not isinstance(state, dict):
                raise ckpt.CheckpointError(
                    f"{path}: invalid checkpoint: field 'rng_streams' holds {v!r}: "
                    f"{type(state).__name__}, not a stream id and its state"
                )
        step = _field(payload, path, "step", int)
        if step < 0:
            raise ckpt.CheckpointError(f"{path}: invalid checkpoint: field 'step' is {step}")
        saved_history = _field(payload, path, "history", dict)
        try:
            history = History.from_dict(saved_history)
        except TypeError as e:
            raise ckpt.CheckpointError(
                f"{path}: invalid checkpoint: field 'history' does not fit ({e})"
            ) from None
        return cls(
            model=model,
            raw_state_dict=raw,
            objective_state=_field(payload, path, "objective.state_dict", dict),
            optimizers=_field(payload, path, "optimizers", dict),
            ema_decay=_field(payload, path, "ema_decay", (float, int, type(None))),
            rng_streams=streams,
            step=step,
            history=history,
        )

    def apply(
        self,
        model: AbstractGenerativeModel,
        obj: AbstractObjective,
        optimizers: dict[str, torch.optim.Optimizer],
        ema_state: _EMA | None,
        history: History,
        streams: _Streams,
        ctx: dist_utils.Context,
    ) -> int:
        """Load the saved run into the live one; returns the step. Raises what torch raises
        (RuntimeError, ValueError, KeyError) when a state does not fit."""
        model.load_state_dict(self.raw_state_dict or self.model["state_dict"])
        if ema_state is not None:
            shadow = self.model["state_dict"]
            if set(shadow) != set(ema_state.shadow):
                raise KeyError("the EMA weights name other tensors than the model's")
            ema_state.shadow = {k: v.to(ctx.device) for k, v in shadow.items()}
        obj.load_state_dict(self.objective_state)
        for g, opt in optimizers.items():
            if g not in self.optimizers:
                raise KeyError(f"no optimizer state for parameter group {g!r}")
            opt.load_state_dict(self.optimizers[g])
        fresh = streams.load(self.rng_streams, self.step)
        for f in dataclasses.fields(History):
            setattr(history, f.name, getattr(self.history, f.name))
        slices = ctx.world_size * len(streams.ids)
        if ctx.is_main and (fresh or len(self.rng_streams) != slices):
            print(
                f"ppgen: the run was trained with {len(self.rng_streams)} batch slices "
                f"(processes x accumulate), this run has {slices}; training goes on, but the "
                "random draws differ from an uninterrupted run (keep processes x accumulate "
                "equal to continue exactly)",
                file=sys.stderr,
            )
        return self.step


def _plot_curve(out_dir: Path, history: History) -> None:
    """Write ``training_curve.png`` atomically (a kill mid-write leaves the previous figure);
    nothing before the first logged record."""
    if not history.train and not history.val:
        return
    try:
        import io

        import matplotlib.pyplot as plt

        from ppgen.plots import training_curve

        fig = training_curve(history)
        buffer = io.BytesIO()
        try:
            fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        finally:
            plt.close(fig)
        ckpt.write_atomic(out_dir / "training_curve.png", buffer.getvalue(), "training curve")
    except (OSError, ValueError) as e:  # a figure is never worth losing a run over
        print(f"ppgen: could not write the training curve: {e}", file=sys.stderr)
