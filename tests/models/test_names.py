"""Renamed names (issue 19, item 7; listed in CHANGELOG.md): every deprecated alias gives the
same value as the new name and warns with a DeprecationWarning that names the new one."""

from __future__ import annotations

import pytest
import torch

import ppgen
from ppgen.inference.objectives import make_objective


def test_vae_posterior_is_the_approximate_posterior_under_its_old_name():
    ds = ppgen.datasets.load("digits", "val").subset(4)
    m = ppgen.build("vae", ds, latent=2, hidden=[8]).double().eval()
    x = ds.data.double()
    new = m.approximate_posterior(x)
    with pytest.warns(DeprecationWarning, match="approximate_posterior"):
        old = m.posterior(x)
    z = new.sample()
    assert torch.equal(old.log_prob(z), new.log_prob(z))
    assert torch.equal(old.mean, new.mean)


def test_renyi_bound_is_lower_bound_under_its_old_name():
    ds = ppgen.datasets.load("digits", "val").subset(4)
    m = ppgen.build("vae", ds, latent=2, hidden=[8]).double()
    x = ds.data.double()
    estimator = make_objective("renyi", m, num_particles=3).estimator
    estimator.lower_bound(m, x, None)  # the first call probes the programs (draws of its own)
    torch.manual_seed(0)
    new = estimator.lower_bound(m, x, None)
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match="lower_bound"):
        old = estimator.bound(m, x, None)
    assert new.shape == (4,) and torch.equal(old, new)
