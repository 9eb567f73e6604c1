"""The config layer every family shares (issue 18): one hyperparameter parser driven by the
config's field types, one size check before allocation, one ``sample`` entry point.

The memory cases (an enormous config, ``sample(10**9)``) run in a subprocess under
``resource.setrlimit(RLIMIT_AS)``, so a regression fails that process, never the machine.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ppgen
from ppgen.models.base import (
    MAX_PARAMETERS,
    ConfigError,
    ModelSizeError,
    _field_types,
)

FAMILIES = ppgen.models.names()
REPO = Path(__file__).resolve().parents[2]
SPECS = {
    "image": {"event_shape": (1, 8, 8), "kind": "discrete", "levels": 17},
    "vector": {"event_shape": (2,), "kind": "continuous"},
}
DATA_FIELDS = {"event_shape", "kind", "levels"}


def _spec(family: str) -> dict:
    return SPECS["image" if "pixelcnn" in family else "vector"]


def _fields(family: str) -> list[tuple[str, typing.Any]]:
    cls = ppgen.models.get(family)
    return [(n, t) for n, t in _field_types(cls.Config).items() if n not in DATA_FIELDS]


def _base(tp: typing.Any) -> typing.Any:
    """The annotation without ``| None``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType) and len(args) == 1:
        return args[0]
    return tp


def _wrong_types(tp: typing.Any) -> list[typing.Any]:
    """Values of a wrong type for a field of annotation ``tp``."""
    tp = _base(tp)
    if typing.get_origin(tp) is tuple:
        return ["16", [16.0], True, 2.5, {"a": 1}, [True]]
    if tp is int:
        return ["3", 2.5, 3.0, True, [3], b"3"]
    if tp is float:
        return ["0.5", True, [0.5]]
    if tp is bool:
        return [1, "true", 0.0]
    if tp is str:
        return [3, ["a"]]
    return []


# ---- one parser: types -------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_wrong_type_is_a_type_error_naming_family_and_field(data):
    family = data.draw(st.sampled_from(FAMILIES))
    cls = ppgen.models.get(family)
    fields = [(n, t) for n, t in _fields(family) if _wrong_types(t)]
    name, tp = data.draw(st.sampled_from(fields))
    bad = data.draw(st.sampled_from(_wrong_types(tp)))
    with pytest.raises(TypeError) as info:
        cls.config_from(**_spec(family), **{name: bad})
    assert isinstance(info.value, ValueError)  # the CLI's one-line path catches it too
    message = str(info.value)
    assert cls.__name__ in message and repr(name) in message, message
    assert "\n" not in message


@settings(max_examples=100, deadline=None)
@given(family=st.sampled_from(FAMILIES), size=st.integers(-(2**40), 0), data=st.data())
def test_a_size_below_one_is_a_value_error_naming_the_field(family, size, data):
    cls = ppgen.models.get(family)
    sizes = [
        (n, t) for n, t in _fields(family)
        if (_base(t) is int or typing.get_origin(_base(t)) is tuple)
        and n not in cls.Config.zero_allowed
    ]
    name, tp = data.draw(st.sampled_from(sizes))
    value = [16, size] if typing.get_origin(_base(tp)) is tuple else size
    with pytest.raises(ValueError, match=repr(name)) as info:
        cls.config_from(**_spec(family), **{name: value})
    assert not isinstance(info.value, TypeError)
    assert cls.__name__ in str(info.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_non_finite_floats_and_unknown_choices_are_refused(family):
    cls = ppgen.models.get(family)
    for name, tp in _fields(family):
        base = _base(tp)
        if base is float:
            for bad in (math.nan, math.inf):
                with pytest.raises(ConfigError, match="finite"):
                    cls.config_from(**_spec(family), **{name: bad})
        if typing.get_origin(base) is typing.Literal:
            with pytest.raises(ConfigError, match="one of"):
                cls.config_from(**_spec(family), **{name: "no-such-choice"})


@settings(max_examples=60, deadline=None)
@given(family=st.sampled_from(FAMILIES), width=st.integers(1, 64))
def test_one_width_is_a_list_of_one_in_every_family(family, width):
    """``--model.hidden=16`` (an int) means ``[16]`` for every family with widths, as it
    always did for the VAE (it crashed six families with a TypeError before)."""
    import numpy as np

    cls = ppgen.models.get(family)
    for name, tp in _fields(family):
        if typing.get_origin(_base(tp)) is not tuple or name == "order":
            continue
        as_int = cls.Config(**_spec(family), **{name: width})
        assert as_int == cls.Config(**_spec(family), **{name: [width]})
        assert as_int == cls.Config(**_spec(family), **{name: np.int64(width)})
        assert getattr(as_int, name) == (width,)
        assert type(getattr(as_int, name)[0]) is int


def test_the_single_width_builds_every_family():
    """End to end: ``build(name, ds, hidden=16)`` builds each family (the issue's TypeError)."""
    digits = ppgen.datasets.load("digits", "val")
    moons = ppgen.datasets.load("moons", "val")
    small = {"transforms": 1, "latent": 2, "timesteps": 4, "components": 1}
    for family in FAMILIES:
        cls = ppgen.models.get(family)
        names = {f.name for f in dataclasses.fields(cls.Config)}
        if "hidden" not in names:
            continue
        ds = digits if "pixelcnn" in family else moons
        extra = {k: v for k, v in small.items() if k in names}
        m = ppgen.build(family, ds, hidden=16, **extra)
        assert m.config.hidden == (16,), family


@pytest.mark.parametrize("family", FAMILIES)
def test_an_unknown_name_lists_the_valid_ones(family):
    cls = ppgen.models.get(family)
    valid = sorted(f.name for f in dataclasses.fields(cls.Config))
    with pytest.raises(ConfigError) as info:
        cls.config_from(**_spec(family), hiden=3)
    message = str(info.value)
    assert "'hiden'" in message and str(valid) in message and cls.__name__ in message
    config = cls.config_from(**_spec(family))
    with pytest.raises(ConfigError, match="'hiden'"):
        config.replace(hiden=3)
    with pytest.raises(ConfigError, match="another family or version"):
        cls.Config.from_dict({**config.to_dict(), "hiden": 3})
    with pytest.raises(ConfigError, match="mapping"):
        cls.Config.from_dict([1, 2])


def test_a_near_miss_suggests_the_field():
    with pytest.raises(ConfigError, match="did you mean 'hidden'"):
        ppgen.models.get("made").config_from(**SPECS["vector"], hiden=[8])


def test_configs_survive_a_json_round_trip_after_coercion():
    import json

    for family in FAMILIES:
        cls = ppgen.models.get(family)
        config = cls.config_from(**_spec(family))
        back = cls.Config.from_dict(json.loads(json.dumps(config.to_dict())))
        assert back == config, family


# ---- the size of a model, from its config, before allocation ------------------------------------


def test_an_enormous_config_is_refused_by_build_before_allocation():
    moons = ppgen.datasets.load("moons", "val")
    with pytest.raises(ModelSizeError) as info:
        ppgen.build("made", moons, hidden=[2**20, 2**20])
    message = str(info.value)
    assert f"{MAX_PARAMETERS:,}" in message and "max_parameters=" in message
    assert "\n" not in message
    # the caller may raise the limit; and lower it
    ppgen.build("made", moons, hidden=[64], max_parameters=10**6)
    with pytest.raises(ModelSizeError, match="over the limit of 100"):
        ppgen.build("made", moons, hidden=[64], max_parameters=100)
    with pytest.raises(ValueError, match="max_parameters"):
        ppgen.build("made", moons, hidden=[64], max_parameters=0)


_RLIMIT = """
import resource, sys
limit = 3 * 2**30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import torch, ppgen
from ppgen import checkpoint as ckpt
"""


def _run_capped(body: str) -> subprocess.CompletedProcess:
    code = _RLIMIT + textwrap.dedent(body)
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )


def test_enormous_configs_from_build_and_checkpoints_are_refused_under_a_memory_cap(tmp_path):
    """Every family with widths, widths of 2**24 (up to a PiB of weights): refused
    by build and by load of a checkpoint holding that config, in one line, in a process
    whose address space is capped at 3 GiB (an allocation attempt would die there)."""
    path = tmp_path / "small.pt"
    result = _run_capped(f"""
        digits = ppgen.datasets.load("digits", "val")
        moons = ppgen.datasets.load("moons", "val")
        refused = 0
        for family in ppgen.models.names():
            cls = ppgen.models.get(family)
            names = {{f.name for f in __import__("dataclasses").fields(cls.Config)}}
            if "hidden" not in names:
                continue
            ds = digits if "pixelcnn" in family else moons
            huge = [2**24] * (1 if family == "nade" else 2)  # NADE has one hidden layer
            try:
                ppgen.build(family, ds, hidden=huge)
            except ppgen.models.base.ModelSizeError as e:
                assert "over the limit" in str(e), str(e)
                refused += 1
            small = ppgen.build(family, ds, hidden=[8])
            ckpt.save(small, {str(path)!r})
            payload = ckpt.read_checkpoint({str(path)!r})
            payload["config"]["hidden"] = huge
            ckpt.write_checkpoint({str(path)!r}, payload)
            try:
                ppgen.load({str(path)!r})
            except ckpt.CheckpointError as e:
                assert "over the limit" in str(e) and {str(path)!r} in str(e), str(e)
                refused += 1
        print("refused", refused)
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    families_with_widths = sum(
        "hidden" in {f.name for f in dataclasses.fields(ppgen.models.get(f).Config)}
        for f in FAMILIES
    )
    assert f"refused {2 * families_with_widths}" in result.stdout, result.stdout


def test_load_takes_max_parameters(tmp_path):
    moons = ppgen.datasets.load("moons", "val")
    m = ppgen.build("made", moons, hidden=[32])
    ppgen.save(m, tmp_path / "m.pt")
    with pytest.raises(ppgen.checkpoint.CheckpointError, match="over the limit of 1,000"):
        ppgen.load(tmp_path / "m.pt", max_parameters=1000)
    assert ppgen.load(tmp_path / "m.pt", max_parameters=10**7).config == m.config


def test_sampling_a_billion_points_is_refused_with_the_memory_it_needs():
    result = _run_capped("""
        moons = ppgen.datasets.load("moons", "val")
        digits = ppgen.datasets.load("digits", "val")
        for family, ds in (("independent", moons), ("made", digits), ("vae", digits)):
            m = ppgen.build(family, ds, **({"hidden": [8]} if family != "independent" else {}))
            try:
                m.sample(10**9, seed=0)
            except ppgen.models.base.SampleSizeError as e:
                text = str(e)
                assert "GiB" in text and "n=1000000000" in text and "\\n" not in text, text
                print("refused", family)
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    for family in ("independent", "made", "vae"):
        assert f"refused {family}" in result.stdout, result.stdout
