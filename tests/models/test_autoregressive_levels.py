"""MADE and NADE at many levels: the compact discretized-logistic-mixture output, chosen by
default from 256 levels on, normalized exactly over all the levels, and the model's size stated
before training."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ppgen.models.autoregressive import _conditionals as cond
from ppgen.models.autoregressive.made import MADE
from ppgen.models.autoregressive.nade import NADE

FAMILIES = [MADE, NADE]
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("cls", FAMILIES)
@pytest.mark.parametrize(
    ("kind", "levels", "expected"),
    [("binary", 2, "binary"), ("discrete", 17, "discrete"), ("discrete", 255, "discrete"),
     ("discrete", 256, "logistic"), ("discrete", 1024, "logistic"),
     ("continuous", None, "continuous")],
)
def test_default_output_by_levels(cls, kind, levels, expected):
    """output="auto" takes the logistic mixture from 256 levels on (PixelCNN's threshold) and
    keeps the categorical below it; its outputs per dimension no longer grow with the levels."""
    m = cls(event_shape=(3,), kind=kind, levels=levels, hidden=[8])
    assert m.cond_kind == expected
    if expected == "logistic":
        assert m.num_params == 3 * m.config.components
    if expected == "discrete":
        assert m.num_params == levels


@pytest.mark.parametrize("cls", FAMILIES)
def test_explicit_output_overrides_the_default(cls):
    assert cls(event_shape=(3,), kind="discrete", levels=256, hidden=[8],
               output="categorical").cond_kind == "discrete"
    assert cls(event_shape=(3,), kind="discrete", levels=17, hidden=[8],
               output="logistic").cond_kind == "logistic"
    for kind in ("binary", "continuous"):
        with pytest.raises(ValueError, match="output='logistic' is for discrete data"):
            cls(event_shape=(3,), kind=kind, hidden=[8], output="logistic")
    with pytest.raises(ValueError, match="output"):
        cls(event_shape=(3,), kind="discrete", levels=256, hidden=[8], output="softmax")


@pytest.mark.parametrize("cls", FAMILIES)
def test_joint_sums_to_one_over_all_256_squared_points(cls):
    """Two 8-bit dimensions: the exact density summed over all 65,536 points is 1 (the MADE
    ensemble too), after the data-dependent initialization."""
    torch.manual_seed(0)
    m = cls(event_shape=(2,), kind="discrete", levels=256, hidden=[16]).double()
    m.initialize(torch.randint(0, 256, (50, 2)).double())
    m.eval()
    grid = torch.cartesian_prod(torch.arange(256.0), torch.arange(256.0)).double()
    with torch.no_grad():
        total = torch.logsumexp(m.log_prob(grid), 0).exp().item()
    assert total == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    dims=st.integers(1, 12),
    levels=st.sampled_from([2, 3, 17, 256, 1000]),
    components=st.integers(1, 6),
    family=st.sampled_from(FAMILIES),
)
def test_every_conditional_sums_to_one_over_all_levels(seed, dims, levels, components, family):
    """For random data and random weights, each dimension's conditional summed over all the
    levels is 1 in float64, with the logistic output at any number of levels."""
    torch.manual_seed(seed)
    m = family(event_shape=(dims,), kind="discrete", levels=levels, hidden=[8],
               output="logistic", components=components).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))  # away from the initial, near-uniform weights
        x = torch.randint(0, levels, (4, dims)).double()
        params = m.conditionals(x, 0) if family is MADE else m.conditionals(x)  # (N, D, P)
        grid = torch.arange(float(levels), dtype=torch.float64)
        lp = cond.log_prob_dims(params[..., None, :].expand(4, dims, levels, -1),
                                grid.expand(4, dims, levels), "logistic", levels)
    assert torch.allclose(torch.logsumexp(lp, -1).exp(), torch.ones(4, dims, dtype=torch.float64),
                          atol=1e-9)


@pytest.mark.parametrize("cls", FAMILIES)
def test_samples_are_levels_and_training_lowers_the_loss(cls):
    torch.manual_seed(0)
    m = cls(event_shape=(6,), kind="discrete", levels=256, hidden=[32])
    x = (torch.rand(200, 6) * 40 + 100).round()  # levels 100..140
    m.initialize(x)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m.train()
    before = -m.log_prob(x).mean().item()
    for _ in range(30):
        opt.zero_grad()
        (-m.log_prob(x).mean()).backward()
        opt.step()
    m.eval()
    after = -m.log_prob(x).mean().item()
    assert after < before
    s = m.sample(50, seed=1)
    assert s.shape == (50, 6) and torch.equal(s, s.round()) and s.min() >= 0 and s.max() <= 255
    assert torch.equal(s, m.sample(50, seed=1))


@pytest.mark.parametrize("cls", FAMILIES)
def test_default_at_28x28_8bit_is_compact(cls):
    """Default widths at 28x28, 256 levels: the categorical head needed 100-200 million values;
    the default logistic head stays under 15 million."""
    spec = {"event_shape": (1, 28, 28), "kind": "discrete", "levels": 256}
    auto = cls.parameter_count(cls.Config(**spec))
    categorical = cls.parameter_count(cls.Config(**spec, output="categorical"))
    assert auto < 15_000_000 < 100_000_000 < categorical


def test_fit_states_the_model_size_before_training(tmp_path):
    """ppgen fit prints the parameter count and the checkpoint's size before training, and the
    stated size is within 5% of the checkpoint written."""
    data = tmp_path / "eight_bit.npy"
    np.save(data, np.random.default_rng(0).integers(0, 256, (64, 1, 8, 8)).astype(np.uint8))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "ppgen", "fit", "made", "--data", str(data), "--steps", "2",
         "--out", str(out), "--no-progress", "--no-val", "--model.hidden=512"],
        capture_output=True, text=True, env=env, check=True,
    )
    first = proc.stdout.splitlines()[0]
    assert first.startswith("MADE: ") and "parameters" in first and "MB checkpoint" in first
    stated = float(first.split("~")[1].split(" MB")[0]) * 1e6
    actual = (out / "checkpoint.pt").stat().st_size
    assert math.isclose(stated, actual, rel_tol=0.05), (stated, actual)
