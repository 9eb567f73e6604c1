"""Incomplete data: ``from_array(x, missing="mask")`` and ``FILE#missing=mask``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ppgen
from ppgen.datasets import DataError


def _holes(seed: int, n: int = 40, d: int = 3, frac: float = 0.3) -> np.ndarray:
    rs = np.random.RandomState(seed)
    x = rs.randn(n, d)
    x[rs.rand(n, d) < frac] = np.nan
    x[0] = 0.5  # every column keeps an observed cell
    return x


def test_nan_is_refused_by_default_and_the_message_names_the_mask() -> None:
    with pytest.raises(DataError, match=r"missing='mask'"):
        ppgen.datasets.from_array(_holes(0))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), frac=st.floats(0.05, 0.9))
def test_mask_marks_exactly_the_nan_cells(seed: int, frac: float) -> None:
    x = _holes(seed, frac=frac)
    ds = ppgen.datasets.from_array(x, missing="mask")
    observed = torch.as_tensor(~np.isnan(x))
    if observed.all():
        assert ds.mask is None
        return
    assert ds.mask is not None and torch.equal(ds.mask, observed)
    assert torch.isnan(ds.data[~ds.mask]).all()  # a consumer that ignores the mask refuses it
    assert torch.equal(ds.data[ds.mask], torch.as_tensor(x[~np.isnan(x)], dtype=torch.float32))
    assert ds.missing_fraction == pytest.approx(1 - observed.float().mean().item())


def test_splits_and_subsets_carry_their_rows_of_the_mask() -> None:
    x = _holes(1, n=60)
    full = ppgen.datasets.from_array(x, missing="mask")
    for split in ("train", "val", "test"):
        part = ppgen.datasets.from_array(x, missing="mask", split=split)
        assert part.mask is None or torch.equal(part.mask, ~torch.isnan(part.data))
    sub = full.subset(7)
    assert torch.equal(sub.mask, full.mask[:7])


def test_complete_data_with_missing_mask_is_complete() -> None:
    ds = ppgen.datasets.from_array(np.random.RandomState(0).randn(20, 2), missing="mask")
    assert ds.mask is None and ds.missing_fraction == 0.0


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([[np.nan, 1.0], [np.nan, 2.0]]), "column.*no observed value"),
        (np.array([[np.inf, 1.0], [0.0, np.nan]]), "infinite"),
    ],
)
def test_incomplete_data_refusals(array: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message):
        ppgen.datasets.from_array(array, missing="mask")


def test_unknown_missing_option_is_refused() -> None:
    with pytest.raises(DataError, match="missing must be"):
        ppgen.datasets.from_array(np.zeros((3, 2)), missing="drop")


def test_discrete_observed_cells_are_still_checked() -> None:
    x = np.array([[0.0, 1.0], [np.nan, 2.5], [1.0, 0.0]])
    with pytest.raises(DataError, match="non-integer"):
        ppgen.datasets.from_array(x, kind="discrete", levels=3, missing="mask")


def test_mask_argument_of_dataset_is_checked() -> None:
    data = torch.zeros(4, 2)
    with pytest.raises(DataError, match="bool tensor"):
        ppgen.datasets.Dataset("d", data, "continuous", mask=torch.ones(4, 3, dtype=torch.bool))


def test_csv_holes_with_missing_mask(tmp_path) -> None:
    f = tmp_path / "t.csv"
    f.write_text("a,b\n1,2\n,1\n0,NA\n1,1\n")
    with pytest.raises(DataError, match="missing=mask"):
        ppgen.datasets.load(str(f), "all")
    ds = ppgen.datasets.load(f"{f}#missing=mask", "all")
    # integer cells around the holes: the integer rules, as without holes
    assert (ds.kind, ds.levels) == ("discrete", 3)
    expected = torch.tensor([[True, True], [False, True], [True, False], [True, True]])
    assert torch.equal(ds.mask, expected)
    assert ds.data[0].tolist() == [1.0, 2.0]
    f.write_text("1,inf\n,2\n")
    with pytest.raises(DataError, match="infinite"):
        ppgen.datasets.load(f"{f}#missing=mask", "all")
