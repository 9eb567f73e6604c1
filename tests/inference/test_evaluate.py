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
