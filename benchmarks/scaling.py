"""Data-parallel scaling on CPU: 1 vs 2 gloo processes at equal global batch, and DDP's cost.

    python -m benchmarks.scaling [--families made ddpm] [--batch-size 256] [--steps 60]
                                 [--rounds 3] [--overhead-steps 40] [--json out.json]

1. Throughput (training examples per second through ``ppgen.fit``) of each family on digits with
   its default hyperparameters, at the same global batch, in three set-ups launched by
   ``torchrun --standalone``: 1 process with 1 thread, 1 process with 2 threads, 2 processes
   with 1 thread each (gloo on loopback). The rate is taken between step 10 and the last step
   (the first steps build the model, join the group and warm up). The set-ups alternate within
   each round; the table gives medians over rounds, so load from other users of a shared
   machine hits every set-up alike.
2. The DDP wrapper's cost in one process: one training step (the trainer's pieces: objective
   loss, backward, Adam) plain, wrapped in ``DistributedDataParallel`` (a 1-process gloo group),
   and wrapped plus the trainer's two per-step all-reduces (the global loss, the stop flag);
   blocks of steps alternate, medians of per-step times.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SETUPS = [("1 process x 1 thread", 1, 1), ("1 process x 2 threads", 1, 2),
          ("2 processes x 1 thread", 2, 1)]


def _worker(family: str, steps: int, batch_size: int, threads: int) -> None:
    """One training run (one rank of it); rank 0 prints its examples/s as JSON."""
    import ppgen

    torch.set_num_threads(threads)
    train = ppgen.datasets.load("digits", "train")
    torch.manual_seed(0)
    model = ppgen.build(family, train)
    hist = ppgen.fit(model, train, steps=steps, batch_size=batch_size, seed=0, device="cpu",
                     progress=False, log_every=10)
    if int(os.environ.get("RANK", "0")) == 0:
        t = {r["step"]: r["time"] for r in hist.train}
        rate = (steps - 10) * batch_size / (t[steps] - t[10])
        print(json.dumps({"examples_per_s": rate}))


def throughput(family: str, processes: int, threads: int, steps: int, batch_size: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={processes}", str(Path(__file__).resolve()), "--worker", family,
           str(steps), str(batch_size), str(threads)]
    return float(_run(cmd, env)["examples_per_s"])


def _run(cmd: list[str], env: dict[str, str]) -> dict:
    """Run a worker; its last JSON line. A failed launch is retried once (a shared machine)."""
    for attempt in range(2):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode == 0:
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            return json.loads(lines[-1])
        print(f"launch failed (attempt {attempt + 1}):", out.stderr[-3000:], file=sys.stderr)
    raise RuntimeError(f"{cmd} failed twice")


def ddp_overhead(family: str, batch_size: int, steps: int, rounds: int) -> dict[str, float]:
    """Median ms per step: plain, DDP-wrapped, DDP + the trainer's per-step all-reduces."""
    import torch.distributed as dist

    import ppgen
    from ppgen.inference import distributed
    from ppgen.inference.objectives import make_objective

    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                                world_size=1)
    train = ppgen.datasets.load("digits", "train")
    torch.manual_seed(0)
    model = ppgen.build(family, train)
    obj = make_objective(model.default_objective, model)
    groups = obj.param_groups(model)
    opts = {g: torch.optim.Adam(p, lr=1e-4) for g, p in groups.items()}
    with torch.no_grad():
        model.initialize(train.data[:batch_size])
    plain = distributed._Loss(model, obj)
    # as the trainer wraps (a GAN's discriminator step leaves the generator unused), and without
    # the search for unused parameters (what a one-group objective could use)
    wrapped = torch.nn.parallel.DistributedDataParallel(plain, find_unused_parameters=True)
    lean = torch.nn.parallel.DistributedDataParallel(plain, find_unused_parameters=False)
    model.train()

    def step(loss_fn, s: int, collectives: bool) -> float:
        idx = torch.randint(0, len(train), (batch_size,))
        x = train.data[idx]
        t0 = time.perf_counter()
        for g in obj.schedule(s):
            opts[g].zero_grad(set_to_none=True)
            loss = loss_fn(x, None, g, s)
            loss.backward()
            if collectives:
                dist.all_reduce(loss.detach().double())
                dist.all_reduce(torch.zeros(1, dtype=torch.int64), op=dist.ReduceOp.MAX)
            opts[g].step()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {"plain": [], "ddp": [], "ddp+collectives": [],
                                     "ddp-lean": []}
    s = 0
    for _ in range(5):  # warm-up
        step(plain, s, False)
        step(wrapped, s, True)
        s += 1
    for _ in range(rounds):
        for name, fn, coll in (("plain", plain, False), ("ddp", wrapped, False),
                               ("ddp+collectives", wrapped, True), ("ddp-lean", lean, False)):
            for _ in range(steps):
                times[name].append(step(fn, s, coll))
                s += 1
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        family, steps, batch_size, threads = sys.argv[2:6]
        _worker(family, int(steps), int(batch_size), int(threads))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--overhead-worker":
        family, batch_size, steps, rounds = sys.argv[2:6]
        torch.set_num_threads(1)
        print(json.dumps(ddp_overhead(family, int(batch_size), int(steps), int(rounds))))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="*", default=["made", "ddpm"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--overhead-steps", type=int, default=40)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    results: dict[str, dict] = {}
    for family in args.families:
        rates: dict[str, list[float]] = {name: [] for name, _, _ in SETUPS}
        for r in range(args.rounds):
            order = SETUPS if r % 2 == 0 else SETUPS[::-1]
            for name, processes, threads in order:
                rates[name].append(
                    throughput(family, processes, threads, args.steps, args.batch_size)
                )
                print(family, name, f"{rates[name][-1]:.0f} examples/s", flush=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        overhead = _run([sys.executable, str(Path(__file__).resolve()), "--overhead-worker",
                         family, str(args.batch_size), str(args.overhead_steps),
                         str(args.rounds)], env)
        print(family, "ms/step", overhead, flush=True)
        results[family] = {"examples_per_s": rates, "ms_per_step_1_process": overhead}

    print(f"\nthroughput, global batch {args.batch_size}, examples/s (median of {args.rounds}):")
    print("| family | " + " | ".join(n for n, _, _ in SETUPS)
          + " | 2 proc / 1 thread | 2 proc / 2 threads |")
    print("|---" * (len(SETUPS) + 3) + "|")
    for family, r in results.items():
        med = {n: statistics.median(v) for n, v in r["examples_per_s"].items()}
        one, two_threads, two = (med[n] for n, _, _ in SETUPS)
        print(f"| {family} | {one:.0f} | {two_threads:.0f} | {two:.0f} | {two / one:.2f}x | "
              f"{two / two_threads:.2f}x |")
    print("\nDDP wrapper in 1 process (1 thread), ms per step (median):")
    print("| family | plain | DDP (as the trainer) | + per-step all-reduces | overhead | "
          "DDP, find_unused_parameters=False |")
    print("|---|---|---|---|---|---|")
    for family, r in results.items():
        o = r["ms_per_step_1_process"]
        print(f"| {family} | {o['plain']:.2f} | {o['ddp']:.2f} | {o['ddp+collectives']:.2f} | "
              f"{100 * (o['ddp+collectives'] / o['plain'] - 1):+.1f}% | {o['ddp-lean']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"torch": torch.__version__, "batch_size": args.batch_size, "steps": args.steps,
             "results": results}, indent=2))


if __name__ == "__main__":
    main()
