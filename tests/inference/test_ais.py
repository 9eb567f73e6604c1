"""Annealed importance sampling (``ppgen/inference/ais.py``) against probabilistic PCA, whose
marginal likelihood is closed form: the schedules, AIS's unbiased weights and its error, AIS on
an implicit model, the observation scale it selects, and BDMC's sandwich.

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
from ppgen.inference.ais import (
    annealing_schedule,
    bdmc,
    estimate_ais,
    select_observation_scale,
)
from ppgen.inference.estimators import estimate_iwae


def _mean_se(d: torch.Tensor) -> tuple[float, float]:
    return float(d.mean()), float(d.std() / math.sqrt(d.numel()))


# ---- schedules --------------------------------------------------------------------------------


def test_schedules():
    for name in ("sigmoid", "linear", "geometric"):
        b = annealing_schedule(50, name)
        assert b.shape == (51,) and b[0] == 0 and b[-1] == 1 and (b.diff() >= 0).all(), name
    assert torch.equal(annealing_schedule(1, [0.0, 1.0]), torch.tensor([0.0, 1.0], dtype=b.dtype))


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(steps=st.integers(1, 2000), name=st.sampled_from(["sigmoid", "linear", "geometric"]),
       delta=st.floats(0.5, 20.0))
def test_every_named_schedule_rises_from_0_to_1_in_t_steps(steps, name, delta):
    """T+1 inverse temperatures in float64, exactly 0 and 1 at the ends, non-decreasing, finite:
    the weights' telescoping sum needs all four."""
    b = annealing_schedule(steps, name, delta=delta)
    assert b.dtype == torch.float64 and b.shape == (steps + 1,)
    assert b[0] == 0 and b[-1] == 1 and torch.isfinite(b).all()
    assert (b.diff() >= 0).all(), (steps, name, delta)


def test_bad_schedules_and_chains_are_refused():
    p = PPCA.random(3, 1, 0.5, seed=9)
    m, x = p.bound(), p.sample(4, seed=0)
    with pytest.raises(ValueError, match="schedule"):
        estimate_ais(m, x, schedule="cubic")
    with pytest.raises(ValueError, match="rise from 0 to 1"):
        annealing_schedule(3, [0.0, 0.7, 0.5, 1.0])
    for bad in ([0.2, 1.0], [0.0, 0.9], [0.0]):
        with pytest.raises(ValueError, match="rise from 0 to 1"):
            annealing_schedule(3, bad)
    with pytest.raises(ValueError, match="num_steps"):
        annealing_schedule(0, "linear")
    with pytest.raises(ValueError, match="num_particles"):
        estimate_ais(m, x, num_particles=0)

    def discrete_model(x=None):
        with pyro.plate("data", 1 if x is None else x.shape[0]):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            loc = c.unsqueeze(-1).expand(*c.shape, 3)
            return pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    dm = ppgen.from_pyro(discrete_model, event_shape=(3,), likelihood="none")
    with pytest.raises(ValueError, match="continuous latents"):
        estimate_ais(dm, x)


# ---- AIS against the closed form --------------------------------------------------------------


def test_ais_weights_are_unbiased_for_p_x():
    """One chain's weight w has E[w] = p(x) (Neal 2001) whatever the number of steps, although
    log w is low by about a nat here: the mean of w / p(x) over 400 examples is 1 within 4
    standard errors (an estimator biased like an ELBO would give about exp(-1))."""
    p = PPCA.random(4, 2, 0.5, seed=11, guide_scale=1.3, guide_shift=0.3)
    m, x = p.bound(), p.sample(400, seed=5)
    exact = p.exact_log_prob(x)
    lp, _ = estimate_ais(m, x, num_particles=1, num_steps=10)
    mean, se = _mean_se((lp - exact).exp())
    assert abs(mean - 1) < 4 * se, (mean, se)
    assert float((lp - exact).mean()) < -0.3, "the check must see a biased log (else it is moot)"


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
    lp, kind = estimate_ais(g, x, num_particles=8, num_steps=100, observation_scale=p.sigma)
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
    best = select_observation_scale(g, x, grid, num_examples=40, num_particles=4, num_steps=25)
    assert best == p.sigma


def test_bdmc_sandwiches_the_exact_value():
    """Forward AIS is below log p(x) and reverse AIS from the exact latents above it, in
    expectation; the gap shrinks with more annealing steps."""
    p = PPCA.random(4, 2, 0.5, seed=7, guide_scale=1.3)
    m = p.bound()
    gaps = []
    for steps in (3, 50):
        s = bdmc(m, num_examples=80, num_particles=1, num_steps=steps, seed=0)
        exact = p.exact_log_prob(s.x)
        lo_mean, lo_se = _mean_se(exact - s.lower)
        up_mean, up_se = _mean_se(s.upper - exact)
        assert lo_mean > -4 * lo_se and up_mean > -4 * up_se, (steps, lo_mean, up_mean)
        gaps.append(s.upper - s.lower)
    # one-sided, 3 standard errors: false-alarm rate about 1e-3 if the gaps were equal
    mean, se = _mean_se(gaps[0] - gaps[1])
    assert mean > 3 * se, (mean, se, float(gaps[0].mean()), float(gaps[1].mean()))
    assert float(gaps[1].mean()) < 0.2
    assert "gap" in str(s)
