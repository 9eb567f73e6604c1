"""A training run's directory, as :func:`ppgen.fit` writes it.

The files, and when each is written (every write atomic: :func:`ppgen.checkpoint.write_atomic`):

- ``config.json``: once, when training starts: the family, the model config, the fit settings,
  the command line and the caller's ``run_info`` (e.g. the CLI's ``data``);
- ``checkpoint.pt``: at each checkpoint; its predecessor stays as ``checkpoint.prev.pt`` (a hard
  link, renamed into place before the new file replaces ``checkpoint.pt``), so a kill at any point
  leaves a whole ``checkpoint.pt``;
- ``history.json``: with each checkpoint and at the end;
- ``best.pt``: at each validation that improves;
- ``.lock``: held for the whole fit (``flock``), naming the process.

:class:`RunDirectory` owns those files: it refuses, before any work, a fit that would replace a
run (:class:`RunExistsError`) or resume from a directory that is not a run; it takes the lock,
deletes what an interrupted write left, writes the records, and on resume picks the newest
checkpoint that is valid (``checkpoint.pt``, else ``checkpoint.next.pt``, else
``checkpoint.prev.pt``), read through the checkpoint schema
(``read_checkpoint(kind="training")``). It knows files, not training: what a checkpoint holds
is the trainer's business (:mod:`ppgen.inference.trainer`), and reading a run directory as
untrusted data, for ``evaluate`` and ``sample``, is :mod:`ppgen.run_directory`'s.
"""

from __future__ import annotations

__all__ = ["RunDirectory", "RunExistsError"]

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ppgen import checkpoint as ckpt
from ppgen.inference.train_config import FitError
from ppgen.models.base import AbstractGenerativeModel


class RunExistsError(FitError):
    """The run directory already holds a run (or something else) that the fit would replace."""


# The files a run writes atomically (checkpoint.write_atomic), and the hard link of the
# checkpoint rotation (RunDirectory.save): what a kill mid-write can leave behind is derived
# from them.
_RUN_FILES = ("checkpoint.pt", "best.pt", "config.json", "history.json", "training_curve.png")
_PREV_LINK = ".checkpoint.prev.pt.link"
# What a ppgen run directory may hold: a directory with anything else is not (only) a run.
_CHECKPOINTS = ("checkpoint.pt", "checkpoint.next.pt", "checkpoint.prev.pt")
_RUN_RECORDS = ("config.json", "best.pt", *_CHECKPOINTS)  # a run a fit would replace
_RUN_NAMES = frozenset({*_RUN_FILES, *_CHECKPOINTS, ".lock", _PREV_LINK})


def _is_run_file(name: str) -> bool:
    """A file a ppgen fit writes in its run directory (or an interrupted write's temp file)."""
    if name in _RUN_NAMES:
        return True
    return name.endswith(".tmp") and any(name.startswith(f".{n}.") for n in _RUN_FILES)


class RunDirectory:
    """The run directory of one fit: its lock, its records, its checkpoints and their rotation.

    Every process of a data-parallel run holds one (every rank reads the checkpoint it resumes
    from); only the main process locks, cleans and writes (``main`` in :meth:`open`).

    Example:
        >>> import tempfile
        >>> run = RunDirectory(Path(tempfile.mkdtemp()) / "run")
        >>> run.check(resume=True, overwrite=False)  # no checkpoint yet: start from scratch
        False
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.given = os.fspath(path)  # as the caller wrote it (History.out records it)
        self.main = True

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    # ---- before any work ----------------------------------------------------------------------

    def check(self, resume: bool, overwrite: bool) -> bool:
        """Refuse, before any work, a fit that would replace a run or resume from something
        else; returns True when the directory holds a checkpoint to resume from.

        Without ``resume``, a directory holding a run (config.json, a checkpoint, best.pt) is
        refused unless ``overwrite``; with ``resume``, a directory without a checkpoint starts
        from scratch, unless it holds files that a ppgen run does not write (named in the error).

        Raises:
            RunExistsError: naming the files and the way out (resume, overwrite, another out).
            FitError: another fit holds the directory now.
        """
        out = self.path
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
                        f"{out} holds no ppgen checkpoint to resume from but other files "
                        f"({shown}); it is not a ppgen run directory: choose another out directory"
                    )
            return has_checkpoint
        held = [n for n in _RUN_RECORDS if n in names]
        if held and not overwrite:
            self._refuse_if_locked()  # a fit running there now: that is the news
            raise RunExistsError(
                f"{out} already holds a run ({', '.join(held)}); pass resume=True (--resume) "
                "to continue it, overwrite=True (--overwrite) to replace it, or choose another "
                "out directory"
            )
        return False

    # ---- taking the directory -----------------------------------------------------------------

    @contextlib.contextmanager
    def open(self, *, main: bool, clear: bool) -> Iterator[RunDirectory]:
        """Hold the directory for a fit: on the main process, create it, take the lock, delete
        what an interrupted write left and, with ``clear``, a previous run's files (a file it
        left, an old best.pt, must never pass for this run's). Other processes write nothing."""
        self.main = main
        if not main:
            yield self
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with self.lock():
            ckpt.remove_partial_writes(self.path, _RUN_FILES)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path / _PREV_LINK)
            if clear:
                for name in (*_RUN_FILES, *_CHECKPOINTS):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path / name)
            yield self

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock on the run directory: two fits never interleave checkpoints.

        Raises:
            FitError: another process holds it (the message names it).
        """
        import fcntl

        f = open(self.path / ".lock", "a+")  # noqa: SIM115 - held for the whole run
        try:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise self._in_use(f.read().strip()) from None
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()}")
            f.flush()
            yield
        finally:
            f.close()

    def _in_use(self, holder: str) -> FitError:
        return FitError(
            f"{self.path} is in use by another ppgen fit ({holder or 'another process'}); use "
            "another --out directory or wait for that run to finish"
        )

    def _refuse_if_locked(self) -> None:
        """Raise the lock's error when another fit holds the lock now (a probe: released at
        once)."""
        import fcntl

        try:
            f = open(self.path / ".lock")  # noqa: SIM115 - closed below
        except OSError:
            return
        with f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._in_use(f.read().strip()) from None
            except OSError:
                return
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # ---- the records --------------------------------------------------------------------------

    def write_config(self, config: dict[str, Any], keep: bool) -> None:
        """Write ``config.json``; with ``keep`` (a resumed run) only when it is missing or lacks
        a key of ``config`` but ``argv`` (a run of an older ppgen), keeping what it records."""
        if not self.main:
            return
        path = self.path / "config.json"
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

    def write_history(self, history: dict[str, Any]) -> None:
        """Write ``history.json`` (a :class:`~ppgen.inference.trainer.History` as a dict)."""
        if self.main:
            ckpt.write_atomic(self.path / "history.json",
                              json.dumps(history, indent=1).encode(), "history")

    def save(self, payload: dict[str, Any], history: dict[str, Any]) -> Path | None:
        """Write a training checkpoint as ``checkpoint.pt``, keeping the previous one as
        ``checkpoint.prev.pt``, then ``history.json``; returns the checkpoint's path (None on
        processes other than the main one, which write nothing).

        The predecessor becomes ``checkpoint.prev.pt`` through a hard link (the same bytes), and
        the new checkpoint is renamed over ``checkpoint.pt`` by ``write_checkpoint`` (temp file,
        fsync, rename): ``checkpoint.pt`` is never absent nor partial, whenever a kill comes.
        """
        if not self.main:
            return None
        path = self.path / "checkpoint.pt"
        if path.exists():
            link = self.path / _PREV_LINK
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            try:
                os.link(path, link)
            except OSError:  # a filesystem without hard links: a copy
                import shutil

                shutil.copyfile(path, link)
            os.replace(link, self.path / "checkpoint.prev.pt")
            # rename() does nothing when both names already are the same file (a write killed
            # after the last rotation left checkpoint.prev.pt and checkpoint.pt one file)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
        ckpt.write_checkpoint(path, payload)
        ckpt._fsync_dir(self.path)
        self.write_history(history)
        return path

    def write_best(self, payload: dict[str, Any]) -> None:
        """Write ``best.pt`` (a model payload: the weights that validated best)."""
        if self.main:
            ckpt.write_checkpoint(self.path / "best.pt", payload)

    def read_best(self) -> dict[str, Any]:
        """The weights of ``best.pt`` (a state dict on the CPU).

        Raises:
            CheckpointError: missing, damaged or not a model checkpoint.
        """
        return ckpt.read_checkpoint(self.path / "best.pt", map_location="cpu",
                                    kind="model")["state_dict"]

    # ---- resume -------------------------------------------------------------------------------

    def resume(
        self,
        model: AbstractGenerativeModel,
        load: Callable[[dict[str, Any], Path], int],
    ) -> int:
        """Load the newest valid checkpoint into the run through ``load(payload, path)``, which
        returns its step; returns that step.

        Each checkpoint (``checkpoint.pt``, ``checkpoint.next.pt``, ``checkpoint.prev.pt``) is
        read through the checkpoint schema (:func:`~ppgen.checkpoint.read_checkpoint` with
        ``kind="training"``: truncated, corrupted, a field missing or of the wrong type). One
        that is invalid, or that ``load`` refuses with a
        :class:`~ppgen.checkpoint.CheckpointError` (states that do not fit the live run;
        ``load`` leaves the run as it was), is skipped for the next, and the fallback is said
        in one line. A checkpoint of another model (family or config than ``model``'s) is the
        caller's mistake, not damage: it stops the resume at once, as does any error of
        ``load`` other than a ``CheckpointError``.

        Raises:
            CheckpointError: a checkpoint of another model, or no valid checkpoint (the
                message lists why each was skipped).
        """
        errors = []
        for path in (self.path / n for n in _CHECKPOINTS):
            if not path.exists():
                continue
            try:
                payload = ckpt.read_checkpoint(path, map_location="cpu", kind="training")
            except ckpt.CheckpointError as e:
                errors.append(str(e))
                continue
            ckpt.check_compatible(model, payload["model"], str(path))
            try:
                step = load(payload, path)
            except ckpt.CheckpointError as e:
                errors.append(str(e))
                continue
            if errors and self.main:
                print(f"ppgen: {errors[-1]}; resuming from {path.name} instead", file=sys.stderr)
            return step
        raise ckpt.CheckpointError(
            f"{self.path}: nothing to resume from ({'; '.join(errors)}); move the damaged "
            "checkpoints away, or fit with overwrite=True (--overwrite) to start again"
        )
