"""Bad data, fuzzed (issue 12): every loader and ``fit`` raises a ``ValueError`` subclass with a
message, or returns valid data; nothing else escapes.

Hypothesis draws arrays and files of every kind ppgen reads: in-memory arrays and tensors
(``from_array``), ``.npy``/``.npz``/``.csv`` files, image folders and IDX files (through
``ppgen.datasets.load`` and ``from_images``/``from_idx``), and tensors handed to ``ppgen.fit``:
wrong shapes, dtypes (object, complex, bool, strings, datetimes, bfloat16), NaN/inf, values
outside the declared levels, empty files, garbage bytes, truncated and bit-flipped files, and
``ppgen fit --data`` on such files from the command line.

Each fuzz test runs twice: a small derandomized sample in the default run, and a large one under
``-m slow`` (the figures in docs/reliability.md; run with ``--hypothesis-show-statistics`` to see
the number of examples tried).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

import ppgen
from ppgen.datasets import DataError, Dataset, from_array, from_idx, from_images

# ---- the contract -----------------------------------------------------------------------------


def _valid(ds: Any) -> None:
    assert isinstance(ds, Dataset), type(ds)
    x = ds.data
    assert x.dtype == torch.float32 and x.dim() >= 2 and x.shape[0] >= 1
    assert torch.isfinite(x).all()
    if ds.kind != "continuous":
        assert ds.levels is not None and ds.levels >= 2
        assert torch.equal(x, x.round()) and x.min() >= 0 and x.max() <= ds.levels - 1


def _refused_or_valid(
    call: Callable[[], Any], check: Callable[[Any], None] = _valid
) -> ValueError | None:
    """Run ``call``: it returns a valid result, or raises a ValueError subclass with a message.
    Any other exception propagates and fails the test. Returns the error when it was refused."""
    try:
        result = call()
    except ValueError as e:
        message = str(e).strip()
        assert message, f"{type(e).__name__} without a message"
        assert "Traceback" not in message
        return e
    check(result)
    return None


def _fuzz(strategy: st.SearchStrategy, fast: int, slow: int):
    """A test body taking one drawn case -> (default-run test, slow test)."""

    def wrap(body: Callable[[Any], None]):
        def make(n: int, derandomize: bool):
            @settings(
                max_examples=n,
                deadline=None,
                derandomize=derandomize,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(case=strategy)
            def test(case: Any) -> None:
                body(case)

            test.__name__ = body.__name__
            test.__doc__ = body.__doc__
            return test

        return make(fast, True), pytest.mark.slow(make(slow, False))

    return wrap


@contextlib.contextmanager
def _tmpdir():
    with tempfile.TemporaryDirectory(prefix="ppgen-fuzz-") as d:
        yield Path(d)


# ---- strategies -------------------------------------------------------------------------------

_DTYPES = [
    np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.int64, np.uint64,
    np.float16, np.float32, np.float64, np.complex64, np.complex128,
    np.dtype("U3"), np.dtype("S3"), np.dtype("M8[s]"), np.dtype("m8[ms]"),
]
_SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)
_numpy_arrays = st.sampled_from(_DTYPES).flatmap(lambda dt: hnp.arrays(dt, _SHAPES))
# integer arrays near the edges of the levels: 0..300 and the extremes of their dtypes
_edge_ints = st.sampled_from([np.uint8, np.int16, np.int64, np.uint64]).flatmap(
    lambda dt: hnp.arrays(
        dt,
        st.tuples(st.integers(1, 12), st.integers(1, 4)),
        elements=st.one_of(
            st.integers(0, 300).filter(lambda v: v <= np.iinfo(dt).max),
            st.sampled_from([int(np.iinfo(dt).min), int(np.iinfo(dt).max)]),
        ),
    )
)
_scalars = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(), st.complex_numbers(), st.booleans(),
    st.text(max_size=3), st.none(), st.binary(max_size=3),
)
_ragged = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
_object_arrays = st.lists(_scalars, min_size=1, max_size=12).map(
    lambda items: np.array(items + [None], dtype=object)[:-1].reshape(len(items), 1)
)


def _tensor(array: np.ndarray, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is None or array.dtype.kind == "c":
        return torch.from_numpy(array.copy())
    with np.errstate(all="ignore"):
        return torch.from_numpy(array.astype(np.float64)).to(dtype)


_tensors = st.tuples(
    _numpy_arrays.filter(lambda a: a.dtype.kind in "biufc"),
    st.sampled_from([None, torch.bfloat16, torch.float16, torch.float64, torch.int32]),
).map(lambda t: _tensor(*t))
arrays_like = st.one_of(_numpy_arrays, _edge_ints, _object_arrays, _ragged, _tensors)

kinds = st.one_of(st.none(), st.sampled_from(["binary", "discrete", "continuous", "Discrete", ""]))
levels = st.one_of(
    st.none(), st.integers(-2, 300), st.sampled_from([2**24, 2**24 + 1, 2**40]),
    st.floats(0, 300), st.booleans(), st.text(max_size=2),
)
splits = st.sampled_from(["all", "train", "val", "test", "TRAIN", ""])


def _mutate(blob: bytes, how: str, at: int, junk: bytes) -> bytes:
    """Damage a file's bytes: cut them, flip one, append or replace them by junk."""
    if not blob or how == "none":
        return blob
    i = at % len(blob)
    if how == "truncate":
        return blob[:i]
    if how == "flip":
        return blob[:i] + bytes([blob[i] ^ 0xFF]) + blob[i + 1 :]
    if how == "append":
        return blob + junk
    if how == "garbage":
        return junk
    return b""  # "empty"


_mutations = st.tuples(
    st.sampled_from(["none", "none", "truncate", "flip", "append", "garbage", "empty"]),
    st.integers(0, 10**6),
    st.binary(max_size=64),
)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)  # object arrays go in pickled: load refuses them
    return buf.getvalue()


@st.composite
def npy_files(draw):
    array = draw(st.one_of(_numpy_arrays, _edge_ints, _object_arrays))
    return draw(st.sampled_from([".npy", ".NPY"])), _mutate(_npy_bytes(array), *draw(_mutations))


@st.composite
def npz_files(draw):
    names = draw(st.lists(st.sampled_from(["x", "data", "y", "labels", "a", "b"]), max_size=3,
                          unique=True))
    arrays = {n: draw(st.one_of(_numpy_arrays, _edge_ints)) for n in names}
    buf = io.BytesIO()
    if draw(st.booleans()):
        np.savez(buf, **arrays)
    else:
        np.savez_compressed(buf, **arrays)
    return ".npz", _mutate(buf.getvalue(), *draw(_mutations))


_cells = st.one_of(
    st.integers(-300, 300).map(str),
    st.floats().map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "", " ", "1_000", "0x1F", "٣", "1,5", '"2"',
                     "99999999999999999999999", "NaN", "x", "\x00", "é", "\ufeff1", "NA",
                     "Infinity", "\u00a01", "1" * 5000, "+.5"]),
    st.text(max_size=4),
)


@st.composite
def csv_files(draw):
    if draw(st.integers(0, 4)) == 0:  # raw bytes
        return ".csv", draw(st.binary(max_size=200))
    rows = draw(st.lists(st.lists(_cells, min_size=1, max_size=4), max_size=12))
    sep = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = sep.join(",".join(r) for r in rows)
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))  # -sig: BOM
    return ".csv", _mutate(text.encode(encoding, "replace"), *draw(_mutations))


array_files = st.one_of(npy_files(), npz_files(), csv_files())


def _image_bytes(array: np.ndarray, mode: str | None, fmt: str) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(array)
    if mode is not None:
        im = im.convert(mode)
    im.save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def image_entries(draw):
    """One entry of an image folder: (relative name, bytes or None for a directory)."""
    name = draw(st.sampled_from(["a", "b", "c", ".hidden", "sub/d", "sub/e", "other/f"]))
    suffix = draw(st.sampled_from([".png", ".jpg", ".jpeg", ".PNG", ".txt"]))
    kind = draw(st.sampled_from(["png", "png", "jpeg", "gif", "bmp", "tiff", "bytes", "empty"]))
    if kind == "bytes":
        return name + suffix, draw(st.binary(max_size=100))
    if kind == "empty":
        return name + suffix, b""
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    channels = draw(st.sampled_from([None, 3, 4]))
    shape = (h, w) if channels is None else (h, w, channels)
    seed = draw(st.integers(0, 2**16))
    array = np.random.RandomState(seed).randint(0, 256, shape).astype(np.uint8)
    fmt = {"png": "PNG", "jpeg": "JPEG", "gif": "GIF", "bmp": "BMP", "tiff": "TIFF"}[kind]
    modes = {"PNG": [None, "1", "L", "LA", "P", "I;16", "RGBA"], "JPEG": [None, "L", "CMYK"],
             "GIF": [None], "BMP": [None], "TIFF": [None, "F", "I", "I;16"]}[fmt]
    mode = draw(st.sampled_from(modes))
    if fmt == "JPEG" and channels == 4:
        mode = "RGB"
    blob = _image_bytes(array, mode, fmt)
    return name + suffix, _mutate(blob, *draw(_mutations))


@st.composite
def image_folders(draw):
    entries = draw(st.lists(image_entries(), max_size=5, unique_by=lambda e: e[0].lower()))
    options = draw(st.sampled_from(["", "#kind=binary", "#size=3", "#grayscale=true",
                                    "#grayscale=false,size=2", "#levels=17", "#size=0",
                                    "#labels=x"]))
    return entries, options


@st.composite
def idx_files(draw):
    """IDX bytes: a header (magic, type, dims) and a payload whose length may disagree."""
    magic = draw(st.sampled_from([b"\x00\x00", b"\x00\x00", b"\x00\x00", b"\x00\x01", b"PK"]))
    type_code = draw(st.sampled_from([0x08, 0x08, 0x08, 0x09, 0x0B, 0x0D, 0x0E, 0x07]))
    ndim = draw(st.sampled_from([3, 3, 3, 1, 0, 2, 4]))
    dims = draw(st.lists(st.one_of(st.integers(0, 5), st.just(2**31)), min_size=ndim,
                         max_size=ndim))
    header = magic + bytes([type_code, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims)
    size = math.prod(dims) if math.prod(dims) < 10**4 else 16
    size += draw(st.sampled_from([0, 0, 0, -1, 1, -size]))
    payload = bytes(draw(st.integers(0, 255)) for _ in range(2)) * (max(size, 0) // 2)
    payload += b"\x07" * (max(size, 0) % 2)
    blob = header + payload
    if draw(st.booleans()):
        blob = gzip.compress(blob)
        # a decompression bomb: members of zeros the header does not declare (issue 18)
        blob += gzip.compress(bytes(1 << 16)) * draw(st.sampled_from([0, 0, 0, 1, 64]))
    name = draw(st.sampled_from(["train-images-idx3-ubyte", "images.idx3", "x-ubyte.gz"]))
    return name, _mutate(blob, *draw(_mutations))


# ---- loaders ----------------------------------------------------------------------------------


@_fuzz(st.tuples(arrays_like, kinds, levels, splits), fast=150, slow=3000)
def test_from_array_fuzzed(case):
    """from_array on arrays of every dtype and shape, with and without declared levels."""
    array, kind, lv, split = case
    refused = _refused_or_valid(lambda: from_array(array, kind=kind, levels=lv, split=split))
    if refused is None and lv is not None and not isinstance(lv, bool | str | float):
        ds = from_array(array, kind=kind, levels=lv, split=split)
        assert ds.levels == lv or (lv == 2 and ds.kind == "binary")


test_from_array_fuzzed, test_from_array_fuzzed_slow = test_from_array_fuzzed


@_fuzz(st.tuples(array_files, kinds, levels, splits), fast=100, slow=2000)
def test_array_files_fuzzed(case):
    """.npy/.npz/.csv files: valid, damaged, empty or garbage, through datasets.load."""
    (suffix, blob), kind, lv, split = case
    lv = lv if isinstance(lv, int) else None
    with _tmpdir() as d:
        path = d / f"data{suffix}"
        path.write_bytes(blob)
        _refused_or_valid(lambda: ppgen.datasets.load(path, split, kind=kind, levels=lv))


test_array_files_fuzzed, test_array_files_fuzzed_slow = test_array_files_fuzzed


@_fuzz(st.tuples(image_folders(), splits), fast=60, slow=1500)
def test_image_folders_fuzzed(case):
    """Folders of PNG/JPEG (and other) files, good, damaged, mixed or empty, through
    datasets.load (with options) and from_images."""
    (entries, options), split = case
    with _tmpdir() as d:
        root = d / "images"
        root.mkdir()
        for name, blob in entries:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(blob)
        _refused_or_valid(lambda: ppgen.datasets.load(f"{root}{options}", split))
        _refused_or_valid(lambda: from_images(root, size=4))


test_image_folders_fuzzed, test_image_folders_fuzzed_slow = test_image_folders_fuzzed


@_fuzz(st.tuples(idx_files(), st.one_of(st.none(), idx_files()), splits), fast=100, slow=2000)
def test_idx_files_fuzzed(case):
    """IDX image and label files with wrong magic, types, dims, lengths, gzip damage."""
    (name, blob), labels, split = case
    with _tmpdir() as d:
        path = d / name
        path.write_bytes(blob)
        label_path = None
        if labels is not None:
            label_path = d / f"labels-{labels[0]}"
            label_path.write_bytes(labels[1])
        _refused_or_valid(lambda: from_idx(path, labels=label_path))
        spec = str(path) if label_path is None else f"{path}#labels={label_path}"
        _refused_or_valid(lambda: ppgen.datasets.load(spec, split))


test_idx_files_fuzzed, test_idx_files_fuzzed_slow = test_idx_files_fuzzed


# ---- fit --------------------------------------------------------------------------------------

_MODELS: dict[str, Any] = {}


def _model(name: str) -> Any:
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = ppgen.build("independent", ppgen.datasets.load(name, "train"))
    return _MODELS[name]


@st.composite
def fit_data(draw):
    """Data for a model of digits (17 levels, 1x8x8) or moons (continuous, 2-D): right and wrong
    shapes, dtypes, values (NaN, inf, outside the levels, non-integers), and non-tensors."""
    target = draw(st.sampled_from(["digits", "moons"]))
    event = (1, 8, 8) if target == "digits" else (2,)
    shape = draw(st.one_of(
        st.integers(0, 5).map(lambda n: (n, *event)),
        _SHAPES,
    ))
    dtype = draw(st.sampled_from(_DTYPES[:13]))
    elements = None
    if np.dtype(dtype).kind in "iu":
        elements = st.integers(0, 20) if draw(st.booleans()) else None
    array = draw(hnp.arrays(dtype, shape, elements=elements))
    wrap = draw(st.sampled_from(["tensor", "tensor", "tensor", "bf16", "numpy", "list",
                                 "dataset", "none", "str"]))
    if wrap in ("tensor", "dataset"):
        data: Any = torch.from_numpy(array.copy())
    elif wrap == "bf16":
        with np.errstate(all="ignore"):  # float64 beyond float32 becomes inf: data to refuse
            data = torch.from_numpy(array.real.astype(np.float32)).to(torch.bfloat16)
    elif wrap == "numpy":
        data = array
    elif wrap == "list":
        data = array.tolist()
    else:
        data = None if wrap == "none" else "digits"
    use_val = draw(st.booleans())
    return target, wrap, data, use_val


def _check_fit(case) -> None:
    target, wrap, data, use_val = case
    model = _model(target)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def call():
        train = data
        if wrap == "dataset":
            train = from_array(data)
        good = ppgen.datasets.load(target, "val").subset(8)
        kwargs = {"val": train} if use_val else {}
        first = good if use_val else train
        return ppgen.fit(model, first, steps=1, batch_size=4, device="cpu", progress=False,
                         **kwargs)

    error = _refused_or_valid(call, check=lambda history: None)
    if isinstance(error, DataError):  # bad data is refused before any work: model untouched
        # (finite but extreme data may instead train into a NonFiniteLossError, a ValueError
        # naming the step, after the model's data-dependent initialization)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)


@_fuzz(fit_data(), fast=80, slow=2000)
def test_fit_fuzzed(case):
    """ppgen.fit (train and val data) on data of the wrong shape, dtype, values or type."""
    _check_fit(case)


test_fit_fuzzed, test_fit_fuzzed_slow = test_fit_fuzzed


@_fuzz(st.one_of(array_files, idx_files().map(lambda f: ("-" + f[0], f[1]))), fast=10, slow=200)
def test_cli_fit_on_fuzzed_files(case):
    """`ppgen fit --data FILE` on fuzzed files: exit 0, or exit 2 with one line on stderr."""
    from ppgen.cli import main

    suffix, blob = case
    with _tmpdir() as d:
        path = d / f"data{suffix}"
        path.write_bytes(blob)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["fit", "independent", "--data", str(path), "--steps", "1",
                         "--batch-size", "4", "--out", str(d / "run"), "--no-progress",
                         "--device", "cpu", "--no-val"])
        lines = err.getvalue().strip().splitlines()
        assert code in (0, 2), code
        if code == 2:
            assert len(lines) == 1 and lines[0].startswith("ppgen: error: "), lines


test_cli_fit_on_fuzzed_files, test_cli_fit_on_fuzzed_files_slow = test_cli_fit_on_fuzzed_files


def test_damaged_zip_members_and_pickles_are_refused(tmp_path):
    """Fixed cases the fuzzer reaches rarely: a .npz whose member is garbage, a pickled .npy."""
    path = tmp_path / "bad.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", b"\x93NUMPY garbage")
    assert isinstance(_refused_or_valid(lambda: ppgen.datasets.load(path, "all")), DataError)
    pickled = tmp_path / "obj.npy"
    pickled.write_bytes(_npy_bytes(np.array([[os.getcwd]], dtype=object)))
    assert isinstance(_refused_or_valid(lambda: ppgen.datasets.load(pickled, "all")), DataError)
