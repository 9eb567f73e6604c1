"""Every peer comparison of the family issues in one command: ratio, goal, whether it holds.

    python -m benchmarks.run [--quick] [--only NAME ...] [--json PATH] [--threads 1] [--seed 0]

Each comparison calls the function of its own benchmark module (``benchmarks/flows.py``,
``vae.py``, ``diffusion.py``, ``autoregressive.py``, ``pixelcnn.py``), which measures both sides
in one process, alternating sides round by round, and takes medians over the rounds, so the
machine's noise hits both sides alike. This script only picks the budgets, turns the results
into ratios with their goals (from the issues; see docs/benchmarks.md) and prints one table:

- ``flows-speed``: MAF and RealNVP at D=64, H=256, batch 1024, ppgen's throughput over the
  peers' (zuko, nflows, normflows). Goals: log_prob >= 1.2x zuko and >= 1.0x normflows;
  training steps >= 1.0x the fastest peer; RealNVP sampling >= 1.0x the fastest peer; MAF
  sampling >= 1.5x zuko.
- ``flows-overhead``: the same on 2-D data (H=64, batch 1024), the per-call overhead. Goal:
  >= 1.0x the fastest peer.
- ``flows-quality`` (full run only): test NLL at equal size and steps with early stopping,
  ppgen over zuko on moons (median over 8 seeds: single runs spread by 0.1 nat and more, so 3
  seeds decide little), over the best peer on digits. Goal: <= 1.0.
- ``vae-epoch``: median epoch time of ``ppgen.fit`` (the default ELBO path) over a plain
  PyTorch ELBO loop, the same VAE from the same weights. Goal: <= 1.15.
- ``diffusion-overhead``: per-step sampler time with the network replaced by a constant, ppgen
  over diffusers (DDPM and DDIM at D=2, D=64, D=64 with x0 clipped). Goal: <= 0.5.
- ``diffusion-samplers``: ppgen's DDPM-1000 sampling time over its DDIM-50 time (same trained
  network), goal >= 20; (full run only) DDIM-50's energy distance over DDPM-1000's, goal <= 1.5.
- ``nade-sampling``: NADE (H=500, D=64) naive D-pass sampling time over the cached O(DH) path.
  Goal: >= 10.
- ``pixelcnn-sampling``: the naive PixelCNN sampler's time over the fast (cached) one on 28x28
  images with 256 levels. Goal: >= 5.

``--quick`` shrinks every budget (fewer rounds, fewer samples, a few-step training where the
speed does not depend on the weights; the flows' quality runs and the diffusion quality ratio
are left out) so the whole run takes a few minutes on 2 CPU cores; the ratios it prints are
noisier than the full run's, and it says so in the table's "setting" column. Peers come from the
optional extra: ``pip install -e '.[bench]'``. A comparison that fails (a missing peer, an
error) is reported in the table as an error and the others still run; the exit status is 1 then.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["COMPARISONS", "Goal", "Row", "main", "run", "table"]


@dataclasses.dataclass(frozen=True)
class Goal:
    """A goal on a ratio: ``ratio >= value`` (``op=">="``) or ``ratio <= value``."""

    op: str
    value: float

    def __post_init__(self) -> None:
        if self.op not in (">=", "<="):
            raise ValueError(f"goal op must be '>=' or '<=', got {self.op!r}")

    def holds(self, ratio: float) -> bool:
        """Whether ``ratio`` meets the goal (a NaN or infinite ratio never does)."""
        if not math.isfinite(ratio):
            return False
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclasses.dataclass
class Row:
    """One measured ratio beside its goal."""

    name: str  # the comparison group (a key of COMPARISONS)
    comparison: str
    ratio: float
    goal: Goal | None
    setting: str = ""
    error: str | None = None

    @property
    def holds(self) -> bool | None:
        """True/False against the goal; None for an error row."""
        if self.error is not None or self.goal is None:
            return None
        return self.goal.holds(self.ratio)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "comparison": self.comparison,
            "ratio": self.ratio,
            "goal": None if self.goal is None else str(self.goal),
            "holds": self.holds,
            "setting": self.setting,
            "error": self.error,
        }


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table: comparison, measured ratio, goal, holds (yes/no)."""
    lines = ["| comparison | ratio | goal | holds | setting |", "|---|---|---|---|---|"]
    for r in rows:
        if r.error is not None:
            lines.append(f"| {r.comparison} | error | {r.goal or ''} | error: {r.error} | "
                         f"{r.setting} |")
            continue
        ratio = f"{r.ratio:.3g}" if math.isfinite(r.ratio) else str(r.ratio)
        holds = {True: "yes", False: "**no**", None: ""}[r.holds]
        lines.append(f"| {r.comparison} | {ratio} | {r.goal} | {holds} | {r.setting} |")
    return "\n".join(lines)


# ---- the comparisons: each returns (rows, raw results) --------------------------------------

_FLOW_NAMES = {"maf": "MAF", "realnvp": "RealNVP"}
_FLOW_METRICS = {"log_prob_per_s": "log_prob", "train_steps_per_s": "training step",
                 "samples_per_s": "sampling"}


def _flow_rows(name: str, res: dict, goals: dict, where: str, setting: str) -> list[Row]:
    from benchmarks import flows

    return [
        Row(name,
            f"{_FLOW_NAMES.get(g['flow'], g['flow'])} {_FLOW_METRICS[g['metric']]} {where}: "
            f"ppgen / {g['peer']}" + (f" ({g['best_peer']})" if g["peer"] == "fastest" else ""),
            g["ratio"], Goal(">=", g["goal"]), setting)
        for g in flows.goal_ratios(res, goals)
    ]


def flows_speed(quick: bool, seed: int) -> tuple[list[Row], Any]:
    from benchmarks import flows

    rounds, calls = (3, 2) if quick else (7, 3)
    torch.manual_seed(seed)
    res = flows.speed(64, 256, 1024, rounds, flows.LIBS, flows.FLOWS, 1024, calls)
    setting = f"throughput, median of {rounds} rounds x {calls} calls"
    return _flow_rows("flows-speed", res, flows.SPEED_GOALS, "D=64", setting), res


def flows_overhead(quick: bool, seed: int) -> tuple[list[Row], Any]:
    from benchmarks import flows

    rounds, calls = (3, 2) if quick else (9, 3)
    torch.manual_seed(seed)
    res = flows.speed(2, 64, 1024, rounds, flows.LIBS, flows.FLOWS, 1024, calls * 5)
    setting = f"per call, median of {rounds} rounds x {calls * 5} calls"
    return _flow_rows("flows-overhead", res, flows.OVERHEAD_GOALS, "D=2", setting), res


def quality_rows(results: list[dict]) -> list[Row]:
    """Flows' quality goals from ``benchmarks.flows.quality`` results: median test NLL over
    seeds, ppgen over zuko on moons (nats), ppgen over the best peer on digits (bits/dim)."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in results:
        value = r["test_bpd"] if r["data"] == "digits" else r["test_nats"]
        groups.setdefault((r["data"], r["flow"], r["lib"]), []).append(value)
    med = {k: statistics.median(v) for k, v in groups.items()}
    rows = []
    for (data, flow, lib), ours in sorted(med.items()):
        if lib != "ppgen" or flow not in _FLOW_NAMES:
            continue
        peers = {p: v for (d, f, p), v in med.items() if d == data and f == flow
                 and p not in ("ppgen", "sklearn")}
        if data == "digits":
            if not peers:
                continue
            peer = min(peers, key=peers.__getitem__)
            label = f"best peer ({peer})"
        else:
            if "zuko" not in peers:
                continue
            peer, label = "zuko", "zuko"
        n = len(groups[(data, flow, lib)])
        unit = "bits/dim" if data == "digits" else "nats"
        rows.append(Row("flows-quality", f"{_FLOW_NAMES[flow]} test NLL on {data}: ppgen / "
                        f"{label}", ours / peers[peer], Goal("<=", 1.0),
                        f"{unit}, median of {n} seed(s), early stopping"))
    return rows


def flows_quality(quick: bool, seed: int) -> tuple[list[Row], Any]:
    from benchmarks import flows

    if quick:
        return [], None
    # 8 seeds: one moons run lands anywhere in 0.34-0.53 nats (ppgen's MAF) or 0.37-0.43
    # (zuko's), so the median of 3 flips with the seeds drawn; 8 runs take about 7 minutes
    moons_seeds = list(range(seed, seed + 8))
    results = flows.quality(["moons"], moons_seeds, flows.LIBS, [], flows.FLOWS)
    results += flows.quality(["digits"], [seed], flows.LIBS, [], flows.FLOWS)
    return quality_rows(results), results


def vae_epoch(quick: bool, seed: int) -> tuple[list[Row], Any]:
    import ppgen
    from benchmarks import vae

    epochs, chunk = (20, 5) if quick else (250, 10)
    train = ppgen.datasets.load("digits", "train")
    times, _ = vae.alternate_epochs(train, epochs, chunk, 0, seed)
    ratio = statistics.median(times["ppgen"]) / statistics.median(times["plain"])
    setting = f"median of {epochs} epochs per side, rounds of {chunk} alternating"
    row = Row("vae-epoch", "VAE epoch time on digits: ppgen.fit / plain PyTorch loop", ratio,
              Goal("<=", 1.15), setting)
    return [row], {"epoch_seconds": times}


def diffusion_overhead(quick: bool, seed: int) -> tuple[list[Row], Any]:
    from benchmarks import diffusion

    rounds = 3 if quick else 9
    rows, raw = [], {}
    for dims, clip in ((2, False), (64, False), (64, True)):
        r = diffusion.overhead(dims, rounds, clip)
        where = f"D={dims}" + (", x0 clipped" if clip else "")
        raw[where] = r
        for sampler in ("ddpm", "ddim"):
            rows.append(Row("diffusion-overhead",
                            f"{sampler.upper()} per-step overhead, {where}: ppgen / diffusers",
                            r[f"ratio_{sampler}"], Goal("<=", 0.5),
                            f"network excluded, batch 1000, median of {rounds} rounds"))
    return rows, raw


def diffusion_samplers(quick: bool, seed: int) -> tuple[list[Row], Any]:
    from benchmarks import diffusion

    if quick:  # the speed does not depend on the weights: a short training suffices, and
        # diffusers' samplers (no goal here) are left out
        datasets, steps, samplers = ("moons",), 100, ("ppgen DDPM-1000", "ppgen DDIM-50")
    else:
        datasets, steps, samplers = ("moons", "digits"), 4000, None
    rows, raw = [], {}
    n = 1000
    for name in datasets:
        r = diffusion.quality(name, steps, seed, n=n, rounds=3, bound=False, samplers=samplers)
        raw[name] = r
        setting = f"{steps} training steps, {n} samples, median of 3 rounds"
        rows.append(Row("diffusion-samplers",
                        f"sampling time on {name}: ppgen DDPM-1000 / ppgen DDIM-50",
                        r["ppgen speedup"], Goal(">=", 20.0), setting))
        if not quick:
            rows.append(Row("diffusion-samplers",
                            f"energy distance on {name}: ppgen DDIM-50 / ppgen DDPM-1000",
                            r["ppgen ed_ratio"], Goal("<=", 1.5), f"{2 * n} samples"))
    return rows, raw


def nade_sampling(quick: bool, seed: int) -> tuple[list[Row], Any]:
    from benchmarks import autoregressive

    n, repeats, datas = (100, 3, ("digits",)) if quick else (500, 5, ("digits-binary", "digits"))
    res = autoregressive.sampling(n, repeats, 500, datas)
    rows = [
        Row("nade-sampling", f"NADE sampling on {r['data']} (D={r['D']}, H={r['hidden']}): "
            "naive / cached time", r["speedup"], Goal(">=", 10.0),
            f"{n} points, median of {repeats} rounds"
            + ("" if r["same_points"] else "; the two paths DIFFER"))
        for r in res
    ]
    return rows, res


def pixelcnn_sampling(quick: bool, seed: int) -> tuple[list[Row], Any]:
    from benchmarks import pixelcnn

    families = ("pixelcnn",) if quick else ("pixelcnn", "gated-pixelcnn")
    n = 1 if quick else 4
    res = pixelcnn.sampling(3, families, [(28, 256, n)])
    rows = [
        Row("pixelcnn-sampling", f"{r['family']} sampling {r['image']}: naive / fast time",
            r["speedup"], Goal(">=", 5.0),
            f"{n} sample(s) per call, median of 3 rounds"
            + ("" if r["identical"] else "; the samplers DIFFER"))
        for r in res
    ]
    return rows, res


COMPARISONS: dict[str, Callable[[bool, int], tuple[list[Row], Any]]] = {
    "flows-speed": flows_speed,
    "flows-overhead": flows_overhead,
    "flows-quality": flows_quality,
    "vae-epoch": vae_epoch,
    "diffusion-overhead": diffusion_overhead,
    "diffusion-samplers": diffusion_samplers,
    "nade-sampling": nade_sampling,
    "pixelcnn-sampling": pixelcnn_sampling,
}


def run(names: list[str] | None = None, quick: bool = False, seed: int = 0,
        comparisons: dict[str, Callable[[bool, int], tuple[list[Row], Any]]] | None = None,
        ) -> tuple[list[Row], dict[str, Any]]:
    """Run the named comparisons (all by default); returns the rows and the raw results.

    A comparison that raises becomes one error row (its traceback goes to stderr), so the
    others still run. The modules' own printing goes to stderr, keeping stdout for the table.
    """
    comparisons = COMPARISONS if comparisons is None else comparisons
    names = list(comparisons) if not names else names
    unknown = [n for n in names if n not in comparisons]
    if unknown:
        raise ValueError(f"unknown comparison(s) {unknown}; known: {list(comparisons)}")
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(sys.stderr):
                got, raw[name] = comparisons[name](quick, seed)
        except Exception as e:  # report it and go on with the other comparisons
            traceback.print_exc(file=sys.stderr)
            got = [Row(name, name, math.nan, None, error=f"{type(e).__name__}: {e}"[:200])]
        print(f"   {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        rows += got
    return rows, raw


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "pyro-ppl", "zuko", "nflows", "normflows", "diffusers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small budgets: a few minutes in all")
    p.add_argument("--only", nargs="+", default=None, choices=list(COMPARISONS),
                   metavar="NAME", help=f"run only these: {', '.join(COMPARISONS)}")
    p.add_argument("--json", default=None, help="write rows, raw results, machine to PATH")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    t0 = time.perf_counter()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows, raw = run(args.only, args.quick, args.seed)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    machine = (f"{platform.system()} {platform.processor() or platform.machine()}, "
               f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch thread(s), "
               f"load average {load0:.1f} at start, {load1:.1f} at end")
    versions = _versions()
    command = "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\n{date}; {machine}; {', '.join(f'{k} {v}' for k, v in versions.items())}")
    print(f"`{command.strip()}` ({time.perf_counter() - t0:.0f} s)\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": date, "machine": machine, "versions": versions,
                       "command": command.strip(), "quick": args.quick, "seed": args.seed,
                       "seconds": time.perf_counter() - t0,
                       "rows": [r.to_dict() for r in rows], "raw": raw}, f, indent=1,
                      default=str)
    return 1 if any(r.error is not None for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
