"""ppgen.impute for the latent families (VAE, GAN) and diffusion (RePaint), against the model's
own conditional where it can be computed: enumeration over x and quadrature over a 1-D z."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

import ppgen
from ppgen.inference.conditioning.repaint import jump_schedule

GRID = torch.linspace(-9, 9, 3001, dtype=torch.float64)


def _binary_vae(d: int = 6, seed: int = 0):
    torch.manual_seed(seed)
    ds = ppgen.datasets.from_array(np.zeros((2, d), dtype=np.int64), kind="binary")
    m = ppgen.build("vae", ds, latent=1, hidden=[16]).double().eval()
    with torch.no_grad():  # a decoder with strong, z-dependent probabilities
        for p in m.decoder.parameters():
            p.mul_(3.0)
    return m


def _posterior_on_grid(m, x_row: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """p(z | x_o) on GRID (normalized weights), by quadrature."""
    with torch.no_grad():
        lik = m.observed_log_likelihood(GRID[:, None, None], x_row[None], observed)[:, 0]
    log_w = lik - 0.5 * GRID.pow(2)
    return torch.softmax(log_w, 0)


def _exact_binary_conditional(m, x_row, observed) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """p(x_m | x_o) for every value of the missing cells: enumeration and quadrature."""
    w = _posterior_on_grid(m, x_row, observed)
    with torch.no_grad():
        probs = m.decode(GRID[:, None]).base_dist.probs  # (G, D)
    miss = (~observed).nonzero().squeeze(1).tolist()
    values = list(itertools.product((0, 1), repeat=len(miss)))
    out = []
    for v in values:
        p = torch.ones_like(GRID)
        for d, bit in zip(miss, v, strict=True):
            p = p * (probs[:, d] if bit else 1 - probs[:, d])
        out.append(float((w * p).sum()))
    return values, np.array(out)


def _chi_square(draws: torch.Tensor, miss: list[int], values, expected: np.ndarray) -> float:
    index = {v: i for i, v in enumerate(values)}
    counts = np.zeros(len(values))
    for row in draws[:, miss].long().tolist():
        counts[index[tuple(row)]] += 1
    expected = expected / expected.sum() * counts.sum()
    rare = expected < 5  # pooled into one bin, so the chi-square approximation holds
    if rare.any():
        counts = np.r_[counts[~rare], counts[rare].sum()]
        expected = np.r_[expected[~rare], expected[rare].sum()]
    return stats.chisquare(counts, expected).pvalue


@pytest.mark.parametrize(
    "method", ["importance-resampling", pytest.param("latent-nuts", marks=pytest.mark.slow)]
)
def test_binary_vae_matches_the_exact_conditional(method: str) -> None:
    m = _binary_vae()
    x_row = torch.tensor([1.0, 0, 1, 0, 1, 1], dtype=torch.float64)
    observed = torch.tensor([True, True, True, False, False, False])
    values, expected = _exact_binary_conditional(m, x_row, observed)
    # independent rows (the same point repeated) give independent draws, one per row
    rows = 2000 if method == "importance-resampling" else 200  # NUTS: about 45 s
    options = ({"num_particles": 500} if method == "importance-resampling"
               else {"num_chains": 2, "warmup_steps": 50, "num_draws": 1, "max_tree_depth": 5})
    imp = ppgen.impute(m, x_row.expand(rows, -1), observed, num_samples=1, seed=0,
                       method=method, **options)
    draws = imp.samples.reshape(-1, 6) if method == "importance-resampling" else \
        imp.chains.reshape(-1, 6)
    assert imp.method == method and not imp.exact
    assert torch.equal(draws[:, :3], x_row[:3].expand(len(draws), -1))
    p = _chi_square(draws, [3, 4, 5], values, expected)
    assert p > 1e-3, p


def test_vae_with_a_1d_latent_on_2d_continuous_data_matches_the_quadrature_conditional() -> None:
    torch.manual_seed(0)
    rs = np.random.RandomState(0)
    z = rs.randn(300)
    ds = ppgen.datasets.from_array(np.c_[np.sin(2 * z), z + 0.1 * rs.randn(300)])
    m = ppgen.build("vae", ds, latent=1, hidden=[16])
    ppgen.fit(m, ds, steps=1, progress=False)  # initialize: the data's standardization
    m = m.double().eval()
    x1 = 0.5
    observed = torch.tensor([True, False])
    x_row = torch.tensor([x1, 0.0], dtype=torch.float64)
    w = _posterior_on_grid(m, x_row, observed)
    with torch.no_grad():
        px = m.decode(GRID[:, None]).base_dist
    loc, scale = px.loc[:, 1], px.scale[:, 1]

    def cdf(v: np.ndarray) -> np.ndarray:
        t = torch.as_tensor(v, dtype=torch.float64)[:, None]
        return (w * torch.distributions.Normal(loc, scale).cdf(t)).sum(1).numpy()

    imp = ppgen.impute(m, x_row.expand(1500, -1), observed, num_samples=1, seed=0,
                       method="importance-resampling", num_particles=500)
    draws = imp.samples[0, :, 1].numpy()
    assert (imp.samples[0, :, 0] == x1).all()
    assert stats.kstest(draws, cdf).pvalue > 1e-3


def test_gan_observation_model_of_discrete_levels_is_a_distribution() -> None:
    torch.manual_seed(0)
    table = np.random.RandomState(0).randint(0, 5, (20, 3))
    ds = ppgen.datasets.from_array(table, kind="discrete", levels=5)
    gan = ppgen.build("gan", ds, latent=2, hidden=[8]).double()
    gan.observation_scale = 0.7
    z = torch.randn(4, 2, dtype=torch.float64)
    observed = torch.tensor([True, False, False])
    levels = torch.arange(-15, 21, dtype=torch.float64)  # the cells of the whole real line
    x = torch.zeros(len(levels), 4, 3, dtype=torch.float64)
    x[:, :, 0] = levels[:, None]
    with torch.no_grad():
        lp = torch.stack([gan.observed_log_likelihood(z, x[i], observed) for i in range(len(x))])
    assert torch.allclose(lp.exp().sum(0), torch.ones(4, dtype=torch.float64), atol=1e-6)


def test_gan_latent_nuts_imputes_and_is_reproducible() -> None:
    ds = ppgen.datasets.load("moons", split="val")
    torch.manual_seed(0)
    gan = ppgen.build("gan", ds, latent=2, hidden=[16]).eval()
    x = ds.data[:3]
    runs = [ppgen.impute(gan, x, torch.tensor([True, False]), num_samples=4, seed=s,
                         method="latent-nuts", warmup_steps=10, max_tree_depth=4)
            for s in (0, 0, 1)]
    assert torch.equal(runs[0].samples, runs[1].samples)
    assert not torch.equal(runs[0].samples, runs[2].samples)
    assert torch.equal(runs[0].samples[..., 0], x[:, 0].expand(4, -1))
    assert {"acceptance_rate", "divergences", "step_size"} <= set(runs[0].diagnostics)


@pytest.mark.parametrize("method", ["importance-resampling", "latent-nuts"])
def test_vae_methods_are_reproducible_by_seed(method: str) -> None:
    ds = ppgen.datasets.load("moons", split="val")
    torch.manual_seed(0)
    m = ppgen.build("vae", ds, latent=2, hidden=[16]).eval()
    opts = ({"num_particles": 50} if method == "importance-resampling"
            else {"warmup_steps": 10, "max_tree_depth": 4})
    observed = torch.tensor([False, True])
    runs = [ppgen.impute(m, ds.data[:3], observed, num_samples=2, seed=s, method=method,
                         **opts) for s in (3, 3, 4)]
    assert torch.equal(runs[0].samples, runs[1].samples)
    assert not torch.equal(runs[0].samples, runs[2].samples)
    assert torch.equal(runs[0].samples[..., 1], ds.data[:3, 1].expand(2, -1))


def test_vae_made_decoder_refuses_the_latent_methods() -> None:
    ds = ppgen.datasets.load("digits", split="val")
    m = ppgen.build("vae", ds, latent=2, hidden=[16], decoder="made").eval()
    with pytest.raises(ValueError, match="observed cells alone"):
        ppgen.impute(m, ds.data[:2], "bottom-half", method="latent-nuts")
    with pytest.raises(ValueError, match="observed cells alone"):
        ppgen.impute(m, ds.data[:2], "bottom-half")
    with pytest.raises(ValueError, match="takes num_particles"):
        ppgen.impute(_binary_vae(), torch.zeros(1, 6), "random:0.5",
                     method="importance-resampling", sweeps=3)


def test_vae_conditional_evaluation_is_an_estimate_near_the_quadrature_value() -> None:
    m = _binary_vae()
    x_row = torch.tensor([[1.0, 0, 1, 0, 1, 1]], dtype=torch.float64)
    observed = torch.tensor([True, True, True, False, False, False])
    values, expected = _exact_binary_conditional(m, x_row[0], observed)
    exact = math.log(expected[values.index((0, 1, 1))])
    ev = ppgen.evaluate(m, x_row, mask=observed, num_particles=3000, seed=0)
    assert ev.kind == "estimate"  # a difference of two IWAE estimates is no bound
    assert abs(float(ev.per_example[0]) - exact) < 0.05, (float(ev.per_example[0]), exact)


def test_repaint_schedule_and_draws() -> None:
    times = jump_schedule(20, 5, 3)
    assert times[0] == 20 and times[-1] == 0
    steps = [b - a for a, b in zip(times[:-1], times[1:], strict=True)]
    assert all(abs(d) == 1 for d in steps)  # down one step, or up one step of a jump
    down = sum(1 for d in steps if d < 0)
    assert down == 20 + 2 * 5 * 3  # T steps, plus (r - 1) re-walks of j steps at 3 grid points
    assert jump_schedule(20, 5, 1) == list(range(20, -1, -1))  # r = 1: plain reverse chain
    x = torch.randint(0, 5, (2, 6)).float()
    ds = ppgen.datasets.from_array(x.long().numpy(), kind="discrete", levels=5)
    torch.manual_seed(0)
    m = ppgen.build("ddpm", ds, timesteps=20, hidden=[16]).eval()
    observed = torch.tensor([True, True, False, True, False, False])
    runs = [ppgen.impute(m, x, observed, num_samples=3, seed=s, method="repaint",
                         jump_length=5, resamplings=2) for s in (0, 0, 1)]
    assert torch.equal(runs[0].samples, runs[1].samples)
    assert not torch.equal(runs[0].samples, runs[2].samples)
    assert torch.equal(runs[0].samples[..., observed], x[:, observed].expand(3, -1, -1))
    assert runs[0].diagnostics["network_calls"] == 20 + 3 * 5  # j steps again at 0, 5, 10
    assert not runs[0].exact and "approximate" in runs[0].notes[0]
    levels = runs[0].samples.unique()
    assert levels.min() >= 0 and levels.max() <= 4 and torch.equal(levels, levels.round())
