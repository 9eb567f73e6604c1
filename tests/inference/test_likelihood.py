"""The latent-variable estimators (ELBO, IWAE, AIS, BDMC) against probabilistic PCA, whose
marginal likelihood, posterior and ELBO are closed form.

Statistical checks compare paired per-example differences with their standard error; a bound of
4 standard errors has a false-alarm rate below 1e-4 per check (normal approximation over 100+
examples).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ppca import PPCA

import ppgen
from ppgen.inference.likelihood import (
    GlobalLatentError,
    annealing_schedule,
    bdmc,
    estimate_ais,
    estimate_iwae,
    select_observation_scale,
)


def _mean_se(d: torch.Tensor) -> tuple[float, float]:
    return float(d.mean()), float(d.std() / math.sqrt(d.numel()))


def test_ordering_elbo_iwae_exact():
    """mean ELBO <= IWAE-1 <= IWAE-10 <= IWAE-1000 <= exact on pPCA with an imperfect guide."""
    p = PPCA.random(5, 2, 0.5, seed=0, guide_scale=0.8, guide_shift=0.5)
    m = p.bound()
    x = p.sample(1000, seed=1)
    exact = p.exact_log_prob(x)
    elbo_cf = p.exact_elbo(x)  # closed form
    elbo_mc = m.elbo(x)
    iwae = {k: estimate_iwae(m, x, num_particles=k)[0] for k in (1, 10, 1000)}
    # E[IWAE-1] = E[ELBO] = the closed form: equal within noise
    for name, est in (("iwae-1", iwae[1]), ("trace elbo", elbo_mc)):
        mean, se = _mean_se(est - elbo_cf)
        assert abs(mean) < 4 * se, (name, mean, se)
    assert float((elbo_cf - exact).max()) < 0, "the ELBO is below log p for every example"
    for lo, hi in ((1, 10), (10, 1000)):
        mean, se = _mean_se(iwae[hi] - iwae[lo])
        assert mean > 4 * se, (lo, hi, mean, se)
    mean, se = _mean_se(exact - iwae[1000])
    assert mean > -4 * se, ("iwae-1000 <= exact", mean, se)
    assert abs(mean) < 0.01, "IWAE-1000 has converged on a 2-D latent"


@settings(max_examples=8, deadline=None)
@given(
    d=st.integers(1, 6),
    latent=st.integers(1, 3),
    n=st.integers(1, 7),
    k=st.integers(1, 20),
    seed=st.integers(0, 2**16),
)
def test_exact_posterior_makes_every_estimator_exact(d, latent, n, k, seed):
    """With q = p(z | x), every importance weight is p(x): IWAE-k, the ELBO and AIS (whose
    increments then sum to log p(x) along any schedule) equal log p(x) to rounding."""
    p = PPCA.random(d, latent, 0.3 + (seed % 7) / 7, seed=seed)
    m = p.bound()
    # the exact posterior is a full-covariance Gaussian: give the guide its Cholesky factor
    chol = torch.linalg.cholesky(p.posterior_cov())

    def guide(x=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(p.posterior_mean(x), scale_tril=chol))

    m = ppgen.from_pyro(p.model, guide, event_shape=(d,), likelihood="bound")
    x = p.sample(n, seed=seed + 1)
    exact = p.exact_log_prob(x)
    assert torch.allclose(estimate_iwae(m, x, num_particles=k)[0], exact, atol=1e-9)
    assert torch.allclose(m.elbo(x), exact, atol=1e-9)
    lp, kind = estimate_ais(m, x, num_particles=2, num_steps=3, leapfrog_steps=2)
    assert kind == "estimate"
    assert torch.allclose(lp, exact, atol=1e-9)


@settings(max_examples=6, deadline=None)
@given(d=st.integers(2, 5), latent=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_iwae_monotone_in_k_on_average(d, latent, seed):
    p = PPCA.random(d, latent, 0.4, seed=seed, guide_scale=1.5, guide_shift=0.5)
    m = p.bound()
    x = p.sample(100, seed=seed + 1)
    values = [estimate_iwae(m, x, num_particles=k)[0] for k in (1, 4, 32)]
    for lo, hi in zip(values[:-1], values[1:], strict=True):
        mean, se = _mean_se(hi - lo)
        assert mean > -4 * se, (d, latent, seed, mean, se)
    mean, se = _mean_se(p.exact_log_prob(x) - values[-1])
    assert mean > -4 * se


def test_particle_chunks_keep_k():
    """Chunking particles bounds memory without changing the bound: IWAE-10 in chunks of 3
    matches IWAE-10 in one pass within noise, and is tighter than IWAE-3."""
    p = PPCA.random(4, 2, 0.5, seed=3, guide_scale=0.8, guide_shift=0.5)
    m, x = p.bound(), p.sample(1000, seed=0)
    one = estimate_iwae(m, x, num_particles=10)[0]
    chunked = estimate_iwae(m, x, num_particles=10, particle_chunk=3)[0]
    three = estimate_iwae(m, x, num_particles=3)[0]
    mean, se = _mean_se(chunked - one)
    assert abs(mean) < 4 * se, (mean, se)
    mean, se = _mean_se(chunked - three)
    assert mean > 4 * se, (mean, se)


def test_ais_within_a_tenth_of_a_nat():
    p = PPCA.random(5, 2, 0.5, seed=0, guide_scale=1.3, guide_shift=0.3)
    m = p.bound()
    x = p.sample(40, seed=2)
    exact = p.exact_log_prob(x)
    lp, kind = estimate_ais(m, x, num_particles=8, num_steps=100)
    assert kind == "estimate"
    err = lp - exact
    assert abs(float(err.mean())) < 0.1, float(err.mean())
    assert float(err.abs().max()) < 0.5
    # and it beats the guide's own IWAE at a similar cost in model evaluations
    iwae = estimate_iwae(m, x, num_particles=8)[0]
    assert float((exact - lp).abs().mean()) < float((exact - iwae).abs().mean())


def test_ais_on_an_implicit_model_uses_the_observation_scale():
    """A deterministic generator x = W z + mu smoothed with s = sigma is exactly pPCA."""
    p = PPCA.random(3, 2, 0.8, seed=4)
    g = p.implicit()
    x = p.sample(30, seed=3)
    with pytest.raises(ValueError, match="observation_scale"):
        estimate_ais(g, x, num_particles=2, num_steps=2)
    lp, kind = estimate_ais(g, x, num_particles=8, num_steps=150, observation_scale=p.sigma)
    err = lp - p.exact_log_prob(x)
    assert kind == "estimate"
    assert abs(float(err.mean())) < 0.1, float(err.mean())
    ev = ppgen.evaluate(g, x, num_particles=4, num_steps=20, observation_scale=p.sigma)
    assert ev.kind == "estimate" and ev.estimator == "ais-4"


def test_select_observation_scale_finds_the_true_noise():
    p = PPCA.random(4, 1, 0.5, seed=6)
    g = p.implicit()
    x = p.sample(40, seed=4)
    grid = [p.sigma / 4, p.sigma, p.sigma * 4]
    best = select_observation_scale(g, x, grid, num_examples=40, num_particles=4, num_steps=40)
    assert best == p.sigma


def test_bdmc_sandwiches_the_exact_value():
    """Forward AIS is below log p(x) and reverse AIS from the exact latents above it, in
    expectation; the gap shrinks with more annealing steps."""
    p = PPCA.random(4, 2, 0.5, seed=7, guide_scale=1.3)
    m = p.bound()
    gaps = []
    for steps in (10, 60):
        s = bdmc(m, num_examples=100, num_particles=1, num_steps=steps, seed=0)
        exact = p.exact_log_prob(s.x)
        lo_mean, lo_se = _mean_se(exact - s.lower)
        up_mean, up_se = _mean_se(s.upper - exact)
        assert lo_mean > -4 * lo_se and up_mean > -4 * up_se, (steps, lo_mean, up_mean)
        gaps.append(s.upper - s.lower)
    mean, se = _mean_se(gaps[0] - gaps[1])
    assert mean > 4 * se, (mean, se)
    assert float(gaps[1].mean()) < 0.2
    assert "gap" in str(s)


def test_evaluate_auto_uses_iwae_with_its_default_k():
    p = PPCA.random(3, 1, 0.5, seed=8)
    ev = ppgen.evaluate(p.bound(), p.sample(10, seed=0))
    assert ev.kind == "lower_bound"
    assert ev.estimator == "iwae-1000"
    ev = ppgen.evaluate(p.bound(), p.sample(10, seed=0), estimator="elbo")
    assert ev.estimator == "elbo"


def test_bad_input_is_refused():
    p = PPCA.random(3, 1, 0.5, seed=9)
    m, x = p.bound(), p.sample(4, seed=0)
    with pytest.raises(ValueError, match="num_particles"):
        estimate_iwae(m, x, num_particles=0)
    with pytest.raises(ValueError, match="schedule"):
        estimate_ais(m, x, schedule="cubic")
    with pytest.raises(ValueError, match="rise from 0 to 1"):
        annealing_schedule(3, [0.0, 0.7, 0.5, 1.0])
    with pytest.raises(ValueError, match="implicit"):
        estimate_iwae(p.implicit(), x)

    def global_model(x=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        with pyro.plate("data", 1 if x is None else x.shape[0]):
            return pyro.sample("x", dist.Normal(w, 1.0).to_event(1), obs=x)

    def global_guide(x=None):
        pyro.sample("w", dist.Normal(0.0, 1.0).expand([3]).to_event(1))

    g = ppgen.from_pyro(global_model, global_guide, event_shape=(3,), likelihood="bound")
    with pytest.raises(GlobalLatentError, match="estimator='elbo'"):
        estimate_iwae(g, x)

    def discrete_model(x=None):
        with pyro.plate("data", 1 if x is None else x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            loc = c.unsqueeze(-1).expand(*c.shape, 3)
            return pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    dm = ppgen.from_pyro(discrete_model, event_shape=(3,), likelihood="none")
    with pytest.raises(ValueError, match="continuous latents"):
        estimate_ais(dm, x)


def test_schedules():
    for name in ("sigmoid", "linear", "geometric"):
        b = annealing_schedule(50, name)
        assert b.shape == (51,) and b[0] == 0 and b[-1] == 1 and (b.diff() >= 0).all(), name
    assert torch.equal(annealing_schedule(1, [0.0, 1.0]), torch.tensor([0.0, 1.0], dtype=b.dtype))
