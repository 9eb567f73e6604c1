"""Units of ppgen.evaluate: bits/dim against closed forms, labels, standard errors."""

from __future__ import annotations

import math

import pytest
import torch

import ppgen
from ppgen.inference.likelihood import bits_per_dim


def test_uniform_over_levels_is_log2_levels():
    for name, levels in (("digits", 17), ("digits-binary", 2)):
        ds = ppgen.datasets.load(name, "test")
        m = ppgen.build("independent", ds)  # zero logits: uniform over the levels
        ev = ppgen.evaluate(m, ds)
        assert ev.kind == "exact", name
        assert ev.bits_per_dim == pytest.approx(math.log2(levels), abs=1e-6), name
        assert ev.stderr == pytest.approx(0.0, abs=1e-9), name


def test_bits_per_dim_definition():
    assert bits_per_dim(64 * math.log(2), 64) == pytest.approx(1.0)


def test_standard_gaussian_matches_closed_form(dtype):
    ds = ppgen.datasets.load("moons", "test")
    m = ppgen.build("independent", ds).to(dtype)  # one N(0, 1) per dimension
    ev = ppgen.evaluate(m, ds)
    x = ds.data.double()
    expected = (0.5 * x.pow(2) + 0.5 * math.log(2 * math.pi)).sum(1)
    assert torch.allclose(-ev.per_example, expected, atol=1e-9)
    assert ev.nats == pytest.approx(expected.mean().item(), abs=1e-9)
    assert ev.stderr == pytest.approx((expected.std() / math.sqrt(len(x))).item(), rel=1e-9)


def test_evaluate_refuses_a_wrong_estimator():
    ds = ppgen.datasets.load("digits", "test")
    m = ppgen.build("independent", ds)
    with pytest.raises(ValueError, match="unknown estimator"):
        ppgen.evaluate(m, ds, estimator="magic")
    with pytest.raises(ValueError, match="shape"):
        ppgen.evaluate(m, ds.data.reshape(len(ds), -1))


@pytest.mark.parametrize(
    ("model_data", "data_kind", "data_levels", "said"),
    [
        (("digits", "test"), "binary", None, "built for 17 levels but dataset 'other' declares 2"),
        (("digits-binary", "test"), "discrete", 17,
         "built for 2 levels but dataset 'other' declares 17"),
        (("digits", "test"), "continuous", None, "holds continuous data"),
    ],
)
def test_data_declared_with_other_levels_than_the_model_get_a_note(
    model_data, data_kind, data_levels, said
):
    """The values fit the model's support, so the data are scored, but the number is a
    likelihood over the model's levels: the Evaluation says so, in its text and its dict."""
    built_on = ppgen.datasets.load(*model_data)
    m = ppgen.build("independent", built_on)
    x = (built_on.data > 0).float()  # 0/1: inside every discrete model's support
    other = ppgen.datasets.Dataset("other", x, data_kind, data_levels)
    ev = ppgen.evaluate(m, other)
    assert len(ev.notes) == 1 and said in ev.notes[0], ev.notes
    assert "note: " + ev.notes[0] in str(ev) and ev.to_dict()["notes"] == list(ev.notes)
    # the same values as a tensor, or as data declared as the model's: no note
    assert ppgen.evaluate(m, x).notes == ()
    same = ppgen.datasets.Dataset("same", x, built_on.kind, built_on.levels)
    assert ppgen.evaluate(m, same).notes == ()


def test_a_continuous_model_on_discrete_data_gets_a_note():
    ds = ppgen.datasets.load("moons", "test")
    m = ppgen.build("independent", ds)
    ints = ppgen.datasets.Dataset("ints", ds.data.round().clamp(0, 4), "discrete", 5)
    ev = ppgen.evaluate(m, ints)
    assert ev.kind == "exact" and "built for continuous data" in ev.notes[0]
    assert "holds 5 levels" in ev.notes[0]
