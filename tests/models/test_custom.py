"""User-defined Pyro programs through ppgen.from_pyro: fit, evaluate, save, Pyro tools."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

import ppgen
from ppgen import checkpoint as ckpt


def gmm_model(x=None):
    """A 1-D mixture of two Gaussians, written by a user, marginalized over the assignments."""
    weights = pyro.param("weights", torch.tensor([0.5, 0.5]), constraint=constraints.simplex)
    locs = pyro.param("locs", torch.tensor([-0.5, 0.5]))
    scales = pyro.param("scales", torch.tensor([1.0, 1.0]), constraint=constraints.positive)
    mix = dist.MixtureSameFamily(dist.Categorical(weights), dist.Normal(locs, scales))
    with pyro.plate("data", 1 if x is None else x.shape[0]):
        return pyro.sample("x", dist.Independent(mix.expand([1]), 1), obs=x)


def test_user_gaussian_mixture_recovers_its_parameters():
    g = torch.Generator().manual_seed(0)
    n = 4000
    z = torch.rand(n, generator=g) < 0.3
    x = torch.where(
        z, -2.0 + 0.5 * torch.randn(n, generator=g), 1.5 + 0.8 * torch.randn(n, generator=g)
    )
    data = ppgen.datasets.Dataset("user-gmm", x[:, None], "continuous")
    m = ppgen.from_pyro(gmm_model, event_shape=(1,), likelihood="exact", example=data.data[:2])
    assert sorted(n for n, _ in m.named_parameters()) == [
        "user_params.locs",
        "user_params.scales",
        "user_params.weights",
    ]
    ppgen.fit(m, data, steps=600, batch_size=1000, lr=0.05, progress=False, device="cpu")
    with torch.no_grad():
        trace = pyro.poutine.trace(m.model).get_trace(data.data[:1])
        mix = trace.nodes["x"]["fn"].base_dist
        weights = mix.mixture_distribution.probs.squeeze()
        locs = mix.component_distribution.loc.squeeze()
        scales = mix.component_distribution.scale.squeeze()
    order = locs.argsort()
    assert torch.allclose(locs[order], torch.tensor([-2.0, 1.5]), atol=0.1), locs
    assert torch.allclose(scales[order], torch.tensor([0.5, 0.8]), atol=0.1), scales
    assert torch.allclose(weights[order], torch.tensor([0.3, 0.7]), atol=0.05), weights
    assert len(pyro.get_param_store()) == 0, "user params never reach the global store"
    ev = ppgen.evaluate(m, data)
    assert ev.kind == "exact"


def test_wrapped_program_checkpoints_through_load_into(tmp_path):
    m = ppgen.from_pyro(gmm_model, event_shape=(1,), likelihood="exact", example=torch.zeros(2, 1))
    with torch.no_grad():
        m.user_params["locs"].add_(3.0)
    ppgen.save(m, tmp_path / "m.pt")
    with pytest.raises(ckpt.CheckpointError, match="model_class"):
        ppgen.load(tmp_path / "m.pt")
    fresh = ppgen.from_pyro(
        gmm_model, event_shape=(1,), likelihood="exact", example=torch.zeros(2, 1)
    )
    ckpt.load_into(fresh, tmp_path / "m.pt")
    x = torch.randn(5, 1)
    assert torch.equal(fresh.log_prob(x), m.log_prob(x))
    assert m.sample(7, seed=0).shape == (7, 1)


def test_bound_needs_a_guide():
    with pytest.raises(ValueError, match="guide"):
        ppgen.from_pyro(gmm_model, event_shape=(1,), likelihood="bound")
