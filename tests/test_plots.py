"""The figures of ppgen.plots render and write files (analysis figures: HDR, PIT, densities)."""

from __future__ import annotations

import math

import torch

import ppgen
from ppgen import plots


def test_analysis_figures_write_pngs(tmp_path):
    test = ppgen.datasets.load("8gaussians", "test").subset(1000)
    m = ppgen.build("independent", test, components=2)
    hdr = ppgen.analysis.hdr_coverage(m, test, num_samples=1000, levels=[0.25, 0.5, 0.75])
    plots.hdr_calibration({"independent": hdr, "again": hdr}, tmp_path / "hdr.png")
    plots.pit_histogram(ppgen.analysis.pit(m, test, num_samples=1000), tmp_path / "pit.png")
    fig = plots.density_heatmap(
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
