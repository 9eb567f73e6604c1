"""PixelCNN and Gated PixelCNN: causality by autograd, normalization by enumeration, the
discretized logistic mixture, the fast sampler against the naive one, Pyro's tools, and errors.

Exact checks run in float64. Statistical checks are seeded chi-square tests at a stated
false-alarm rate of 1e-3 per test.
"""

from __future__ import annotations

import itertools
import math

import pyro
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pyro import poutine
from pyro.infer import Predictive, Trace_ELBO
from scipy import stats

import ppgen
from ppgen.models.autoregressive.pixelcnn import GatedPixelCNN, PixelCNN
from ppgen.models.autoregressive.pixelcnn_layers import (
    DiscretizedLogisticMixture,
    MaskedConv2d,
    channel_groups,
    conv_mask,
)

FAMILIES = {"pixelcnn": PixelCNN, "gated-pixelcnn": GatedPixelCNN}
ALPHA = 1e-3  # false-alarm rate of every statistical test here
HYPOTHESIS = settings(max_examples=6, deadline=None, derandomize=True)


def _model(family, shape=(1, 4, 4), levels=3, seed=0, dtype=torch.float64, **hparams):
    torch.manual_seed(seed)
    kind = "binary" if levels == 2 else "discrete"
    hparams = {"hidden": [8, 8], "kernel_size": 3, "first_kernel_size": 3, **hparams}
    m = FAMILIES[family](event_shape=shape, kind=kind, levels=levels, **hparams)
    m = m.to(dtype).eval()
    if m.conditional:  # embeddings start at zero; give the classes distinct biases
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "embed" in name:
                    p.normal_()
    return m


def _all_images(shape, levels, dtype=torch.float64):
    n = math.prod(shape)
    grid = torch.tensor(list(itertools.product(range(levels), repeat=n)), dtype=dtype)
    return grid.reshape(-1, *shape)


def _subpixel_dependencies(m, context=None, num_inputs=4):
    """Dep[i, j]: does any output parameter of sub-pixel i depend on input sub-pixel j, at any
    of ``num_inputs`` random inputs? (One input can hide a dependency behind a ReLU that
    happens to be off there.)

    Sub-pixels are numbered in generation order, i = (row * W + col) * C + channel.
    """
    channels, height, width = m.config.event_shape
    p = m.config.params_per_subpixel
    dep = torch.zeros(channels, height, width, channels, height, width, dtype=torch.bool)
    for _ in range(num_inputs):
        x = torch.rand(1, channels, height, width, dtype=torch.float64) * 2 - 1
        jac = torch.autograd.functional.jacobian(lambda v: m.net(v, context), x)
        jac = jac[0].reshape(channels, p, height, width, channels, height, width)
        dep |= (jac != 0).any(dim=1)  # (C, H, W, C, H, W)
    dep = dep.permute(1, 2, 0, 4, 5, 3)  # (H, W, C, H, W, C): generation order
    d = channels * height * width
    return dep.reshape(d, d)


# ---- masks ------------------------------------------------------------------------------------


@HYPOTHESIS
@given(
    k=st.sampled_from([1, 3, 5]),
    channels=st.integers(1, 3),
    mask_type=st.sampled_from(["A", "B"]),
    widths=st.tuples(st.integers(3, 7), st.integers(3, 7)),
    seed=st.integers(0, 2**16),
)
def test_masked_conv_sees_exactly_the_causal_taps(k, channels, mask_type, widths, seed):
    """The autograd Jacobian of a masked conv is nonzero exactly on the causal taps: earlier
    pixels within the kernel, and at the pixel itself the channel groups before (A) or up to
    (B) the output's group."""
    torch.manual_seed(seed)
    c_in, c_out = widths
    g_in, g_out = channel_groups(c_in, channels), channel_groups(c_out, channels)
    mask = conv_mask((k, k), (k // 2, k // 2), g_in, g_out, mask_type)
    conv = MaskedConv2d(c_in, c_out, (k, k), (k // 2,) * 4, mask).double()
    size = 4
    x = torch.randn(1, c_in, size, size, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(conv, x)[0, :, :, :, 0]  # (out, H, W, in, H, W)
    for o, r, c, i, r2, c2 in itertools.product(
        range(c_out), range(size), range(size), range(c_in), range(size), range(size)
    ):
        dr, dc = r2 - r, c2 - c
        in_kernel = abs(dr) <= k // 2 and abs(dc) <= k // 2
        earlier = dr < 0 or (dr == 0 and dc < 0)
        same = dr == 0 and dc == 0
        group_ok = g_in[i] < g_out[o] if mask_type == "A" else g_in[i] <= g_out[o]
        expected = in_kernel and (earlier or (same and bool(group_ok)))
        assert bool(jac[o, r, c, i, r2, c2] != 0) == expected, (o, r, c, i, r2, c2)


# ---- causality and the blind spot -------------------------------------------------------------


@HYPOTHESIS
@given(
    family=st.sampled_from(sorted(FAMILIES)),
    channels=st.sampled_from([1, 3]),
    output=st.sampled_from(["categorical", "logistic"]),
    kernels=st.sampled_from([(3, 3), (5, 3), (3, 5), (1, 3)]),
    hidden=st.sampled_from([[6, 6], [6, 9, 6], [3]]),
    conditional=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_output_never_depends_on_the_current_or_later_subpixels(
    family, channels, output, kernels, hidden, conditional, seed
):
    """d output_i / d input_j == 0 exactly for every j >= i in raster-then-channel order."""
    m = _model(
        family,
        shape=(channels, 3, 4),
        levels=4,
        seed=seed,
        hidden=hidden,
        first_kernel_size=kernels[0],
        kernel_size=kernels[1],
        output=output,
        num_classes=3 if conditional else None,
    )
    context = torch.tensor([1]) if conditional else None
    dep = _subpixel_dependencies(m, context)
    later = torch.ones_like(dep).triu()  # j >= i
    assert not (dep & later).any(), f"{family}: an output sees its own or a later sub-pixel"


@pytest.mark.parametrize("channels", [1, 3])
def test_gated_pixelcnn_has_no_blind_spot(channels):
    """At random init every output sees every earlier sub-pixel (the receptive field covers the
    4x4 image), so the dependency matrix is exactly the strict lower triangle."""
    m = _model("gated-pixelcnn", shape=(channels, 4, 4), levels=4, hidden=[8, 8, 8], seed=1)
    dep = _subpixel_dependencies(m)
    assert torch.equal(dep, torch.ones_like(dep).tril(-1))


@pytest.mark.parametrize("first_kernel", [3, 5])
def test_pixelcnn_has_the_blind_spot_the_gated_one_removes(first_kernel):
    """Stacked kxk masks never reach the pixel one row up and first_kernel//2 + 1 columns to the
    right (the blind spot); the gated stacks do."""
    shape = (1, 4, 6)
    offset = first_kernel // 2 + 1
    r, c = 2, 0
    i, j = r * shape[2] + c, (r - 1) * shape[2] + c + offset
    for family, seen in (("pixelcnn", False), ("gated-pixelcnn", True)):
        m = _model(family, shape=shape, hidden=[8, 8, 8, 8], first_kernel_size=first_kernel)
        dep = _subpixel_dependencies(m)
        assert bool(dep[i, j]) == seen, family
        assert dep[i, j - 1], f"{family}: the pixel next to the blind spot is seen"


# ---- normalization ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize(
    ("shape", "levels", "output"),
    [
        ((1, 2, 2), 2, "categorical"),  # 16 binary images
        ((1, 2, 2), 3, "categorical"),  # 81 three-level images
        ((1, 2, 2), 3, "logistic"),
        ((3, 1, 2), 2, "categorical"),  # 64 RGB images: channel order inside a pixel
        ((3, 1, 1), 4, "logistic"),
    ],
)
def test_probabilities_sum_to_one_by_enumeration(family, shape, levels, output):
    for num_classes in (None, 2):
        m = _model(family, shape=shape, levels=levels, output=output, num_classes=num_classes)
        x = _all_images(shape, levels)
        for label in range(num_classes or 1):
            ctx = None if num_classes is None else torch.full((len(x),), label)
            with torch.no_grad():
                total = torch.logsumexp(m.log_prob(x, ctx), 0)
            assert abs(float(total)) < 1e-10, (family, shape, levels, output, label)


@HYPOTHESIS
@given(
    components=st.integers(1, 4),
    loc_scale=st.sampled_from([0.5, 3.0, 50.0]),
    log_scale_shift=st.sampled_from([-9.0, -3.0, 0.0, 4.0, 9.0]),
    seed=st.integers(0, 2**16),
)
def test_discretized_logistic_mixture_sums_to_one_over_256_levels(
    components, loc_scale, log_scale_shift, seed
):
    """Exactly normalized for any parameters, including far-out locations and clamped scales."""
    g = torch.Generator().manual_seed(seed)
    shape = (5, components)
    d = DiscretizedLogisticMixture(
        torch.randn(shape, generator=g, dtype=torch.float64),
        loc_scale * torch.randn(shape, generator=g, dtype=torch.float64),
        torch.randn(shape, generator=g, dtype=torch.float64) + log_scale_shift,
        levels=256,
    )
    x = torch.arange(256.0, dtype=torch.float64)[:, None].expand(256, 5)
    lp = d.log_prob(x)
    assert torch.isfinite(lp).all()
    assert torch.allclose(lp.logsumexp(0), torch.zeros(5, dtype=torch.float64), atol=1e-9)


def test_discretized_logistic_mixture_samples_follow_its_probabilities():
    """Chi-square goodness of fit of ``sample`` against ``log_prob`` on 6 levels."""
    torch.manual_seed(0)
    d = DiscretizedLogisticMixture(
        torch.tensor([0.3, -0.2], dtype=torch.float64),
        torch.tensor([-0.6, 0.4], dtype=torch.float64),
        torch.tensor([-1.0, -1.5], dtype=torch.float64),
        levels=6,
    )
    n = 20000
    counts = torch.bincount(d.sample((n,)).long(), minlength=6).double()
    probs = d.log_prob(torch.arange(6.0, dtype=torch.float64)).exp()
    assert abs(float(probs.sum()) - 1) < 1e-12
    p_value = stats.chisquare(counts.numpy(), (n * probs).numpy()).pvalue
    assert p_value > ALPHA, p_value


# ---- fast sampling ----------------------------------------------------------------------------

SAMPLER_CASES = [
    {"shape": (1, 5, 4), "levels": 3},
    {"shape": (1, 4, 5), "levels": 256, "output": "logistic", "kernel_size": 5},
    {"shape": (3, 3, 3), "levels": 4, "num_classes": 3, "hidden": [6, 9, 6]},
    {"shape": (3, 3, 4), "levels": 256, "first_kernel_size": 5},
]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("case", SAMPLER_CASES, ids=lambda c: f"{c['shape']}-{c['levels']}")
def test_fast_sampler_computes_what_the_full_network_computes(family, case):
    """Teacher-forced on a random image, the incremental (one pixel, one row at a time)
    computation gives the full forward pass's parameters at every sub-pixel."""
    m = _model(family, **case)
    channels, height, width = m.config.event_shape
    p = m.config.params_per_subpixel
    n = 3
    x = torch.randint(0, case["levels"], (n, channels, height, width)).double()
    ctx = torch.tensor([0, 2, 1]) if m.conditional else None
    with torch.no_grad():
        full = m.net(m._scale(x), ctx)
        state = m.net.start(x, n, ctx)
        for r in range(height):
            for c in range(width):
                for g in range(channels):
                    params = m.net.pixel(state, r, c)[:, g * p : (g + 1) * p]
                    expected = full[:, g * p : (g + 1) * p, r, c]
                    assert torch.allclose(params, expected, atol=1e-10), (r, c, g)
                    m.net.write(state, r, c, g, m._scale(x[:, g, r, c]))
            m.net.end_row(state, r)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("case", SAMPLER_CASES, ids=lambda c: f"{c['shape']}-{c['levels']}")
def test_fast_and_naive_samplers_agree_sample_for_sample(family, case):
    m = _model(family, **case)
    ctx = torch.tensor([0, 1, 2, 1, 0, 2]) if m.conditional else None
    fast = m.sample(6, seed=3, context=ctx, method="fast")
    naive = m.sample(6, seed=3, context=ctx, method="naive")
    assert torch.equal(fast, naive)
    assert not torch.equal(fast, m.sample(6, seed=4, context=ctx)), "the seed matters"
    assert fast.min() >= 0 and fast.max() <= case["levels"] - 1
    assert torch.equal(fast, fast.round())


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize(("levels", "output"), [(2, "categorical"), (3, "logistic")])
def test_both_samplers_draw_from_the_model_distribution(family, levels, output):
    """Chi-square of each sampler's image frequencies against the exact probabilities of all
    2x2 images (16 or 81 of them), from log_prob by enumeration."""
    m = _model(family, shape=(1, 2, 2), levels=levels, output=output, seed=2)
    with torch.no_grad():
        m.net.head.out.weight.mul_(4.0)  # peaked conditionals: a wrong sampler shows
    images = _all_images((1, 2, 2), levels)
    with torch.no_grad():
        probs = m.log_prob(images).exp()
    weights = levels ** torch.arange(3, -1, -1, dtype=torch.float64)
    n = 6000
    for method, seed in (("fast", 0), ("naive", 1)):
        x = m.sample(n, seed=seed, method=method)
        index = (x.reshape(n, 4) * weights).sum(1).long()
        counts = torch.bincount(index, minlength=len(images)).double()
        expected = n * probs
        keep = expected >= 5  # pool the rare cells, as the chi-square approximation needs
        obs = torch.cat([counts[keep], counts[~keep].sum()[None]])
        exp = torch.cat([expected[keep], expected[~keep].sum()[None]])
        if exp[-1] == 0:
            obs, exp = obs[:-1], exp[:-1]
        p_value = stats.chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item())
        assert p_value.pvalue > ALPHA, (family, method, p_value.pvalue)


# ---- the protocol and Pyro --------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pyro_tools_on_a_conditional_model(family):
    m = _model(family, shape=(1, 3, 3), levels=3, num_classes=4)
    x = _all_images((1, 3, 3), 3)[::97]  # 203 images
    ctx = torch.arange(len(x)) % 4
    with torch.no_grad():
        tr = poutine.trace(m.model).get_trace(x, ctx)
        assert tr.nodes["x"]["is_observed"]
        assert [f.name for f in tr.nodes["x"]["cond_indep_stack"]] == ["data"]
        assert torch.allclose(tr.log_prob_sum(), m.log_prob(x, ctx).sum(), rtol=1e-12)
        loss = Trace_ELBO().loss(m.model, m.guide, x, ctx)
        assert math.isclose(loss, -float(m.log_prob(x, ctx).sum()), rel_tol=1e-10)
        pred = Predictive(m.model, num_samples=3)(None, torch.tensor([0, 1, 3]))
    assert pred["x"].shape == (3, 3, 1, 3, 3)
    assert len(pyro.get_param_store()) == 0


def test_conditional_model_trains_and_evaluates_with_the_labels():
    train = ppgen.datasets.load("digits", "val")
    m = ppgen.build("gated-pixelcnn", train, hidden=[8], num_classes=10)
    assert m.conditional
    before = ppgen.evaluate(m, train).nats
    ppgen.fit(m, train, steps=15, batch_size=100, lr=1e-2, progress=False)
    after = ppgen.evaluate(m, train)
    assert after.kind == "exact" and after.nats < before
    with torch.no_grad():  # the labels matter: scoring with wrong labels changes log p
        wrong = m.log_prob(train.data, (train.labels + 1) % 10)
    assert not torch.allclose(wrong, m.log_prob(train.data, train.labels))


def test_output_is_chosen_by_levels_and_can_be_overridden():
    m17 = _model("pixelcnn", levels=17)
    m256 = _model("pixelcnn", levels=256)
    assert m17.config.output_kind == "categorical" and m17.config.params_per_subpixel == 17
    assert m256.config.output_kind == "logistic" and m256.config.params_per_subpixel == 15
    forced = _model("pixelcnn", levels=256, output="categorical")
    assert forced.config.params_per_subpixel == 256
    x = torch.randint(0, 256, (2, 1, 4, 4)).double()
    assert torch.isfinite(forced.log_prob(x)).all() and torch.isfinite(m256.log_prob(x)).all()


# ---- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_vector_and_continuous_data_are_refused_at_build_time(family):
    moons = ppgen.datasets.load("moons", "val")
    with pytest.raises(ValueError, match="images"):
        ppgen.build(family, moons)
    with pytest.raises(ValueError, match="binary or discrete"):
        FAMILIES[family](event_shape=(1, 4, 4), kind="continuous")


@pytest.mark.parametrize(
    ("hparams", "match"),
    [
        ({"hidden": [2]}, "channel"),
        ({"hidden": []}, "at least one"),
        ({"kernel_size": 4}, "odd"),
        ({"output": "gaussian"}, "output"),
        ({"components": 0}, "components"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_hyperparameters_are_refused(hparams, match):
    with pytest.raises(ValueError, match=match):
        GatedPixelCNN(event_shape=(3, 4, 4), kind="discrete", levels=256, **hparams)


def test_bad_context_and_method_are_refused():
    plain = _model("gated-pixelcnn")
    cond = _model("gated-pixelcnn", num_classes=3)
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="unconditional"):
        plain.log_prob(x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class-conditional"):
        cond.sample(2)
    with pytest.raises(ValueError, match="0..2"):
        cond.log_prob(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="one label per example"):
        cond.log_prob(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="method"):
        plain.sample(2, method="cached")
    with pytest.raises(ValueError, match="levels"):
        plain.log_prob(x + 5)


# ---- training to the goal (slow) --------------------------------------------------------------


@pytest.mark.goal
@pytest.mark.slow
def test_gated_pixelcnn_reaches_two_bits_per_dim_on_digits():
    """Issue 10's goal: Gated PixelCNN at or below MADE's goal, 2.00 bits/dim, exact, on the
    digits test split."""
    train, val, test = (ppgen.datasets.load("digits", s) for s in ("train", "val", "test"))
    m = ppgen.build("gated-pixelcnn", train, hidden=[32, 32, 32])
    ppgen.fit(m, train, steps=400, batch_size=64, lr=3e-3, seed=0, val=val, progress=False)
    ev = ppgen.evaluate(m, test)
    print(f"gated-pixelcnn on digits test: {ev}")
    assert ev.kind == "exact"
    assert ev.bits_per_dim <= 2.00, str(ev)
