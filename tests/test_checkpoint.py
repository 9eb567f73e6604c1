"""Checkpoints: exact round trip, atomic writes; damaged, foreign or unsafe files refused."""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch

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
