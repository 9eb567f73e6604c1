"""The classical baselines (ppgen/baselines.py); their rows in the benchmark report are checked in
tests/test_benchmark.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ppgen
from ppgen.baselines import classical_baselines
from ppgen.datasets import from_array


def test_continuous_baselines_are_chosen_on_validation_and_scored_exactly() -> None:
    splits = [ppgen.datasets.load("moons", split=s).subset(600) for s in ("train", "val", "test")]
    fitted = classical_baselines(splits[0], splits[1])
    assert sorted(fitted) == ["gaussian", "gmm", "kde"]
    x = splits[0].data.double()
    mle = torch.distributions.MultivariateNormal(x.mean(0), torch.cov(x.T, correction=0))
    ours = fitted["gaussian"].model.log_prob(splits[2].data).double()
    assert torch.allclose(ours, mle.log_prob(splits[2].data.double()), atol=1e-3)
    # two moons are far from Gaussian: the chosen mixture and KDE beat the single Gaussian
    assert fitted["gmm"].val_nats < fitted["gaussian"].val_nats
    assert fitted["kde"].val_nats < fitted["gaussian"].val_nats
    ev = ppgen.evaluate(fitted["kde"].model, splits[2])
    assert ev.kind == "exact"


def test_discrete_data_gets_the_latent_class_mixture() -> None:
    rng = np.random.RandomState(0)
    proto = rng.rand(3, 10) > 0.5
    x = proto[rng.randint(3, size=400)] ^ (rng.rand(400, 10) < 0.05)
    tr, va = (from_array(x.astype(np.int64), split=s) for s in ("train", "val"))
    fitted = classical_baselines(tr, va)
    assert list(fitted) == ["mixture"]
    assert fitted["mixture"].setting != "K=1"  # three prototypes: more than one class


def test_mismatched_splits_are_refused() -> None:
    a = ppgen.datasets.load("moons", split="train")
    b = ppgen.datasets.load("digits", split="val")
    with pytest.raises(ValueError, match="same data"):
        classical_baselines(a, b)
