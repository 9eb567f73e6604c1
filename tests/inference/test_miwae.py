"""Fitting on incomplete data: the MIWAE bound (Mattei & Frellsen 2019), its path through the
shared trainer, and the refusals of families that cannot train on missing values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ppgen
from ppgen.inference.objectives.miwae import miwae_bound


def _binary_vae(d: int = 6, seed: int = 0) -> ppgen.models.AbstractGenerativeModel:
    torch.manual_seed(seed)
    ds = ppgen.datasets.from_array(np.zeros((2, d), dtype=np.int64), kind="binary")
    m = ppgen.build("vae", ds, latent=1, hidden=[16]).double().eval()
    with torch.no_grad():  # a decoder with strong, z-dependent probabilities
        for p in m.decoder.parameters():
            p.mul_(3.0)
    return m


def _exact_log_p_obs(m, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(x_obs) = log of the integral over the 1-D latent, by quadrature on a fine grid."""
    z = torch.linspace(-9, 9, 4001, dtype=torch.float64)
    dz = float(z[1] - z[0])
    with torch.no_grad():
        px = m.decode(z[:, None, None].expand(-1, x.shape[0], 1))  # (G, N, D)
        log_lik = px.base_dist.log_prob(x).where(mask, 0.0).sum(-1)  # (G, N)
        log_prior = -0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)
        return torch.logsumexp(log_lik + log_prior[:, None], 0) + math.log(dz)


def test_miwae_bound_is_below_the_exact_log_p_obs_and_reaches_it() -> None:
    m = _binary_vae()
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((5, 6), 0.5, dtype=torch.float64), generator=g)
    mask = torch.rand(5, 6, generator=g) < 0.6
    mask[:, 0] = True
    exact = _exact_log_p_obs(m, x, mask)
    with torch.no_grad():
        # E[bound_K] <= log p(x_obs): the mean of 400 independent K=2 bounds, 4 standard errors
        log_w = m.observed_log_weights(x, mask, 800).reshape(400, 2, -1)
        draws = torch.logsumexp(log_w, 1) - math.log(2)  # (400, N)
        mean, se = draws.mean(0), draws.std(0) / 20
        assert (mean <= exact + 4 * se).all(), (mean, exact)
        # and the bound is loose at K = 2 but tight at K = 4000: it bounds log p(x_obs), the
        # likelihood of the observed cells only (all cells would give another number)
        tight = miwae_bound(m, x, mask, 4000)
    assert torch.allclose(tight, exact, atol=0.02), (tight, exact)
    with torch.no_grad():
        full = miwae_bound(m, x, torch.ones_like(mask), 4000)
    assert (full < exact - 0.1).all()  # scoring missing cells too lowers it by their log-probs


def test_values_in_missing_cells_are_never_read() -> None:
    m = _binary_vae()
    x = torch.bernoulli(torch.full((4, 6), 0.5, dtype=torch.float64))
    mask = torch.rand(4, 6) < 0.5
    out = []
    for fill in (0.0, 1.0, float("nan"), 1e6):
        torch.manual_seed(3)
        out.append(m.observed_log_weights(x.where(mask, fill), mask, 7))
    for o in out[1:]:
        assert torch.equal(o, out[0])


def _incomplete(n: int = 60, d: int = 3, seed: int = 0) -> ppgen.datasets.Dataset:
    rs = np.random.RandomState(seed)
    z = rs.randn(n, 1)
    x = np.c_[z, 2 * z + 0.3 * rs.randn(n, 1), -z + 0.3 * rs.randn(n, 1)][:, :d]
    x[rs.rand(n, d) < 0.3] = np.nan
    x[0] = 0.1
    return ppgen.datasets.from_array(x, missing="mask")


@pytest.mark.parametrize("family", ["independent", "made", "maf", "ddpm", "gan"])
def test_families_without_the_capability_refuse_incomplete_data_before_any_work(
    family: str, tmp_path
) -> None:
    ds = _incomplete()
    m = ppgen.build(family, ds)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"cannot train on incomplete data.*can: .*vae"):
        ppgen.fit(m, ds, steps=2, out=out, progress=False)
    assert not out.exists()
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


def test_an_objective_without_masks_is_refused_for_incomplete_data(tmp_path) -> None:
    ds = _incomplete()
    m = ppgen.build("vae", ds, latent=1, hidden=[8])
    with pytest.raises(ValueError, match="cannot fit incomplete data.*miwae"):
        ppgen.fit(m, ds, steps=2, objective="elbo", out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(ValueError, match="needs a model that scores its observed cells"):
        ppgen.inference.make_objective("miwae", ppgen.build("maf", ds))


def test_vae_fits_incomplete_data_reproducibly_with_miwae() -> None:
    ds = _incomplete(n=80)
    states = []
    for seed in (0, 0, 1):
        torch.manual_seed(0)  # the same initial weights: the fit's seed alone differs
        m = ppgen.build("vae", ds, latent=1, hidden=[8])
        h = ppgen.fit(m, ds, steps=5, batch_size=16, seed=seed, progress=False,
                      objective_options={"num_particles": 3})
        assert all(math.isfinite(r["loss"]) for r in h.train)
        states.append(m.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])


@pytest.mark.slow
def test_miwae_training_raises_the_bound_on_observed_cells() -> None:
    ds = _incomplete(n=200)
    m = ppgen.build("vae", ds, latent=1, hidden=[16])
    ppgen.fit(m, ds, steps=1, seed=0, progress=False)  # initialize (standardization)
    x, mask = ds.data, ds.mask
    torch.manual_seed(0)
    with torch.no_grad():
        before = miwae_bound(m, x, mask, 50).mean()
    ppgen.fit(m, ds, steps=150, batch_size=50, seed=0, progress=False, lr=3e-3)
    torch.manual_seed(0)
    with torch.no_grad():
        after = miwae_bound(m, x, mask, 50).mean()
    assert after > before + 0.5, (before, after)
