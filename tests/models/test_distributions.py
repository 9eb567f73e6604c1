"""ppgen/models/distributions.py: the discretized logistic mixture shared by PixelCNN and the VAE
(normalization over every level, the edge bins, agreement with a direct computation in the
regimes where the VAE's former copy lost precision), its sampler, and the helpers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from ppgen.models.autoregressive.pixelcnn import DiscretizedLogisticMixture as PixelCNNAlias
from ppgen.models.distributions import (
    LOG_SCALE_MAX,
    LOG_SCALE_MIN,
    DiscretizedLogisticMixture,
    inverse_cdf,
    softplus,
)
from ppgen.models.vae import DiscretizedLogisticMixture as VAEAlias

F64 = torch.float64


def _params(seed: int, batch: int, k: int, loc_scale: float, shift: float, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, k, generator=g, dtype=dtype)
    loc = loc_scale * torch.randn(batch, k, generator=g, dtype=dtype)
    log_scale = torch.randn(batch, k, generator=g, dtype=dtype) + shift
    return logits, loc, log_scale


def _direct_log_prob(logits, loc, log_scale, levels, value):
    """log P(value) from the definition, in float64: sum_k pi_k (sigma(a_k) - sigma(b_k)), the
    edge bins sigma(a) and 1 - sigma(b); each difference is taken on the side where it does not
    cancel (sigma(-b) - sigma(-a) when a > 0)."""
    logits, loc, log_scale, value = (t.to(F64) for t in (logits, loc, log_scale, value))
    half = 1.0 / (levels - 1)
    y = (2 * half * value - 1)[..., None]
    s = log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX).exp()
    a, b = (y + half - loc) / s, (y - half - loc) / s
    mid = torch.where(a > 0, torch.sigmoid(-b) - torch.sigmoid(-a),
                      torch.sigmoid(a) - torch.sigmoid(b))
    level = value[..., None]
    p = torch.where(level <= 0, torch.sigmoid(a),
                    torch.where(level >= levels - 1, torch.sigmoid(-b), mid))
    return torch.log((p * torch.softmax(logits, -1)).sum(-1))


def test_one_class_under_its_old_names():
    """PixelCNN's and the VAE's modules re-export the one shared class (no drifted copies)."""
    assert PixelCNNAlias is DiscretizedLogisticMixture
    assert VAEAlias is DiscretizedLogisticMixture


@settings(max_examples=25, deadline=None)
@given(
    levels=st.sampled_from([2, 3, 17, 256]),
    k=st.integers(1, 4),
    loc_scale=st.sampled_from([0.3, 1.0, 5.0]),
    shift=st.sampled_from([-9.0, -4.0, -1.0, 2.0, 8.0]),
    seed=st.integers(0, 2**16),
)
def test_levels_sum_to_one_and_match_the_definition(levels, k, loc_scale, shift, seed):
    """P sums to one over all L levels (atol 1e-12 in float64) for any parameters, including
    clamped scales and locations far outside [-1, 1]; every level's log P equals the direct
    computation wherever that is representable."""
    params = _params(seed, 3, k, loc_scale, shift)
    d = DiscretizedLogisticMixture(*params, levels)
    values = torch.arange(levels, dtype=F64)[:, None].expand(levels, 3)
    lp = d.log_prob(values)
    assert torch.isfinite(lp).all()
    assert torch.allclose(lp.logsumexp(0), torch.zeros(3, dtype=F64), atol=1e-12)
    ref = _direct_log_prob(*params, levels, values)
    ok = ref > -600  # float64 sigmoids underflow further out; the sum above covers those bins
    assert torch.allclose(lp[ok], ref[ok], rtol=0, atol=1e-9 * (1 + ref[ok].abs().max()))


@pytest.mark.parametrize("levels", [2, 5, 256])
def test_edge_bins_take_the_tails(levels):
    """Level 0 is P(Y < -1 + delta) and level L-1 is P(Y > 1 - delta) of the mixture, so no mass
    falls outside the levels; for L = 2 the two edges are the whole line split at 0."""
    logits = torch.tensor([0.2, -0.4], dtype=F64)
    loc = torch.tensor([-0.9, 0.7], dtype=F64)
    log_scale = torch.tensor([-1.0, -2.5], dtype=F64)
    d = DiscretizedLogisticMixture(logits, loc, log_scale, levels)
    pi, s, half = logits.softmax(-1), log_scale.exp(), 1.0 / (levels - 1)
    first = (pi * torch.sigmoid((-1 + half - loc) / s)).sum()
    last = (pi * torch.sigmoid(-(1 - half - loc) / s)).sum()
    assert float(d.log_prob(torch.tensor(0.0, dtype=F64)).exp()) == pytest.approx(float(first),
                                                                                  rel=1e-12)
    top = torch.tensor(float(levels - 1), dtype=F64)
    assert float(d.log_prob(top).exp()) == pytest.approx(float(last), rel=1e-12)


@pytest.mark.parametrize(
    ("regime", "shift"),
    [("typical scales", -3.0), ("bins narrow against the scale", 4.0),
     ("bins deep in a tail", -4.0)],
)
def test_float32_keeps_its_precision_where_the_former_vae_copy_lost_it(regime, shift):
    """In float32, every level's log P is within 1e-4 nats of the float64 definition. The VAE's
    former copy, log(1 - e^d) with d = log sigma(b) - log sigma(a) clamped below -1e-12, was off by
    up to 9.6 nats (typical scales: a tail bin floored at 1e-12 sigma(a)), 0.023 nats (narrow
    bins: d formed by subtraction) and 61 nats (deep tails) on these draws."""
    levels, n = 256, 4096
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, 5, generator=g)
    loc = torch.tanh(torch.randn(n, 5, generator=g))
    log_scale = (torch.randn(n, 5, generator=g) + shift).clamp(min=LOG_SCALE_MIN)
    x = torch.randint(0, levels, (n,), generator=g).float()
    lp = DiscretizedLogisticMixture(logits, loc, log_scale, levels).log_prob(x).double()
    ref = _direct_log_prob(logits, loc, log_scale, levels, x)
    assert torch.isfinite(ref).all()
    err = float((lp - ref).abs().max())
    assert err < 1e-4, (regime, err)


def test_log_scale_is_clamped_in_log_prob_and_in_draws():
    """Scales beyond [-7, 7] act as the clamp's value, for scoring and sampling alike."""
    logits, loc = torch.zeros(1, 1, dtype=F64), torch.zeros(1, 1, dtype=F64)
    x = torch.arange(6, dtype=F64)[:, None]
    for outside, edge in [(-20.0, LOG_SCALE_MIN), (20.0, LOG_SCALE_MAX)]:
        a = DiscretizedLogisticMixture(logits, loc, torch.full((1, 1), outside, dtype=F64), 6)
        b = DiscretizedLogisticMixture(logits, loc, torch.full((1, 1), edge, dtype=F64), 6)
        assert torch.equal(a.log_prob(x), b.log_prob(x))
        u = torch.rand(1, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
        assert torch.equal(a.draw(u), b.draw(u))


def test_mean_is_the_expected_level():
    params = _params(3, 4, 3, 1.0, -2.0)
    d = DiscretizedLogisticMixture(*params, 9)
    values = torch.arange(9, dtype=F64)[:, None].expand(9, 4)
    p = d.log_prob(values).exp()
    assert torch.allclose(d.mean, (p * values).sum(0), atol=1e-12)


def test_samples_follow_the_probabilities_and_the_generator():
    """Chi-square goodness of fit of 20000 draws on 7 levels (false alarm 1e-3); a seeded
    generator gives the same draws twice and leaves torch's global generator alone."""
    d = DiscretizedLogisticMixture(torch.tensor([0.4, -0.3], dtype=F64),
                                   torch.tensor([-0.5, 0.6], dtype=F64),
                                   torch.tensor([-1.2, -1.8], dtype=F64), levels=7)
    state = torch.get_rng_state()
    x = d.sample((20000,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(x, d.sample((20000,), generator=torch.Generator().manual_seed(0)))
    counts = torch.bincount(x.long(), minlength=7).double()
    p = d.log_prob(torch.arange(7, dtype=F64)).exp()
    chi2 = float(((counts - 20000 * p) ** 2 / (20000 * p)).sum())
    assert chi2 < stats.chi2.ppf(1 - 1e-3, 6), chi2


def test_expand_keeps_the_parameters_and_the_validation_setting():
    d = DiscretizedLogisticMixture(*_params(0, 1, 2, 1.0, -2.0), 5, validate_args=False)
    e = d.expand(torch.Size([3, 1]))
    assert e.batch_shape == (3, 1) and not e._validate_args
    x = torch.arange(3, dtype=F64)[:, None]
    assert torch.equal(e.log_prob(x), d.log_prob(x))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 6))
def test_inverse_cdf_picks_the_category_whose_interval_holds_u(seed, k):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(50, k, generator=g, dtype=F64)
    u = torch.rand(50, generator=g, dtype=F64)
    j = inverse_cdf(logits, u)
    cdf = logits.softmax(-1).cumsum(-1)
    below = torch.where(j > 0, cdf.gather(-1, (j - 1).clamp(min=0)[:, None])[:, 0], 0.0)
    assert ((below <= u) & ((u < cdf.gather(-1, j[:, None])[:, 0]) | (j == k - 1))).all()


def test_softplus_is_exact_where_torch_rounds():
    x = torch.tensor([-50.0, 0.0, 25.0, 40.0], dtype=F64)
    exact = torch.log1p(torch.exp(-x.abs())) + x.clamp(min=0)
    assert torch.allclose(softplus(x), exact, rtol=1e-15, atol=0)
