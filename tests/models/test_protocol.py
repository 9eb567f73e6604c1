"""One protocol test, parametrized over every registered family and the data kinds.

A family that cannot model a kind of data must refuse it at build time with a ValueError; all
others must pass every check here. No family gets a special case.
"""

from __future__ import annotations

import dataclasses

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive, Trace_ELBO

import ppgen

DATASETS = ["digits", "digits-binary", "moons"]
# Small hyperparameters, by shared name, so every family builds fast.
SMALL = {"hidden": [16], "transforms": 2, "latent": 2, "timesteps": 10, "components": 2}


def _small_hparams(cls):
    names = {f.name for f in dataclasses.fields(cls.Config)}
    return {k: v for k, v in SMALL.items() if k in names}


@pytest.fixture(scope="module")
def data():
    return {name: ppgen.datasets.load(name, "val").subset(16) for name in DATASETS}


def _build(family, ds):
    cls = ppgen.models.get(family)
    try:
        return ppgen.build(family, ds, **_small_hparams(cls))
    except ValueError as e:
        pytest.skip(f"{family} refuses {ds.name} data with a clear error: {e}")


CASES = [(f, d) for f in ppgen.models.names() for d in DATASETS]


@pytest.mark.parametrize(("family", "dataset"), CASES)
def test_protocol(family, dataset, data, tmp_path, device):
    ds = data[dataset]
    m = _build(family, ds).to(device)
    name = f"{family}/{dataset}"
    x = ds.data.to(device)
    n = x.shape[0]
    assert m.likelihood in ("exact", "bound", "none"), name
    assert tuple(m.event_shape) == ds.event_shape, name
    assert family in repr(m).lower() or type(m).__name__ in repr(m), name

    # sample: shape and support
    s = m.sample(5, seed=0)
    assert s.shape == (5, *ds.event_shape), name
    assert torch.isfinite(s).all(), name
    if ds.kind != "continuous":
        assert torch.equal(s, s.round()) and s.min() >= 0 and s.max() <= ds.levels - 1, name
    assert torch.equal(s, m.sample(5, seed=0)), f"{name}: seeded sampling is reproducible"

    # likelihood through ppgen.evaluate, labelled
    ev = ppgen.evaluate(m, x)
    assert ev.per_example.shape == (n,), name
    assert torch.isfinite(ev.per_example).all(), name
    assert ev.kind in ("exact", "lower_bound", "estimate"), name
    if m.likelihood == "exact" and not m.dequantizes:
        assert ev.kind == "exact", name
    if m.likelihood != "exact":
        assert ev.kind != "exact", f"{name}: only exact families may report exact"

    # one training step through the shared trainer gives every parameter a gradient
    m.train()
    obj = ppgen.inference.make_objective(m.default_objective, m)
    for group, params in obj.param_groups(m).items():
        for p in params:
            p.grad = None
        loss = obj.loss(m, x, None, group, 0)
        assert torch.isfinite(loss), name
        loss.backward()
        missing = [i for i, p in enumerate(params) if p.requires_grad and p.grad is None]
        assert not missing, f"{name}: group {group} has parameters without gradient"

    # save/load round trip reproduces the likelihood (same random numbers)
    m.eval()
    ppgen.save(m, tmp_path / "m.pt")
    m2 = ppgen.load(tmp_path / "m.pt", map_location=device)
    with torch.random.fork_rng():
        a = ppgen.evaluate(m, x, seed=1).per_example
    with torch.random.fork_rng():
        b = ppgen.evaluate(m2, x, seed=1).per_example
    assert torch.equal(a, b), name

    # Pyro's own tools run on model/guide
    with torch.no_grad():
        tr = poutine.trace(m.model).get_trace(x)
        assert tr.nodes["x"]["is_observed"], name
        pred = Predictive(m.model, num_samples=2)()
        assert "x" in pred, name
        if m.likelihood != "none":
            elbo = Trace_ELBO().loss(m.model, m.guide, x)
            assert torch.isfinite(torch.tensor(elbo)), name
    assert len(pyro.get_param_store()) == 0, f"{name}: parameters leaked into the param store"


def test_exact_families_agree_with_their_trace(data):
    """For exact families without latents, the trace's log_prob_sum is the model's log_prob."""
    for family in ppgen.models.names():
        cls = ppgen.models.get(family)
        if cls.likelihood != "exact":
            continue
        for dataset, ds in data.items():
            try:
                m = ppgen.build(family, ds, **_small_hparams(cls))
            except ValueError:
                continue
            if m.dequantizes:
                continue
            m.eval()
            with torch.no_grad():
                tr = poutine.trace(m.model).get_trace(ds.data)
                assert torch.allclose(tr.log_prob_sum(), m.log_prob(ds.data).sum(), rtol=1e-5), (
                    f"{family}/{dataset}"
                )
