"""Reliability guarantees that must hold for every registered family (issue 12).

Each test is parametrized over ``ppgen.models.names()``, so a new family is covered the day it
is registered, with no special case: exact resume (fit 2N == fit N, stop, resume N, to the bit
on CPU, including EMA weights, objective state such as a GAN's discriminator, and every
optimizer), a non-finite loss never written over a good checkpoint, mismatched checkpoints named
by their first differing config key, and no leaks between two models in one process.
"""

from __future__ import annotations

import dataclasses
import math

import pyro
import pytest
import torch

import ppgen
from ppgen import checkpoint as ckpt
from ppgen.inference import trainer

FAMILIES = ppgen.models.names()
# Small hyperparameters by shared name (as in tests/models/test_protocol.py).
SMALL = {"hidden": [16], "transforms": 2, "latent": 2, "timesteps": 10, "components": 2}


def _small(family: str, ds: ppgen.datasets.Dataset):
    cls = ppgen.models.get(family)
    names = {f.name for f in dataclasses.fields(cls.Config)}
    return ppgen.build(family, ds, **{k: v for k, v in SMALL.items() if k in names})


@pytest.fixture(scope="module")
def data():
    return {
        name: (
            ppgen.datasets.load(name, "train").subset(128),
            ppgen.datasets.load(name, "val").subset(64),
        )
        for name in ("digits", "moons")
    }


def _build_any(family, data):
    """The family on digits, or on moons when it refuses digits (it must take one of them)."""
    errors = []
    for name in ("digits", "moons"):
        train, val = data[name]
        torch.manual_seed(0)  # the same initial weights on every build
        try:
            return _small(family, train), train, val
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
def test_resume_is_exact(family, data, tmp_path):
    full, train, val = _build_any(family, data)
    _fit(full, train, val, tmp_path / "full", steps=6)
    half, _, _ = _build_any(family, data)
    _fit(half, train, val, tmp_path / "half", steps=3)
    resumed, _, _ = _build_any(family, data)
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
def test_non_finite_loss_never_overwrites_a_good_checkpoint(family, data, tmp_path, monkeypatch):
    m, train, val = _build_any(family, data)
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
def test_mismatched_checkpoint_names_the_first_differing_key(family, data, tmp_path):
    m, train, _ = _build_any(family, data)
    ppgen.save(m, tmp_path / "m.pt")
    other = "moons" if train.name == "digits" else "digits"
    try:
        different = _small(family, data[other][0])
    except ValueError:
        different = None
    if different is not None:  # same family, other data shape: the first differing key
        with pytest.raises(ckpt.CheckpointError, match="event_shape"):
            ckpt.load_into(different, tmp_path / "m.pt")
    for other_family in FAMILIES:  # another family refuses it by name
        if other_family != family:
            foreign, _, _ = _build_any(other_family, data)
            with pytest.raises(ckpt.CheckpointError, match=f"holds a '{family}' model"):
                ckpt.load_into(foreign, tmp_path / "m.pt")
            break


@pytest.mark.parametrize("family", FAMILIES)
def test_training_one_model_leaves_another_untouched(family, data):
    a, train, val = _build_any(family, data)
    b, _, _ = _build_any(family, data)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    _fit(a, train, val, None, steps=2)
    for key, value in b.state_dict().items():
        assert torch.equal(value, before[key]), f"{family}: {key} of the other model changed"
    assert len(pyro.get_param_store()) == 0, f"{family}: parameters leaked into the param store"


# ---- issue 18: one sample entry point, model size from the config, finite weights, labels ------


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_refuses_a_bad_count_naming_n(family, data):
    import numpy as np

    m, _, _ = _build_any(family, data)
    for bad in (2.5, -1, 0, True, "3", None, np.float64(3.0), torch.tensor(3)):
        with pytest.raises(ValueError, match=r"\bn\b") as info:
            m.sample(bad)
        assert "\n" not in str(info.value), family
    assert m.sample(np.int64(3), seed=0).shape == (3, *m.event_shape)  # numpy ints are ints


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_below_the_chunk_is_the_familys_own_draw_and_chunks_above(family, data,
                                                                       monkeypatch):
    m, _, _ = _build_any(family, data)
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
def test_the_size_of_a_model_is_counted_exactly_from_its_config(family, data):
    m, _, _ = _build_any(family, data)
    real = sum(t.numel() for t in [*m.parameters(), *m.buffers()])
    assert type(m).parameter_count(m.config) == real, family
    type(m).check_size(m.config, real)  # exactly at the limit: accepted
    with pytest.raises(ppgen.models.base.ModelSizeError, match=f"{real:,} parameters"):
        type(m).check_size(m.config, real - 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_non_finite_weights_are_refused_naming_the_tensor(family, data):
    m, train, val = _build_any(family, data)
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
def test_labels_out_of_range_are_refused_the_same_way_by_every_conditional_family(family, data):
    train, _ = data["digits"]
    names = {f.name for f in dataclasses.fields(ppgen.models.get(family).Config)}
    small = {k: v for k, v in SMALL.items() if k in names}
    m = ppgen.build(family, train, **{_CONDITIONAL[family]: 3}, **small)
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
