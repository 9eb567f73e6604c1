"""Numerical edge cases found by hypothesis (issue 12): finite results or a clear error.

- exact densities (flows, and the autoregressive and independent families on continuous data)
  at inputs with ``|x|`` up to 1e3, under randomly perturbed weights;
- the logit transform of dequantized data at exactly 0 and 1, in float32 and float64;
- diffusion schedules: computed in float64, betas capped below 1 (only a zero-terminal-SNR
  schedule reaches 1, at T), alpha_bar strictly decreasing, every coefficient finite; zero
  terminal SNR with epsilon prediction refused;
- log-mean-exp of importance weights that are -inf (IWAE, AIS): the finite ones carry the
  estimate, and an example with no finite weight (or any NaN / +inf) raises ``WeightError``.

Each property runs a small derandomized sample by default and a larger one under ``-m slow``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ppgen
from ppgen.datasets import DataTransform, logit_transform
from ppgen.inference import ais, likelihood
from ppgen.models import traces
from ppgen.models.diffusion.schedule import NoiseSchedule, ScheduleError
from tests.families import build_small


def _both(strategy: Any, fast: int, slow: int):
    """A body taking one drawn case -> (default-run test, slow test)."""

    def wrap(body):
        def make(n: int, derandomize: bool):
            @settings(max_examples=n, deadline=None, derandomize=derandomize, database=None,
                      suppress_health_check=[HealthCheck.too_slow])
            @given(case=strategy)
            def test(case: Any) -> None:
                body(case)

            test.__name__ = body.__name__
            return test

        return make(fast, True), pytest.mark.slow(make(slow, False))

    return wrap


# ---- exact densities at |x| up to 1e3 ---------------------------------------------------------


def _exact_continuous_families() -> list[str]:
    moons = ppgen.datasets.load("moons", "train")
    out = []
    for name in ppgen.models.names():
        cls = ppgen.models.get(name)
        if cls.likelihood != "exact":
            continue
        try:
            _build(name, moons)
        except ValueError:
            continue  # refuses 2-D continuous data (PixelCNN: images only)
        out.append(name)
    return out


def _build(name: str, ds: ppgen.datasets.Dataset):
    return build_small(name, ds)


_MODELS: dict[tuple[str, int], Any] = {}


def _perturbed(name: str, seed: int):
    """The family on moons, data-dependent initializations fired on moons, then every weight
    moved by N(0, 0.5^2) noise: a model far from its zero-initialized identity."""
    if (name, seed) not in _MODELS:
        moons = ppgen.datasets.load("moons", "train").subset(256)
        torch.manual_seed(seed)
        model = _build(name, moons)
        with torch.no_grad():
            model.log_prob(moons.data)
            for p in model.parameters():
                p.add_(0.5 * torch.randn_like(p))
        model.eval()
        _MODELS[name, seed] = model
    return _MODELS[name, seed]


EXACT = _exact_continuous_families()
_extreme_points = hnp.arrays(
    np.float32,
    (4, 2),
    elements=st.one_of(
        st.floats(-1e3, 1e3, width=32),
        st.sampled_from([-1e3, 1e3, 0.0, 999.9, -1e-30]),
    ),
)


@_both(st.tuples(st.sampled_from(EXACT), st.integers(0, 2), _extreme_points), fast=30, slow=600)
def test_exact_log_prob_at_extreme_inputs(case):
    """log_prob is finite at |x| <= 1e3 (or a ValueError says why), for every exact family."""
    name, seed, x = case
    model = _perturbed(name, seed)
    try:
        with torch.no_grad():
            lp = model.log_prob(torch.from_numpy(x))
    except ValueError as e:
        assert str(e).strip()
        return
    assert lp.shape == (4,), name
    assert torch.isfinite(lp).all(), (name, seed, x, lp)


test_exact_log_prob_at_extreme_inputs, test_exact_log_prob_at_extreme_inputs_slow = (
    test_exact_log_prob_at_extreme_inputs
)


@pytest.mark.parametrize("name", EXACT)
def test_exact_log_prob_at_the_corners(name):
    """The 9 points of {-1e3, 0, 1e3}^2 under 3 weight draws (a fixed sample besides the fuzz;
    MADE's continuous conditionals gave -inf here before their log-scales were clamped)."""
    grid = torch.tensor([-1e3, 0.0, 1e3])
    x = torch.cartesian_prod(grid, grid)
    for seed in range(3):
        with torch.no_grad():
            lp = _perturbed(name, seed).log_prob(x)
        assert torch.isfinite(lp).all(), (name, seed, lp)


# ---- the logit transform at 0 and 1 -----------------------------------------------------------

_alphas = st.one_of(
    st.sampled_from([1e-12, 1e-9, 1e-6, 1e-3, 0.05, 0.25, 0.4999]),
    st.floats(1e-12, 0.4999),
)
_ys = st.lists(
    st.one_of(st.sampled_from([0.0, 1.0, 0.5, 1e-30, 1 - 1e-7, 1 - 2**-24]), st.floats(0, 1)),
    min_size=1,
    max_size=8,
)


@_both(st.tuples(_alphas, _ys, st.sampled_from([torch.float32, torch.float64])), fast=60,
       slow=3000)
def test_logit_transform_is_finite_on_the_closed_interval(case):
    """z and log|dz/dy| are finite for y in [0, 1], ends included, in float32 and float64; z is
    monotone in y; in float64 the log-derivative matches autograd."""
    alpha, ys, dtype = case
    y = torch.tensor(sorted(ys), dtype=dtype)
    z, ladj = logit_transform(y, alpha)
    assert torch.isfinite(z).all() and torch.isfinite(ladj).all(), (alpha, y, z, ladj)
    assert (z[1:] >= z[:-1]).all()
    if dtype == torch.float64:
        yg = y.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(logit_transform(yg, alpha)[0].sum(), yg)
        assert torch.allclose(grad.log(), ladj, rtol=1e-9, atol=1e-9)


(test_logit_transform_is_finite_on_the_closed_interval,
 test_logit_transform_is_finite_on_the_closed_interval_slow) = (
    test_logit_transform_is_finite_on_the_closed_interval
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [1e-12, 1e-9, 1e-6, 0.05])
def test_logit_transform_at_exactly_0_and_1(alpha, dtype):
    z, ladj = logit_transform(torch.tensor([0.0, 1.0], dtype=dtype), alpha)
    assert torch.isfinite(z).all() and torch.isfinite(ladj).all(), (z, ladj)
    assert z[0] < 0 < z[1] and torch.allclose(z[0], -z[1])


@pytest.mark.parametrize("levels", [2, 17, 256])
@pytest.mark.parametrize("alpha", [1e-9, 0.05])
def test_data_transform_at_the_extreme_levels_round_trips(levels, alpha):
    x = torch.tensor([[0.0] * 4, [levels - 1.0] * 4])
    t = DataTransform("discrete", levels, logit_alpha=alpha)
    for seed in range(20):
        z, ladj = t(x, generator=torch.Generator().manual_seed(seed))
        assert torch.isfinite(z).all() and torch.isfinite(ladj).all()
        assert torch.equal(t.inverse(z), x)
    # the inverse of the ends of the real line is the extreme levels
    inf = torch.tensor([[-math.inf, math.inf]])
    assert t.inverse(inf).tolist() == [[0.0, levels - 1.0]]


@pytest.mark.parametrize("alpha", [0.0, 0.5, -1.0])
def test_logit_alpha_outside_the_open_interval_is_refused(alpha):
    with pytest.raises(ValueError, match="alpha"):
        logit_transform(torch.zeros(2), alpha)
    with pytest.raises(ValueError, match="alpha"):
        DataTransform("discrete", 4, logit_alpha=alpha)


# ---- diffusion schedules ----------------------------------------------------------------------

_betas = st.one_of(
    st.floats(0, 1.5), st.sampled_from([0.0, 1e-20, 1e-17, 1e-12, 1e-4, 0.999, 1.0])
)


@st.composite
def schedules(draw):
    return dict(
        timesteps=draw(st.one_of(st.integers(-1, 60), st.integers(2, 4000))),
        kind=draw(st.sampled_from(["linear", "cosine", "quadratic"])),
        beta_start=draw(st.one_of(st.none(), _betas)),
        beta_end=draw(st.one_of(st.none(), _betas)),
        max_beta=draw(st.one_of(st.just(0.999), st.floats(-0.5, 1.5))),
        zero_terminal_snr=draw(st.booleans()),
    )


@_both(schedules(), fast=60, slow=2000)
def test_schedules_are_valid_or_refused(kwargs):
    """A schedule is refused with a ScheduleError, or: float64 betas in (0, max_beta] (1 only at
    T with zero terminal SNR), alpha_bar strictly decreasing from 1 (to 0 with zero SNR), and
    every coefficient the samplers and the bound use finite."""
    try:
        s = NoiseSchedule(**kwargs)
    except ScheduleError as e:
        assert str(e).strip()
        return
    h = s._host
    betas = torch.tensor(h["betas"], dtype=torch.float64)[1:]
    ab = torch.tensor(h["alphas_cumprod"], dtype=torch.float64)
    assert ab[0] == 1.0 and (ab[1:] < ab[:-1]).all(), kwargs
    assert (betas > 0).all() and (betas[:-1] < 1).all()
    if s.zero_terminal_snr:
        assert kwargs["zero_terminal_snr"] and betas[-1] == 1 and ab[-1] == 0
    else:
        assert betas.max() <= kwargs["max_beta"] and ab[-1] > 0
    for name, values in h.items():
        v = torch.tensor(values[1:], dtype=torch.float64)
        assert torch.isfinite(v).all(), name
        assert torch.isfinite(getattr(s, name)).all(), name
    last = s.timesteps if not s.zero_terminal_snr else s.timesteps - 1  # eps at T: no x0
    for t in range(1, last + 1):
        assert all(math.isfinite(c) for c in s._ddpm_coefficients(t)), t


test_schedules_are_valid_or_refused, test_schedules_are_valid_or_refused_slow = (
    test_schedules_are_valid_or_refused
)


def test_a_beta_below_float64_resolution_is_refused():
    with pytest.raises(ScheduleError, match="does not decrease at t=1"):
        NoiseSchedule(10, beta_start=1e-20, beta_end=0.02)


@pytest.mark.parametrize("parameterization", ["epsilon", "v", "x0"])
def test_zero_terminal_snr_needs_v_or_x0_prediction(parameterization):
    moons = ppgen.datasets.load("moons", "train").subset(64)
    kwargs = dict(timesteps=10, hidden=[16], zero_terminal_snr=True,
                  parameterization=parameterization)
    if parameterization == "epsilon":
        with pytest.raises(ScheduleError, match="epsilon"):
            ppgen.build("ddpm", moons, **kwargs)
        return
    model = ppgen.build("ddpm", moons, **kwargs)
    assert float(model.schedule.alphas_cumprod[-1]) == 0.0
    assert torch.isfinite(model.elbo(moons.data)).all()
    assert torch.isfinite(model.sample(8, seed=0)).all()


# ---- log-sum-exp of -inf in the estimators ----------------------------------------------------

_log_weights = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 6), st.integers(1, 5)),
    elements=st.one_of(
        st.floats(-1e4, 1e4), st.sampled_from([-math.inf, -math.inf, math.inf, math.nan, -1e308])
    ),
)


@_both(_log_weights, fast=100, slow=5000)
def test_log_mean_exp_is_finite_or_a_weight_error(log_w):
    """-inf weights count as zero; a column with no finite weight, or any NaN/+inf, is a
    WeightError; otherwise the value equals the log-mean-exp of the finite weights."""
    w = torch.from_numpy(log_w)
    usable = ~np.isnan(log_w).any() and ~(log_w == math.inf).any()
    usable = usable and bool(np.isfinite(log_w).any(0).all())
    if not usable:
        with pytest.raises(likelihood.WeightError, match="importance"):
            traces.log_mean_exp(w)
        return
    got = traces.log_mean_exp(w)
    assert torch.isfinite(got).all()
    for j in range(log_w.shape[1]):
        finite = log_w[np.isfinite(log_w[:, j]), j]
        ref = finite.max() + math.log(np.exp(finite - finite.max()).sum()) - math.log(len(log_w))
        assert math.isclose(float(got[j]), ref, rel_tol=1e-12, abs_tol=1e-9)


(test_log_mean_exp_is_finite_or_a_weight_error,
 test_log_mean_exp_is_finite_or_a_weight_error_slow) = (
    test_log_mean_exp_is_finite_or_a_weight_error
)


@pytest.mark.parametrize("estimator", ["iwae", "ais"])
@pytest.mark.parametrize("fill", [-math.inf, math.nan])
def test_estimators_with_dead_weights_raise_a_weight_error(estimator, fill, monkeypatch):
    """A VAE whose importance (IWAE) or annealing (AIS) log-weights come out -inf or NaN for an
    example: evaluate raises WeightError naming it, never returns -inf or NaN."""
    ds = ppgen.datasets.load("moons", "val").subset(3)
    model = ppgen.build("vae", ds, latent=2, hidden=[8])
    module = {"iwae": traces, "ais": ais}[estimator]
    name = {"iwae": "importance_log_weights", "ais": "_run_ais"}[estimator]
    real = getattr(module, name)

    def poisoned(*args, **kwargs):
        log_w = real(*args, **kwargs).clone()
        log_w[:, 1] = fill  # example 1: every particle
        return log_w

    monkeypatch.setattr(module, name, poisoned)
    options = {"num_steps": 3} if estimator == "ais" else {}
    with pytest.raises(likelihood.WeightError, match=r"example\(s\) \[1\]"):
        ppgen.evaluate(model, ds, estimator, num_particles=4, **options)


# ---- units: bits/dim of known densities -------------------------------------------------------


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_uniform_over_levels_is_log2_levels_on_every_path(levels):
    """Uniform over L levels is log2 L bits/dim (8.000 for 256): through the exact discrete path
    (an untrained independent model's zero logits), and through dequantization with and without
    the logit transform, where the continuous density is the pushforward of U[0, 1) (so
    log p_z(z) + ladj must be -D ln L exactly, every Jacobian counted)."""
    rng = np.random.RandomState(0)
    x = rng.randint(0, levels, (50, 3, 4))
    x[0, 0, 0] = levels - 1
    ds = ppgen.datasets.from_array(x, kind="discrete", levels=levels)
    ev = ppgen.evaluate(ppgen.build("independent", ds), ds)
    assert ev.kind == "exact" and ev.bits_per_dim == pytest.approx(math.log2(levels), abs=1e-6)
    xd = ds.data.double()
    num_dims = xd[0].numel()
    z, ladj = DataTransform("discrete", levels)(xd)  # p_z = U[0, 1): log p_z = 0
    bits = -ladj / (num_dims * math.log(2))
    assert torch.allclose(bits, torch.full_like(bits, math.log2(levels)), atol=1e-6, rtol=0)
    alpha = 0.05
    z, ladj = DataTransform("discrete", levels, logit_alpha=alpha)(xd)
    s = torch.sigmoid(z)  # z's density: the logistic pushforward of U[alpha, 1 - alpha]
    log_pz = (torch.log(s) + torch.log1p(-s) - math.log1p(-2 * alpha)).reshape(50, -1).sum(1)
    bits = -(log_pz + ladj) / (num_dims * math.log(2))
    assert torch.allclose(bits, torch.full_like(bits, math.log2(levels)), atol=1e-6, rtol=0)
