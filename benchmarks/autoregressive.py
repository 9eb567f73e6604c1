"""NADE and MADE figures: cached vs naive NADE sampling, and test bits/dim next to baselines.

    python -m benchmarks.autoregressive sampling [--n 500] [--repeats 5] [--hidden 500]
    python -m benchmarks.autoregressive likelihood [--data digits digits-binary] [--json out.json]

``sampling``: NADE (default hyperparameters, D = 64) on digits-binary and digits draws ``--n``
points with the cached O(DH) path and with the naive path that recomputes every conditional after
each dimension (O(D^2 H)). Rounds alternate cached/naive so machine noise hits both alike; the
table gives the median seconds over ``--repeats`` rounds and the ratio (goal: >= 10x). Both paths
consume the same noise, so the script also checks they return the same points.

``likelihood``: test bits/dim (exact) of the uniform baseline (log2 L), the independent
per-pixel model, NADE and MADE, each trained through ``ppgen.fit`` on the train split with the
budgets in :data:`BUDGETS`, one seed. The weights scored on test are those with the best
validation loss (``best.pt``, selected on the val split: NADE overfits the 1200 training
digits late in training); the final weights' test score is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

import ppgen

# family -> (build hyperparameters, fit arguments); the default hyperparameters for NADE/MADE
BUDGETS: dict[str, tuple[dict, dict]] = {
    "independent": ({}, {"steps": 2000, "batch_size": 256, "lr": 0.02}),
    "nade": ({}, {"steps": 4000, "batch_size": 128, "lr": 1e-3}),
    "made": ({}, {"steps": 4000, "batch_size": 128, "lr": 1e-3}),
}


def sampling(n: int, repeats: int, hidden: int,
             datas: tuple[str, ...] = ("digits-binary", "digits")) -> list[dict]:
    rows = []
    for data in datas:
        ds = ppgen.datasets.load(data, "train")
        torch.manual_seed(0)
        m = ppgen.build("nade", ds, hidden=[hidden]).eval()
        same = torch.equal(m.sample(n, seed=0, cached=True), m.sample(n, seed=0, cached=False))
        times: dict[bool, list[float]] = {True: [], False: []}
        for r in range(repeats):
            for cached in (True, False) if r % 2 == 0 else (False, True):
                t0 = time.perf_counter()
                m.sample(n, seed=r, cached=cached)
                times[cached].append(time.perf_counter() - t0)
        cached_s, naive_s = statistics.median(times[True]), statistics.median(times[False])
        rows.append(
            {
                "data": data,
                "D": ds.num_dims,
                "hidden": hidden,
                "n": n,
                "cached_s": cached_s,
                "naive_s": naive_s,
                "speedup": naive_s / cached_s,
                "same_points": same,
            }
        )
    print("| data | D | H | n | cached s | naive s | speed-up | same points |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['data']} | {r['D']} | {r['hidden']} | {r['n']} | {r['cached_s']:.4f} | "
            f"{r['naive_s']:.3f} | {r['speedup']:.1f}x | {r['same_points']} |"
        )
    return rows


def likelihood(datas: list[str], families: list[str], seed: int, out: str) -> list[dict]:
    rows = []
    for data in datas:
        train, val, test = (ppgen.datasets.load(data, s) for s in ("train", "val", "test"))
        rows.append(
            {
                "data": data,
                "family": "uniform",
                "bits_per_dim": math.log2(test.levels),
                "stderr": 0.0,
                "kind": "exact",
                "train_s": 0.0,
                "steps": 0,
            }
        )
        for family in families:
            hparams, fit_args = BUDGETS[family]
            torch.manual_seed(seed)
            m = ppgen.build(family, train, **hparams)
            t0 = time.perf_counter()
            run = Path(out) / f"{family}-{data}-seed{seed}"
            hist = ppgen.fit(
                m, train, val=val, seed=seed, progress=False, device="cpu", out=run,
                overwrite=True, patience=None, **fit_args  # "final": the last weights
            )
            train_s = time.perf_counter() - t0
            final = ppgen.evaluate(m, test)
            best = ppgen.load(run / "best.pt").eval()
            ev_val, ev = ppgen.evaluate(best, val), ppgen.evaluate(best, test)
            rows.append(
                {
                    "data": data,
                    "family": family,
                    "bits_per_dim": ev.bits_per_dim,
                    "stderr": ev.bits_per_dim_stderr,
                    "val_bits_per_dim": ev_val.bits_per_dim,
                    "final_bits_per_dim": final.bits_per_dim,
                    "best_step": hist.best_step,
                    "kind": ev.kind,
                    "train_s": train_s,
                    "steps": hist.steps,
                    "hparams": hparams,
                    "fit": fit_args,
                }
            )
            print(
                f"{data} {family}: test {ev} (val {ev_val.bits_per_dim:.4f}, best step "
                f"{hist.best_step}; final weights: test {final.bits_per_dim:.4f}), {train_s:.0f}s",
                flush=True,
            )
    print(
        "| data | family | test bits/dim (best val) | val bits/dim | test, final weights | kind "
        "| best step / steps | train s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        val_bpd = f"{r['val_bits_per_dim']:.3f}" if "val_bits_per_dim" in r else ""
        final = f"{r['final_bits_per_dim']:.3f}" if "final_bits_per_dim" in r else ""
        print(
            f"| {r['data']} | {r['family']} | {r['bits_per_dim']:.3f} ± {r['stderr']:.3f} | "
            f"{val_bpd} | {final} | {r['kind']} | {r.get('best_step') or ''} / {r['steps']} | "
            f"{r['train_s']:.0f} |"
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sampling")
    s.add_argument("--n", type=int, default=500)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--hidden", type=int, default=500)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--json", default=None)
    lk = sub.add_parser("likelihood")
    lk.add_argument("--data", nargs="*", default=["digits", "digits-binary"])
    lk.add_argument("--families", nargs="*", default=list(BUDGETS))
    lk.add_argument("--seed", type=int, default=0)
    lk.add_argument("--threads", type=int, default=1)
    lk.add_argument("--json", default=None)
    lk.add_argument("--out", default="runs/benchmarks-autoregressive")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    )
    if args.what == "sampling":
        rows = sampling(args.n, args.repeats, args.hidden)
    else:
        rows = likelihood(args.data, args.families, args.seed, args.out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)


if __name__ == "__main__":
    main()
