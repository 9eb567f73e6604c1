"""PixelCNN and Gated PixelCNN: the figures of docs/benchmarks.md ("Autoregressive images").

    python -m benchmarks.pixelcnn [--part all|bpd|sampling] [--preset quick|full]
                                  [--threads 1] [--rounds 3] [--json FILE]

1. ``bpd``: test bits/dim on digits (exact discrete likelihood) of ``pixelcnn`` and
   ``gated-pixelcnn`` next to the other autoregressive families that are registered
   (``independent``, ``nade``, ``made``), each trained with its budget in
   ``ppgen benchmark --preset PRESET`` (``ppgen.benchmark.PRESETS``) over the preset's seeds.
   Goal (issue 10): Gated PixelCNN at or below 2.00 bits/dim (MADE's goal).
2. ``sampling``: samples/s of the naive sampler (one full forward pass per sub-pixel) and the
   fast one (cached activations, Ramachandran et al. 2017) of random-weight models with the
   default hyperparameters, on 8x8 images (17 levels, categorical output) and 28x28 images (256
   levels, logistic mixture). Naive and fast alternate within each round; the speed-up is the
   median over rounds of the per-round ratio, so machine noise hits both sides. Each round also
   checks that both samplers return the same samples for the same seed. Goal: fast >= 5x naive
   on 28x28.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import ppgen
from ppgen.benchmark import PRESETS

BPD_FAMILIES = ["independent", "nade", "made", "pixelcnn", "gated-pixelcnn"]
# (height = width, levels, samples per round)
SAMPLING_CASES = [(8, 17, 16), (28, 256, 4)]


def bits_per_dim(preset: str) -> list[dict]:
    config = PRESETS[preset]
    train, val, test = (ppgen.datasets.load("digits", s) for s in ("train", "val", "test"))
    rows = []
    for family in BPD_FAMILIES:
        if family not in ppgen.models.names() or family not in config["families"]:
            print(f"{family}: not registered on this branch or not in preset {preset}; skipped")
            continue
        spec = config["families"][family]
        for seed in config["seeds"]:
            model = ppgen.build(family, train, **spec.get("build", {}))
            t0 = time.perf_counter()
            ppgen.fit(model, train, val=val, seed=seed, progress=False, **spec["fit"])
            seconds = time.perf_counter() - t0
            ev = ppgen.evaluate(model, test, seed=seed)
            row = {
                "family": family,
                "seed": seed,
                "bits_per_dim": ev.bits_per_dim,
                "stderr": ev.bits_per_dim_stderr,
                "kind": ev.kind,
                "train_seconds": seconds,
                "build": spec.get("build", {}),
                "fit": spec["fit"],
            }
            rows.append(row)
            print(
                f"{family:15s} seed {seed}: {ev.bits_per_dim:.3f} ± {ev.bits_per_dim_stderr:.3f} "
                f"bits/dim ({ev.kind}), trained {seconds:.1f} s",
                flush=True,
            )
    return rows


def sampling(rounds: int, families: tuple[str, ...] = ("pixelcnn", "gated-pixelcnn"),
             cases: list[tuple[int, int, int]] = SAMPLING_CASES) -> list[dict]:
    rows = []
    for family in families:
        for size, levels, n in cases:
            torch.manual_seed(0)
            cls = ppgen.models.get(family)
            model = cls(event_shape=(1, size, size), kind="discrete", levels=levels).eval()
            model.sample(2, seed=0, method="fast")  # warm-up
            times: dict[str, list[float]] = {"naive": [], "fast": []}
            identical = True
            for r in range(rounds):
                drawn = {}
                for method in ("naive", "fast") if r % 2 == 0 else ("fast", "naive"):
                    t0 = time.perf_counter()
                    drawn[method] = model.sample(n, seed=r, method=method)
                    times[method].append(time.perf_counter() - t0)
                identical &= torch.equal(drawn["naive"], drawn["fast"])
            ratios = [a / b for a, b in zip(times["naive"], times["fast"], strict=True)]
            row = {
                "family": family,
                "image": f"1x{size}x{size}",
                "levels": levels,
                "output": model.config.output_kind,
                "samples_per_round": n,
                "naive_samples_per_s": n / statistics.median(times["naive"]),
                "fast_samples_per_s": n / statistics.median(times["fast"]),
                "speedup": statistics.median(ratios),
                "identical": identical,
                "params": sum(p.numel() for p in model.parameters()),
            }
            rows.append(row)
            print(
                f"{family:15s} {row['image']:8s} naive {row['naive_samples_per_s']:8.3f}/s  "
                f"fast {row['fast_samples_per_s']:8.2f}/s  speed-up {row['speedup']:6.1f}x  "
                f"identical samples: {identical}",
                flush=True,
            )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["all", "bpd", "sampling"], default="all")
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.system()} {platform.machine()}, {args.threads} torch thread(s)",
        "versions": {"torch": torch.__version__, "ppgen": ppgen.__version__},
        "preset": args.preset,
    }
    if args.part in ("all", "bpd"):
        out["bits_per_dim"] = bits_per_dim(args.preset)
    if args.part in ("all", "sampling"):
        out["sampling"] = sampling(args.rounds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
