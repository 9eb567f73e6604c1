"""ppgen/run_directory.py and the CLI's reading of run directories: a run directory is data.

Every command that opens a run (evaluate, sample, inspect, compare) is tried on run directories
crafted to run code (a builder, a ``module:Class`` family in ``config.json`` or in the
checkpoint, a module shadowing one ppgen imports later) and on malformed ``config.json`` files.
The code they name writes a marker file when imported or called: the marker must never appear,
and each refusal is one line naming the file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ppgen
from ppgen import checkpoint as ckpt
from ppgen import cli, run_directory

ROOT = Path(__file__).resolve().parents[1]

_EVIL = '''
import pathlib
pathlib.Path({marker!r}).write_text("code ran")

def build(**kwargs):
    pathlib.Path({marker!r}).write_text("builder called")

class Model:
    pass
'''


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    """A small real run of a registered family (the weights every crafted run reuses)."""
    tmp = tmp_path_factory.mktemp("run")
    run = tmp / "run"
    train = ppgen.datasets.load("moons", split="train")
    m = ppgen.build("maf", train, hidden=[8], transforms=1)
    ppgen.fit(m, train, steps=2, batch_size=32, out=run, progress=False)
    return run


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _evil_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A module ``evilpkg.evil`` on PYTHONPATH that writes a marker when imported or called."""
    marker = tmp_path / "MARKER"
    pkg = tmp_path / "code" / "evilpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "evil.py").write_text(_EVIL.format(marker=str(marker)))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path / 'code'}",
           "OMP_NUM_THREADS": "1"}
    return env, marker


def _ppgen(args, env, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "ppgen", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _edit_config(run: Path, **changes) -> None:
    config = json.loads((run / "config.json").read_text())
    config.update(changes)
    (run / "config.json").write_text(json.dumps(config))


def _commands(run: Path, tmp_path: Path) -> list[list]:
    return [
        ["evaluate", run, "--data", "moons"],
        ["sample", run, "-n", "2", "-o", tmp_path / "s.npy"],
        ["inspect", run, "--data", "moons", "--out", tmp_path / "inspect"],
        ["compare", run, run, "--data", "moons"],
    ]


@pytest.mark.parametrize("how", ["builder", "family", "checkpoint-family", "torch-hub"])
def test_no_command_runs_code_named_by_a_run_directory(fitted_run, tmp_path, how):
    """A builder or a ``module:Class`` family in config.json or in the checkpoint is refused by
    every command before anything is imported; the marker never appears."""
    env, marker = _evil_env(tmp_path)
    run = _copy_run(fitted_run, tmp_path / "crafted")
    if how == "builder":
        _edit_config(run, builder="evilpkg.evil:build", builder_options={})
        named = "evilpkg.evil:build"
    elif how == "torch-hub":  # the variant that reached torch.hub.load
        _edit_config(run, builder="torch.hub:load",
                     builder_options={"repo_or_dir": str(tmp_path), "model": "x"})
        named = "torch.hub:load"
    elif how == "family":
        _edit_config(run, family="evilpkg.evil:Model")
        named = "evilpkg.evil:Model"
    else:  # the checkpoint itself names a user class; config.json agrees with it
        for name in [f.name for f in run.glob("*.pt")]:
            payload = ckpt.read_checkpoint(run / name)
            inner = payload.get("model", payload)
            inner["family"] = "evilpkg.evil:Model"
            ckpt.write_checkpoint(run / name, payload)
        _edit_config(run, family="evilpkg.evil:Model")
        named = "evilpkg.evil:Model"
    for args in _commands(run, tmp_path):
        proc = _ppgen(args, env)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert named in lines[0] and ("config.json" in lines[0] or ".pt" in lines[0]), lines[0]
        assert not marker.exists(), (args, marker.read_text())


def test_trusted_run_still_refuses_disagreeing_records(fitted_run, tmp_path):
    """--trust-code does not make altered records acceptable: a family in config.json that
    disagrees with the checkpoint's is refused before any import."""
    env, marker = _evil_env(tmp_path)
    run = _copy_run(fitted_run, tmp_path / "crafted")
    _edit_config(run, family="evilpkg.evil:Model")
    proc = _ppgen(["evaluate", run, "--data", "moons", "--trust-code"], env)
    assert proc.returncode == 2 and "disagrees" in proc.stderr, proc.stderr
    assert not marker.exists()


def test_edited_model_config_is_refused(fitted_run, tmp_path):
    run = _copy_run(fitted_run, tmp_path / "crafted")
    config = json.loads((run / "config.json").read_text())
    config["model"]["hidden"] = [4096, 4096]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(run_directory.RunDirectoryError, match="'hidden'"):
        run_directory.load_run(run)


def test_a_module_in_the_working_directory_cannot_shadow_ppgen_imports(fitted_run, tmp_path):
    """``python -m ppgen`` drops the working directory from sys.path: a downloaded directory's
    ``matplotlib.py`` (imported lazily to draw samples) never runs."""
    env, _ = _evil_env(tmp_path)
    marker = tmp_path / "SHADOW"
    work = tmp_path / "work"
    work.mkdir()
    (work / "matplotlib.py").write_text(f"open({str(marker)!r}, 'w').write('shadowed')\n")
    proc = _ppgen(["sample", fitted_run, "-n", "4", "-o", work / "s.png"], env, cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()


def test_user_module_in_cwd_needs_pythonpath(tmp_path):
    """``ppgen fit mod:Class`` never adds the working directory to sys.path; the error says how."""
    (tmp_path / "mymodels.py").write_text("X = 1\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = _ppgen(["fit", "mymodels:X", "--data", "moons", "--steps", "1"], env, cwd=tmp_path)
    assert proc.returncode == 2
    assert "PYTHONPATH=." in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


_MALFORMED = {
    "bad-json": b'{"family": "maf",',
    "a-list": b'["maf"]',
    "a-string": b'"maf"',
    "unknown-family": b'{"family": "no-such-family"}',
    "non-string-family": b'{"family": 3}',
    "builder-not-a-string": b'{"builder": ["evil"]}',
    "options-not-an-object": b'{"builder_options": [1]}',
    "model-not-an-object": b'{"model": "x"}',
    "data-not-a-string": b'{"data": 7}',
    "not-utf8": b'{"family": "\xff"}',
    "deep": b"[" * 100000 + b"]" * 100000,
}


@pytest.mark.parametrize("name", sorted(_MALFORMED))
def test_malformed_config_json_is_one_line_naming_the_file(fitted_run, tmp_path, name):
    run = _copy_run(fitted_run, tmp_path / "crafted")
    (run / "config.json").write_bytes(_MALFORMED[name])
    with pytest.raises(run_directory.RunDirectoryError) as e:
        run_directory.load_run(run)
    assert str(run / "config.json") in str(e.value)


def test_malformed_config_json_on_the_command_line(fitted_run, tmp_path, capsys):
    run = _copy_run(fitted_run, tmp_path / "crafted")
    (run / "config.json").write_bytes(b'{"family": 3}')
    assert cli.main(["evaluate", str(run), "--data", "moons"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.json" in err[0] and "'family'" in err[0]


def test_oversized_config_json_is_refused_unread(fitted_run, tmp_path, monkeypatch):
    run = _copy_run(fitted_run, tmp_path / "crafted")
    monkeypatch.setattr(run_directory, "MAX_CONFIG_BYTES", 100)
    (run / "config.json").write_text(json.dumps({"family": "maf", "pad": "x" * 200}))
    with pytest.raises(run_directory.RunDirectoryError, match="bytes"):
        run_directory.load_run(run)


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=8))
def test_any_json_config_is_accepted_or_refused_cleanly(tmp_path_factory, value):
    """Whatever JSON stands in config.json, reading it returns a dict or raises
    RunDirectoryError; nothing else escapes."""
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps(value))
    try:
        out = run_directory.read_config(path)
    except run_directory.RunDirectoryError as e:
        assert str(path) in str(e)
    else:
        assert isinstance(out, dict)


def test_registered_family_needs_no_trust(fitted_run):
    model, record = run_directory.load_run(fitted_run)
    assert record.checkpoint.name == "best.pt" or record.checkpoint.name == "checkpoint.pt"
    assert type(model).__name__ == "MAF"


def _all_subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    return dict(parser._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("command", sorted(_all_subparsers()))
def test_no_abbreviated_flags_in_any_sub_command(command, capsys):
    """A prefix of a real flag is an unknown flag (argparse's prefix matching is off), and the
    error names the nearest known flag."""
    sub = _all_subparsers()[command]
    flags = [o for a in sub._actions for o in a.option_strings
             if o.startswith("--") and len(o) > 5 and o != "--help"]
    positional = {"fit": ["made"], "evaluate": ["r"], "sample": ["r"], "inspect": ["r"],
                  "compare": ["r", "r"]}.get(command, [])
    required = ["--data", "moons"] if command == "fit" else []
    for flag in flags:
        argv = [command, *positional, *required, flag[:-1], "1"]
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2, argv
        err = capsys.readouterr().err
        assert f"unrecognized argument {flag[:-1]}" in err and "did you mean" in err, err
