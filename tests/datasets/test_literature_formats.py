"""Data as the literature uses it: CIFAR-10 binary and python batches (the python version only
through the restricted unpickler), binarized MNIST (threshold, fixed, dynamic), and scoring a
saved model on another file of the same shape and levels."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ppgen
from ppgen.datasets import DataError
from ppgen.datasets.cifar import RestrictedUnpickler, read_cifar_python

ROOT = Path(__file__).resolve().parents[2]


def cifar_binary(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """A CIFAR-10 binary batch: per record 1 label byte, then 3072 pixel bytes (R, G, B)."""
    records = np.concatenate([labels[:, None].astype(np.uint8), images.reshape(len(images), -1)],
                             axis=1)
    path.write_bytes(records.tobytes())
    return path


def cifar_python(path: Path, images: np.ndarray, labels: np.ndarray, protocol: int = 2) -> Path:
    """A CIFAR-10 python batch: a pickled dict with bytes keys, as the real files hold."""
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": [int(v) for v in labels],
             b"data": images.reshape(len(images), -1), b"filenames": [b"x.png"] * len(labels)}
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return path


def random_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)


def test_cifar_binary_reads_records_in_channel_order(tmp_path):
    images, labels = random_images(12)
    f = cifar_binary(tmp_path / "data_batch_1.bin", images, labels)
    ds = ppgen.datasets.load(f, "all")
    assert ds.event_shape == (3, 32, 32) and ds.kind == "discrete" and ds.levels == 256
    assert torch.equal(ds.data, torch.from_numpy(images).float())
    assert ds.labels.tolist() == labels.tolist()
    # the 80/10/10 split of user data applies, and options are checked
    assert len(ppgen.datasets.load(f, "train")) + len(ppgen.datasets.load(f, "val")) + len(
        ppgen.datasets.load(f, "test")) == 12
    with pytest.raises(DataError, match="8-bit colour"):
        ppgen.datasets.load(f"{f}#kind=binary", "all")


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_python_batch_read_through_restricted_unpickler(tmp_path, protocol):
    images, labels = random_images(5, seed=protocol)
    f = cifar_python(tmp_path / "data_batch_1", images, labels, protocol)
    ds = ppgen.datasets.load(f, "all")
    assert torch.equal(ds.data, torch.from_numpy(images).float())
    assert ds.labels.tolist() == labels.tolist()


def test_cifar_folder_reads_every_training_batch(tmp_path):
    parts = [random_images(3, seed=s) for s in range(3)]
    for i, (x, y) in enumerate(parts, start=1):
        cifar_binary(tmp_path / f"data_batch_{i}.bin", x, y)
    cifar_binary(tmp_path / "test_batch.bin", *random_images(2, seed=9))
    ds = ppgen.datasets.load(tmp_path, "all")
    assert len(ds) == 9  # data_batch_1..3, not test_batch
    assert torch.equal(ds.data, torch.from_numpy(np.concatenate([p[0] for p in parts])).float())


@pytest.mark.parametrize(("size", "message"), [
    (3073 * 2 + 5, "not a whole number of CIFAR-10 records"),
    (0, "not a whole number"),
])
def test_cifar_binary_of_the_wrong_size_is_refused(tmp_path, size, message):
    f = tmp_path / "test_batch.bin"
    f.write_bytes(bytes(size))
    with pytest.raises(DataError, match=message):
        ppgen.datasets.load(f, "all")


def test_cifar_binary_label_outside_0_9_is_refused(tmp_path):
    images, labels = random_images(3)
    labels[1] = 57
    f = cifar_binary(tmp_path / "test_batch.bin", images, labels)
    with pytest.raises(DataError, match="record 1 has label byte 57"):
        ppgen.datasets.load(f, "all")


class _RunsCode:
    """Unpickling this calls os.system: it would write the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


class _Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("payload", [_RunsCode, _Exec])
@pytest.mark.parametrize("where", ["top", "inside"])
def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path, payload, where):
    """A batch file whose pickle calls os.system or exec (at the top or hidden inside the dict)
    is refused with a one-line DataError naming the global; the marker never appears."""
    marker = tmp_path / "marker"
    evil = payload(marker)
    obj = evil if where == "top" else {b"data": np.zeros((1, 3072), np.uint8), b"labels": [evil]}
    f = tmp_path / "data_batch_1"
    f.write_bytes(pickle.dumps(obj, protocol=2))
    pattern = r"refused global (posix|os|nt|builtins|__builtin__)\.(system|exec)"
    with pytest.raises(DataError, match=pattern):
        ppgen.datasets.load(f, "all")
    assert not marker.exists()


def test_array_stand_ins_refuse_other_dtypes_and_misuse(tmp_path):
    """The array stand-ins admit uint8 only: a float or object array is refused (an object
    array would unpickle arbitrary elements)."""
    f = tmp_path / "data_batch_1"
    for data in (np.zeros((2, 3072)), np.array([[None] * 3072] * 2, dtype=object)):
        f.write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1]}, protocol=2))
        with pytest.raises(DataError, match="not read as a CIFAR python batch"):
            ppgen.datasets.load(f, "all")
    # the stand-in _reconstruct on anything but the ndarray stand-in
    crafted = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\ndtype\nq\x01K\x00"
               b"\x85q\x02c_codecs\nencode\nq\x03X\x01\x00\x00\x00bq\x04X\x06\x00\x00\x00latin1"
               b"q\x05\x86q\x06Rq\x07\x87q\x08Rq\t.")
    f.write_bytes(crafted)
    with pytest.raises(DataError, match="_reconstruct of something other than an array"):
        ppgen.datasets.load(f, "all")


@settings(max_examples=40, deadline=None)
@given(value=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.binary()
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12,
), protocol=st.integers(0, 5))
def test_restricted_unpickler_round_trips_plain_data(value, protocol):
    """Every plain value (containers, bytes, str, numbers, None) comes back equal."""
    import io

    assert RestrictedUnpickler(io.BytesIO(pickle.dumps(value, protocol=protocol))).load() == value


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(["os.system", "subprocess.Popen", "builtins.eval",
                             "builtins.getattr", "numpy.load", "torch.load",
                             "numpy.core.multiarray.scalar", "pickle.loads"]))
def test_every_other_global_is_refused(tmp_path_factory, name):
    module, _, attr = name.rpartition(".")
    f = tmp_path_factory.mktemp("p") / "test_batch"
    f.write_bytes(b"\x80\x02c" + module.encode() + b"\n" + attr.encode() + b"\n.")
    with pytest.raises(DataError, match=f"refused global {name}"):
        read_cifar_python(f)


def idx_images(path: Path, images: np.ndarray) -> Path:
    n, h, w = images.shape
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">III", n, h, w) + images.tobytes())
    return path


def test_binarized_mnist_threshold_fixed_and_dynamic(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 6, 6), dtype=np.uint8)
    f = idx_images(tmp_path / "train-images-idx3-ubyte.gz", images)
    grey = torch.from_numpy(images).float().unsqueeze(1)
    threshold = ppgen.datasets.load(f"{f}#binarize=threshold", "all")
    assert torch.equal(threshold.data, (grey >= 128).float())
    assert torch.equal(threshold.data, ppgen.datasets.load(f"{f}#kind=binary", "all").data)
    fixed = ppgen.datasets.load(f"{f}#binarize=fixed", "all")
    assert fixed.kind == "binary" and fixed.binarize_probs is None
    assert torch.equal(fixed.data, ppgen.datasets.load(f"{f}#binarize=fixed", "all").data)
    assert not torch.equal(fixed.data, threshold.data)  # a Bernoulli draw, not a threshold
    # a fixed draw follows the intensities: black never 1, white always 1
    assert fixed.data[grey == 0].sum() == 0 and fixed.data[grey == 255].min() == 1
    dynamic = ppgen.datasets.load(f"{f}#binarize=dynamic", "train")
    assert torch.equal(dynamic.data, ppgen.datasets.load(f"{f}#binarize=fixed", "train").data)
    assert dynamic.binarize_probs.shape == dynamic.data.shape
    assert float(dynamic.binarize_probs.max()) <= 1.0
    for bad in ("binarize=sometimes", "binarize=dynamic,kind=discrete"):
        with pytest.raises(DataError, match="binarize takes one of threshold, fixed, dynamic"):
            ppgen.datasets.load(f"{f}#{bad}", "all")


def test_dynamic_binarization_redraws_every_batch(tmp_path, monkeypatch):
    """Training on #binarize=dynamic sees a fresh Bernoulli draw of the intensities each step
    (a function of seed and step), not the fixed draw."""
    rng = np.random.default_rng(1)
    images = np.full((40, 4, 4), 128, dtype=np.uint8) + rng.integers(0, 2, (40, 4, 4),
                                                                    dtype=np.uint8)
    f = idx_images(tmp_path / "t-images-idx3-ubyte.gz", images)
    data = ppgen.datasets.load(f"{f}#binarize=dynamic", "all")
    model = ppgen.build("independent", data)
    seen: list[torch.Tensor] = []
    original = type(model).log_prob

    def spy(self, x, *a, **k):
        if self.training:
            seen.append(x.detach().clone())
        return original(self, x, *a, **k)

    monkeypatch.setattr(type(model), "log_prob", spy)
    ppgen.fit(model, data, steps=3, batch_size=40, seed=0, progress=False)
    batches = [b for b in seen if b.shape[0] == 40]
    assert len(batches) >= 2
    assert not torch.equal(batches[0], batches[1])  # the same 40 points, redrawn
    assert not all(torch.equal(b, data.data) for b in batches)
    assert all(set(b.unique().tolist()) <= {0.0, 1.0} for b in batches)


def ppgen_cli(*args, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "ppgen", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def test_evaluate_scores_a_saved_model_on_another_file(tmp_path):
    """A model trained on one CIFAR binary file is scored on another of the same shape and
    levels (CIFAR binary, CIFAR python, .npy); data of another shape or levels is refused in
    one line naming both, before any scoring."""
    train = cifar_binary(tmp_path / "data_batch_1.bin", *random_images(30))
    run = tmp_path / "run"
    ppgen_cli("fit", "independent", "--data", train, "--steps", "2", "--out", run,
              "--no-progress", "--no-val")
    test_bin = cifar_binary(tmp_path / "test_batch.bin", *random_images(10, seed=5))
    test_py = cifar_python(tmp_path / "test_batch", *random_images(10, seed=5))
    scores = []
    for data in (test_bin, test_py):
        out = ppgen_cli("evaluate", run, "--data", data, "--split", "all").stdout
        assert "bits/dim" in out and "n=10" in out, out
        scores.append(out.split("bits/dim")[0].split(":")[-1])
    assert scores[0] == scores[1]  # the same images in both versions
    other = tmp_path / "other.npy"
    np.save(other, np.zeros((5, 1, 28, 28), np.uint8))
    binary = tmp_path / "bin.npy"
    np.save(binary, np.ones((5, 3, 32, 32), np.uint8))
    for data, fault in ((other, "another shape"), (f"{binary}#kind=binary", "another kind")):
        proc = ppgen_cli("evaluate", run, "--data", data, "--split", "all", check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert fault in proc.stderr and "trained on 3x32x32 discrete data with 256 levels" in (
            proc.stderr)
