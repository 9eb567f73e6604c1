"""Sample-quality metrics and density-estimate statistics: time per metric, and calibration.

    python -m benchmarks.metrics timing [--sizes 1000 5000] [--repeats 3] [--json PATH]
    python -m benchmarks.metrics calibration [--repeats 500] [--parts ...] [--json PATH]

``timing``: median wall seconds of each metric of ``ppgen.metrics`` with its default settings
on N model samples vs N data points, for 2-D points (8gaussians) and for 8x8 digits (features of
the fixed digits classifier where the metric uses features), rounds alternating between metrics
so machine noise hits all alike. One torch thread.

``calibration``: the checks that the p-values and intervals mean what they say, over seeded
repeats: the rejection rate at 0.05 and a KS test of uniformity of the permutation p-values of
MMD, energy distance and KID under the null (two samples of one distribution); the rejection
rate of the exact C2ST p-value under the null; the power of each test against a 0.5-sd shift;
the coverage of 95% bootstrap CIs of a mean of skewed per-example log-likelihoods; the HDR
coverage of the true 8gaussians density; and the null rejection rate of ``goodness_of_fit``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

import ppgen
from ppgen.inference import analysis, metrics


def _data(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if kind == "2d":
        x = ppgen.datasets.load("8gaussians", "train").data
        y = ppgen.datasets.load("8gaussians", "test").data
    else:
        x = ppgen.datasets.load("digits", "train").data
        y = torch.cat([ppgen.datasets.load("digits", s).data for s in ("val", "test")])
    return x[torch.randint(len(x), (n,), generator=g)], y[torch.randint(len(y), (n,), generator=g)]


METRIC_FNS = {
    "mmd (200 perms)": lambda x, y: metrics.mmd(x, y),
    "kid (50 subsets, 100 perms)": lambda x, y: metrics.kid(x, y),
    "energy (200 perms)": lambda x, y: metrics.energy_distance(x, y),
    "frechet (50 bootstraps)": lambda x, y: metrics.frechet_distance(x, y),
    "precision/recall/density/coverage": lambda x, y: metrics.precision_recall(x, y),
    "c2st (mlp)": lambda x, y: metrics.c2st(x, y),
}


def timing(sizes: list[int], repeats: int) -> dict[str, dict[str, float]]:
    torch.set_num_threads(1)
    metrics.digits_classifier()  # built (or loaded) once, outside the timings
    out: dict[str, dict[str, float]] = {}
    for kind in ("2d", "digits"):
        for n in sizes:
            x, y = _data(kind, n, 0)
            times: dict[str, list[float]] = {name: [] for name in METRIC_FNS}
            for _ in range(repeats):  # alternate: one round of every metric, then the next
                for name, fn in METRIC_FNS.items():
                    t0 = time.perf_counter()
                    fn(x, y)
                    times[name].append(time.perf_counter() - t0)
            key = f"{kind} n={n}"
            out[key] = {name: statistics.median(t) for name, t in times.items()}
            print(key, {k: round(v, 2) for k, v in out[key].items()}, flush=True)
    return out


def _ks(p: list[float]) -> float:
    from scipy.stats import kstest

    return float(kstest(p, "uniform").pvalue)


PARTS = ("permutation", "c2st", "bootstrap", "hdr", "goodness")


def calibration(repeats: int, parts: list[str]) -> dict[str, object]:
    torch.set_num_threads(1)
    out: dict[str, object] = {}
    # 1. permutation tests under the null and against a shift
    for name, fn in (
        ()
        if "permutation" not in parts
        else (
            ("mmd", metrics.mmd),
            ("energy_distance", metrics.energy_distance),
            ("kid", metrics.kid),
        )
    ):
        null, alt = [], []
        for seed in range(repeats):
            g = torch.Generator().manual_seed(10_000 + seed)
            x, y = torch.randn(100, 2, generator=g), torch.randn(100, 2, generator=g)
            null.append(fn(x, y, num_permutations=199, seed=seed).p_value)
            if seed < 100:
                alt.append(
                    fn(x + torch.tensor([0.5, 0.0]), y, num_permutations=199, seed=seed).p_value
                )
        out[name] = {
            "null_rejection_at_0.05": sum(p <= 0.05 for p in null) / len(null),
            "null_ks_uniformity_p": _ks(null),
            "power_at_0.05_shift_0.5sd_n100": sum(p <= 0.05 for p in alt) / len(alt),
        }
        print(name, out[name], flush=True)
    # 2. C2ST (exact, conservative p-value)
    null, alt = [], []
    for seed in range(min(repeats, 200) if "c2st" in parts else 0):
        g = torch.Generator().manual_seed(20_000 + seed)
        x, y = torch.randn(100, 2, generator=g), torch.randn(100, 2, generator=g)
        null.append(metrics.c2st(x, y, seed=seed).p_value)
        if seed < 50:
            alt.append(metrics.c2st(x * torch.tensor([2.0, 1.0]), y, seed=seed).p_value)
    if null:
        out["c2st"] = {
            "null_rejection_at_0.05": sum(p <= 0.05 for p in null) / len(null),
            "power_at_0.05_scale2_n100": sum(p <= 0.05 for p in alt) / len(alt),
            "repeats": len(null),
        }
        print("c2st", out["c2st"], flush=True)
    # 3. bootstrap CI coverage of a mean of skewed values (-z^2/2, true mean -1/2)
    for n in (30, 100, 400) if "bootstrap" in parts else ():
        hits = {"bca": 0, "percentile": 0, "basic": 0}
        sims = 1000
        for seed in range(sims):
            z = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            for method in hits:
                ci = analysis.bootstrap_ci(
                    -0.5 * z**2, num_bootstrap=1000, method=method, seed=seed
                )
                hits[method] += ci.contains(-0.5)
        out[f"bootstrap_coverage_n{n}"] = {k: v / sims for k, v in hits.items()}
        print(f"bootstrap n={n}", out[f"bootstrap_coverage_n{n}"], flush=True)
    # 4. HDR coverage of the true 8gaussians density, over seeds: share of (seed, level) cells
    #    within 2 standard errors of the diagonal (about 95% when calibrated)
    test = ppgen.datasets.load("8gaussians", "test")  # for its true_log_prob

    class TrueDensity(ppgen.models.base.AbstractGenerativeModel):
        likelihood = "exact"
        Config = ppgen.models.base.ModelConfig

        def log_prob(self, x, context=None):
            return test.true_log_prob(x)

        def model(self, x=None, context=None):
            raise NotImplementedError

        def sample(self, n, *, seed=None, generator=None, context=None):
            g = torch.Generator().manual_seed(seed)
            angle = 2 * math.pi * torch.randint(8, (n,), generator=g) / 8  # radius 2, std 0.1
            centers = 2.0 * torch.stack([angle.cos(), angle.sin()], 1)
            return centers + 0.1 * torch.randn(n, 2, generator=g)

    m = TrueDensity(event_shape=(2,))
    within, ks = 0, []
    cells = 0
    for seed in range(50 if "hdr" in parts else 0):  # fresh data from the true density each time
        data = m.sample(5000, seed=10_000 + seed)
        r = analysis.hdr_coverage(m, data, num_samples=10_000, seed=seed)
        for a, c, s in zip(r.levels, r.coverage, r.stderr, strict=True):
            within += abs(c - a) <= 2 * s
            cells += 1
        ks.append(r.p_value)
    if cells:
        out["hdr_true_8gaussians"] = {
            "share_within_2se": within / cells,
            "ks_p_uniformity": _ks(ks),
        }
        print("hdr", out["hdr_true_8gaussians"], flush=True)
    # 5. goodness_of_fit under the null (exact discrete conditionals; continuous quadrature)
    digits = ppgen.build("independent", ppgen.datasets.load("digits", "val"))
    with torch.no_grad():
        digits.logits.normal_(generator=torch.Generator().manual_seed(0))
    moons = ppgen.build("independent", ppgen.datasets.load("moons", "val"), components=3)
    with torch.no_grad():
        moons.loc.normal_(generator=torch.Generator().manual_seed(0))
    for name, model in (("digits", digits), ("moons", moons)) if "goodness" in parts else ():
        p = [analysis.goodness_of_fit(model, num_samples=500, seed=s).p_value for s in range(200)]
        out[f"goodness_of_fit_{name}"] = {
            "null_rejection_at_0.05": sum(v <= 0.05 for v in p) / len(p),
            "null_rejection_at_0.01": sum(v <= 0.01 for v in p) / len(p),
        }
        print(name, out[f"goodness_of_fit_{name}"], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("timing")
    t.add_argument("--sizes", type=int, nargs="*", default=[1000, 5000])
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--json", default=None)
    c = sub.add_parser("calibration")
    c.add_argument("--repeats", type=int, default=500)
    c.add_argument("--parts", nargs="*", default=list(PARTS), choices=PARTS)
    c.add_argument("--json", default=None)
    args = parser.parse_args()
    t0 = time.perf_counter()
    result = (
        timing(args.sizes, args.repeats)
        if args.what == "timing"
        else calibration(args.repeats, args.parts)
    )
    print(f"total {time.perf_counter() - t0:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
