"""Series datasets (issue 24): windows split in time, standardization on the training part,
the embedded series, user files, and bad input refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ppgen
from ppgen.datasets import DataError
from ppgen.datasets.series import from_series, lorenz_series, series_split_rows, windows


@given(length=st.integers(40, 400), window=st.integers(1, 6), seed=st.integers(0, 99))
@settings(max_examples=25, deadline=None)
def test_splits_are_contiguous_in_time_and_never_share_a_row(length, window, seed):
    x = np.random.RandomState(seed).randn(length, 2)
    parts = {s: from_series(x, window, s) for s in ("train", "val", "test")}
    rows = [parts[s].rows for s in ("train", "val", "test")]
    assert rows[0][0] == 0 and rows[0][1] == rows[1][0] and rows[1][1] == rows[2][0]
    assert rows[2][1] == length
    train = parts["train"]
    # every training window lies in the training rows: its last row is before validation
    assert len(train) == rows[0][1] - window + 1
    std = torch.as_tensor(x.std(0), dtype=torch.float32)
    last = train.data[-1, -1] * train.std + train.mean
    assert torch.allclose(last, torch.as_tensor(x[rows[0][1] - 1], dtype=torch.float32),
                          atol=1e-4 * float(std.max()) + 1e-5)
    # held-out windows do not overlap: every row scored once
    test = parts["test"]
    assert len(test) == (rows[2][1] - rows[2][0]) // window
    # standardization from the training part only
    t0, t1 = series_split_rows(length, "train")
    assert torch.allclose(train.mean, torch.as_tensor(x[t0:t1].mean(0), dtype=torch.float32))
    assert torch.equal(test.mean, train.mean) and torch.equal(test.std, train.std)


def test_windows_are_time_first():
    s = torch.arange(10.0)[:, None].repeat(1, 2)
    w = windows(s, 4, 3)
    assert w.shape == (3, 4, 2) and torch.equal(w[1, :, 0], torch.tensor([3.0, 4, 5, 6]))


def test_lorenz_is_deterministic_and_embedded():
    a, states = lorenz_series(200, seed=0)
    b, _ = lorenz_series(200, seed=0)
    assert np.array_equal(a, b) and a.shape == (200, 3)
    assert 0.5 < np.std(a - states) < 1.5  # observation noise of scale 1
    ds = ppgen.datasets.load("lorenz", "test")
    assert ds.event_shape == (32, 3) and ds.kind == "continuous"
    assert "lorenz" in ppgen.datasets.names()


@pytest.mark.parametrize("name", ["co2", "sunspots", "elnino", "macro"])
def test_statsmodels_series_load_complete_and_standardized(name):
    pytest.importorskip("statsmodels")
    train = ppgen.datasets.load(name, "train")
    test = ppgen.datasets.load(name, "test")
    assert train.event_shape[0] == ppgen.datasets.series.SERIES[name][0]
    assert torch.isfinite(train.data).all() and torch.isfinite(test.data).all()
    assert train.series.mean(0).abs().max() < 1e-4
    assert test.rows[0] == len(train.history) + len(train.series) + len(
        ppgen.datasets.load(name, "val").series)


def test_co2_gaps_are_filled_by_interpolation_between_neighbouring_months():
    pytest.importorskip("statsmodels")
    from ppgen.datasets.series import raw_series

    co2 = raw_series("co2")
    assert co2.shape == (526, 1) and np.isfinite(co2).all()


def test_missing_statsmodels_is_a_clear_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_statsmodels(name, *args, **kwargs):
        if name.startswith("statsmodels"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_statsmodels)
    with pytest.raises(DataError, match=r"pip install 'ppgen\[sequences\]'"):
        ppgen.datasets.load("sunspots", "train")


def test_user_series_files(tmp_path):
    x = np.random.RandomState(0).randn(120, 3)
    np.save(tmp_path / "s.npy", x)
    np.savez(tmp_path / "s.npz", x=x)
    np.savetxt(tmp_path / "s.csv", x, delimiter=",", header="a,b,c", comments="")
    for f in ("s.npy", "s.npz", "s.csv"):
        ds = ppgen.datasets.load(f"{tmp_path / f}#window=8,stride=2", "train")
        assert ds.event_shape == (8, 3) and len(ds) == (84 - 8) // 2 + 1, f
    raw = ppgen.datasets.load(f"{tmp_path / 's.npy'}#window=8,standardize=false", "all")
    assert torch.allclose(raw.data[0], torch.as_tensor(x[:8], dtype=torch.float32))


def test_bad_series_are_refused_in_one_line(tmp_path):
    with pytest.raises(DataError, match="ragged"):
        from_series([[1.0, 2.0], [3.0]] * 10, 2)
    with pytest.raises(DataError, match="row 5, column 2"):
        x = np.zeros((50, 2))
        x[4, 1] = np.nan
        from_series(x, 4)
    with pytest.raises(DataError, match=r"window=40 is longer than the test part .* 7 rows"):
        from_series(np.random.randn(50), 40, "test")
    with pytest.raises(DataError, match="window=60 is longer than the series"):
        from_series(np.random.randn(50), 60, "all")
    with pytest.raises(DataError, match="window must be a positive int"):
        from_series(np.random.randn(50), 0)
    with pytest.raises(DataError, match="constant on the training part"):
        from_series(np.ones((50, 1)), 4)
    with pytest.raises(DataError, match="unknown series"):
        ppgen.datasets.series.load_series("nile")
    (tmp_path / "gap.csv").write_text("1,2\n3,\n5,6\n" * 10)
    with pytest.raises(DataError, match="row 2, column 2 is empty"):
        ppgen.datasets.load(f"{tmp_path / 'gap.csv'}#window=3")
    np.save(tmp_path / "s.npy", np.random.randn(30, 2))
    with pytest.raises(DataError, match="cannot read option 'size=3'"):
        ppgen.datasets.load(f"{tmp_path / 's.npy'}#window=3,size=3")
    with pytest.raises(DataError, match="kind/levels do not apply"):
        ppgen.datasets.load(f"{tmp_path / 's.npy'}#window=3", kind="discrete")


def test_lorenz_particle_filter_is_seeded_and_no_sharper_than_the_observation_noise():
    from ppgen.datasets.series import lorenz_log_prob

    obs, _ = lorenz_series(400, seed=0)
    w = windows(torch.as_tensor(obs), 8, 8)[:6]
    a = lorenz_log_prob(w, particles=500, seed=0)
    assert torch.equal(a, lorenz_log_prob(w, particles=500, seed=0))
    b = lorenz_log_prob(w, particles=500, seed=1)
    assert ((a - b).abs() / 8 < 0.5).all()
    # the one-step predictive density is the noise convolved with the state's spread: its
    # expected log-density is below the observation noise's own, -1.5 log(2 pi e) per step
    assert float(a.mean() / 8) < -1.5 * np.log(2 * np.pi * np.e)
    with pytest.raises(DataError, match=r"windows must be \(N, T, 3\)"):
        lorenz_log_prob(np.zeros((2, 5)))
