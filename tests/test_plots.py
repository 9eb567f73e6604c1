"""The figures of ppgen.plots render and write files (analysis figures: HDR, PIT, densities),
and the reports of ppgen.reports that score a model and draw it; plots never import inference."""

from __future__ import annotations

import math

import pytest
import torch

import ppgen
from ppgen import plots, reports


def test_analysis_figures_write_pngs(tmp_path):
    test = ppgen.datasets.load("8gaussians", "test").subset(1000)
    m = ppgen.build("independent", test, components=2)
    hdr = ppgen.analysis.hdr_coverage(m, test, num_samples=1000, levels=[0.25, 0.5, 0.75])
    plots.hdr_calibration({"independent": hdr, "again": hdr}, tmp_path / "hdr.png")
    plots.pit_histogram(ppgen.analysis.pit(m, test, num_samples=1000), tmp_path / "pit.png")
    fig = reports.density_heatmap(
        m, test.data, tmp_path / "density.png", true_log_prob=test.true_log_prob, size=40
    )
    assert "exact" in fig.axes[0].get_title() and fig.axes[1].get_title() == "true density"
    plots.density_heatmap(lambda x: -0.5 * (x**2).sum(1) - math.log(2 * math.pi), size=20)
    plots.samples_vs_data(m.sample(500, seed=0), test.data, tmp_path / "points.png")
    digits = ppgen.datasets.load("digits", "test")
    noise = torch.randint(0, 17, (16, 1, 8, 8)).float()
    plots.samples_vs_data(noise, digits.data, tmp_path / "digits.png", levels=17, n=16)
    for name in ("hdr", "pit", "density", "points", "digits"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000, name


def test_plots_import_no_scoring_and_take_no_model(tmp_path):
    """``ppgen.plots`` names neither the inference nor the models layer; drawing a model there is
    the deprecated path: it warns and forwards to ``ppgen.reports`` with the same figure."""
    import ast
    import inspect as pyinspect

    tree = ast.parse(pyinspect.getsource(plots))
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith(("ppgen.inference", "ppgen.models"))]
    test = ppgen.datasets.load("moons", "test").subset(200)
    m = ppgen.build("independent", test, components=2)
    new = reports.density_heatmap(m, test.data, size=12)
    with pytest.warns(DeprecationWarning, match="ppgen.reports.density_heatmap"):
        old = plots.density_heatmap(m, test.data, size=12)
    assert old.axes[0].get_title() == new.axes[0].get_title()
    assert (old.axes[0].images[0].get_array() == new.axes[0].images[0].get_array()).all()
    grid = plots.density_grid(lambda x: -0.5 * (x**2).sum(1), plots.density_bounds(None), 12)
    assert plots.density_heatmap(grid, size=12).axes[0].get_title() == "learned"
    with pytest.raises(ValueError, match="size"):
        plots.density_heatmap(grid, size=13)


def test_training_curve_takes_a_history_or_its_dict(tmp_path):
    from ppgen.inference.trainer import History

    h = History(train=[{"step": 1, "loss": 3.0, "time": 0.1}, {"step": 2, "loss": 2.0,
                                                               "time": 0.2}],
                val=[{"step": 2, "val_loss": 2.5}])
    for i, history in enumerate((h, h.to_dict())):
        fig = plots.training_curve(history, tmp_path / f"curve{i}.png")
        assert [len(line.get_xdata()) for line in fig.axes[0].lines] == [2, 1]
        assert len(plots.training_curves({"a": history, "b": history}).axes) == 2
    assert reports.write_training_curve(h.to_dict(), tmp_path) == tmp_path / "training_curve.png"
    assert (tmp_path / "training_curve.png").stat().st_size > 1000
    assert reports.write_training_curve(h, tmp_path / "missing" / "dir") is None
