"""ppgen/inference/train_config.py: one declaration of fit's settings, flags generated from it."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ppgen.inference.train_config import FitError, TrainConfig, add_arguments, from_arguments


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_arguments(p)
    return p


def test_defaults_round_trip_through_the_flags():
    """Parsing no flags gives TrainConfig's own defaults: one declaration, no drift."""
    assert from_arguments(_parser().parse_args([])) == TrainConfig()


def test_every_setting_but_the_objective_options_has_a_flag():
    flags = {o for a in _parser()._actions for o in a.option_strings}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "objective_options":
            continue
        name = f.name.replace("_", "-")
        assert f"--{name}" in flags or f"--no-{name}" in flags, f.name


def test_flags_parse_to_the_settings():
    args = _parser().parse_args([
        "--steps", "5", "--lr", "0.1", "--ema", "none", "--patience", "none", "--no-progress",
        "--compile", "--compile-backend", "eager", "--on-nonfinite", "skip", "--overwrite",
        "--weight-decay", "0.01", "--clip-grad", "1.5"])
    cfg = from_arguments(args)
    assert (cfg.steps, cfg.lr, cfg.ema, cfg.patience, cfg.progress, cfg.compile) == (
        5, 0.1, None, None, False, "eager")
    assert (cfg.on_nonfinite, cfg.overwrite, cfg.weight_decay, cfg.clip_grad) == (
        "skip", True, 0.01, 1.5)
    assert from_arguments(_parser().parse_args(["--patience", "3"])).patience == 3


def test_help_shows_defaults_and_choices(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "(default: 2000)" in out and "{raise,skip}" in out and "{float32,bf16}" in out


@given(name=st.sampled_from(["steps", "batch_size", "log_every", "accumulate", "eval_every",
                             "patience", "checkpoint_every"]),
       value=st.one_of(st.integers(max_value=0), st.floats(), st.booleans(), st.text()))
def test_bad_counts_name_the_setting(name, value):
    with pytest.raises(FitError, match=name):
        TrainConfig().replace(**{name: value}).validate()


def test_unknown_setting_is_named():
    with pytest.raises(FitError, match="stepz"):
        TrainConfig().replace(stepz=3)


def test_family_defaults_fill_only_what_was_left_to_them():
    defaults = {"lr": 0.05, "ema": 0.999, "objective_options": {"a": 1}}
    cfg = TrainConfig(objective_options={"b": 2}).with_family_defaults(defaults)
    assert (cfg.lr, cfg.ema, cfg.objective_options) == (0.05, 0.999, {"a": 1, "b": 2})
    mine = TrainConfig(lr=0.2, ema=0).with_family_defaults(defaults)
    assert (mine.lr, mine.ema) == (0.2, None)  # ema=0 switches the family's EMA off
    assert TrainConfig().with_family_defaults({}).lr == 1e-3


@given(name=st.sampled_from(["lr", "ema", "clip_grad", "weight_decay"]),
       value=st.one_of(st.floats(max_value=-1e-9), st.just(float("nan")), st.just(float("inf")),
                       st.booleans(), st.text()))
def test_bad_rates_name_the_setting(name, value):
    with pytest.raises(FitError, match=name):
        TrainConfig().replace(**{name: value}).validate()
