"""The mixture family (ppgen/models/mixture.py) and the whitening flow layer
(ppgen/models/flows/whiten.py): densities against closed forms and scikit-learn."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.covariance import ledoit_wolf
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KernelDensity

import ppgen
from ppgen.datasets import from_array
from ppgen.models.flows.whiten import Whiten
from ppgen.models.mixture import Mixture, fit_em, kernel_density


def _blobs(n: int = 300, d: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.RandomState(seed)
    centres = rng.randn(3, d) * 3
    a = rng.randn(d, d)
    return centres[rng.randint(3, size=n)] + rng.randn(n, d) @ a * 0.5


@pytest.mark.parametrize("covariance", ["full", "diag", "spherical"])
def test_em_fit_matches_scikit_learn_density(covariance: str) -> None:
    """The EM start is scikit-learn's fit, and the torch density is its density, point by
    point (so the parameterisation, Cholesky factors included, is right)."""
    ds = from_array(_blobs(), kind="continuous")
    m = fit_em(ds, components=3, covariance=covariance)
    x = ds.data.double().numpy()
    gm = GaussianMixture(3, covariance_type=covariance, reg_covar=1e-6, random_state=0).fit(x)
    ours = m.log_prob(ds.data).detach().double().numpy()
    np.testing.assert_allclose(ours, gm.score_samples(x), rtol=1e-4, atol=1e-4)


def test_kernel_density_matches_scikit_learn() -> None:
    x = _blobs(n=80, d=2)
    ds = from_array(x, kind="continuous")
    m = kernel_density(ds, bandwidth=0.4)
    query = torch.randn(50, 2).double().numpy() * 3
    kde = KernelDensity(bandwidth=0.4).fit(ds.data.double().numpy())
    ours = m.log_prob(torch.as_tensor(query, dtype=torch.float32)).detach().double().numpy()
    np.testing.assert_allclose(ours, kde.score_samples(query), rtol=1e-4, atol=1e-4)


@given(k=st.integers(1, 4), d=st.integers(1, 6), seed=st.integers(0, 10**6))
@settings(max_examples=20, deadline=None)
def test_discrete_mixture_sums_to_one_over_every_binary_vector(k: int, d: int, seed: int) -> None:
    """Exact by enumeration: the latent-class model's probabilities of all 2^D vectors sum to 1,
    whatever its (random) parameters."""
    torch.manual_seed(seed)
    m = Mixture(event_shape=(d,), kind="binary", components=k)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    every = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)))
    total = m.log_prob(every).double().logsumexp(0)
    assert abs(total.item()) < 1e-5


def test_categorical_em_never_decreases_the_likelihood() -> None:
    """EM's monotonicity, step by step, on digits' 17 levels."""
    ds = ppgen.datasets.load("digits", split="val")
    values = []
    for steps in (1, 2, 5, 20):
        m = fit_em(ds, components=4, em_steps=steps)
        values.append(m.log_prob(ds.data).mean().item())
    # the pseudo-counts make EM a MAP iteration: allow float round-off only
    assert all(b >= a - 1e-4 for a, b in zip(values, values[1:], strict=False)), values
    assert values[-1] > values[0] + 1.0


def test_sample_moments_match_the_components() -> None:
    ds = from_array(_blobs(), kind="continuous")
    m = fit_em(ds, components=3)
    x = m.sample(20000, seed=0).double()
    pi = m.mix_logits.softmax(-1).double()
    mean = (pi[:, None] * m.loc.double()).sum(0)
    assert torch.allclose(x.mean(0), mean, atol=0.1)
    assert m.sample(5, seed=1).equal(m.sample(5, seed=1))


def test_the_family_trains_through_the_shared_trainer() -> None:
    ds = ppgen.datasets.load("moons", split="train")
    m = ppgen.build("mixture", ds, components=4)
    hist = ppgen.fit(m, ds, steps=20, batch_size=128, progress=False)
    ev = ppgen.evaluate(m, ppgen.datasets.load("moons", split="test"))
    assert ev.kind == "exact" and math.isfinite(ev.nats) and hist.steps == 20


def test_too_few_points_and_bad_bandwidth_are_refused() -> None:
    ds = from_array(np.random.RandomState(0).randn(12, 2), kind="continuous")
    with pytest.raises(ValueError, match="cannot fit 20 components"):
        fit_em(ds, components=20)
    with pytest.raises(ValueError, match="bandwidth must be a positive"):
        kernel_density(ds, bandwidth=0.0)
    with pytest.raises(ValueError, match="needs continuous data"):
        kernel_density(ppgen.datasets.load("digits", split="val"), bandwidth=1.0)


# ---- the whitening layer -----------------------------------------------------------------------


def test_whiten_log_det_is_the_autograd_jacobian_and_inverse_round_trips() -> None:
    torch.manual_seed(0)
    layer = Whiten(4).double()
    layer.initialize(torch.randn(50, 4, dtype=torch.float64) @ torch.randn(4, 4).double())
    t = layer()
    x = torch.randn(3, 4, dtype=torch.float64)
    z, ladj = t.call_and_ladj(x)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: t.call_and_ladj(v[None])[0][0], x[i])
        assert torch.allclose(ladj[i], torch.linalg.slogdet(jac)[1])
    back, neg = t.inv_and_ladj(z)
    assert torch.allclose(back, x) and torch.allclose(neg, -ladj)


@pytest.mark.parametrize("family", ["maf", "realnvp"])
def test_a_default_flow_starts_as_the_gaussian_of_its_first_batch(family: str) -> None:
    """ActNorm then Whiten, every later layer the identity: at step 0 the flow's density is the
    Gaussian with the batch's mean and Ledoit-Wolf covariance, in closed form."""
    x = torch.as_tensor(_blobs(n=64, d=3), dtype=torch.float32)
    ds = from_array(x.numpy(), kind="continuous")
    m = ppgen.build(family, ds, hidden=[16], whiten="on")
    m.initialize(x)
    xd = x.double()
    mu, std = xd.mean(0), xd.std(0)
    d = xd.shape[1]
    shrunk = torch.as_tensor(ledoit_wolf(((xd - mu) / std).numpy())[0])
    shrunk = shrunk + 1e-6 * shrunk.diagonal().mean() * torch.eye(d, dtype=torch.float64)
    gauss = torch.distributions.MultivariateNormal(mu, std[:, None] * shrunk * std[None, :])
    query = xd[:10] + 0.3
    expected = gauss.log_prob(query)
    assert torch.allclose(m.log_prob(query.float()).double(), expected, atol=1e-3)


def test_whiten_is_off_unless_asked() -> None:
    digits = ppgen.datasets.load("digits", split="val")
    moons = ppgen.datasets.load("moons", split="val")
    for ds in (digits, moons):
        assert not any(isinstance(x, Whiten) for x in ppgen.build("maf", ds).modules())
    on = ppgen.build("maf", digits, whiten="on")
    assert any(isinstance(x, Whiten) for x in on.modules())
