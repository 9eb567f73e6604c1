"""Every CLI command end to end on tiny settings, in a subprocess like a user would run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def ppgen(*args, cwd=None, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "ppgen", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ppgen {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def test_list():
    out = ppgen("list").stdout
    assert "independent" in out and "digits" in out


def test_fit_evaluate_sample_resume(tmp_path):
    run = tmp_path / "run"
    out = ppgen(
        "fit",
        "independent",
        "--data",
        "digits",
        "--steps",
        "20",
        "--batch-size",
        "50",
        "--lr",
        "0.05",
        "--out",
        run,
        "--no-progress",
    ).stdout
    assert "bits/dim" in out
    for name in ("config.json", "checkpoint.pt", "best.pt", "history.json", "training_curve.png"):
        assert (run / name).exists(), name
    config = json.loads((run / "config.json").read_text())
    assert config["family"] == "independent" and config["data"] == "digits"
    ev = ppgen("evaluate", run, "--metrics", "all", "--json", tmp_path / "ev.json").stdout
    assert "exact" in ev
    result = json.loads((tmp_path / "ev.json").read_text())
    assert result["likelihood"]["kind"] == "exact"
    # the sample-quality table: likelihood with kind and CI, tests with p-values, FD, PRDC
    table = result["metrics"]
    assert (
        table["likelihood"]["ci_low"]
        < table["likelihood"]["nats"]
        < table["likelihood"]["ci_high"]
    )
    for key in ("mmd", "kid", "energy", "c2st"):
        assert 0 < table[key]["p_value"] <= 1, key
    assert table["fd"]["features"].startswith("digits-classifier")
    assert 0 <= table["prdc"]["coverage"] <= 1
    for word in ("95% CI", "MMD^2", "KID", "Frechet distance", "precision / recall", "coverage"):
        assert word in ev, word
    shutil.copytree(run, tmp_path / "run20")  # kept for a paired comparison with the resumed run
    ppgen("sample", run, "-n", "16", "-o", tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0
    ppgen("sample", run, "-n", "4", "-o", tmp_path / "s.npy")
    ppgen(
        "fit",
        "independent",
        "--data",
        "digits",
        "--steps",
        "30",
        "--batch-size",
        "50",
        "--out",
        run,
        "--resume",
        "--no-progress",
    )
    assert json.loads((run / "history.json").read_text())["steps"] == 30
    out = ppgen("compare", run, tmp_path / "run20", "--json", tmp_path / "cmp.json").stdout
    assert "paired comparison on 297 examples" in out and "bootstrap CI" in out
    cmp = json.loads((tmp_path / "cmp.json").read_text())
    assert cmp["kind_a"] == cmp["kind_b"] == "exact" and not cmp["mixed_kinds"]
    assert cmp["ci"]["low"] <= cmp["mean_difference"] <= cmp["ci"]["high"]


def test_model_overrides_and_bad_input_exit_2(tmp_path):
    ppgen(
        "fit",
        "independent",
        "--data",
        "moons",
        "--steps",
        "5",
        "--out",
        tmp_path / "r",
        "--model.components=3",
        "--no-progress",
    )
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["model"]["components"] == 3
    bad = ppgen("fit", "independent", "--data", "nope", "--steps", "5", check=False)
    assert bad.returncode == 2 and "unknown dataset" in bad.stderr
    bad = ppgen(
        "fit",
        "independent",
        "--data",
        "moons",
        "--model.nonsense=1",
        "--steps",
        "2",
        "--out",
        tmp_path / "r2",
        check=False,
    )
    assert bad.returncode == 2 and "nonsense" in bad.stderr
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    bad = ppgen("evaluate", tmp_path / "junk.pt", "--data", "digits", check=False)
    assert bad.returncode == 2 and "junk.pt" in bad.stderr


@pytest.mark.parametrize(
    "value,parsed",
    [("64,64", [64, 64]), ("0.3", 0.3), ("true", True), ("hinge", "hinge"), ("[1, 2]", [1, 2])],
)
def test_values_are_parsed_as_data(value, parsed):
    from ppgen.cli import parse_value

    assert parse_value(value) == parsed


def test_fit_scaling_flags_and_seeded_initial_weights(tmp_path, capsys):
    """--accumulate, --precision, --compile/--compile-backend reach fit and are recorded; the
    initial weights are a function of --seed (two runs in one process agree to the bit)."""
    from ppgen import checkpoint as ckpt
    from ppgen import cli

    runs = []
    for name in ("a", "b"):
        argv = ["fit", "made", "--data", "moons", "--steps", "2", "--batch-size", "32",
                "--accumulate", "2", "--precision", "bf16", "--compile", "--compile-backend",
                "eager", "--no-progress", "--no-val", "--model.hidden=[16]",
                "--out", str(tmp_path / name)]
        assert cli.main(argv) == 0
        runs.append(ckpt.read_checkpoint(tmp_path / name / "checkpoint.pt"))
    capsys.readouterr()
    fit_args = json.loads((tmp_path / "a" / "config.json").read_text())["fit"]
    assert (fit_args["accumulate"], fit_args["precision"], fit_args["compile"]) == (
        2, "bf16", "eager")
    a, b = (r["model"]["state_dict"] for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
