"""The sequence families against statsmodels' SARIMAX on the embedded series (issue 24).

    python -m benchmarks.sequences [--series sunspots co2] [--steps 300] [--samples 200]
                                   [--lorenz [--particles 4000]] [--json out.json]

For each series (standardized on its training part; see ``ppgen.datasets.series``):

- each family (``lgssm``, ``seq-ar``, ``dmm``) is fitted by ``ppgen.fit`` on the training
  windows for ``--steps`` steps (the best weights on the validation windows are kept);
- SARIMAX(p, d, q) with p, q in 0..2 and d in 0..1 is chosen by AIC on the training part and
  fitted there (maximum likelihood); its parameters are then fixed;
- **test NLL per step** (nats, standardized scale): ``-(log p(rows up to the end of test) -
  log p(rows before test)) / n_test``: every test row scored given its whole past, for SARIMAX
  by its Kalman filter on the whole series with the training parameters, for ``lgssm`` and
  ``seq-ar`` exactly, for ``dmm`` with a difference of two IWAE-64 bounds (an *estimate*, not a
  bound: labelled so);
- **forecast CRPS** at horizons 1, 4 and 12 from every ``--origin-every``-th test row as the
  forecast origin (history: every row before it); ppgen's from ``--samples`` sample paths
  (Pyro's empirical CRPS), SARIMAX's in closed form from its Gaussian forecast; and the
  coverage of the central 50% and 90% intervals of the sample paths.

``--lorenz`` adds each family's test log-likelihood per step on the simulated Lorenz windows
next to the true generator's (a particle filter, ``lorenz_log_prob``); ``--series none`` runs
only that.

Univariate series only (``co2``, ``sunspots``, ``elnino``; ``macro`` has 3 variables and is
skipped here). Everything in one process, seeded.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import warnings

import numpy as np
import torch

import ppgen
from ppgen.inference.forecasting import forecast_crps

FAMILIES = {
    "lgssm": ({"state": 8}, {"lr": 1e-2}),
    "seq-ar": ({"hidden": [32], "components": 3}, {"lr": 3e-3}),
    "dmm": ({"latent": 4, "hidden": [32, 32], "warmup": 100}, {"lr": 3e-3}),
}
HORIZONS = (1, 4, 12)


def _sarimax(train: np.ndarray):
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    best = None
    for p in range(3):
        for d in range(2):
            for q in range(3):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        res = SARIMAX(train, order=(p, d, q)).fit(disp=False)
                    except Exception:  # noqa: BLE001 - an order that does not fit is skipped
                        continue
                if best is None or res.aic < best[0]:
                    best = (res.aic, (p, d, q), res)
    assert best is not None
    return best[1], best[2]


def _gauss_crps(mu: np.ndarray, sd: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.stats import norm

    z = (y - mu) / sd
    return sd * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))


def run_series(name: str, steps: int, samples: int, origin_every: int, seed: int) -> dict:
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    train = ppgen.datasets.load(name, "train")
    val = ppgen.datasets.load(name, "val")
    test = ppgen.datasets.load(name, "test")
    full = torch.cat([train.series, val.series, test.series])  # standardized, (L, 1)
    start, end = test.rows
    n_test = end - start
    origins = list(range(start, end - max(HORIZONS) + 1, origin_every))
    out: dict = {"series": name, "rows": len(full), "test_rows": n_test, "origins": len(origins)}

    order, res = _sarimax(full[: train.rows[1], 0].numpy().astype(float))
    y = full[:, 0].numpy().astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = SARIMAX(y, order=order).filter(res.params)
        before = SARIMAX(y[:start], order=order).filter(res.params)
    sar = {"order": list(order), "nll": -(whole.llf - before.llf) / n_test,
           "crps": {h: [] for h in HORIZONS}}
    for o in origins:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fc = SARIMAX(y[:o], order=order).filter(res.params).get_forecast(max(HORIZONS))
        mu, sd = fc.predicted_mean, np.sqrt(fc.var_pred_mean)
        for h in HORIZONS:
            sar["crps"][h].append(float(_gauss_crps(mu[h - 1], sd[h - 1], y[o + h - 1])))
    sar["crps"] = {h: float(np.mean(v)) for h, v in sar["crps"].items()}
    out["sarimax"] = sar

    for family, (build, fit) in FAMILIES.items():
        torch.manual_seed(seed)
        m = ppgen.build(family, train, **build)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            ppgen.fit(m, train, val=val, out=tmp, steps=steps, batch_size=32, seed=seed,
                      progress=False, eval_every=max(1, steps // 10), device="cpu", **fit)
        seconds = time.perf_counter() - t0
        m.eval()
        torch.manual_seed(seed)
        with torch.no_grad():
            lp_end = m.log_prob_series(full[None, :end])
            lp_start = m.log_prob_series(full[None, :start])
        nll = -float(lp_end - lp_start) / n_test
        crps = {h: [] for h in HORIZONS}
        cover = {50: [], 90: []}
        t1 = time.perf_counter()
        for i, o in enumerate(origins):
            paths = ppgen.forecast(m, full[:o], horizon=max(HORIZONS), num_samples=samples,
                                   seed=seed + i)[:, :, 0]
            truth = full[o : o + max(HORIZONS), 0]
            c = forecast_crps(paths, truth)
            for h in HORIZONS:
                crps[h].append(float(c[h - 1]))
            for level in cover:
                lo, hi = torch.quantile(paths, torch.tensor([(1 - level / 100) / 2,
                                                             (1 + level / 100) / 2]), dim=0)
                cover[level].append(((truth >= lo) & (truth <= hi)).float().mean().item())
        out[family] = {
            "nll": nll,
            "nll_kind": "exact" if m.likelihood == "exact" else "estimate (IWAE-64 difference)",
            "crps": {h: float(np.mean(v)) for h, v in crps.items()},
            "coverage": {k: float(np.mean(v)) for k, v in cover.items()},
            "fit_seconds": seconds,
            "forecast_seconds": (time.perf_counter() - t1) / max(1, len(origins)),
        }
    return out


def run_lorenz(steps: int, particles: int, seed: int) -> dict:
    """Each family's test log-likelihood per step on the simulated Lorenz windows against the
    true generator's, estimated by the particle filter ``lorenz_log_prob`` (standardized
    scale: the raw log-density plus ``T * sum(log std)``)."""
    from ppgen.datasets.series import lorenz_log_prob

    train = ppgen.datasets.load("lorenz", "train")
    val = ppgen.datasets.load("lorenz", "val")
    test = ppgen.datasets.load("lorenz", "test")
    steps_t = test.event_shape[0]
    raw = test.data.double() * test.std.double() + test.mean.double()
    true = lorenz_log_prob(raw, particles=particles, seed=seed)
    true = true + steps_t * torch.log(test.std.double()).sum()
    out = {"true (particle filter)": float(true.mean()) / steps_t}
    for family, (build, fit) in FAMILIES.items():
        torch.manual_seed(seed)
        m = ppgen.build(family, train, **build)
        with tempfile.TemporaryDirectory() as tmp:
            ppgen.fit(m, train, val=val, out=tmp, steps=steps, batch_size=32, seed=seed,
                      progress=False, eval_every=max(1, steps // 10), device="cpu", **fit)
        ev = ppgen.evaluate(m, test, seed=seed)
        out[f"{family} ({ev.kind})"] = float(ev.per_example.mean()) / steps_t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", nargs="+", default=["sunspots", "co2"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--origin-every", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lorenz", action="store_true",
                    help="also: log-likelihood per step on the Lorenz windows vs the truth")
    ap.add_argument("--particles", type=int, default=4000)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.lorenz:
        lor = run_lorenz(args.steps, args.particles, args.seed)
        print("| lorenz test | log-likelihood per step (nats, standardized) |")
        print("|---|---|")
        for k, v in lor.items():
            print(f"| {k} | {v:.3f} |")
    results = [run_series(s, args.steps, args.samples, args.origin_every, args.seed)
               for s in args.series if s != "none"]
    print("| series | model | test NLL/step (nats) | CRPS h=1 | h=4 | h=12 | cover 50% | 90% |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        s = r["sarimax"]
        print(f"| {r['series']} | SARIMAX{tuple(s['order'])} | {s['nll']:.3f} (exact) | "
              + " | ".join(f"{s['crps'][h]:.3f}" for h in HORIZONS) + " | - | - |")
        for f in FAMILIES:
            v = r[f]
            kind = "exact" if v["nll_kind"] == "exact" else "estimate"
            print(f"| {r['series']} | {f} | {v['nll']:.3f} ({kind}) | "
                  + " | ".join(f"{v['crps'][h]:.3f}" for h in HORIZONS)
                  + f" | {v['coverage'][50]:.2f} | {v['coverage'][90]:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
