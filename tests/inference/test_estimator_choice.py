"""evaluate(estimator="auto") lets the model choose an estimator whose cost suits the data's size
(``choose_estimator``), and says what it chose in the Evaluation's notes."""

from __future__ import annotations

import math

import pytest
import torch

import ppgen
from ppgen.datasets import Dataset
from ppgen.models.diffusion.ddpm import DDPM


def test_ddpm_chooses_the_importance_sampled_bound_at_image_scale():
    """200 28x28 images at T = 1000 (the issue's 9-minute exact sum) get the importance-sampled
    bound with a note; the 300 digits of a test split and short chains keep the exact sum."""
    mnist = DDPM(event_shape=(1, 28, 28), kind="discrete", levels=256, hidden=[8])
    name, options, note = mnist.choose_estimator(200)
    assert name == "elbo" and options == {"method": "importance", "num_t": 64}
    assert note is not None and "importance-sampled" in note and "estimator='elbo'" in note
    assert mnist.choose_estimator(2) == ("elbo", {}, None)
    digits = DDPM(event_shape=(1, 8, 8), kind="discrete", levels=17, hidden=[8])
    assert digits.choose_estimator(300) == ("elbo", {}, None)
    short = DDPM(event_shape=(1, 28, 28), kind="discrete", levels=256, hidden=[8], timesteps=100)
    assert short.choose_estimator(10_000) == ("elbo", {}, None)  # T <= 2 num_t: exact is cheap


@pytest.mark.parametrize("family", ["made", "nade", "vae", "realnvp", "independent"])
def test_other_families_make_no_choice_by_size(family):
    ds = ppgen.datasets.load("digits", "val")
    model = ppgen.build(family, ds)
    assert model.choose_estimator(10**6) == (None, {}, None)


def test_evaluate_auto_uses_the_choice_reports_its_error_and_says_so(monkeypatch):
    torch.manual_seed(0)
    data = Dataset("img", torch.randint(0, 256, (12, 1, 6, 6)).float(), "discrete", 256)
    model = ppgen.build("ddpm", data, hidden=[8], timesteps=400, denoiser="mlp")
    monkeypatch.setattr(DDPM, "EXACT_BOUND_BUDGET", 1000)  # this small data counts as large
    auto = ppgen.evaluate(model, data, seed=0)
    assert any("importance-sampled" in n for n in auto.notes), auto.notes
    assert auto.kind == "lower_bound" and auto.mc_stderr is not None
    assert math.isfinite(auto.mc_stderr) and auto.mc_stderr > 0
    assert "importance-sampled" in str(auto)
    exact = ppgen.evaluate(model, data, estimator="elbo", seed=0)
    assert not any("importance" in n for n in exact.notes)
    # the estimate agrees with the exact sum within its Monte Carlo error (and a margin)
    gap = abs(auto.bits_per_dim - exact.bits_per_dim)
    assert gap < 6 * auto.mc_stderr / (36 * math.log(2)) + 0.05, (auto, exact)
    # the caller's explicit options win over the model's choice
    forced = ppgen.evaluate(model, data, seed=0, method="exact")
    assert forced.bits_per_dim == pytest.approx(exact.bits_per_dim, abs=1e-9)
