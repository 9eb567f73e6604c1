"""Exact checks of the flows: inverses, log-determinants, normalization, sampling, FFJORD traces.

Every layer and every family is checked in float64 with randomized parameters (the layers start
as the identity, which would make these checks vacuous): the inverse round trip, and
``log|det J|`` against the autograd Jacobian. Families trained a few steps on a 2-D toy integrate
to 1 on a grid, and their samples pass a chi-square goodness-of-fit test against their density.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pyro import poutine
from pyro.infer import Trace_ELBO
from scipy import stats

import ppgen
from ppgen.models import flows as F
from ppgen.models.flows.core import soft_clamp

FAMILIES = ["nice", "realnvp", "glow", "maf", "iaf", "ffjord"]
HYP = settings(max_examples=8, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow])


def randomize(module, seed, scale=0.3):
    """Move every parameter off its (often identity) initialization; matrices by
    ``scale / sqrt(fan_in)`` so that deep random stacks stay well conditioned."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            s = scale / math.sqrt(p[0].numel()) if p.dim() >= 2 else scale
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * s)
    return module


def check_round_trip_and_jacobian(transform, x, name, atol=1e-8, layer=None, context=None):
    """x: one batch of events in float64. Checks inverse and ladj against autograd (per example;
    a conditional ``layer`` is rebuilt with that example's ``context`` row)."""
    z, ladj = transform.call_and_ladj(x)
    x_back, ladj_inv = transform.inv_and_ladj(z)
    assert torch.allclose(x_back, x, atol=atol, rtol=1e-6), f"{name}: round trip"
    assert torch.allclose(ladj_inv, -ladj, atol=atol, rtol=1e-6), f"{name}: inverse ladj"
    assert torch.allclose(transform.inverse(z), x, atol=atol, rtol=1e-6), f"{name}: inverse"
    event_dim = transform._domain_event_dim
    batch = x.shape[: x.dim() - event_dim]
    flat_x = x.reshape(-1, *x.shape[x.dim() - event_dim:])
    for i in range(min(flat_x.shape[0], 2)):
        xi = flat_x[i : i + 1]
        ti = transform if context is None else layer(context.reshape(-1, context.shape[-1])[i:i+1])

        def f(v, xi=xi, ti=ti):
            return ti.call_and_ladj(v.reshape(xi.shape))[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, xi.reshape(-1), vectorize=True)
        expected = torch.linalg.slogdet(jac)[1]
        got = ladj.reshape(-1)[i] if batch else ladj
        assert torch.allclose(got, expected, atol=1e-6, rtol=1e-6), (
            f"{name}: ladj {float(got)} vs autograd {float(expected)}"
        )


# ---- layers -------------------------------------------------------------------------------------


def _vector_layers(d, c, seed):
    torch.manual_seed(seed)
    layers = {
        "affine0": F.AffineCoupling(d, c, [8], parity=0),
        "affine1": F.AffineCoupling(d, c, [8, 8], parity=1),
        "additive": F.AffineCoupling(d, c, [8], parity=seed % 2, additive=True),
        "maf": F.MaskedAffineAutoregressive(d, c, [8, 8]),
        "maf-reversed": F.MaskedAffineAutoregressive(d, c, [8, 6], order=torch.arange(d).flip(0)),
        "iaf": F.MaskedAffineAutoregressive(d, c, [8], order=torch.randperm(d), inverted=True),
        "maf-blocks": F.MaskedAffineAutoregressive(d, c, [9, 7], order=torch.randperm(d),
                                                   blocks=3),
        "iaf-blocks": F.MaskedAffineAutoregressive(d, c, [8, 8], inverted=True, blocks=2),
        "actnorm": F.ActNorm((d,)),
        "batchnorm": F.BatchNorm((d,)).eval(),
        "diagonal": F.DiagonalScale(d),
        "linear-lu": F.InvertibleLinear((d,)),
        "linear-lu-identity": F.InvertibleLinear((d,), init="identity"),
        "permutation": F.Permutation(torch.randperm(d)),
    }
    return {k: randomize(v.double(), seed) for k, v in layers.items()}


@HYP
@given(d=st.integers(2, 6), batch=st.integers(1, 4), seed=st.integers(0, 2**16),
       context=st.sampled_from([0, 3]))
def test_vector_layers_invert_and_ladj_matches_autograd(d, batch, seed, context):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d, generator=g, dtype=torch.float64)
    c = torch.randn(batch, context, generator=g, dtype=torch.float64) if context else None
    for name, layer in _vector_layers(d, context, seed).items():
        uses_context = name.startswith(("affine", "additive", "maf", "iaf"))
        ctx = c if uses_context else None
        check_round_trip_and_jacobian(layer(ctx), x, f"{name}(d={d}, c={context})", layer=layer,
                                      context=ctx)


IMAGE_SHAPES = [(1, 4, 4), (2, 4, 4), (3, 2, 4), (4, 2, 2)]


@HYP
@given(shape=st.sampled_from(IMAGE_SHAPES), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_image_layers_invert_and_ladj_matches_autograd(shape, batch, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g, dtype=torch.float64)
    c = torch.randn(batch, 2, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    layers = {
        "checkerboard0": (F.ConvAffineCoupling(shape, [4], "checkerboard", 0), None),
        "checkerboard1-context": (F.ConvAffineCoupling(shape, [4, 4], "checkerboard", 1,
                                                       context=2), c),
        "checkerboard-additive": (F.ConvAffineCoupling(shape, [4], additive=True), None),
        "actnorm": (F.ActNorm(shape), None),
        "batchnorm": (F.BatchNorm(shape).eval(), None),
        "conv1x1-lu": (F.InvertibleLinear(shape), None),
        "flatten": (F.Flatten(shape), None),
    }
    if shape[0] >= 2:
        layers["channel0"] = (F.ConvAffineCoupling(shape, [4], "channel", 0), None)
        layers["channel1"] = (F.ConvAffineCoupling(shape, [4, 4], "channel", 1), None)
        inner = F.LazyComposedTransform(F.ActNorm((shape[0] - 1, *shape[1:])),
                                        F.Flatten((shape[0] - 1, *shape[1:])))
        layers["factor-out"] = (F.FactorOut(shape, 1, inner), None)
    if shape[1] % 2 == 0 and shape[2] % 2 == 0:
        layers["squeeze"] = (F.Squeeze(shape), None)
    for name, (layer, ctx) in layers.items():
        randomize(layer.double(), seed)
        check_round_trip_and_jacobian(layer(ctx), x, f"{name}{shape}", layer=layer, context=ctx)


@pytest.mark.parametrize("order", ["identity", "reversed", "random"])
def test_blocked_made_pass_equals_the_plain_masked_pass(order):
    """The block-triangular one-pass evaluation (and its hand-written backward) computes the
    same function and gradients as the plain masked MLP."""
    from ppgen.models.flows.autoregressive import _StaircaseLinear

    d = 20
    perm = {"identity": torch.arange(d), "reversed": torch.arange(d).flip(0),
            "random": torch.randperm(d)}[order]
    a = F.MaskedAffineAutoregressive(d, 3, [16, 12], order=perm, blocks=4).double()
    randomize(a, 0)
    b = F.MaskedAffineAutoregressive(d, 3, [16, 12], order=perm, blocks=1).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(7, d, dtype=torch.float64)
    c = torch.randn(7, 3, dtype=torch.float64)
    outs = []
    for layer in (a, b):
        z, ladj = layer(c).call_and_ladj(x)
        grads = torch.autograd.grad((z.sin().sum() + ladj.sum()), list(layer.parameters()))
        outs.append((z, ladj, grads))
    assert torch.allclose(outs[0][0], outs[1][0]) and torch.allclose(outs[0][1], outs[1][1])
    for ga, gb in zip(outs[0][2], outs[1][2], strict=True):
        assert torch.allclose(ga, gb), order
    lin = a.net.layers[1]
    args = (torch.randn(5, 16, dtype=torch.float64, requires_grad=True),
            lin.weight.detach().clone().requires_grad_(), lin.mask,
            lin.bias.detach().clone().requires_grad_(), a.spans[1])
    assert torch.autograd.gradcheck(_StaircaseLinear.apply, args)


def test_squeeze_moves_each_2x2_patch_into_channels():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    z, _ = F.Squeeze((1, 4, 4))().call_and_ladj(x)
    assert z.shape == (1, 4, 2, 2)
    # the top-left 2x2 patch [[0, 1], [4, 5]] is the channel vector at position (0, 0)
    assert z[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]


def test_cnf_ladj_matches_autograd_and_inverts():
    torch.manual_seed(0)
    layer = randomize(F.CNF(3, 0, [8], rtol=1e-10, atol=1e-10).double(), 1).eval()
    x = torch.randn(2, 3, dtype=torch.float64)
    check_round_trip_and_jacobian(layer(), x, "cnf", atol=1e-7)


# ---- whole families -----------------------------------------------------------------------------

FAMILY_SHAPES = [(2,), (3,), (5,), (1, 4, 4), (2, 4, 4), (3, 2, 4)]


def _family(name, shape, layout="auto", transforms=3, **extra):
    cls = ppgen.models.get(name)
    hp = {"event_shape": shape, "transforms": transforms, "hidden": [6, 6], **extra}
    if name in ("realnvp", "glow"):
        hp["layout"] = layout
    if name == "realnvp":
        hp["norm"] = "actnorm"
    if name == "ffjord":
        hp.update(transforms=min(transforms, 2), rtol=1e-8, atol=1e-8, hidden=[6])
    return cls(**hp).double()


@pytest.mark.parametrize(("family", "layout"), [(f, "auto") for f in FAMILIES]
                         + [("realnvp", "vector"), ("glow", "vector")])
@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(shape=st.sampled_from(FAMILY_SHAPES), transforms=st.integers(2, 4),
       seed=st.integers(0, 2**16))
def test_family_flow_inverts_and_ladj_matches_autograd(family, layout, shape, transforms, seed):
    """Every family, image layouts included (multi-scale where H, W allow), in float64."""
    assume(family != "ffjord" or math.prod(shape) <= 16)  # ODE solves at 1e-9: keep D small
    torch.manual_seed(seed)
    m = randomize(_family(family, shape, layout, transforms), seed).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    check_round_trip_and_jacobian(m.flow().transform, x, f"{family}{shape}", atol=1e-7)
    # and the density is exactly base + ladj (no hidden terms)
    z, ladj = m.flow().transform.call_and_ladj(x)
    base = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(m.log_prob(x), base + ladj), family


@pytest.mark.parametrize("family", ["realnvp", "glow"])
def test_image_layout_is_multiscale(family):
    m = _family(family, (1, 8, 8), transforms=4)
    names = [type(x).__name__ for x in m.modules()]
    assert "Squeeze" in names and "FactorOut" in names, names
    assert "ConvAffineCoupling" in names, names


def test_realnvp_refuses_fewer_transforms_than_scales():
    with pytest.raises(ValueError, match="scales"):
        ppgen.models.get("realnvp")(event_shape=(1, 8, 8), transforms=1, scales=2)
    with pytest.raises(ValueError, match="layout='image'"):
        ppgen.models.get("glow")(event_shape=(1, 6, 6), layout="image", scales=2)
    with pytest.raises(ValueError, match="2 features"):
        ppgen.models.get("realnvp")(event_shape=(1,))


def test_affine_scales_both_contract_and_expand():
    s = torch.linspace(-20, 20, 101, dtype=torch.float64)
    clamped = soft_clamp(s, 3.0)
    assert clamped.min() < -2.99 and clamped.max() > 2.99 and clamped.abs().max() < 3.0
    assert torch.allclose(soft_clamp(-s, 3.0), -clamped)  # symmetric: no shrink-only cap
    for sign in (+1, -1):
        layer = F.AffineCoupling(4, 0, [8]).double()
        with torch.no_grad():
            layer.net[-1].bias[2:].fill_(sign * 100.0)  # the raw log-scales of both features
        _, ladj = layer().call_and_ladj(torch.randn(3, 4, dtype=torch.float64))
        assert torch.allclose(ladj, torch.full_like(ladj, sign * 6.0), atol=1e-6), sign



@given(bound=st.floats(0.5, 10.0), seed=st.integers(0, 2**16))
@settings(max_examples=25, deadline=None)
def test_soft_clamp_is_b_tanh_s_over_b(bound, seed):
    """The clamp is computed through sigmoid (cheaper on CPU); it must be b tanh(s / b) itself,
    values and gradients, in float64 and float32."""
    g = torch.Generator().manual_seed(seed)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
        s = (torch.randn(257, generator=g, dtype=torch.float64) * 4 * bound).to(dtype)
        s = s.requires_grad_()
        ours, ref = soft_clamp(s, bound), bound * torch.tanh(s / bound)
        assert torch.allclose(ours, ref, rtol=0, atol=tol * bound)
        (g_ours,) = torch.autograd.grad(ours.sum(), s)
        (g_ref,) = torch.autograd.grad(ref.sum(), s)
        assert torch.allclose(g_ours, g_ref, rtol=0, atol=4 * tol)

# ---- data units ---------------------------------------------------------------------------------


def test_discrete_data_counts_dequantization_and_logit_jacobians():
    ds = ppgen.datasets.load("digits", "val").subset(8)
    m = ppgen.build("maf", ds, transforms=2, hidden=[8]).double()
    x = ds.data.double()
    with torch.random.fork_rng():
        torch.manual_seed(3)
        lp = m.log_prob(x)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        y = (x + torch.rand_like(x)) / 17
        s = 0.05 + 0.9 * y
        z = torch.log(s) - torch.log1p(-s)
        log_dz = math.log(0.9) - torch.log(s) - torch.log1p(-s)
        ladj = log_dz.flatten(1).sum(1) - 64 * math.log(17)
    assert torch.allclose(lp, m.flow().log_prob(z) + ladj), "dequantization + logit ladj"
    ev = ppgen.evaluate(m, x)
    assert ev.kind == "lower_bound" and m.dequantizes
    samples = m.sample(5, seed=0)
    assert torch.equal(samples, samples.round()) and samples.min() >= 0 and samples.max() <= 16


# ---- normalization and sampling on 2-D toys -----------------------------------------------------


@pytest.fixture(scope="module")
def trained_toys():
    """Every family fitted a few steps on moons (float64, small sizes)."""
    train = ppgen.datasets.load("moons", "train")
    out = {}
    for family in FAMILIES:
        extra = {"rtol": 1e-6, "atol": 1e-6, "hidden": [16]} if family == "ffjord" else {}
        m = ppgen.build(family, train, **{"transforms": 3, "hidden": [16, 16], **extra}).double()
        steps = 10 if family == "ffjord" else 30
        with torch.random.fork_rng():
            ppgen.fit(m, train, steps=steps, batch_size=128, lr=5e-3, progress=False,
                      device="cpu")
        out[family] = m.eval()
    return out


def _grid(lo, hi, n):
    edges = torch.linspace(lo, hi, n + 1, dtype=torch.float64)
    centers = (edges[1:] + edges[:-1]) / 2
    xx, yy = torch.meshgrid(centers, centers, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], -1), (hi - lo) / n


@pytest.mark.parametrize("family", FAMILIES)
def test_2d_density_integrates_to_one(trained_toys, family):
    m = trained_toys[family]
    points, h = _grid(-6.0, 6.0, 240 if family == "ffjord" else 480)
    with torch.no_grad():
        lp = torch.cat([m.log_prob(p) for p in points.split(20000)])
    mass = float(lp.exp().sum() * h * h)
    # Riemann sum of a smooth density on a grid of step 0.025 (0.05 for FFJORD) over a box
    # holding all but a negligible tail: within 1%.
    assert abs(mass - 1.0) < 0.01, f"{family}: integral {mass:.4f}"


@pytest.mark.parametrize("family", FAMILIES)
def test_samples_agree_with_log_prob(trained_toys, family):
    """Chi-square goodness of fit of 4000 samples against the density integrated on 12x12 cells
    (cells merged until each expects >= 10); false-alarm rate 0.1% per family at this seed."""
    m = trained_toys[family]
    x = m.sample(4000, seed=1)
    lo, hi, cells, sub = -3.0, 3.0, 12, 8
    points, h = _grid(lo, hi, cells * sub)
    with torch.no_grad():
        dens = m.log_prob(points).exp().reshape(cells, sub, cells, sub) * h * h
    probs = dens.sum((1, 3)).reshape(-1)
    idx = ((x - lo) / (hi - lo) * cells).floor().long()
    inside = ((idx >= 0) & (idx < cells)).all(-1)
    counts = torch.bincount(idx[inside, 0] * cells + idx[inside, 1], minlength=cells * cells)
    order = probs.argsort(descending=True)
    observed, expected, acc_o, acc_e = [], [], 0.0, 0.0
    for i in order.tolist():
        acc_o += float(counts[i])
        acc_e += float(probs[i]) * len(x)
        if acc_e >= 10:
            observed.append(acc_o)
            expected.append(acc_e)
            acc_o = acc_e = 0.0
    observed.append(acc_o + float((~inside).sum()))  # the rest of the plane
    expected.append(acc_e + (1 - float(probs.sum())) * len(x))
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True) if e > 0)
    p = stats.chi2.sf(chi2, len(observed) - 1)
    assert p > 1e-3, f"{family}: chi2={chi2:.1f} on {len(observed) - 1} dof, p={p:.2g}"


# ---- FFJORD -------------------------------------------------------------------------------------


def test_ffjord_hutchinson_is_unbiased_for_the_exact_trace():
    """With a fixed-step solver the path does not depend on the probe, so the mean of many
    Hutchinson estimates converges to the exact-trace log-density: 4 standard errors."""
    torch.manual_seed(0)
    m = randomize(ppgen.models.get("ffjord")(event_shape=(3,), hidden=[8], solver="rk4",
                                              step_size=0.1, trace="exact").double(), 2)
    x = torch.randn(4, 3, dtype=torch.float64)
    exact = m.eval().log_prob(x)
    hutch = ppgen.models.get("ffjord")(m.config.replace(trace="hutchinson")).double()
    hutch.load_state_dict(m.state_dict())
    k = 400  # replicas of the batch draw independent probes, all along the same path
    estimates = hutch.log_prob(x.repeat(k, 1)).reshape(k, len(x))
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(len(estimates))
    assert (estimates.std(0) > 0).all(), "Hutchinson estimates should vary with the probe"
    assert ((mean - exact).abs() < 4 * se).all(), ((mean - exact) / se)


def test_ffjord_auto_trace_is_hutchinson_only_when_training():
    ds = ppgen.datasets.load("moons", "val").subset(8)
    m = ppgen.build("ffjord", ds, hidden=[8], rtol=1e-6, atol=1e-6).double()
    randomize(m, 0)
    x = ds.data.double()
    m.eval()
    a, b = m.log_prob(x), m.log_prob(x)
    assert torch.equal(a, b), "eval: exact and deterministic"
    assert m.nfe > 0
    m.train()
    c = m.log_prob(x)
    with torch.no_grad():
        d = m.log_prob(x)
    assert not torch.allclose(c, a), "train mode with gradients uses Hutchinson"
    assert torch.allclose(d, a), "no gradients: exact"


def test_ffjord_adjoint_gives_the_same_gradients():
    torch.manual_seed(0)
    a = randomize(ppgen.models.get("ffjord")(event_shape=(2,), hidden=[8], trace="exact",
                                              rtol=1e-9, atol=1e-9).double(), 1)
    b = ppgen.models.get("ffjord")(a.config.replace(adjoint=True)).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 2, dtype=torch.float64)
    ga = torch.autograd.grad(a.log_prob(x).sum(), list(a.parameters()), allow_unused=True)
    gb = torch.autograd.grad(b.log_prob(x).sum(), list(b.parameters()), allow_unused=True)
    for u, v in zip(ga, gb, strict=True):
        if u is not None:
            assert torch.allclose(u, v, atol=1e-6, rtol=1e-5)


# ---- Glow: actnorm data-dependent init, temperature ---------------------------------------------


def test_actnorm_initializes_from_data_once_and_never_on_resume(tmp_path):
    train = ppgen.datasets.load("digits", "train")
    hp = {"transforms": 2, "hidden": [8]}
    m = ppgen.build("glow", train, **hp)
    x = train.data[:64]
    with torch.no_grad():
        torch.manual_seed(1)
        z, _ = m.data_transform(x)
        torch.manual_seed(1)  # the same dequantization noise inside initialize
        m.initialize(x)
    first = m.flow.transform.layers[0]
    assert isinstance(first, F.ActNorm) and bool(first.initialized)
    y = first(None).call_and_ladj(z)[0]
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(1), atol=1e-5)
    assert torch.allclose(y.std((0, 2, 3)), torch.ones(1), atol=1e-3)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.initialize(train.data[64:128] * 0 + 3)  # a second call changes nothing
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())

    # fit 2N steps == fit N, then resume to 2N (the trainer must not re-initialize on resume)
    args = {"batch_size": 32, "lr": 1e-3, "progress": False, "device": "cpu", "seed": 4}
    torch.manual_seed(0)
    full = ppgen.build("glow", train, **hp)
    ppgen.fit(full, train, steps=6, **args)
    torch.manual_seed(0)  # the same initial weights (random rotations in the 1x1 convolutions)
    half = ppgen.build("glow", train, **hp)
    ppgen.fit(half, train, steps=3, out=tmp_path, **args)
    resumed = ppgen.build("glow", train, **hp)
    ppgen.fit(resumed, train, steps=6, out=tmp_path, resume=True, **args)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_glow_temperature_scales_the_base():
    ds = ppgen.datasets.load("moons", "val")
    m = randomize(ppgen.build("glow", ds, transforms=2, hidden=[8]).double(), 0).eval()
    cold = m.sample(50, seed=0, temperature=0.0)
    assert torch.allclose(cold, cold[:1].expand_as(cold)), "T=0: every draw is f^-1(0)"
    g = torch.Generator().manual_seed(5)
    eps = torch.randn(50, 2, generator=g, dtype=torch.float64)
    warm = m.sample(50, generator=torch.Generator().manual_seed(5), temperature=0.5)
    assert torch.allclose(m.flow().transform.call_and_ladj(warm)[0], 0.5 * eps)


# ---- building blocks: IAF guide, MAF prior, broadcasting ----------------------------------------


def test_iaf_flow_refuses_a_silent_sequential_density():
    layers = [F.MaskedAffineAutoregressive(3, 2, [8], inverted=True) for _ in range(2)]
    flow = randomize(F.Flow(layers, (3,)).double(), 0)
    c = torch.randn(4, 2, dtype=torch.float64)
    q = flow(c)
    x, log_q = q.rsample_and_log_prob()
    with pytest.raises(F.SequentialDensityError, match="allow_sequential"):
        q.log_prob(x)
    explicit = F.Flow(flow.transform.layers, (3,), allow_sequential=True)
    assert torch.allclose(explicit(c).log_prob(x), log_q)
    assert isinstance(q, torch.distributions.Distribution) and q.has_rsample


def test_iaf_posterior_in_a_pyro_guide_with_particles():
    """An IAF guide through flow_sample: distinct particles, log q(z) in one pass, Trace_ELBO."""
    torch.manual_seed(0)
    latent, feats = 3, 5
    encoder = torch.nn.Linear(2, feats).double()
    iaf = randomize(F.Flow([F.MaskedAffineAutoregressive(latent, feats, [8], inverted=True)],
                           (latent,)).double(), 1)
    x = torch.randn(6, 2, dtype=torch.float64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([latent]).to_event(1))
            pyro.sample("x", dist.Normal(z[..., :2], 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            F.flow_sample("z", iaf(encoder(x)))

    loss = Trace_ELBO(num_particles=4, vectorize_particles=True).differentiable_loss(
        model, guide, x)
    loss.backward()
    assert all(p.grad is not None for p in iaf.parameters())
    with pyro.plate("particles", 4, dim=-2):
        tr = poutine.trace(guide).get_trace(x)
    z = tr.nodes["z"]["value"]
    assert z.shape == (4, 6, latent) and not torch.allclose(z[0], z[1])
    log_q = tr.nodes["z"]["fn"].log_prob(z)
    exact = F.Flow(iaf.transform.layers, (latent,), allow_sequential=True)(encoder(x)).log_prob(z)
    assert torch.allclose(log_q, exact)


def test_maf_prior_broadcasts_over_particle_dims():
    prior = randomize(F.Flow([F.MaskedAffineAutoregressive(3, 0, [8]) for _ in range(2)],
                             (3,)).double(), 0)
    z = torch.randn(4, 5, 3, dtype=torch.float64)
    lp = prior().log_prob(z)
    assert lp.shape == (4, 5)
    assert torch.allclose(lp[2], prior().log_prob(z[2]))
    with pyro.plate("particles", 4, dim=-2), pyro.plate("data", 5):
        tr = poutine.trace(lambda: pyro.sample("z", prior())).get_trace()
    assert tr.nodes["z"]["value"].shape == (4, 5, 3)
    cond = randomize(F.Flow([F.AffineCoupling(3, 2, [8]), F.MaskedAffineAutoregressive(3, 2, [8])],
                            (3,)).double(), 1)
    c = torch.randn(5, 2, dtype=torch.float64)
    lp = cond(c).log_prob(z)
    assert torch.allclose(lp[1], cond(c).log_prob(z[1]))


def test_families_broadcast_leading_batch_dims():
    for family in FAMILIES:
        m = randomize(_family(family, (2, 4, 4)), 0).eval()
        x = torch.randn(2, 3, 2, 4, 4, dtype=torch.float64)
        lp = m.flow().log_prob(x)
        assert lp.shape == (2, 3), family
        assert torch.allclose(lp[1], m.flow().log_prob(x[1]), atol=1e-7), family


# ---- training to quality ------------------------------------------------------------------------


def _fit_moons(family, steps, lr=3e-3, **hp):
    train, val, test = (ppgen.datasets.load("moons", s) for s in ("train", "val", "test"))
    m = ppgen.build(family, train, **hp)
    ppgen.fit(m, train, steps=steps, batch_size=256, lr=lr, progress=False, device="cpu",
              val=val, eval_every=steps // 4, seed=0)
    return ppgen.evaluate(m, test)


def test_maf_short_fit_on_moons_reaches_half_a_nat():
    """The moons density's entropy is about 0.26 nats; 600 steps of a small MAF get below 0.5."""
    ev = _fit_moons("maf", 600, transforms=5, hidden=[64, 64])
    assert ev.kind == "exact"
    assert ev.nats < 0.5, str(ev)


@pytest.mark.goal
@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_flow_fits_moons_below_half_a_nat(family):
    hp, steps, lr = {"transforms": 5, "hidden": [64, 64]}, 2000, 3e-3
    if family == "nice":  # volume-preserving couplings need more of them
        hp, steps, lr = {"transforms": 8, "hidden": [128, 128]}, 3000, 1e-3
    if family == "glow":
        lr = 1e-3
    if family == "ffjord":
        hp = {"transforms": 1, "hidden": [64, 64, 64], "rtol": 1e-4, "atol": 1e-4}
        steps = 1000
    ev = _fit_moons(family, steps, lr=lr, **hp)
    assert ev.nats < 0.5, f"{family}: {ev}"
