"""The command line on incomplete data: fit a VAE on a table with holes, fill them in one call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ppgen(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ppgen", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _table(path: Path) -> np.ndarray:
    rs = np.random.RandomState(0)
    z = rs.randn(60, 1)
    x = np.c_[z, 2 * z + 0.3 * rs.randn(60, 1), -z + 0.3 * rs.randn(60, 1)]
    x[rs.rand(*x.shape) < 0.3] = np.nan
    x[0] = [0.1, 0.2, 0.3]
    lines = ["a,b,c"] + [",".join("" if np.isnan(v) else f"{v:.6f}" for v in row) for row in x]
    path.write_text("\n".join(lines) + "\n")
    return np.round(x, 6)


@pytest.mark.slow
def test_fit_and_impute_a_tables_own_holes(tmp_path: Path) -> None:
    x = _table(tmp_path / "t.csv")
    spec = f"{tmp_path / 't.csv'}#missing=mask"
    refused = _ppgen("fit", "maf", "--data", spec, "--steps", "2", "--out", "r0", cwd=tmp_path)
    assert refused.returncode == 2 and "cannot train on incomplete data" in refused.stderr
    assert "vae" in refused.stderr and not (tmp_path / "r0").exists()
    fit = _ppgen("fit", "vae", "--data", spec, "--steps", "20", "--batch-size", "16", "--out",
                 "run", "--model.latent=1", "--model.hidden=8", "--no-progress", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    assert "cells missing" in fit.stdout
    out = _ppgen("impute", "run", "-n", "4", "-o", "completed.csv", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "importance-resampling" in out.stdout
    completed = np.loadtxt(tmp_path / "completed.csv", delimiter=",")
    assert completed.shape == x.shape and np.isfinite(completed).all()
    observed = ~np.isnan(x)
    np.testing.assert_allclose(completed[observed], x[observed], atol=1e-5)
    digits = _ppgen("impute", "run", "--data", "moons", "-o", "c.csv", cwd=tmp_path)
    assert digits.returncode == 2 and "pass --mask" in digits.stderr
