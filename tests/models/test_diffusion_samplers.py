r"""Few-step samplers and the probability-flow likelihood of ppgen/models/diffusion/, checked on
Gaussian data, whose noise prediction and probability-flow ODE are known in closed form.

For data :math:`x_0 \sim N(\mu, \Sigma)` the marginal at time t is
:math:`N(\alpha\mu, \alpha^2\Sigma + s^2 I)`, the exact noise prediction is
:math:`\epsilon^*(x, t) = E[\epsilon | x_t = x] = s C^{-1}(x - \alpha\mu)`, and in
:math:`u = x/\alpha` the ODE
:math:`du/d\sigma = \sigma(\Sigma + \sigma^2 I)^{-1}(u - \mu)` is
solved along each eigenvector of :math:`\Sigma` (eigenvalue :math:`\lambda`) by
:math:`u - \mu \propto \sqrt{\lambda + \sigma^2}`. So the exact flow from the prior
:math:`x_T \sim N(0, I)` to the data is the affine map
:math:`x_0 = \mu + M(x_T/\alpha_T - \mu)`, :math:`M = U \operatorname{diag}
\sqrt{\lambda/(\lambda + \sigma_T^2)} U^T`: the model's distribution is
:math:`N(\mu - M\mu, M M^T/\alpha_T^2)`.

A deterministic sampler fed :math:`\epsilon^*` is affine in :math:`x_T` too, so its output
distribution's mean and covariance are read off exactly (no Monte Carlo) by running it on
:math:`x_T = 0` and the unit vectors. A solver of order p has a global error :math:`C K^{-p}` after
K steps: the tolerances below are that, with C bounding the constants of this problem
(measured once at K = 20..80, with a margin), and the order itself is checked by halving the step.
"""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch

import ppgen
from ppgen.models.diffusion import NoiseSchedule, ScheduleError
from ppgen.models.diffusion.probability_flow import probability_flow_log_prob
from ppgen.models.diffusion.samplers import (
    network_calls,
    sample_ddim,
    sample_dpmpp_2m,
    sample_heun,
)

F64 = torch.float64
MU = torch.tensor([0.5, -1.0], dtype=F64)
SIGMA = torch.tensor([[1.0, 0.6], [0.6, 0.5]], dtype=F64)


def exact_eps(schedule: NoiseSchedule, mu: torch.Tensor = MU, cov: torch.Tensor = SIGMA):
    """The exact noise prediction of N(mu, cov) data, at float times."""

    def eps(x: torch.Tensor, t: float) -> tuple[torch.Tensor, None]:
        a, s = schedule.alpha_sigma_at(float(t))
        c = a * a * cov + s * s * torch.eye(len(mu), dtype=F64)
        return s * torch.linalg.solve(c, (x - a * mu).T).T, None

    return eps


def exact_v(schedule: NoiseSchedule, mu: torch.Tensor = MU, cov: torch.Tensor = SIGMA):
    """The exact v prediction E[alpha eps - s x0 | x_t], defined at zero SNR too."""

    def v(x: torch.Tensor, t: float) -> tuple[torch.Tensor, None]:
        a, s = schedule.alpha_sigma_at(float(t))
        c = a * a * cov + s * s * torch.eye(len(mu), dtype=F64)
        w = torch.linalg.solve(c, (x - a * mu).T).T  # C^-1 (x - a mu)
        eps, x0 = s * w, mu + a * w @ cov  # E[eps | x], E[x0 | x] (cov symmetric)
        return a * eps - s * x0, None

    return v


def exact_flow(schedule: NoiseSchedule, mu: torch.Tensor = MU, cov: torch.Tensor = SIGMA):
    """(A, b): the exact probability-flow map x_0 = A x_T + b from the prior N(0, I)."""
    a_T, s_T = schedule.alpha_sigma_at(float(schedule.timesteps))
    lam, u = torch.linalg.eigh(cov)
    if a_T == 0.0:  # sigma_T = inf: u - mu shrinks by sqrt(lam) / sigma_T, and u = x / alpha
        m = u @ torch.diag(lam.sqrt()) @ u.T
        return m, mu.clone()
    sigma_T = s_T / a_T
    m = u @ torch.diag((lam / (lam + sigma_T**2)).sqrt()) @ u.T
    return m / a_T, mu - m @ mu


def affine_map(sampler, d: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic sampler's map x_T -> x_0 = A x_T + b, read off at 0 and the unit
    vectors (each run on a fresh tensor: the DDIM loop reuses its input as a buffer)."""
    x = torch.cat([torch.zeros(1, d, dtype=F64), torch.eye(d, dtype=F64)])
    out = sampler(x.clone())
    b = out[0]
    return (out[1:] - b).T, b


def moment_error(schedule: NoiseSchedule, sampler) -> float:
    """|mean - exact| + ||cov - exact||_F of the sampler's output distribution."""
    a, b = affine_map(sampler)
    a_star, b_star = exact_flow(schedule)
    return float((b - b_star).norm() + (a @ a.T - a_star @ a_star.T).norm())


# ---- the continuous-time schedule -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_continuous_time_matches_the_table_and_inverts(kind):
    s = NoiseSchedule(100, kind)
    ab = s._host["alphas_cumprod"]
    for t in (1, 2, 37, 99, 100):
        a, sd = s.alpha_sigma_at(float(t))
        assert a == math.sqrt(ab[t]) and sd == math.sqrt(1 - ab[t]), t
        assert s.sigma_at(float(t)) == pytest.approx(sd / a, rel=1e-12), t
    for t in (0.0, 0.3, 1.0, 1.5, 17.25, 99.9, 100.0):
        assert s.time_at(s.sigma_at(t)) == pytest.approx(t, abs=1e-9), t
    sig = [s.sigma_at(t / 10) for t in range(1001)]
    assert all(b > a for a, b in zip(sig, sig[1:], strict=False)), "sigma increases with t"
    with pytest.raises(ScheduleError, match="time must lie"):
        s.sigma_at(100.5)


@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "karras"])
@pytest.mark.parametrize("steps", [1, 2, 7, 100])
def test_sampling_times(spacing, steps):
    s = NoiseSchedule(100)
    times = s.sampling_times(steps, spacing)
    assert len(times) == steps + 1 and times[0] == 100.0 and times[-1] == 0.0
    assert all(b < a for a, b in zip(times, times[1:], strict=False)), times
    assert min(times[:-1]) >= 1.0 - 1e-9, "the network is called at trained times only"
    if spacing == "uniform":  # DDIM's trailing grid before rounding
        assert [round(t) for t in times[:-1]] == s.ddim_timesteps(steps)
    if spacing == "karras" and steps > 1:
        assert times[-2] == pytest.approx(1.0), "sigma_min is sigma_1"


def test_spacing_errors():
    s = NoiseSchedule(50)
    with pytest.raises(ScheduleError, match="spacing must be"):
        s.sampling_times(5, "cubic")  # type: ignore[arg-type]
    with pytest.raises(ScheduleError, match="sampling steps must lie"):
        s.sampling_times(51)
    z = NoiseSchedule(50, zero_terminal_snr=True)
    with pytest.raises(ScheduleError, match="zero terminal SNR"):
        z.sampling_times(5, "karras")
    with pytest.raises(ScheduleError, match="zero terminal SNR"):
        sample_heun(z, exact_v(z), torch.zeros(1, 2, dtype=F64), 5, spacing="uniform",
                    parameterization="v")


# ---- the samplers against the exact flow ----------------------------------------------------


def _runner(name: str, schedule: NoiseSchedule, spacing: str, steps: int):
    eps = exact_eps(schedule)
    if name == "ddim":
        return lambda x: sample_ddim(schedule, eps, x, steps)  # type: ignore[arg-type]
    fn = sample_dpmpp_2m if name == "dpm++2m" else sample_heun
    return lambda x: fn(schedule, eps, x, steps, spacing=spacing)  # type: ignore[arg-type]


# (sampler, spacing, order p, constant C): error <= C K^-p
CASES = [
    ("ddim", "uniform", 1, 6.0),
    ("dpm++2m", "karras", 2, 60.0),
    ("dpm++2m", "quadratic", 2, 30.0),
    ("heun", "karras", 2, 60.0),
]


@pytest.mark.parametrize(("name", "spacing", "order", "const"), CASES)
def test_sampler_converges_to_the_exact_flow_at_its_order(name, spacing, order, const):
    s = NoiseSchedule(1000)
    errors = {k: moment_error(s, _runner(name, s, spacing, k)) for k in (20, 40, 80)}
    for k, err in errors.items():
        assert err <= const * k**-order, (name, spacing, k, err)
    # the order itself: halving the step divides the error by about 2^p
    for k in (20, 40):
        ratio = errors[k] / errors[2 * k]
        assert 0.75 * 2**order <= ratio <= 1.6 * 2**order, (name, spacing, k, ratio)


def test_ten_calls_of_the_second_order_solvers_beat_fifty_of_ddim():
    """The point of the few-step solvers, on the exact score: DPM-Solver++(2M) at 10 network
    calls and Heun at 9 (5 steps) land nearer the exact flow than DDIM at 10; DPM-Solver++ at
    10 calls as near as DDIM at 50."""
    s = NoiseSchedule(1000)
    ddim10 = moment_error(s, _runner("ddim", s, "uniform", 10))
    ddim50 = moment_error(s, _runner("ddim", s, "uniform", 50))
    dpm10 = moment_error(s, _runner("dpm++2m", s, "quadratic", 10))
    heun9 = moment_error(s, _runner("heun", s, "uniform", 5))
    assert dpm10 < ddim50 < ddim10, (dpm10, ddim50, ddim10)
    assert heun9 < ddim10, (heun9, ddim10)


def test_dpmpp_at_zero_terminal_snr_draws_the_data_distribution():
    """With alpha_T = 0 the prior N(0, I) is q(x_T) itself, so the exact flow ends exactly at
    N(mu, Sigma); DPM-Solver++ with v-prediction gets there (h_1 = inf is handled)."""
    s = NoiseSchedule(1000, zero_terminal_snr=True)
    v = exact_v(s)
    errors = []
    for k in (20, 40, 80):
        a, b = affine_map(lambda x, k=k: sample_dpmpp_2m(
            s, v, x, k, spacing="quadratic", parameterization="v"))
        errors.append(float((b - MU).norm() + (a @ a.T - SIGMA).norm()))
    assert errors[-1] < 2e-3 and errors[0] / errors[2] > 8, errors


def test_dpmpp_matches_a_reference_transcription():
    """The sampler against a line-by-line transcription of DPM-Solver++(2M) in the
    variance-exploding variable u = x / alpha and sigma = e^{-lambda} (k-diffusion's form of
    Lu et al. Algorithm 2), on the exact noise prediction."""
    s = NoiseSchedule(1000)
    eps = exact_eps(s)
    steps, x_T = 8, torch.randn(5, 2, dtype=F64)
    times = s.sampling_times(steps, "uniform")
    sig = [s.sigma_at(t) for t in times]

    def denoised(u: torch.Tensor, i: int) -> torch.Tensor:  # D(u; sigma_i)
        a = 1 / math.sqrt(1 + sig[i] ** 2)
        return u - sig[i] * eps(a * u, times[i])[0]

    u, old = x_T / s.alpha_sigma_at(1000.0)[0], None
    for i in range(steps):
        d = denoised(u, i)
        if sig[i + 1] == 0:
            u = d
        else:
            h = math.log(sig[i] / sig[i + 1])
            if old is None:
                u = (sig[i + 1] / sig[i]) * u - math.expm1(-h) * d
            else:
                r = math.log(sig[i - 1] / sig[i]) / h
                u = (sig[i + 1] / sig[i]) * u - math.expm1(-h) * (
                    (1 + 1 / (2 * r)) * d - (1 / (2 * r)) * old
                )
        old = d
    got = sample_dpmpp_2m(s, eps, x_T.clone(), steps)
    assert torch.allclose(got, u, atol=1e-10, rtol=1e-10)


def test_heun_predictor_is_ddim_and_calls_are_counted():
    """EDM's Euler predictor (Algorithm 1, line 8) is the DDIM step: one Heun step to sigma = 0
    (no correction) equals one DDIM step; and the calls are 2 K - 1."""
    s = NoiseSchedule(100)
    calls = []

    def counting(x, t):
        calls.append(t)
        return exact_eps(s)(x, t)

    x_T = torch.randn(3, 2, dtype=F64)
    one = sample_heun(s, counting, x_T.clone(), 1, spacing="uniform")
    assert torch.allclose(one, sample_ddim(s, exact_eps(s), x_T.clone(), 1))
    calls.clear()
    sample_heun(s, counting, x_T.clone(), 6)
    assert len(calls) == network_calls("heun", 6) == 11
    calls.clear()
    sample_dpmpp_2m(s, counting, x_T.clone(), 6)
    assert len(calls) == network_calls("dpm++2m", 6) == 6


# ---- the probability-flow likelihood --------------------------------------------------------


def _closed_form_log_prob(schedule: NoiseSchedule, y: torch.Tensor) -> torch.Tensor:
    a, b = exact_flow(schedule)
    return torch.distributions.MultivariateNormal(b, a @ a.T).log_prob(y)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ode_log_likelihood_matches_the_closed_form(kind):
    s = NoiseSchedule(1000, kind)
    y = torch.tensor([[0.5, -1.0], [2.0, 0.3], [-1.5, -2.5]], dtype=F64)
    lp, nfe = probability_flow_log_prob(s, exact_eps(s), y, rtol=1e-8, atol=1e-8)
    exact = _closed_form_log_prob(s, y)
    assert (lp - exact).abs().max() < 1e-3, (lp, exact)
    assert nfe > 0


def test_ode_log_likelihood_with_v_prediction_and_hutchinson():
    s = NoiseSchedule(200)
    y = torch.tensor([[0.1, -0.7]], dtype=F64)
    exact = float(_closed_form_log_prob(s, y))
    lp, _ = probability_flow_log_prob(s, exact_v(s), y, parameterization="v",
                                      rtol=1e-8, atol=1e-8)
    assert abs(float(lp) - exact) < 1e-3
    # Hutchinson: unbiased; 1000 probes (one per row) in one solve; z-test at 5 sigma
    g = torch.Generator().manual_seed(0)
    lp, _ = probability_flow_log_prob(s, exact_eps(s), y.expand(1000, 2), trace="hutchinson",
                                      rtol=1e-6, atol=1e-6, generator=g)
    z = (float(lp.mean()) - exact) / float(lp.std() / math.sqrt(len(lp)))
    assert abs(z) < 5, z
    assert float(lp.std()) > 0, "the probes differ"


def test_ode_log_likelihood_refuses_what_it_cannot_integrate():
    s = NoiseSchedule(50)
    y = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="x0"):
        probability_flow_log_prob(s, exact_eps(s), y, parameterization="x0")
    with pytest.raises(ValueError, match="trace must be"):
        probability_flow_log_prob(s, exact_eps(s), y, trace="none")  # type: ignore[arg-type]
    z = NoiseSchedule(50, zero_terminal_snr=True)
    with pytest.raises(ScheduleError, match="zero terminal SNR"):
        probability_flow_log_prob(z, exact_v(z), y, parameterization="v")


# ---- through the model and ppgen.evaluate ---------------------------------------------------


def _gaussian_ddpm(kind: str = "continuous"):
    """A DDPM (T = 1000) whose network is replaced by the exact noise prediction of N(mu,
    Sigma) in the chain's space, with a non-trivial standardization for continuous data."""
    if kind == "continuous":
        m = ppgen.models.diffusion.DDPM(event_shape=(2,), hidden=(4,)).double()
        m.data_loc.copy_(torch.tensor([3.0, -2.0]))
        m.data_scale.copy_(torch.tensor([2.0, 0.5]))
    else:
        m = ppgen.models.diffusion.DDPM(event_shape=(2,), kind="binary", hidden=(4,)).double()
    m._continuous_denoiser = lambda: exact_eps(m.schedule)  # type: ignore[method-assign]
    return m


def test_evaluate_ode_is_exact_on_continuous_data():
    m = _gaussian_ddpm()
    y = torch.tensor([[0.5, -1.0], [2.0, 0.3]], dtype=F64)
    x = y * m.data_scale + m.data_loc
    e = ppgen.evaluate(m, x, estimator="ode", rtol=1e-8, atol=1e-8)
    expected = _closed_form_log_prob(m.schedule, y) - m.data_scale.log().sum()
    assert e.kind == "exact" and e.estimator == "ode" and e.mc_stderr == 0.0
    assert (e.per_example - expected).abs().max() < 1e-3
    assert any("rtol=1e-08" in n and "function evaluations" in n for n in e.notes), e.notes
    h = ppgen.evaluate(m, x, estimator="ode", trace="hutchinson", rtol=1e-6, atol=1e-6)
    assert h.kind == "estimate" and "Hutchinson" in " ".join(h.notes)


def test_evaluate_ode_is_a_lower_bound_on_discrete_data():
    """Binary data: each level's bin is [-2, 0] or [0, 2] in the chain's space (the
    dequantization's), and the exact discrete probability of the flow's Gaussian is a
    rectangle probability; the dequantized value lies below it, and averages close to it."""
    m = _gaussian_ddpm("binary")
    a, b = exact_flow(m.schedule)
    mvn = scipy.stats.multivariate_normal(b.numpy(), (a @ a.T).numpy())
    x = torch.tensor([[1.0, 0.0]], dtype=F64)
    lo, hi = [0.0, -2.0], [2.0, 0.0]
    exact = math.log(mvn.cdf(hi, lower_limit=lo))
    e = ppgen.evaluate(m, x.expand(100, 2), estimator="ode", rtol=1e-5, atol=1e-5,
                       mc_examples=0)
    assert e.kind == "lower_bound" and "dequantization" in " ".join(e.notes)
    mean = -e.nats
    assert mean <= exact + 3 * e.stderr, (mean, exact)
    assert mean > exact - 1.5, (mean, exact)  # Jensen's gap of a smooth density on a bin


def test_evaluate_ode_needs_the_capability_and_known_options():
    ds = ppgen.datasets.load("moons", split="val")
    with pytest.raises(ValueError, match="probability-flow"):
        ppgen.evaluate(ppgen.build("independent", ds), ds.data[:4], estimator="ode")
    m = ppgen.build("ddpm", ds, timesteps=10, hidden=[8])
    with pytest.raises(ValueError, match="does not take"):
        ppgen.evaluate(m, ds.data[:4], estimator="ode", tolerance=1e-3)
    for bad in (-1.0, 0.0, float("nan"), True, "1e-3"):
        with pytest.raises(ValueError, match="rtol must be"):
            ppgen.evaluate(m, ds.data[:4], estimator="ode", rtol=bad)
    with pytest.raises(ValueError, match="solver must be an adaptive"):
        ppgen.evaluate(m, ds.data[:4], estimator="ode", solver="rk4")
    with pytest.raises(ValueError, match="trace must be"):
        ppgen.evaluate(m, ds.data[:4], estimator="ode", trace="none")
    with pytest.raises(ValueError, match="num_particles"):
        ppgen.evaluate(m, ds.data[:4], estimator="ode", num_particles=10)
    x0 = ppgen.build("ddpm", ds, timesteps=10, hidden=[8], parameterization="x0")
    with pytest.raises(ValueError, match="x0"):
        ppgen.evaluate(x0, ds.data[:4], estimator="ode")


# ---- DDPM.sample with the new samplers ------------------------------------------------------


@pytest.mark.parametrize("sampler", ["dpm++2m", "heun"])
@pytest.mark.parametrize("spacing", [None, "uniform", "quadratic", "karras"])
def test_model_samples_with_the_ode_samplers(sampler, spacing):
    ds = ppgen.datasets.load("moons", split="val")
    m = ppgen.build("ddpm", ds, timesteps=20, hidden=[8])
    a = m.sample(3, seed=1, sampler=sampler, sampling_steps=4, spacing=spacing)
    b = m.sample(3, seed=1, sampler=sampler, sampling_steps=4, spacing=spacing)
    assert a.shape == (3, 2) and torch.isfinite(a).all() and torch.equal(a, b)


@pytest.mark.parametrize("sampler", ["dpm++2m", "heun"])
def test_model_samples_discrete_data_with_the_ode_samplers(sampler):
    ds = ppgen.datasets.load("digits", split="val")
    m = ppgen.build("ddpm", ds, timesteps=20, hidden=[8])
    a = m.sample(3, seed=1, sampler=sampler, sampling_steps=3)
    assert a.shape == (3, 1, 8, 8) and a.min() >= 0 and a.max() <= 16
    assert torch.equal(a, a.round()), "levels"


def test_model_sampler_options_are_checked():
    ds = ppgen.datasets.load("moons", split="val")
    m = ppgen.build("ddpm", ds, timesteps=20, hidden=[8])
    with pytest.raises(ValueError, match="spacing='karras' applies to the ODE samplers"):
        m.sample(2, sampler="ddim", spacing="karras")
    with pytest.raises(ValueError, match="spacing must be"):
        m.sample(2, sampler="heun", spacing="log")
    with pytest.raises(ValueError, match="sampler must be"):
        m.sample(2, sampler="euler")
    with pytest.raises(ValueError, match="spacing must be"):
        ppgen.build("ddpm", ds, timesteps=20, spacing="cubic")
    cfg = ppgen.build("ddpm", ds, timesteps=20, sampler="dpm++2m", spacing="karras").config
    assert type(cfg).from_dict(cfg.to_dict()) == cfg
