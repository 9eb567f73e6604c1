"""The likelihood layer (``ppgen/inference/likelihood.py``, and the ELBO and IWAE estimators of
``ppgen/inference/estimators.py``) against probabilistic PCA, whose marginal likelihood,
posterior and ELBO are closed form: the estimators' ordering and exactness, ``evaluate``'s
choice, the Monte Carlo error it reports, and the bound check. AIS and BDMC: ``test_ais.py``.

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
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from ppca import PPCA

import ppgen
from ppgen.inference.likelihood import (
    GlobalLatentError,
    estimate_ais,
    estimate_iwae,
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


# ---- the Monte Carlo error of a stochastic estimate -------------------------------------------
#
# evaluate re-scores some examples with another seed and reports the Monte Carlo standard error
# of the dataset mean. The checks below score the same examples under 20 seeds: the empirical
# standard deviation of the 20 dataset means is what the reported error claims to be. From 20
# draws it is known to about +-16% (chi, 19 dof), so a factor-2 band has a false-alarm rate far
# below 1e-4 when the reported error is right, and catches an error that is off by 2 or more
# (e.g. one that ignores draws shared across examples, or reports the spread over examples).


def _scatter_and_reported(model, x, seeds=20, **kw) -> tuple[float, float]:
    evs = [ppgen.evaluate(model, x, seed=s, **kw) for s in range(seeds)]
    empirical = float(torch.tensor([ev.nats for ev in evs], dtype=torch.float64).std())
    reported = math.sqrt(sum(ev.mc_stderr**2 for ev in evs) / seeds)
    return empirical, reported


@pytest.mark.parametrize(
    ("estimator", "n", "options"),
    [
        ("elbo", 60, {}),
        ("iwae", 60, {"num_particles": 5}),
        ("iwae", 300, {"num_particles": 5}),  # 128 of the 300 re-scored (the default)
        ("iwae", 200, {"num_particles": 5, "mc_examples": 20}),
        ("ais", 40, {"num_particles": 2, "num_steps": 10}),
    ],
)
def test_mc_stderr_matches_the_scatter_over_seeds(estimator, n, options):
    p = PPCA.random(5, 2, 0.5, seed=0, guide_scale=1.5, guide_shift=0.8)
    x = p.sample(n, seed=1)
    empirical, reported = _scatter_and_reported(p.bound(), x, estimator=estimator, **options)
    assert 0.5 < reported / empirical < 2, (estimator, n, options, empirical, reported)
    ev = ppgen.evaluate(p.bound(), x, estimator=estimator, **options)
    assert ev.mc_stderr < ev.stderr, "on 5-D pPCA the spread over examples dominates"
    assert "Monte Carlo ±" in str(ev)
    assert ev.to_dict()["mc_stderr"] == ev.mc_stderr
    assert ev.to_dict()["mc_stderr_bits_per_dim"] == pytest.approx(
        ev.mc_stderr / (5 * math.log(2)))


def test_mc_stderr_of_shared_draws_counts_their_correlation():
    """Parzen scores every example of a batch against one pool of samples: the examples'
    errors move together, and the per-batch measurement sees it (a per-example one would
    report about 1/sqrt(batch) of the scatter)."""
    p = PPCA.random(3, 2, 0.5, seed=0)
    x = p.sample(60, seed=1)
    empirical, reported = _scatter_and_reported(p.implicit(), x, estimator="parzen",
                                                num_particles=200, batch_size=30)
    assert 0.5 < reported / empirical < 2, (empirical, reported)


def test_mc_stderr_of_a_dequantized_density():
    ds = ppgen.datasets.load("digits", "val").subset(100)
    m = ppgen.build("maf", ds, hidden=[16])
    empirical, reported = _scatter_and_reported(m, ds)
    assert 0.5 < reported / empirical < 2, (empirical, reported)
    assert ppgen.evaluate(m, ds).estimator == "dequantized"


def test_exact_estimates_have_no_mc_error_and_the_measurement_can_be_skipped():
    ds = ppgen.datasets.load("digits", "val").subset(50)
    ev = ppgen.evaluate(ppgen.build("nade", ds, hidden=[8]), ds)
    assert ev.kind == "exact" and ev.mc_stderr == 0.0 and ev.mc_stderr_bits_per_dim == 0.0
    assert "Monte Carlo" not in str(ev)
    p = PPCA.random(3, 1, 0.5, seed=8)
    x = p.sample(10, seed=0)
    skipped = ppgen.evaluate(p.bound(), x, num_particles=4, mc_examples=0)
    measured = ppgen.evaluate(p.bound(), x, num_particles=4)
    assert skipped.mc_stderr is None and "not measured" in str(skipped)
    assert skipped.to_dict()["mc_stderr"] is None
    # the measurement leaves the reported value alone: the first run's, bit for bit
    assert torch.equal(skipped.per_example, measured.per_example)
    # a deterministic bound (IWAE on a model without latents) measures 0
    flat = ppgen.build("independent", ppgen.datasets.load("moons", "val"))
    ev = ppgen.evaluate(flat, torch.zeros(5, 2), estimator="iwae", num_particles=3)
    assert ev.kind == "lower_bound" and ev.mc_stderr == 0.0
    for bad in (-1, 2.5, True, "10"):
        with pytest.raises(ValueError, match="mc_examples"):
            ppgen.evaluate(p.bound(), x, mc_examples=bad)


# ---- a bound on the wrong side of a known exact value -----------------------------------------


def _exact_ppca(p: PPCA):
    def model(x=None):
        with pyro.plate("data", 1 if x is None else x.shape[0]):
            return pyro.sample("x", p.marginal(), obs=x)

    return ppgen.from_pyro(model, event_shape=(p.d,), likelihood="exact")


def test_a_correct_bound_is_never_on_the_wrong_side():
    p = PPCA.random(4, 2, 0.5, seed=3, guide_scale=1.2, guide_shift=0.2)
    x = p.sample(80, seed=0)
    exact = ppgen.evaluate(_exact_ppca(p), x)
    assert exact.kind == "exact" and exact.mc_stderr == 0.0
    for seed in range(5):
        for est, k in (("elbo", None), ("iwae", 1000)):
            bound = ppgen.evaluate(p.bound(), x, estimator=est, num_particles=k, seed=seed)
            check = bound.check_bound(exact)
            assert check.verdict in ("ok", "within noise"), (seed, est, str(check))
    # IWAE-1000 has converged: its excess is within noise of 0, from either side
    assert abs(check.excess) < 4 * check.mc_stderr + 1e-3


def test_a_bound_above_the_exact_value_is_flagged():
    """A guide whose density is left out of the weights (the entropy term dropped, as a guide
    that does not normalize would) gives a "bound" above log p(x) by about E_q[log q] nats."""
    from pyro import poutine

    p = PPCA.random(4, 2, 0.1, seed=3)  # a narrow posterior: log q(z|x) > 0

    def unscored_guide(x=None):
        with poutine.mask(mask=False):
            p.guide(x)

    broken = ppgen.from_pyro(p.model, unscored_guide, event_shape=(p.d,), likelihood="bound")
    x = p.sample(60, seed=0)
    exact = ppgen.evaluate(_exact_ppca(p), x)
    bound = ppgen.evaluate(broken, x, estimator="iwae", num_particles=10)
    check = bound.check_bound(exact)
    assert check.wrong_side and check.excess > 10 * check.mc_stderr, str(check)
    assert "WRONG SIDE" in str(check) and check.to_dict()["verdict"] == "wrong side"


@settings(max_examples=60, deadline=None)
@given(
    excess=st.floats(-5, 5, allow_nan=False),
    mc=st.one_of(st.none(), st.floats(0, 2, allow_nan=False)),
    k=st.floats(0.5, 5),
)
def test_check_bound_verdicts(excess, mc, k):
    """The verdict follows its definition for every excess and Monte Carlo error."""
    from ppgen.inference.likelihood import Evaluation, check_bound

    assume(mc is None or abs(excess - k * mc) > 1e-9)  # no float ties at the threshold
    assume(abs(excess) > 1e-9)
    exact = torch.linspace(-3.0, -1.0, 7, dtype=torch.float64)
    bound = Evaluation(exact + excess, "lower_bound", "iwae-5", 2, "test", mc)
    c = check_bound(bound, Evaluation(exact, "exact", "exact", 2, "test", 0.0), k=k)
    assert c.excess == pytest.approx(excess, abs=1e-9)
    assert check_bound(bound, exact, k=k).verdict == c.verdict  # per-example values
    assert check_bound(bound, float(exact.mean()), k=k).verdict == c.verdict  # their mean
    tol = 1e-6 * max(1.0, abs(bound.nats))
    if excess <= 0:
        assert c.verdict == "ok"
    elif excess > tol:
        noise = mc is not None and excess <= k * mc
        assert c.verdict == ("within noise" if noise else "wrong side"), (excess, mc, k)


def test_check_bound_refuses_what_it_cannot_judge():
    from ppgen.inference.likelihood import Evaluation, check_bound

    v = torch.zeros(4, dtype=torch.float64)
    exact = Evaluation(v, "exact", "exact", 1, "test", 0.0)
    bound = Evaluation(v, "lower_bound", "elbo", 1, "test", 0.1)
    with pytest.raises(ValueError, match="lower bound"):
        check_bound(exact, exact)
    with pytest.raises(ValueError, match="must be exact"):
        check_bound(bound, bound)
    with pytest.raises(ValueError, match="same examples"):
        check_bound(bound, torch.zeros(5))
    with pytest.raises(ValueError, match="k must be positive"):
        check_bound(bound, exact, k=0)


def test_progress_bar_only_when_asked_or_on_a_terminal(capsys):
    """progress=True draws a bar over the batches on stderr (and one for the Monte Carlo
    re-scoring); False, and None off a terminal (here: captured), draw nothing; the numbers are
    the same either way."""
    p = PPCA.random(3, 1, 0.5, seed=9)
    m, x = p.bound(), p.sample(30, seed=0)
    capsys.readouterr()
    runs = {}
    for progress in (True, False, None):
        runs[progress] = ppgen.evaluate(m, x, estimator="elbo", batch_size=10,
                                        mc_examples=20, progress=progress)
        err = capsys.readouterr().err
        if progress:
            assert "evaluate:" in err and "/3 [" in err and "Monte Carlo error:" in err, err
        else:
            assert err == "", err
    assert torch.equal(runs[True].per_example, runs[False].per_example)
    assert runs[True].mc_stderr == runs[None].mc_stderr
