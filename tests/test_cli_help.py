"""The command line's declarations and start-up (``ppgen/cli.py``'s parser, ``ppgen/__init__.py``'s
lazy names, ``ppgen/catalog.py``): every option has help, its default and its choices, taken
from the same declarations as the Python API; ``ppgen --help`` and ``ppgen list`` import
neither torch nor the families; the catalog ``ppgen list`` reads agrees with the registries.
(The commands themselves: ``tests/test_cli.py``.)"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ppgen
from ppgen import catalog, cli

ROOT = Path(__file__).resolve().parents[1]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    return dict(cli.build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


def _imported_modules(*argv: str) -> tuple[set[str], str]:
    """The modules ``python -m ppgen ARGV`` imports (from ``-X importtime``), and its stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "ppgen", *argv],
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    return modules, proc.stdout


@pytest.mark.parametrize("argv", [["--help"], ["list"]])
def test_help_and_list_import_neither_torch_nor_the_families(argv):
    modules, out = _imported_modules(*argv)
    assert "ppgen.cli" in modules  # the measurement sees ppgen's own imports
    heavy = sorted(m for m in modules
                   if m.split(".")[0] in ("torch", "pyro", "numpy", "matplotlib")
                   or m.startswith(("ppgen.models", "ppgen.inference", "ppgen.datasets")))
    assert not heavy, heavy[:10]
    assert ("families:" in out) if argv == ["list"] else ("benchmark" in out)


def test_list_prints_the_registries():
    _, out = _imported_modules("list")
    for name in ppgen.models.names():
        cls = ppgen.models.get(name)
        assert f"  {name:16s} likelihood={cls.likelihood:6s}" in out, name
    for name in ppgen.datasets.names():
        assert f"\n  {name}\n" in out, name


def test_the_catalog_agrees_with_the_registries():
    """A family or hyperparameter added to the package without a line in ppgen/catalog.py fails
    here, with the line to put there."""
    for name in ppgen.models.names():
        cls = ppgen.models.get(name)
        fields = tuple(f.name for f in dataclasses.fields(cls.Config)
                       if f.name not in ("event_shape", "kind", "levels"))
        line = f"    {name!r}: ({cls.likelihood!r}, {fields!r}),"
        assert catalog.FAMILIES.get(name) == (cls.likelihood, fields), (
            f"ppgen/catalog.py is out of date; FAMILIES needs:\n{line}")
    assert list(catalog.FAMILIES) == ppgen.models.names()
    assert list(catalog.DATASETS) == ppgen.datasets.names()


def test_every_public_name_resolves_lazily():
    code = "import sys, ppgen; print(sorted(m for m in sys.modules if m.startswith('torch'))[:3])"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", (proc.stdout, proc.stderr)
    for name in ppgen.__all__:
        assert getattr(ppgen, name) is not None, name
    assert ppgen.fit is ppgen.fitting.fit and ppgen.load is ppgen.checkpoint.load
    assert ppgen.plots.__name__ == "ppgen.plots"  # any sub-module, as before
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        ppgen.nothing  # noqa: B018


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_every_option_has_help_and_shows_its_default_and_choices(command):
    sub = _subparsers()[command]
    flat = " ".join(sub.format_help().split())
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[-1]
        assert action.help, f"ppgen {command} {flag} has no help"
        if action.choices is not None:
            listed = "{" + ",".join(map(str, action.choices)) + "}"
            assert listed in flat or all(str(c) in flat for c in action.choices), (command, flag)
        if action.default is not None and not isinstance(action.default, bool):
            assert (f"(default: {action.default})" in flat
                    or "default" in action.help), f"ppgen {command} {flag} hides its default"


def test_choices_come_from_the_registries():
    subs = _subparsers()
    by_flag = {(c, o): a for c, s in subs.items() for a in s._actions for o in a.option_strings}
    from ppgen.benchmark import PRESETS
    from ppgen.datasets.base import SPLITS
    from ppgen.inference.likelihood import ESTIMATORS

    assert by_flag["evaluate", "--estimator"].choices == ["auto", *sorted(ESTIMATORS)]
    assert by_flag["benchmark", "--preset"].choices == list(PRESETS)
    for command in ("evaluate", "compare", "inspect"):
        assert set(by_flag[command, "--split"].choices) == {*SPLITS, "all"}
    assert by_flag["fit", "--on-nonfinite"].choices == ("raise", "skip")  # from TrainConfig
    fit_flags = {o for (c, o) in by_flag if c == "fit"}
    from ppgen.inference.train_config import TrainConfig

    for f in dataclasses.fields(TrainConfig):  # no setting lacks a flag
        if f.metadata.get("flag", True):
            flag = "--" + f.name.replace("_", "-")
            assert flag in fit_flags or "--no-" + f.name.replace("_", "-") in fit_flags, flag


def test_commands_that_show_progress_take_no_progress():
    parser = cli.build_parser()
    for argv in (["evaluate", "run", "--no-progress"],
                 ["benchmark", "--no-progress"],
                 ["fit", "made", "--data", "moons", "--no-progress"]):
        args, extra = parser.parse_known_args(argv)
        shown = not args.no_progress if hasattr(args, "no_progress") else args.progress
        assert not extra and shown is False, argv


def test_a_bad_choice_is_one_line_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", "run", "--estimator", "magic"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--estimator" in err and "iwae" in err and "magic" in err, err
