"""Training-step and sampling throughput of every family on CPU and on CUDA (when present).

    python -m benchmarks.devices [--families made realnvp ...] [--steps 50] [--devices cpu cuda]

For each family, on digits with the family's default hyperparameters: median seconds per
training step (batch 128, through ``ppgen.fit``'s own loop pieces: objective loss, backward,
Adam step) over ``--steps`` steps after warm-up, and seconds to draw 1000 samples. Prints a
table and the CUDA/CPU speed-ups; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import ppgen
from ppgen.inference.objectives import make_objective


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(family: str, device: torch.device, steps: int, batch_size: int = 128) -> float:
    train = ppgen.datasets.load("digits", "train")
    model = ppgen.build(family, train).to(device)
    x_all = train.data.to(device)
    ctx_all = train.labels.to(device) if model.conditional else None
    obj = make_objective(model.default_objective, model).to(device)
    groups = obj.param_groups(model)
    opts = {g: torch.optim.Adam(p, lr=1e-4) for g, p in groups.items()}
    with torch.no_grad():
        model.initialize(x_all[:batch_size])
    times = []
    for step in range(steps + 5):
        idx = torch.randint(0, len(x_all), (batch_size,), device=device)
        x = x_all[idx]
        c = None if ctx_all is None else ctx_all[idx]
        _sync(device)
        t0 = time.perf_counter()
        for g in obj.schedule(step):
            opts[g].zero_grad(set_to_none=True)
            loss = obj.loss(model, x, c, g, step)
            loss.backward()
            opts[g].step()
        _sync(device)
        if step >= 5:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sample_seconds(family: str, device: torch.device, n: int = 1000) -> float:
    train = ppgen.datasets.load("digits", "train")
    model = ppgen.build(family, train).to(device).eval()
    context = (
        train.labels[:n].repeat(n // len(train) + 1)[:n].to(device) if model.conditional else None
    )
    model.sample(8, seed=0, context=None if context is None else context[:8])  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    model.sample(n, seed=0, context=context)
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="*", default=None)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--devices", nargs="*", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    families = args.families or ppgen.models.names()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for family in families:
        results[family] = {}
        for d in devices:
            device = torch.device(d)
            try:
                results[family][d] = {
                    "step_s": step_seconds(family, device, args.steps),
                    "sample1000_s": sample_seconds(family, device),
                }
            except (ValueError, NotImplementedError) as e:
                results[family][d] = {"error": str(e)[:80]}
            print(family, d, results[family][d], flush=True)
    print()
    print(
        "| family | "
        + " | ".join(f"{d} step ms | {d} sample 1000 s" for d in devices)
        + (" | CUDA/CPU train speed-up | CUDA/CPU sample speed-up |" if len(devices) > 1 else " |")
    )
    for family, by_device in results.items():
        cells = []
        for d in devices:
            r = by_device[d]
            cells.append(
                "error | error"
                if "error" in r
                else f"{1000 * r['step_s']:.2f} | {r['sample1000_s']:.3f}"
            )
        row = f"| {family} | " + " | ".join(cells)
        if len(devices) > 1 and all("error" not in by_device[d] for d in devices):
            row += (
                f" | {by_device['cpu']['step_s'] / by_device['cuda']['step_s']:.1f}x"
                f" | {by_device['cpu']['sample1000_s'] / by_device['cuda']['sample1000_s']:.1f}x"
            )
        print(row + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "torch": torch.__version__,
                    "results": results,
                    "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
