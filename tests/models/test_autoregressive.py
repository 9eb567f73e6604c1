"""NADE and MADE: exact normalization, sampling agrees with log_prob, autoregressive masks.

Exact checks run in float64. Statistical checks use fixed seeds (deterministic); each is a test
at level 1e-3, its false-alarm rate were the seed drawn at random.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyro import poutine
from pyro.infer import Predictive
from scipy import stats

import ppgen
from ppgen.models.autoregressive import MADE, NADE

EXACT = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _perturb(model: torch.nn.Module, seed: int, scale: float = 1.0) -> torch.nn.Module:
    """Move every parameter off its initialization, so the density is far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _all_configurations(levels: int, d: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(levels), repeat=d)), dtype=torch.float64)


def _spec(levels: int, d: int) -> dict:
    kind = "binary" if levels == 2 else "discrete"
    return {"event_shape": (d,), "kind": kind, "levels": levels}


def _nade(
    levels: int,
    d: int,
    seed: int,
    hidden: int = 7,
    order=None,
    activation="sigmoid",
    encoding="value",
):
    torch.manual_seed(seed)
    m = NADE(
        **_spec(levels, d), hidden=[hidden], order=order, activation=activation, encoding=encoding
    )
    return _perturb(m.double(), seed).eval()


def _made(levels: int, d: int, seed: int, hidden=(9, 7), **kw):
    torch.manual_seed(seed)
    m = MADE(**_spec(levels, d), hidden=list(hidden), mask_seed=seed, **kw)
    return _perturb(m.double(), seed, scale=0.5).eval()


orderings = st.integers(0, 2**31 - 1)


@torch.no_grad()
def _mass(log_prob) -> float:
    """The total probability of all configurations, from their log-probabilities."""
    return float(log_prob.exp().sum())


def _order(d: int, seed: int) -> tuple[int, ...]:
    return tuple(np.random.RandomState(seed).permutation(d).tolist())


# ---- normalization by enumeration -------------------------------------------------------------


@given(
    d=st.integers(1, 10),
    seed=st.integers(0, 10**6),
    order_seed=orderings,
    activation=st.sampled_from(["sigmoid", "relu"]),
)
@EXACT
def test_nade_binary_normalizes(d, seed, order_seed, activation):
    m = _nade(2, d, seed, order=_order(d, order_seed), activation=activation)
    total = _mass(m.log_prob(_all_configurations(2, d)))
    assert abs(total - 1.0) < 1e-5, (d, seed)


@given(
    d=st.integers(1, 4),
    seed=st.integers(0, 10**6),
    order_seed=orderings,
    encoding=st.sampled_from(["value", "onehot"]),
)
@EXACT
def test_nade_three_levels_normalizes(d, seed, order_seed, encoding):
    m = _nade(3, d, seed, order=_order(d, order_seed), encoding=encoding)
    total = _mass(m.log_prob(_all_configurations(3, d)))
    assert abs(total - 1.0) < 1e-5, (d, seed)


@given(
    d=st.integers(1, 10),
    seed=st.integers(0, 10**6),
    num_masks=st.integers(1, 4),
    ensemble=st.integers(1, 4),
    order_seed=orderings,
    connectivity=st.sampled_from(["random", "even"]),
    hidden=st.sampled_from([(9,), (9, 7), (5, 11, 6)]),
)
@EXACT
def test_made_binary_normalizes(d, seed, num_masks, ensemble, order_seed, connectivity, hidden):
    m = _made(
        2,
        d,
        seed,
        hidden=hidden,
        num_masks=num_masks,
        ensemble=min(ensemble, num_masks),
        order=_order(d, order_seed),
        connectivity=connectivity,
        dropout=0.3,
    )
    x = _all_configurations(2, d)
    assert abs(_mass(m.log_prob(x)) - 1.0) < 1e-5, (d, seed)
    for k in range(num_masks):  # every single mask is a normalized density too
        assert abs(_mass(m.log_prob_mask(x, k)) - 1.0) < 1e-5, (d, seed, k)


@given(
    d=st.integers(1, 4),
    seed=st.integers(0, 10**6),
    num_masks=st.integers(1, 4),
    connectivity=st.sampled_from(["random", "even"]),
)
@EXACT
def test_made_three_levels_normalizes(d, seed, num_masks, connectivity):
    m = _made(3, d, seed, num_masks=num_masks, connectivity=connectivity)
    assert abs(_mass(m.log_prob(_all_configurations(3, d))) - 1.0) < 1e-5


def test_made_single_conditional_matches_the_full_pass():
    m = _made(5, 7, seed=2, num_masks=2)
    x = torch.randint(0, 5, (30, 7)).double()
    for k in range(2):
        full = m.conditionals(x, k)
        for dim in range(7):
            assert torch.allclose(m._conditional(x, k, dim), full[:, dim], atol=1e-12)


def test_ensemble_is_the_mixture_of_the_masks():
    m = _made(2, 6, 3, num_masks=4, ensemble=3)
    x = _all_configurations(2, 6)
    per_mask = torch.stack([m.log_prob_mask(x, k) for k in range(3)])
    assert torch.allclose(m.log_prob(x), per_mask.exp().mean(0).log(), atol=1e-12)
    assert not torch.allclose(per_mask[0], per_mask[1]), "masks should give different densities"


@pytest.mark.parametrize("family", ["nade", "made"])
def test_continuous_density_integrates_to_one(family):
    """RNADE / MADE's Gaussian mixtures on D = 2, integrated numerically over the plane."""
    spec = {"event_shape": (2,), "kind": "continuous", "levels": None}
    torch.manual_seed(0)
    if family == "nade":
        m = _perturb(NADE(**spec, hidden=[6], components=3).double(), 1, scale=0.3).eval()
    else:
        m = _perturb(MADE(**spec, hidden=[8], components=3, num_masks=2).double(), 1, 0.3).eval()
    # midpoint rule in u on (-1, 1)^2 with x = tan(pi u / 2): the whole plane, heavy tails too
    h = 2 / 500
    u = torch.arange(-1 + h / 2, 1, h, dtype=torch.float64)
    g, w = torch.tan(math.pi * u / 2), h * math.pi / 2 / torch.cos(math.pi * u / 2) ** 2
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    grid = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    weights = (w[:, None] * w[None, :]).flatten()
    with torch.no_grad():
        total = (torch.cat([m.log_prob(c).exp() for c in grid.split(50_000)]) * weights).sum()
    assert abs(float(total) - 1.0) < 1e-5, family


# ---- sampling agrees with log_prob ------------------------------------------------------------


def _chi_square_p(samples: torch.Tensor, model, levels: int) -> float:
    d = samples.shape[1]
    configs = _all_configurations(levels, d)
    with torch.no_grad():
        probs = model.log_prob(configs.to(next(model.parameters()).dtype)).exp().double().numpy()
    index = (samples.long() * levels ** torch.arange(d - 1, -1, -1)).sum(1)  # matches product()
    observed = np.bincount(index.numpy(), minlength=len(configs)).astype(float)
    expected = probs / probs.sum() * len(samples)
    small = expected < 5
    observed = np.append(observed[~small], observed[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    keep = expected > 0
    return float(stats.chisquare(observed[keep], expected[keep]).pvalue)


@pytest.mark.parametrize("levels", [2, 3])
@pytest.mark.parametrize("sampler", ["nade-cached", "nade-naive", "nade-onehot", "made-ensemble"])
def test_samples_follow_log_prob(levels, sampler):
    d, n = 4, 20_000
    if sampler.startswith("nade"):
        encoding = "onehot" if sampler == "nade-onehot" else "value"
        m = _nade(levels, d, seed=7, order=(2, 0, 3, 1), encoding=encoding)
        x = m.sample(n, seed=1, cached=sampler == "nade-cached")
    else:
        m = _made(levels, d, seed=7, num_masks=3, order=(2, 0, 3, 1))
        x = m.sample(n, seed=1)
    assert x.shape == (n, d) and x.dtype == torch.float64
    p = _chi_square_p(x, m, levels)
    assert p > 1e-3, f"{sampler} levels={levels}: p = {p:.2e}"


@pytest.mark.parametrize("family", ["nade", "made"])
def test_continuous_samples_follow_log_prob(family):
    """Chi-square on a 2-D histogram with cell probabilities integrated from log_prob."""
    spec = {"event_shape": (2,), "kind": "continuous", "levels": None}
    torch.manual_seed(0)
    if family == "nade":
        m = _perturb(NADE(**spec, hidden=[6], components=3).double(), 2, scale=0.3).eval()
    else:
        m = _perturb(MADE(**spec, hidden=[8], components=3, num_masks=2).double(), 2, 0.3).eval()
    n = 20_000
    x = m.sample(n, seed=3).numpy()
    edges = np.linspace(-8, 8, 17)
    counts = np.histogram2d(x[:, 0], x[:, 1], bins=[edges, edges])[0].ravel()
    h = 0.05
    g = torch.arange(-8 + h / 2, 8, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    grid = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    with torch.no_grad():
        w = torch.cat([m.log_prob(c).exp() for c in grid.split(50_000)]).numpy() * h * h
    probs = np.histogram2d(grid[:, 0].numpy(), grid[:, 1].numpy(), bins=[edges, edges], weights=w)[
        0
    ].ravel()
    observed = np.append(counts, n - counts.sum())
    expected = np.append(probs, max(1 - probs.sum(), 0.0)) * n
    small = expected < 5
    observed = np.append(observed[~small], observed[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    keep = expected > 0
    p = stats.chisquare(
        observed[keep], expected[keep] * observed[keep].sum() / expected[keep].sum()
    ).pvalue
    assert p > 1e-3, f"{family}: p = {p:.2e}"


@given(
    levels=st.sampled_from([2, 3, 17]),
    d=st.integers(1, 12),
    seed=st.integers(0, 10**6),
    order_seed=orderings,
    encoding=st.sampled_from(["value", "onehot"]),
)
@EXACT
def test_nade_cached_sampling_equals_the_naive_path(levels, d, seed, order_seed, encoding):
    m = _nade(levels, d, seed, order=_order(d, order_seed), encoding=encoding)
    a = m.sample(50, seed=seed, cached=True)
    b = m.sample(50, seed=seed, cached=False)
    assert torch.equal(a, b), (levels, d, seed)


@pytest.mark.parametrize("levels", [2, 5, None])
def test_nade_matrix_and_cumsum_preactivations_agree(levels, monkeypatch):
    """Value inputs use a masked matrix product up to D = _GEMM_MAX_DIMS and an exclusive
    cumulative sum beyond: both must give the same conditionals and a normalized density."""
    if levels is None:
        m = _perturb(NADE(event_shape=(6,), kind="continuous", hidden=[8]).double(), 0).eval()
        x = torch.randn(40, 6, dtype=torch.float64)
    else:
        m = _nade(levels, 6, seed=4, order=(5, 3, 1, 0, 2, 4))
        x = torch.randint(0, levels, (40, 6)).double()
    gemm = m.conditionals(x)
    monkeypatch.setattr(NADE, "_GEMM_MAX_DIMS", 0)
    assert torch.allclose(m.conditionals(x), gemm, atol=1e-12)
    if levels is not None:
        assert abs(_mass(m.log_prob(_all_configurations(levels, 6))) - 1.0) < 1e-5


def test_rnade_cached_sampling_equals_the_naive_path():
    spec = {"event_shape": (5,), "kind": "continuous", "levels": None}
    m = _perturb(NADE(**spec, hidden=[8], components=4, order=(4, 2, 0, 1, 3)).double(), 0)
    a, b = m.sample(100, seed=2, cached=True), m.sample(100, seed=2, cached=False)
    assert torch.allclose(a, b, atol=1e-10)


# ---- Pyro's tools -----------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["nade", "made"])
@pytest.mark.parametrize("dataset", ["digits", "digits-binary", "moons"])
def test_trace_and_predictive(family, dataset):
    ds = ppgen.datasets.load(dataset, "val").subset(20)
    kw = {"hidden": [12], "components": 2} | ({"num_masks": 3} if family == "made" else {})
    m = _perturb(ppgen.build(family, ds, **kw).double(), 0, 0.3).eval()
    x = ds.data.double()
    with torch.no_grad():
        tr = poutine.trace(m.model).get_trace(x)
        assert tr.nodes["x"]["is_observed"]
        assert torch.allclose(tr.log_prob_sum(), m.log_prob(x).sum(), rtol=1e-12)
        pred = Predictive(m.model, num_samples=7, parallel=True)()
    assert pred["x"].shape == (7, 1, *ds.event_shape)
    if ds.kind != "continuous":
        s = pred["x"]
        assert torch.equal(s, s.round()) and s.min() >= 0 and s.max() <= ds.levels - 1


def test_predictive_samples_follow_log_prob():
    m = _made(2, 4, seed=5, num_masks=2)
    with torch.no_grad():
        x = Predictive(m.model, num_samples=20_000, parallel=True)()["x"].squeeze(1)
    assert _chi_square_p(x, m, 2) > 1e-3


# ---- masks are autoregressive -----------------------------------------------------------------


@given(
    d=st.integers(2, 8),
    seed=st.integers(0, 10**6),
    num_masks=st.integers(1, 3),
    connectivity=st.sampled_from(["random", "even"]),
    levels=st.sampled_from([2, 3, None]),
    hidden=st.sampled_from([(9,), (9, 7), (5, 11, 6)]),
)
@EXACT
def test_made_outputs_ignore_inputs_at_or_after_their_position(
    d, seed, num_masks, connectivity, levels, hidden
):
    kind = "continuous" if levels is None else ("binary" if levels == 2 else "discrete")
    torch.manual_seed(seed)
    m = (
        MADE(
            event_shape=(d,),
            kind=kind,
            levels=levels,
            hidden=list(hidden),
            num_masks=num_masks,
            connectivity=connectivity,
            mask_seed=seed,
            components=2,
        )
        .double()
        .eval()
    )
    x = torch.rand(1, d, dtype=torch.float64)
    for k in range(num_masks):
        jac = torch.autograd.functional.jacobian(lambda v, k=k: m.conditionals(v, k), x)
        jac = jac.reshape(d, m.num_params, d).abs().sum(1)  # (output dim, input dim)
        pos = m.orders[k]
        forbidden = pos[None, :] >= pos[:, None]  # input j at or after output d
        assert float(jac[forbidden].abs().max()) == 0.0, (d, k)
        # the masks themselves: paths from input j to output d (products of the 0/1 masks)
        paths = m.net.layers[0].mask
        for layer in m.net.layers[1:]:
            paths = layer.mask @ paths
        paths = (m.net.output.mask @ paths).reshape(d, m.num_params, d).sum(1)
        assert float(paths[forbidden].max()) == 0.0, (d, k)
        if connectivity == "even" and min(hidden) >= d - 1:  # every degree in every layer
            assert bool((paths[~forbidden] > 0).all()), (d, k)


@given(
    d=st.integers(2, 8),
    seed=st.integers(0, 10**6),
    levels=st.sampled_from([2, 3, None]),
    order_seed=orderings,
)
@EXACT
def test_nade_conditionals_are_autoregressive(d, seed, levels, order_seed):
    kind = "continuous" if levels is None else ("binary" if levels == 2 else "discrete")
    order = _order(d, order_seed)
    torch.manual_seed(seed)
    m = NADE(
        event_shape=(d,), kind=kind, levels=levels, hidden=[6], order=order, components=2
    ).double()
    x = torch.rand(1, d, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(m.conditionals, x)  # (1, D steps, P, 1, D dims)
    jac = jac.reshape(d, m.num_params, d).abs().sum(1)
    pos = torch.tensor(order)
    step_of_input = pos[None, :].expand(d, d)
    step = torch.arange(d)[:, None].expand(d, d)
    assert float(jac[step_of_input >= step].max()) == 0.0
    assert float(jac[step_of_input < step].min()) > 0.0  # NADE is fully connected


def test_nade_discrete_conditionals_are_autoregressive():
    """One-hot inputs: changing x at positions >= i leaves conditional i unchanged."""
    m = _nade(5, 6, seed=1, order=(3, 5, 0, 1, 4, 2), encoding="onehot")
    x = torch.randint(0, 5, (200, 6)).double()
    base = m.conditionals(x)
    pos = torch.tensor(m.config.order)
    for dim in range(6):
        y = x.clone()
        y[:, dim] = (y[:, dim] + 1) % 5
        changed = (m.conditionals(y) - base).abs().amax(dim=(0, 2)) > 0  # per step
        steps = torch.arange(6)
        assert not changed[steps <= pos[dim]].any(), dim
        assert changed[steps > pos[dim]].all(), dim


# ---- training mode, checkpoints -----------------------------------------------------------------


def test_made_training_cycles_masks_and_the_cycle_survives_a_checkpoint(tmp_path):
    ds = ppgen.datasets.load("digits-binary", "val").subset(30)
    m = ppgen.build("made", ds, hidden=[16], num_masks=3, dropout=0.0)
    x = ds.data.reshape(30, -1)
    m.train()
    for step in range(5):
        assert int(m.mask_step) == step
        lp = m.log_prob(ds.data)
        assert torch.allclose(lp, m.log_prob_mask(x, step % 3)), step
    ppgen.save(m, tmp_path / "m.pt")
    m2 = ppgen.load(tmp_path / "m.pt")
    assert int(m2.mask_step) == 5
    m.eval(), m2.eval()
    assert torch.equal(m.log_prob(ds.data), m2.log_prob(ds.data))


@pytest.mark.parametrize("family", ["nade", "made"])
def test_resume_is_exact(family, tmp_path):
    train = ppgen.datasets.load("digits", "train").subset(200)
    kw = {"hidden": [16]} | ({"num_masks": 3, "dropout": 0.3} if family == "made" else {})
    args = {"batch_size": 32, "lr": 1e-2, "seed": 3, "progress": False, "device": "cpu"}
    torch.manual_seed(0)
    a = ppgen.build(family, train, **kw)
    ppgen.fit(a, train, steps=8, out=tmp_path / "a", **args)
    torch.manual_seed(0)
    b = ppgen.build(family, train, **kw)
    ppgen.fit(b, train, steps=4, out=tmp_path / "b", **args)
    b = ppgen.build(family, train, **kw)  # its weights come from the checkpoint
    ppgen.fit(b, train, steps=8, out=tmp_path / "b", resume=True, **args)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["nade", "made"])
def test_bad_input_is_refused(family):
    ds = ppgen.datasets.load("digits", "val").subset(4)
    m = ppgen.build(family, ds, hidden=[8]).eval()
    x = ds.data.clone()
    cases = {
        "non-finite": x.clone().index_put_((torch.tensor([0]),), torch.tensor(float("nan"))),
        "shape": x.reshape(4, -1),
        r"values in": x + 17,
        "non-integer": x + 0.5,
        "empty": x[:0],
    }
    for match, bad in cases.items():
        with pytest.raises(ValueError, match=match):
            m.log_prob(bad)
    with pytest.raises(ValueError, match="unconditional"):
        m.log_prob(x, context=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="n >= 1"):
        m.sample(0)


def test_bad_configs_are_refused():
    spec = {"event_shape": (3,), "kind": "binary"}
    with pytest.raises(ValueError, match="one hidden layer"):
        NADE(**spec, hidden=[8, 8])
    with pytest.raises(ValueError, match="permutation"):
        NADE(**spec, order=(0, 0, 1))
    with pytest.raises(ValueError, match="permutation"):
        MADE(**spec, order=(0, 1))
    with pytest.raises(ValueError, match="ensemble"):
        MADE(**spec, num_masks=2, ensemble=3)
    with pytest.raises(ValueError, match="dropout"):
        MADE(**spec, dropout=1.0)
    with pytest.raises(ValueError, match="activation"):
        NADE(**spec, activation="tanh")
    with pytest.raises(ValueError, match="hyperparameter"):
        ppgen.build("made", ppgen.datasets.load("digits", "val"), hiden=[8])


# ---- quality (slow) -----------------------------------------------------------------------------


@pytest.mark.goal
@pytest.mark.slow
def test_made_defaults_reach_2_bits_per_dim_on_digits():
    train, val, test = (ppgen.datasets.load("digits", s) for s in ("train", "val", "test"))
    m = ppgen.build("made", train)  # default hyperparameters
    ppgen.fit(
        m,
        train,
        steps=4000,
        batch_size=128,
        lr=1e-3,
        seed=0,
        val=val,
        progress=False,
        device="cpu",
    )
    ev = ppgen.evaluate(m, test)
    assert ev.kind == "exact"
    assert ev.bits_per_dim <= 2.00, str(ev)
    assert math.isfinite(ev.stderr)
