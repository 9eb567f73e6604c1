"""seed_everything: every seed torch, numpy and random all accept works; any other is a
ValueError naming the seed, before anything is seeded."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ppgen.inference.trainer import seed_everything

MESSAGE = r"seed must be an integer in \[0, 2\*\*32 - 1\], got "


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1) | st.sampled_from([0, 2**32 - 1]))
def test_every_seed_in_range_seeds_all_three_generators(seed):
    seed_everything(seed)
    a = (torch.rand(2), np.random.rand(2), random.random())
    seed_everything(np.uint32(seed))  # numpy integers too
    b = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


bad_seeds = (
    st.integers(max_value=-1)
    | st.integers(min_value=2**32)
    | st.booleans()
    | st.floats(allow_nan=True)
    | st.text(max_size=3)
    | st.none()
    | st.just(np.int64(-1))
    | st.just(torch.tensor(3))
)


@settings(max_examples=60, deadline=None)
@given(seed=bad_seeds)
def test_a_seed_out_of_range_or_not_an_integer_is_named(seed):
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match=MESSAGE) as e:
        seed_everything(seed)
    assert repr(seed) in str(e.value)
    assert torch.equal(torch.get_rng_state(), state), "seeded before refusing"
