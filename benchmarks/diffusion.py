"""ppgen's DDPM/DDIM side by side with diffusers' DDPMScheduler and DDIMScheduler.

    python -m benchmarks.diffusion [--steps 4000] [--datasets moons digits] [--json out.json]

Same data (moons standardized with the training split's moments; digits scaled to [-1, 1] by
the model itself), same trained MLP denoiser (``ppgen.models.nets.TimeMLP``, 3x256, trained
once through ``ppgen.fit`` with the family's defaults for ``--steps`` steps, batch 128), then:

1. **Sample quality and speed.** 2000 samples (batches of 1000) from ppgen's DDPM with all 1000
   steps and ppgen's DDIM with 50 steps (default settings: eta = 0, x0 clipped on digits with
   epsilon recomputed), and from diffusers' schedulers *with their default configurations*
   driving the same network; energy distance of each sample set to the held-out data (moons:
   the 5000 test points; digits: the 597 val + test images, in [-1, 1]), beside the
   data-to-data distance (the training split to the held-out data). Goals: DDIM-50 at least 20x
   faster than DDPM-1000 with an energy distance at most 1.5x DDPM-1000's, on both datasets.
2. **Per-step sampler overhead with the network excluded.** Every sampler loop driven by a
   network that returns a precomputed tensor, batch 1000, at D = 2 and D = 64 (and D = 64 with
   x0 clipped on both sides); median over alternating rounds, so the (shared) machine's noise
   hits both sides. Goal: ppgen <= 0.5x diffusers. Sampling speeds in (1) are medians of 3
   alternating rounds as well.
3. **The bound.** The digits test split's variational bound in bits/dim (exact sum over all T,
   and the importance-sampled estimate with its standard error), and moons' in nats.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import Tensor, nn

import ppgen
from ppgen.models.diffusion import DDPM


def energy_distance(a: Tensor, b: Tensor) -> float:
    """Energy distance (V-statistic), 2 E|X-Y| - E|X-X'| - E|Y-Y'|, in the data's units."""
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    return float(
        2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean()
    )


class _Fixed(nn.Module):
    """A stand-in network returning a precomputed tensor: the sampler alone is timed."""

    def __init__(self, out: Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.out


def _data(name: str) -> dict:
    """Training data as ppgen sees it, held-out data and the map from samples to the space
    the energy distance is measured in."""
    if name == "moons":
        train, test = ppgen.datasets.load("moons", "train"), ppgen.datasets.load("moons", "test")
        loc, scale = train.data.mean(0), train.data.std(0)
        z = ppgen.datasets.Dataset("moons-std", (train.data - loc) / scale, "continuous")
        return {
            "train": z,
            "held": (test.data - loc) / scale,
            "to_space": lambda x: x,
            "build": {"standardize": False},
            "clip": False,
        }
    train = ppgen.datasets.load("digits", "train")
    held = torch.cat([ppgen.datasets.load("digits", s).data for s in ("val", "test")])
    return {
        "train": train,
        "held": held / 8 - 1,
        "to_space": lambda x: x / 8 - 1,
        "build": {"denoiser": "mlp"},
        "clip": True,
    }


def _diffusers_sample(model: DDPM, cls: type, steps: int, n: int, seed: int, clip: bool) -> Tensor:
    """Sample with a diffusers scheduler in its default configuration (clip_sample left at its
    default True on digits, set False on standardized moons, whose data exceeds [-1, 1]),
    driving ppgen's trained network (diffusers' 0-based timestep k is ppgen's t = k + 1)."""
    kw = {} if clip else {"clip_sample": False}
    sched = cls(num_train_timesteps=model.config.timesteps, **kw)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    denoise = model._denoiser()
    x = torch.randn((n, *model.event_shape), generator=g)
    with torch.no_grad():
        for k in sched.timesteps:
            eps, _ = denoise(x, (k + 1).to(x.dtype))
            x = sched.step(eps, k, x, generator=g).prev_sample
    return x


def quality(name: str, steps: int, seed: int, n: int = 1000, rounds: int = 3,
            bound: bool = True, samplers: tuple[str, ...] | None = None) -> dict:
    """Train the DDPM on ``name`` for ``steps`` steps, then time and score every sampler over
    ``rounds`` alternating rounds of ``n`` samples (2 rounds scored), and (``bound``) the
    test split's bound. Returns per-sampler energy distance and seconds per 1000 samples, and
    ``"<lib> speedup"`` (DDPM-1000 over DDIM-50 time) and ``"<lib> ed_ratio"``. ``samplers``:
    the labels to run (default: all four)."""
    d = _data(name)
    model = ppgen.build("ddpm", d["train"], timesteps=1000, hidden=[256, 256, 256], **d["build"])
    t0 = time.perf_counter()
    ppgen.fit(model, d["train"], steps=steps, seed=seed, progress=False, device="cpu")
    out: dict = {"train_s": time.perf_counter() - t0}
    held, space = d["held"], d["to_space"]
    out["ed_data"] = energy_distance(space(d["train"].data[:2000]), held)
    from diffusers import DDIMScheduler, DDPMScheduler

    runs = {
        "ppgen DDPM-1000": lambda s: model.sample(n, seed=s, sampler="ddpm"),
        "ppgen DDIM-50": lambda s: model.sample(n, seed=s, sampler="ddim", sampling_steps=50),
        "diffusers DDPM-1000": lambda s: _diffusers_sample(
            model, DDPMScheduler, 1000, n, s, d["clip"]
        ),
        "diffusers DDIM-50": lambda s: _diffusers_sample(
            model, DDIMScheduler, 50, n, s, d["clip"]
        ),
    }
    runs = {k: v for k, v in runs.items() if samplers is None or k in samplers}
    samples: dict[str, list[Tensor]] = {k: [] for k in runs}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds):  # alternating rounds: `rounds` x n samples each, timed; 2n scored
        for label, draw in runs.items():
            t0 = time.perf_counter()
            samples[label].append(draw(seed + 1 + r))
            times[label].append(time.perf_counter() - t0)
    for label in runs:
        x = torch.cat(samples[label][:2])
        if label.startswith("diffusers") and model.config.kind != "continuous":
            x = ((x + 1) * 8).round().clamp(0, 16)  # the nearest level, as ppgen's decoder mode
        x = space(x)
        out[label] = {
            "ed": energy_distance(x, held),
            "sample_s_per_1000": statistics.median(times[label]) * 1000 / n,
            "finite": bool(torch.isfinite(x).all()),
        }
        print(f"  {name} {label}: {out[label]}", flush=True)
    for lib in ("ppgen", "diffusers"):
        if f"{lib} DDPM-1000" not in out or f"{lib} DDIM-50" not in out:
            continue
        ddpm, ddim = out[f"{lib} DDPM-1000"], out[f"{lib} DDIM-50"]
        out[f"{lib} speedup"] = ddpm["sample_s_per_1000"] / ddim["sample_s_per_1000"]
        out[f"{lib} ed_ratio"] = ddim["ed"] / ddpm["ed"]
    if not bound:
        return out
    # the bound, on the test split as given
    test = ppgen.datasets.load("digits" if name == "digits" else "moons", "test")
    x_test = test.data if name == "digits" else held[:1000]  # the exact sum costs T calls each
    t0 = time.perf_counter()
    ev = ppgen.evaluate(model, x_test, seed=seed)
    out["bound_exact"] = {**ev.to_dict(), "seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    ev = ppgen.evaluate(model, x_test, seed=seed, method="importance", num_t=32)
    out["bound_importance_32"] = {**ev.to_dict(), "seconds": time.perf_counter() - t0}
    return out


def overhead(dims: int, rounds: int, clip: bool) -> dict:
    """Median seconds per step of each sampler loop with the network replaced by a constant,
    x0 clipped to [-1, 1] (discrete data) or not (continuous data) on both sides."""
    from diffusers import DDIMScheduler, DDPMScheduler

    n = 1000
    kind = {"kind": "discrete", "levels": 17} if clip else {"kind": "continuous"}
    model = DDPM(event_shape=(dims,), timesteps=1000, hidden=[8], **kind)
    model.net = _Fixed(torch.zeros(n, dims))
    net = _Fixed(torch.zeros(n, dims))

    def ours(sampler: str) -> float:
        t0 = time.perf_counter()
        model.sample(n, seed=0, sampler=sampler, sampling_steps=1000)
        return (time.perf_counter() - t0) / 1000

    def theirs(cls: type) -> float:
        sched = cls(num_train_timesteps=1000, clip_sample=clip)
        sched.set_timesteps(1000)
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        x = torch.randn(n, dims, generator=g)
        for k in sched.timesteps:
            x = sched.step(net(x, k), k, x, generator=g).prev_sample
        return (time.perf_counter() - t0) / 1000

    fns = {
        "ppgen DDPM": lambda: ours("ddpm"),
        "diffusers DDPM": lambda: theirs(DDPMScheduler),
        "ppgen DDIM": lambda: ours("ddim"),
        "diffusers DDIM": lambda: theirs(DDIMScheduler),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(fn())
    med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    return {
        "us_per_step": med,
        "ratio_ddpm": med["ppgen DDPM"] / med["diffusers DDPM"],
        "ratio_ddim": med["ppgen DDIM"] / med["diffusers DDIM"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--datasets", nargs="*", default=["moons", "digits"])
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds of the overhead runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.system()} {platform.machine()}, 1 torch thread, shared host",
        "torch": torch.__version__,
    }
    import diffusers

    results["diffusers"] = diffusers.__version__
    for dims, clip in ((2, False), (64, False), (64, True)):
        key = f"overhead_D{dims}" + ("_clipped" if clip else "")
        results[key] = r = overhead(dims, args.rounds, clip)
        print(f"{key}: {r}", flush=True)
    if not args.skip_quality:
        for name in args.datasets:
            print(f"== {name}", flush=True)
            results[name] = quality(name, args.steps, args.seed)
    print(json.dumps(results, indent=1, default=float))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)


if __name__ == "__main__":
    main()
