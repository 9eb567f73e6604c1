"""The shared layers (``ppgen/models/nets.py``): masking and shape invariants.

- ``MaskedMLP``: output block ``d`` depends on input ``j`` only when ``j`` comes before ``d`` in
  the order (the autoregressive property, checked on the autograd Jacobian for random orders,
  widths, contexts, degree layouts and connectivities), and, with deterministic degrees and
  enough hidden units, on every such input (MADE's connectivity is not over-masked);
- ``autoregressive_degrees`` and ``MaskedLinear``'s checks;
- the time embedding against its formula; ``TimeMLP`` and ``UNet``: leading dimensions and a
  scalar time broadcast the same as one time per example.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ppgen.models.nets import (
    MLP,
    MaskedLinear,
    MaskedMLP,
    SinusoidalTimeEmbedding,
    TimeMLP,
    UNet,
    autoregressive_degrees,
)


def _jacobian_support(net: MaskedMLP, x: torch.Tensor, context=None) -> torch.Tensor:
    """``(D_out, D_in)``: whether output block d moves with input j at any of the points ``x``."""
    x = x.clone().requires_grad_(True)
    out = net(x, context)  # (N, D, K)
    n, d, k = out.shape
    support = torch.zeros(d, x.shape[1], dtype=torch.bool)
    for i in range(d):
        for j in range(k):
            (g,) = torch.autograd.grad(out[:, i, j].sum(), x, retain_graph=True)
            support[i] |= (g != 0).any(0)
    return support


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(d=st.integers(1, 7), k=st.integers(1, 3),
       hidden=st.lists(st.integers(1, 12), min_size=1, max_size=3),
       context=st.integers(0, 3), sort=st.booleans(), random_connectivity=st.booleans(),
       seed=st.integers(0, 2**16))
def test_masked_mlp_is_autoregressive_in_its_order(d, k, hidden, context, sort,
                                                   random_connectivity, seed):
    torch.manual_seed(seed)
    net = MaskedMLP(d, k, hidden, context_features=context, sorted_degrees=sort,
                    activation=nn.Tanh).double()
    order = torch.randperm(d)
    generator = torch.Generator().manual_seed(seed) if random_connectivity else None
    net.set_masks(order, generator)
    x = torch.randn(6, d, dtype=torch.float64)
    c = torch.randn(6, context, dtype=torch.float64) if context else None
    assert net(x, c).shape == (6, d, k)
    allowed = order[None, :] < order[:, None]  # [i, j]: input j precedes output i
    support = _jacobian_support(net, x, c)
    assert not (support & ~allowed).any(), (order, support)


@pytest.mark.parametrize("d", [2, 3, 6])
def test_masked_mlp_connects_every_earlier_input_with_enough_units(d):
    """Deterministic degrees and hidden widths of at least D - 1: every allowed dependence is
    present (tanh and random weights: no dead units)."""
    torch.manual_seed(0)
    net = MaskedMLP(d, 2, (d - 1, 2 * d), activation=nn.Tanh).double()
    order = torch.randperm(d)
    net.set_masks(order)
    allowed = order[None, :] < order[:, None]
    support = _jacobian_support(net, torch.randn(4, d, dtype=torch.float64))
    assert torch.equal(support, allowed), (order, support)


def test_set_masks_rebuilds_in_place_and_keeps_the_state_dict():
    net = MaskedMLP(4, 2, (8, 8))
    buffers = [m.mask for m in [*net.layers, net.output]]
    keys = set(net.state_dict())
    before = [b.clone() for b in buffers]
    net.set_masks(torch.tensor([3, 2, 1, 0]))
    assert [m.mask for m in [*net.layers, net.output]] == buffers  # the same tensors
    assert set(net.state_dict()) == keys
    assert any(not torch.equal(a, b) for a, b in zip(before, buffers, strict=True))


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(d=st.integers(1, 9), hidden=st.lists(st.integers(1, 20), min_size=1, max_size=3),
       seed=st.integers(0, 1000), random_connectivity=st.booleans())
def test_autoregressive_degrees(d, hidden, seed, random_connectivity):
    order = torch.randperm(d, generator=torch.Generator().manual_seed(seed))
    generator = torch.Generator().manual_seed(seed) if random_connectivity else None
    degrees = autoregressive_degrees(order, hidden, generator)
    assert torch.equal(degrees[0], order + 1)
    assert [len(h) for h in degrees[1:]] == list(hidden)
    for prev, h in zip(degrees[:-1], degrees[1:], strict=True):
        # hidden degrees lie in [1, D - 1] (or 1 when D = 1), never below the previous layer's
        # smallest (a unit below it would see nothing)
        assert h.min() >= min(int(prev.min()), max(d - 1, 1)) and h.max() <= max(d - 1, 1)
    sorted_ = autoregressive_degrees(order, hidden, None if generator is None
                                     else torch.Generator().manual_seed(seed), sort=True)
    for a, b in zip(degrees[1:], sorted_[1:], strict=True):
        assert torch.equal(a.sort().values, b) and (b.diff() >= 0).all()


def test_masked_linear_checks_its_mask_and_applies_it():
    with pytest.raises(ValueError, match=r"mask shape \(3, 2\) != \(2, 3\)"):
        MaskedLinear(3, 2, torch.ones(3, 2))
    layer = MaskedLinear(3, 2, torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    x = torch.randn(5, 3)
    assert torch.allclose(layer(x), x @ (layer.weight * layer.mask).T + layer.bias)
    with pytest.raises(ValueError, match="at least one hidden layer"):
        MaskedMLP(3, 1, ())


def test_mlp_layout():
    net = MLP(3, 2, hidden=(5, 7), activation=nn.Tanh, dropout=0.1)
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Linear", "Tanh", "Dropout", "Linear", "Tanh", "Dropout", "Linear"]
    assert net(torch.randn(4, 3)).shape == (4, 2)
    assert [type(m).__name__ for m in MLP(3, 2, hidden=())] == ["Linear"]


# ---- the diffusion denoisers ------------------------------------------------------------------


@pytest.mark.parametrize("features", [2, 7, 16])
def test_time_embedding_matches_its_formula(features):
    emb = SinusoidalTimeEmbedding(features).double()
    t = torch.tensor([0, 1, 10, 999])
    half = features // 2
    omega = torch.tensor([10_000.0 ** (-i / half) for i in range(half)], dtype=torch.float64)
    omega = omega.to(torch.get_default_dtype()).double()  # stored in the default dtype
    expected = torch.cat([(t[:, None] * omega).sin(), (t[:, None] * omega).cos()], dim=-1)
    got = emb(t)
    assert got.shape == (4, features)
    assert torch.allclose(got[:, : 2 * half], expected, atol=1e-12)
    if features % 2:
        assert (got[:, -1] == 0).all()
    assert torch.allclose(emb(t.double()), got)  # integer and float times agree
    with pytest.raises(ValueError, match="at least 2 features"):
        SinusoidalTimeEmbedding(1)


def test_time_mlp_broadcasts_a_scalar_time():
    torch.manual_seed(0)
    net = TimeMLP(3, 6, hidden=[8, 8], time_features=6).double()
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    out = net(x, torch.tensor(7))
    assert out.shape == (5, 4, 6)
    assert torch.allclose(out, net(x, torch.full((5, 4), 7)), atol=1e-12)
    # each example sees only its own time
    t = torch.randint(0, 100, (5, 4))
    assert torch.allclose(net(x, t)[2, 1], net(x[2, 1], t[2, 1]), atol=1e-12)
    with pytest.raises(ValueError, match="hidden"):
        TimeMLP(3, 3, hidden=[])


def test_unet_flattens_leading_dims_and_broadcasts_a_scalar_time():
    torch.manual_seed(0)
    net = UNet(2, 4, hidden=[8, 16], time_features=8).double().eval()
    x = torch.randn(2, 3, 2, 8, 8, dtype=torch.float64)
    t = torch.randint(0, 1000, (2, 3))
    out = net(x, t)
    assert out.shape == (2, 3, 4, 8, 8)
    assert torch.allclose(out.reshape(6, 4, 8, 8), net(x.reshape(6, 2, 8, 8), t.reshape(6)),
                          atol=1e-12)
    assert torch.allclose(net(x, torch.tensor(5)), net(x, torch.full((2, 3), 5)), atol=1e-12)
    # examples do not mix (GroupNorm normalizes each example on its own)
    assert torch.allclose(out[1, 2], net(x[1, 2:3], t[1, 2:3])[0], atol=1e-12)
    with pytest.raises(ValueError, match="at least one level"):
        UNet(1, 1, hidden=[])
