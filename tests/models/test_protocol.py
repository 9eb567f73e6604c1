"""The protocol and the reliability guarantees, one parametrized suite over every family.

Each test is parametrized over ``ppgen.models.names()`` (and, for the protocol itself, the data
kinds), so a new family is covered the day it is registered, with no special case. A family that
cannot model a kind of data must refuse it at build time with a ValueError; all others must pass:

- the protocol: sampling (shape, support, seeded reproducibility), a labelled likelihood through
  ``ppgen.evaluate``, a gradient for every parameter from one training loss, a save/load round
  trip, Pyro's own tools on ``model``/``guide``, exact families agreeing with their trace;
- training (issue 12): exact resume (fit 2N == fit N, stop, resume N, to the bit on CPU,
  including EMA weights, objective state such as a GAN's discriminator, and every optimizer), a
  non-finite loss never written over a good checkpoint, mismatched checkpoints named by their
  first differing config key, no leaks between two models in one process;
- issue 18: one sample entry point (bad counts refused naming ``n``, chunked above the chunk
  size), model size counted exactly from the config, non-finite weights refused naming the
  tensor, labels out of range refused the same way by every conditional family.
"""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive, Trace_ELBO

import ppgen
from ppgen import checkpoint as ckpt
from ppgen.inference import trainer
from tests.families import build_small

FAMILIES = ppgen.models.names()
DATASETS = ["digits", "digits-binary", "moons"]


# ---- the protocol, on every kind of data ------------------------------------------------------


@pytest.fixture(scope="module")
def data():
    return {name: ppgen.datasets.load(name, "val").subset(16) for name in DATASETS}


def _build(family, ds):
    try:
        return build_small(family, ds)
    except ValueError as e:
        pytest.skip(f"{family} refuses {ds.name} data with a clear error: {e}")


CASES = [(f, d) for f in FAMILIES for d in DATASETS]


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

    # likelihood through ppgen.evaluate, labelled (mc_examples=0: the Monte Carlo error's second
    # pass would double the cost and changes no value checked here)
    ev = ppgen.evaluate(m, x, mc_examples=0)
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
        a = ppgen.evaluate(m, x, seed=1, mc_examples=0).per_example
    with torch.random.fork_rng():
        b = ppgen.evaluate(m2, x, seed=1, mc_examples=0).per_example
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
    for family in FAMILIES:
        cls = ppgen.models.get(family)
        if cls.likelihood != "exact":
            continue
        for dataset, ds in data.items():
            try:
                m = build_small(family, ds)
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


# ---- training and checkpoints (issue 12), on digits or moons ---------------------------------


@pytest.fixture(scope="module")
def fit_data():
    return {
        name: (
            ppgen.datasets.load(name, "train").subset(128),
            ppgen.datasets.load(name, "val").subset(64),
        )
        for name in ("digits", "moons")
    }


def _build_any(family, fit_data):
    """The family on digits, or on moons when it refuses digits (it must take one of them)."""
    errors = []
    for name in ("digits", "moons"):
        train, val = fit_data[name]
        torch.manual_seed(0)  # the same initial weights on every build
        try:
            return build_small(family, train), train, val
        except ValueError as e:
            errors.append(str(e))
    raise AssertionError(f"{family} builds on neither digits nor moons: {errors}")


def _fit(m, train, val, out, steps, **kw):
    return ppgen.fit(
        m,
        train,
        val=val,
        out=out,
        steps=steps,
        batch_size=32,
        lr=1e-3,
        seed=3,
        device="cpu",
        progress=False,
        eval_every=2,
        checkpoint_every=2,
        **kw,
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_is_exact(family, fit_data, tmp_path):
    full, train, val = _build_any(family, fit_data)
    _fit(full, train, val, tmp_path / "full", steps=6)
    half, _, _ = _build_any(family, fit_data)
    _fit(half, train, val, tmp_path / "half", steps=3)
    resumed, _, _ = _build_any(family, fit_data)
    hist = _fit(resumed, train, val, tmp_path / "half", steps=6, resume=True)
    assert hist.steps == 6, family
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys(), family
    for key in a:
        assert torch.equal(a[key], b[key]), f"{family}: {key} differs after resume"
    full_ckpt = ckpt.read_checkpoint(tmp_path / "full" / "checkpoint.pt")
    half_ckpt = ckpt.read_checkpoint(tmp_path / "half" / "checkpoint.pt")
    for key, value in full_ckpt["objective"]["state_dict"].items():
        assert torch.equal(value, half_ckpt["objective"]["state_dict"][key]), f"{family}: {key}"


@pytest.mark.parametrize("family", FAMILIES)
def test_non_finite_loss_never_overwrites_a_good_checkpoint(family, fit_data, tmp_path,
                                                            monkeypatch):
    m, train, val = _build_any(family, fit_data)
    _fit(m, train, val, tmp_path, steps=2)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    real = trainer.make_objective

    def poisoned(*args, **kwargs):
        obj = real(*args, **kwargs)
        loss = obj.loss
        obj.loss = lambda *a, **k: loss(*a, **k) * math.nan
        return obj

    monkeypatch.setattr(trainer, "make_objective", poisoned)
    with pytest.raises(trainer.NonFiniteLossError, match="step 2"):
        _fit(m, train, val, tmp_path, steps=4, resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before, family
    kept = ppgen.load(tmp_path / "checkpoint.pt")
    assert all(
        torch.isfinite(v).all() for v in kept.state_dict().values() if v.is_floating_point()
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_mismatched_checkpoint_names_the_first_differing_key(family, fit_data, tmp_path):
    m, train, _ = _build_any(family, fit_data)
    ppgen.save(m, tmp_path / "m.pt")
    other = "moons" if train.name == "digits" else "digits"
    try:
        different = build_small(family, fit_data[other][0])
    except ValueError:
        different = None
    if different is not None:  # same family, other data shape: the first differing key
        with pytest.raises(ckpt.CheckpointError, match="event_shape"):
            ckpt.load_into(different, tmp_path / "m.pt")
    for other_family in FAMILIES:  # another family refuses it by name
        if other_family != family:
            foreign, _, _ = _build_any(other_family, fit_data)
            with pytest.raises(ckpt.CheckpointError, match=f"holds a '{family}' model"):
                ckpt.load_into(foreign, tmp_path / "m.pt")
            break


@pytest.mark.parametrize("family", FAMILIES)
def test_training_one_model_leaves_another_untouched(family, fit_data):
    a, train, val = _build_any(family, fit_data)
    b, _, _ = _build_any(family, fit_data)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    _fit(a, train, val, None, steps=2)
    for key, value in b.state_dict().items():
        assert torch.equal(value, before[key]), f"{family}: {key} of the other model changed"
    assert len(pyro.get_param_store()) == 0, f"{family}: parameters leaked into the param store"


# ---- issue 18: one sample entry point, model size from the config, finite weights, labels ------


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_refuses_a_bad_count_naming_n(family, fit_data):
    import numpy as np

    m, _, _ = _build_any(family, fit_data)
    for bad in (2.5, -1, 0, True, "3", None, np.float64(3.0), torch.tensor(3)):
        with pytest.raises(ValueError, match=r"\bn\b") as info:
            m.sample(bad)
        assert "\n" not in str(info.value), family
    assert m.sample(np.int64(3), seed=0).shape == (3, *m.event_shape)  # numpy ints are ints


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_below_the_chunk_is_the_familys_own_draw_and_chunks_above(family, fit_data,
                                                                       monkeypatch):
    m, _, _ = _build_any(family, fit_data)
    # below the chunk size the public sample is exactly the family's draw
    assert m.sample_chunk_size() >= 4096, family
    assert torch.equal(m.sample(5, seed=7), m._sample(5, seed=7)), family
    # above it: one preallocated result, drawn chunk by chunk, reproducible with a seed
    monkeypatch.setattr(type(m), "sample_chunk_size", lambda self: 2)
    a = m.sample(5, seed=7)
    assert a.shape == (5, *m.event_shape), family
    assert torch.equal(a, m.sample(5, seed=7)), family
    assert torch.isfinite(a).all(), family


@pytest.mark.parametrize("family", FAMILIES)
def test_the_size_of_a_model_is_counted_exactly_from_its_config(family, fit_data):
    m, _, _ = _build_any(family, fit_data)
    real = sum(t.numel() for t in [*m.parameters(), *m.buffers()])
    assert type(m).parameter_count(m.config) == real, family
    type(m).check_size(m.config, real)  # exactly at the limit: accepted
    with pytest.raises(ppgen.models.base.ModelSizeError, match=f"{real:,} parameters"):
        type(m).check_size(m.config, real - 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_non_finite_weights_are_refused_naming_the_tensor(family, fit_data):
    m, train, val = _build_any(family, fit_data)
    ppgen.models.base.check_finite_parameters(m)  # a fresh model is finite
    name, param = next(iter(m.named_parameters()))
    for bad in (math.nan, math.inf):
        with torch.no_grad():
            saved = param.detach().clone()
            param.view(-1)[0] = bad
        with pytest.raises(ValueError, match=f"'{name}'"):
            m.sample(2, seed=0)
        with pytest.raises(ValueError, match=f"'{name}'.*non-finite|non-finite.*'{name}'"):
            ppgen.evaluate(m, val)
        with torch.no_grad():
            param.copy_(saved)
    m.sample(2, seed=0)


_CONDITIONAL = {"vae": "context_classes", "pixelcnn": "num_classes",
                "gated-pixelcnn": "num_classes"}


@pytest.mark.parametrize("family", [f for f in FAMILIES if f in _CONDITIONAL])
def test_labels_out_of_range_are_refused_the_same_way_by_every_conditional_family(family,
                                                                                 fit_data):
    train, _ = fit_data["digits"]
    m = build_small(family, train, **{_CONDITIONAL[family]: 3})
    assert m.conditional and m.context_classes == 3
    x = train.data[:4]
    for labels, match in (
        (torch.tensor([0, 1, 2, 3]), r"lie in \[0, 3\]; labels must lie in 0..2"),
        (torch.tensor([-1, 0, 0, 0]), r"must lie in 0..2"),
        (torch.tensor([0.5, 0, 0, 0]), "non-integer"),
        (torch.tensor([0, 1]), "one label per example"),
        (None, "class-conditional"),
    ):
        with pytest.raises(ValueError, match=match):
            m.check_context(labels, 4)
        with pytest.raises(ValueError, match=match):
            ppgen.evaluate(m, x, context=labels) if labels is not None else m.sample(4)
    # the digits' labels run to 9: training refuses them in one line, not a torch traceback
    with pytest.raises(ValueError, match="0..2"):
        ppgen.fit(m, train, steps=1, batch_size=32, progress=False, device="cpu")
