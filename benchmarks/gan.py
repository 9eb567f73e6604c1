"""GAN figures: mode coverage on toy mixtures per objective, and AIS bits/dim on digits.

    python -m benchmarks.gan toy [--objectives ns hinge wgan-gp] [--datasets 8gaussians grid25]
                                 [--seeds 0 1 2] [--updates 5000] [--json FILE] [--figure FILE]
    python -m benchmarks.gan digits [--steps 3000] [--ais-steps 30 100 300] [--json FILE]

``toy``: for every objective, dataset and seed, trains the GAN family (MLP pair, latent 8,
hidden (128, 128), the family's defaults otherwise: R1 0.1 for ns/hinge, gradient penalty for
WGAN-GP, generator EMA 0.995) and measures on 2500 samples the modes covered (a mode counts
when at least a fifth of its expected share of samples lies within 3 std of it, PacGAN's rule)
and the high-quality fraction (samples within 3 std of a mode), as in the unrolled-GAN/VEEGAN
papers. Every objective gets the same number of generator updates (``--updates``; WGAN-GP's
5 critic steps per update make its runs 5 times as many trainer steps). Prints one row per run
and mean ± sd over seeds, and how many seeds reach the goal (all modes, >= 90% high-quality
samples). ``--json`` is rewritten after every run, and ``--resume-json`` skips runs already in
that file, so a long sweep can be stopped and continued.

``digits``: trains the DCGAN pair on digits, chooses the Gaussian observation scale on the
validation split (``select_observation_scale``), estimates the test log-likelihood by AIS
(labelled ``estimate``, bits/dim of the data as given) and, for contrast only, by the Parzen
window (a discouraged baseline, Theis et al. 2016), and measures sample quality with the same
metrics as ``ppgen benchmark``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import ppgen
from ppgen.datasets.toy import mixture_modes
from ppgen.inference.likelihood import select_observation_scale, select_parzen_bandwidth
from ppgen.inference.metrics import mode_coverage

TOY_BUILD = {"latent": 8, "hidden": [128, 128]}
TOY_FIT = {"batch_size": 256, "lr": 1e-3, "ema": 0.995}


def toy_run(objective: str, dataset: str, seed: int, updates: int) -> dict:
    train = ppgen.datasets.load(dataset, "train")
    torch.manual_seed(seed)
    model = ppgen.build("gan", train, objective=objective, **TOY_BUILD)
    n_critic = 5 if objective == "wgan-gp" else 1
    steps = updates * n_critic
    t0 = time.perf_counter()
    hist = ppgen.fit(model, train, steps=steps, seed=seed, device="cpu", progress=False,
                     log_every=max(steps // 20, 1), **TOY_FIT)
    seconds = time.perf_counter() - t0
    centers, std = mixture_modes(dataset)
    samples = model.sample(2500, seed=seed)
    cov = mode_coverage(samples, centers, std, threshold=3.0)
    last = hist.diagnostics[-1] if hist.diagnostics else {}
    return {
        "objective": objective,
        "dataset": dataset,
        "seed": seed,
        "steps": steps,
        "generator_updates": updates,
        "modes_covered": cov.modes_covered,
        "num_modes": cov.num_modes,
        "high_quality_fraction": cov.high_quality_fraction,
        "reverse_kl": cov.reverse_kl,
        "collapse_alarm_at_end": last.get("mode_collapse"),
        "train_seconds": seconds,
        "samples": samples[:1000].tolist(),
    }


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict]) -> str:
    lines = [
        "| objective | data | seeds | modes covered (mean ± sd) | high-quality fraction "
        "(mean ± sd) | seeds with all modes and HQ >= 0.9 | steps (G updates) |",
        "|---|---|---|---|---|---|---|",
    ]
    order = ["ns", "hinge", "wgan-gp", "minimax"]
    keys = sorted({(r["objective"], r["dataset"], r["generator_updates"]) for r in runs},
                  key=lambda k: (k[1], k[2], order.index(k[0])))
    for objective, dataset, updates in keys:
        rs = [r for r in runs if (r["objective"], r["dataset"], r["generator_updates"])
              == (objective, dataset, updates)]
        modes = [r["modes_covered"] for r in rs]
        hq = [r["high_quality_fraction"] for r in rs]
        goal = sum(r["modes_covered"] == r["num_modes"] and r["high_quality_fraction"] >= 0.9
                   for r in rs)
        lines.append(
            f"| {objective} | {dataset} | {len(rs)} | {statistics.mean(modes):.1f} ± "
            f"{_sd(modes):.1f} / {rs[0]['num_modes']} | {statistics.mean(hq):.3f} ± {_sd(hq):.3f} "
            f"| {goal}/{len(rs)} | {rs[0]['steps']} ({rs[0]['generator_updates']}) |"
        )
    return "\n".join(lines)


def toy_figure(runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed0 = [r for r in runs if r["seed"] == min(x["seed"] for x in runs)]
    datasets = sorted({r["dataset"] for r in seed0})
    objectives = [o for o in ("ns", "hinge", "wgan-gp", "minimax")
                  if any(r["objective"] == o for r in seed0)]
    fig, axes = plt.subplots(len(datasets), len(objectives) + 1, squeeze=False,
                             figsize=(3 * (len(objectives) + 1), 3 * len(datasets)))
    for i, dataset in enumerate(datasets):
        data = ppgen.datasets.load(dataset, "test").data[:1000]
        axes[i, 0].scatter(data[:, 0], data[:, 1], s=1, alpha=0.4, color="k")
        axes[i, 0].set_title(f"{dataset}: data", fontsize=9)
        for j, objective in enumerate(objectives):
            ax = axes[i, j + 1]
            (r,) = [r for r in seed0 if r["dataset"] == dataset and r["objective"] == objective]
            x = torch.tensor(r["samples"])
            ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
            ax.set_title(f"{objective}: {r['modes_covered']}/{r['num_modes']} modes, "
                         f"HQ {r['high_quality_fraction']:.2f}", fontsize=9)
        for ax in axes[i]:
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            lim = 2.6 if dataset == "8gaussians" else 4.8
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def digits_run(steps: int, ais_steps: list[int], ais_particles: int, seed: int) -> dict:
    from ppgen.benchmark import _quality

    train, val, test = (ppgen.datasets.load("digits", s) for s in ("train", "val", "test"))
    torch.manual_seed(seed)
    model = ppgen.build("gan", train, latent=16, hidden=[64, 32])
    t0 = time.perf_counter()
    ppgen.fit(model, train, steps=steps, batch_size=128, lr=5e-4, seed=seed, device="cpu",
              progress=False)
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    scale = select_observation_scale(model, val, seed=seed, num_examples=64,
                                     num_steps=max(max(ais_steps) // 5, 20))
    select_seconds = time.perf_counter() - t0
    model.observation_scale = scale
    runs = {}
    for t in sorted(ais_steps):  # the estimate should rise and level off with more steps
        t0 = time.perf_counter()
        ev = ppgen.evaluate(model, test, seed=seed, num_steps=t, num_particles=ais_particles)
        runs[t] = {**ev.to_dict(), "num_steps": t, "seconds": time.perf_counter() - t0}
    from ppgen.benchmark import PRESETS

    quick_options = PRESETS["quick"]["families"]["gan"]["evaluate"]
    t0 = time.perf_counter()
    ais_quick = ppgen.evaluate(model, test, seed=seed, **quick_options)
    quick_seconds = time.perf_counter() - t0
    bandwidth = select_parzen_bandwidth(model, val, seed=seed)
    parzen = ppgen.evaluate(model, test, estimator="parzen", seed=seed, bandwidth=bandwidth)
    samples = model.sample(1000, seed=seed)
    baseline = ppgen.build("independent", train)
    ppgen.fit(baseline, train, steps=300, batch_size=256, lr=0.05, seed=seed, device="cpu",
              progress=False)
    return {
        "steps": steps,
        "train_seconds": train_seconds,
        "observation_scale": scale,
        "select_seconds": select_seconds,
        "ais": runs[max(runs)],
        "ais_by_steps": runs,
        "ais_quick_preset": {**ais_quick.to_dict(), **quick_options, "seconds": quick_seconds},
        "parzen_discouraged": {**parzen.to_dict(), "bandwidth": bandwidth},
        "independent_baseline": ppgen.evaluate(baseline, test).to_dict(),
        "quality": _quality(samples, test, seed),
        "quality_independent": _quality(baseline.sample(1000, seed=seed), test, seed),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["toy", "digits"])
    p.add_argument("--objectives", nargs="*", default=["ns", "hinge", "wgan-gp"])
    p.add_argument("--datasets", nargs="*", default=["8gaussians", "grid25"])
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=3000, help="digits: training steps")
    p.add_argument("--updates", type=int, default=5000, help="toy: generator updates")
    p.add_argument("--ais-steps", type=int, nargs="*", default=[30, 100, 300])
    p.add_argument("--ais-particles", type=int, default=8)
    p.add_argument("--resume-json", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--figure", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch threads 1")
    if args.part == "toy":
        runs = []
        if args.resume_json and args.json:
            with open(args.json) as f:
                runs = json.load(f)
        done = {(r["objective"], r["dataset"], r["seed"]) for r in runs}
        for dataset in args.datasets:
            for objective in args.objectives:
                for seed in args.seeds:
                    if (objective, dataset, seed) in done:
                        continue
                    r = toy_run(objective, dataset, seed, args.updates)
                    runs.append(r)
                    if args.json:
                        with open(args.json, "w") as f:
                            json.dump(runs, f)
                    print(f"{objective:8s} {dataset:11s} seed {seed}: {r['modes_covered']}/"
                          f"{r['num_modes']} modes, HQ {r['high_quality_fraction']:.3f}, "
                          f"alarm {r['collapse_alarm_at_end']}, {r['train_seconds']:.0f}s",
                          flush=True)
        print(summarize(runs))
        if args.figure:
            toy_figure(runs, args.figure)
        result: object = runs
    else:
        result = digits_run(args.steps, args.ais_steps, args.ais_particles, args.seeds[0])
        print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
