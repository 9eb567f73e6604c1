"""``ppgen.datasets.load`` and ``ppgen fit --data`` read image folders and IDX files as well as
arrays, told apart by the path; splits are the documented fixed 80/10/10 permutation."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

import ppgen
from ppgen.datasets import DataError, from_idx, from_images
from ppgen.datasets.arrays import split_indices
from ppgen.datasets.images import is_idx_path


def _idx_bytes(array: np.ndarray) -> bytes:
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return bytes([0, 0, 8, array.ndim]) + dims + array.tobytes()


def _folder(root, n=20, shape=(5, 4), classes=None):
    rng = np.random.RandomState(0)
    root.mkdir(exist_ok=True)
    for i in range(n):
        sub = root if classes is None else root / f"c{i % classes}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.randint(0, 256, shape).astype(np.uint8)).save(sub / f"{i:03d}.png")
    return root


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("train-images-idx3-ubyte", True),
        ("train-images-idx3-ubyte.gz", True),
        ("t10k-labels.idx1-ubyte", True),
        ("pixels.idx", True),
        ("pixels.IDX3.gz#labels=y.idx1", True),
        ("pixels.npy", False),
        ("ubyte.csv", False),
        ("digits", False),
    ],
)
def test_idx_names(name, expected):
    assert is_idx_path(name) is expected, name


@pytest.mark.parametrize("split", ["train", "val", "test", "all"])
def test_load_image_folder_by_split(tmp_path, split):
    root = _folder(tmp_path / "imgs", classes=3)
    whole = from_images(root)
    ds = ppgen.datasets.load(root, split)
    idx = torch.from_numpy(split_indices(len(whole), split))
    assert ds.split == split and torch.equal(ds.data, whole.data[idx])
    assert torch.equal(ds.labels, whole.labels[idx])
    # the same through a string with options, binarized
    binary = ppgen.datasets.load(f"{root}#kind=binary", split)
    assert binary.kind == "binary" and torch.equal(binary.data, (whole.data[idx] >= 128).float())


def test_load_image_folder_options(tmp_path):
    root = _folder(tmp_path / "imgs", n=12)
    assert ppgen.datasets.load(f"{root}#size=3,grayscale=false", "all").event_shape == (3, 3, 3)
    assert ppgen.datasets.load(root, "all", levels=2).kind == "binary"
    bad = {
        f"{root}#key=x": "cannot read option 'key=x'",
        f"{root}#grayscale=maybe": "grayscale must be true or false",
        f"{root}#size=big": "size must be an integer",
    }
    for spec, match in bad.items():
        with pytest.raises(DataError, match=match):
            ppgen.datasets.load(spec, "all")
    with pytest.raises(DataError, match="256 levels"):
        ppgen.datasets.load(root, "all", kind="continuous")
    with pytest.raises(DataError, match="256 levels"):
        ppgen.datasets.load(root, "all", levels=17)
    with pytest.raises(DataError, match=".npz file only"):
        ppgen.datasets.load(root, "all", key="x")


@pytest.mark.parametrize("compressed", [False, True])
def test_load_idx_file_with_labels_by_split(tmp_path, compressed):
    rng = np.random.RandomState(1)
    images = rng.randint(0, 256, (30, 3, 4)).astype(np.uint8)
    labels = rng.randint(0, 10, 30).astype(np.uint8)
    wrap = gzip.compress if compressed else (lambda b: b)
    suffix = ".gz" if compressed else ""
    img_path = tmp_path / f"train-images-idx3-ubyte{suffix}"
    lab_path = tmp_path / f"train-labels-idx1-ubyte{suffix}"
    img_path.write_bytes(wrap(_idx_bytes(images)))
    lab_path.write_bytes(wrap(_idx_bytes(labels)))
    whole = from_idx(img_path, labels=lab_path)
    for split in ("train", "val", "test"):
        ds = ppgen.datasets.load(f"{img_path}#labels={lab_path}", split)
        idx = torch.from_numpy(split_indices(30, split))
        assert torch.equal(ds.data, whole.data[idx]) and torch.equal(ds.labels, whole.labels[idx])
    assert ppgen.datasets.load(img_path, "all").labels is None
    (tmp_path / "junk-ubyte").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk-ubyte: not an IDX file"):
        ppgen.datasets.load(tmp_path / "junk-ubyte", "all")


def test_unsupported_file_and_unknown_name_mention_every_source(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("1,2\n")
    for name in (str(other), "no-such-dataset"):
        with pytest.raises(DataError, match="IDX file") as info:
            ppgen.datasets.load(name)
        assert "PNG/JPEG" in str(info.value)


def test_cli_fits_on_an_image_folder_and_an_idx_file(tmp_path, capsys):
    from ppgen.cli import main

    root = _folder(tmp_path / "imgs", n=20, shape=(4, 4))
    images = np.random.RandomState(2).randint(0, 256, (20, 4, 4)).astype(np.uint8)
    idx = tmp_path / "x-idx3-ubyte"
    idx.write_bytes(_idx_bytes(images))
    for data in (str(root), f"{idx}#kind=binary"):
        run = tmp_path / f"run-{len(data)}"
        args = ["fit", "independent", "--data", data, "--steps", "2", "--batch-size", "8",
                "--out", str(run), "--no-progress", "--device", "cpu"]
        assert main(args) == 0, capsys.readouterr().err
        assert main(["evaluate", str(run), "--split", "test", "--device", "cpu"]) == 0
        model = ppgen.load(run / "checkpoint.pt")
        assert model.config.event_shape == (1, 4, 4)
    out = capsys.readouterr().out
    assert f"{idx}#kind=binary/test" in out
