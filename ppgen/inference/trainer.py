"""One training loop for every family.

:func:`fit` reads only the protocol: the model's declarations (``default_objective``,
``fit_defaults``, ``conditional``) and capabilities (``initialize`` of an
:class:`~ppgen.models.capabilities.InitializesFromData`), and the objective's parameter groups,
schedule and losses. The pieces, in the order a reader meets them:

- :func:`fit`: the settings (:class:`~ppgen.inference.train_config.TrainConfig`), the data
  checked before any work, the run directory, the objective; then start, loop, finish.
- :class:`_Step`: one optimizer step, the group and micro-batch loops (Pyro's ``SVI.step`` is
  the model: compute the loss, step the optimizer), the non-finite guard, gradient clipping.
- :class:`_Run`: the live objects of a run and what is done to all of them together: start or
  resume, the loop (logging, validation with best weights and early stopping, checkpoints,
  signals: Ctrl-C / SIGTERM save and stop cleanly), the end.
- :class:`~ppgen.inference.run_files.RunDirectory`: the run directory's files, its lock and
  the choice of the checkpoint to resume from; data-parallel training under ``torchrun``:
  :mod:`ppgen.inference.distributed`.

With validation data, :func:`fit` stops early by default (``patience="auto"``) and returns the
model holding its best-validation weights, as Keras' ``restore_best_weights`` and Lightning's
best checkpoint do; ``patience=None`` trains every step and keeps the last weights.

A run directory is a record a later command can rely on, however the run ends: ``config.json``
is complete when training starts, ``checkpoint.pt`` and ``history.json`` are written together at
each checkpoint. A fit never replaces another run in its directory unless asked to
(``overwrite=True``), and ``resume=True`` on a directory without a checkpoint yet starts from
scratch, so a scheduler may always pass it. The trainer computes and records numbers and never
draws: the caller draws, e.g. ``training_curve.png`` through ``on_checkpoint`` (as
:func:`ppgen.fit` and ``ppgen fit`` do) or :func:`ppgen.reports.write_training_curve`.

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
from collections.abc import Callable, Iterator, Sequence
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
from ppgen.inference.run_files import RunDirectory, RunExistsError
from ppgen.inference.train_config import FitError, TrainConfig
from ppgen.models.base import AbstractGenerativeModel
from ppgen.models.capabilities import InitializesFromData


class NonFiniteLossError(FitError):
    """A loss or gradient became NaN/inf; the parameters are those of the last good step."""


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


def _check_incomplete(model: AbstractGenerativeModel, mask: Tensor, what: str) -> None:
    """Refuse incomplete data for a family that cannot train on it, naming those that can."""
    if model.incomplete_data_objective is not None:
        return
    from ppgen.models import get, names  # the registry: which families declare the capability

    able = [n for n in names() if get(n).incomplete_data_objective is not None]
    missing = 1.0 - float(mask.float().mean())
    raise DataError(
        f"{type(model).__name__} cannot train on incomplete data ({what} has {missing:.1%} of "
        f"its cells missing); families that can: {', '.join(able)}; or fill the holes first "
        "(ppgen.impute), or drop the incomplete rows"
    )


def _fill_missing(x: Tensor, mask: Tensor, kind: str) -> Tensor:
    """``x`` with each missing cell set to its column's mean over the observed cells (rounded
    for discrete data): what ``initialize`` and any statistic of the batch see. The objective
    itself reads the observed cells only (it gets the mask)."""
    observed = mask.to(x.dtype)
    mean = x.where(mask, 0.0).sum(0) / observed.sum(0).clamp_min(1)
    if kind != "continuous":
        mean = mean.round()
    return x.where(mask, mean.expand_as(x))


def _as_tensors(
    data: Dataset | Tensor, model: AbstractGenerativeModel, what: str, arg: str = "data"
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """(data, labels or None, mask of observed cells or None), validated before any work."""
    x, labels = as_batch(data, what=f"ppgen.fit's {arg}= ({what})")
    mask = data.mask if isinstance(data, Dataset) else None
    cfg = model.config
    if mask is not None:
        _check_incomplete(model, mask, what)
        check_batch(x.where(mask, 0.0), cfg.event_shape, cfg.kind, cfg.levels, what=what)
        x = _fill_missing(x, mask, cfg.kind)
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
    return x, (labels if model.conditional else None), mask




# ---- the driver -------------------------------------------------------------------------------


def fit(
    model: AbstractGenerativeModel,
    data: Dataset | Tensor,
    config: TrainConfig | None = None,
    *,
    val: Dataset | Tensor | None = None,
    out: str | os.PathLike | None = None,
    run_info: dict[str, Any] | None = None,
    on_checkpoint: Callable[[History, bool], None] | None = None,
    **settings: Any,
) -> History:
    """Fit ``model`` to ``data`` with its objective, through one shared loop.

    Arguments:
        model: any ppgen model.
        data: the training :class:`~ppgen.datasets.Dataset` (or a tensor). Incomplete data
            (a Dataset with a ``mask``, ``from_array(x, missing="mask")``) trains families
            that declare an ``incomplete_data_objective`` (the VAE: ``"miwae"``, the default
            objective for such data), each batch's mask reaching the objective; any other
            family, or an objective without ``accepts_mask``, is refused before any work.
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
        out: run directory for ``config.json``, ``checkpoint.pt``, ``best.pt`` and
            ``history.json`` (see :mod:`ppgen.inference.run_files`); None trains in memory. A
            directory that already holds a run is refused (:class:`RunExistsError`) unless
            ``resume`` (continue it, falling back to ``checkpoint.prev.pt`` when the latest is
            invalid; from scratch, saying so, when it has no checkpoint yet) or ``overwrite``
            (replace it).
        run_info: plain JSON data added to ``config.json`` when the run starts (e.g. the
            CLI's ``data`` name), so the record is complete however the run ends.
        on_checkpoint: called as ``on_checkpoint(history, final)`` on the main process each
            time ``history.json`` is written (with each checkpoint; ``final`` at the end and
            when a signal stops the run): where a caller draws. This function draws nothing;
            :func:`ppgen.fit` and ``ppgen fit`` draw ``training_curve.png`` there, and a
            caller of this function draws it with :func:`ppgen.reports.write_training_curve`.
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
    train = _as_tensors(data, model, "training data")
    valid = None if val is None else _as_tensors(val, model, "validation data", "val")
    incomplete = train[2] is not None or (valid is not None and valid[2] is not None)
    cfg = _settings(model, config, settings, out, run_info, incomplete)
    if valid is None:
        cfg = cfg.replace(patience=None)  # nothing to stop on, no best weights to return
    run_dir = None if out is None else RunDirectory(out)
    resuming = run_dir is not None and run_dir.check(cfg.resume, cfg.overwrite)
    ctx = dist_utils.init(resolve_device(cfg.device))
    _check_slices(min(cfg.batch_size, len(train[0])), ctx.world_size, cfg.accumulate)
    # every rank builds the same model and objective from the same stream; the training streams
    # (one per slice of the global batch) start in _Run.begin
    seed_everything(cfg.seed)
    model.to(ctx.device)
    obj = make_objective(cfg.objective, model, **cfg.objective_options).to(ctx.device)
    if incomplete and not obj.accepts_mask:
        raise FitError(
            f"the {cfg.objective!r} objective cannot fit incomplete data (the data has a mask "
            f"of missing cells); use objective={model.incomplete_data_objective!r} (the "
            "default for such data)"
        )
    run = _Run(model, obj, cfg, ctx, run_dir, on_checkpoint)
    with contextlib.ExitStack() as stack:
        # from here a signal stops the run after its next step, with a checkpoint
        guard = stack.enter_context(_SignalGuard())
        if run_dir is not None:  # a fresh run clears what another run left there
            clear = not resuming and (cfg.overwrite or cfg.resume)
            stack.enter_context(run_dir.open(main=ctx.is_main, clear=clear))
        start = run.begin(resuming, train[0], run_info)
        step_fn = _Step(model, obj, run.optimizers, run.streams, ctx, cfg)
        # dynamic binarization: every batch a fresh Bernoulli draw, seeded by (seed, step)
        probs = data.binarize_probs if isinstance(data, Dataset) else None
        run.train(step_fn, train, valid, start, guard, probs)
        run.finish()
    dist_utils.barrier(ctx)
    return run.history


def _settings(
    model: AbstractGenerativeModel,
    config: TrainConfig | None,
    settings: dict[str, Any],
    out: str | os.PathLike | None,
    run_info: dict[str, Any] | None,
    incomplete: bool = False,
) -> TrainConfig:
    """The run's settings: ``config`` with ``settings`` and the family's defaults, validated,
    and the defaults that depend on other settings resolved (objective, patience, intervals)."""
    if settings.get("objective_options") is None:
        settings.pop("objective_options", None)
    cfg = (config or TrainConfig()).replace(**settings)
    cfg = cfg.with_family_defaults(model.fit_defaults()).validate()
    if cfg.resume and out is None:
        raise FitError("resume=True needs out= (the run directory to resume from)")
    if cfg.resume and cfg.overwrite:
        raise FitError("resume=True continues the run in out, overwrite=True replaces it")
    if run_info is not None:
        try:
            json.dumps(run_info)
        except (TypeError, ValueError) as e:
            raise FitError(f"run_info must be plain JSON data: {e}") from None
    eval_every = cfg.eval_every or max(cfg.steps // 20, 1)
    return cfg.replace(
        # incomplete data: the family's declared objective for it (checked by _as_tensors)
        objective=cfg.objective or (model.incomplete_data_objective if incomplete else None)
        or model.default_objective,
        patience=DEFAULT_PATIENCE if cfg.patience == "auto" else cfg.patience,
        eval_every=eval_every,
        checkpoint_every=cfg.checkpoint_every or eval_every,
        diagnostics_every=cfg.diagnostics_every or cfg.log_every,
    )


def _check_slices(batch: int, world_size: int, accumulate: int) -> None:
    if batch % (world_size * accumulate):
        raise FitError(
            f"the global batch ({batch}) must divide into processes x accumulate = "
            f"{world_size} x {accumulate} equal slices; choose another batch_size or accumulate"
        )


# the settings config.json records under "fit" (world_size after weight_decay)
_RECORDED = ("steps", "batch_size", "lr", "seed", "objective", "objective_options", "ema",
             "clip_grad", "weight_decay", "world_size", "precision", "compile", "accumulate")


class _Step:
    """One optimizer step: the group and micro-batch loops. Pyro's ``SVI.step`` is the model:
    compute the loss, step the optimizer.

    For each parameter group the objective schedules at ``step`` (most families: ``"model"``;
    a GAN: its critic, then its generator): zero the group's gradients; for each of the
    ``accumulate`` micro-batches, the loss on its own random stream and its gradient (the mean
    over micro-batches here and over ranks by DDP is the global batch's); the global mean loss;
    the gradient norm, clipped with ``clip_grad``; then the optimizer's step, or for a
    non-finite loss or gradient a :class:`NonFiniteLossError` (``on_nonfinite="skip"``: the
    group is skipped, at most ``max_skipped`` steps in a row). Every rank takes the same
    decision, on the all-reduced loss.
    """

    def __init__(
        self,
        model: AbstractGenerativeModel,
        obj: AbstractObjective,
        optimizers: dict[str, torch.optim.Optimizer],
        streams: _Streams,
        ctx: dist_utils.Context,
        cfg: TrainConfig,
    ) -> None:
        self.model, self.obj, self.optimizers, self.streams, self.ctx = (
            model, obj, optimizers, streams, ctx)
        self.groups = obj.param_groups(model)
        self.accumulate, self.clip_grad = cfg.accumulate, cfg.clip_grad
        self.on_nonfinite, self.max_skipped = cfg.on_nonfinite, cfg.max_skipped
        self.consecutive_skips = 0
        self.loss_fn = dist_utils.wrap(model, obj, ctx)
        if cfg.compile:
            _compile_networks(model, obj, None if cfg.compile is True else cfg.compile)
        self.autocast = functools.partial(
            torch.autocast, ctx.device.type, dtype=torch.bfloat16,
            enabled=cfg.precision == "bf16",
        )

    def __call__(
        self, xb: Tensor, cb: Tensor | None, step: int, mb: Tensor | None = None
    ) -> tuple[dict[str, float], bool]:
        """Train on the batch ``xb`` (labels ``cb``, mask of observed cells ``mb``); returns
        the logged losses (``"loss"``, or ``"loss/<group>"`` for several groups) and whether a
        group was skipped."""
        losses: dict[str, float] = {}
        skipped = False
        for group in self.obj.schedule(step):
            opt = self.optimizers[group]
            opt.zero_grad(set_to_none=True)
            loss = self._backward(xb, cb, group, step, mb)
            norm = _grad_norm(self.groups[group], self.clip_grad)
            if not self._finite(loss, norm, group, step, xb):
                opt.zero_grad(set_to_none=True)
                skipped = True
                continue
            opt.step()
            losses[f"loss/{group}" if len(self.groups) > 1 else "loss"] = loss.item()
        self.consecutive_skips = self.consecutive_skips + 1 if skipped else 0
        return losses, skipped

    def _backward(
        self, xb: Tensor, cb: Tensor | None, group: str, step: int, mb: Tensor | None = None
    ) -> Tensor:
        """Accumulate the gradient of the global batch's mean loss; returns that loss."""
        accumulate, model = self.accumulate, self.model
        micro = len(xb) // accumulate
        total = torch.zeros((), dtype=torch.float64, device=self.ctx.device)
        # Buffers a forward pass changes (batch-norm statistics, a mask counter) behave as under
        # DDP, which hands rank 0's to every rank before each forward: every micro-batch starts
        # from the step's buffers, and the step keeps the first's.
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
            with self.streams.use(j), dist_utils.maybe_no_sync(self.loss_fn, sync):
                with self.autocast():
                    loss = self.loss_fn(xb[part], cj, group, step,
                                        None if mb is None else mb[part])
                (loss / accumulate).backward()
            total += loss.detach().double()
        if accumulate > 1:
            model.load_state_dict(kept, strict=False)
        # the global mean loss: logged, and the same skip decision on every rank
        return dist_utils.all_reduce_mean(total / accumulate, self.ctx)

    def _finite(self, loss: Tensor, norm: Tensor, group: str, step: int, xb: Tensor) -> bool:
        bad_loss = not torch.isfinite(loss).item()
        if not bad_loss and torch.isfinite(norm).item():
            return True
        if self.on_nonfinite == "raise" or self.consecutive_skips >= self.max_skipped:
            raise NonFiniteLossError(
                f"non-finite {'loss' if bad_loss else 'gradient'} at step {step} (group "
                f"{group!r}, loss={loss.item()}); batch: {_batch_stats(xb)}. The last good "
                "checkpoint is kept. Lower the lr, set clip_grad, or pass on_nonfinite='skip'."
            )
        return False


class _Run:
    """The live objects of one fit (model, objective, optimizers, EMA, random streams,
    history) and what is done to all of them together: start or resume, the loop, validation,
    checkpoints and the end. Every rank holds one; the run directory writes on the main one."""

    def __init__(
        self,
        model: AbstractGenerativeModel,
        obj: AbstractObjective,
        cfg: TrainConfig,
        ctx: dist_utils.Context,
        run_dir: RunDirectory | None,
        on_checkpoint: Callable[[History, bool], None] | None,
    ) -> None:
        self.model, self.obj, self.cfg, self.ctx, self.run_dir = model, obj, cfg, ctx, run_dir
        self.on_checkpoint = on_checkpoint
        self.optimizers = {
            g: torch.optim.Adam(params, weight_decay=cfg.weight_decay,
                                **obj.optimizer_options(g, cfg.lr))
            for g, params in obj.param_groups(model).items()
        }
        self.ema = _EMA(model, cfg.ema) if cfg.ema is not None else None
        self.streams = _Streams(cfg.seed, ctx.rank, cfg.accumulate)
        self.history = History(out=None if run_dir is None else run_dir.given)
        # the best weights, in memory (a CPU copy), when training returns them
        self.best: dict[str, Any] | None = {} if cfg.patience is not None else None

    # ---- start -----------------------------------------------------------------------------

    def begin(self, resuming: bool, x_train: Tensor, run_info: dict[str, Any] | None) -> int:
        """Resume from the run directory, or start afresh (the model initialized on the first
        batch, the random streams seeded); write ``config.json``. Returns the first step."""
        start = 0
        if resuming:
            start = self.run_dir.resume(self.model, self._load)  # type: ignore[union-attr]
            self.history.out = str(self.run_dir.path)  # type: ignore[union-attr]
        elif self.cfg.resume and self.ctx.is_main:
            print(f"ppgen: {self.run_dir.path} has no checkpoint yet; starting from scratch",  # type: ignore[union-attr]
                  file=sys.stderr)
        if self.run_dir is not None:
            self.run_dir.write_config(self._record(run_info), keep=resuming)
        if start == 0:
            if isinstance(self.model, InitializesFromData):
                with torch.no_grad():
                    idx = batch_indices(len(x_train), self.cfg.batch_size, self.cfg.seed, 0)
                    self.model.initialize(
                        x_train[idx].to(device=self.ctx.device, dtype=_dtype(self.model)))
            if self.ema is not None:
                self.ema = _EMA(self.model, self.ema.decay)
            self.streams.start()
        return start

    def _record(self, run_info: dict[str, Any] | None) -> dict[str, Any]:
        """What ``config.json`` records: the model, the settings, the command, ``run_info``."""
        payload = ckpt.model_payload(self.model)
        settings = {**self.cfg.to_dict(), "world_size": self.ctx.world_size}
        return {
            "family": payload["family"],
            "model": payload["config"],
            "fit": {k: settings[k] for k in _RECORDED},
            "argv": sys.argv,
            **(run_info or {}),
        }

    def _load(self, payload: dict[str, Any], path: Path) -> int:
        """Load a training checkpoint (validated by the checkpoint schema) into the live run;
        returns its step. A state that does not fit is a ``CheckpointError`` and leaves the run
        as it was (the run directory then tries the previous checkpoint)."""
        # what needs the live run: the shapes of every tensor, the optimizer groups (tried on
        # meta copies), on a copy: the check's trial step advances Adam's step counts in place
        ckpt.check_training_state(copy.deepcopy(payload), str(path), self.model, self.obj,
                                  self.optimizers)
        if self.ema is not None and payload["ema_decay"] is None:
            raise FitError(
                f"{path.parent}: the run was trained without EMA; resume without ema")
        before = self._snapshot()
        try:
            return self._apply(payload)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            self._restore(before)
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ckpt.CheckpointError(f"{path}: does not fit this run ({first})") from None

    def _apply(self, payload: dict[str, Any]) -> int:
        """Raises what torch raises (RuntimeError, ValueError, KeyError) when a state does not
        fit."""
        self.model.load_state_dict(payload["raw_state_dict"] or payload["model"]["state_dict"])
        if self.ema is not None:
            shadow = payload["model"]["state_dict"]
            if set(shadow) != set(self.ema.shadow):
                raise KeyError("the EMA weights name other tensors than the model's")
            self.ema.shadow = {k: v.to(self.ctx.device) for k, v in shadow.items()}
        self.obj.load_state_dict(payload["objective"]["state_dict"])
        for g, opt in self.optimizers.items():
            if g not in payload["optimizers"]:
                raise KeyError(f"no optimizer state for parameter group {g!r}")
            opt.load_state_dict(payload["optimizers"][g])
        # a checkpoint of an older ppgen has one stream, "rng" (the schema checks the one read)
        saved = payload.get("rng_streams") or {0: payload["rng"]}
        step = payload["step"]
        fresh = self.streams.load(saved, step)
        saved_history = History.from_dict(payload["history"])
        for f in dataclasses.fields(History):
            setattr(self.history, f.name, getattr(saved_history, f.name))
        slices = self.ctx.world_size * len(self.streams.ids)
        if self.ctx.is_main and (fresh or len(saved) != slices):
            print(
                f"ppgen: the run was trained with {len(saved)} batch slices "
                f"(processes x accumulate), this run has {slices}; training goes on, but the "
                "random draws differ from an uninterrupted run (keep processes x accumulate "
                "equal to continue exactly)",
                file=sys.stderr,
            )
        return step

    def _snapshot(self) -> dict[str, Any]:
        """A copy of what applying a checkpoint changes (to undo one that does not fit)."""
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "objective": copy.deepcopy(self.obj.state_dict()),
            "optimizers": {g: copy.deepcopy(o.state_dict()) for g, o in self.optimizers.items()},
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.obj.load_state_dict(state["objective"])
        for g, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][g])

    # ---- the loop ----------------------------------------------------------------------------

    def train(
        self,
        step_fn: _Step,
        train: tuple[Tensor, Tensor | None, Tensor | None],
        valid: tuple[Tensor, Tensor | None, Tensor | None] | None,
        start: int,
        guard: _SignalGuard,
        binarize_probs: Tensor | None = None,
    ) -> None:
        """Steps ``start`` to ``steps``: a batch, a step, then the records, validation,
        checkpoints and signals of that step."""
        cfg, history, ctx = self.cfg, self.history, self.ctx
        (x_train, c_train, m_train), steps = train, cfg.steps
        bar = _progress(cfg.progress and ctx.is_main, start, steps)
        t0 = time.perf_counter() - history.elapsed
        step = guard.step = start
        if start > 0 and cfg.patience is not None and history.val:
            history.stopped_early = _validations_since_best(history) >= cfg.patience
            if history.stopped_early and ctx.is_main:
                print(f"ppgen: {history.out} already stopped early at step {start} (no "
                      f"improvement in {cfg.patience} validations); nothing to train",
                      file=sys.stderr)
        self.model.train()
        if start == 0 and valid is not None and steps > 0 and not history.val:
            # the initial weights are a candidate too: a family whose data-dependent start is
            # already a good density (a flow that starts as the data's Gaussian) and that then
            # overfits a small table keeps its start (issue 22)
            self._validate(valid, 0)
        while step < steps and not history.stopped_early:
            idx = batch_indices(len(x_train), cfg.batch_size, cfg.seed, step)
            idx = dist_utils.shard(idx, ctx)
            if binarize_probs is not None:
                g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) % 2**63)
                xb = torch.bernoulli(binarize_probs[idx], generator=g)
            else:
                xb = x_train[idx]
            xb = xb.to(device=ctx.device, dtype=_dtype(self.model), non_blocking=True)
            cb = None if c_train is None else c_train[idx].to(ctx.device)
            mb = None if m_train is None else m_train[idx].to(ctx.device)
            losses, skipped = step_fn(xb, cb, step, mb)
            history.skipped_steps += int(skipped)
            if self.ema is not None:
                self.ema.update(self.model)
            step += 1
            history.steps = guard.step = step
            self._log(step, losses, t0, bar)
            stop_early = False
            if valid is not None and (step % cfg.eval_every == 0 or step == steps):
                stop_early = history.stopped_early = self._validate(valid, step)
            history.elapsed = time.perf_counter() - t0
            # a signal stops every rank after the same step (torchrun may signal one rank first)
            signum = dist_utils.all_reduce_max(guard.signum or 0, ctx)
            if signum:
                path = self.save(step, final=True)
                if bar is not None:
                    bar.close()
                raise TrainingInterrupted(signum, step, path)
            if step % cfg.checkpoint_every == 0 or step == steps or stop_early:
                self.save(step)
        if bar is not None:
            bar.close()
        history.elapsed = time.perf_counter() - t0

    def _log(self, step: int, losses: dict[str, float], t0: float, bar: Any) -> None:
        """The training record (every ``log_every`` steps), the objective's diagnostics (every
        ``diagnostics_every``), the progress bar."""
        cfg, history = self.cfg, self.history
        if step % cfg.log_every == 0 or step == cfg.steps:
            history.train.append({"step": step, **losses, "time": time.perf_counter() - t0})
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()}, refresh=False)
        if step % cfg.diagnostics_every == 0 or step == cfg.steps:  # type: ignore[operator]
            diagnostics = self.obj.diagnostics()
            if diagnostics:
                history.diagnostics.append({"step": step, **diagnostics})
        if bar is not None:
            bar.update(1)

    def _validate(
        self, valid: tuple[Tensor, Tensor | None, Tensor | None], step: int
    ) -> bool:
        return _validate(self.model, self.obj, *valid, self.ema, self.history, step,
                         self.run_dir, self.ctx, self.cfg.patience,  # type: ignore[arg-type]
                         self.cfg.batch_size, self.best)

    # ---- records -----------------------------------------------------------------------------

    def save(self, step: int, final: bool = False) -> Path | None:
        """Write the checkpoint of ``step`` and ``history.json`` (then ``on_checkpoint``), so
        a run stopped at any point has every record a later command reads. Every rank calls it
        (the random streams of all ranks are gathered); the main one writes."""
        if self.run_dir is None:
            return None
        rng_streams = dist_utils.gather_dicts(self.streams.state_dict(), self.ctx)
        if not self.ctx.is_main:
            return None
        model_payload = ckpt.model_payload(self.model)
        if self.ema is not None:  # evaluation takes the averaged weights
            model_payload["state_dict"] = self.ema.shadow
        payload = {
            "format": ckpt.FORMAT_VERSION,
            "model": model_payload,
            "raw_state_dict": self.model.state_dict() if self.ema is not None else None,
            "objective": {"name": self.obj.name, "options": self.obj.options,
                          "state_dict": self.obj.state_dict()},
            "optimizers": {g: o.state_dict() for g, o in self.optimizers.items()},
            "ema_decay": None if self.ema is None else self.ema.decay,
            "rng": rng_streams[0],  # stream 0, as older checkpoints had it
            "rng_streams": rng_streams,
            "step": step,
            "history": self.history.to_dict(),
        }
        path = self.run_dir.save(payload, self.history.to_dict())
        self._written(final)
        return path

    def _written(self, final: bool) -> None:
        if self.on_checkpoint is not None and self.run_dir is not None and self.ctx.is_main:
            self.on_checkpoint(self.history, final)

    def finish(self) -> None:
        """Leave the model holding the weights :func:`fit` returns (the EMA's, else the last;
        the best validation's when patience is set), in eval mode, the same on every rank;
        write the final ``history.json``."""
        model, history = self.model, self.history
        if self.ema is not None:
            model.load_state_dict(self.ema.shadow)
        if self.best is not None and history.best_step is not None:
            _restore_best(model, self.best, self.run_dir, history, self.ctx)
        # buffers a forward pass changes (batch-norm statistics...) are rank 0's on every rank
        dist_utils.broadcast_buffers(model, self.ctx)
        model.eval()
        if self.run_dir is not None and self.ctx.is_main:
            self.run_dir.write_history(history.to_dict())
            self._written(final=True)


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
    m_val: Tensor | None,
    ema_state: _EMA | None,
    history: History,
    step: int,
    run_dir: RunDirectory | None,
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
            if m_val is None:
                value = obj.validation_loss(model, xb, cb)
            else:
                value = obj.validation_loss(model, xb, cb, mask=m_val[part].to(device))
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
            if run_dir is not None:
                run_dir.write_best(ckpt.model_payload(model))
    model.train()
    if patience is None or improved:
        return False
    return _validations_since_best(history) >= patience


def _validations_since_best(history: History) -> int:
    return sum(1 for r in history.val if r["step"] > (history.best_step or 0))


def _restore_best(
    model: AbstractGenerativeModel,
    best: dict[str, Any],
    run_dir: RunDirectory | None,
    history: History,
    ctx: dist_utils.Context,
) -> None:
    """Load the best-validation weights: this process's copy, else (the best came before a
    resume) ``best.pt``; an unreadable best.pt leaves the last weights, and says so."""
    state = best.get("state")
    if state is None and run_dir is not None:
        try:
            model.load_state_dict(run_dir.read_best())
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

