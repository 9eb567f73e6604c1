"""Posteriors into ArviZ: groups and dims, NUTS against pPCA's analytic posterior (also through
an implicit generator), the amortization gap against its closed form, and `inspect_report`.

NUTS checks compare the posterior mean with its Monte Carlo standard error from ArviZ's ESS; a
bound of 5 MCSE has a false-alarm rate below 1e-6 per coordinate (normal approximation).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ppca import PPCA

import ppgen
from ppgen.inference.posterior import _arviz, amortization_gap, decode_mean
from ppgen.reports import inspect_report


def test_guide_posterior_groups_and_dims():
    p = PPCA.random(4, 2, 0.5, seed=0, guide_scale=1.3)
    m, x = p.bound(), p.sample(3, seed=1)
    idata = ppgen.posterior(m, x, method="guide", num_samples=50, num_chains=2, seed=0)
    assert set(idata.groups()) == {"posterior", "sample_stats", "log_likelihood",
                                   "observed_data"}
    assert idata.posterior["z"].dims == ("chain", "draw", "example", "z_dim")
    assert dict(idata.posterior["z"].sizes) == {"chain": 2, "draw": 50, "example": 3,
                                                "z_dim": 2}
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "example")
    assert idata.sample_stats["log_weight"].dims == ("chain", "draw", "example")
    assert idata.sample_stats["lp"].dims == ("chain", "draw")
    assert idata.observed_data["x"].dims == ("example", "x_dim")
    assert np.allclose(idata.observed_data["x"].values, x.numpy())
    # each group holds what it says: recompute for every draw
    z = torch.as_tensor(idata.posterior["z"].values)  # (C, S, N, L)
    mean_x = z @ p.W.T + p.mu
    log_lik = torch.distributions.Normal(mean_x, p.sigma).log_prob(x).sum(-1)
    assert np.allclose(idata.log_likelihood["x"].values, log_lik.numpy())
    log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert np.allclose(idata.sample_stats["lp"].values, (log_lik + log_prior).sum(-1).numpy())
    m_q, s_q = p.guide_params(x)
    log_q = torch.distributions.Normal(m_q, s_q).log_prob(z).sum(-1)
    assert np.allclose(idata.sample_stats["log_weight"].values,
                       (log_lik + log_prior - log_q).numpy())
    # reproducible
    again = ppgen.posterior(m, x, method="guide", num_samples=50, num_chains=2, seed=0)
    assert np.array_equal(again.posterior["z"].values, idata.posterior["z"].values)


@pytest.mark.parametrize("implicit", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_nuts_recovers_the_analytic_posterior(implicit):
    """NUTS on pPCA (and on the same generator as a Delta with observation_scale = sigma: a
    "GAN" inverted) has the analytic posterior's mean and variance."""
    p = PPCA.random(3, 2, 0.7, seed=2)
    x = p.sample(2, seed=3)
    m = p.implicit() if implicit else p.bound()
    scale = p.sigma if implicit else None
    idata = ppgen.posterior(m, x, method="nuts", num_samples=120, num_chains=2, seed=0,
                            warmup_steps=80, observation_scale=scale)
    az = _arviz()
    summary = az.summary(idata, var_names=["z"])
    assert {"ess_bulk", "ess_tail", "r_hat", "mcse_mean"} <= set(summary.columns)
    assert (summary["r_hat"] < 1.05).all(), summary
    z = idata.posterior["z"].values.reshape(-1, 2, 2)  # (draws, N, L)
    ess = az.ess(idata, var_names=["z"])["z"].values  # (N, L)
    true_mean = p.posterior_mean(x).numpy()
    true_var = p.posterior_cov().diag().numpy()[None].repeat(2, 0)
    mcse = np.sqrt(true_var / ess)
    assert (np.abs(z.mean(0) - true_mean) < 5 * mcse).all(), (z.mean(0), true_mean)
    # the sample variance's standard error is about var * sqrt(2 / ess)
    assert (np.abs(z.var(0) - true_var) < 5 * true_var * np.sqrt(2 / ess)).all()
    assert idata.sample_stats["diverging"].dims == ("chain", "draw")
    assert not idata.sample_stats["diverging"].values.any()


def test_amortization_gap_matches_its_closed_form():
    """For pPCA with a diagonal Gaussian guide: q* is the mean-field optimum
    N(mu, diag(1/Lambda_ii)) (Lambda the posterior precision), so approximation gap =
    (sum log Lambda_ii - log det Lambda) / 2 for every example, and amortization gap =
    ELBO[q*] - ELBO[q] in closed form."""
    p = PPCA.random(3, 2, 0.5, seed=5, guide_scale=1.4, guide_shift=0.4)
    m, x = p.bound(), p.sample(4, seed=1)
    gap = amortization_gap(m, x, num_particles=2000, steps=300, seed=0)
    precision = torch.linalg.inv(p.posterior_cov())
    approx = 0.5 * (precision.diag().log().sum() - torch.logdet(precision))
    exact = p.exact_log_prob(x)
    elbo_star = exact - approx
    assert torch.allclose(gap.log_px, exact, atol=0.02)
    assert torch.allclose(gap.approximation, approx.expand(4), atol=0.03), gap.approximation
    assert torch.allclose(gap.amortization, elbo_star - p.exact_elbo(x), atol=0.03)
    assert torch.allclose(gap.total, gap.approximation + gap.amortization)
    assert "amortization" in str(gap) and len(gap.table().splitlines()) == 5


def test_decode_mean_is_the_decoder_mean():
    p = PPCA.random(3, 2, 0.5, seed=6)
    z = torch.randn(5, 2, dtype=torch.float64)
    assert torch.allclose(decode_mean(p.bound(), {"z": z}), z @ p.W.T + p.mu)
    assert torch.allclose(decode_mean(p.implicit(), {"z": z}), z @ p.W.T + p.mu)


@pytest.mark.parametrize("method", ["guide", pytest.param("nuts", marks=pytest.mark.slow)])
def test_inspect_writes_its_report(method, tmp_path, capsys):
    ds = ppgen.datasets.load("digits", "val").subset(60)
    m = ppgen.build("vae", ds, latent=2, hidden=[16])
    ppgen.fit(m, ds, steps=5, batch_size=30, progress=False)
    report = inspect_report(m, ds, out=tmp_path, num_points=2, seed=0, method=method,
                            num_samples=30, num_chains=2, gap_steps=30)
    printed = capsys.readouterr().out
    assert "r_hat" in printed and "ess_bulk" in printed and "amortization" in printed
    names = {f.name for f in report.files}
    assert names == {"posterior_pair.png", "latent_scatter.png", "traversals.png",
                     "interpolations.png"}
    assert all((tmp_path / n).stat().st_size > 0 for n in names)
    assert report.gap is not None and report.gap.log_px.shape == (2,)


def test_posterior_refuses_bad_input():
    ds = ppgen.datasets.load("digits", "val").subset(4)
    with pytest.raises(ValueError, match="no latent"):
        ppgen.posterior(ppgen.build("independent", ds), ds)
    m = ppgen.build("vae", ds, latent=2, hidden=[8])
    with pytest.raises(ValueError, match="method"):
        ppgen.posterior(m, ds, method="hmc")
    with pytest.raises(ValueError, match="shape"):
        ppgen.posterior(m, ds.data.reshape(4, -1))
    p = PPCA.random(3, 1, 0.5, seed=0)
    with pytest.raises(ValueError, match="observation_scale"):
        ppgen.posterior(p.implicit(), p.sample(2, seed=0), method="nuts", num_samples=2)
    with pytest.raises(ValueError, match="does not sample"):
        ppgen.posterior(p.implicit(), p.sample(2, seed=0), method="guide",
                        observation_scale=0.5)


def test_cli_fit_and_inspect(tmp_path, capsys):
    """``ppgen fit vae ... --objective renyi`` then ``ppgen inspect RUN --data digits``."""
    from ppgen.cli import main

    run = tmp_path / "run"
    assert main(["fit", "vae", "--data", "digits", "--steps", "10", "--batch-size", "50",
                 "--out", str(run), "--no-progress", "--model.latent=2", "--model.hidden=16",
                 "--objective", "renyi", "--objective.num_particles=2"]) == 0
    assert "iwae-1000" in capsys.readouterr().out
    assert main(["inspect", str(run), "--data", "digits", "--num-points", "2",
                 "--method", "guide", "--out", str(tmp_path / "inspect")]) == 0
    out = capsys.readouterr().out
    assert "r_hat" in out and "amortization" in out
    assert (tmp_path / "inspect" / "latent_scatter.png").exists()


def test_amortization_gap_reports_its_mc_error_and_reads_a_negative_gap_against_it():
    """A guide richer than q*'s diagonal Gaussian (here the exact, correlated posterior) makes
    the amortization gap negative far beyond its Monte Carlo error: flagged as a problem. A gap
    whose negative mean lies within its error is called noise."""
    import pyro
    import pyro.distributions as dist

    from ppgen.inference.posterior import AmortizationGap

    p = PPCA.random(3, 2, 0.5, seed=5)

    def exact_guide(x=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(p.posterior_mean(x), p.posterior_cov()))

    m = ppgen.from_pyro(p.model, exact_guide, event_shape=(p.d,), likelihood="bound")
    x = p.sample(6, seed=1)
    gap = amortization_gap(m, x, num_particles=400, steps=200, seed=0)
    mc = gap.mc_stderr("amortization")
    assert mc is not None and 0 < mc < 0.05
    assert float(gap.amortization.mean()) < -5 * mc
    flags = gap.flags()
    assert len(flags) == 1 and flags[0].startswith("WARNING: the amortization gap is negative")
    assert "richer" in flags[0] and flags[0] in str(gap) and " ± " in str(gap)
    # the exact posterior as the guide: its ELBO is log p(x) for every draw (no MC error)
    assert float(gap.elbo_amortized_var.max()) < 1e-12
    # within noise: a negative mean smaller than its error
    n = 4
    zeros = torch.zeros(n, dtype=torch.float64)
    noisy = AmortizationGap(zeros, zeros + 0.01, zeros, zeros + 0.01, zeros + 0.01,
                            zeros + 0.01)
    assert noisy.flags() == [
        "the amortization gap is negative (-0.0100 nats) but within 3 Monte Carlo standard "
        "errors (0.0707): noise, read it as 0"
    ]
    # without the variances (a gap built by hand) nothing is said about noise
    bare = AmortizationGap(zeros, zeros + 0.01, zeros)
    assert bare.mc_stderr("amortization") is None and bare.flags()[0].startswith("WARNING")
    assert " ± " not in str(bare)


def test_inspect_old_names_still_resolve_with_a_deprecation_warning():
    """``inspect`` moved to ``ppgen.reports.inspect_report`` (inference never draws); the old
    name, documented before, still resolves."""
    import ppgen.inference.posterior as post
    from ppgen import reports

    with pytest.warns(DeprecationWarning, match="ppgen.reports.inspect_report"):
        from ppgen.inference.posterior import inspect
    assert inspect is reports.inspect_report
    with pytest.warns(DeprecationWarning, match="InspectReport"):
        assert post.InspectReport is reports.InspectReport
    with pytest.raises(AttributeError):
        post.no_such_name  # noqa: B018
