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
