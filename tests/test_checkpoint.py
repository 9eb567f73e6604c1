"""Checkpoints: exact round trip, atomic writes; damaged, foreign or unsafe files refused."""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ppgen
from ppgen import checkpoint as ckpt


@pytest.fixture
def model():
    ds = ppgen.datasets.load("digits", split="val")
    m = ppgen.build("independent", ds)
    with torch.no_grad():
        m.logits.normal_()
    return m, ds


def test_round_trip_is_exact(model, tmp_path):
    m, ds = model
    ppgen.save(m, tmp_path / "m.pt")
    m2 = ppgen.load(tmp_path / "m.pt")
    assert type(m2) is type(m) and m2.config == m.config
    assert torch.equal(m.log_prob(ds.data), m2.log_prob(ds.data))


def test_round_trip_keeps_the_dtype(model, tmp_path, dtype):
    m, ds = model
    m = m.to(dtype)
    ppgen.save(m, tmp_path / "m.pt")
    m2 = ppgen.load(tmp_path / "m.pt")
    assert m2.logits.dtype == dtype
    assert torch.equal(m.logits, m2.logits)


def test_corrupted_and_truncated_files_name_the_file(model, tmp_path):
    m, _ = model
    path = tmp_path / "m.pt"
    ppgen.save(m, path)
    blob = path.read_bytes()
    cases = {
        "truncated": blob[: len(blob) // 2],
        "flipped": blob[:-100] + bytes([blob[-100] ^ 0xFF]) + blob[-99:],
        "empty": b"",
        "foreign": b"\x80\x04garbage",
    }
    for name, data in cases.items():
        bad = tmp_path / f"{name}.pt"
        bad.write_bytes(data)
        with pytest.raises(ckpt.CheckpointError, match=str(bad).replace(".", r"\.")):
            ppgen.load(bad)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_with_code_is_refused_even_with_a_valid_header(tmp_path):
    # A file an attacker built with ppgen's own header and checksum: weights_only must refuse it.
    import hashlib
    import struct

    buffer = io.BytesIO()
    torch.save(
        {"format": 1, "family": "independent", "evil": _Evil()},
        buffer,
        pickle_protocol=pickle.HIGHEST_PROTOCOL,
    )
    data = buffer.getvalue()
    blob = ckpt.MAGIC + hashlib.sha256(data).digest() + struct.pack("<Q", len(data)) + data
    path = tmp_path / "evil.pt"
    path.write_bytes(blob)
    with pytest.raises(ckpt.CheckpointError, match="refused"):
        ppgen.load(path)


def test_mismatched_checkpoint_names_first_differing_key(model, tmp_path):
    m, _ = model
    ppgen.save(m, tmp_path / "m.pt")
    other = ppgen.build("independent", ppgen.datasets.load("digits-binary", split="val"))
    with pytest.raises(ckpt.CheckpointError, match="'kind'"):
        ckpt.load_into(other, tmp_path / "m.pt")


def test_failed_write_leaves_previous_file_whole(model, tmp_path, monkeypatch):
    m, ds = model
    path = tmp_path / "m.pt"
    ppgen.save(m, path)
    before = path.read_bytes()
    with torch.no_grad():
        m.logits.add_(1.0)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        ppgen.save(m, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"], "temporary file left behind"


# ---- the atomic writer: what it may replace, and the mode of what it writes ----


@pytest.mark.parametrize("kind", ["fifo", "socket", "directory", "link-to-fifo", "link-to-device"])
def test_atomic_writer_refuses_a_target_that_is_not_a_regular_file(tmp_path, kind):
    import socket
    import stat

    target = tmp_path / "checkpoint.pt"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(target))
        s.close()
    elif kind == "directory":
        target.mkdir()
    elif kind == "link-to-fifo":
        os.mkfifo(tmp_path / "fifo")
        target.symlink_to(tmp_path / "fifo")
    else:
        target.symlink_to(os.devnull)
    before = sorted(p.name for p in tmp_path.iterdir())
    mode = os.lstat(target).st_mode
    with pytest.raises(ckpt.CheckpointWriteError, match=r"checkpoint\.pt: it exists and is a"):
        ckpt.write_atomic(target, b"data", "checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was written"
    assert os.lstat(target).st_mode == mode
    assert not stat.S_ISREG(os.stat(target).st_mode)


def test_atomic_writer_replaces_a_regular_file_and_a_symlink_to_one(tmp_path):
    (tmp_path / "a").write_bytes(b"old")
    ckpt.write_atomic(tmp_path / "a", b"new")
    assert (tmp_path / "a").read_bytes() == b"new"
    (tmp_path / "real").write_bytes(b"old")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    ckpt.write_atomic(tmp_path / "link", b"new")
    assert (tmp_path / "link").read_bytes() == b"new"
    ckpt.write_atomic(tmp_path / "dangling", b"x")  # a missing target is a new file
    assert (tmp_path / "dangling").read_bytes() == b"x"


_UMASK_PROBE = """
import os, stat, sys
from ppgen import checkpoint as ckpt
umask, d = int(sys.argv[1], 8), sys.argv[2]
os.umask(umask)
ckpt.write_atomic(os.path.join(d, "new"), b"x")
with open(os.path.join(d, "by_open"), "wb") as f:
    f.write(b"x")
with open(os.path.join(d, "kept"), "wb") as f:
    f.write(b"x")
os.chmod(os.path.join(d, "kept"), 0o640)
ckpt.write_atomic(os.path.join(d, "kept"), b"y")
names = ("new", "by_open", "kept")
print(*(oct(stat.S_IMODE(os.stat(os.path.join(d, n)).st_mode)) for n in names))
"""


@settings(max_examples=8, deadline=None)
@given(umask=st.sampled_from([0o022, 0o077, 0o002, 0o000, 0o027, 0o137]))
def test_atomic_writer_gives_the_mode_open_would(umask):
    # in a subprocess: the umask is process-wide, and this test must not change pytest's
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            [sys.executable, "-c", _UMASK_PROBE, oct(umask), d],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    new, by_open, kept = (int(x, 8) for x in out)
    assert new == by_open == 0o666 & ~umask
    assert kept == 0o640, "a replaced file keeps its mode, as open() would"


# ---- error texts ----


def _with_header(data: bytes, tmp_path) -> os.PathLike:
    import hashlib
    import struct

    path = tmp_path / "m.pt"
    path.write_bytes(
        ckpt.MAGIC + hashlib.sha256(data).digest() + struct.pack("<Q", len(data)) + data
    )
    return path


def test_a_pickle_naming_a_class_says_which_and_that_it_is_not_plain_data(tmp_path):
    buffer = io.BytesIO()
    torch.save({"format": 1, "evil": _Evil()}, buffer)
    with pytest.raises(ckpt.CheckpointError) as e:
        ppgen.load(_with_header(buffer.getvalue(), tmp_path))
    message = str(e.value)
    assert "refused" in message and "system" in message and "not plain data" in message
    assert "\n" not in message


def test_a_malformed_tensor_says_what_is_wrong_with_it(tmp_path):
    import zipfile

    buffer = io.BytesIO()
    torch.save({"format": 1, "t": torch.zeros(10)}, buffer)
    src = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("data.pkl"):  # the tensor claims 100 elements of a 10-element storage
                data = data.replace(b"K\x00K\n\x85", b"K\x00Kd\x85")
            z.writestr(name, data)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.read_checkpoint(_with_header(out.getvalue(), tmp_path))
    message = str(e.value)
    assert "malformed payload" in message and "beyond its storage" in message
    assert "could run code" not in message and "\n" not in message


def test_plain_but_unexpected_objects_name_their_type_and_field(model, tmp_path):
    m, _ = model
    payload = ckpt.model_payload(m)
    payload["config"]["levels"] = 1 + 2j
    ckpt.write_checkpoint(tmp_path / "m.pt", payload)
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"field 'config.levels' holds a complex, which is not plain data",
    ):
        ppgen.load(tmp_path / "m.pt")
