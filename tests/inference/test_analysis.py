"""Statistics of density estimates: CIs, paired comparison, calibration, ArviZ output."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ppgen
from ppgen.inference import analysis
from ppgen.inference.likelihood import Evaluation
from ppgen.models.base import AbstractGenerativeModel, ModelConfig

# ---- small explicit models with known densities ---------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class _MixtureConfig(ModelConfig):
    scale: float = 1.0  # multiplies the component std of sample() only: a broken sampler
    log_prob_scale: float = 1.0  # multiplies the component std of log_prob only


class EightGaussians(AbstractGenerativeModel):
    """The 8gaussians density as a ppgen model: ``log_prob`` is the data's true log-density."""

    likelihood: ClassVar = "exact"
    Config: ClassVar = _MixtureConfig

    def __init__(self, config=None, **fields):
        super().__init__(config, **fields)
        angles = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
        self.register_buffer("centers", 2.0 * torch.stack([angles.cos(), angles.sin()], 1))
        self.std = 0.1

    def log_prob(self, x, context=None):
        s = self.std * self.config.log_prob_scale
        sq = ((x.double()[:, None, :] - self.centers) ** 2).sum(-1)
        return torch.logsumexp(-0.5 * sq / s**2 - math.log(2 * math.pi * s**2), 1) - math.log(8)

    def model(self, x=None, context=None):
        raise NotImplementedError

    def sample(self, n, *, seed=None, generator=None, context=None):
        g = torch.Generator().manual_seed(seed) if seed is not None else generator
        k = torch.randint(8, (n,), generator=g)
        eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
        return (self.centers[k] + self.std * self.config.scale * eps).float()


def _mixture(**fields):
    return EightGaussians(event_shape=(2,), **fields)


# ---- bootstrap ------------------------------------------------------------------------------


def test_bootstrap_ci_covers_the_true_mean_at_its_nominal_rate():
    import numpy as np
    from scipy.stats import bootstrap

    # 300 simulated test sets of 100 per-example values. Gaussian values: the 95% BCa interval
    # covers the true mean in 95% of them within 3 binomial standard errors (false alarm 0.3%;
    # the normal-vs-t quantile gap at n = 100 costs only 0.3% of coverage). Skewed values
    # (-z^2/2, like per-example log-likelihoods): every bootstrap interval undercovers a little
    # at n = 100 (a property of the method, measured in docs/benchmarks.md), so there the check
    # is agreement with scipy's independent BCa implementation on the same data, within the
    # paired Monte Carlo error.
    sims = 300
    normal_hits, paired = 0, []
    for seed in range(sims):
        z = torch.randn(100, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        normal_hits += analysis.bootstrap_ci(z, num_bootstrap=1000, seed=seed).contains(0.0)
        v = -0.5 * z**2
        ours = analysis.bootstrap_ci(v, num_bootstrap=1000, seed=seed).contains(-0.5)
        ref = bootstrap(
            (v.numpy(),), np.mean, n_resamples=1000, method="BCa", random_state=seed
        ).confidence_interval
        paired.append(float(ours) - float(ref.low <= -0.5 <= ref.high))
    assert abs(normal_hits / sims - 0.95) < 3 * math.sqrt(0.95 * 0.05 / sims), normal_hits
    d = torch.tensor(paired)
    assert abs(float(d.mean())) <= 3 * float(d.std()) / math.sqrt(sims) + 1 / sims, d.mean()


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(2, 60),
    seed=st.integers(0, 2**16),
    method=st.sampled_from(["bca", "percentile", "basic"]),
)
def test_bootstrap_ci_generic_statistic_path_equals_the_mean_shortcut(n, seed, method):
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) ** 3
    a = analysis.bootstrap_ci(x, num_bootstrap=200, method=method, seed=seed)
    b = analysis.bootstrap_ci(x, lambda t: t.mean(-1), num_bootstrap=200, method=method, seed=seed)
    assert (a.low, a.high, a.value, a.stderr) == pytest.approx(
        (b.low, b.high, b.value, b.stderr), abs=1e-12
    )
    assert a.value == pytest.approx(float(x.mean()), abs=1e-12)
    if a.stderr > 0:
        assert a.low <= a.high


def test_bootstrap_ci_of_a_median_and_bad_input():
    x = torch.arange(101, dtype=torch.float64)
    ci = analysis.bootstrap_ci(x, lambda t: t.median(-1).values, num_bootstrap=500)
    assert ci.value == 50 and ci.low < 50 < ci.high
    with pytest.raises(ValueError, match="at least 2"):
        analysis.bootstrap_ci(torch.ones(1))
    with pytest.raises(ValueError, match="non-finite"):
        analysis.bootstrap_ci(torch.tensor([1.0, math.nan]))
    with pytest.raises(ValueError, match="level"):
        analysis.bootstrap_ci(x, level=1.5)


def test_summarize_in_nats_and_bits_per_dim():
    test = ppgen.datasets.load("moons", "test")
    m = ppgen.build("independent", test)
    ev = ppgen.evaluate(m, test)
    s = analysis.summarize(ev, num_bootstrap=500)
    assert s.nats == pytest.approx(ev.nats, abs=1e-12)
    assert s.stderr == pytest.approx(ev.stderr, rel=1e-12)
    assert s.bits_per_dim == pytest.approx(ev.bits_per_dim, rel=1e-12)
    assert s.bits_per_dim_stderr == pytest.approx(ev.bits_per_dim_stderr, rel=1e-12)
    scale = 1 / (2 * math.log(2))
    assert s.bits_per_dim_ci.low == pytest.approx(s.ci.low * scale, rel=1e-12)
    assert s.ci.low < s.nats < s.ci.high
    assert s.ci.stderr == pytest.approx(s.stderr, rel=0.15)  # bootstrap sd vs s/sqrt(n)
    bare = analysis.summarize(ev.per_example, num_dims=2, num_bootstrap=500)
    assert bare.kind == "unknown" and bare.nats == pytest.approx(s.nats)
    assert "bits/dim" in str(s) and s.to_dict()["kind"] == "exact"
    with pytest.raises(ValueError, match="num_dims"):
        analysis.summarize(ev.per_example)


# ---- paired comparison ----------------------------------------------------------------------


def _evaluation(values, kind="exact", dims=2):
    return Evaluation(torch.as_tensor(values, dtype=torch.float64), kind, kind, dims, "test")


def test_compare_matches_the_paired_tests_by_hand():
    from scipy import stats

    g = torch.Generator().manual_seed(0)
    shared = 3 * torch.randn(300, generator=g, dtype=torch.float64)  # hard points hurt both
    a = shared + 0.05 + 0.2 * torch.randn(300, generator=g, dtype=torch.float64)
    b = shared + 0.2 * torch.randn(300, generator=g, dtype=torch.float64)
    c = analysis.compare(_evaluation(a), _evaluation(b), names=("a", "b"), num_bootstrap=500)
    d = a - b
    assert c.mean_difference == pytest.approx(float(d.mean()), abs=1e-12)
    assert c.stderr == pytest.approx(float(d.std() / math.sqrt(300)), rel=1e-12)
    assert c.bits_per_dim_difference == pytest.approx(float(d.mean()) / (2 * math.log(2)))
    t = stats.ttest_rel(a.numpy(), b.numpy())
    assert c.t_statistic == pytest.approx(t.statistic, rel=1e-10)
    assert c.p_value == pytest.approx(t.pvalue, rel=1e-8)
    assert c.wilcoxon_p_value == pytest.approx(stats.wilcoxon(d.numpy()).pvalue, rel=1e-8)
    assert c.ci.low < c.mean_difference < c.ci.high
    # the pairing matters: unpaired error bars (sd 3 each) could not see a 0.05 difference
    assert c.p_value < 0.01 and float(a.std() / math.sqrt(300)) > 0.15
    assert not c.mixed_kinds and "exact" in c.note and "paired comparison" in str(c)


def test_compare_refuses_mixed_kinds_unless_asked():
    exact, bound = _evaluation(torch.zeros(50)), _evaluation(-torch.rand(50), "lower_bound")
    with pytest.raises(analysis.MixedKindsError, match="allow_mixed_kinds"):
        analysis.compare(exact, bound)
    with pytest.raises(ValueError, match="estimate"):
        analysis.compare(_evaluation(torch.zeros(50), "estimate"), exact)
    c = analysis.compare(exact, bound, allow_mixed_kinds=True, num_bootstrap=100)
    assert c.mixed_kinds and "upper bound on the true difference" in c.note
    assert "WARNING" in str(c)
    c = analysis.compare(bound, exact, allow_mixed_kinds=True, num_bootstrap=100)
    assert "lower bound on the true difference" in c.note
    same = analysis.compare(bound, bound, num_bootstrap=100)
    assert "neither a bound nor an estimate" in same.note and same.p_value == 1.0
    with pytest.raises(ValueError, match="same test points"):
        analysis.compare(exact, _evaluation(torch.zeros(49)))


def test_compare_two_models_on_data():
    train, test = ppgen.datasets.load("moons", "train"), ppgen.datasets.load("moons", "test")
    fitted = ppgen.build("independent", train, components=3)
    fitted.initialize(train.data)  # data-dependent init: already far better than N(0, 1)
    untrained = ppgen.build("independent", train)
    c = analysis.compare(fitted, untrained, test, num_bootstrap=500)
    assert c.mean_difference > 0 and c.p_value < 1e-10 and c.num_examples == len(test)
    assert c.name_a == "A (Independent)" and c.kind_a == c.kind_b == "exact"



def test_compare_of_a_bound_and_the_exact_value_of_one_model_checks_the_side():
    """Given as one model's two evaluations, a bound above the exact value beyond its Monte
    Carlo error is printed as a warning; within it, as noise; the Monte Carlo error of the
    difference is reported beside the spread over examples."""
    g = torch.Generator().manual_seed(1)
    logp = -3 + torch.randn(200, generator=g, dtype=torch.float64)
    exact = Evaluation(logp, "exact", "exact", 2, "test", 0.0)
    for excess, mc, verdict in ((0.06, 0.01, "wrong side"), (0.06, 0.05, "within noise"),
                                (-0.3, 0.01, "ok")):
        bound = Evaluation(logp + excess, "lower_bound", "elbo", 2, "test", mc)
        c = analysis.compare(bound, exact, same_model=True, num_bootstrap=100)  # no flag needed
        assert c.bound_check is not None and c.bound_check.verdict == verdict, (excess, mc)
        assert c.mc_stderr == pytest.approx(mc)
        assert f"Monte Carlo ± {mc:.4f}" in str(c)
        assert ("WARNING" in str(c)) == (verdict == "wrong side"), str(c)
        assert c.to_dict()["bound_check"]["verdict"] == verdict
        assert "gap" in c.note
    # two different models' bound and exact value: no side to check, refused unless asked
    bound = Evaluation(logp + 0.06, "lower_bound", "elbo", 2, "test", 0.01)
    with pytest.raises(analysis.MixedKindsError):
        analysis.compare(bound, exact)
    c = analysis.compare(bound, exact, allow_mixed_kinds=True, num_bootstrap=100)
    assert c.bound_check is None and "WARNING: mixed kinds" in str(c)
    # an unmeasured Monte Carlo error is said, not hidden
    c = analysis.compare(Evaluation(logp, "lower_bound", "elbo", 2, "test"), bound,
                         num_bootstrap=100)
    assert c.mc_stderr is None and "Monte Carlo error not measured" in str(c)


def test_summarize_carries_the_mc_error():
    bound = Evaluation(torch.linspace(-2, -1, 30, dtype=torch.float64), "lower_bound", "elbo",
                       2, "test", 0.02)
    s = analysis.summarize(bound, num_bootstrap=200)
    assert s.mc_stderr == 0.02 and s.to_dict()["mc_stderr"] == 0.02
    assert "Monte Carlo ± 0.020 nats" in str(s)


# ---- calibration ----------------------------------------------------------------------------


def test_hdr_coverage_of_the_true_density_lies_on_the_diagonal():
    test = ppgen.datasets.load("8gaussians", "test")
    m = _mixture()
    r = analysis.hdr_coverage(m, test, num_samples=20_000, seed=0)
    # 12 levels, each within 4 of its standard errors: family-wise false alarm < 1e-3
    for alpha, cov, se in zip(r.levels, r.coverage, r.stderr, strict=True):
        assert abs(cov - alpha) < 4 * se, (alpha, cov, se)
    assert r.p_value > 1e-3 and r.kind == "exact" and r.num_examples == 5000
    # the model's log_prob on the data really is the data's true density
    assert torch.allclose(m.log_prob(test.data[:5]), test.true_log_prob(test.data[:5]).double())
    # a density twice too broad: the data crowd its high-density regions (coverage > alpha)
    broad = analysis.hdr_coverage(_mixture(scale=2.0, log_prob_scale=2.0), test, num_samples=5000)
    assert broad.coverage[5] > broad.levels[5] + 10 * broad.stderr[5]
    assert broad.p_value < 1e-10


def test_hdr_coverage_and_pit_of_a_fitted_family_on_its_own_samples():
    train = ppgen.datasets.load("digits", "train")
    m = ppgen.build("independent", train)
    with torch.no_grad():  # the maximum-likelihood fit, in closed form: empirical frequencies
        counts = torch.nn.functional.one_hot(train.data.reshape(len(train), -1).long(), 17)
        m.logits.copy_((counts.sum(0) + 0.5).log())
    own = m.sample(2000, seed=7)
    r = analysis.hdr_coverage(m, own, levels=[0.1, 0.5, 0.9], num_samples=4000)
    for alpha, cov, se in zip(r.levels, r.coverage, r.stderr, strict=True):
        assert abs(cov - alpha) < 4 * se, (alpha, cov)
    p = analysis.pit(m, own, num_samples=4000, seed=1)
    assert p.values.shape == (2000, 64) and p.p_value > 1e-3  # exact randomized PIT
    assert p.histogram(10).sum(1).eq(2000).all()
    # the real digits: their per-pixel marginals are the model's (it is their MLE, up to the
    # +0.5 smoothing), so the marginal PIT is uniform although the joint is far from it
    assert analysis.pit(m, train, num_samples=4000, seed=1).p_value > 1e-3


def test_pit_detects_a_shifted_marginal():
    m = _mixture()
    data = m.sample(1000, seed=1) + torch.tensor([0.0, 0.3])
    r = analysis.pit(m, data, num_samples=5000)
    assert r.p_values[0] > 1e-3 and r.p_values[1] < 1e-6


# ---- sample / log_prob agreement ------------------------------------------------------------


def test_goodness_of_fit_accepts_consistent_models():
    digits = ppgen.build("independent", ppgen.datasets.load("digits", "val"))
    with torch.no_grad():
        digits.logits.normal_(generator=torch.Generator().manual_seed(0))
    r = analysis.goodness_of_fit(digits, num_samples=500)
    assert r.exact and r.p_value > 1e-3, r
    r = analysis.goodness_of_fit(_mixture(), num_samples=1000)
    assert not r.exact and r.p_value > 1e-3, r
    r = analysis.goodness_of_fit(_mixture(), num_samples=3000, method="nearest-neighbor")
    assert r.p_value > 1e-3, r


def test_goodness_of_fit_catches_a_sampler_that_disagrees_with_log_prob():
    broken = _mixture(scale=1.3)  # samples 30% wider than the density log_prob describes
    assert analysis.goodness_of_fit(broken, num_samples=1000).p_value < 1e-4
    # Pyro's nearest-neighbour test misses a sampler 50% too wide on this multimodal density
    # (its binned statistic collapses: p = 1); the conditional test, ppgen's default, does not.
    wider = _mixture(scale=1.5)
    assert (
        analysis.goodness_of_fit(wider, num_samples=3000, method="nearest-neighbor").p_value > 0.5
    )
    assert analysis.goodness_of_fit(wider, num_samples=1000).p_value < 1e-10
    with pytest.raises(ValueError, match="1000 samples per dimension"):
        analysis.goodness_of_fit(_mixture(), num_samples=500, method="nearest-neighbor")
    with pytest.raises(ValueError, match="exact log_prob"):
        analysis.goodness_of_fit(_Bounded(event_shape=(2,)))


class _Bounded(EightGaussians):
    """Declares only a bound: the check must refuse it."""

    likelihood: ClassVar = "bound"


# ---- ArviZ ----------------------------------------------------------------------------------


def test_log_likelihoods_as_inference_data_and_az_tables():
    import arviz as az

    test = ppgen.datasets.load("moons", "test").subset(400)
    train = ppgen.datasets.load("moons", "train")
    good = ppgen.build("independent", train, components=3)
    good.initialize(train.data)
    plain = ppgen.build("independent", train)
    idata = analysis.to_inference_data({"good": good, "plain": plain}, test)
    ll = idata.log_likelihood
    assert ll["good"].dims == ("chain", "draw", "example") and ll["good"].shape == (1, 1, 400)
    assert idata.observed_data["x"].shape == (400, 2)
    assert "good=exact" in idata.attrs["ppgen_kinds"]
    ev_good, ev_plain = ppgen.evaluate(good, test), ppgen.evaluate(plain, test)
    waic = az.waic(idata, var_name="good")
    assert waic.elpd_waic == pytest.approx(float(ev_good.per_example.sum()), rel=1e-10)
    table = analysis.arviz_compare(idata)
    assert list(table.index) == ["good", "plain"]
    d = (ev_good.per_example - ev_plain.per_example).numpy()
    assert table.loc["plain", "elpd_diff"] == pytest.approx(d.sum(), rel=1e-10)
    assert table.loc["plain", "dse"] == pytest.approx(math.sqrt(len(d) * d.var()), rel=1e-10)
    with pytest.raises(ValueError, match="different kinds"):
        analysis.to_inference_data(
            {"a": _evaluation(torch.zeros(4)), "b": _evaluation(torch.zeros(4), "estimate")}
        )


# ---- calibration sweeps (slow: run with -m slow) --------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("n", [30, 100, 400])
def test_bootstrap_coverage_over_1000_simulations(n):
    # skewed values (-z^2/2): BCa's coverage approaches 95% as n grows (0.91, 0.93, 0.94
    # measured at n = 30, 100, 400: docs/benchmarks.md); it must never be worse than the
    # percentile interval's by more than the paired Monte Carlo error, and at n = 400 it must
    # be within 3 binomial standard errors of 95%
    sims = 1000
    paired, bca_hits = [], 0
    for seed in range(sims):
        z = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        v = -0.5 * z**2
        bca = analysis.bootstrap_ci(v, num_bootstrap=1000, seed=seed).contains(-0.5)
        pct = analysis.bootstrap_ci(v, num_bootstrap=1000, method="percentile", seed=seed)
        bca_hits += bca
        paired.append(float(bca) - float(pct.contains(-0.5)))
    d = torch.tensor(paired)
    assert float(d.mean()) >= -3 * float(d.std()) / math.sqrt(sims), d.mean()
    if n >= 400:
        assert abs(bca_hits / sims - 0.95) < 3 * math.sqrt(0.95 * 0.05 / sims), bca_hits


@pytest.mark.slow
def test_hdr_coverage_of_the_true_density_over_50_seeds():
    from scipy.stats import kstest

    # fresh data from the true density for each seed: the KS p-values must be uniform, and
    # about 95% of the (seed, level) cells within 2 standard errors of the diagonal
    m = _mixture()
    within = cells = 0
    p = []
    for seed in range(50):
        data = m.sample(5000, seed=10_000 + seed)
        r = analysis.hdr_coverage(m, data, num_samples=10_000, seed=seed)
        for alpha, cov, se in zip(r.levels, r.coverage, r.stderr, strict=True):
            within += abs(cov - alpha) <= 2 * se
            cells += 1
        p.append(r.p_value)
    assert within / cells > 0.9, within / cells
    assert kstest(p, "uniform").pvalue > 1e-3


@pytest.mark.slow
def test_goodness_of_fit_null_rejection_rate_over_200_seeds():
    digits = ppgen.build("independent", ppgen.datasets.load("digits", "val"))
    with torch.no_grad():
        digits.logits.normal_(generator=torch.Generator().manual_seed(0))
    for model in (digits, _mixture()):
        p = [analysis.goodness_of_fit(model, num_samples=500, seed=s).p_value for s in range(200)]
        rate = sum(v <= 0.05 for v in p) / len(p)
        assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / len(p)), (type(model).__name__, rate)
