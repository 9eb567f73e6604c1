"""Image folders and IDX files: exact round trips of files the tests write, and a DataError
naming the file for every kind of bad input."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import ppgen
from ppgen.datasets import DataError, from_idx, from_images


def _gray(seed, shape=(5, 7)):
    return np.random.RandomState(seed).randint(0, 256, shape).astype(np.uint8)


def _rgb(seed, shape=(4, 6)):
    return np.random.RandomState(seed).randint(0, 256, (*shape, 3)).astype(np.uint8)


def _idx_bytes(array, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


# ---- image folders ----------------------------------------------------------------------------


def test_grayscale_pngs_round_trip_exactly(tmp_path):
    arrays = [_gray(i) for i in range(4)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image: skipped")
    ds = from_images(tmp_path)
    assert (ds.kind, ds.levels, ds.event_shape, len(ds)) == ("discrete", 256, (1, 5, 7), 4)
    assert ds.labels is None
    expected = torch.from_numpy(np.stack(arrays)).float().unsqueeze(1)
    assert torch.equal(ds.data, expected)


def test_rgb_pngs_are_channels_first_and_grayscale_is_pillows_luma(tmp_path):
    arrays = [_rgb(i) for i in range(3)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    ds = from_images(tmp_path)
    assert ds.event_shape == (3, 4, 6)
    assert torch.equal(ds.data, torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float())
    gray = from_images(tmp_path, grayscale=True)
    luma = [np.asarray(Image.fromarray(a).convert("L")) for a in arrays]
    assert torch.equal(gray.data, torch.from_numpy(np.stack(luma)).float().unsqueeze(1))


def test_auto_mode_is_rgb_when_any_image_has_colour(tmp_path):
    Image.fromarray(_gray(0, (4, 6))).save(tmp_path / "a.png")
    Image.fromarray(_rgb(1)).save(tmp_path / "b.png")
    assert from_images(tmp_path).event_shape == (3, 4, 6)
    assert from_images(tmp_path, grayscale=True).event_shape == (1, 4, 6)


def test_jpeg_and_resizing(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (12, 1))  # (12, 16)
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(smooth[:, ::-1].copy()).save(tmp_path / "b.JPEG", quality=95)
    ds = from_images(tmp_path)
    assert ds.event_shape == (1, 12, 16)
    assert (ds.data[0, 0] - torch.from_numpy(smooth).float()).abs().max() <= 8  # lossy
    small = from_images(tmp_path, size=(6, 8))
    assert small.event_shape == (1, 6, 8)
    assert from_images(tmp_path, size=5).event_shape == (1, 5, 5)
    assert torch.equal(small.data, small.data.round()) and small.data.max() <= 255


def test_class_subfolders_give_labels_in_sorted_order(tmp_path):
    for name, count in (("cat", 2), ("ant", 3)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.fromarray(_gray(i, (3, 3))).save(tmp_path / name / f"{i}.png")
    ds = from_images(tmp_path)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1]  # ant, ant, ant, cat, cat
    binary = from_images(tmp_path, binarize=True)
    assert binary.kind == "binary" and torch.equal(binary.data, (ds.data >= 128).float())


def test_bad_folders_raise_a_data_error_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        from_images(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no PNG/JPEG images"):
        from_images(empty)

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    Image.fromarray(_gray(0)).save(garbage / "good.png")
    (garbage / "bad.png").write_bytes(b"\x89PNG but then nonsense" * 5)
    with pytest.raises(DataError, match=r"bad\.png.*not a readable PNG/JPEG"):
        from_images(garbage)

    truncated = tmp_path / "truncated"
    truncated.mkdir()
    Image.fromarray(_rgb(0, (32, 32))).save(truncated / "t.png")
    data = (truncated / "t.png").read_bytes()
    (truncated / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.png"):
        from_images(truncated)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(_gray(0, (5, 7))).save(mixed / "a.png")
    Image.fromarray(_gray(1, (6, 7))).save(mixed / "b.png")
    with pytest.raises(DataError, match=r"b\.png.*7x6.*size="):
        from_images(mixed)
    assert from_images(mixed, size=(5, 7)).event_shape == (1, 5, 7)

    deep = tmp_path / "deep"
    deep.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint16) + 1000).save(deep / "d.png")
    with pytest.raises(DataError, match=r"d\.png.*8-bit"):
        from_images(deep)

    gif = tmp_path / "gif"
    gif.mkdir()
    Image.fromarray(_gray(0)).save(gif / "g.png", format="GIF")
    with pytest.raises(DataError, match=r"g\.png.*GIF"):
        from_images(gif)

    both = tmp_path / "both"
    (both / "cls").mkdir(parents=True)
    Image.fromarray(_gray(0)).save(both / "top.png")
    Image.fromarray(_gray(1)).save(both / "cls" / "x.png")
    with pytest.raises(DataError, match="class sub-folders"):
        from_images(both)


# ---- IDX files --------------------------------------------------------------------------------


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 5),
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    compressed=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_idx_round_trip(tmp_path_factory, n, height, width, compressed, seed):
    folder = tmp_path_factory.mktemp("idx")
    images = np.random.RandomState(seed).randint(0, 256, (n, height, width)).astype(np.uint8)
    labels = np.random.RandomState(seed + 1).randint(0, 10, n).astype(np.uint8)
    pack = gzip.compress if compressed else (lambda b: b)
    (folder / "images").write_bytes(pack(_idx_bytes(images)))
    (folder / "labels").write_bytes(pack(_idx_bytes(labels)))
    ds = from_idx(folder / "images", labels=folder / "labels")
    assert (ds.kind, ds.levels, ds.event_shape) == ("discrete", 256, (1, height, width))
    assert torch.equal(ds.data, torch.from_numpy(images).float().unsqueeze(1))
    assert ds.labels.tolist() == labels.tolist()


def test_bad_idx_files_raise_a_data_error_naming_the_file(tmp_path):
    images = _gray(0, (3, 4, 5))
    good = tmp_path / "good-idx3"
    good.write_bytes(_idx_bytes(images))

    cases = {
        "magic": (b"\x12\x34\x08\x03" + _idx_bytes(images)[4:], "not an IDX file"),
        "garbage": (b"hello, world", "not an IDX file"),
        "empty": (b"", "not an IDX file"),
        "floats": (_idx_bytes(images.astype(">f4"), 0x0D), "float32 values"),
        "truncated": (_idx_bytes(images)[:-7], "truncated or damaged"),
        "too-long": (_idx_bytes(images) + b"\x00", "truncated or damaged"),
        "header": (bytes([0, 0, 8, 3, 0, 0]), "truncated header"),
        "labels-as-images": (_idx_bytes(np.arange(3, dtype=np.uint8)), "labels="),
        "bad-gzip": (gzip.compress(_idx_bytes(images))[:-10], "damaged gzip"),
    }
    for name, (data, match) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DataError, match=match) as info:
            from_idx(path)
        assert name in str(info.value), f"{name}: the message names the file"

    few = tmp_path / "few-labels"
    few.write_bytes(_idx_bytes(np.zeros(2, np.uint8)))
    with pytest.raises(DataError, match=r"few-labels: 2 labels for the 3 images"):
        from_idx(good, labels=few)
    with pytest.raises(DataError, match="no such file"):
        from_idx(tmp_path / "absent")


# ---- with the models --------------------------------------------------------------------------


def test_rgb_folder_feeds_a_gated_pixelcnn_with_a_logistic_mixture(tmp_path):
    for i in range(4):
        Image.fromarray(_rgb(i, (4, 4))).save(tmp_path / f"{i}.png")
    ds = from_images(tmp_path)
    m = ppgen.build("gated-pixelcnn", ds, hidden=[6])
    assert m.config.output_kind == "logistic"
    ev = ppgen.evaluate(m, ds)
    assert ev.kind == "exact" and ev.per_example.shape == (4,)
    x = m.sample(2, seed=0)
    assert x.shape == (2, 3, 4, 4) and x.min() >= 0 and x.max() <= 255


# ---- compressed IDX files that inflate beyond their header (issue 18) -------------------------

_MEMBER = gzip.compress(bytes(1 << 20), 9)  # 1 MiB of zeros in about 1 KiB


def _bomb(declared: np.ndarray, extra_mib: int, extra_bytes: int = 0) -> bytes:
    """A valid multi-member gzip stream: the IDX file ``declared`` (its header and payload),
    then ``extra_mib`` MiB and ``extra_bytes`` bytes of zeros its header does not declare."""
    tail = gzip.compress(bytes(extra_bytes)) if extra_bytes else b""
    return gzip.compress(_idx_bytes(declared)) + _MEMBER * extra_mib + tail


def test_an_idx_bomb_is_refused_under_a_memory_cap(tmp_path):
    """A 2 MiB gzip file whose header declares 8 bytes but which inflates to 2 GiB, read in a
    subprocess whose address space is capped at 512 MiB above what it holds after importing
    (so a reader that inflated it all would fail there, not take the machine down)."""
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "bomb-idx3-ubyte.gz"
    path.write_bytes(_bomb(np.zeros((2, 2, 2), np.uint8), 2048))
    assert path.stat().st_size < 3 * 2**20
    header_only = tmp_path / "huge-header-idx3-ubyte.gz"  # promises 2^93 bytes in 40
    header_only.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + b"\x80\x00\x00\x00" * 3))
    child = textwrap.dedent(
        """
        import resource, sys
        import ppgen
        from ppgen.datasets import DataError, from_idx
        status = open("/proc/self/status").read().split("\\n")
        held = int(next(s for s in status if s.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (held + 512 * 2**20, resource.RLIM_INFINITY))
        for path in sys.argv[1:]:
            try:
                from_idx(path)
            except DataError as e:
                print("refused:", e)
            else:
                print("accepted")
        """
    )
    import os
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(ppgen.__file__).parent.parent)}  # this ppgen
    run = subprocess.run(
        [sys.executable, "-c", child, str(path), str(header_only)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 2, run.stdout
    assert lines[0].startswith(f"refused: {path}: inflates beyond the 24 bytes its header"), lines
    assert lines[1].startswith(f"refused: {header_only}: the header promises"), lines
    assert "more than a gzip file of" in lines[1]


def _peak_bytes(call) -> tuple[object, int]:
    import tracemalloc

    tracemalloc.start()
    try:
        try:
            result = call()
        except DataError as e:
            result = e
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_moderate_idx_bomb_is_refused_without_inflating_it(tmp_path):
    """In this process: 64 MiB of undeclared data is refused while Python allocates under
    1 MiB (tracemalloc sees the inflated buffers: reading it all would peak above 64 MiB)."""
    path = tmp_path / "bomb-idx3-ubyte.gz"
    path.write_bytes(_bomb(_gray(0, (3, 4, 5)), 64))
    error, peak = _peak_bytes(lambda: from_idx(path))
    assert isinstance(error, DataError) and "inflates beyond the 76 bytes" in str(error)
    assert str(path) in str(error) and "\n" not in str(error)
    assert peak < 2**20, peak


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6)),
    extra_mib=st.integers(0, 6),
    extra_bytes=st.sampled_from([0, 0, 1, 2, 1000, 123_457]),
    seed=st.integers(0, 2**16),
)
def test_gzip_idx_loads_exactly_when_it_inflates_to_its_header(
    tmp_path_factory, shape, extra_mib, extra_bytes, seed
):
    """Any undeclared inflated data (one byte to 6 MiB, in one or many gzip members) is
    refused, and memory stays bounded by the declared size, not the inflated one; a file that
    inflates to exactly its header's size loads bit for bit."""
    images = _gray(seed, shape)
    path = tmp_path_factory.mktemp("bomb") / "x-idx3-ubyte.gz"
    path.write_bytes(_bomb(images, extra_mib, extra_bytes))
    result, peak = _peak_bytes(lambda: from_idx(path))
    if extra_mib == 0 and extra_bytes == 0:
        assert torch.equal(result.data, torch.from_numpy(images).float().unsqueeze(1))
    else:
        assert isinstance(result, DataError) and "inflates beyond" in str(result), result
        assert peak < 2**20 + 40 * images.size, peak
