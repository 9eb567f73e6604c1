"""The shared trainer: exact resume, non-finite guard, signals, lock, EMA, validation."""

from __future__ import annotations

import json
import math
import os
import signal
import threading

import pytest
import torch

import ppgen
from ppgen.inference import trainer
from ppgen.inference.run_files import RunDirectory
from tests.families import small_hparams


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
    # the handler found before the fit (not necessarily Python's default: a shell's background
    # job starts with SIGINT ignored) is the one the fit must put back
    before = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(trainer.TrainingInterrupted) as info:
        _fit(m, train, tmp_path, steps=10**7, checkpoint_every=10**6)
    timer.cancel()
    assert info.value.exit_code == 130
    kept = ppgen.load(tmp_path / "checkpoint.pt")
    assert torch.equal(kept.logits, m.logits)
    assert signal.getsignal(signal.SIGINT) is before, "handler restored"


def test_second_fit_on_same_directory_is_refused(digits, tmp_path):
    train, _ = digits
    m = ppgen.build("independent", train)
    with RunDirectory(tmp_path).lock(), pytest.raises(trainer.FitError, match="in use"):
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


# ---- opt-in precision and compilation: results unchanged beyond a stated tolerance -----------

# a few families with networks of each kind (masked MLP, conv coupling flow, Pyro ELBO, U-Net)
PRECISION_FAMILIES = {
    "made": {"hidden": [32]},
    "realnvp": {"hidden": [32], "transforms": 2},
    "vae": {"hidden": [32], "latent": 2},
    "ddpm": {"hidden": [16], "timesteps": 10},
}
BF16_UNIT_ROUNDOFF = 2.0**-8  # bfloat16 keeps 8 significant bits: round-to-nearest error <= 2^-8


def _validation_loss(m, x):
    """The objective's validation loss in float32, on a fixed random stream."""
    obj = ppgen.inference.make_objective(m.default_objective, m)
    m.eval()
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(1)
        return float(obj.validation_loss(m, x, None))


@pytest.mark.parametrize("family", PRECISION_FAMILIES)
def test_bf16_autocast_changes_results_only_at_bf16_precision(family, digits):
    """Tolerance: autocast rounds the networks' inputs and weights to bfloat16 (unit roundoff
    u = 2^-8), so (1) the loss at the same parameters moves by O(u) relative, and (2) every
    gradient, hence every scale-invariant Adam step, moves by O(u) relative, so the loss
    decrease over N steps agrees to O(u) of itself. We allow 4u for accumulation over layers."""
    train, val = digits
    train, x_val = train.subset(256), val.data[:128]
    hp = PRECISION_FAMILIES[family]
    tol = 4 * BF16_UNIT_ROUNDOFF

    torch.manual_seed(0)
    m = ppgen.build(family, train, **hp).train()
    obj = ppgen.inference.make_objective(m.default_objective, m)
    losses = []
    for bf16 in (False, True):
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(3)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                losses.append(float(obj.loss(m, train.data[:64], None, "model", 0)))
    assert losses[1] == pytest.approx(losses[0], rel=tol), family

    start = _validation_loss(m, x_val)
    trained = {}
    for precision in ("float32", "bf16"):
        torch.manual_seed(0)
        m = ppgen.build(family, train, **hp)
        hist = _fit(m, train, steps=30, batch_size=32, lr=1e-3, log_every=1, precision=precision)
        trained[precision] = (_validation_loss(m, x_val), hist.loss)
        assert next(m.parameters()).dtype == torch.float32, "parameters stay float32"
    (fp32, fp32_curve), (bf16, bf16_curve) = trained["float32"], trained["bf16"]
    assert fp32_curve != bf16_curve, f"{family}: precision='bf16' must reach the loss"
    assert fp32 < start, f"{family}: 30 steps must improve the validation loss"
    assert abs(bf16 - fp32) <= tol * (start - fp32), (family, start, fp32, bf16)


_GRAPHS: list[int] = []


def _counting_backend(gm, example_inputs):
    """A torch.compile backend that records each captured graph and runs it as traced."""
    _GRAPHS.append(len(gm.graph.nodes))
    return gm.forward


torch._dynamo.register_backend(name="ppgen_test_counting")(_counting_backend)


# one family per kind of network in the default run (masked MLPs, nn.Sequential MLPs, a
# denoiser, a discriminator held by the objective); dynamo's tracing costs seconds per family,
# so the other families run in the slow pass
_COMPILE_DEFAULT = ("made", "vae", "ddpm", "gan")


@pytest.mark.parametrize("family", [
    f if f in _COMPILE_DEFAULT else pytest.param(f, marks=pytest.mark.slow)
    for f in ppgen.models.names()
])
def test_compile_reaches_every_network_and_changes_nothing(digits, family):
    """compile= is wired for every family: each network (a direct submodule of the model or
    objective, e.g. the VAE's nn.Sequential MLPs, which nn.Module.compile leaves eager) is
    traced by dynamo, with validation's other batch shapes too; running the traced graphs
    gives the eager parameters (same ops: 1e-5 leaves room for nothing but reordering)."""
    train, val = digits
    train, val = train.subset(64), val.subset(40)
    hp = small_hparams(family)
    params = []
    for backend in (False, "ppgen_test_counting"):
        torch.manual_seed(0)
        m = ppgen.build(family, train, **hp)
        # a fresh dynamo cache: code objects compiled by earlier tests in this process
        # (up to dynamo's recompile limit) would otherwise run without calling the backend
        torch._dynamo.reset()
        _GRAPHS.clear()
        _fit(m, train, steps=3, batch_size=16, lr=1e-3, val=val, compile=backend)
        params.append(dict(m.named_parameters()))
    networks = list(m.children())
    assert (len(_GRAPHS) > 0) == (len(networks) > 0), (family, len(_GRAPHS))
    for k, v in params[0].items():
        assert torch.allclose(v, params[1][k], rtol=0, atol=1e-5), f"{family}: {k}"


@pytest.mark.parametrize(
    "family", ["made", pytest.param("vae", marks=pytest.mark.slow),
               pytest.param("realnvp", marks=pytest.mark.slow),
               pytest.param("ddpm", marks=pytest.mark.slow)]
)
def test_inductor_compile_gives_the_eager_parameters(family, digits):
    """torch.compile's default backend (inductor: generated C++ on CPU) after 5 steps equals
    eager to 1e-5: fusion reorders float32 sums (relative error ~1e-7 per reduction), and with
    lr=1e-3 five Adam steps cannot grow that near 1e-5; random numbers (MADE's dropout, flows'
    dequantization) stay eager's (fallback_random), so the draws are the same."""
    train, _ = digits
    train = train.subset(64)
    params = []
    for compile in (False, True):
        torch.manual_seed(0)
        m = ppgen.build(family, train, **PRECISION_FAMILIES[family])
        _fit(m, train, steps=5, batch_size=16, lr=1e-3, compile=compile)
        params.append(dict(m.named_parameters()))
    for k, v in params[0].items():
        assert torch.allclose(v, params[1][k], rtol=0, atol=1e-5), f"{family}: {k}"


def test_grad_norm_without_clip_leaves_gradients_alone():
    """Without clip_grad the trainer only measures the norm (for the non-finite check); with it,
    gradients are clipped as clip_grad_norm_ does."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3, generator=g)) for _ in range(3)]
    params.append(torch.nn.Parameter(torch.randn(2)))  # no gradient: skipped
    for p in params[:3]:
        p.grad = 10 * torch.randn(p.shape, generator=g)
    grads = [p.grad.clone() for p in params[:3]]
    expected = torch.linalg.vector_norm(torch.cat([x.flatten() for x in grads]))
    norm = trainer._grad_norm(params, None)
    assert torch.allclose(norm, expected)
    assert all(torch.equal(p.grad, x) for p, x in zip(params[:3], grads, strict=True))
    norm = trainer._grad_norm(params, 1.0)
    assert torch.allclose(norm, expected)
    clipped = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params[:3]]))
    assert torch.allclose(clipped, torch.tensor(1.0), atol=1e-5)
    params[0].grad[0, 0] = math.nan
    assert not torch.isfinite(trainer._grad_norm(params, None))


# ---- the best weights, run directories that are never replaced by accident, resume ------------


def _val_loss(m, val):
    return -m.log_prob(val.data).double().mean().item()


@pytest.mark.parametrize("ema", [None, 0.9])
def test_fit_with_validation_returns_the_best_weights(digits, tmp_path, ema):
    """With val= the default stops early and leaves the best-validation weights, in memory and
    in best.pt (EMA-aware: the averaged weights that were validated); patience=None keeps the
    last weights. lr=1.0 makes independent categoricals overshoot, so best != last."""
    train, val = digits
    m = ppgen.build("independent", train)
    hist = _fit(m, train, tmp_path / "a", steps=400, val=val, eval_every=5, lr=1.0, ema=ema)
    assert hist.stopped_early and hist.restored_best and hist.best_step < hist.steps
    assert _val_loss(m, val) == pytest.approx(hist.best_val, rel=1e-5)
    best = ppgen.load(tmp_path / "a" / "best.pt")
    assert all(torch.equal(a, b) for a, b in
               zip(m.state_dict().values(), best.state_dict().values(), strict=True))
    assert f"best weights from step {hist.best_step}" in hist.summary()
    # in memory only (no run directory): the same weights
    mem = ppgen.build("independent", train)
    hist_mem = _fit(mem, train, steps=400, val=val, eval_every=5, lr=1.0, ema=ema)
    assert hist_mem.best_step == hist.best_step and torch.equal(mem.logits, m.logits)
    # patience=None: every step, the last weights
    last = ppgen.build("independent", train)
    hist_last = _fit(last, train, steps=hist.steps, val=val, eval_every=5, lr=1.0, ema=ema,
                     patience=None)
    assert not hist_last.stopped_early and not hist_last.restored_best
    assert _val_loss(last, val) == pytest.approx(hist_last.val[-1]["val_loss"], rel=1e-5)
    assert _val_loss(last, val) > hist_last.best_val


def test_patience_is_validated(digits):
    train, val = digits
    m = ppgen.build("independent", train)
    for bad in (0, -1, 2.5, True, "soon"):
        with pytest.raises(trainer.FitError, match="patience"):
            _fit(m, train, val=val, patience=bad)


def test_resuming_a_run_that_stopped_early_trains_nothing_and_keeps_the_best(
    digits, tmp_path, capsys
):
    train, val = digits
    m = ppgen.build("independent", train)
    hist = _fit(m, train, tmp_path, steps=400, val=val, eval_every=5, lr=1.0)
    assert hist.stopped_early
    again = ppgen.build("independent", train)
    hist2 = _fit(again, train, tmp_path, steps=400, val=val, eval_every=5, lr=1.0, resume=True)
    assert "already stopped early" in capsys.readouterr().err
    assert hist2.steps == hist.steps and hist2.restored_best  # the best, read from best.pt
    assert torch.equal(again.logits, m.logits)


@pytest.mark.parametrize("name", ["config.json", "checkpoint.pt", "checkpoint.prev.pt", "best.pt"])
def test_a_fit_never_replaces_a_run_unless_asked(digits, tmp_path, name):
    """Any record of a run in out= refuses a fit without resume, naming it, before any work;
    overwrite=True replaces the run, and no file of the old one survives to pass for the new."""
    train, val = digits
    first = ppgen.build("independent", train)
    _fit(first, train, tmp_path, steps=5, val=val)
    for other in ("config.json", "checkpoint.pt", "checkpoint.prev.pt", "best.pt",
                  "history.json", "training_curve.png"):
        if other != name and other != "history.json":
            (tmp_path / other).unlink(missing_ok=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    m = ppgen.build("independent", train)
    weights = m.logits.detach().clone()
    with pytest.raises(trainer.RunExistsError, match=f"{name}.*overwrite=True"):
        _fit(m, train, tmp_path, steps=5)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert torch.equal(m.logits, weights), "refused before any work"
    _fit(m, train, tmp_path, steps=5, overwrite=True)  # without val: no best.pt may be left
    assert not (tmp_path / "best.pt").exists()
    assert json.loads((tmp_path / "history.json").read_text())["val"] == []
    with pytest.raises(trainer.FitError, match="overwrite"):
        _fit(m, train, tmp_path, steps=5, resume=True, overwrite=True)


@pytest.mark.parametrize("left", [[], ["config.json"], ["config.json", ".lock",
                                                        ".config.json.ab12.tmp"]])
def test_resume_without_a_checkpoint_starts_from_scratch(digits, tmp_path, capsys, left):
    """A run killed before its first checkpoint (or a new directory): resume=True starts from
    scratch, says so in one line, and gives the fresh run's weights to the bit."""
    train, _ = digits
    fresh = ppgen.build("independent", train)
    _fit(fresh, train, tmp_path / "fresh", steps=10)
    out = tmp_path / "run"
    if left:
        out.mkdir()
        for n in left:
            (out / n).write_text("{}")
    m = ppgen.build("independent", train)
    hist = _fit(m, train, out, steps=10, resume=True)
    err = capsys.readouterr().err
    assert "no checkpoint yet; starting from scratch" in err and len(err.splitlines()) == 1
    assert hist.steps == 10 and torch.equal(m.logits, fresh.logits)
    assert not list(out.glob("*.tmp"))


def test_resume_refuses_a_directory_that_is_not_a_run(digits, tmp_path):
    train, _ = digits
    (tmp_path / "thesis.tex").write_text("mine")
    m = ppgen.build("independent", train)
    with pytest.raises(trainer.RunExistsError, match="thesis.tex"):
        _fit(m, train, tmp_path, steps=3, resume=True)
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def _break(payload, field, how):
    """Remove ``field`` (dotted) from a checkpoint payload, or give it a value of another type."""
    *parents, last = field.split(".")
    d = payload
    for k in parents:
        d = d[k]
    if how == "missing":
        del d[last]
    else:
        d[last] = "not this" if not isinstance(d[last], str) else 3


BROKEN_FIELDS = ["model", "model.state_dict", "model.config", "model.family", "step", "history",
                 "optimizers", "objective", "objective.state_dict", "rng_streams", "ema_decay",
                 "raw_state_dict"]


@pytest.fixture(scope="module")
def uninterrupted_12(digits, tmp_path_factory):
    m = ppgen.build("independent", digits[0])
    _fit(m, digits[0], tmp_path_factory.mktemp("whole"), steps=12, checkpoint_every=5)
    return m


@pytest.mark.parametrize("how", ["missing", "wrong type"])
@pytest.mark.parametrize("field", BROKEN_FIELDS)
def test_resume_falls_back_on_a_checkpoint_of_the_wrong_structure(
    digits, tmp_path, capsys, uninterrupted_12, field, how
):
    """A checkpoint whose checksum holds but whose structure does not (a field missing or of
    another type) is skipped for checkpoint.prev.pt, saying which file and field; the resumed
    run ends where an uninterrupted one does."""
    from ppgen import checkpoint as ckpt

    train, _ = digits
    m = ppgen.build("independent", train)
    _fit(m, train, tmp_path, steps=10, checkpoint_every=5)
    payload = ckpt.read_checkpoint(tmp_path / "checkpoint.pt")
    if field == "rng_streams" and how == "missing":
        del payload["rng"]  # both places the random streams are read from
    _break(payload, field, how)
    ckpt.write_checkpoint(tmp_path / "checkpoint.pt", payload)
    resumed = ppgen.build("independent", train)
    hist = _fit(resumed, train, tmp_path, steps=12, checkpoint_every=5, resume=True)
    err = capsys.readouterr().err
    assert "checkpoint.pt" in err and "resuming from checkpoint.prev.pt" in err, err
    # with both stream records gone, the checkpoint schema names the first it reads ('rng')
    named = ("'rng'", "'rng_streams'") if field == "rng_streams" and how == "missing" else (
        repr(field),)
    assert any(n in err for n in named), err
    assert hist.steps == 12
    assert torch.equal(resumed.logits, uninterrupted_12.logits)


def test_resume_with_every_checkpoint_invalid_is_a_clear_error(digits, tmp_path):
    from ppgen import checkpoint as ckpt

    train, _ = digits
    m = ppgen.build("independent", train)
    _fit(m, train, tmp_path, steps=10, checkpoint_every=5)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        payload = ckpt.read_checkpoint(tmp_path / name)
        del payload["optimizers"]
        ckpt.write_checkpoint(tmp_path / name, payload)
    with pytest.raises(ckpt.CheckpointError, match="nothing to resume from.*optimizers"):
        _fit(ppgen.build("independent", train), train, tmp_path, steps=12, resume=True)


def test_optimizer_state_that_does_not_fit_falls_back(digits, tmp_path, capsys):
    """A structurally complete checkpoint whose states do not fit the run (an optimizer state
    of other shapes) is undone and skipped like a damaged one."""
    from ppgen import checkpoint as ckpt

    train, _ = digits
    m = ppgen.build("independent", train)
    _fit(m, train, tmp_path, steps=10, checkpoint_every=5)
    payload = ckpt.read_checkpoint(tmp_path / "checkpoint.pt")
    (group,) = payload["optimizers"]
    payload["optimizers"][group]["param_groups"].append(
        dict(payload["optimizers"][group]["param_groups"][0]))
    ckpt.write_checkpoint(tmp_path / "checkpoint.pt", payload)
    hist = _fit(ppgen.build("independent", train), train, tmp_path, steps=12, resume=True)
    assert "resuming from checkpoint.prev.pt" in capsys.readouterr().err
    assert hist.steps == 12


def test_an_interrupted_run_has_every_record(digits, tmp_path):
    """config.json (with run_info) is written at the start, history.json and the training curve
    with every checkpoint: a run stopped by a signal holds all of them."""
    train, val = digits
    m = ppgen.build("independent", train)
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    with pytest.raises(trainer.TrainingInterrupted) as info:
        _fit(m, train, tmp_path, steps=10**7, val=val, eval_every=10**6,
             checkpoint_every=10**6, log_every=1, run_info={"data": "digits"})
    timer.cancel()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["data"] == "digits" and config["family"] == "independent"
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["steps"] == info.value.step > 0
    assert (tmp_path / "training_curve.png").stat().st_size > 0
    with pytest.raises(trainer.FitError, match="run_info"):
        _fit(m, train, tmp_path / "x", run_info={"data": object()})
