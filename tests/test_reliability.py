"""Faults: kill -9, SIGTERM, damaged checkpoints, full disks, concurrent runs.

Each guarantee is checked on a real subprocess running ``ppgen fit`` where a process boundary
matters. The kill points are drawn from seeded generators, so the suite is not flaky; the heavier
sweep over many kill points runs under ``-m slow``.
"""

from __future__ import annotations

import errno
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
