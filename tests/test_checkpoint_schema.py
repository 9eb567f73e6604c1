"""Checkpoint structure: a file with a valid checksum but the wrong structure is refused with a
CheckpointError naming the file and the field, never a KeyError/TypeError from a reader.

Each property takes a valid payload (a real training checkpoint written by ``fit``, a model
file of ``save``, a feature-network cache), mutates one random field (deletes it, puts a value
of another type there, a value of a type no field holds, a negative number), writes it with a
valid checksum, and reads it back the way ppgen does. The expected outcomes are this file's own
spec, written without the schema's code:

- a mutation that breaks what a reader needs is refused naming the field (or a field above it);
- any mutation at all: reading, checking against the live objects, and then *using* the payload
  as a resume does (load the weights and optimizer state, restore the RNG streams and history,
  take an optimizer step) raises nothing but CheckpointError.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ppgen
from ppgen import checkpoint as ckpt
from ppgen.inference import trainer
from ppgen.inference.objectives import make_objective

# ---- valid payloads ----


@pytest.fixture(scope="module")
def training_payloads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Real training checkpoints: plain, and with EMA and two random streams."""
    ds = ppgen.datasets.load("digits", split="val")
    out = {}
    for name, kwargs in {"plain": {}, "ema": {"ema": 0.9, "accumulate": 2}}.items():
        d = tmp_path_factory.mktemp(name)
        ppgen.fit(ppgen.build("independent", ds), ds, steps=3, batch_size=16, out=d,
                  progress=False, val=ds, **kwargs)  # fmt: skip
        out[name] = ckpt.read_checkpoint(d / "checkpoint.pt", kind="training")
    return out


@pytest.fixture(scope="module")
def model_payload() -> dict[str, Any]:
    ds = ppgen.datasets.load("digits", split="val")
    return ckpt.model_payload(ppgen.build("independent", ds))


FEATURES = {
    "format": 1,
    "kind": "ppgen-digits-features",
    "version": 1,
    "binary": False,
    "accuracy": {"val_accuracy": 0.97, "train_accuracy": 0.99},
    "state_dict": {"net.0.weight": torch.ones(3, 2), "net.0.bias": torch.zeros(3)},
}


# ---- paths and mutations (this file's own spec) ----

Path_ = tuple[Any, ...]


def fmt(path: Path_) -> str:
    """A field path as the messages write it: ``optimizers.model.state[0].exp_avg``,
    ``model.state_dict["logits"]``."""
    out = ""
    for k in path:
        if isinstance(k, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            out = f"{out}.{k}" if out else k
        elif isinstance(k, str):
            out += f'["{k}"]'
        else:
            out += f"[{k}]"
    return out


def nodes(value: Any, path: Path_ = ()) -> list[Path_]:
    """Every path into dicts, lists and tuples (long lists: their ends only)."""
    found = [path] if path else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += nodes(v, (*path, k))
    elif isinstance(value, list | tuple) and not isinstance(value, torch.Size):
        idx = range(len(value)) if len(value) <= 8 else (0, 1, len(value) - 1)
        for i in idx:
            found += nodes(value[i], (*path, i))
    return found


def get(root: Any, path: Path_) -> Any:
    for k in path:
        root = root[k]
    return root


def replaced(root: Any, path: Path_, value: Any, delete: bool = False) -> Any:
    """``root`` with the node at ``path`` set to ``value`` (or deleted); tuples are rebuilt."""
    if not path:
        return value
    k, rest = path[0], path[1:]
    if isinstance(root, tuple):
        items = list(root)
        if rest:
            items[k] = replaced(items[k], rest, value, delete)
        elif delete:
            del items[k]
        else:
            items[k] = value
        return tuple(items)
    if rest:
        root[k] = replaced(root[k], rest, value, delete)
    elif delete:
        del root[k]
    else:
        root[k] = value
    return root


def retyped(value: Any) -> Any:
    """A value of another kind: what a careless writer or a hand-edit puts in a field."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list | tuple):
        return {str(i): v for i, v in enumerate(value)}
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return 7
    return "none"  # None


# values no field of any checkpoint may hold (all pass torch's weights_only loader)
FOREIGN = [b"bytes", 1 + 2j, torch.float32, torch.device("cpu"), {1, 2}]

FREE = ("config", "options")  # free-form plain data: any plain value is structurally valid


def _under(path: Path_, *keys: str) -> bool:
    return any(k in keys for k in path if isinstance(k, str))


def _hyper(path: Path_) -> bool:
    """An optimizer hyperparameter (or inside one): any scalar passes the structure check."""
    return (
        "param_groups" in path
        and (len(path) > path.index("param_groups") + 2)
        and (path[path.index("param_groups") + 2] != "params")
    )


def _state_entry(path: Path_) -> bool:
    """A tensor in a state dict, or a parameter's optimizer state, or an accuracy: a key of a
    free-form mapping, whose absence only the live objects can judge."""
    return (len(path) >= 2 and path[-2] in ("state_dict", "raw_state_dict", "accuracy")) or (
        len(path) >= 2 and path[-2] == "state" and isinstance(path[-1], int)
    )


def must_refuse(kind: str, payload: dict[str, Any], path: Path_) -> bool:
    """Whether a mutation of ``kind`` at ``path`` breaks what a reader needs."""
    if kind == "foreign":
        return True
    if _under(path, *FREE) or _hyper(path):
        return False
    last = path[-1]
    if kind == "delete":
        history_record = "history" in path and len(path) >= 3  # a record, or a key of one
        optional = (
            last in ("dtype", "rng_streams", "binary", "cuda")
            or (path == ("rng",) and bool(payload.get("rng_streams")))
            or (len(path) == 2 and path[0] == "rng_streams")  # a stream: it starts afresh
            or (path[0] == "history" and len(path) == 2)
            or (history_record and (len(path) == 3 or last not in ("step", "val_loss")))
            or _state_entry(path)
            or (isinstance(last, int) and path[-2] in ("params", "param_groups"))
        )
        return not optional
    if kind == "retype":
        value = get(payload, path)
        if isinstance(value, torch.Tensor) and value.dim() == 0 and "state" in path:
            return False  # an optimizer's step count as a number: the optimizer takes it
        return last != "dtype" or value is not None
    if kind == "negative":
        value = get(payload, path)
        if type(value) is not int or last == "version":
            return False
        return not ("history" in path and len(path) >= 4 and last != "step")
    raise AssertionError(kind)


def mutate(payload: dict[str, Any], data: st.DataObject) -> tuple[dict[str, Any], str, Path_]:
    payload = copy.deepcopy(payload)
    path = data.draw(st.sampled_from(nodes(payload)), label="path")
    value = get(payload, path)
    kinds = ["foreign", "retype"]
    if isinstance(get(payload, path[:-1]), dict | list):
        kinds.append("delete")
    if type(value) in (int, float):
        kinds.append("negative")
    kind = data.draw(st.sampled_from(kinds), label="mutation")
    if kind == "delete":
        return replaced(payload, path, None, delete=True), kind, path
    new = {
        "foreign": lambda: data.draw(st.sampled_from(FOREIGN), label="value"),
        "retype": lambda: retyped(value),
        "negative": lambda: -1 - value,
    }[kind]()
    return replaced(payload, path, new), kind, path


def assert_names(error: ckpt.CheckpointError, file: Path, path: Path_) -> None:
    """The message is one line, starts with the file, and names the field (or one above it)."""
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"{file}: "), message
    named = re.search(r"field '(.+?)' ", message)
    assert named is not None, message
    want, got = fmt(path), named.group(1)
    if (want == "rng" or want.startswith(("rng.", "rng["))) and got.startswith("rng_streams[0]"):
        got = "rng" + got.removeprefix("rng_streams[0]")  # one object, saved under both names
    assert want == got or want.startswith((got + ".", got + "[")), (want, message)


def _settings(n: int, derandomize: bool) -> settings:
    """The default run: ``n`` derandomized examples; ``-m slow``: the figures of
    docs/reliability.md, random."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=derandomize,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# ---- consumers: what a resume and a load do with a payload ----


def resume_into_live_objects(payload: dict[str, Any], file: Path) -> None:
    """What the trainer's resume does with a payload, then one optimizer step (any failure but
    CheckpointError is a bug in the schema)."""
    ds = ppgen.datasets.load("digits", split="val")
    model = ppgen.build("independent", ds)
    obj = make_objective("mle", model)
    optimizers = {
        g: torch.optim.Adam(params, **obj.optimizer_options(g, 1e-3))
        for g, params in obj.param_groups(model).items()
    }
    ckpt.check_compatible(model, payload["model"], str(file))
    ckpt.check_training_state(payload, str(file), model, obj, optimizers)
    ema = None if payload["ema_decay"] is None else trainer._EMA(model, 0.9)
    model.load_state_dict(payload["raw_state_dict"] or payload["model"]["state_dict"])
    if ema is not None:
        ema.shadow = dict(payload["model"]["state_dict"])
    obj.load_state_dict(payload["objective"]["state_dict"])
    for g, opt in optimizers.items():
        opt.load_state_dict(payload["optimizers"][g])
    history = trainer.History.from_dict(payload["history"])
    assert isinstance(history.loss, list)
    int(payload["step"])
    saved = payload.get("rng_streams") or {0: payload["rng"]}
    for state in saved.values():
        trainer._set_rng_state(state)
    for g in obj.schedule(int(payload["step"])):
        optimizers[g].zero_grad()
        obj.loss(model, ds.data[:8], None, g, 0).backward()
        optimizers[g].step()
    if ema is not None:
        ema.update(model)


_TMP = tempfile.TemporaryDirectory(prefix="ppgen-schema-")  # removed at exit


def _write(payload: Any) -> Path:
    path = Path(tempfile.mkdtemp(dir=_TMP.name)) / "checkpoint.pt"
    ckpt.write_checkpoint(path, payload)
    return path


# ---- the properties ----


def _training_case(training_payloads, data, which):
    payload, kind, path = mutate(training_payloads[which], data)
    file = _write(payload)
    try:
        read = ckpt.read_checkpoint(file, kind="training")
        resume_into_live_objects(read, file)
    except ckpt.CheckpointError as e:
        if must_refuse(kind, training_payloads[which], path):
            assert_names(e, file, path)
        else:
            assert str(e).startswith(f"{file}: ") and "\n" not in str(e)
        return
    assert not must_refuse(kind, training_payloads[which], path), (
        f"{kind} at {fmt(path)} was accepted"
    )


def _model_case(model_payload, data):
    payload, kind, path = mutate(model_payload, data)
    file = _write(payload)
    try:
        model = ppgen.load(file)
        model.log_prob(model.sample(2))  # the model the file describes, on its own data
    except ckpt.CheckpointError as e:
        if must_refuse(kind, model_payload, path):
            assert_names(e, file, path)
        else:
            assert str(e).startswith(f"{file}: ") and "\n" not in str(e)
        return
    assert not must_refuse(kind, model_payload, path), f"{kind} at {fmt(path)} was accepted"


def _features_case(data):
    payload, kind, path = mutate(FEATURES, data)
    file = _write(payload)
    try:
        ckpt.read_checkpoint(file, kind="features")
    except ckpt.CheckpointError as e:
        if must_refuse(kind, FEATURES, path):
            assert_names(e, file, path)
        else:
            assert str(e).startswith(f"{file}: ") and "\n" not in str(e)
        return
    assert not must_refuse(kind, FEATURES, path), f"{kind} at {fmt(path)} was accepted"


WHICH = st.sampled_from(["plain", "ema"])


@_settings(40, True)
@given(data=st.data(), which=WHICH)
def test_malformed_training_checkpoint_is_a_checkpoint_error(training_payloads, data, which):
    _training_case(training_payloads, data, which)


@pytest.mark.slow
@_settings(1000, False)
@given(data=st.data(), which=WHICH)
def test_malformed_training_checkpoint_is_a_checkpoint_error_slow(training_payloads, data, which):
    _training_case(training_payloads, data, which)


@_settings(40, True)
@given(data=st.data())
def test_malformed_model_file_is_a_checkpoint_error(model_payload, data):
    _model_case(model_payload, data)


@pytest.mark.slow
@_settings(500, False)
@given(data=st.data())
def test_malformed_model_file_is_a_checkpoint_error_slow(model_payload, data):
    _model_case(model_payload, data)


@_settings(40, True)
@given(data=st.data())
def test_malformed_feature_cache_is_a_checkpoint_error(data):
    _features_case(data)


@pytest.mark.slow
@_settings(300, False)
@given(data=st.data())
def test_malformed_feature_cache_is_a_checkpoint_error_slow(data):
    _features_case(data)


@pytest.mark.parametrize("payload", [[1, 2], "text", None, torch.zeros(2)])
def test_a_payload_that_is_not_a_dict_is_refused(payload):
    file = _write(payload)
    with pytest.raises(ckpt.CheckpointError, match=r"the payload is .*, expected a dict"):
        ckpt.read_checkpoint(file)


def test_examples_name_the_field(training_payloads):
    payload = copy.deepcopy(training_payloads["plain"])
    payload["optimizers"]["model"] = [1, 2]
    file = _write(payload)
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.read_checkpoint(file)
    assert str(e.value) == f"{file}: field 'optimizers.model' is a list, expected a dict"
    payload = copy.deepcopy(training_payloads["plain"])
    del payload["step"]
    with pytest.raises(ckpt.CheckpointError, match="field 'step' is missing"):
        ckpt.read_checkpoint(_write(payload), kind="training")
    payload["step"] = True
    with pytest.raises(ckpt.CheckpointError, match="field 'step' is a bool, expected an int"):
        ckpt.read_checkpoint(_write(payload), kind="training")


def test_shapes_and_optimizer_groups_are_checked_against_the_live_objects(training_payloads):
    ds = ppgen.datasets.load("digits", split="val")
    model = ppgen.build("independent", ds)
    obj = make_objective("mle", model)
    opts = {g: torch.optim.Adam(p, lr=1e-3) for g, p in obj.param_groups(model).items()}
    ckpt.check_training_state(training_payloads["plain"], "f.pt", model, obj, opts)
    cases = {
        "'model.state_dict.logits' has shape": lambda p: p["model"]["state_dict"].update(
            logits=torch.zeros(3)
        ),
        "'optimizers.model' is missing": lambda p: p["optimizers"].update(
            other=p["optimizers"].pop("model")
        ),
        r"'optimizers.model.param_groups\[0\].betas' is a float": lambda p: p["optimizers"][
            "model"
        ]["param_groups"][0].update(betas=0.9),
        r"'optimizers.model.state\[0\].exp_avg' has shape": lambda p: p["optimizers"]["model"][
            "state"
        ][0].update(exp_avg=torch.zeros(2)),
        r"'optimizers.model.param_groups\[0\].lr' is missing": lambda p: p["optimizers"]["model"][
            "param_groups"
        ][0].pop("lr"),
    }
    for message, change in cases.items():
        payload = copy.deepcopy(training_payloads["plain"])
        change(payload)
        with pytest.raises(ckpt.CheckpointError, match=message):
            ckpt.check_training_state(payload, "f.pt", model, obj, opts)


def test_ema_shadow_must_have_the_live_dtype(training_payloads):
    ds = ppgen.datasets.load("digits", split="val")
    model = ppgen.build("independent", ds)
    obj = make_objective("mle", model)
    opts = {g: torch.optim.Adam(p, lr=1e-3) for g, p in obj.param_groups(model).items()}
    payload = copy.deepcopy(training_payloads["ema"])
    ckpt.check_training_state(payload, "f.pt", model, obj, opts)
    payload["model"]["state_dict"]["logits"] = payload["model"]["state_dict"]["logits"].double()
    with pytest.raises(ckpt.CheckpointError, match="torch.float64 tensor, expected torch.float32"):
        ckpt.check_training_state(payload, "f.pt", model, obj, opts)


def test_history_schema_knows_every_history_field():
    assert set(ckpt._HISTORY_FIELDS) == {f.name for f in dataclasses.fields(trainer.History)}


def test_feature_cache_and_model_files_still_load(model_payload, tmp_path):
    assert ckpt.validate_payload(copy.deepcopy(FEATURES), "f") == "features"
    assert ckpt.validate_payload(model_payload, "f") == "model"
    with pytest.raises(ckpt.CheckpointError, match="feature-network cache, not a model"):
        ppgen.load(_write(FEATURES))


@pytest.mark.parametrize("family", ppgen.models.names())
def test_every_familys_checkpoint_passes_the_schema_and_the_live_checks(family, tmp_path,
                                                                       small_model):
    """A valid checkpoint of every family (with EMA, and a GAN's two optimizers) is accepted:
    the schema refuses nothing a real run writes."""
    for data in ("digits", "moons"):
        ds = ppgen.datasets.load(data, "val").subset(64)
        try:
            model = small_model(family, ds)
            break
        except ValueError:
            continue
    ppgen.fit(model, ds, val=ds, steps=2, batch_size=32, out=tmp_path, progress=False, ema=0.9)
    payload = ckpt.read_checkpoint(tmp_path / "checkpoint.pt", kind="training")
    obj = make_objective(payload["objective"]["name"], model, **payload["objective"]["options"])
    optimizers = {
        g: torch.optim.Adam(params, **obj.optimizer_options(g, 1e-3))
        for g, params in obj.param_groups(model).items()
    }
    ckpt.check_compatible(model, payload["model"], "f")
    ckpt.check_training_state(payload, "f", model, obj, optimizers)
    if (tmp_path / "best.pt").exists():  # families with a validation loss
        assert ckpt.validate_payload(ckpt.read_checkpoint(tmp_path / "best.pt"), "f") == "model"
