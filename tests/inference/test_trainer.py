"""The shared trainer: exact resume, non-finite guard, signals, lock, EMA, validation."""

from __future__ import annotations

import math
import os
import signal
import threading

import pytest
import torch

import ppgen
from ppgen.inference import trainer


@pytest.fixture(scope="module")
def digits():
    return ppgen.datasets.load("digits", "train"), ppgen.datasets.load("digits", "val")


def _fit(m, data, out=None, **kw):
    kw = {"steps": 30, "batch_size": 64, "lr": 0.05, "progress": False, "device": "cpu", **kw}
    return ppgen.fit(m, data, out=out, **kw)


def test_resume_is_exact(digits, tmp_path):
    train, val = digits
    full = ppgen.build("independent", train)
    _fit(full, train, tmp_path / "full", steps=40, val=val, ema=0.9, eval_every=10)
    half = ppgen.build("independent", train)
    _fit(half, train, tmp_path / "half", steps=20, val=val, ema=0.9, eval_every=10)
    resumed = ppgen.build("independent", train)
    hist = _fit(
        resumed, train, tmp_path / "half", steps=40, val=val, ema=0.9, eval_every=10, resume=True
    )
    assert hist.steps == 40
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_batches_are_a_function_of_seed_and_step():
    a = trainer.batch_indices(100, 32, seed=3, step=7)
    b = trainer.batch_indices(100, 32, seed=3, step=7)
    assert torch.equal(a, b)
    epoch = torch.cat([trainer.batch_indices(96, 32, 0, s) for s in range(3)])
    assert sorted(epoch.tolist()) == list(range(96)), "an epoch visits every example once"


def test_fit_improves_toward_the_closed_form_optimum(digits):
    train, _ = digits
    m = ppgen.build("independent", train)
    _fit(m, train, steps=300, batch_size=1200, lr=0.1)
    # The MLE of independent categoricals is the empirical frequency (Laplace-free).
    x = train.data.reshape(len(train), -1).long()
    counts = torch.nn.functional.one_hot(x, 17).sum(0).double()  # (D, 17)
    p = counts / counts.sum(-1, keepdim=True)
    optimum = (counts * torch.log(p.clamp_min(1e-300))).sum() / len(train)
    achieved = m.log_prob(train.data).double().mean()
    assert achieved <= optimum + 1e-6, "nothing may beat the maximum likelihood"
    assert optimum - achieved < 0.5, (
        f"gap {optimum - achieved:.3f} nats after 300 full-batch steps"
    )


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(digits, tmp_path, monkeypatch):
    train, _ = digits
    m = ppgen.build("independent", train)
    _fit(m, train, tmp_path, steps=10, checkpoint_every=5)
    good = ppgen.load(tmp_path / "checkpoint.pt")
    original = type(m).log_prob
    calls = {"n": 0}

    def flaky(self, x, context=None):
        calls["n"] += 1
        out = original(self, x, context)
        return out * math.nan if calls["n"] == 3 else out

    monkeypatch.setattr(type(m), "log_prob", flaky)
    with pytest.raises(trainer.NonFiniteLossError, match="step 12"):
        _fit(m, train, tmp_path, steps=20, checkpoint_every=1, resume=True)
    kept = ppgen.load(tmp_path / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in kept.state_dict().values())
    assert not torch.equal(kept.logits, good.logits), "progress before the NaN was checkpointed"


def test_skip_mode_skips_non_finite_steps(digits, monkeypatch):
    train, _ = digits
    m = ppgen.build("independent", train)
    original = type(m).log_prob
    calls = {"n": 0}

    def flaky(self, x, context=None):
        calls["n"] += 1
        out = original(self, x, context)
        return out * math.nan if calls["n"] % 4 == 0 else out

    monkeypatch.setattr(type(m), "log_prob", flaky)
    hist = _fit(m, train, steps=20, on_nonfinite="skip")
    assert hist.skipped_steps == 5
    assert torch.isfinite(m.logits).all()


def test_sigint_saves_a_checkpoint_and_raises(digits, tmp_path):
    train, _ = digits
    m = ppgen.build("independent", train)
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(trainer.TrainingInterrupted) as info:
        _fit(m, train, tmp_path, steps=10**7, checkpoint_every=10**6)
    timer.cancel()
    assert info.value.exit_code == 130
    kept = ppgen.load(tmp_path / "checkpoint.pt")
    assert torch.equal(kept.logits, m.logits)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "handler restored"


def test_second_fit_on_same_directory_is_refused(digits, tmp_path):
    train, _ = digits
    m = ppgen.build("independent", train)
    with trainer._run_lock(tmp_path), pytest.raises(trainer.FitError, match="in use"):
        _fit(m, train, tmp_path, steps=2)


def test_validation_writes_best_and_early_stops(digits, tmp_path):
    train, val = digits
    m = ppgen.build("independent", train)
    hist = _fit(m, train, tmp_path, steps=400, val=val, eval_every=5, patience=2, lr=1.0)
    assert (tmp_path / "best.pt").exists() and hist.best_step is not None
    assert hist.steps < 400, "early stopping with lr=1.0 should trigger"
    best = ppgen.load(tmp_path / "best.pt")
    val_loss = -best.log_prob(val.data).double().mean().item()
    assert val_loss == pytest.approx(hist.best_val, rel=1e-5)


def test_bad_data_is_refused_before_work(digits):
    train, _ = digits
    m = ppgen.build("independent", train)
    before = m.logits.detach().clone()
    bad = train.data.clone()
    bad[0, 0, 0, 0] = 17  # outside 17 levels
    with pytest.raises(ValueError, match="0..16"):
        _fit(m, bad)
    with pytest.raises(ValueError, match="shape"):
        _fit(m, train.data.reshape(len(train), -1))
    with pytest.raises(ValueError, match="non-finite"):
        _fit(m, train.data * math.nan)
    with pytest.raises(ValueError, match="empty"):
        _fit(m, train.data[:0])
    assert torch.equal(m.logits, before)
