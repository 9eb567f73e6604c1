"""ppgen.masks: named masks and the validation of any bool mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ppgen import masks
from ppgen.masks import MaskError, check_mask, named

shapes = st.one_of(
    st.tuples(st.integers(2, 12)),
    st.tuples(st.integers(1, 3), st.integers(2, 9), st.integers(2, 9)),
)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, name=st.sampled_from(masks.NAMES))
def test_named_masks_hide_a_proper_part(shape, name):
    m = named(name, shape)
    assert m.dtype == torch.bool and tuple(m.shape) == shape, name
    assert 0 < int(m.sum()) < m.numel(), (name, shape)  # something observed, something missing
    assert check_mask(m, shape, 3).shape == (3, *shape)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, p=st.floats(0.05, 0.95), seed=st.integers(0, 2**31))
def test_random_masks_are_seeded_and_hide_the_fraction(shape, p, seed):
    a = named(f"random:{p}", shape, seed=seed)
    b = named(f"random:{p}", shape, seed=seed)
    assert torch.equal(a, b)
    d = a.numel()
    assert int((~a).sum()) == min(d - 1, max(1, round(p * d)))
    per = named(f"random:{p}", shape, seed=seed, num_examples=4)
    assert per.shape == (4, *shape)


def test_halves_of_an_image_and_a_vector():
    m = named("bottom-half", (1, 8, 8))
    assert bool(m[0, :4].all()) and not bool(m[0, 4:].any())
    m = named("left-half", (1, 8, 8))
    assert not bool(m[0, :, :4].any()) and bool(m[0, :, 4:].all())
    v = named("right-half", (5,))
    assert v.tolist() == [True, True, True, False, False]
    c = named("center", (1, 8, 8))
    assert int((~c).sum()) == 16 and not bool(c[0, 2:6, 2:6].any())


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.ones(8, 8), "bool"),  # float
        (np.ones((8, 8), dtype=np.float32), "bool"),
        ([[True]], "bool tensor"),
        (torch.ones(7, 8, dtype=torch.bool), "broadcast"),
        (torch.ones(2, 2, 1, 8, 8, dtype=torch.bool), "too many dims"),
        (torch.ones(5, 1, 8, 8, dtype=torch.bool), "broadcast"),  # 5 rows for a batch of 3
    ],
)
def test_bad_masks_are_refused_with_the_fix(bad, match):
    with pytest.raises(MaskError, match=match):
        check_mask(bad, (1, 8, 8), 3)


@pytest.mark.parametrize("name", ["bottom", "random:0", "random:1.5", "random:x", "random:"])
def test_bad_names_are_refused(name):
    with pytest.raises(ValueError, match="mask"):
        named(name, (1, 8, 8))


def test_masks_broadcast():
    assert check_mask(torch.ones(1, 8, dtype=torch.bool), (1, 8, 8), 2).shape == (2, 1, 8, 8)
    assert check_mask(np.ones((1, 8, 8), dtype=bool), (1, 8, 8), 2).shape == (2, 1, 8, 8)
