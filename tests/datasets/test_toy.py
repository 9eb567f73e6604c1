"""The toy densities: true log-densities normalize, match their samplers, and entropies hold.

Statistical checks use fixed seeds, so they are deterministic; each is a test at level 1e-3 (its
false-alarm rate were the seed drawn at random).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import ppgen
from ppgen.datasets import toy

ANALYTIC = ["8gaussians", "grid25", "checkerboard", "rings"]
# name -> (half-width of a box holding all the mass, grid spacing for the midpoint rule)
BOXES = {
    "8gaussians": (3.0, 0.025),
    "grid25": (5.0, 0.0125),
    "checkerboard": (3.0, 0.05),
    "rings": (4.0, 0.02),
}


def _grid(half: float, h: float) -> tuple[torch.Tensor, float]:
    g = torch.arange(-half + h / 2, half, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], dim=1), h * h


def _log_prob_chunked(log_prob, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([log_prob(c) for c in x.split(100_000)])


def test_every_toy_loads_with_fixed_sizes_and_its_declared_density():
    assert set(toy.TOY_DATASETS) == {
        "moons",
        "8gaussians",
        "grid25",
        "checkerboard",
        "pinwheel",
        "2spirals",
        "rings",
    }
    assert set(toy.TOY_DATASETS) <= set(ppgen.datasets.names())
    for name in toy.TOY_DATASETS:
        for split, size in toy.SPLIT_SIZES.items():
            ds = ppgen.datasets.load(name, split)
            assert ds.data.shape == (size, 2) and ds.kind == "continuous", (name, split)
            assert (ds.true_log_prob is not None) == (name in ANALYTIC), name
            assert (ds.entropy is not None) == (name in ANALYTIC), name
        train, test = ppgen.datasets.load(name, "train"), ppgen.datasets.load(name, "test")
        assert not torch.equal(train.data[:100], test.data[:100]), name
        assert torch.equal(train.data, ppgen.datasets.load(name, "train").data), name


@pytest.mark.parametrize("name", sorted(toy.TOY_DATASETS))
def test_sampler_is_seeded(name):
    a, b = toy.sample_toy(name, 300, seed=3), toy.sample_toy(name, 300, seed=3)
    assert torch.equal(a, b) and a.shape == (300, 2) and a.dtype == torch.float32, name
    assert not torch.equal(a, toy.sample_toy(name, 300, seed=4)), name
    assert torch.isfinite(a).all(), name


@pytest.mark.parametrize("name", ANALYTIC)
def test_true_log_prob_integrates_to_one_and_entropy_matches(name):
    half, h = BOXES[name]
    x, cell = _grid(half, h)
    lp = _log_prob_chunked(toy.toy_log_prob(name), x)
    p = lp.exp()
    assert float(p.sum() * cell) == pytest.approx(1.0, abs=1e-6), name
    plogp = torch.where(p > 0, p * lp, torch.zeros_like(p))
    assert float(-plogp.sum() * cell) == pytest.approx(toy.toy_entropy(name), abs=1e-6), name


def test_rings_entropy_constant_is_the_radial_integral():
    log_prob = toy.toy_log_prob("rings")

    def integrand(rho: float) -> float:
        lp = float(log_prob(torch.tensor([[rho, 0.0]], dtype=torch.float64)))
        return -2 * math.pi * rho * math.exp(lp) * lp

    cuts = sorted(
        {0.0, *(max(r + d * 0.64, 0.0) for r in (0.75, 1.5, 2.25, 3.0) for d in (-1, 1)), 4.6}
    )
    total = sum(
        integrate.quad(integrand, a, b, epsabs=1e-12, epsrel=1e-12, limit=200)[0]
        for a, b in zip(cuts[:-1], cuts[1:], strict=True)
    )
    assert total == pytest.approx(toy.toy_entropy("rings"), abs=1e-9)


@pytest.mark.parametrize("name", ANALYTIC)
def test_samples_follow_the_true_density(name):
    """Chi-square goodness of fit of 20,000 samples on a 2-D histogram, with the cell
    probabilities integrated from ``true_log_prob`` (cells with expected count < 5 pooled)."""
    n = 20_000
    x = toy.sample_toy(name, n, seed=11).double()
    half, h = BOXES[name]
    edges = torch.linspace(-half, half, 25, dtype=torch.float64)
    counts = np.histogram2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=[edges.numpy()] * 2)[0]
    # integrate the density in each cell with the fine midpoint grid
    fine, cell = _grid(half, h)
    p = _log_prob_chunked(toy.toy_log_prob(name), fine).exp() * cell
    probs = np.histogram2d(
        fine[:, 0].numpy(), fine[:, 1].numpy(), bins=[edges.numpy()] * 2, weights=p.numpy()
    )[0]
    observed, expected = counts.ravel(), probs.ravel() * n
    small = expected < 5
    observed = np.append(observed[~small], observed[small].sum() + (n - counts.sum()))
    expected = np.append(expected[~small], expected[small].sum() + n * (1 - probs.sum()))
    keep = expected > 0
    assert observed[~keep].sum() == 0, f"{name}: samples where the density is zero"
    p_value = stats.chisquare(observed[keep], expected[keep]).pvalue
    assert p_value > 1e-3, f"{name}: p = {p_value:.2e}"


@pytest.mark.parametrize("name", ANALYTIC)
def test_entropy_agrees_with_monte_carlo(name):
    x = toy.sample_toy(name, 100_000, seed=5).double()
    nll = -toy.toy_log_prob(name)(x)
    assert torch.isfinite(nll).all(), name
    err = float(nll.std() / math.sqrt(len(nll)))
    assert abs(float(nll.mean()) - toy.toy_entropy(name)) < 4 * err + 1e-12, name


@pytest.mark.parametrize(("name", "k"), [("8gaussians", 8), ("grid25", 25)])
def test_mixture_modes_are_the_components(name, k):
    centers, std = ppgen.datasets.mixture_modes(name)
    assert centers.shape == (k, 2) and centers.dtype == torch.float32 and std > 0
    x = toy.sample_toy(name, 20_000, seed=2).double()
    d2 = torch.cdist(x, centers.double()).min(dim=1).values ** 2
    # squared distance to the own center is sigma^2 chi^2_2: mean 2 sigma^2, sd 2 sigma^2/sqrt(n)
    assert abs(float(d2.mean()) / (2 * std**2) - 1) < 4 / math.sqrt(len(x))
    counts = torch.cdist(x, centers.double()).argmin(dim=1).bincount(minlength=k).numpy()
    assert stats.chisquare(counts).pvalue > 1e-3, name  # every mode equally likely


def test_mixture_modes_refuses_other_toys():
    with pytest.raises(ppgen.datasets.DataError, match="mixture"):
        ppgen.datasets.mixture_modes("rings")


def test_checkerboard_density_is_zero_off_the_board():
    lp = toy.toy_log_prob("checkerboard")
    x = torch.tensor(
        [[-1.5, 0.5], [-1.5, -0.5], [2.5, 0.0], [0.5, 0.5], [0.5, -0.5]], dtype=torch.float64
    )
    assert lp(x).tolist() == [-math.log(8), -math.inf, -math.inf, -math.log(8), -math.inf]
