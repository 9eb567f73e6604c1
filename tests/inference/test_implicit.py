"""Reading an implicit model through its Pyro program (``ppgen/inference/implicit.py``): the
Delta's location under every wrapper Pyro puts around it, the observed and generated halves of
one trace, the Gaussian smoothing AIS and NUTS use (exactly ``Normal(g(z), s)``, a no-op on an
explicit model), the observation scale, and the errors that name the fix."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import MaskedDistribution

import ppgen
from ppgen.inference.implicit import (
    ImplicitSiteError,
    delta_location,
    observed_and_generated,
    resolve_observation_scale,
    smooth_delta,
)

W = torch.tensor([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]], dtype=torch.float64)  # G(z) = W z


def _implicit_model(x=None):
    with pyro.plate("data", 1 if x is None else x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
        return pyro.sample("x", dist.Delta(z @ W.T, event_dim=1), obs=x)


def _explicit_model(x=None):
    with pyro.plate("data", 1 if x is None else x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
        return pyro.sample("x", dist.Normal(z @ W.T, 0.3).to_event(1), obs=x)


def test_delta_location_sees_through_every_wrapper():
    v = torch.randn(4, 3)
    cases = [  # (distribution, its location at full shape)
        (dist.Delta(v, event_dim=1), v),
        (dist.Delta(v).to_event(1), v),
        (MaskedDistribution(dist.Delta(v, event_dim=1), torch.tensor([True, False, True, True])),
         v),
        (dist.Delta(v[:1], event_dim=1).expand([4]), v[:1].expand(4, 3)),
        (dist.Delta(v[0], event_dim=1).expand([5, 4]).to_event(1), v[0].expand(5, 4, 3)),
    ]
    for fn, want in cases:
        got = delta_location(fn)
        assert got.shape == fn.batch_shape + fn.event_shape, fn
        assert torch.equal(got, want), fn
    for fn in (dist.Normal(v, 1.0).to_event(1), dist.Normal(v, 1.0)):
        with pytest.raises(ImplicitSiteError, match="not a Delta"):
            delta_location(fn)


def test_observed_and_generated_are_the_data_and_a_model_sample():
    m = ppgen.from_pyro(_implicit_model, event_shape=(3,), likelihood="none")
    x = torch.randn(6, 3, dtype=torch.float64)
    observed, generated = observed_and_generated(m, x)
    assert torch.equal(observed, x) and generated.shape == (6, 3)
    # every generated point lies in the column space of W: G(z) = W z for some z
    z = torch.linalg.lstsq(W, generated.T).solution
    assert torch.allclose(W @ z, generated.T, atol=1e-10)

    def unobserved(x=None):
        with pyro.plate("data", 1 if x is None else x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Delta(z, event_dim=1))

    def elsewhere(x=None):
        with pyro.plate("data", 1 if x is None else x.shape[0]):
            pyro.sample("y", dist.Normal(torch.zeros(3), 1.0).to_event(1), obs=x)

    for program in (unobserved, elsewhere):
        bad = ppgen.from_pyro(program, event_shape=(3,), likelihood="none")
        with pytest.raises(ImplicitSiteError, match="no observed sample site 'x'"):
            observed_and_generated(bad, x.float())


def test_smoothing_makes_the_delta_a_gaussian_of_scale_s():
    """Under smooth_delta, the implicit model's 'x' site scores exactly Normal(W z, s) at the
    traced z, and the explicit model's trace is untouched."""
    x = torch.randn(5, 3, dtype=torch.float64)
    s = 0.7
    tr = poutine.trace(smooth_delta(_implicit_model, s)).get_trace(x)
    z = tr.nodes["z"]["value"]
    want = dist.Normal(z @ W.T, s).to_event(1).log_prob(x)
    assert torch.allclose(tr.nodes["x"]["fn"].log_prob(x), want, atol=1e-12)
    tr.compute_log_prob()
    assert torch.allclose(tr.nodes["x"]["log_prob"], want, atol=1e-12)

    with poutine.trace() as plain:
        torch.manual_seed(0)
        _explicit_model(x)
    with poutine.trace() as smoothed:
        torch.manual_seed(0)
        smooth_delta(_explicit_model, s)(x)
    a, b = plain.trace.nodes["x"], smoothed.trace.nodes["x"]
    assert torch.equal(a["fn"].log_prob(x), b["fn"].log_prob(x))  # a no-op on explicit models

    with pytest.raises(ValueError, match="observation_scale"):
        poutine.trace(smooth_delta(_implicit_model, None)).get_trace(x)


def test_resolve_observation_scale():
    m = ppgen.from_pyro(_implicit_model, event_shape=(3,), likelihood="none")
    assert resolve_observation_scale(m, 0.25) == 0.25
    assert resolve_observation_scale(m, None) == m.observation_scale
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="observation_scale must be positive"):
            resolve_observation_scale(m, bad)
