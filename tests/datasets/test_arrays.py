"""User data: kind/levels inference, fixed splits, .npy/.npz/.csv files, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ppgen
from ppgen.datasets import DataError, from_array
from ppgen.datasets.arrays import split_indices

FAST = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# ---- inference rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "kind", "levels"),
    [
        (np.array([[True, False], [False, False]]), "binary", 2),
        (np.array([[0, 1], [1, 1]]), "binary", 2),
        (np.array([[0, 0], [0, 0]], dtype=np.uint8), "binary", 2),
        (np.array([[0, 3], [7, 1]], dtype=np.int32), "discrete", 8),
        (np.array([[0, 255]], dtype=np.uint8), "discrete", 256),
        (np.array([[0.0, 3.0], [7.0, 1.0]]), "continuous", None),  # floats stay continuous
        (np.array([[0.5, -3.0]], dtype=np.float32), "continuous", None),
    ],
)
def test_inferred_kind(array, kind, levels):
    ds = from_array(array)
    assert (ds.kind, ds.levels) == (kind, levels)
    assert torch.equal(ds.data, torch.as_tensor(array.astype(np.float32)))


def test_overrides_win_and_are_checked():
    ints = np.array([[0, 3], [7, 1]])
    assert from_array(ints, levels=256).levels == 256  # max + 1 underestimates: override
    assert from_array(ints, kind="continuous").kind == "continuous"
    ds = from_array(np.array([[0.0, 2.0]]), kind="discrete")
    assert (ds.kind, ds.levels) == ("discrete", 3)
    assert from_array(np.array([[0, 1]]), levels=2).kind == "binary"
    with pytest.raises(DataError, match="values in"):
        from_array(ints, levels=4)  # 7 is out of range for 4 levels
    with pytest.raises(DataError, match="non-integer"):
        from_array(np.array([[0.5, 1.0]]), kind="discrete")
    with pytest.raises(DataError, match="takes no levels"):
        from_array(ints, kind="continuous", levels=8)
    with pytest.raises(DataError, match="binary data has 2 levels"):
        from_array(ints, kind="binary", levels=3)
    with pytest.raises(DataError, match="unknown kind"):
        from_array(ints, kind="categorical")
    with pytest.raises(DataError, match="levels must"):
        from_array(ints, levels=1)


@pytest.mark.parametrize(
    "array", [np.array([[-1, 2]]), np.array([[0, 256]]), np.array([[0, 10**6]])]
)
def test_ambiguous_integers_are_refused_with_the_fix(array):
    with pytest.raises(DataError, match="kind='continuous'"):
        from_array(array)
    assert from_array(array, kind="continuous").kind == "continuous"


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros(5), r"x\[:, None\]"),
        (np.float64(3.0), "batch dim"),
        (np.zeros((0, 3)), "empty"),
        (np.zeros((3, 0)), "empty"),
        (np.array([[1.0, np.nan]]), "non-finite"),
        (np.array([[np.inf, 1.0]]), "non-finite"),
        (np.array([[1e300, 1.0]]), "float32 range"),
        (np.array([["a", "b"]]), "dtype"),
        (np.array([[1 + 2j]]), "dtype"),
    ],
)
def test_bad_arrays(array, match):
    with pytest.raises(DataError, match=match):
        from_array(array, name="mine")


def test_labels_travel_with_their_points():
    x = np.arange(40).reshape(20, 2) % 5
    y = np.arange(20)
    for split in ("train", "val", "test", "all"):
        ds = from_array(x, labels=y, split=split)
        assert torch.equal(ds.data, torch.as_tensor(x[ds.labels.numpy()], dtype=torch.float32))
    with pytest.raises(DataError, match="labels"):
        from_array(x, labels=y[:5])
    with pytest.raises(DataError, match="labels"):
        from_array(x, labels=y.astype(float))


# ---- splits -----------------------------------------------------------------------------------


@given(n=st.integers(10, 3000))
@FAST
def test_splits_partition_with_documented_sizes(n):
    parts = {s: split_indices(n, s) for s in ("train", "val", "test")}
    assert len(parts["val"]) == len(parts["test"]) == n // 10
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(n))
    perm = np.random.RandomState(0).permutation(n)
    assert np.array_equal(np.concatenate([parts["train"], parts["val"], parts["test"]]), perm)


def test_too_few_points_for_a_split():
    with pytest.raises(DataError, match="split='all'"):
        from_array(np.zeros((9, 2)), split="train")
    assert len(from_array(np.zeros((9, 2)), split="all")) == 9
    with pytest.raises(DataError, match="unknown split"):
        from_array(np.zeros((20, 2)), split="holdout")


# ---- files ------------------------------------------------------------------------------------


def _write(path, array, fmt):
    if fmt == "npy":
        np.save(path, array)
    elif fmt == "npz":
        np.savez(path, x=array)
    else:
        fmt_str = "%d" if np.issubdtype(array.dtype, np.integer) else "%.17e"  # a float literal
        np.savetxt(path, array.reshape(len(array), -1), delimiter=",", fmt=fmt_str)


int_arrays = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.int16, np.int64]),
    shape=st.tuples(st.integers(10, 40), st.integers(1, 6)),
    elements=st.integers(0, 255),
)
float_arrays = hnp.arrays(
    dtype=np.float64,
    shape=st.tuples(st.integers(10, 40), st.integers(1, 6)),
    elements=st.floats(-1e6, 1e6, allow_nan=False, width=32),
)


@given(
    array=st.one_of(int_arrays, float_arrays),
    fmt=st.sampled_from(["npy", "npz", "csv"]),
    split=st.sampled_from(["train", "val", "test", "all"]),
)
@FAST
def test_file_round_trip(tmp_path_factory, array, fmt, split):
    path = tmp_path_factory.mktemp("d") / f"data.{fmt}"
    _write(path, array, fmt)
    ds = ppgen.datasets.load(path, split)
    ref = from_array(array, split=split)
    assert (ds.kind, ds.levels, ds.split) == (ref.kind, ref.levels, split)
    assert torch.equal(ds.data, ref.data)
    assert ds.name == str(path)


def test_image_shaped_npy_and_cli_options(tmp_path):
    x = np.random.RandomState(0).randint(0, 200, (30, 1, 4, 4)).astype(np.uint8)
    path = tmp_path / "img.npy"
    np.save(path, x)
    ds = ppgen.datasets.load(path, "all")
    assert ds.event_shape == (1, 4, 4) and (ds.kind, ds.levels) == ("discrete", int(x.max()) + 1)
    ds = ppgen.datasets.load(f"{path}#levels=256", "test")
    assert (ds.kind, ds.levels, len(ds)) == ("discrete", 256, 3)
    assert ppgen.datasets.load(f"{path}#kind=continuous", "all").kind == "continuous"
    assert ppgen.datasets.load(path, "all", levels=256).levels == 256
    with pytest.raises(DataError, match="options are"):
        ppgen.datasets.load(f"{path}#colour=red", "all")
    with pytest.raises(DataError, match="key= selects"):
        ppgen.datasets.load(path, "all", key="x")
    with pytest.raises(DataError, match="user files only"):
        ppgen.datasets.load("digits", "train", levels=3)


def test_npz_key_choice(tmp_path):
    x, y = np.random.RandomState(0).rand(20, 3), np.arange(20) % 4
    cases = {
        "only.npz": {"images": x},
        "x.npz": {"x": x, "y": y, "other": x + 1},
        "data.npz": {"data": x, "labels": y},
    }
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
        ds = ppgen.datasets.load(tmp_path / name, "all")
        assert torch.equal(ds.data, torch.as_tensor(x, dtype=torch.float32)), name
        has_labels = "y" in arrays or "labels" in arrays
        assert (ds.labels is not None) == has_labels, name
    np.savez(tmp_path / "many.npz", a=x, b=x + 1)
    with pytest.raises(DataError, match="key=NAME"):
        ppgen.datasets.load(tmp_path / "many.npz", "all")
    ds = ppgen.datasets.load(tmp_path / "many.npz", "all", key="b")
    assert torch.equal(ds.data, torch.as_tensor(x + 1, dtype=torch.float32))
    ds = ppgen.datasets.load(f"{tmp_path / 'many.npz'}#key=b", "all")
    assert torch.equal(ds.data, torch.as_tensor(x + 1, dtype=torch.float32))
    with pytest.raises(DataError, match="no array 'c'"):
        ppgen.datasets.load(tmp_path / "many.npz", "all", key="c")
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(DataError, match="no arrays"):
        ppgen.datasets.load(tmp_path / "empty.npz", "all")


def test_csv_header_and_bad_rows(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("a,b\n1,2\n3,4\n\n5,6\n")
    ds = ppgen.datasets.load(good, "all")
    assert ds.data.tolist() == [[1, 2], [3, 4], [5, 6]] and ds.levels == 7
    floats = tmp_path / "floats.csv"
    floats.write_text("1.5, 2\n3, 4e-1\n")
    assert ppgen.datasets.load(floats, "all").kind == "continuous"
    for text, match in [
        ("1,2\n3\n", "columns"),
        ("1,2\n3,x\n", "not a number"),
        ("1,2\n3,\n", "not a number"),
        ("a,1\n1,2\n", "not a number"),
        ("1.0,nan\n", "non-finite"),
        ("x,y\n", "no data rows"),
        ("", "no data rows"),
    ]:
        path = tmp_path / "bad.csv"
        path.write_text(text)
        with pytest.raises(DataError, match=match) as err:
            ppgen.datasets.load(path, "all")
        assert str(path) in str(err.value), text


@pytest.mark.parametrize("fmt", ["npy", "npz", "csv"])
def test_bad_files_name_the_file(tmp_path, fmt):
    empty = tmp_path / f"empty.{fmt}"
    empty.write_bytes(b"")
    garbage = tmp_path / f"garbage.{fmt}"
    garbage.write_bytes(bytes(range(256)) * 4)
    for path in (empty, garbage):
        with pytest.raises(DataError) as err:
            ppgen.datasets.load(path, "all")
        assert str(path) in str(err.value), path
    nan = tmp_path / f"nan.{fmt}"
    _write(nan, np.array([[1.0, np.nan], [2.0, 3.0]]), fmt)
    with pytest.raises(DataError, match="non-finite") as err:
        ppgen.datasets.load(nan, "all")
    assert str(nan) in str(err.value)
    wrong = tmp_path / f"wrong.{fmt}"
    if fmt == "csv":
        wrong.write_text("-3,2\n")  # negative integers: ambiguous
        match = "kind='continuous'"
    else:
        _write(wrong, np.zeros(7), fmt)  # 1-D
        match = "batch dim"
    with pytest.raises(DataError, match=match):
        ppgen.datasets.load(wrong, "all")
    levels = tmp_path / f"levels.{fmt}"
    _write(levels, np.array([[0, 7], [3, 1]]), fmt)
    with pytest.raises(DataError, match="values must lie in 0..3") as err:
        ppgen.datasets.load(f"{levels}#levels=4", "all")  # 7 is out of range
    assert str(levels) in str(err.value)


def test_missing_unsupported_and_pickled_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        ppgen.datasets.load(tmp_path / "nope.npy", "all")
    other = tmp_path / "data.txt"
    other.write_text("1,2\n")
    with pytest.raises(DataError, match="unsupported file type"):
        ppgen.datasets.load(str(other), "all")
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="cannot read"):
        ppgen.datasets.load(pickled, "all")


@given(payload=st.binary(min_size=0, max_size=300), fmt=st.sampled_from(["npy", "npz", "csv"]))
@FAST
def test_random_bytes_give_a_dataset_or_a_data_error(tmp_path_factory, payload, fmt):
    path = tmp_path_factory.mktemp("junk") / f"junk.{fmt}"
    path.write_bytes(payload)
    try:
        ds = ppgen.datasets.load(path, "all")
    except DataError as e:
        assert str(path) in str(e)
    else:  # random bytes can be a valid csv ("1,2"): then it must be a valid dataset
        assert ds.data.dim() >= 2 and torch.isfinite(ds.data).all()


@given(
    array=hnp.arrays(
        dtype=np.float64,
        shape=st.tuples(st.integers(1, 20), st.integers(1, 5)),
        elements=st.floats(allow_nan=True, allow_infinity=True, width=64),
    )
)
@FAST
def test_float_arrays_are_continuous_or_refused(array):
    try:
        ds = from_array(array)
    except DataError as e:
        assert "non-finite" in str(e) or "float32 range" in str(e)
        assert not np.isfinite(array).all() or np.abs(array).max() > np.finfo(np.float32).max
    else:
        assert ds.kind == "continuous" and torch.isfinite(ds.data).all()


def test_cli_fits_and_evaluates_a_user_file(tmp_path, capsys):
    from ppgen.cli import main

    x = np.random.RandomState(0).randint(0, 5, (60, 6))
    path = tmp_path / "counts.npy"
    np.save(path, x)
    run = tmp_path / "run"
    args = [
        "fit",
        "independent",
        "--data",
        str(path),
        "--steps",
        "3",
        "--batch-size",
        "16",
        "--out",
        str(run),
        "--no-progress",
    ]
    assert main(args) == 0
    assert main(["evaluate", str(run), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert f"{path}/test" in out and "exact" in out
    ev = ppgen.evaluate(ppgen.load(run / "checkpoint.pt"), ppgen.datasets.load(path, "test"))
    assert ev.num_dims == 6 and math.isfinite(ev.bits_per_dim)


@given(
    data=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=6),
                    elements=st.floats(width=32, allow_nan=True, allow_infinity=True)),
)
@FAST
def test_batch_check_finds_every_non_finite_value(data):
    """``check_batch`` tests one sum first and the elements only when it is not finite: it must
    still refuse exactly the batches holding NaN or inf, with their count, and accept finite
    batches whose sum overflows (e.g. two values near float32's maximum)."""
    from ppgen.datasets.validation import check_batch

    x = torch.from_numpy(data)
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        with pytest.raises(DataError, match=f"holds {bad} non-finite"):
            check_batch(x, x.shape[1:], "continuous", None)
    else:
        assert check_batch(x, x.shape[1:], "continuous", None) is x


def test_batch_check_accepts_finite_values_whose_sum_overflows():
    from ppgen.datasets.validation import check_batch

    big = torch.full((4, 3), 3e38)
    assert not torch.isfinite(big.sum())
    assert check_batch(big, (3,), "continuous", None) is big


# ---- CSV as the data-science stack reads it (issue 18) -----------------------------------------


def test_csv_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    """Spreadsheets' "CSV UTF-8" starts with a byte-order mark: it is not data, and neither
    the first row nor the levels change because of it (headed or not)."""
    rows = np.array([[7, 2], [3, 4], [1, 0]])
    text = "\n".join(",".join(map(str, r)) for r in rows) + "\n"
    for name, content in [("plain", text), ("headed", "a,b\n" + text)]:
        path = tmp_path / f"{name}.csv"
        path.write_bytes(b"\xef\xbb\xbf" + content.encode())
        ds = ppgen.datasets.load(path, "all")
        assert ds.data.tolist() == rows.tolist(), name
        assert (ds.kind, ds.levels) == ("discrete", 8), name
    path = tmp_path / "wide.csv"
    path.write_text("1,2\n3,4\n", encoding="utf-16")
    with pytest.raises(DataError, match="UTF-16.*CSV UTF-8"):
        ppgen.datasets.load(path, "all")


@pytest.mark.parametrize(
    ("cell", "row", "column", "match"),
    [
        ("1_0", 3, 2, "not a number"),  # float() reads 10; numpy and pandas do not
        ("٣", 3, 2, "not a number"),  # a Unicode digit
        ("\u00a02", 3, 2, "not a number"),  # a no-break space
        ("0x1F", 3, 2, "not a number"),
        ("1d5", 3, 2, "not a number"),
        ("", 3, 2, "is empty: a missing"),
        ("NA", 3, 2, "'NA': a missing"),
        ("-NaN", 3, 2, "'-NaN': a missing"),
        ("null", 3, 2, "a missing"),
        ("Infinity", 3, 2, "an infinite"),
        ("1e999", 3, 2, "an infinite"),
    ],
)
def test_csv_cells_that_are_not_numbers_name_their_row_and_column(
    tmp_path, cell, row, column, match
):
    path = tmp_path / "cells.csv"
    path.write_text(f"a,b\n1,2\n3,{cell}\n5,6\n", encoding="utf-8")
    with pytest.raises(DataError, match=match) as err:
        ppgen.datasets.load(path, "all")
    message = str(err.value)
    assert f"{path}: row {row}, column {column}" in message and "\n" not in message


def test_csv_numbers_and_headers_as_pandas_reads_them(tmp_path):
    """What numpy and pandas accept is accepted with their value; a header is a first row with
    no number in it (pandas' to_csv writes an empty first name); blank rows are skipped."""
    cases = [
        (" 1 ,\t2\n", [[1, 2]]),
        ("+1,-0\n1.,.5\n1e5,-2.5E-1\n", [[1, 0], [1, 0.5], [1e5, -0.25]]),
        (",a,b\n0,1.5,2\n1,3,4\n", [[0, 1.5, 2], [1, 3, 4]]),
        ("x,y\n\n1,2\n,\n3,4\n\n", [[1, 2], [3, 4]]),
        ('"1","2"\n', [[1, 2]]),
        ("00012,1\n", [[12, 1]]),
    ]
    for text, expected in cases:
        path = tmp_path / "ok.csv"
        path.write_text(text)
        ds = ppgen.datasets.load(path, "all", kind="continuous")
        assert ds.data.tolist() == expected, text
    for text, match in [
        ("a,b,c\n1,2\n", r"header \(row 1\) has 3 columns but row 2 has 2"),
        ("a,1\n1,2\n", "row 1, column 1 holds 'a', not a number"),
        ("1,2\n3\n", "row 2 has 1 columns"),
    ]:
        path = tmp_path / "bad.csv"
        path.write_text(text)
        with pytest.raises(DataError, match=match):
            ppgen.datasets.load(path, "all")


_CSV_TOKENS = [
    "1", "-3", "+7", "0", "-0", "00012", "1.", ".5", "-.5", "+.5", "1e5", "1E+05", "2.5e-3",
    "1e0001", "1e999", "1e-999", "1e300", "99999999999999999999999", "9223372036854775808",
    " 4", "4 ", "\t4", "", " ", "nan", "NaN", "-nan", "+nan", "NAN", "NA", "null", "None",
    "#N/A", "inf", "-Infinity", "INF", "+inf", "infinity", "1_0", "1__0", "0x1F", "1d5", "e5",
    "1.5e", ".", "-", "+-1", "1.2.3", "٣", "１", "\u00a01", "\u20031", "x", "0.1f",
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cells=st.integers(1, 3).flatmap(
        lambda w: st.lists(
            st.lists(
                st.one_of(
                    st.sampled_from(_CSV_TOKENS),
                    st.integers(-(2**40), 2**40).map(str),
                    st.floats(allow_nan=False, allow_infinity=False).map(repr),
                ),
                min_size=w, max_size=w,
            ).filter(lambda r: any(c.strip() for c in r)),
            min_size=1, max_size=6,
        )
    ),
    bom=st.booleans(),
    newline=st.sampled_from(["\n", "\r\n"]),
)
def test_csv_accepts_exactly_what_pandas_reads_as_finite_numbers(tmp_path, cells, bom, newline):
    """Against pandas.read_csv on the same file: ppgen loads it iff pandas reads every column
    as numbers (not strings or booleans) with no NaN or inf, and then with the same values
    (pandas' round-trip parser; both in float32 after); float32 overflow is ppgen's own rule."""
    pd = pytest.importorskip("pandas")
    width = len(cells[0])
    text = newline.join([",".join(f"c{i}" for i in range(width)), *map(",".join, cells)])
    path = tmp_path / "cells.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + (text + newline).encode())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = pd.read_csv(path, float_precision="round_trip")
    numeric = all(
        pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t)
        for t in frame.dtypes
    )
    values = frame.to_numpy(np.float64) if numeric else None
    finite = numeric and bool(np.isfinite(values).all())
    in_range = finite and bool((np.abs(values) <= np.finfo(np.float32).max).all())
    try:
        ds = ppgen.datasets.load(path, "all", kind="continuous")
    except DataError as e:
        assert not in_range, f"refused what pandas reads: {e}"
        assert str(path) in str(e)
    else:
        assert in_range, f"pandas reads {frame.dtypes.tolist()}, {values}"
        assert torch.equal(ds.data, torch.from_numpy(values.astype(np.float32))), text
