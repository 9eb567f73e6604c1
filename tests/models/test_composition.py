"""Families compose: a conditional MADE as a VAE decoder (ppgen/models/autoregressive/decoder.py,
``VAE(decoder="made")``) and a learned flow prior over a GAN's latent (``GAN(prior="flow")``).
The flow as a VAE prior/posterior is tested in tests/models/test_vae.py."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyro
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pyro import poutine
from scipy import stats

import ppgen
from ppgen.models.autoregressive.decoder import MADEDecoder
from ppgen.models.gan import GAN
from ppgen.models.vae import VAE


def _perturb(module: torch.nn.Module, scale: float, seed: int) -> None:
    """Random weights of a visible size, so the checks do not pass by a near-uniform model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _all_points(d: int, levels: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(levels), repeat=d)), dtype=torch.float64)


@settings(max_examples=12, deadline=None)
@given(d=st.integers(1, 5), levels=st.integers(2, 3), c=st.integers(1, 3),
       seed=st.integers(0, 2**16))
@example(d=4, levels=2, c=2, seed=9897)  # logits above 20: F.softplus's cut-off was 1e-10 off
def test_made_decoder_normalizes_for_every_context(d, levels, c, seed):
    """sum_x p(x | c) = 1 exactly over all levels^d points, for several contexts: fails if a
    mask lets a conditional see its own or a later dimension."""
    if levels**d > 250:
        d = 3
    kind = "binary" if levels == 2 else "discrete"
    dec = MADEDecoder((d,), kind, None if kind == "binary" else levels, (8, 8), c).double()
    _perturb(dec, 1.0, seed)
    contexts = torch.randn(4, c, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)
    xs = _all_points(d, levels)  # (M, d)
    lp = dec(contexts[:, None, :]).log_prob(xs[None])  # (4, M): contexts broadcast over points
    assert lp.shape == (4, len(xs))
    total = torch.logsumexp(lp, dim=1)
    assert torch.allclose(total, torch.zeros(4, dtype=torch.float64), atol=1e-10), total
    # and the first conditional depends on the context (the skip connection)
    first = dec.conditionals(xs[:1].expand(4, d), contexts)[:, 0]
    assert not torch.allclose(first[0], first[1])


def test_made_decoder_samples_follow_its_probabilities():
    """A chi-square test of 6000 draws of p(x | c) against the exact probabilities of all 3^3
    points (false-alarm rate 1e-3; a draw from the wrong conditional fails it)."""
    dec = MADEDecoder((3,), "discrete", 3, (16,), 2).double()
    _perturb(dec, 1.0, 1)
    c = torch.tensor([0.3, -1.2], dtype=torch.float64)
    xs = _all_points(3, 3)
    probs = dec(c).log_prob(xs).exp().detach()
    draws = dec(c.expand(6000, 2)).sample(generator=torch.Generator().manual_seed(0))
    index = (draws * torch.tensor([9.0, 3.0, 1.0], dtype=draws.dtype)).sum(-1).long()
    counts = torch.bincount(index, minlength=27).double()
    p_value = stats.chisquare(counts.numpy(), (6000 * probs).numpy()).pvalue
    assert p_value > 1e-3, p_value


def test_vae_with_a_made_decoder_has_a_valid_bound():
    """A 1-D latent VAE with a MADE decoder on 4 binary dims: log p(x) = log int p(z) p(x|z) dz by
    quadrature for all 16 points (they sum to one), and the ELBO (mean of 4000 draws) stays
    below it while IWAE-2000 closes most of the gap. The guide is N(0, 1.31^2) for every x,
    wider than the prior, so importance weights are bounded and IWAE concentrates."""
    m = VAE(event_shape=(1, 2, 2), kind="binary", latent=1, hidden=[8], decoder="made").double()
    _perturb(m, 0.8, 3)
    with torch.no_grad():
        m.encoder[-1].weight.zero_()
        m.encoder[-1].bias.copy_(torch.tensor([0.0, 1.0]))  # loc 0, scale softplus(1) = 1.31
    xs = _all_points(4, 2).reshape(16, 1, 2, 2)
    z = torch.linspace(-10, 10, 8001, dtype=torch.float64)[:, None]  # (G, 1)
    log_prior = -0.5 * z[:, 0] ** 2 - 0.5 * math.log(2 * math.pi)
    with torch.no_grad():
        log_lik = m.decode(z[:, None, :]).log_prob(xs[None])  # (G, 16)
    w = torch.full_like(z[:, 0], float(z[1, 0] - z[0, 0]))  # trapezoid weights
    w[0] = w[-1] = w[0] / 2
    log_p = torch.logsumexp(log_lik + (log_prior + w.log())[:, None], dim=0)  # (16,)
    assert abs(float(torch.logsumexp(log_p, 0))) < 1e-8, "p(x) sums to one over all x"
    with torch.no_grad():
        elbo = torch.stack([m.elbo(xs) for _ in range(4000)])  # (S, 16)
    mean, se = elbo.mean(0), elbo.std(0) / math.sqrt(len(elbo))
    assert (mean <= log_p + 4 * se).all(), (mean - log_p)
    assert (mean < log_p - 1e-3).any(), "a strictly positive gap somewhere"
    iwae = ppgen.evaluate(m, xs, estimator="iwae", num_particles=2000, seed=0).per_example
    # IWAE-2000's per-point Monte Carlo error here has a standard deviation of about 0.017
    # nats (spread of the errors over the 16 points in one run): each point within 0.1 (6 sd),
    # the mean of 16 within 0.02
    err = iwae - log_p
    assert err.abs().max() < 0.1 and err.mean().abs() < 0.02 and (iwae >= mean).all(), err
    sample = m.sample(5, seed=0)
    assert sample.shape == (5, 1, 2, 2) and set(sample.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("dataset", ["digits", "digits-binary", "moons"])
def test_vae_made_decoder_runs_the_protocol(dataset):
    ds = ppgen.datasets.load(dataset, "val")
    m = ppgen.build("vae", ds, latent=2, hidden=[16], decoder="made")
    x = ds.data[:5]
    with pyro.plate("particles", 3, dim=-2):  # the particles broadcast (IWAE, AIS)
        guide = poutine.trace(m.guide).get_trace(x)
        model = poutine.trace(poutine.replay(m.model, trace=guide)).get_trace(x)
    model.compute_log_prob()
    assert model.nodes["x"]["log_prob"].shape == (3, 5)
    loss = -m.elbo(x).mean()
    loss.backward()
    assert all(p.grad is not None for p in m.decoder.parameters())
    assert m.sample(3, seed=0).shape == (3, *ds.event_shape)


def test_gan_flow_prior_density_and_sampler_agree():
    """The learned prior over a GAN's latent (latent = 1): its density integrates to one, its
    sampler's draws follow that density (Kolmogorov-Smirnov against the CDF from quadrature,
    false-alarm rate 1e-3) and are far from N(0, 1) (so the test has power), the model's "z"
    site scores with it, and the adversarial generator loss trains it."""
    ds = ppgen.datasets.load("moons", "val")
    gan = GAN(**ds.spec(), latent=1, hidden=[8], prior="flow").double()
    _perturb(gan.prior_flow, 0.7, 5)
    prior = gan.prior()
    z = torch.linspace(-30, 30, 60001, dtype=torch.float64)
    density = prior.log_prob(z[:, None]).exp().detach()
    assert abs(float(torch.trapezoid(density, z)) - 1) < 1e-4
    cdf = torch.cat([density.new_zeros(1), torch.cumulative_trapezoid(density, z)])
    draws = gan.sample_latent(3000, generator=torch.Generator().manual_seed(0))[:, 0].detach()
    ks = stats.kstest(draws.numpy(), lambda v: np.interp(v, z.numpy(), cdf.numpy()))
    assert ks.pvalue > 1e-3, ks
    assert stats.kstest(draws.numpy(), "norm").pvalue < 1e-3, "the prior is not N(0, 1)"
    trace = poutine.trace(gan.model).get_trace(ds.data[:4].double())
    site = trace.nodes["z"]
    assert torch.allclose(site["fn"].log_prob(site["value"]), prior.log_prob(site["value"]))
    obj = ppgen.inference.objectives.make_objective("adversarial", gan)
    obj.param_groups(gan)
    obj.loss(gan, ds.data[:8].double(), None, "generator", 0).backward()
    # (with one latent dim the flow's conditionals are its output biases alone)
    grads = [p.grad for p in gan.prior_flow.parameters() if p.grad is not None]
    assert grads and all(float(g.abs().sum()) > 0 for g in grads)
