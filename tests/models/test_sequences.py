"""The sequence families (lgssm, seq-ar, dmm) and ppgen.forecast (issue 24).

Exact checks where mathematics allows one: the Kalman likelihood against statsmodels' for the
same parameters, causality by perturbation, the DMM's ELBO below the exact log-likelihood of a
linear-Gaussian special case of its own parametrization, the one-step forecast's mean against
the Kalman predictive mean. The shared every-family tests (resume, checkpoints, protocol) cover
these families too; the resume test here runs them on series windows, their own data.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ppgen
from ppgen.models.sequences import LGSSM, SeqAR

SEQ = ("lgssm", "seq-ar", "dmm")
SMALL = {"lgssm": {"state": 3}, "seq-ar": {"hidden": [16], "components": 2},
         "dmm": {"latent": 2, "hidden": [16]}}


@pytest.fixture(scope="module")
def series():
    t = np.arange(400.0)
    rng = np.random.RandomState(0)
    x = np.stack([np.sin(t / 6), np.cos(t / 9)], 1) + 0.1 * rng.randn(400, 2)
    return {s: ppgen.datasets.from_series(x, window=12, split=s) for s in ("train", "val", "test")}


def _build(family, ds, seed=0):
    torch.manual_seed(seed)
    return ppgen.build(family, ds, **SMALL[family])


@pytest.mark.parametrize("family", SEQ)
def test_shapes_of_samples_scores_and_forecasts(family, series):
    ds = series["train"]
    m = _build(family, ds)
    assert m.sample(4, seed=0).shape == (4, 12, 2)
    assert ppgen.evaluate(m, ds.data[:5], num_particles=4).per_example.shape == (5,)
    paths = ppgen.forecast(m, ds.series[:30], horizon=7, num_samples=9, seed=1)
    assert paths.shape == (9, 7, 2) and torch.isfinite(paths).all()
    again = ppgen.forecast(m, ds.series[:30], horizon=7, num_samples=9, seed=1)
    assert torch.equal(paths, again), "seeded forecasts are reproducible"
    # any history length, also longer than the training window
    assert ppgen.forecast(m, ds.series[:100], horizon=1, num_samples=2, seed=0).shape == (2, 1, 2)
    assert m.forecast_method


@pytest.mark.parametrize("family", SEQ)
def test_univariate_event_shape_is_a_series_of_one_variable(family):
    ds = ppgen.datasets.from_array(np.random.RandomState(0).randn(40, 6), kind="continuous")
    m = _build(family, ds)
    assert m.step_dims == 1 and m.steps == 6
    assert ppgen.forecast(m, torch.zeros(5), horizon=3, num_samples=4, seed=0).shape == (4, 3)


# ---- exactness ---------------------------------------------------------------------------------


def _random_lgssm(k, d, seed):
    g = torch.Generator().manual_seed(seed)
    m = LGSSM(event_shape=(10, d), state=k).double()
    a = 0.8 * torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))[0]
    m.set_parameters(
        init_loc=torch.randn(k, generator=g, dtype=torch.float64),
        init_scale=0.5 + torch.rand(k, generator=g, dtype=torch.float64),
        transition_matrix=a,
        transition_scale=0.2 + torch.rand(k, generator=g, dtype=torch.float64),
        observation_matrix=torch.randn(k, d, generator=g, dtype=torch.float64),
        observation_loc=torch.randn(d, generator=g, dtype=torch.float64),
        observation_scale=0.3 + torch.rand(d, generator=g, dtype=torch.float64),
    )
    return m


@pytest.mark.parametrize(("k", "d", "length"), [(1, 1, 30), (3, 2, 25), (4, 3, 7)])
def test_kalman_likelihood_matches_statsmodels_for_the_same_model(k, d, length):
    mlemodel = pytest.importorskip("statsmodels.tsa.statespace.mlemodel")
    m = _random_lgssm(k, d, seed=k + d)
    y = m.sample(1, seed=3)[0].reshape(10, d)
    y = torch.cat([y, m.sample(3, seed=4).reshape(-1, d)])[:length]
    with torch.no_grad():
        ours = float(m.log_prob_series(y[None]))
    p = {n: t.detach().numpy() for n, t in m.named_parameters()}
    scale = {n: torch.nn.functional.softplus(t).detach().numpy() + 1e-3
             for n, t in m.named_parameters() if n.endswith("_raw")}
    a, c = p["transition_matrix"], p["observation_matrix"]
    q = np.diag(scale["transition_scale_raw"] ** 2)
    sm = mlemodel.MLEModel(y.numpy(), k_states=k)
    # statsmodels: y_t = Z a_t + d + eps, a_{t+1} = T a_t + eta (column vectors; Pyro's rows)
    sm["design"] = c.T
    sm["obs_intercept"] = p["observation_loc"][:, None]
    sm["obs_cov"] = np.diag(scale["observation_scale_raw"] ** 2)
    sm["transition"] = a.T
    sm["selection"] = np.eye(k)
    sm["state_cov"] = q
    # Pyro's initial law is of the state one step before the first observation
    p0 = np.diag(scale["init_scale_raw"] ** 2)
    sm.initialize_known(a.T @ p["init_loc"], a.T @ p0 @ a + q)
    theirs = sm.ssm.loglike()
    assert abs(ours - theirs) < 1e-6, (ours, theirs)


def test_lgssm_one_step_forecast_has_the_kalman_predictive_mean():
    m = _random_lgssm(3, 2, seed=5)
    history = m.sample(1, seed=0)[0]
    paths = ppgen.forecast(m, history, horizon=1, num_samples=20000, seed=0)[:, 0]
    filt = m.hmm(10).filter(history)
    mean = filt.loc @ m.transition_matrix @ m.observation_matrix + m.observation_loc
    se = paths.std(0) / math.sqrt(paths.shape[0])
    assert ((paths.mean(0) - mean).abs() < 4 * se).all(), (paths.mean(0), mean)
    # the exact one-step predictive density: log p(x_1..x_11) - log p(x_1..x_10); its variance
    # is the paths' variance
    y = torch.cat([history, mean.detach()[None]])
    gap = m.log_prob_series(y[None]) - m.log_prob_series(history[None])
    assert torch.isfinite(gap).all()


@given(t0=st.integers(0, 11), seed=st.integers(0, 2**16))
@settings(max_examples=20, deadline=None)
def test_seq_ar_a_future_value_never_changes_a_past_conditional(t0, seed):
    m = SeqAR(event_shape=(12, 2), hidden=(8,), components=3).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 12, 2, generator=g, dtype=torch.float64)
    y = x.clone()
    y[:, t0:] += 5 * torch.randn(3, 12 - t0, 2, generator=g, dtype=torch.float64)
    a, b = m.log_prob_steps(x), m.log_prob_steps(y)
    assert torch.equal(a[:, :t0], b[:, :t0]), "a past conditional moved"
    assert not torch.equal(a[:, t0], b[:, t0]), "the perturbed step itself must change"


@pytest.mark.parametrize("family", SEQ)
def test_forecasts_depend_on_the_history(family, series):
    m = _build(family, series["train"])
    h = series["train"].series[:20]
    a = ppgen.forecast(m, h, horizon=3, num_samples=50, seed=0)
    b = ppgen.forecast(m, h + 3.0, horizon=3, num_samples=50, seed=0)
    assert not torch.allclose(a, b)


def _linear_dmm(latent=2, d=2, steps=5):
    """A DMM whose networks are linear on the region the data visits (a special case of its
    own parametrization): the gate is 0 to float64 precision, the transition scale constant and
    every ReLU of the emission sees inputs offset far into its linear side."""
    m = ppgen.models.get("dmm")(event_shape=(steps, d), latent=latent, hidden=(4, 4)).double()
    g = torch.Generator().manual_seed(0)
    big = 1e3
    with torch.no_grad():
        tr = m.transition
        for p in tr.gate.parameters():
            p.zero_()
        tr.gate[-1].bias.fill_(-80.0)  # sigmoid(-80) = 1.8e-35
        tr.linear.weight.copy_(0.7 * torch.eye(latent) + 0.1 * torch.randn(
            latent, latent, generator=g, dtype=torch.float64))
        tr.linear.bias.copy_(0.1 * torch.ones(latent))
        tr.scale.weight.zero_()
        tr.scale.bias.fill_(0.3)
        lin = [mod for mod in m.emitter if isinstance(mod, torch.nn.Linear)]
        w = [0.5 * torch.randn(mod.weight.shape, generator=g, dtype=torch.float64) for mod in lin]
        b = [0.1 * torch.randn(mod.bias.shape, generator=g, dtype=torch.float64) for mod in lin]
        for i, mod in enumerate(lin):
            mod.weight.copy_(w[i])
            # hidden layers: + big keeps every ReLU on its linear side; the next layer removes it
            shift = big * torch.ones(mod.weight.shape[0], dtype=torch.float64)
            prev = lin[i - 1].weight.new_zeros(0) if i == 0 else big * mod.weight.sum(1)
            bias = b[i] - (prev if i > 0 else 0)
            mod.bias.copy_(bias + (shift if i < len(lin) - 1 else 0))
        last = lin[-1]
        last.weight[d:].zero_()  # the raw scale does not depend on z
        last.bias[d:] = math.log(math.expm1(0.4 - 1e-3))  # softplus(raw) + 1e-3 = 0.4
        m.z_0.copy_(torch.tensor([0.5, -0.5], dtype=torch.float64))
    return m


def _exact_log_prob(m, x):
    """log p(x) of the linear special case, from its joint Gaussian (no Kalman filter)."""
    tr, steps, latent = m.transition, m.steps, m.config.latent
    a, bias, q = tr.linear.weight, tr.linear.bias, 0.3
    q = torch.nn.functional.softplus(torch.tensor(q, dtype=torch.float64)) + 1e-3
    # the emission's affine map x = E z + e (compose the linear layers)
    lin = [mod for mod in m.emitter if isinstance(mod, torch.nn.Linear)]
    e_w, e_b = torch.eye(latent, dtype=torch.float64), torch.zeros(latent, dtype=torch.float64)
    for mod in lin:
        e_w, e_b = mod.weight @ e_w, mod.weight @ e_b + mod.bias
    d = m.step_dims
    e_w, e_b = e_w[:d], e_b[:d]
    r = torch.nn.functional.softplus(lin[-1].bias[d:]) + 1e-3
    # z_t = a z_{t-1} + bias + q eps_t: mean and the map from the noises
    means, maps = [], []
    z_mean, z_map = m.z_0, torch.zeros(latent, steps * latent, dtype=torch.float64)
    for t in range(steps):
        z_mean = a @ z_mean + bias
        z_map = a @ z_map
        z_map[:, t * latent:(t + 1) * latent] += q * torch.eye(latent, dtype=torch.float64)
        means.append(e_w @ z_mean + e_b)
        maps.append(e_w @ z_map)
    mean = torch.cat(means)
    big_map = torch.cat(maps)
    cov = big_map @ big_map.T + torch.diag(r.repeat(steps) ** 2)
    mvn = torch.distributions.MultivariateNormal(mean, cov)
    return mvn.log_prob(x.reshape(x.shape[0], -1))


def test_dmm_elbo_and_iwae_lie_below_the_exact_log_likelihood_of_a_linear_special_case():
    m = _linear_dmm()
    with torch.no_grad():
        x = m.sample(6, seed=0)
        exact = _exact_log_prob(m, x)
        # the special case is what it claims: the DMM's own sampler agrees with the Gaussian
        many = m.sample(20000, seed=1).reshape(20000, -1)
        torch.manual_seed(0)
        elbo = torch.stack([m.elbo(x) for _ in range(200)])
        # IWAE: E[log of the K-sample mean] <= log p; one estimate may overshoot (the untrained
        # guide's weights are heavy-tailed), so the mean of 20 independent ones is compared
        iwae = torch.stack([m.log_prob_series(m._as_steps(x), num_particles=200)
                            for _ in range(20)])
    elbo_se = elbo.std(0) / math.sqrt(elbo.shape[0])
    iwae_se = iwae.std(0) / math.sqrt(iwae.shape[0])
    assert (elbo.mean(0) + 3 * elbo_se < exact).all(), (elbo.mean(0), exact)
    assert (iwae.mean(0) <= exact + 3 * iwae_se).all(), (iwae.mean(0), exact)
    assert (iwae.mean(0) > elbo.mean(0)).all(), "IWAE_200 is tighter than the ELBO"
    # the sample mean of the DMM's draws is the Gaussian's mean
    lin_mean = _linear_mean(m)
    se = many.std(0) / math.sqrt(many.shape[0])
    assert ((many.mean(0) - lin_mean).abs() < 5 * se).all()


def _linear_mean(m):
    tr = m.transition
    lin = [mod for mod in m.emitter if isinstance(mod, torch.nn.Linear)]
    d = m.step_dims
    out, z = [], m.z_0
    for _ in range(m.steps):
        z = tr.linear.weight @ z + tr.linear.bias
        h = z
        for i, mod in enumerate(lin):
            h = torch.relu(mod(h)) if i < len(lin) - 1 else mod(h)
        out.append(h[:d])
    return torch.cat(out).detach()


# ---- training: resume on series windows -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", SEQ)
def test_resume_on_series_windows_is_exact(family, series, tmp_path):
    train, val = series["train"].subset(64), series["val"]

    def fit(out, steps, **kw):
        m = _build(family, train)
        ppgen.fit(m, train, val=val, out=out, steps=steps, batch_size=16, lr=1e-3, seed=3,
                  device="cpu", progress=False, eval_every=2, checkpoint_every=2, **kw)
        return m

    full = fit(tmp_path / "full", 4)
    fit(tmp_path / "half", 2)
    resumed = fit(tmp_path / "half", 4, resume=True)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), f"{family}: {k}"


def test_dmm_kl_annealing_reaches_the_objective():
    m = ppgen.build("dmm", ppgen.datasets.from_array(np.zeros((20, 4, 1))), warmup=50)
    assert m.fit_defaults() == {"objective_options": {"warmup": 50}}


# ---- bad input ---------------------------------------------------------------------------------


def test_forecast_refuses_bad_input_before_any_work(series):
    m = _build("seq-ar", series["train"])
    h = series["train"].series[:10]
    with pytest.raises(ValueError, match="horizon must be a positive int"):
        ppgen.forecast(m, h, horizon=0)
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        ppgen.forecast(m, h, horizon=2, num_samples=1.5)
    with pytest.raises(ValueError, match=r"history has shape \(10, 3\); pass \(L, 2\)"):
        ppgen.forecast(m, torch.zeros(10, 3), horizon=2)
    bad = h.clone()
    bad[4, 1] = math.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        ppgen.forecast(m, bad, horizon=2)
    with pytest.raises(ValueError, match="history is empty"):
        ppgen.forecast(m, torch.zeros(0, 2), horizon=2)
    flat = ppgen.build("independent", ppgen.datasets.load("moons", "val"))
    with pytest.raises(ValueError, match="cannot forecast.*lgssm, seq-ar, dmm"):
        ppgen.forecast(flat, h, horizon=2)


def test_a_discrete_sequence_model_forecasts_levels():
    data = np.random.RandomState(0).randint(0, 3, (30, 8, 2))
    ds = ppgen.datasets.from_array(data, kind="discrete", levels=3)
    for family in SEQ:
        m = _build(family, ds)
        paths = ppgen.forecast(m, torch.tensor(data[0], dtype=torch.float32), horizon=4,
                               num_samples=5, seed=0)
        assert torch.equal(paths, paths.round()) and paths.min() >= 0 and paths.max() <= 2
        with pytest.raises(ValueError, match="levels 0..2"):
            ppgen.forecast(m, torch.full((3, 2), 7.0), horizon=1)
