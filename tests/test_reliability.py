"""Faults: kill -9, SIGTERM, damaged checkpoints, full disks, concurrent runs.

Each guarantee is checked on a real subprocess running ``ppgen fit`` where a process boundary
matters. The kill points are drawn from seeded generators, so the suite is not flaky; the heavier
sweep over many kill points runs under ``-m slow``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ppgen
from ppgen import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _start_fit(out: Path, steps: int = 10**6, extra=()):
    cmd = [
        sys.executable,
        "-m",
        "ppgen",
        "fit",
        "independent",
        "--data",
        "digits",
        "--steps",
        str(steps),
        "--batch-size",
        "32",
        "--lr",
        "0.01",
        "--out",
        str(out),
        "--no-progress",
        "--no-val",
        "--checkpoint-every",
        "20",
        *extra,
    ]
    return subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(path: Path, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not path.exists():
        if time.time() - t0 > timeout:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


def _kill_and_check(tmp_path: Path, rng: random.Random, index: int) -> None:
    out = tmp_path / f"run{index}"
    proc = _start_fit(out)
    _wait_for(out / "checkpoint.pt")
    time.sleep(rng.uniform(0.0, 1.5))  # somewhere in training or inside a checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    model = ppgen.load(out / "checkpoint.pt")  # the last checkpoint is whole
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    step = ckpt.read_checkpoint(out / "checkpoint.pt")["step"]
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "ppgen",
            "fit",
            "independent",
            "--data",
            "digits",
            "--steps",
            str(step + 3),
            "--batch-size",
            "32",
            "--lr",
            "0.01",
            "--out",
            str(out),
            "--resume",
            "--no-progress",
            "--no-val",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert ckpt.read_checkpoint(out / "checkpoint.pt")["step"] == step + 3


def test_kill_9_leaves_a_checkpoint_that_loads_and_resumes(tmp_path):
    rng = random.Random(0)
    for i in range(2):
        _kill_and_check(tmp_path, rng, i)


@pytest.mark.slow
def test_kill_9_sweep(tmp_path):
    rng = random.Random(1)
    for i in range(20):
        _kill_and_check(tmp_path, rng, i)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_save_and_exit_with_conventional_code(tmp_path, sig, code):
    out = tmp_path / "run"
    proc = _start_fit(out, extra=["--model.components=1"])
    _wait_for(out / "checkpoint.pt")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "interrupted after step" in err and len(err.strip().splitlines()) == 1, err
    assert ppgen.load(out / "checkpoint.pt") is not None


def test_concurrent_fit_on_one_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    first = _start_fit(out)
    try:
        _wait_for(out / "checkpoint.pt")
        second = _start_fit(out, steps=5)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2 and "in use by another ppgen fit" in err, err
    finally:
        first.kill()
        first.communicate()


def test_damaged_checkpoint_falls_back_to_previous_on_resume(tmp_path, capsys):
    train = ppgen.datasets.load("digits", "train")
    m = ppgen.build("independent", train)
    ppgen.fit(m, train, steps=10, batch_size=32, out=tmp_path, checkpoint_every=5, progress=False,
              device="cpu")
    assert (tmp_path / "checkpoint.prev.pt").exists()
    blob = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(blob[: len(blob) // 3])  # truncated
    m2 = ppgen.build("independent", train)
    hist = ppgen.fit(
        m2,
        train,
        steps=12,
        batch_size=32,
        out=tmp_path,
        resume=True,
        checkpoint_every=5,
        progress=False,
    )
    err = capsys.readouterr().err
    assert "truncated" in err and "checkpoint.prev.pt" in err, err
    assert hist.steps == 12


def test_disk_full_stops_training_and_keeps_previous_checkpoint(tmp_path, monkeypatch):
    train = ppgen.datasets.load("digits", "train")
    m = ppgen.build("independent", train)
    ppgen.fit(m, train, steps=5, batch_size=32, out=tmp_path, progress=False, device="cpu")
    before = (tmp_path / "checkpoint.pt").read_bytes()
    real_fdopen = os.fdopen

    def full_disk(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)

        def write(_):
            raise OSError(errno.ENOSPC, "No space left on device")

        f.write = write
        return f

    monkeypatch.setattr(os, "fdopen", full_disk)
    with pytest.raises(ckpt.CheckpointWriteError, match="No space left"):
        ppgen.fit(m, train, steps=10, batch_size=32, out=tmp_path, resume=True, progress=False,
                  device="cpu")
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "temp files left"


def test_config_json_is_data(tmp_path):
    train = ppgen.datasets.load("digits", "train")
    m = ppgen.build("independent", train)
    ppgen.fit(m, train, steps=2, batch_size=32, out=tmp_path, progress=False, device="cpu")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["family"] == "independent" and config["model"]["levels"] == 17


# ---- kill -9 at exact points of a checkpoint write ----------------------------------------------

# Runs `ppgen fit` with one hook: the process SIGKILLs itself at the n-th call of a file-system
# step of the checkpoint write (os.replace before or after it renames, os.fsync, or halfway
# through writing a file's bytes), so every stage of the write is hit on purpose, not by timing.
_KILL_AT = r"""
import os, signal, sys
hook, nth = sys.argv[1], int(sys.argv[2])
calls = [0]
def hit():
    calls[0] += 1
    return calls[0] == nth
def die():
    os.kill(os.getpid(), signal.SIGKILL)
real_replace, real_fsync, real_fdopen = os.replace, os.fsync, os.fdopen
if hook == "replace-before":
    def replace(a, b):
        if hit(): die()
        return real_replace(a, b)
    os.replace = replace
elif hook == "replace-after":
    def replace(a, b):
        real_replace(a, b)
        if hit(): die()
    os.replace = replace
elif hook == "fsync":
    def fsync(fd):
        if hit(): die()
        return real_fsync(fd)
    os.fsync = fsync
elif hook == "half-write":
    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        if hit():
            real_write = f.write
            def write(data):
                real_write(bytes(data)[: len(data) // 2]); f.flush(); die()
            f.write = write
        return f
    os.fdopen = fdopen
from ppgen.cli import main
sys.exit(main(sys.argv[3:]))
"""
HOOKS = ("replace-before", "replace-after", "fsync", "half-write")
_STEPS = 12


def _fit_args(out: Path, *extra: str) -> list[str]:
    return ["fit", "independent", "--data", "digits", "--steps", str(_STEPS), "--batch-size",
            "32", "--lr", "0.01", "--out", str(out), "--no-progress", "--no-val",
            "--checkpoint-every", "4", "--device", "cpu", "--seed", "0", *extra]


@pytest.fixture(scope="module")
def reference_state(tmp_path_factory):
    """The final weights of the uninterrupted run (in-process, one thread)."""
    from ppgen.cli import main

    out = tmp_path_factory.mktemp("reference") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_fit_args(out)) == 0
    finally:
        torch.set_num_threads(threads)
    return ckpt.read_checkpoint(out / "checkpoint.pt")["model"]["state_dict"]


def _kill_at_and_check(tmp_path: Path, hook: str, nth: int, reference: dict) -> bool:
    """Kill the run at the ``nth`` ``hook`` call; returns False when the run ended before it.

    Then: every file with a checkpoint's name loads (no half-written file is ever one);
    ``checkpoint.pt`` is there once any checkpoint was; ``--resume`` reaches the last step from
    whatever is left (from scratch, when the kill came before the first checkpoint); and the
    resumed run's weights equal the uninterrupted run's, to the bit.
    """
    from ppgen.cli import main

    out = tmp_path / f"{hook}-{nth}"
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_AT, hook, str(nth), *_fit_args(out)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    if proc.returncode == 0:
        return False
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    named = [p for p in out.glob("checkpoint*.pt")]
    for p in named:
        ckpt.read_checkpoint(p)  # raises CheckpointError on a partial file
    if named:
        assert (out / "checkpoint.pt").exists(), [p.name for p in named]
        assert ppgen.load(out / "checkpoint.pt") is not None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            code = main(_fit_args(out, "--resume"))
    finally:
        torch.set_num_threads(threads)
    assert code == 0  # before the first checkpoint: --resume starts from scratch
    left = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    assert not left, f"temp files of the interrupted write were left: {left}"
    final = ckpt.read_checkpoint(out / "checkpoint.pt")
    assert final["step"] == _STEPS
    state = final["model"]["state_dict"]
    assert all(torch.equal(state[k], reference[k]) for k in reference), (hook, nth)
    return True


@pytest.mark.parametrize(("hook", "nth"), [("replace-before", 3), ("half-write", 2), ("fsync", 4)])
def test_kill_9_inside_a_checkpoint_write(tmp_path, reference_state, hook, nth):
    assert _kill_at_and_check(tmp_path, hook, nth, reference_state), "the kill point was reached"


@pytest.mark.slow
def test_kill_9_at_every_step_of_every_checkpoint_write(tmp_path, reference_state):
    """Every call of every hook during a whole run, until the run ends before the kill."""
    tried = {}
    for hook in HOOKS:
        nth = 1
        while _kill_at_and_check(tmp_path, hook, nth, reference_state):
            nth += 1
        tried[hook] = nth - 1
    print(f"kill points tried: {tried}, total {sum(tried.values())}")
    assert all(n >= 3 for n in tried.values()), tried


def test_a_fit_removes_what_an_interrupted_write_left(tmp_path):
    """Temp files of a write killed half-way (a checkpoint's ``.NAME.XXXX.tmp``, the rotation's
    hard link, a JSON file's temp) are deleted when the next fit takes the run directory; the
    user's own files there are not touched."""
    from ppgen.cli import main

    out = tmp_path / "run"
    assert main(_fit_args(out)) == 0
    stale = [".checkpoint.pt.k2j4_x.tmp", ".best.pt.abc123.tmp", ".checkpoint.prev.pt.link",
             ".config.json.q1w2e3.tmp", ".history.json.z9y8x7.tmp"]
    for name in stale:
        (out / name).write_bytes(b"half a file")
    (out / "notes.tmp").write_text("mine")
    (out / ".mine").write_text("mine too")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(_fit_args(out, "--resume")) == 0
    assert not [n for n in stale if (out / n).exists()]
    assert (out / "notes.tmp").read_text() == "mine" and (out / ".mine").exists()
    json.loads((out / "history.json").read_text())


# ---- a run stopped by a signal is a first-class run; signals at any point end in one line ------


def _fit_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ppgen", "fit", "independent", "--data", "digits", "--steps",
            "1000000", "--batch-size", "32", "--lr", "0.01", "--out", str(out), "--no-progress",
            "--eval-every", "50", "--checkpoint-every", "20", *extra]


def _one_line(err: str) -> None:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_run_stopped_by_sigterm_is_a_whole_run(tmp_path):
    """After SIGTERM the run directory holds everything a later command reads: ``ppgen
    evaluate RUN`` works without --data, history.json and the training curve are there."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_fit_cmd(out), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoint.prev.pt")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    _one_line(err)
    step = json.loads((out / "history.json").read_text())["steps"]
    assert step == ckpt.read_checkpoint(out / "checkpoint.pt")["step"] >= 40
    assert (out / "training_curve.png").stat().st_size > 0
    assert json.loads((out / "config.json").read_text())["data"] == "digits"
    ev = subprocess.run([sys.executable, "-m", "ppgen", "evaluate", str(out)], env=_env(),
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0 and "digits/test" in ev.stdout, ev.stderr


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.3])
def test_two_ctrl_c_early_in_a_fit_end_in_one_line(tmp_path, delay):
    """SIGINT twice in a row as the run starts (config.json just written, before or during the
    first steps): exit 130 with one line, no traceback."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_fit_cmd(out), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(out / "config.json")
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    _one_line(err)
    assert "interrupted after step" in err


# `ppgen fit` whose summary evaluation (after the last step) receives a signal
_SIGNAL_IN_SUMMARY = r"""
import os, signal, sys, time
import ppgen.cli as cli
sig = getattr(signal, sys.argv[1])
def evaluate(*args, **kwargs):
    os.kill(os.getpid(), sig)
    time.sleep(60)
cli.evaluate = evaluate
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_during_the_summary_evaluation_ends_in_one_line(tmp_path, sig, code):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNAL_IN_SUMMARY, sig, *_fit_args(out)],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == code, proc.stderr
    _one_line(proc.stderr)
    assert f"after step {_STEPS}; checkpoint saved" in proc.stderr, proc.stderr
    assert json.loads((out / "history.json").read_text())["steps"] == _STEPS
