"""The run directory as the trainer writes it (ppgen/inference/run_files.py), and the split of
drawing from training: the trainer never draws, its caller does (ppgen.fit, ppgen fit)."""

from __future__ import annotations

import pytest
import torch

import ppgen
from ppgen import checkpoint as ckpt
from ppgen.inference import trainer
from ppgen.inference.run_files import RunDirectory


@pytest.fixture(scope="module")
def train():
    return ppgen.datasets.load("digits", "train")


def _fit(fit, m, data, out, **kw):
    kw = {"steps": 10, "batch_size": 64, "lr": 0.05, "progress": False, "device": "cpu",
          "checkpoint_every": 5, **kw}
    return fit(m, data, out=out, **kw)


@pytest.fixture(scope="module")
def run(train, tmp_path_factory):
    """A finished 10-step run with checkpoints at steps 5 and 10 (checkpoint.prev.pt: step 5)."""
    out = tmp_path_factory.mktemp("run")
    _fit(ppgen.fit, ppgen.build("independent", train), train, out)
    return out


def test_the_trainer_never_draws_and_calls_back_at_each_record(train, tmp_path):
    """trainer.fit writes the records and no figure; on_checkpoint sees every history.json
    write (each checkpoint, then the end with final=True); ppgen.fit draws the curve."""
    calls = []
    _fit(trainer.fit, ppgen.build("independent", train), train, tmp_path / "t",
         on_checkpoint=lambda h, final: calls.append((h.steps, final)))
    names = {p.name for p in (tmp_path / "t").iterdir()}
    assert "training_curve.png" not in names
    assert {"config.json", "checkpoint.pt", "checkpoint.prev.pt", "history.json"} <= names
    assert calls == [(5, False), (10, False), (10, True)]
    seen = []
    _fit(ppgen.fit, ppgen.build("independent", train), train, tmp_path / "p",
         on_checkpoint=lambda h, final: seen.append(final))
    assert (tmp_path / "p" / "training_curve.png").stat().st_size > 0
    assert seen == [False, False, True], "the caller's callback still runs"


def _copy(run, tmp_path):
    out = tmp_path / "copy"
    out.mkdir()
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (out / name).write_bytes((run / name).read_bytes())
    return out


def _load_step(payload, path):
    return payload["step"]


def _set(d, **changes):
    d.update(changes)
    return d


# payloads whose checksum holds but whose structure does not, each message of another shape
# (one says "holds a", as the message of a checkpoint of another model does)
DAMAGE = {
    "a complex in the model config": lambda p: _set(p, model=_set(
        p["model"], config=_set(p["model"]["config"], levels=1j))),
    "a missing field": lambda p: {k: v for k, v in p.items() if k != "optimizers"},
    "a step of the wrong type": lambda p: _set(p, step="ten"),
    "a model payload, not a training one": lambda p: p["model"],
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_falls_back_past_any_damaged_checkpoint(run, tmp_path, capsys, damage):
    """Whatever the schema finds wrong, RunDirectory.resume skips the file for
    checkpoint.prev.pt and says why; only a checkpoint of another model stops it."""
    out = _copy(run, tmp_path)
    payload = DAMAGE[damage](ckpt.read_checkpoint(out / "checkpoint.pt"))
    ckpt.write_checkpoint(out / "checkpoint.pt", payload)
    model = ppgen.build("independent", ppgen.datasets.load("digits", "val"))
    assert RunDirectory(out).resume(model, _load_step) == 5
    err = capsys.readouterr().err
    assert "checkpoint.pt: field" in err and "resuming from checkpoint.prev.pt" in err, err


def test_resume_stops_at_a_checkpoint_of_another_model(run, tmp_path):
    out = _copy(run, tmp_path)
    other = ppgen.build("independent", ppgen.datasets.load("digits", "val"), components=2)
    with pytest.raises(ckpt.CheckpointError, match="config differs"):
        RunDirectory(out).resume(other, _load_step)


def test_resume_tries_the_next_checkpoint_when_load_refuses(run, tmp_path, capsys):
    """load raising CheckpointError (a state that does not fit) moves on to the next file;
    any other error stops the resume; nothing valid left is one error naming every reason."""
    out = _copy(run, tmp_path)
    model = ppgen.build("independent", ppgen.datasets.load("digits", "val"))

    def refuse_latest(payload, path):
        if path.name == "checkpoint.pt":
            raise ckpt.CheckpointError(f"{path}: does not fit this run (test)")
        return payload["step"]

    assert RunDirectory(out).resume(model, refuse_latest) == 5
    assert "does not fit this run (test); resuming from checkpoint.prev.pt" in (
        capsys.readouterr().err)

    def fail(payload, path):
        raise trainer.FitError("not a damaged file")

    with pytest.raises(trainer.FitError, match="not a damaged file"):
        RunDirectory(out).resume(model, fail)

    def refuse(payload, path):
        raise ckpt.CheckpointError(f"{path.name}: no")

    with pytest.raises(ckpt.CheckpointError, match="nothing to resume from.*checkpoint.pt: no; "
                                                   "checkpoint.prev.pt: no"):
        RunDirectory(out).resume(model, refuse)


def test_a_damaged_checkpoint_of_any_kind_resumes_exactly(run, train, tmp_path, capsys):
    """End to end: the fallback resumes where an uninterrupted run goes (a complex in the
    config used to stop the resume, its message holding the words "holds a")."""
    out = _copy(run, tmp_path)
    payload = ckpt.read_checkpoint(out / "checkpoint.pt")
    payload["model"]["config"]["levels"] = 1j
    ckpt.write_checkpoint(out / "checkpoint.pt", payload)
    resumed = ppgen.build("independent", train)
    hist = _fit(ppgen.fit, resumed, train, out, steps=10, resume=True)
    assert "resuming from checkpoint.prev.pt" in capsys.readouterr().err
    reference = ppgen.load(run / "checkpoint.pt")
    assert hist.steps == 10 and torch.equal(resumed.logits, reference.logits)
