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


_USER_MODULE = '''
"""A user's own models, outside ppgen: a protocol subclass and a from_pyro builder."""
import dataclasses
import math
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

import ppgen
from ppgen.models.base import AbstractGenerativeModel, ModelConfig, pyro_program


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiagConfig(ModelConfig):
    init_scale: float = 1.0


class DiagGaussian(AbstractGenerativeModel):
    """The minimum subclass: a config, a likelihood, model, log_prob and sample."""

    likelihood: ClassVar = "exact"
    Config: ClassVar = DiagConfig

    def __init__(self, config=None, **fields):
        super().__init__(config, **fields)
        self.loc = nn.Parameter(torch.zeros(self.event_shape))
        self.log_scale = nn.Parameter(
            torch.full(self.event_shape, math.log(self.config.init_scale))
        )

    def _dist(self):
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(len(self.event_shape))

    @pyro_program
    def model(self, x=None, context=None):
        with pyro.plate("data", 1 if x is None else x.shape[0]):
            return pyro.sample("x", self._dist(), obs=x)

    def log_prob(self, x, context=None):
        return self._dist().log_prob(x)

    @torch.no_grad()
    def sample(self, n, *, seed=None, generator=None, context=None):
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        eps = torch.randn(n, *self.event_shape, generator=generator)
        return self.loc + self.log_scale.exp() * eps


class Factor(PyroModule):
    """A one-factor linear-Gaussian model with an amortized guide."""

    def __init__(self, d, latent):
        super().__init__()
        self.decoder = nn.Linear(latent, d)
        self.encoder = nn.Linear(d, 2 * latent)
        self.latent = latent

    def model(self, x=None):
        with pyro.plate("data", 1 if x is None else x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.latent), 1.0).to_event(1))
            return pyro.sample("x", dist.Normal(self.decoder(z), 0.5).to_event(1), obs=x)

    def guide(self, x=None):
        with pyro.plate("data", x.shape[0]):
            h = self.encoder(x)
            loc, scale = h[..., : self.latent], F.softplus(h[..., self.latent :]) + 1e-3
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def factor_model(event_shape, kind, levels, latent=1):
    """A builder: the data facts and --model.X options in, a from_pyro wrapper out."""
    net = Factor(event_shape[0], latent)
    return ppgen.from_pyro(net.model, net.guide, event_shape=event_shape, likelihood="bound",
                           kind=kind, levels=levels, name="factor")
'''


@pytest.mark.parametrize(
    ("target", "options", "kind"),
    [("DiagGaussian", ["--model.init_scale=2.0"], "exact"),
     ("factor_model", ["--model.latent=2"], "lower_bound")],
)
def test_fit_a_users_model_by_import_path(tmp_path, target, options, kind):
    """``ppgen fit pkg.module:Name`` with a user module on PYTHONPATH (a protocol subclass, or a
    builder returning a from_pyro wrapper); evaluate and sample then rebuild it from the run."""
    import numpy as np

    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(_USER_MODULE)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "my.npy", (rng.normal(size=(300, 3)) * [1.0, 2.0, 0.5] + 1.0)
            .astype("float32"))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", "OMP_NUM_THREADS": "1"}

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "ppgen", *map(str, args)], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    out_dir = tmp_path / "run"
    fitted = run("fit", f"userpkg.models:{target}", "--data", tmp_path / "my.npy", "--steps", "30",
                 "--batch-size", "64", "--lr", "0.05", "--out", out_dir, "--no-progress",
                 *options)
    assert "run directory" in fitted
    config = json.loads((out_dir / "config.json").read_text())
    assert config["builder"] == f"userpkg.models:{target}"
    # the run names user code: reading it imports that code only with --trust-code
    refused = subprocess.run([sys.executable, "-m", "ppgen", "evaluate", str(out_dir)], env=env,
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--trust-code" in refused.stderr, refused.stderr
    ev = run("evaluate", out_dir, "--split", "val", "--json", tmp_path / "ev.json",
             "--trust-code")
    result = json.loads((tmp_path / "ev.json").read_text())
    assert result["likelihood"]["kind"] == kind, ev
    run("sample", out_dir, "-n", "5", "-o", tmp_path / "s.npy", "--trust-code")
    samples = np.load(tmp_path / "s.npy")
    assert samples.shape == (5, 3) and np.isfinite(samples).all()
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


def test_fit_refuses_to_replace_a_run_and_reports_the_best_weights(tmp_path):
    """A second fit into a run directory exits 2 naming what is there (the first run intact);
    --overwrite replaces it. The summary line says which weights the model holds."""
    run = tmp_path / "run"
    args = ("fit", "independent", "--data", "digits", "--steps", "20", "--batch-size", "50",
            "--lr", "0.05", "--out", run, "--no-progress")
    first = ppgen(*args).stdout
    assert "best weights from step" in first, first
    kept = (run / "checkpoint.pt").read_bytes()
    again = ppgen(*args, "--model.components=2", check=False)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert "already holds a run (config.json" in again.stderr and "--overwrite" in again.stderr
    assert (run / "checkpoint.pt").read_bytes() == kept
    ppgen(*args, "--model.components=2", "--overwrite")
    assert json.loads((run / "config.json").read_text())["model"]["components"] == 2


def test_fit_resume_is_idempotent(tmp_path):
    """--resume on a directory without a checkpoint starts from scratch and says so; on a
    directory holding something else it refuses, naming it."""
    def args(out):
        return ("fit", "independent", "--data", "moons", "--steps", "5", "--out", out,
                "--no-progress", "--resume")

    run = tmp_path / "run"
    proc = ppgen(*args(run))
    assert "no checkpoint yet; starting from scratch" in proc.stderr
    assert json.loads((run / "history.json").read_text())["steps"] == 5
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("1,2\n")
    bad = ppgen(*args(other), check=False)
    assert bad.returncode == 2 and "data.csv" in bad.stderr, bad.stderr
