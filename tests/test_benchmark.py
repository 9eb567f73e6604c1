"""``ppgen benchmark`` end to end with the tiny preset, and the table logic of
``python -m benchmarks.run``.

The default run trains a representative family of each kind (an autoregressive model, a flow, a
VAE, a diffusion model, a GAN) for the tiny preset's 5 steps on digits, one flow on a 2-D toy
density with a known entropy, and only *builds* every other family of the tiny preset; the whole
tiny preset through the CLI is under ``@pytest.mark.slow``.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ppgen
from ppgen import benchmark

REPRESENTATIVE = ["made", "realnvp", "vae", "ddpm", "gan"]
KINDS = {"exact", "lower_bound", "estimate"}
# the kind each representative must report on digits (17 levels): a flow's continuous density
# of dequantized data is a lower bound, a VAE's and a diffusion's bounds are lower bounds, a
# GAN's AIS is an estimate
EXPECTED_KIND = {"made": "exact", "realnvp": "lower_bound", "vae": "lower_bound",
                 "ddpm": "lower_bound", "gan": "estimate"}


def _numbers(obj, path="$"):
    """Every float/int leaf of a JSON value with its path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def _check_report(out: Path, data: str, families: list[str]) -> dict:
    """The structure every report has: files, families, kinds, no NaN, figures."""
    report, results = out / "report.md", out / "results.json"
    assert report.is_file() and results.is_file()
    res = json.loads(results.read_text())  # strict JSON: a NaN would be written as NaN ...
    text = report.read_text()
    assert res["data"] == data and res["preset"] == "tiny"
    assert [r["family"] for r in res["results"] if r["baseline"] is None] == families
    classical = [r for r in res["results"] if r["baseline"] is not None]
    assert classical, "the classical baselines' rows are missing"
    for name in families:
        assert f"| {name} |" in text, f"{name} missing from the report's table"
    for key in ("Measured", "Command: `ppgen benchmark", "Versions: ppgen", "torch"):
        assert key in text
    assert res["hardware"] and res["versions"]["torch"] and res["versions"]["ppgen"]
    for r in res["results"]:
        lk = r["likelihood"]
        assert lk["kind"] in KINDS, r["family"]
        assert lk["kind"] in text
        assert lk["estimator"]
        assert r["steps"] == (5 if r["baseline"] is None else 0)
        assert isinstance(r["latents"], list) and isinstance(r["posterior"], list)
    bad = [(p, v) for p, v in _numbers(res) if not math.isfinite(v)]
    assert not bad, f"non-finite numbers in results.json: {bad}"  # ... and fail here
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert not [line for line in rows if re.search(r"\bnan\b", line, re.IGNORECASE)]
    figures = ["samples-data.png", "training-curves.png"]
    for fig in figures + [f"samples-{f}.png" for f in families]:
        assert fig in res["figures"]
    for fig in res["figures"]:
        assert (out / fig).is_file() and (out / fig).stat().st_size > 0, fig
        assert f"]({fig})" in text
    return res


def test_tiny_benchmark_on_digits_one_family_of_each_kind(tmp_path):
    results = benchmark.run(data="digits", preset="tiny", families=REPRESENTATIVE,
                            out=tmp_path, progress=False)
    assert [r.family for r in results if r.baseline is None] == REPRESENTATIVE
    assert [r.family for r in results if r.baseline is not None] == ["mixture"]  # classical
    res = _check_report(tmp_path, "digits", REPRESENTATIVE)
    by = {r["family"]: r for r in res["results"]}
    for name, kind in EXPECTED_KIND.items():
        assert by[name]["likelihood"]["kind"] == kind, name
        assert by[name]["kl_to_data"] is None  # digits' density is unknown
    # latents and the posterior methods over them
    assert by["made"]["latents"] == [] and by["made"]["posterior"] == []
    assert by["vae"]["latents"] == ["z"] and by["vae"]["posterior"] == ["guide", "nuts"]
    assert "nuts" in by["gan"]["posterior"] and "z" in by["gan"]["latents"]
    # an implicit model's observation scale is chosen (on val) and recorded
    assert by["gan"]["likelihood"]["observation_scale"] > 0
    assert not any(f.startswith("density-") for f in res["figures"])  # not 2-D data


def test_tiny_benchmark_on_2d_toy_reports_kl_and_the_density_figure(tmp_path):
    benchmark.run(data="8gaussians", preset="tiny", families=["realnvp"], out=tmp_path,
                  progress=False)
    res = _check_report(tmp_path, "8gaussians", ["realnvp"])
    (r,) = [x for x in res["results"] if x["baseline"] is None]
    entropy = ppgen.datasets.load("8gaussians", "test").entropy
    for c in res["results"]:  # the classical rows: the same identity, and their own figures
        assert c["kl_to_data"] == pytest.approx(c["likelihood"]["nats"] - entropy, abs=1e-12)
        assert f"density-{c['family']}.png" in res["figures"]
    # KL(p_data || p_model) = NLL - H(p_data), in nats, for an exact density: non-negative up
    # to the test split's sampling error (5000 points), and exactly the identity
    assert r["likelihood"]["kind"] == "exact"
    assert r["kl_to_data"] == pytest.approx(r["likelihood"]["nats"] - entropy, abs=1e-12)
    assert r["kl_to_data"] > -3 * r["likelihood"]["stderr"]
    assert "density-realnvp.png" in res["figures"]
    assert (tmp_path / "density-realnvp.png").stat().st_size > 0


def test_families_refusing_the_data_are_skipped_unless_named(tmp_path, monkeypatch):
    tiny = benchmark.PRESETS["tiny"]
    preset = {**tiny, "families": {k: tiny["families"][k] for k in ("pixelcnn", "independent")}}
    monkeypatch.setitem(benchmark.PRESETS, "tiny", preset)
    results = benchmark.run(data="moons", preset="tiny", out=tmp_path, progress=False)
    assert [r.family for r in results if r.baseline is None] == ["independent"]
    res = json.loads((tmp_path / "results.json").read_text())
    assert "pixelcnn" in res["skipped"] and "event_shape" in res["skipped"]["pixelcnn"]
    assert "Skipped" in (tmp_path / "report.md").read_text()
    with pytest.raises(ValueError, match="event_shape"):
        benchmark.run(data="moons", preset="tiny", families=["pixelcnn"], out=tmp_path,
                      progress=False)


def test_unknown_preset_or_family_is_refused_before_work(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        benchmark.run(preset="huge", out=tmp_path)
    with pytest.raises(ValueError, match="no budget"):
        benchmark.run(preset="tiny", families=["no-such-family"], out=tmp_path)
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize("family", list(benchmark.PRESETS["tiny"]["families"]))
def test_every_tiny_family_builds_on_digits(family):
    if family not in ppgen.models.names():
        pytest.skip(f"{family} is not registered")
    spec = benchmark.PRESETS["tiny"]["families"][family]
    train = ppgen.datasets.load("digits", "train")
    model = ppgen.build(family, train, **spec.get("build", {}))
    assert tuple(model.event_shape) == tuple(train.event_shape)
    assert spec["fit"]["steps"] == 5


def test_presets_budget_every_registered_family():
    registered = set(ppgen.models.names())
    assert registered <= set(benchmark.PRESETS["full"]["families"])
    quick = set(benchmark.PRESETS["quick"]["families"])
    assert set(benchmark.PRESETS["tiny"]["families"]) == quick
    # the quick preset runs every kind of family (a subset of the flows only)
    assert {"independent", "nade", "made", "pixelcnn", "gated-pixelcnn", "vae", "ddpm",
            "gan"} & registered <= quick


@pytest.mark.slow
def test_tiny_preset_end_to_end_through_the_cli(tmp_path):
    """Every family of the tiny preset, through ``ppgen benchmark``, as a user runs it."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "ppgen", "benchmark", "--preset", "tiny", "--out",
         str(tmp_path), "--no-progress"],
        cwd=root, capture_output=True, text=True, timeout=900,
        env={**__import__("os").environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    families = [f for f in benchmark.PRESETS["tiny"]["families"] if f in ppgen.models.names()]
    _check_report(tmp_path, "digits", families)
    assert "| family | bits/dim |" in proc.stdout


# ---- benchmarks/run.py: the table of ratios and goals -----------------------------------------


def test_goal_holds_on_its_side_and_never_for_nan():
    from benchmarks.run import Goal

    at_least, at_most = Goal(">=", 1.2), Goal("<=", 0.5)
    assert at_least.holds(1.2) and at_least.holds(3.0) and not at_least.holds(1.19)
    assert at_most.holds(0.5) and at_most.holds(0.1) and not at_most.holds(0.51)
    for g in (at_least, at_most):
        assert not g.holds(math.nan) and not g.holds(math.inf) and not g.holds(-math.inf)
    assert str(at_least) == ">= 1.2" and str(at_most) == "<= 0.5"
    with pytest.raises(ValueError, match="op"):
        Goal(">", 1.0)


def test_table_marks_goals_and_errors():
    from benchmarks.run import Goal, Row, table

    rows = [
        Row("a", "fast vs slow", 25.0, Goal(">=", 20.0), "3 rounds"),
        Row("a", "overhead", 0.61, Goal("<=", 0.5)),
        Row("b", "b", math.nan, None, error="ModuleNotFoundError: No module named 'zuko'"),
    ]
    lines = table(rows).splitlines()
    assert lines[0] == "| comparison | ratio | goal | holds | setting |"
    assert lines[2] == "| fast vs slow | 25 | >= 20 | yes | 3 rounds |"
    assert lines[3] == "| overhead | 0.61 | <= 0.5 | **no** |  |"
    assert "error: ModuleNotFoundError" in lines[4]
    assert [r.holds for r in rows] == [True, False, None]
    assert rows[1].to_dict()["holds"] is False and rows[1].to_dict()["goal"] == "<= 0.5"


def test_run_keeps_going_after_a_failing_comparison_and_main_writes_json(tmp_path, monkeypatch,
                                                                         capsys):
    from benchmarks import run as bench_run
    from benchmarks.run import Goal, Row

    calls = []

    def ok(quick, seed):
        calls.append(("ok", quick, seed))
        print("module chatter")  # goes to stderr, not into the table on stdout
        return [Row("ok", "x over y", 2.0, Goal(">=", 1.5))], {"raw": 1}

    def broken(quick, seed):
        raise RuntimeError("peer missing")

    fake = {"broken": broken, "ok": ok}
    rows, raw = bench_run.run(None, quick=True, seed=3, comparisons=fake)
    assert calls == [("ok", True, 3)]
    assert [r.error is not None for r in rows] == [True, False]
    assert "RuntimeError: peer missing" in rows[0].error and raw == {"ok": {"raw": 1}}
    with pytest.raises(ValueError, match="unknown comparison"):
        bench_run.run(["nope"], comparisons=fake)

    monkeypatch.setattr(bench_run, "COMPARISONS", fake)
    capsys.readouterr()
    path = tmp_path / "r.json"
    assert bench_run.main(["--quick", "--only", "ok", "--json", str(path)]) == 0
    out = capsys.readouterr()
    assert "| x over y | 2 | >= 1.5 | yes |" in out.out and "module chatter" not in out.out
    got = json.loads(path.read_text())
    assert got["quick"] is True and got["rows"][0]["holds"] is True
    assert got["raw"]["ok"]["raw"] == 1
    assert bench_run.main(["--only", "broken"]) == 1


def test_flow_quality_rows_compare_medians_over_seeds():
    from benchmarks.run import quality_rows

    results = [
        {"data": "moons", "flow": "maf", "lib": lib, "seed": s, "test_nats": v}
        for lib, values in (("ppgen", [0.50, 0.34, 0.36]), ("zuko", [0.37, 0.38, 0.40]),
                            ("nflows", [0.30, 0.30, 0.30]))
        for s, v in enumerate(values)
    ] + [
        {"data": "digits", "flow": "realnvp", "lib": "ppgen", "seed": 0, "test_bpd": 2.30},
        {"data": "digits", "flow": "realnvp", "lib": "zuko", "seed": 0, "test_bpd": 2.31},
        {"data": "digits", "flow": "realnvp", "lib": "nflows", "seed": 0, "test_bpd": 2.20},
        {"data": "digits", "flow": "gmm-5", "lib": "sklearn", "seed": 0, "test_bpd": 2.0},
    ]
    rows = {r.comparison: r for r in quality_rows(results)}
    moons = rows["MAF test NLL on moons: ppgen / zuko"]  # against zuko, median over 3 seeds
    assert moons.ratio == pytest.approx(0.36 / 0.38) and moons.holds
    digits = rows["RealNVP test NLL on digits: ppgen / best peer (nflows)"]
    assert digits.ratio == pytest.approx(2.30 / 2.20) and digits.holds is False
    assert len(rows) == 2
