"""Diffusion (ppgen/models/diffusion/): the schedule's closed forms, the bound, the samplers.

Statistical checks are seeded and state their false-alarm rate: a z-test at 5 sigma (about
6e-7 two-sided) or a Kolmogorov-Smirnov test at p < 1e-3.
"""

from __future__ import annotations

import math

import pyro
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro import poutine
from pyro.infer import Predictive, Trace_ELBO
from pyro.poutine.util import site_is_subsample
from torch import nn

import ppgen
from ppgen.models.diffusion import DDPM, DiscretizedGaussian, NoiseSchedule, ScheduleError

F64 = torch.float64


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Energy distance (V-statistic): 2 E|X-Y| - E|X-X'| - E|Y-Y'|."""
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    return float(
        2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean()
    )


def _schedule(kind: str, timesteps: int, zero_snr: bool = False) -> NoiseSchedule:
    return NoiseSchedule(timesteps, kind, zero_terminal_snr=zero_snr).to(F64)


# ---- the schedule -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("timesteps", [2, 10, 1000])
def test_schedule_is_valid(kind, timesteps):
    s = NoiseSchedule(timesteps, kind)
    h = s._host
    betas = torch.tensor(h["betas"][1:], dtype=F64)
    ab = torch.tensor(h["alphas_cumprod"], dtype=F64)
    assert (betas > 0).all() and (betas <= 0.999).all()
    assert (ab[1:] < ab[:-1]).all(), "alpha_bar strictly decreases"
    assert torch.allclose(ab, torch.cumprod(torch.cat([ab.new_ones(1), 1 - betas]), 0))
    assert s.alphas_cumprod.dtype == torch.get_default_dtype()


def test_zero_terminal_snr():
    s = NoiseSchedule(100, "linear", zero_terminal_snr=True)
    ab = torch.tensor(s._host["alphas_cumprod"], dtype=F64)
    assert ab[-1] == 0 and (ab[1:] < ab[:-1]).all()
    assert s._host["betas"][-1] == 1.0 and max(s._host["betas"][1:-1]) < 1
    with pytest.raises(ScheduleError, match="parameterization"):
        ppgen.build("ddpm", ppgen.datasets.load("moons", "val"), zero_terminal_snr=True)
    m = ppgen.build(
        "ddpm",
        ppgen.datasets.load("moons", "val"),
        timesteps=20,
        hidden=[8],
        zero_terminal_snr=True,
        parameterization="v",
    )
    x = ppgen.datasets.load("moons", "val").data[:5]
    b = m.bound(x)
    assert torch.equal(b.prior, torch.zeros(5)), "L_T vanishes at zero terminal SNR"
    assert torch.isfinite(b.per_example).all()
    assert torch.isfinite(m.sample(4, seed=0, sampler="ddim", sampling_steps=5)).all()
    assert torch.isfinite(m.sample(4, seed=0, sampler="ddpm")).all()


def test_schedule_rejects_bad_betas():
    with pytest.raises(ScheduleError):
        NoiseSchedule(10, "linear", beta_start=0.0)
    with pytest.raises(ScheduleError):
        NoiseSchedule(1)
    with pytest.raises(ScheduleError):
        NoiseSchedule(10, "sigmoid")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_marginal_composes_exactly(kind):
    """q(x_t | x_0) has mean prod sqrt(alpha_s) x_0 and variance v_t = alpha_t v_{t-1} + beta_t."""
    s = _schedule(kind, 200)
    h = s._host
    coef, var = 1.0, 0.0
    for t in range(1, 201):
        coef *= math.sqrt(1 - h["betas"][t])
        var = (1 - h["betas"][t]) * var + h["betas"][t]
        assert math.isclose(coef, h["sqrt_alphas_cumprod"][t], rel_tol=1e-10), t
        assert math.isclose(var, 1 - h["alphas_cumprod"][t], rel_tol=1e-10), t


@pytest.mark.parametrize(
    ("kind", "zero_snr"), [("linear", False), ("cosine", False), ("linear", True)]
)
def test_forward_marginal_matches_repeated_steps(kind, zero_snr):
    """Moments of x_t from t single steps q(x_t|x_{t-1}) vs the closed form q(x_t|x_0):
    z-tests at 5 sigma on 20000 seeded draws (false alarm about 6e-7 per check)."""
    T, n = 100, 20_000
    s = _schedule(kind, T, zero_snr)
    g = torch.Generator().manual_seed(1)
    x0 = torch.tensor([-1.0, 0.3, 2.0], dtype=F64)
    x = x0.expand(n, 3).clone()
    for t in range(1, T + 1):
        beta = s._host["betas"][t]
        x = math.sqrt(1 - beta) * x + math.sqrt(beta) * torch.randn(n, 3, generator=g, dtype=F64)
        if t in (1, 7, 50, T):
            mean, std = s.marginal(x0, t)
            var = std**2
            se_mean = math.sqrt(var / n)
            se_var = var * math.sqrt(2 / (n - 1))
            assert ((x.mean(0) - mean).abs() < 5 * se_mean).all(), (kind, t)
            assert ((x.var(0) - var).abs() < 5 * se_var).all(), (kind, t)
            # add_noise is the same marginal
            eps = torch.randn(n, 3, generator=g, dtype=F64)
            y = s.add_noise(x0.expand(n, 3), eps, torch.full((n,), t))
            assert ((y.mean(0) - mean).abs() < 5 * se_mean).all(), (kind, t)


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["linear", "cosine"]),
    timesteps=st.integers(2, 300),
    frac=st.floats(0.0, 1.0),
    x0=st.floats(-3, 3),
    xt=st.floats(-3, 3),
)
def test_posterior_is_bayes_rule(kind, timesteps, frac, x0, xt):
    """q(x_{t-1} | x_t, x_0) against Bayes' rule: in closed form (product of Gaussians) and by
    normalizing q(x_{t-1}|x_0) q(x_t|x_{t-1}) numerically on a grid."""
    s = _schedule(kind, timesteps)
    h = s._host
    t = 2 + round(frac * (timesteps - 2))
    ab_prev, beta = h["alphas_cumprod"][t - 1], h["betas"][t]
    x0_, xt_ = torch.tensor([x0], dtype=F64), torch.tensor([xt], dtype=F64)
    mean, var = s.posterior(x0_, xt_, t)
    # closed form: precision-weighted product of N(sqrt(ab_prev) x0, 1 - ab_prev) and the
    # likelihood of x_t, N(x_t; sqrt(1 - beta) x_{t-1}, beta)
    prec = 1 / (1 - ab_prev) + (1 - beta) / beta
    mean_bayes = (math.sqrt(ab_prev) * x0 / (1 - ab_prev) + math.sqrt(1 - beta) * xt / beta) / prec
    assert math.isclose(var, 1 / prec, rel_tol=1e-9)
    assert math.isclose(float(mean), mean_bayes, rel_tol=1e-9, abs_tol=1e-9)
    # numerically, on a grid 12 posterior sds wide
    sd = math.sqrt(var)
    grid = torch.linspace(float(mean) - 12 * sd, float(mean) + 12 * sd, 20001, dtype=F64)
    log_w = torch.distributions.Normal(math.sqrt(ab_prev) * x0, math.sqrt(1 - ab_prev)).log_prob(
        grid
    ) + torch.distributions.Normal(math.sqrt(1 - beta) * grid, math.sqrt(beta)).log_prob(
        torch.tensor(xt, dtype=F64)
    )
    w = torch.softmax(log_w, 0)
    m_num = (w * grid).sum()
    v_num = (w * (grid - m_num) ** 2).sum()
    assert math.isclose(float(m_num), float(mean), abs_tol=1e-6 * max(1, sd))
    assert math.isclose(float(v_num), var, rel_tol=1e-5)


def test_step_identities():
    """The fused steps equal the textbook formulas; DDIM with eta = 1 and consecutive times is
    the DDPM step with the posterior variance, draw for draw."""
    s = _schedule("cosine", 50)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(64, 3, generator=g, dtype=F64)
    eps = torch.randn(64, 3, generator=g, dtype=F64)
    for t in (2, 17, 50):
        for clip in (None, 1.0):
            x0 = s.predict_x0(eps, t, x_t)
            x0 = x0 if clip is None else x0.clamp(-clip, clip)
            mean, var = s.posterior(x0, x_t, t)
            z = torch.randn(64, 3, generator=torch.Generator().manual_seed(t), dtype=F64)
            ref = mean + math.sqrt(var) * z
            out = s.step(eps, t, x_t, torch.Generator().manual_seed(t), clip=clip)
            assert torch.allclose(out, ref, atol=1e-10), (t, clip)
            ddim = s.ddim_step(
                eps, t, t - 1, x_t, 1.0, torch.Generator().manual_seed(t), clip=clip
            )
            assert torch.allclose(ddim, ref, atol=1e-10), (t, clip)
            # the x0 input path agrees with the eps path
            out0 = s.step(None, t, x_t, torch.Generator().manual_seed(t), x0=x0, clip=clip)
            assert torch.allclose(out0, ref, atol=1e-10), (t, clip)
    assert s.ddim_timesteps(50) == list(range(50, 0, -1))
    assert s.ddim_timesteps(5) == [50, 40, 30, 20, 10]


# ---- the discretized Gaussian decoder -----------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    levels=st.integers(2, 256),
    loc=st.floats(-3, 3),
    log_scale=st.floats(-9, 1),
)
def test_discretized_gaussian_normalizes(levels, loc, log_scale):
    d = DiscretizedGaussian(
        torch.tensor(loc, dtype=F64), torch.tensor(math.exp(log_scale), dtype=F64), levels
    )
    v = torch.arange(levels, dtype=F64)
    lp = d.expand(torch.Size([levels])).log_prob(v)
    assert math.isclose(float(torch.logsumexp(lp, 0)), 0.0, abs_tol=1e-9)
    # against the direct difference of normal CDFs where that is accurate
    y = 2 * v / (levels - 1) - 1
    half = 1 / (levels - 1)
    normal = torch.distributions.Normal(torch.tensor(loc, dtype=F64), math.exp(log_scale))
    upper = torch.where(v == levels - 1, torch.ones_like(y), normal.cdf(y + half))
    lower = torch.where(v == 0, torch.zeros_like(y), normal.cdf(y - half))
    p = upper - lower
    ok = p > 1e-8
    assert torch.allclose(lp[ok].exp(), p[ok], rtol=1e-6)


def test_discretized_gaussian_samples_match_probabilities():
    """Chi-square goodness of fit of 20000 seeded samples (p < 1e-3 fails)."""
    pyro.set_rng_seed(3)
    d = DiscretizedGaussian(torch.tensor(0.1, dtype=F64), torch.tensor(0.4, dtype=F64), 9)
    s = d.sample((20_000,))
    counts = torch.bincount(s.long(), minlength=9).double()
    expected = d.expand(torch.Size([9])).log_prob(torch.arange(9.0, dtype=F64)).exp() * 20_000
    keep = expected > 5
    assert (
        scipy.stats.chisquare(
            counts[keep], expected[keep] * counts[keep].sum() / expected[keep].sum()
        ).pvalue
        > 1e-3
    )


# ---- the bound on a model whose every quantity has a closed form ------------------------------


MU, SD = 0.5, 0.7  # the 1-D Gaussian data distribution


class OptimalDenoiser(nn.Module):
    """E[eps | x_t] for data N(MU, SD^2), and (optionally) the raw variance output that makes
    the learned reverse variance the true Var(x_{t-1} | x_t) = beta~_t + c0_t^2 Var(x_0 | x_t)."""

    def __init__(self, model: DDPM, learned: bool) -> None:
        super().__init__()
        self.schedule = model.schedule
        self.timesteps = model.config.timesteps
        self.learned = learned

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        t = torch.round(time * self.timesteps / 1000).long()
        s = self.schedule
        shape = (*t.shape, *([1] * (x.dim() - t.dim())))
        a = s.sqrt_alphas_cumprod[t].reshape(shape)
        b = s.sqrt_one_minus_alphas_cumprod[t].reshape(shape)
        var_xt = a**2 * SD**2 + b**2
        eps = b * (x - a * MU) / var_xt
        if not self.learned:
            return eps
        var_x0 = SD**2 * b**2 / var_xt  # Var(x_0 | x_t)
        c0 = s.posterior_mean_coef_x0[t].reshape(shape)
        target = s.posterior_variance[t].reshape(shape) + c0**2 * var_x0
        lo, hi = s.posterior_log_variance[t].reshape(shape), s.log_betas[t].reshape(shape)
        frac = ((target.log() - lo) / (hi - lo)).clamp(1e-12, 1 - 1e-12)
        return torch.cat([eps, torch.logit(frac).expand_as(x)], dim=-1)


def _gaussian_model(timesteps: int, variance: str) -> DDPM:
    m = DDPM(
        event_shape=(1,),
        kind="continuous",
        timesteps=timesteps,
        hidden=[4],
        standardize=False,
        variance=variance,
    ).to(F64)
    m.net = OptimalDenoiser(m, learned=variance == "learned")
    return m.eval()


def _reverse_affine(m: DDPM, t: int) -> tuple[float, float, float]:
    """p_theta(x_{t-1} | x_t) = N(A x_t + B, var): read A, B, var off the model."""
    mu, log_var = m._reverse(torch.tensor([[0.0], [1.0]], dtype=F64), t)
    return float(mu[1] - mu[0]), float(mu[0]), float(torch.as_tensor(log_var).exp().mean())


def _exact_marginal(m: DDPM) -> tuple[float, float]:
    """Mean and variance of p_theta(x_0): every reverse kernel is affine-Gaussian here."""
    mean, var = 0.0, 1.0
    for t in range(m.config.timesteps, 0, -1):
        slope, shift, noise = _reverse_affine(m, t)
        mean, var = slope * mean + shift, slope**2 * var + noise
    return mean, var


def _expected_bound(m: DDPM) -> float:
    """E_data[bound] in closed form, independently of DDPM.bound: every term is an expectation
    of a quadratic in (x_0, eps) under Gaussians (Ho et al. eq. 5 with affine reverse means)."""
    h, T = m.schedule._host, m.config.timesteps
    ab_T = h["alphas_cumprod"][T]
    total = 0.5 * (ab_T * (MU**2 + SD**2) - ab_T - math.log(1 - ab_T))  # L_T
    for t in range(T, 0, -1):
        A, B, var_p = _reverse_affine(m, t)
        a, b = h["sqrt_alphas_cumprod"][t], h["sqrt_one_minus_alphas_cumprod"][t]
        if t >= 2:  # x_t = a x_0 + b eps; mean_q - mean_p = k1 x_0 + k2 eps - B
            c0, c1, var_q = (
                h[k][t]
                for k in ("posterior_mean_coef_x0", "posterior_mean_coef_xt", "posterior_variance")
            )
            k1, k2 = c0 + (c1 - A) * a, (c1 - A) * b
            sq = (k1 * MU - B) ** 2 + k1**2 * SD**2 + k2**2
            total += 0.5 * (math.log(var_p / var_q) + (var_q + sq) / var_p - 1)
        else:  # L_0 = E -log N(x_0; A x_1 + B, var_p)
            k1 = 1 - A * a
            sq = (k1 * MU - B) ** 2 + k1**2 * SD**2 + (A * b) ** 2
            total += 0.5 * math.log(2 * math.pi * var_p) + sq / (2 * var_p)
    return -total


@pytest.mark.parametrize(
    ("timesteps", "variance", "tol"),
    [
        (1000, "learned", 1e-4),  # the true reverse variances: the gap is L_T's mismatch only
        (50, "learned", 1e-4),
        (1000, "large", 0.2),  # fixed variances cost what Ho et al. and Nichol & Dhariwal report
        (1000, "small", 1.0),
    ],
)
def test_bound_on_gaussian_data(timesteps, variance, tol):
    """Data N(MU, SD^2) and the optimal denoiser in closed form. The expected bound (in closed
    form) is never above E log p_theta (p_theta exact: the reverse chain is affine-Gaussian) nor
    the true E log p_data, and is within ``tol`` nats of the latter; DDPM.bound estimates that
    expected bound (z-test at 5 sigma), and per point, averaged over 400 draws, it stays below
    the exact log p_theta(x) (5 standard errors)."""
    m = _gaussian_model(timesteps, variance)
    expected = _expected_bound(m)
    true = -0.5 * math.log(2 * math.pi * math.e * SD**2)  # E log p_data, minus the entropy
    mean, var = _exact_marginal(m)
    e_log_p_theta = -0.5 * math.log(2 * math.pi * var) - ((MU - mean) ** 2 + SD**2) / (2 * var)
    assert expected <= e_log_p_theta + 1e-9 and e_log_p_theta <= true + 1e-9
    assert 0 <= true - expected < tol, (variance, true - expected)
    g = torch.Generator().manual_seed(0)
    x = MU + SD * torch.randn(2000, 1, generator=g, dtype=F64)
    b = m.bound(x, generator=g).per_example
    se = float(b.std() / math.sqrt(len(b)))
    assert abs(float(b.mean()) - expected) < 5 * se, (float(b.mean()), expected, se)
    pts = torch.tensor([[-1.0], [0.5], [2.0]], dtype=F64)
    bb = m.bound(pts.repeat_interleave(400, 0), generator=g).per_example.reshape(3, 400)
    exact = torch.distributions.Normal(mean, math.sqrt(var)).log_prob(pts[:, 0])
    assert (bb.mean(1) <= exact + 5 * bb.std(1) / math.sqrt(400)).all(), (bb.mean(1), exact)
    if variance == "learned":  # the optimal model reproduces the data distribution
        assert abs(mean - MU) < 1e-3 and abs(math.sqrt(var) - SD) < 1e-3


def test_importance_sampled_bound_agrees_with_the_sum():
    """The importance-sampled estimate over t is unbiased: it matches the exact sum within
    5 of its (combined) standard errors, and reports a positive standard error."""
    m = _gaussian_model(1000, "large")
    x = MU + SD * torch.randn(300, 1, generator=torch.Generator().manual_seed(1), dtype=F64)
    g = torch.Generator().manual_seed(2)
    exact = m.bound(x, generator=g)
    est = m.bound(x, method="importance", num_t=32, generator=g)
    assert (est.mc_stderr > 0).all() and est.stderr > 0
    diff = est.per_example - exact.per_example
    se = float(diff.std() / math.sqrt(len(diff)))
    assert abs(float(diff.mean())) < 5 * se
    assert torch.equal(est.prior, exact.prior)
    # through ppgen.evaluate, the options select the method; the kind is lower_bound
    ev = ppgen.evaluate(m, x, method="importance", num_t=8)
    assert ev.kind == "lower_bound" and ev.estimator == "elbo"
    with pytest.raises(ValueError, match="does not take"):
        ppgen.evaluate(m, x, no_such_option=1)


@pytest.mark.parametrize("method", ["exact", "importance"])
def test_bound_is_differentiable(method):
    """The bound can be trained on directly: every parameter gets a finite gradient."""
    ds = ppgen.datasets.load("digits", "val").subset(4)
    m = ppgen.build("ddpm", ds, timesteps=6, hidden=[8], variance="learned")
    m.elbo(ds.data, method=method, num_t=3).mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_bound_on_discrete_data_by_quadrature():
    """On 1-D discrete data with T = 2, log P(v) = log E_{x_2} E_{x_1|x_2} P(v | x_1) is a 2-D
    integral: by Gauss-Hermite quadrature the model's levels sum to 1 and the bound (averaged
    over many draws) lies below the exact log-probability of every level."""
    torch.manual_seed(0)
    m = DDPM(event_shape=(1,), kind="discrete", levels=5, timesteps=2, hidden=[16]).to(F64).eval()
    nodes, weights = (torch.tensor(a, dtype=F64) for a in scipy.special.roots_hermitenorm(60))
    weights = weights / weights.sum()  # E over N(0, 1)
    x2 = nodes[:, None]  # (Q, 1)
    with torch.no_grad():
        mu2, lv2 = m._reverse(x2, 2)  # p(x_1 | x_2) = N(mu2, exp(lv2))
        x1 = mu2 + torch.as_tensor(lv2).exp().sqrt() * nodes[None, :]  # (Q, Q)
        mu1, lv1 = m._reverse(x1[..., None], 1)
        levels = torch.arange(5, dtype=F64)
        dec = m._decoder(mu1, lv1)  # batch (Q, Q)
        probs = torch.stack([dec.log_prob(v.expand(60, 60, 1)).exp() for v in levels])  # (5, Q, Q)
        p = (probs * weights[None, :, None] * weights[None, None, :]).sum((1, 2))
        assert math.isclose(float(p.sum()), 1.0, abs_tol=1e-9)
        x = levels.repeat_interleave(2000)[:, None]
        b = m.bound(x, generator=torch.Generator().manual_seed(0)).per_example.reshape(5, 2000)
        se = b.std(1) / math.sqrt(2000)
        assert (b.mean(1) <= p.log() + 5 * se).all(), (b.mean(1), p.log())


# ---- samplers -----------------------------------------------------------------------------------


def test_samplers_match_the_model_in_distribution():
    """Ancestral DDPM with all T steps samples exactly p_theta (here N(mean, var) in closed
    form), as do Pyro's Predictive through the model and DDIM with eta = 1 and all T steps:
    one-sample KS tests at p < 1e-3 on 4000 seeded draws each."""
    m = _gaussian_model(100, "small")
    mean, var = _exact_marginal(m)
    cdf = scipy.stats.norm(mean, math.sqrt(var)).cdf
    ddpm = m.sample(4000, seed=0, sampler="ddpm")[:, 0]
    ddim = m.sample(4000, seed=1, sampler="ddim", sampling_steps=100, eta=1.0)[:, 0]
    pyro.set_rng_seed(2)
    with torch.no_grad():
        pred = Predictive(m.model, num_samples=4000, parallel=True)()["x"].reshape(-1)
    for name, s in (("ddpm", ddpm), ("ddim eta=1", ddim), ("Predictive", pred)):
        assert scipy.stats.kstest(s.numpy(), cdf).pvalue > 1e-3, name
    assert scipy.stats.ks_2samp(ddpm.numpy(), ddim.numpy()).pvalue > 1e-3
    # DDIM with eta = 0 is deterministic given x_T, and fewer steps run
    a = m.sample(10, seed=3, sampler="ddim", sampling_steps=10)
    assert torch.equal(a, m.sample(10, seed=3, sampler="ddim", sampling_steps=10))
    assert m.sample(10, seed=3, sampler="ddpm", sampling_steps=10).shape == (10, 1)


def test_sampler_arguments_are_checked():
    m = ppgen.build("ddpm", ppgen.datasets.load("moons", "val"), timesteps=10, hidden=[8])
    with pytest.raises(ValueError, match="sampler"):
        m.sample(2, sampler="euler")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sampling_steps"):
        m.sample(2, sampling_steps=11)
    with pytest.raises(ValueError, match="sampling_steps"):
        ppgen.build("ddpm", ppgen.datasets.load("moons", "val"), timesteps=10, sampling_steps=20)
    with pytest.raises(ValueError, match="unconditional"):
        m.sample(2, context=torch.zeros(2))
    with pytest.raises(ValueError, match="denoiser='mlp'"):
        ppgen.build("ddpm", ppgen.datasets.load("moons", "val"), denoiser="unet")
    with pytest.raises(ValueError, match="hybrid"):
        m.denoising_loss(ppgen.datasets.load("moons", "val").data[:4], loss="hybrid")


def test_discrete_samples_are_levels_and_ddim_is_stable():
    ds = ppgen.datasets.load("digits", "val")
    m = ppgen.build("ddpm", ds, timesteps=50, hidden=[8, 16])
    for kw in ({"sampler": "ddim", "sampling_steps": 10}, {"sampler": "ddpm"}):
        s = m.sample(6, seed=0, **kw)
        assert s.shape == (6, 1, 8, 8)
        assert torch.equal(s, s.round()) and s.min() >= 0 and s.max() <= 16, kw


# ---- Pyro's tools -------------------------------------------------------------------------------


def _is_latent(site: dict) -> bool:
    return site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)


@pytest.mark.parametrize("dataset", ["moons", "digits"])
def test_pyro_tools_and_particles(dataset):
    ds = ppgen.datasets.load(dataset, "val").subset(6)
    m = ppgen.build("ddpm", ds, timesteps=5, hidden=[8])
    x = ds.data
    tr = poutine.trace(m.model).get_trace(x)
    latent = [n for n, s in tr.nodes.items() if _is_latent(s)]
    assert latent == ["x_5", "x_4", "x_3", "x_2", "x_1"]
    assert tr.nodes["x"]["is_observed"]
    gtr = poutine.trace(m.guide).get_trace(x)
    assert [n for n, s in gtr.nodes.items() if _is_latent(s)] == latent
    # vectorized particles: a plate at dim -2 puts dims left of the data plate
    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        loss = elbo.loss(m.model, m.guide, x)
        assert math.isfinite(loss)
        with pyro.plate("particles", 3, dim=-2):
            gtr = poutine.trace(m.guide).get_trace(x)
            mtr = poutine.trace(poutine.replay(m.model, trace=gtr)).get_trace(x)
        assert mtr.nodes["x_1"]["value"].shape == (3, 6, *ds.event_shape)
        assert mtr.nodes["x"]["fn"].batch_shape == (3, 6)
    assert len(pyro.get_param_store()) == 0


def test_trace_elbo_agrees_with_the_closed_form_bound():
    """Pyro's Monte Carlo ELBO over the whole chain (model/guide traces) and the closed-form
    bound estimate the same expectation: z-test at 5 sigma on 3000 draws each."""
    ds = ppgen.datasets.load("moons", "val")
    m = ppgen.build("ddpm", ds, timesteps=8, hidden=[16]).to(F64)
    m.initialize(ds.data.to(F64))
    x = ds.data[:1].to(F64).expand(3000, 2)
    with torch.no_grad():
        mc = ppgen.models.base.AbstractGenerativeModel.elbo(m, x)  # one-particle trace ELBO
        closed = m.bound(x).per_example
    se = math.sqrt(float(mc.var()) / 3000 + float(closed.var()) / 3000)
    assert abs(float(mc.mean() - closed.mean())) < 5 * se
    assert float(closed.var()) < float(mc.var()), "closed-form KLs reduce the variance"


# ---- training -----------------------------------------------------------------------------------


@pytest.mark.parametrize("variance", ["small", "learned"])
@pytest.mark.parametrize("parameterization", ["epsilon", "x0", "v"])
def test_losses_run_and_give_gradients(variance, parameterization):
    ds = ppgen.datasets.load("moons", "val").subset(32)
    m = ppgen.build(
        "ddpm",
        ds,
        timesteps=20,
        hidden=[16],
        variance=variance,
        parameterization=parameterization,
    )
    losses = ["simple", "vlb"] + (["hybrid"] if variance == "learned" else [])
    for loss in losses:
        obj = ppgen.inference.make_objective("denoising", m, loss=loss)
        m.zero_grad()
        value = obj.loss(m, ds.data, None, "model", 0)
        value.backward()
        assert torch.isfinite(value), loss
        assert all(p.grad is not None for p in m.parameters()), loss
        assert torch.isfinite(obj.validation_loss(m, ds.data, None))
        assert obj.validation_loss(m, ds.data, None) == obj.validation_loss(m, ds.data, None)
    with pytest.raises(ValueError, match="known"):
        ppgen.inference.make_objective("denoising", m, lam=1)
    ind = ppgen.build("independent", ds)
    with pytest.raises(ValueError, match="diffusion"):
        ppgen.inference.make_objective("denoising", ind)


def test_vlb_loss_is_the_bound_per_time():
    """E_t[vlb loss] * T * D = sum_t L_t: the training loss estimates the bound's terms
    (z-test at 5 sigma over 40000 draws of t)."""
    ds = ppgen.datasets.load("moons", "val")
    m = ppgen.build("ddpm", ds, timesteps=10, hidden=[16], variance="large").to(F64)
    m.initialize(ds.data.to(F64))
    x = ds.data[:1].to(F64).expand(40_000, 2)
    with torch.no_grad():
        vlb = m.denoising_loss(x, loss="vlb") * 10 * 2
        b = m.bound(x[:4000])
    target = -(b.per_example + b.prior)  # sum_{t>=1} L_{t-1}
    se = math.sqrt(float(vlb.var()) / len(vlb) + float(target.var()) / len(target))
    assert abs(float(vlb.mean() - target.mean())) < 5 * se


def test_fit_defaults_and_short_fit_on_moons():
    """EMA is on by default; a short fit on moons brings the energy distance of 2000 DDIM-50
    samples to held-out data within 10x the data-to-data distance (a Gaussian with the data's
    moments is about 23x; the slow test holds 4000 steps to a tighter factor)."""
    train = ppgen.datasets.load("moons", "train")
    test = ppgen.datasets.load("moons", "test")
    m = ppgen.build("ddpm", train, timesteps=1000, hidden=[64, 64])
    assert m.fit_defaults()["ema"] == 0.995
    hist = ppgen.fit(m, train, steps=1500, batch_size=256, progress=False, seed=0)
    assert hist.steps == 1500
    s = m.sample(2000, seed=1, sampler="ddim", sampling_steps=50)
    held = test.data[:2000]
    ratio = energy_distance(s, held) / energy_distance(test.data[2000:4000], held)
    assert ratio < 10, ratio


@pytest.mark.goal
@pytest.mark.slow
def test_fit_on_moons_to_quality():
    train = ppgen.datasets.load("moons", "train")
    test = ppgen.datasets.load("moons", "test")
    m = ppgen.build("ddpm", train, timesteps=1000, hidden=[128, 128, 128])
    ppgen.fit(m, train, steps=4000, batch_size=256, progress=False, seed=0)
    held = test.data[:2000]
    base = energy_distance(test.data[2000:4000], held)
    for kw in ({"sampler": "ddpm"}, {"sampler": "ddim", "sampling_steps": 50}):
        ratio = energy_distance(m.sample(2000, seed=1, **kw), held) / base
        assert ratio < 3, (kw, ratio)


# ---- regression and persistence -----------------------------------------------------------------


def test_full_loop_regression():
    """Pinned numbers for the whole loop (build, 30 steps of fit, the training loss, DDIM and
    DDPM sampling, the bound) on CPU in float64, like diffusers' golden sums; tolerance 1e-6
    relative. The model is barely trained: the numbers guard the arithmetic, not quality."""
    train = ppgen.datasets.load("moons", "train")
    m = ppgen.build("ddpm", train, timesteps=50, hidden=[32, 32]).to(F64)
    hist = ppgen.fit(
        m, train, steps=30, batch_size=64, progress=False, seed=0, device="cpu", log_every=1
    )
    ddim = m.sample(16, seed=0, sampler="ddim", sampling_steps=10)
    ddpm = m.sample(16, seed=0, sampler="ddpm")
    with torch.no_grad():
        bound = m.bound(train.data[:16].to(F64), generator=torch.Generator().manual_seed(0))
    got = (
        sum(hist.loss),
        float(ddim.abs().sum()),
        float(ddpm.abs().sum()),
        float(bound.per_example.sum()),
    )
    for name, a, b in zip(("loss", "ddim", "ddpm", "bound"), got, GOLDEN, strict=True):
        assert math.isclose(a, b, rel_tol=1e-6), (name, got)


# Measured once on CPU (torch 2.13, float64) and pinned; a change means the arithmetic changed.
GOLDEN = (23.42619587792404, 6032.7178411306895, 7098.79735958227, -344.27950975784853)


def test_config_save_reload_step_equality(tmp_path):
    """A model rebuilt from its saved config and weights takes identical steps: the schedule's
    coefficients, one DDPM/DDIM step and whole sampling runs agree to the bit."""
    ds = ppgen.datasets.load("digits", "val").subset(16)
    m = ppgen.build(
        "ddpm",
        ds,
        timesteps=30,
        hidden=[8, 16],
        schedule="cosine",
        variance="learned",
        parameterization="v",
    )
    ppgen.save(m, tmp_path / "m.pt")
    m2 = ppgen.load(tmp_path / "m.pt")
    assert m2.config == m.config
    for name, buf in m.schedule.named_buffers():
        assert torch.equal(buf, getattr(m2.schedule, name)), name
    x_t = torch.randn(4, 1, 8, 8)
    eps = torch.randn(4, 1, 8, 8)
    for t in (30, 7, 1):
        a = m.schedule.step(eps, t, x_t, torch.Generator().manual_seed(t), clip=1.0)
        b = m2.schedule.step(eps, t, x_t, torch.Generator().manual_seed(t), clip=1.0)
        assert torch.equal(a, b), t
        pa, ra = m._network(x_t, t)
        pb, rb = m2._network(x_t, t)
        assert torch.equal(pa, pb) and torch.equal(ra, rb), t
    for kw in ({"sampler": "ddpm"}, {"sampler": "ddim", "sampling_steps": 7, "eta": 0.5}):
        assert torch.equal(m.sample(5, seed=0, **kw), m2.sample(5, seed=0, **kw)), kw
