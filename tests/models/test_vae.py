"""The VAE family: exact decoders, particle broadcasting, closed-form KL, options, errors."""

from __future__ import annotations

import itertools

import pyro
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro import poutine
from pyro.infer import Predictive, Trace_ELBO
from scipy import stats

import ppgen
from ppgen.models.vae import VAE, DiscretizedLogisticMixture


@pytest.fixture(scope="module")
def digits():
    return ppgen.datasets.load("digits", "val").subset(32)


def _vae(event_shape, kind, levels=None, **kw):
    kw.setdefault("hidden", [8])
    kw.setdefault("latent", 2)
    return VAE(event_shape=event_shape, kind=kind, levels=levels, **kw).double()


@settings(max_examples=15, deadline=None)
@given(levels=st.integers(2, 12), k=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_discretized_logistic_mixture_normalizes(levels, k, seed):
    """The masses of all levels sum to one (the edge levels take the tails), and mean/sample
    agree with them."""
    g = torch.Generator().manual_seed(seed)
    shape = (3, k)
    d = DiscretizedLogisticMixture(
        torch.randn(shape, generator=g, dtype=torch.float64),
        torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1,
        torch.randn(shape, generator=g, dtype=torch.float64) - 2,
        levels,
    )
    values = torch.arange(levels, dtype=torch.float64)[:, None].expand(levels, 3)
    p = d.log_prob(values).exp()
    assert torch.allclose(p.sum(0), torch.ones(3, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(d.mean, (p * values).sum(0), atol=1e-10)


def test_discretized_logistic_mixture_samples_match_log_prob():
    """Chi-square goodness of fit of 20000 draws (false-alarm rate 1e-3)."""
    levels = 6
    d = DiscretizedLogisticMixture(torch.tensor([[0.3, -0.5]]), torch.tensor([[-0.4, 0.5]]),
                                   torch.tensor([[-1.5, -2.0]]), levels)
    x = d.sample((20000,), generator=torch.Generator().manual_seed(0))[:, 0]
    counts = torch.bincount(x.long(), minlength=levels).double()
    p = d.log_prob(torch.arange(levels, dtype=torch.float32)[:, None]).exp()[:, 0].double()
    chi2 = float(((counts - 20000 * p) ** 2 / (20000 * p)).sum())
    assert chi2 < stats.chi2.ppf(1 - 1e-3, levels - 1), chi2


@pytest.mark.parametrize("decoder", ["binomial", "categorical", "logistic_mixture"])
def test_discrete_decoders_normalize_over_every_vector(decoder):
    """p(x | z) sums to one over all 3^3 vectors of a 3-dim, 3-level event."""
    m = _vae((3,), "discrete", 3, decoder=decoder)
    z = torch.randn(4, 2, dtype=torch.float64)
    px = m.decode(z)
    grid = torch.tensor(list(itertools.product(range(3), repeat=3)), dtype=torch.float64)
    lp = px.log_prob(grid[:, None, :])  # (27, 4)
    assert torch.allclose(lp.exp().sum(0), torch.ones(4, dtype=torch.float64), atol=1e-10)


def test_bernoulli_decoder_normalizes():
    m = _vae((2, 2), "binary")
    px = m.decode(torch.randn(3, 2, dtype=torch.float64))
    grid = torch.tensor(list(itertools.product(range(2), repeat=4)), dtype=torch.float64)
    lp = px.log_prob(grid.reshape(16, 1, 2, 2))
    assert torch.allclose(lp.exp().sum(0), torch.ones(3, dtype=torch.float64), atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(
    net=st.sampled_from(["mlp", "conv"]),
    k=st.integers(1, 3),
    n=st.integers(1, 4),
    conditional=st.booleans(),
    decoder=st.sampled_from(["binomial", "categorical", "logistic_mixture"]),
)
def test_particles_broadcast(net, k, n, conditional, decoder):
    """z with leading particle dims (K, N, L) decodes like each particle alone."""
    m = _vae((1, 4, 4), "discrete", 5, net=net, decoder=decoder,
             context_classes=3 if conditional else None)
    c = torch.tensor([0, 1, 2, 1])[:n] if conditional else None
    z = torch.randn(k, n, 2, dtype=torch.float64)
    x = torch.randint(0, 5, (n, 1, 4, 4)).double()
    px = m.decode(z, c)
    assert px.batch_shape == (k, n) and px.event_shape == (1, 4, 4)
    lp = px.log_prob(x)
    for i in range(k):
        assert torch.allclose(lp[i], m.decode(z[i], c).log_prob(x), atol=1e-10)
    with pyro.plate("particles", k, dim=-2):
        tr = poutine.trace(m.guide).get_trace(x, c)
        mt = poutine.trace(poutine.replay(m.model, trace=tr)).get_trace(x, c)
    assert tr.nodes["z"]["value"].shape == (k, n, 2)
    assert mt.nodes["x"]["fn"].batch_shape == (k, n)


def test_closed_form_kl_and_elbo_agree_with_traces(digits):
    """elbo_parts' KL equals torch's KL(q || p) exactly; its ELBO equals the trace ELBO in
    expectation (paired means over 400 draws within 4 standard errors)."""
    m = ppgen.build("vae", digits, latent=3, hidden=[16]).double()
    x = digits.data[:8].double()
    loc, scale = m.encode(x)
    exact_kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, 1.0)
    )
    torch.manual_seed(0)
    _, kl = m.elbo_parts(x)
    assert torch.allclose(kl, exact_kl, atol=1e-12)
    fast = torch.stack([m.elbo(x) for _ in range(400)])
    traced = torch.stack([super(VAE, m).elbo(x) for _ in range(400)])
    diff = fast.mean(0) - traced.mean(0)
    se = (fast.var(0) / 400 + traced.var(0) / 400).sqrt()
    assert (diff.abs() < 4 * se).all(), (diff, se)


@pytest.mark.parametrize(
    ("dataset", "options"),
    [
        ("digits", {"decoder": "categorical"}),
        ("digits", {"decoder": "logistic_mixture", "net": "conv", "hidden": [8, 8]}),
        ("digits", {"prior": "mixture", "components": 3}),
        ("digits", {"context_classes": 10}),
        ("digits-binary", {"net": "conv", "hidden": [4]}),
        ("moons", {"decoder": "gaussian", "prior": "mixture"}),
        ("digits", {"posterior": "iaf", "prior": "flow", "transforms": 2}),
        ("moons", {"posterior": "iaf", "net": "mlp"}),
    ],
)
def test_variants_run_under_pyro_and_ppgen(dataset, options, tmp_path):
    ds = ppgen.datasets.load(dataset, "val").subset(12)
    kw = {"latent": 2, "hidden": [8], **options}
    m = ppgen.build("vae", ds, **kw)
    c = ds.labels if m.conditional else None
    x = ds.data
    name = f"{dataset}/{options}"
    s = m.sample(6, seed=1, context=None if c is None else c[:6])
    assert s.shape == (6, *ds.event_shape), name
    assert torch.equal(s, m.sample(6, seed=1, context=None if c is None else c[:6])), name
    if ds.kind != "continuous":
        assert torch.equal(s, s.round()) and s.min() >= 0 and s.max() <= ds.levels - 1, name
    ev = ppgen.evaluate(m, ds, num_particles=8)
    assert ev.kind == "lower_bound" and torch.isfinite(ev.per_example).all(), name
    with torch.no_grad():
        elbo = m.elbo(x, c).double()
    assert float((ev.per_example - elbo).mean()) > -1.0, name  # IWAE-8 vs a 1-sample ELBO
    with torch.no_grad():
        assert torch.isfinite(torch.tensor(Trace_ELBO().loss(m.model, m.guide, x, c))), name
        pred = Predictive(m.model, num_samples=3)(None, None if c is None else c[:2])
        assert pred["z"].shape[-1] == 2, name
    hist = ppgen.fit(m, ds, steps=3, batch_size=6, progress=False)
    assert hist.steps == 3
    ppgen.save(m, tmp_path / "m.pt")
    m2 = ppgen.load(tmp_path / "m.pt")
    with torch.no_grad():
        torch.manual_seed(0)
        a = m.elbo(x, c)
        torch.manual_seed(0)
        assert torch.equal(a, m2.elbo(x, c)), name


def test_conditional_vae_uses_its_labels(digits):
    m = ppgen.build("vae", digits, latent=2, hidden=[8], context_classes=10)
    assert m.conditional
    with pytest.raises(ValueError, match="conditional"):
        m.sample(3)
    with pytest.raises(ValueError, match="0..9"):
        m.sample(2, context=torch.tensor([0, 10]))
    torch.manual_seed(0)
    a = m.elbo(digits.data[:4], torch.tensor([0, 1, 2, 3]))
    torch.manual_seed(0)
    b = m.elbo(digits.data[:4], torch.tensor([5, 5, 5, 5]))
    assert not torch.allclose(a, b)
    ev = ppgen.evaluate(m, digits, num_particles=4)  # labels from the dataset
    assert ev.per_example.shape == (len(digits),)


def test_bad_configurations_are_refused():
    moons = ppgen.datasets.load("moons", "val")
    digits = ppgen.datasets.load("digits", "val")
    with pytest.raises(ValueError, match="gaussian"):
        ppgen.build("vae", moons, decoder="binomial")
    with pytest.raises(ValueError, match="exact discrete decoder"):
        ppgen.build("vae", digits, decoder="gaussian")
    with pytest.raises(ValueError, match="binary data"):
        ppgen.build("vae", digits, decoder="bernoulli")
    with pytest.raises(ValueError, match="image-shaped"):
        ppgen.build("vae", moons, net="conv")
    with pytest.raises(ValueError, match="divisible by 16"):
        ppgen.build("vae", digits, net="conv", hidden=[4, 4, 4, 4])
    with pytest.raises(ValueError, match="latent"):
        ppgen.build("vae", digits, latent=0)
    with pytest.raises(ValueError, match="hyperparameter"):
        ppgen.build("vae", digits, latents=3)
    m = ppgen.build("vae", digits, latent=2, hidden=[8])
    with pytest.raises(ValueError, match="needs data x"):
        m.guide(None)


def test_config_options_reach_the_trainer():
    ds = ppgen.datasets.load("digits", "val")
    m = ppgen.build("vae", ds, beta=4.0, warmup=10, free_bits=0.1)
    assert m.fit_defaults() == {"objective_options": {"beta": 4.0, "warmup": 10,
                                                      "free_bits": 0.1}}
    assert ppgen.build("vae", ds).fit_defaults() == {}


def test_gaussian_decoder_is_standardized_and_learns_its_variance():
    ds = ppgen.datasets.load("moons", "train")
    m = ppgen.build("vae", ds, latent=2, hidden=[32, 32])
    first_batch = ds.data[ppgen.inference.trainer.batch_indices(len(ds), 128, 0, 0)]
    hist = ppgen.fit(m, ds, steps=300, batch_size=128, lr=3e-3, progress=False)
    assert torch.allclose(m.x_shift, first_batch.mean(0))  # initialize() standardized inputs
    assert torch.allclose(m.x_scale, first_batch.std(0))
    first, last = hist.loss[0], sum(hist.loss[-5:]) / 5
    assert last < first - 0.15, (first, last)
    with torch.no_grad():
        scale = m.decode(m.encode(ds.data[:500])[0]).base_dist.scale.mean(0)
    # the learned decoder noise explains part of the data: its volume is below half the data's
    assert scale.prod() < 0.5 * ds.data.std(0).prod(), scale


def test_sample_refuses_bad_n(digits):
    m = ppgen.build("vae", digits, latent=2, hidden=[8])
    with pytest.raises(ValueError, match="positive"):
        m.sample(0)



@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_iaf_posterior_scores_its_own_draws_exactly(net):
    """The IAF guide's one-pass density of its own draw equals the exact (sequential) density
    of the same point, and Pyro's traces see that density."""
    ds = ppgen.datasets.load("digits", "val").subset(6)
    m = ppgen.build("vae", ds, latent=3, hidden=[8, 8], net=net, posterior="iaf",
                    prior="flow", transforms=2).double()
    with torch.no_grad():  # leave the identity initialization of the flows
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = ds.data.double()
    q = m.approximate_posterior(x)
    z = q.rsample()
    assert torch.allclose(q.log_prob(z), q.log_prob(z.clone()), atol=1e-9)
    tr = poutine.trace(m.guide).get_trace(x)
    tr.compute_log_prob()
    site = tr.nodes["z"]
    assert torch.allclose(site["log_prob"], site["fn"].log_prob(site["value"].clone()),
                          atol=1e-9)
    # the flow prior normalizes: importance sampling from N(0, 2^2 I) (+-10% band)
    g = torch.distributions.Normal(torch.zeros(3, dtype=torch.float64), 2.0)
    u = g.sample((20000,))
    with torch.no_grad():
        w = (m.prior().log_prob(u) - g.log_prob(u).sum(-1)).exp().mean()
    assert 0.9 < float(w) < 1.1, float(w)
