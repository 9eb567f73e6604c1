"""Sample-quality metrics, each against a case with a known answer."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ppgen
from ppgen.inference import metrics

# The 8gaussians mixture as ppgen.datasets builds it: radius 2, std 0.1, uniform weights.
EIGHT_CENTERS = 2.0 * torch.tensor(
    [[math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)] for k in range(8)]
)
EIGHT_STD = 0.1


# ---- mode coverage --------------------------------------------------------------------------


def test_mode_coverage_of_the_true_mixture():
    x = ppgen.datasets.load("8gaussians", "test").data  # 5000 draws of the mixture itself
    r = metrics.mode_coverage(x, EIGHT_CENTERS, EIGHT_STD)
    assert (r.modes_covered, r.num_modes, r.value) == (8, 8, 1.0)
    # P(|N(0, s^2 I_2)| <= 3 s) = 1 - exp(-9/2); 4 binomial standard errors (false alarm ~6e-5)
    p = 1 - math.exp(-4.5)
    assert abs(r.high_quality_fraction - p) < 4 * math.sqrt(p * (1 - p) / len(x))
    assert sum(r.counts) == round(r.high_quality_fraction * len(x))
    assert r.reverse_kl < 0.01  # 8 nearly equal shares
    assert r.num_x == len(x) and r.min_share == pytest.approx(0.2 / 8)


def test_mode_coverage_of_a_collapsed_generator():
    x = ppgen.datasets.load("8gaussians", "test").data
    mode = torch.cdist(x, EIGHT_CENTERS).argmin(1)
    kept = x[mode < 3]  # a generator that only found modes 0, 1, 2 (about equally)
    r = metrics.mode_coverage(kept, EIGHT_CENTERS, EIGHT_STD)
    assert r.modes_covered == 3 and r.counts[3:] == (0,) * 5
    q = torch.tensor(r.counts[:3], dtype=torch.float64) / sum(r.counts)
    assert r.reverse_kl == pytest.approx(float((q * (q * 8).log()).sum()), rel=1e-12)
    assert r.reverse_kl == pytest.approx(math.log(8 / 3), abs=0.01)


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(0, 30), min_size=2, max_size=9),
    bad=st.integers(0, 20),
    share=st.sampled_from([None, 0.0, 0.05, 0.2]),
    seed=st.integers(0, 2**16),
)
def test_mode_coverage_counts_exactly(counts, bad, share, seed):
    k = len(counts)
    g = torch.Generator().manual_seed(seed)
    centers = 10.0 * torch.randn(k, 3, generator=g, dtype=torch.float64)
    centers[:, 0] += 100.0 * torch.arange(k)  # well separated: nearest centre is the own one
    std, threshold = 0.5, 3.0
    points = []
    for j, c in enumerate(counts):
        direction = torch.randn(c, 3, generator=g, dtype=torch.float64)
        direction = direction / direction.norm(dim=1, keepdim=True)
        radius = threshold * std * torch.rand(c, 1, generator=g, dtype=torch.float64)
        points.append(centers[j] + radius * direction)
    # bad samples: on the far side of every centre, beyond threshold * std of all of them
    far = centers[0] + torch.tensor([-50.0, 0.0, 0.0], dtype=torch.float64)
    points.append(far.expand(bad, 3))
    x = torch.cat(points)
    if len(x) == 0:
        return
    r = metrics.mode_coverage(x, centers, std, threshold=threshold, min_share=share)
    n = len(x)
    min_share = 0.2 / k if share is None else share
    expected_cover = sum(c >= min_share * n and c > 0 for c in counts)
    assert r.counts == tuple(counts)
    assert r.modes_covered == expected_cover and r.num_modes == k
    assert r.high_quality_fraction == pytest.approx(sum(counts) / n)
    assert r.value == pytest.approx(expected_cover / k)
    if sum(counts):
        q = [c / sum(counts) for c in counts]
        kl = sum(p * math.log(p * k) for p in q if p > 0)
        assert r.reverse_kl == pytest.approx(kl, abs=1e-12)
    else:
        assert math.isnan(r.reverse_kl)


def test_mode_coverage_refuses_bad_input():
    x = torch.zeros(10, 2)
    with pytest.raises(ValueError, match="dims"):
        metrics.mode_coverage(x, torch.zeros(3, 5), 0.1)
    with pytest.raises(ValueError, match="std"):
        metrics.mode_coverage(x, torch.zeros(3, 2), -1.0)
    with pytest.raises(ValueError, match="non-finite"):
        metrics.mode_coverage(torch.full((4, 2), math.nan), torch.zeros(3, 2), 0.1)
    with pytest.raises(ValueError, match="weights"):
        metrics.mode_coverage(x, torch.zeros(3, 2), 0.1, weights=torch.ones(3))


# ---- exact agreement with naive formulas ----------------------------------------------------


def _naive_mmd2(k_xx, k_yy, k_xy):
    n, m = k_xx.shape[0], k_yy.shape[0]
    sxx = k_xx.sum() - k_xx.diagonal().sum()
    syy = k_yy.sum() - k_yy.diagonal().sum()
    return float(sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * k_xy.sum() / (n * m))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 40),
    m=st.integers(2, 40),
    d=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    bandwidth=st.floats(0.3, 3.0),
)
def test_kernel_statistics_equal_the_naive_unbiased_formulas(n, m, d, seed, bandwidth):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = 0.5 + 1.5 * torch.randn(m, d, generator=g, dtype=torch.float64)

    def gauss(a, b):
        return torch.exp(-(torch.cdist(a, b) ** 2) / (2 * bandwidth**2))

    r = metrics.mmd(x, y, bandwidth=bandwidth, num_permutations=0)
    assert r.value == pytest.approx(_naive_mmd2(gauss(x, x), gauss(y, y), gauss(x, y)), abs=1e-12)
    assert r.p_value is None

    def dist(a, b):
        return -torch.cdist(a, b)

    e = metrics.energy_distance(x, y, num_permutations=0)
    # 2 E|X - Y| - E|X - X'| - E|Y - Y'| with U-statistics for the within-sample terms
    naive = _naive_mmd2(dist(x, x), dist(y, y), dist(x, y))
    assert e.value == pytest.approx(naive, abs=1e-10)

    if min(n, m) >= 4:
        s = min(n, m)

        def poly(a, b):
            return (a @ b.T / d + 1) ** 3

        k = metrics.kid(x[:s], y[:s], subset_size=s, num_subsets=3, num_permutations=0)
        # every subset is the whole sample (in another order): each estimate is the full one
        want = _naive_mmd2(poly(x[:s], x[:s]), poly(y[:s], y[:s]), poly(x[:s], y[:s]))
        assert k.value == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert k.stderr == pytest.approx(0.0, abs=1e-5 * (1 + abs(want)))


def test_permutation_null_is_the_statistic_of_relabelled_samples():
    # the blocked, all-permutations-at-once evaluation equals recomputing the statistic for a
    # relabelling; check it with the only relabelling we control: swapping the two samples
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 3, generator=g), torch.randn(30, 3, generator=g) + 0.3
    a = metrics.mmd(x, y, bandwidth=1.0, num_permutations=0).value
    b = metrics.mmd(y, x, bandwidth=1.0, num_permutations=0).value
    assert a == pytest.approx(b, abs=1e-12)
    r = metrics.mmd(x, y, bandwidth=1.0, num_permutations=500, seed=3)
    assert 1 / 501 <= r.p_value <= 1
    assert r.details["null_std"] > 0 and abs(r.details["null_mean"]) < 3 * r.details["null_std"]


# ---- calibration under the null and power against a shift -----------------------------------


@pytest.mark.parametrize("metric", [metrics.mmd, metrics.energy_distance])
def test_p_value_is_uniform_under_the_null(metric):
    from scipy.stats import kstest

    # 100 seeded repeats of two samples of one distribution. The permutation p-value takes
    # values in {1/200, ..., 1} and is uniform on them; a KS test against U(0, 1) at level
    # 0.001 (false alarm <= 0.001 per metric, slightly less for the discreteness).
    p = []
    for seed in range(100):
        g = torch.Generator().manual_seed(1000 + seed)
        x, y = torch.randn(30, 2, generator=g), torch.randn(25, 2, generator=g)
        p.append(metric(x, y, num_permutations=199, seed=seed).p_value)
    assert kstest(p, "uniform").pvalue > 1e-3, metric.__name__


@pytest.mark.parametrize("metric", [metrics.mmd, metrics.energy_distance, metrics.kid])
def test_power_against_a_small_shift(metric):
    # a shift of half a standard deviation in one of two coordinates at n = 200: the tests'
    # power at level 0.05 is above 0.95 (measured), so 16 or more rejections of 20 fail to
    # happen with probability < 1e-3.
    rejections = 0
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g)
        x[:, 0] += 0.5
        rejections += metric(x, y, num_permutations=99, seed=seed).p_value <= 0.05
    assert rejections >= 16, (metric.__name__, rejections)


def test_c2st_p_value_is_valid_under_the_null_and_has_power():
    # the exact hypergeometric p-value is discrete and super-uniform: P(p <= a) <= a. Checked at
    # four levels over 200 repeats with 3 binomial standard errors of slack (false alarm ~0.5%).
    p = []
    for seed in range(200):
        g = torch.Generator().manual_seed(5000 + seed)
        x, y = torch.randn(40, 2, generator=g), torch.randn(40, 2, generator=g)
        p.append(metrics.c2st(x, y, classifier="knn", seed=seed).p_value)
    p = torch.tensor(p)
    for a in (0.05, 0.1, 0.2, 0.5):
        rate = float((p <= a).double().mean())
        assert rate <= a + 3 * math.sqrt(a * (1 - a) / len(p)), (a, rate)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(300, 2, generator=g), torch.randn(300, 2, generator=g)
    x[:, 0] *= 3.0  # a scale change: invisible to the means, obvious to a classifier
    for classifier in ("mlp", "knn"):
        r = metrics.c2st(x, y, classifier=classifier)
        assert r.value > 0.6 and r.p_value < 1e-3, (classifier, r)
        assert r.stderr == pytest.approx(math.sqrt(r.value * (1 - r.value) / 300))


# ---- Frechet distance: closed form ----------------------------------------------------------


def _exact_moments(z, mean, cov):
    """Transform rows of z so their sample mean and (unbiased) covariance are exactly given."""
    z = z - z.mean(0)
    white = torch.linalg.cholesky(torch.cov(z.T).reshape(z.shape[1], z.shape[1]))
    z = torch.linalg.solve_triangular(white, z.T, upper=False).T  # identity sample covariance
    return mean + z @ torch.linalg.cholesky(cov).T


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_frechet_distance_between_gaussians_equals_the_closed_form(d, seed):
    from scipy.linalg import sqrtm

    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    b = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov1, cov2 = a @ a.T + 0.1 * torch.eye(d), b @ b.T + 0.1 * torch.eye(d)
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g)
    x = _exact_moments(torch.randn(50, d, generator=g, dtype=torch.float64), mu1, cov1)
    y = _exact_moments(torch.randn(70, d, generator=g, dtype=torch.float64), mu2, cov2)
    root = sqrtm(cov1.numpy() @ cov2.numpy()).real
    want = float(((mu1 - mu2) ** 2).sum() + cov1.trace() + cov2.trace() - 2 * root.trace())
    r = metrics.frechet_distance(x, y, features="raw", num_bootstrap=0)
    assert r.value == pytest.approx(want, rel=1e-8, abs=1e-8)
    assert r.stderr is None and r.features == "raw"
    assert metrics.frechet_distance(x, x, num_bootstrap=0).value == pytest.approx(0, abs=1e-8)


def test_frechet_distance_takes_a_feature_function():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(500, 3, generator=g), torch.randn(500, 3, generator=g)

    def first_coordinate(t):
        return t[:, :1]

    r = metrics.frechet_distance(x, y, features=first_coordinate)
    want = metrics.frechet_distance(x[:, :1], y[:, :1], features="raw")
    assert r.value == pytest.approx(want.value, rel=1e-12)
    assert r.features == "first_coordinate" and r.details["feature_dims"] == 1
    assert r.stderr > 0
    with pytest.raises(ValueError, match="unknown features"):
        metrics.frechet_distance(x, y, features="inception")


# ---- precision / recall / density / coverage -------------------------------------------------


def _naive_prdc(x, y, k):
    def radius(z):
        d = torch.cdist(z, z)
        d.fill_diagonal_(math.inf)
        return d.sort(1).values[:, k - 1]

    ry, rx = radius(y), radius(x)
    dxy = torch.cdist(x, y)  # (N, M)
    inside_y = dxy <= ry[None]  # sample j inside data ball i
    precision = inside_y.any(1).double().mean()
    recall = (dxy.T <= rx[None]).any(1).double().mean()
    density = inside_y.sum().double() / (k * x.shape[0])
    coverage = inside_y.any(0).double().mean()
    return [float(v) for v in (precision, recall, density, coverage)]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(7, 60), m=st.integers(7, 60), k=st.integers(1, 6), seed=st.integers(0, 999))
def test_precision_recall_equal_the_naive_definitions(n, m, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = torch.rand(m, 2, generator=g, dtype=torch.float64) * 3 - 1
    r = metrics.precision_recall(x, y, k=k, features="raw")
    got = [r.precision, r.recall, r.density, r.coverage]
    assert got == pytest.approx(_naive_prdc(x, y, k), abs=1e-12)


def test_precision_recall_on_nested_supports():
    g = torch.Generator().manual_seed(0)
    big = torch.rand(2000, 2, generator=g)  # data: the unit square
    small = 0.5 * torch.rand(2000, 2, generator=g)  # samples: a quarter of it
    r = metrics.precision_recall(small, big, k=5)
    # every sample lies in the data's support; only a quarter of the data in the samples'
    # (k-NN balls reach past a support's edge by about one radius, so recall sits a little above
    # 0.25: the 2000 samples' 5-NN radius is ~0.015 on a square of side 0.5)
    assert r.precision > 0.98
    assert 0.25 <= r.recall <= 0.25 * (1 + 2 * 0.015 / 0.5) ** 2 + 0.03
    swapped = metrics.precision_recall(big, small, k=5)
    assert swapped.recall > 0.98 and 0.25 <= swapped.precision <= 0.32


def test_density_and_coverage_of_identical_distributions():
    # Naeem et al. 2020: for samples and data from one distribution, E[density] = 1 and
    # E[coverage] = 1 - prod_{i=1..k} (N - i) / (N + M - i). Checked on the mean of 20 seeded
    # repeats within 4 standard errors of that mean (false alarm < 0.2%, t with 19 dof).
    n = m = 400
    k = 5
    dens, cov = [], []
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        r = metrics.precision_recall(
            torch.randn(m, 2, generator=g), torch.randn(n, 2, generator=g), k=k
        )
        dens.append(r.density)
        cov.append(r.coverage)
    expected_cov = 1 - math.prod((n - i) / (n + m - i) for i in range(1, k + 1))
    for values, expected in ((dens, 1.0), (cov, expected_cov)):
        t = torch.tensor(values, dtype=torch.float64)
        assert abs(float(t.mean()) - expected) < 4 * float(t.std()) / math.sqrt(len(t)), expected


# ---- the digits feature classifier ----------------------------------------------------------


def test_digits_classifier_is_deterministic_and_cached(tmp_path, monkeypatch):
    from ppgen.inference.metrics import features

    monkeypatch.setenv("PPGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(features, "_LOADED", {})
    net = features.digits_classifier()
    path = tmp_path / "cache" / f"digits-features-v{features._VERSION}.pt"
    assert path.exists()
    assert net.accuracy["val_accuracy"] > 0.9  # a real classifier, not noise
    again = features.digits_classifier(rebuild=True)  # two builds: identical weights
    for (name, a), b in zip(net.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    monkeypatch.setattr(features, "_LOADED", {})

    def no_build(binary):
        raise AssertionError("rebuilt although the cache holds the weights")

    monkeypatch.setattr(features, "_build", no_build)
    loaded = features.digits_classifier()  # from the file, through the safe checkpoint reader
    for a, b in zip(net.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    monkeypatch.undo()
    monkeypatch.setenv("PPGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(features, "_LOADED", {})
    path.write_bytes(path.read_bytes()[:-10])  # truncated: refused by the reader, rebuilt
    rebuilt = features.digits_classifier()
    for a, b in zip(net.state_dict().values(), rebuilt.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # the default features of FD/KID/PR on digits are this classifier's
    test = ppgen.datasets.load("digits", "test").data
    r = metrics.frechet_distance(test[:150], test[150:], num_bootstrap=0)
    assert r.features == f"digits-classifier-v{features._VERSION}"
    feats = net.features(test[:150]).double()
    manual = metrics.frechet_distance(feats, net.features(test[150:]).double(), num_bootstrap=0)
    assert r.value == pytest.approx(manual.value, rel=1e-9)
    # "auto" picks the binary variant for 0/1 digits, and raw features for other 8x8 data
    seen = []

    def fake_classifier(binary=False):
        seen.append(binary)
        return net

    monkeypatch.setattr(features, "digits_classifier", fake_classifier)
    binary = ppgen.datasets.load("digits-binary", "test").data
    r = metrics.kid(binary[:100], binary[100:200], num_permutations=0)
    assert seen == [True] and r.features.startswith("digits-binary-classifier")
    scaled = metrics.kid(test[:100] / 16, test[100:200] / 16, num_permutations=0)
    assert scaled.features == "raw" and seen == [True]


# ---- the table ------------------------------------------------------------------------------


def test_metrics_table_and_its_text(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("PPGEN_CACHE_DIR", str(tmp_path / "cache"))
    test = ppgen.datasets.load("digits", "test")
    m = ppgen.build("independent", test)
    table = metrics.metrics_table(m, test, num_permutations=49)
    for key in ("likelihood", "mmd", "kid", "energy", "fd", "prdc", "c2st"):
        assert key in table and table[key]["seconds"] >= 0, key
    assert table["likelihood"]["kind"] == "exact"
    assert table["likelihood"]["bits_per_dim"] == pytest.approx(math.log2(17), abs=1e-6)
    assert table["fd"]["features"].startswith("digits-classifier")
    # uniform noise is far from digits: every test rejects
    for key in ("mmd", "kid", "energy", "c2st"):
        assert table[key]["p_value"] < 0.05, key
    text = metrics.format_table(table)
    for word in ("bits/dim", "MMD", "KID", "Frechet", "precision / recall", "coverage", "C2ST"):
        assert word in text, word
    json.dumps(table)  # JSON-ready
    small = metrics.metrics_table(m, test, metrics="mmd,modes", num_permutations=0)
    assert "likelihood" not in small and small["modes"] == {
        "skipped": "no known mixture modes for these data"
    }
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.metrics_table(m, test, metrics="fid,sharpness")


def test_metrics_table_of_a_bare_tensor_is_json_ready():
    import json

    for name in ("moons", "digits"):
        test = ppgen.datasets.load(name, "test").subset(60)
        m = ppgen.build("independent", test)
        table = metrics.metrics_table(m, test.data, metrics="mmd,fd", num_permutations=0)
        assert (table["data"], table["split"]) == ("tensor", None), name
        assert json.loads(json.dumps(table)) == table, name  # plain data throughout


def test_metrics_refuse_bad_input():
    x = torch.randn(20, 2)
    with pytest.raises(ValueError, match="non-finite"):
        metrics.mmd(torch.full((5, 2), math.nan), x)
    with pytest.raises(ValueError, match="width"):
        metrics.mmd(torch.randn(5, 3), x)
    with pytest.raises(ValueError, match="k must"):
        metrics.precision_recall(x, x, k=20)
    with pytest.raises(ValueError, match="shape"):
        metrics.energy_distance(torch.randn(5), x)
    with pytest.raises(ValueError, match="subset_size"):
        metrics.kid(x, x, subset_size=100)
    with pytest.raises(ValueError, match="at least"):
        metrics.c2st(x[:2], x)


def test_metrics_table_reports_mode_coverage_for_known_mixtures(monkeypatch):
    # ppgen.datasets.toy.mixture_modes(name) -> (centers, std) is the data branch's interface;
    # stand it in here so the table's use of it is tested on this branch too
    import ppgen.datasets.toy as toy

    def mixture_modes(name):
        if name != "8gaussians":
            raise ValueError(f"{name} is not a mixture")
        return EIGHT_CENTERS, EIGHT_STD

    monkeypatch.setattr(toy, "mixture_modes", mixture_modes, raising=False)
    test = ppgen.datasets.load("8gaussians", "test").subset(400)
    m = ppgen.build("independent", test)
    table = metrics.metrics_table(m, test, metrics="modes", num_permutations=0)
    assert table["modes"]["num_modes"] == 8 and table["modes"]["high_quality_fraction"] < 0.2
    assert "modes covered" in metrics.format_table(table)
    moons = ppgen.datasets.load("moons", "test").subset(100)
    all_metrics = metrics.metrics_table(m, moons, num_permutations=0, metrics="all")
    assert "modes" not in all_metrics  # "all" leaves out what does not apply


# ---- the registry and the data's declarations ------------------------------------------------


@pytest.fixture
def scratch_registry():
    """The metric registry as it is now, restored after the test (tests register metrics)."""
    from ppgen.inference.metrics import registry

    saved = dict(registry.METRICS), dict(registry.ALIASES)
    yield registry
    registry.METRICS.clear()
    registry.METRICS.update(saved[0])
    registry.ALIASES.clear()
    registry.ALIASES.update(saved[1])


def test_a_metric_registered_from_one_file_joins_the_table_and_its_text(scratch_registry):
    from ppgen.inference.metrics.registry import register_metric, statistic_rows

    seen = []

    @register_metric("meandist", rows=statistic_rows("mean distance", "± {} (n/a)"))
    def meandist(inputs):
        seen.append(inputs.features)
        x, y = inputs.require_samples(), inputs.reference
        gap = float((x.double().mean(0) - y.double().mean(0)).norm())
        return metrics.MetricResult(
            name="meandist", value=gap, stderr=0.5, num_x=len(x), num_y=len(y)
        ).to_dict()

    test = ppgen.datasets.load("moons", "test").subset(200)
    m = ppgen.build("independent", test)
    table = metrics.metrics_table(m, test, metrics="all", num_permutations=0)
    assert table["meandist"]["value"] > 0 and table["meandist"]["seconds"] >= 0
    assert list(table)[-1] == "meandist" and seen == ["raw"]  # 'all' includes it, last
    named = metrics.metrics_table(m, test, metrics="meandist")
    assert named["meandist"]["value"] == table["meandist"]["value"]  # same seed, same number
    assert "mean distance" in metrics.format_table(
        named
    ) and "± 0.5 (n/a)" in metrics.format_table(named)
    with pytest.raises(ValueError, match="cannot register"):
        register_metric("all", rows=statistic_rows("x"))
    with pytest.raises(ValueError, match="already the metric"):
        register_metric("other", rows=statistic_rows("x"), aliases=("mmd",))


def test_a_metric_that_needs_a_declaration_is_left_out_of_all_and_skipped_by_name(
    scratch_registry,
):
    from ppgen.inference.metrics.registry import register_metric, statistic_rows

    @register_metric(
        "labelled",
        rows=statistic_rows("labelled"),
        aliases=("lab",),
        applies=lambda inputs: getattr(inputs.data, "labels", None) is not None,
        skipped="these data have no labels",
    )
    def labelled(inputs):
        return {"value": 1.0}

    moons = ppgen.datasets.load("moons", "test").subset(100)
    m = ppgen.build("independent", moons)
    assert "labelled" not in metrics.metrics_table(m, moons, metrics="all,mmd")
    for request in ("lab", "all,labelled", ["mmd", "LAB"]):
        table = metrics.metrics_table(m, moons, metrics=request, num_permutations=0)
        assert table["labelled"] == {"skipped": "these data have no labels"}, request
        assert "labelled" not in metrics.format_table(table)


def test_the_table_reads_the_declarations_not_the_name_or_the_shape():
    # a dataset named like a mixture toy, without declared modes: no mode coverage
    eight = ppgen.datasets.load("8gaussians", "test").subset(300)
    anon = ppgen.datasets.Dataset("8gaussians", eight.data, "continuous")
    m = ppgen.build("independent", eight)
    assert "modes" not in metrics.metrics_table(m, anon, metrics="all", num_permutations=0)
    # user data declaring modes get mode coverage on them
    mine = ppgen.datasets.Dataset(
        "mine", eight.data, "continuous", modes=(EIGHT_CENTERS[:4], EIGHT_STD)
    )
    table = metrics.metrics_table(m, mine, metrics="modes")
    assert table["modes"]["num_modes"] == 4
    # 17-level 8x8 data declaring raw features are compared raw, not by the digits classifier
    digits = ppgen.datasets.load("digits", "test")
    raw = ppgen.datasets.Dataset("d", digits.data, "discrete", 17, feature_space="raw")
    md = ppgen.build("independent", digits)
    assert metrics.metrics_table(md, raw, metrics="fd")["fd"]["features"] == "raw"

    # a feature function declared by the data is what FD, KID and PR compare
    def row_means(x):
        return x.reshape(x.shape[0], -1).mean(1, keepdim=True)

    declared = ppgen.datasets.Dataset("d", digits.data, "discrete", 17, feature_space=row_means)
    table = metrics.metrics_table(md, declared, metrics="fd,prdc,kid", num_permutations=0)
    assert table["features"] == "row_means"
    assert {table[k]["features"] for k in ("fd", "prdc", "kid")} == {"row_means"}
    # the caller's features= still wins over the declaration
    over = metrics.metrics_table(md, declared, metrics="fd", features="raw")
    assert over["fd"]["features"] == "raw"


def test_embedded_datasets_declare_their_feature_space_and_modes():
    from ppgen.datasets import toy

    assert ppgen.datasets.load("digits", "val").feature_space == "digits"
    assert ppgen.datasets.load("digits-binary", "val").feature_space == "digits-binary"
    for name in toy.TOY_DATASETS:
        ds = ppgen.datasets.load(name, "val")
        assert ds.feature_space == "raw", name
        if name in ("8gaussians", "grid25"):
            centers, std = toy.mixture_modes(name)
            assert torch.equal(ds.modes[0], centers) and ds.modes[1] == std, name
            assert ds.subset(10).modes is ds.modes  # subsets keep the declarations
        else:
            assert ds.modes is None, name


@settings(max_examples=40, deadline=None)
@given(
    shape=st.sampled_from([(2,), (64,), (8, 8), (1, 8, 8), (3, 8, 8), (1, 4, 4), (8, 8, 1)]),
    kind=st.sampled_from(["continuous", "binary", "discrete"]),
    levels=st.sampled_from([3, 16, 17, 256]),
)
def test_user_data_default_to_the_digits_features_only_when_shaped_like_the_digits(
    shape, kind, levels
):
    lv = {"continuous": None, "binary": 2, "discrete": levels}[kind]
    top = 1 if kind == "binary" else (lv or 5) - 1
    x = torch.randint(0, top + 1, (6, *shape)).float()
    ds = ppgen.datasets.from_array(x.numpy(), kind=kind, levels=lv if kind == "discrete" else None)
    digit_shaped = shape in ((8, 8), (1, 8, 8))
    expected = "raw"
    if digit_shaped and kind == "binary":
        expected = "digits-binary"
    elif digit_shaped and kind == "discrete" and levels == 17:
        expected = "digits"
    assert ds.feature_space == expected and ds.modes is None


@pytest.mark.parametrize(
    "modes, what",
    [
        ((torch.zeros(3, 3), 0.1), "shape"),  # centres of another dimension
        ((torch.zeros(3), 0.1), "shape"),  # not (K, D)
        ((torch.zeros(3, 2), 0.0), "std"),  # a non-positive std
        ((torch.zeros(3, 2), float("nan")), "std"),
        (([[0.0, 0.0]], 0.1), "shape"),  # not a tensor
    ],
)
def test_a_bad_modes_declaration_is_refused_when_the_dataset_is_built(modes, what):
    with pytest.raises(ppgen.datasets.DataError, match="modes must be"):
        ppgen.datasets.Dataset("mine", torch.zeros(5, 2), "continuous", modes=modes)


# ---- calibration sweeps (slow: run with -m slow) --------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("metric", [metrics.mmd, metrics.energy_distance, metrics.kid])
def test_permutation_p_values_over_500_null_repeats(metric):
    from scipy.stats import kstest

    # 500 repeats at n = 100 per side: KS uniformity at level 0.001 and the rejection rate at
    # 0.05 within 3 binomial standard errors (false alarm ~0.4% per metric)
    p = []
    for seed in range(500):
        g = torch.Generator().manual_seed(10_000 + seed)
        x, y = torch.randn(100, 2, generator=g), torch.randn(100, 2, generator=g)
        p.append(metric(x, y, num_permutations=199, seed=seed).p_value)
    assert kstest(p, "uniform").pvalue > 1e-3
    rate = sum(v <= 0.05 for v in p) / len(p)
    assert abs(rate - 0.05) < 3 * math.sqrt(0.05 * 0.95 / len(p)), rate


@pytest.mark.slow
def test_c2st_mlp_p_value_is_valid_over_200_null_repeats():
    p = []
    for seed in range(200):
        g = torch.Generator().manual_seed(20_000 + seed)
        x, y = torch.randn(100, 2, generator=g), torch.randn(100, 2, generator=g)
        p.append(metrics.c2st(x, y, seed=seed).p_value)
    rate = sum(v <= 0.05 for v in p) / len(p)
    assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / len(p)), rate
