"""ppgen.impute and evaluate(mask=): exact conditionals against enumeration, NUTS against the
model's own conditional on a grid, and every reliability edge case."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

import ppgen
from ppgen.inference.conditioning import IMPUTERS, impute

D = 6


@pytest.fixture(scope="module")
def binary():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(64, D, generator=g) < 0.4).float()
    return ppgen.datasets.from_array(x, kind="binary")


def _sharpen(m):
    """Random weights scaled up, so the conditionals depend strongly on the inputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 1.5)
    return m.eval()


def _all_points() -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)))


def _enumerated_conditional(m, x_row, observed) -> tuple[torch.Tensor, torch.Tensor]:
    """Every completion of ``x_row`` and its conditional probability, by enumeration."""
    pts = _all_points()
    keep = (pts[:, observed] == x_row[observed]).all(1)
    pts = pts[keep]
    with torch.no_grad():
        lp = m.log_prob(pts)
    return pts, torch.softmax(lp.double(), 0)


def _chi_square(samples: torch.Tensor, pts: torch.Tensor, probs: torch.Tensor) -> float:
    codes = {tuple(p.tolist()): i for i, p in enumerate(pts)}
    counts = np.zeros(len(pts))
    for s in samples:
        counts[codes[tuple(s.tolist())]] += 1
    expected = probs.numpy() * len(samples)
    return float(stats.chisquare(counts, expected).pvalue)


@pytest.mark.parametrize("family, hp", [
    ("nade", {"hidden": [8]}),
    ("made", {"hidden": [16], "num_masks": 1}),
    ("made", {"hidden": [16], "num_masks": 3, "order": [0, 1, 2, 3, 4, 5]}),
    ("made", {"hidden": [16], "num_masks": 2, "order_agnostic": True}),
])
def test_exact_conditional_matches_enumeration(binary, family, hp):
    m = _sharpen(ppgen.build(family, binary, dropout=0.0, **hp) if family == "made"
                 else ppgen.build(family, binary, **hp))
    observed = torch.tensor([True, True, True, False, False, False])
    if hp.get("order_agnostic"):
        observed = torch.tensor([False, True, False, True, True, False])  # not a prefix
    x = binary.data[:3]
    for i in range(3):
        pts, probs = _enumerated_conditional(m, x[i], observed)
        with torch.no_grad():
            lp = m.log_prob_conditional(pts, observed).double()
        if hp.get("order_agnostic"):  # the observed-first ordering's model: it normalizes
            assert torch.logsumexp(lp, 0).abs() < 1e-5, family  # float32 model
            probs = lp.exp() / lp.exp().sum()
        elif family == "made" and hp["num_masks"] == 3:  # only mask 0 puts them first
            assert m._first_masks(observed) == [0]
            with torch.no_grad():
                probs = torch.softmax(m.log_prob_mask(pts, 0).double(), 0)
            assert torch.allclose(lp.exp(), probs, atol=1e-6), family
        else:
            assert torch.allclose(lp.exp(), probs, atol=1e-6), family
        imp = impute(m, x[i : i + 1], observed, num_samples=3000, seed=i)
        assert imp.method == "exact-ancestral" and imp.exact
        p = _chi_square(imp.samples[:, 0], pts, probs)
        assert p > 1e-3, (family, hp, i, p)


def test_exact_evaluate_equals_enumeration(binary):
    m = _sharpen(ppgen.build("nade", binary, hidden=[8]))
    observed = torch.tensor([True, True, False, False, False, False])
    x = binary.data[:5]
    ev = ppgen.evaluate(m, x, mask=observed)
    assert ev.kind == "exact" and ev.num_dims == 4
    with torch.no_grad():
        full = m.log_prob(x).double()
        pts = _all_points()
        marg = []
        for row in x:
            keep = (pts[:, observed] == row[observed]).all(1)
            marg.append(torch.logsumexp(m.log_prob(pts[keep]).double(), 0))
    expect = full - torch.stack(marg)
    assert torch.allclose(ev.per_example, expect, atol=1e-5)  # float32 model
    assert ev.bits_per_dim == pytest.approx(float(-expect.mean()) / (4 * math.log(2)))


def test_importance_estimate_is_labelled_and_close(binary):
    m = _sharpen(ppgen.build("nade", binary, hidden=[8]))
    observed = torch.tensor([True, True, False, False, False, False])
    x = binary.data[:8]
    exact = ppgen.evaluate(m, x, mask=observed)
    est = ppgen.evaluate(m, x, mask=observed, estimator="importance", num_particles=2000)
    assert est.kind == "estimate" and est.estimator == "is-2000" and est.mc_stderr > 0
    assert abs(est.nats - exact.nats) < 5 * est.mc_stderr + 0.02, (est, exact)
    assert any("ESS" in n for n in est.notes)


def test_gibbs_when_the_ordering_does_not_allow_it(binary):
    m = _sharpen(ppgen.build("nade", binary, hidden=[8]))
    observed = torch.tensor([False, False, False, True, True, True])  # observed last
    assert m.exact_conditional_reason(observed) is not None
    x = binary.data[:1]
    imp = impute(m, x, observed, num_samples=2000, seed=0, sweeps=6)
    assert imp.method == "gibbs" and not imp.exact
    assert any("Gibbs" in n for n in imp.notes)
    pts, probs = _enumerated_conditional(m, x[0], observed)
    assert _chi_square(imp.samples[:, 0], pts, probs) > 1e-3
    with pytest.raises(ValueError, match="ordering"):
        impute(m, x, observed, method="exact-ancestral")
    # the conditional density then falls back to the labelled importance estimate
    ev = ppgen.evaluate(m, binary.data[:4], mask=observed, num_particles=500, sweeps=3)
    assert ev.kind == "estimate"


@pytest.mark.slow  # about 20 s alone on one core (a short fit, then 150 NUTS warm-up steps)
def test_nuts_matches_the_flows_own_conditional_on_a_grid():
    torch.manual_seed(0)
    ds = ppgen.datasets.load("moons", split="val")
    m = ppgen.build("realnvp", ds, hidden=[16], transforms=4)
    ppgen.fit(m, ds, steps=60, batch_size=100, lr=3e-3, progress=False, seed=0)
    m.eval()
    x1 = 0.5
    n = 150  # independent rows with the same observed x1: one draw each, pooled
    x = torch.tensor([[x1, 0.0]]).expand(n, 2).clone()
    observed = torch.tensor([True, False])
    imp = impute(m, x, observed, num_samples=1, seed=0, num_chains=1, warmup_steps=150)
    assert imp.method == "nuts" and not imp.exact and imp.chains is not None
    draws = imp.samples[0, :, 1].double().numpy()
    grid = torch.linspace(-4, 4, 4001, dtype=torch.float64)
    with torch.no_grad():
        lp = m.log_prob(torch.stack([torch.full_like(grid, x1), grid], 1).to(ds.data.dtype))
    dens = torch.softmax(lp.double(), 0).numpy()
    cdf = np.cumsum(dens)

    def model_cdf(v):
        return np.interp(v, grid.numpy(), cdf)

    p = stats.kstest(draws, model_cdf).pvalue
    assert p > 1e-3, p
    assert bool((imp.samples[..., 0] == x1).all())  # observed kept exactly
    idata = imp.to_inference_data()
    assert idata.posterior["x_missing"].shape == (1, 1, n, 1)


def test_nuts_on_discrete_data_uses_the_dequantized_density():
    ds = ppgen.datasets.load("digits", split="val")
    m = ppgen.build("realnvp", ds, hidden=[16], transforms=2).eval()
    imp = impute(m, ds.data[:2], "bottom-half", num_samples=2, seed=0, warmup_steps=3,
                 max_tree_depth=3)
    s = imp.samples
    assert imp.method == "nuts" and "dequantized" in imp.notes[0]
    assert bool((s == s.round()).all()) and float(s.min()) >= 0 and float(s.max()) <= 16
    assert torch.equal(s[:, :, :, :4], ds.data[:2, :, :4].expand(2, -1, -1, -1, -1))


# ---- reliability: bad input refused before any work; the edge cases say what they did ---------


@pytest.fixture(scope="module")
def made_digits():
    ds = ppgen.datasets.load("digits", split="val")
    return ds, ppgen.build("made", ds, hidden=[16], num_masks=2).eval()


@pytest.mark.parametrize("mask, match", [
    (torch.ones(7, 8, dtype=torch.bool), "broadcast"),
    (torch.ones(1, 8, 8), "bool"),
    ("bottom", "unknown mask"),
    (3, "bool tensor"),
])
def test_bad_masks_fail_first(made_digits, mask, match):
    ds, m = made_digits
    with pytest.raises(ValueError, match=match):
        impute(m, ds.data[:2], mask)
    with pytest.raises(ValueError, match=match):
        ppgen.evaluate(m, ds.data[:2], mask=mask)


def test_all_observed_and_all_missing(made_digits):
    ds, m = made_digits
    x = ds.data[:3]
    imp = impute(m, x, torch.ones(1, 8, 8, dtype=torch.bool), num_samples=2)
    assert imp.method == "observed" and "every coordinate" in imp.notes[0]
    assert torch.equal(imp.samples, x.expand(2, -1, -1, -1, -1))
    imp = impute(m, x, torch.zeros(1, 8, 8, dtype=torch.bool), num_samples=2, seed=3)
    assert imp.method == "unconditional" and "unconditional" in imp.notes[0]
    assert imp.samples.shape == (2, 3, 1, 8, 8)
    with pytest.raises(ValueError, match="nothing missing"):
        ppgen.evaluate(m, x, mask=torch.ones(1, 8, 8, dtype=torch.bool))


def test_nan_in_observed_cells_is_refused_but_allowed_in_missing(made_digits):
    ds, m = made_digits
    x = ds.data[:2].clone()
    x[0, 0, 7, 7] = math.nan  # a missing cell under bottom-half: fine
    imp = impute(m, x, "bottom-half", num_samples=1)
    assert bool(torch.isfinite(imp.samples).all())
    x[1, 0, 0, 0] = math.nan  # an observed cell
    with pytest.raises(ValueError, match=r"NaN .* observed cells .*index \(1, 0, 0, 0\)"):
        impute(m, x, "bottom-half")


def test_out_of_support_and_bad_arguments(made_digits):
    ds, m = made_digits
    with pytest.raises(ValueError, match="num_samples"):
        impute(m, ds.data[:2], "bottom-half", num_samples=0)
    with pytest.raises(ValueError, match="shape"):
        impute(m, ds.data[0], "bottom-half")
    bad = ds.data[:2].clone()
    bad[0, 0, 0, 0] = 99  # observed, outside the 17 levels
    with pytest.raises(ValueError):
        impute(m, bad, "bottom-half")
    with pytest.raises(ValueError, match="unknown imputation method"):
        impute(m, ds.data[:2], "bottom-half", method="magic")
    with pytest.raises(ValueError, match="does not support method 'nuts'"):
        impute(m, ds.data[:2], "bottom-half", method="nuts")
    with pytest.raises(ValueError, match="takes no options"):
        impute(m, ds.data[:2], "bottom-half", warmup_steps=3)


def test_a_family_without_a_method_names_those_that_have_one(made_digits, monkeypatch):
    ds, m = made_digits
    monkeypatch.setattr(type(m), "conditioning_methods", ())
    with pytest.raises(ValueError, match=r"declares no conditioning method.*nade \("):
        impute(m, ds.data[:2], "bottom-half")


def test_seeds_make_draws_reproducible_and_leave_the_global_rng(made_digits):
    ds, m = made_digits
    state = torch.random.get_rng_state()
    a = impute(m, ds.data[:4], "random:0.5", num_samples=3, seed=5, sweeps=1)
    assert torch.equal(state, torch.random.get_rng_state())
    b = impute(m, ds.data[:4], "random:0.5", num_samples=3, seed=5, sweeps=1)
    c = impute(m, ds.data[:4], "random:0.5", num_samples=3, seed=6, sweeps=1)
    assert torch.equal(a.samples, b.samples) and not torch.equal(a.samples, c.samples)
    e1 = impute(m, ds.data[:4], "bottom-half", num_samples=3, seed=5)
    e2 = impute(m, ds.data[:4], "bottom-half", num_samples=3, seed=5)
    assert torch.equal(e1.samples, e2.samples)


def test_per_example_masks_are_grouped(made_digits):
    ds, m = made_digits
    masks = torch.stack([ppgen.masks.named("bottom-half", (1, 8, 8)),
                         ppgen.masks.named("right-half", (1, 8, 8))] * 2)
    imp = impute(m, ds.data[:4], masks, num_samples=2, seed=0, sweeps=1, method="gibbs")
    assert len(imp.diagnostics["groups"]) == 2
    assert torch.equal(torch.where(masks, ds.data[:4], 0.0),
                       torch.where(masks, imp.samples[1], 0.0))


def test_every_registered_method_is_declared_by_some_family():
    from ppgen.inference.conditioning.api import families_with_methods

    declared = {m for ms in families_with_methods().values() for m in ms}
    assert {"exact-ancestral", "gibbs", "nuts"} <= set(IMPUTERS)
    assert {"exact-ancestral", "gibbs", "nuts"} <= declared


def test_cli_impute_and_evaluate_mask(tmp_path, monkeypatch, capsys):
    from ppgen.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["fit", "nade", "--data", "digits", "--steps", "3", "--out", "r",
                 "--no-progress"]) == 0
    assert main(["impute", "r", "--mask", "bottom-half", "-n", "2", "--limit", "5",
                 "-o", "imp.npz", "--png", "grid.png"]) == 0
    out = np.load(tmp_path / "imp.npz")
    assert out["samples"].shape == (2, 5, 1, 8, 8) and (tmp_path / "grid.png").exists()
    assert main(["evaluate", "r", "--mask", "bottom-half"]) == 0
    assert "exact-conditional" in capsys.readouterr().out
    assert main(["impute", "r", "--mask", "bottom", "-o", "x.npz"]) == 2
    assert "unknown mask" in capsys.readouterr().err
    assert main(["impute", "r", "--mask", "bottom-half", "-o", "x.txt"]) == 2
