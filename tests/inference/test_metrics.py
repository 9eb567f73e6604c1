"""Sample-quality metrics, each against a case with a known answer."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ppgen
from ppgen.inference import metrics

# The 8gaussians mixture as ppgen.datasets builds it: radius 2, std 0.1, uniform weights.
EIGHT_CENTERS = 2.0 * torch.tensor(
    [[math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)] for k in range(8)]
)
EIGHT_STD = 0.1


# ---- mode coverage --------------------------------------------------------------------------


def test_mode_coverage_of_the_true_mixture():
    x = ppgen.datasets.load("8gaussians", "test").data  # 5000 draws of the mixture itself
    r = metrics.mode_coverage(x, EIGHT_CENTERS, EIGHT_STD)
    assert (r.modes_covered, r.num_modes, r.value) == (8, 8, 1.0)
    # P(|N(0, s^2 I_2)| <= 3 s) = 1 - exp(-9/2); 4 binomial standard errors (false alarm ~6e-5)
    p = 1 - math.exp(-4.5)
    assert abs(r.high_quality_fraction - p) < 4 * math.sqrt(p * (1 - p) / len(x))
    assert sum(r.counts) == round(r.high_quality_fraction * len(x))
    assert r.reverse_kl < 0.01  # 8 nearly equal shares
    assert r.num_x == len(x) and r.min_share == pytest.approx(0.2 / 8)


def test_mode_coverage_of_a_collapsed_generator():
    x = ppgen.datasets.load("8gaussians", "test").data
    mode = torch.cdist(x, EIGHT_CENTERS).argmin(1)
    kept = x[mode < 3]  # a generator that only found modes 0, 1, 2 (about equally)
    r = metrics.mode_coverage(kept, EIGHT_CENTERS, EIGHT_STD)
    assert r.modes_covered == 3 and r.counts[3:] == (0,) * 5
    q = torch.tensor(r.counts[:3], dtype=torch.float64) / sum(r.counts)
    assert r.reverse_kl == pytest.approx(float((q * (q * 8).log()).sum()), rel=1e-12)
    assert r.reverse_kl == pytest.approx(math.log(8 / 3), abs=0.01)


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(0, 30), min_size=2, max_size=9),
    bad=st.integers(0, 20),
    share=st.sampled_from([None, 0.0, 0.05, 0.2]),
    seed=st.integers(0, 2**16),
)
def test_mode_coverage_counts_exactly(counts, bad, share, seed):
    k = len(counts)
    g = torch.Generator().manual_seed(seed)
    centers = 10.0 * torch.randn(k, 3, generator=g, dtype=torch.float64)
    centers[:, 0] += 100.0 * torch.arange(k)  # well separated: nearest centre is the own one
    std, threshold = 0.5, 3.0
    points = []
    for j, c in enumerate(counts):
        direction = torch.randn(c, 3, generator=g, dtype=torch.float64)
        direction = direction / direction.norm(dim=1, keepdim=True)
        radius = threshold * std * torch.rand(c, 1, generator=g, dtype=torch.float64)
        points.append(centers[j] + radius * direction)
    # bad samples: on the far side of every centre, beyond threshold * std of all of them
    far = centers[0] + torch.tensor([-50.0, 0.0, 0.0], dtype=torch.float64)
    points.append(far.expand(bad, 3))
    x = torch.cat(points)
    if len(x) == 0:
        return
    r = metrics.mode_coverage(x, centers, std, threshold=threshold, min_share=share)
    n = len(x)
    min_share = 0.2 / k if share is None else share
    expected_cover = sum(c >= min_share * n and c > 0 for c in counts)
    assert r.counts == tuple(counts)
    assert r.modes_covered == expected_cover and r.num_modes == k
    assert r.high_quality_fraction == pytest.approx(sum(counts) / n)
    assert r.value == pytest.approx(expected_cover / k)
    if sum(counts):
        q = [c / sum(counts) for c in counts]
        kl = sum(p * math.log(p * k) for p in q if p > 0)
        assert r.reverse_kl == pytest.approx(kl, abs=1e-12)
    else:
        assert math.isnan(r.reverse_kl)


def test_mode_coverage_refuses_bad_input():
    x = torch.zeros(10, 2)
    with pytest.raises(ValueError, match="dims"):
        metrics.mode_coverage(x, torch.zeros(3, 5), 0.1)
    with pytest.raises(ValueError, match="std"):
        metrics.mode_coverage(x, torch.zeros(3, 2), -1.0)
    with pytest.raises(ValueError, match="non-finite"):
        metrics.mode_coverage(torch.full((4, 2), math.nan), torch.zeros(3, 2), 0.1)
    with pytest.raises(ValueError, match="weights"):
        metrics.mode_coverage(x, torch.zeros(3, 2), 0.1, weights=torch.ones(3))
