"""``ppgen sample --labels`` for conditional models (a conditional VAE on digits' labels)."""

from __future__ import annotations

import numpy as np
import pytest

import ppgen
from ppgen.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    train = ppgen.datasets.load("digits", "train").subset(64)
    cond, plain = root / "cond", root / "plain"
    for out, model in [
        (cond, ppgen.build("vae", train, context_classes=10, hidden=[16], latent=2)),
        (plain, ppgen.build("independent", train)),
    ]:
        ppgen.fit(model, train, steps=2, batch_size=16, out=out, progress=False, device="cpu")
    return cond, plain


def _sample(run, out, *extra):
    return main(["sample", str(run), "-n", "6", "-o", str(out), "--device", "cpu", *extra])


def test_labels_condition_the_samples(runs, tmp_path):
    cond, _ = runs
    paths = {}
    for labels in ("3", "3,3", "0,1,2"):
        paths[labels] = tmp_path / f"{labels.replace(',', '_')}.npy"
        assert _sample(cond, paths[labels], "--labels", labels) == 0
    x = {k: np.load(p) for k, p in paths.items()}
    assert x["3"].shape == (6, 1, 8, 8)
    assert np.array_equal(x["3"], x["3,3"])  # the same labels and seed: the same samples
    assert not np.array_equal(x["3"], x["0,1,2"])  # other labels: other samples


@pytest.mark.parametrize(
    ("which", "extra", "match"),
    [
        ("cond", [], "conditional on class labels: pass --labels"),
        ("cond", ["--labels", "a,b"], "integers separated by commas"),
        ("cond", ["--labels", ","], "--labels is empty"),
        ("cond", ["--labels", "10"], "labels must lie in 0..9"),
        ("plain", ["--labels", "1"], "unconditional: drop --labels"),
    ],
)
def test_bad_or_missing_labels_exit_2_with_one_line(runs, tmp_path, capsys, which, extra, match):
    run = runs[0] if which == "cond" else runs[1]
    assert _sample(run, tmp_path / "x.npy", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
