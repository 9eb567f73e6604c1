"""ppgen.models.flows.build_maf, the public builder the VAE and GAN compose: alternating orders,
the MAF/IAF orientation, context, and the same layers (same weights for a seed) as the MAF
family and as the stacks the VAE and GAN used to build by hand."""

from __future__ import annotations

import pytest
import torch

import ppgen
from ppgen.models.flows import (
    Flow,
    MaskedAffineAutoregressive,
    SequentialDensityError,
    alternating_orders,
    build_maf,
    maf_layers,
)


def _perturb(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # leave the identity initialization
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_orders_alternate_between_identity_and_reversed():
    orders = alternating_orders(4, 3)
    assert [o.tolist() for o in orders] == [[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2, 3]]


def test_the_hand_built_stacks_and_the_builder_agree_to_the_bit():
    """The VAE's IAF posterior and flow prior and the GAN's flow prior, as they were written by
    hand before the builder, give the same weights and the same densities for one seed."""
    latent, transforms, made, features = 3, 3, (8, 8), 5

    def by_hand(context: int, inverted: bool, allow_sequential: bool) -> Flow:
        orders = [torch.arange(latent) if i % 2 == 0 else torch.arange(latent).flip(0)
                  for i in range(transforms)]
        return Flow([MaskedAffineAutoregressive(latent, context, made, o, inverted=inverted)
                     for o in orders], (latent,), allow_sequential=allow_sequential)

    for context, inverted in [(features, True), (0, False)]:
        torch.manual_seed(0)
        old = by_hand(context, inverted, inverted)
        torch.manual_seed(0)
        new = build_maf(latent, transforms, made, context=context, inverted=inverted,
                        allow_sequential=inverted)
        a, b = old.state_dict(), new.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        _perturb(old, 1)
        _perturb(new, 1)
        c = torch.randn(7, features) if context else None
        z = torch.randn(7, latent)
        assert torch.equal(old(c).log_prob(z), new(c).log_prob(z))


def test_orientation_and_sequential_density():
    """MAF scores any point in one pass; IAF samples in one pass and refuses the sequential
    density of other points unless allowed."""
    maf = build_maf(2, 2, [8])
    assert all(not layer.inverted for layer in maf.transform.layers)
    iaf = build_maf(2, 2, [8], inverted=True)
    assert all(layer.inverted for layer in iaf.transform.layers)
    with pytest.raises(SequentialDensityError):
        iaf().log_prob(torch.randn(3, 2))
    allowed = build_maf(2, 2, [8], inverted=True, allow_sequential=True)
    assert allowed().log_prob(torch.randn(3, 2)).shape == (3,)


def test_the_maf_family_is_made_of_the_same_layers():
    ds = ppgen.datasets.load("moons", "val")
    torch.manual_seed(0)
    m = ppgen.build("maf", ds, transforms=3, hidden=[8], standardize=False)
    torch.manual_seed(0)
    layers = maf_layers(2, 3, (8,))
    mine = [mod for mod in m.modules() if isinstance(mod, MaskedAffineAutoregressive)]
    assert len(mine) == 3
    for a, b in zip(mine, layers, strict=True):
        assert torch.equal(a.order, b.order)
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
