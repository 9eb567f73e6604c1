"""The data edge shared by the entry points (issue 18): data of the wrong type is a TypeError
naming the argument and the fix, and degenerate continuous training data (a constant column,
two columns that are linear functions of each other) is refused, naming the columns."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ppgen
from ppgen.datasets import DataError, from_array
from ppgen.datasets.validation import DataTypeError, check_continuous_columns

# ---- wrong types where data is expected -------------------------------------------------------


def _wrong(kind: str, x: torch.Tensor):
    from torch.utils.data import DataLoader, TensorDataset

    return {
        "numpy": x.numpy(),
        "list": x.tolist(),
        "path": "moons.csv",
        "none": None,
        "dict": {"x": x},
        "loader": DataLoader(TensorDataset(x), batch_size=4),
    }[kind]


_WRONG = ["numpy", "list", "path", "none", "dict", "loader"]


@pytest.fixture(scope="module")
def moons_model():
    torch.manual_seed(0)
    return ppgen.build("independent", ppgen.datasets.load("moons", "train"))


@pytest.mark.parametrize("kind", _WRONG)
@pytest.mark.parametrize("where", ["fit data", "fit val", "evaluate"])
def test_a_non_dataset_is_a_type_error_naming_the_argument_and_the_fix(moons_model, kind, where):
    """``ppgen.fit(m, np_array)`` and friends: a TypeError (and a DataError: a ValueError) in
    one line naming the argument and ``from_array`` (``datasets.load`` for a path), raised
    before any work (the model's weights and mode are untouched)."""
    if where == "fit val" and kind == "none":
        pytest.skip("val=None means no validation data")
    model = moons_model
    good = ppgen.datasets.load("moons", "val").subset(16)
    bad = _wrong(kind, good.data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    training = model.training
    with pytest.raises(TypeError) as err:
        if where == "fit data":
            ppgen.fit(model, bad, steps=1, progress=False, device="cpu")
        elif where == "fit val":
            ppgen.fit(model, good, val=bad, steps=1, progress=False, device="cpu")
        else:
            ppgen.evaluate(model, bad)
    assert isinstance(err.value, DataError) and isinstance(err.value, ValueError)
    message = str(err.value)
    argument = {"fit data": "ppgen.fit's data=", "fit val": "ppgen.fit's val=",
                "evaluate": "ppgen.evaluate's data="}[where]
    assert message.startswith(argument) and "\n" not in message, message
    fix = "ppgen.datasets.load('moons.csv', split)" if kind == "path" else (
        "ppgen.datasets.from_array(x)")
    assert fix in message, message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training == training


def test_a_model_method_given_an_array_says_the_fix(moons_model):
    with pytest.raises(DataTypeError, match=r"from_array\(x\)"):
        moons_model.log_prob(np.zeros((3, 2), np.float32))


# ---- degenerate continuous data ---------------------------------------------------------------


@st.composite
def degenerate_tables(draw):
    """A random Gaussian table (5..300 rows, 1..6 columns: all named) with some columns replaced by
    constants and some by exact or near-exact affine copies of a random column (float32)."""
    n, d = draw(st.integers(5, 300)), draw(st.integers(1, 6))
    rng = np.random.RandomState(draw(st.integers(0, 2**16)))
    x = rng.randn(n, d) * rng.uniform(0.01, 100, d) + rng.uniform(-1e3, 1e3, d)
    roles = draw(st.lists(st.sampled_from(["data", "data", "constant", "copy"]),
                          min_size=d, max_size=d))
    originals = [j for j, r in enumerate(roles) if r == "data"]
    constant, copies = [], []
    for j, role in enumerate(roles):
        if role == "constant":
            x[:, j] = draw(st.sampled_from([0.0, 1.0, -3.5, 1e6]))
            constant.append(j)
        elif role == "copy" and originals and originals[0] < j:
            i = draw(st.sampled_from([o for o in originals if o < j]))
            scale = draw(st.sampled_from([1.0, -1.0, 2.0, -0.001, 1e3]))
            noise = draw(st.sampled_from([0.0, 1e-8]))  # |corr| = 1 - 5e-17 at most
            x[:, j] = scale * x[:, i] + 7.0 + noise * x[:, i].std() * rng.randn(n)
            copies.append(j)
    return x.astype(np.float32), constant, copies


@settings(max_examples=60, deadline=None, derandomize=True)
@given(table=degenerate_tables())
def test_constant_and_duplicated_columns_are_refused_by_name(table):
    x, constant, copies = table
    t = torch.from_numpy(x)
    if not constant and not copies:
        assert check_continuous_columns(t, what="training data") is t
        return
    with pytest.raises(DataError) as err:
        check_continuous_columns(t, what="training data")
    message = str(err.value)
    assert "\n" not in message and "kind='discrete'" in message and "drop" in message
    listed = message.split(" constant (zero variance)")[0] if constant else ""
    assert {int(c) for c in re.findall(r"column (\d+)", listed)} == set(constant), message
    dups = {int(j) for j in re.findall(r"column (\d+) duplicates column", message)}
    assert dups == set(copies), message


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    n=st.integers(3, 400), d=st.integers(1, 12), seed=st.integers(0, 2**16),
    shape=st.sampled_from(["flat", "image"]),
)
def test_varied_continuous_data_passes(n, d, seed, shape):
    """Data with no constant and no collinear columns passes, in any shape (columns correlated
    up to 1 - 1e-6 included: only near-exact copies are degenerate)."""
    rng = np.random.RandomState(seed)
    x = rng.randn(n, d)
    if d > 1:
        x[:, 1] = x[:, 0] + 1e-3 * rng.randn(n)  # |corr| about 1 - 5e-7
    t = torch.from_numpy(x.astype(np.float32))
    if shape == "image":
        t = t.reshape(n, 1, 1, d)
    assert check_continuous_columns(t) is t


def test_screening_finds_columns_that_vary_in_few_rows_of_many():
    """Above 1024 rows the screen looks at a subset of rows: columns flat there but varying in
    3 rows of 50,000 are still compared (and found to be copies) and still not constant."""
    rng = np.random.RandomState(0)
    x = rng.randn(50_000, 6).astype(np.float32)
    x[:, 3] = 0.0
    x[[7, 20_001, 40_003], 3] = [1.0, 2.0, 5.0]
    x[:, 4] = x[:, 3] * 2
    x[:, 5] = 0.0
    x[[11], 5] = 1.0  # varies in one row: not constant, and no copy of column 3
    with pytest.raises(DataError) as err:
        check_continuous_columns(torch.from_numpy(x), what="training data")
    message = str(err.value)
    assert "column 4 duplicates column 3 (|corr| = 1)" in message
    assert "constant" not in message and "column 5" not in message


def test_elements_of_image_shaped_data_are_named_by_index():
    x = torch.randn(50, 1, 3, 4)
    x[:, 0, 2, 1] = 0.5
    with pytest.raises(DataError, match=r"element \(0, 2, 1\) is constant"):
        check_continuous_columns(x)


def test_fit_refuses_degenerate_continuous_training_data_before_any_work():
    """Through ppgen.fit, for an exact-likelihood flow and a VAE: refused, weights untouched;
    the same column constant only in a small validation split is fine (the training data is
    what matters); a GAN (no density) is not refused."""
    rng = np.random.RandomState(0)
    x = rng.randn(400, 3)
    x[:, 1] = 2.0
    train = from_array(x, split="train")
    for family in ("maf", "vae"):
        torch.manual_seed(0)
        model = ppgen.build(family, train)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(DataError, match=r"training data is continuous but column 1 is "
                                            r"constant \(zero variance\)"):
            ppgen.fit(model, train, steps=2, progress=False, device="cpu")
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), family
        # a tensor is checked the same way
        with pytest.raises(DataError, match="column 1 is constant"):
            ppgen.fit(model, train.data, steps=2, progress=False, device="cpu")
    gan = ppgen.build("gan", train)
    ppgen.fit(gan, train, steps=1, batch_size=8, progress=False, device="cpu")

    y = rng.randn(400, 3)
    y[-50:, 2] = 0.0  # constant in some rows only: the val split may hold just those
    varied = from_array(y[:-50], split="all")
    flat_val = from_array(y[-50:], split="all")
    torch.manual_seed(0)
    model = ppgen.build("maf", varied)
    ppgen.fit(model, varied, val=flat_val, steps=2, batch_size=16, progress=False, device="cpu")
    assert np.isfinite(ppgen.evaluate(model, flat_val).bits_per_dim)


def test_discrete_data_with_constant_pixels_is_not_refused():
    """Digits have constant-zero border pixels: fine for discrete models and for flows on the
    dequantized data (kind stays discrete), which train and score finitely; digits declared
    continuous are refused with the fix that says to treat them as discrete."""
    train = ppgen.datasets.load("digits", "train").subset(64)
    assert (train.data.reshape(64, -1).std(0) == 0).any()
    for family in ("realnvp", "glow"):
        torch.manual_seed(0)
        model = ppgen.build(family, train)
        ppgen.fit(model, train, steps=2, batch_size=32, progress=False, device="cpu")
        result = ppgen.evaluate(model, ppgen.datasets.load("digits", "val").subset(32))
        assert np.isfinite(result.bits_per_dim) and result.bits_per_dim > 0, family
    continuous = from_array(train.data.numpy(), kind="continuous")
    model = ppgen.build("maf", continuous)
    with pytest.raises(DataError, match=r"element \(0, 0, 0\).* treat the data as discrete"):
        ppgen.fit(model, continuous, steps=1, progress=False, device="cpu")


@pytest.mark.parametrize("name", ["moons", "8gaussians", "grid25", "checkerboard", "rings",
                                  "pinwheel", "2spirals"])
def test_every_toy_split_passes(name):
    for split in ("train", "val", "test"):
        ds = ppgen.datasets.load(name, split)
        assert check_continuous_columns(ds.data) is ds.data
