"""Few-step samplers of one trained DDPM: DPM-Solver++(2M) and Heun against DDPM-1000, DDIM-50
and diffusers' DPMSolverMultistepScheduler, and the probability-flow likelihood beside the bound.

    python -m benchmarks.few_step [--steps 4000] [--seeds 0 1 2] [--n 1000] [--json out.json]

Setup as :mod:`benchmarks.diffusion`: moons standardized with the training split's moments, one
ppgen DDPM (T = 1000, linear schedule, epsilon prediction, ``TimeMLP`` 3x256) trained with
``ppgen.fit``'s defaults for ``--steps`` steps. Then, with that one network:

1. **Quality at about 10 network calls.** ``n`` samples per seed from every sampler; energy
   distance to the 5000 held-out test points; the median over ``--seeds`` (each seed draws its
   own x_T). diffusers' ``DPMSolverMultistepScheduler`` in its default configuration
   (DPM-Solver++, order 2, "linspace" spacing, lower order and sigma = 0 at the final step)
   drives the same network at the same number of calls. Goal (issue 21): ``dpm++2m`` at 10
   calls within 1.1x DDPM-1000's energy distance, and no worse than diffusers'.
2. **Per-step overhead, network excluded**: each DPM-Solver++ loop driven by a stand-in that
   returns a fixed tensor, batch 1000, at D = 2 and 64; median of alternating rounds. Goal:
   ppgen <= 0.5x diffusers.
3. **Likelihood** (``--likelihood``): ``ppgen.evaluate(m, test, estimator="ode")`` (exact trace,
   dopri5 at rtol = atol = 1e-5) beside the bound (``estimator="elbo"``), nats, on the first
   ``--likelihood-n`` test points.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import Tensor

import ppgen
from benchmarks.diffusion import _data, _Fixed, energy_distance
from ppgen.models.diffusion import DDPM
from ppgen.models.diffusion.samplers import network_calls


def _diffusers_dpm(model: DDPM, steps: int, n: int, seed: int) -> Tensor:
    """diffusers' DPMSolverMultistepScheduler (default configuration) driving ppgen's network
    (diffusers' 0-based timestep k is ppgen's t = k + 1)."""
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(num_train_timesteps=model.config.timesteps)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    denoise = model._denoiser()
    x = torch.randn((n, *model.event_shape), generator=g)
    scale = 1000.0 / model.config.timesteps
    with torch.no_grad():
        for k in sched.timesteps:
            eps, _ = denoise(x, ((k + 1) * scale).to(x.dtype))
            x = sched.step(eps, k, x).prev_sample
    return x


def quality(model: DDPM, held: Tensor, seeds: list[int], n: int, diffusers: bool) -> dict:
    """Median energy distance (and seconds per 1000 samples) of each sampler over ``seeds``."""
    runs: dict[str, tuple[int, object]] = {
        "ppgen DDPM-1000": (1000, lambda s: model.sample(n, seed=s, sampler="ddpm")),
        "ppgen DDIM-50": (50, lambda s: model.sample(n, seed=s, sampler="ddim",
                                                     sampling_steps=50)),
        "ppgen DDIM-10": (10, lambda s: model.sample(n, seed=s, sampler="ddim",
                                                     sampling_steps=10)),
    }
    for spacing in ("uniform", "quadratic", "karras"):
        runs[f"ppgen dpm++2m-10 {spacing}"] = (
            10, lambda s, sp=spacing: model.sample(n, seed=s, sampler="dpm++2m",
                                                    sampling_steps=10, spacing=sp))
    for spacing in ("karras", "uniform", "quadratic"):
        runs[f"ppgen heun-5 {spacing}"] = (
            network_calls("heun", 5), lambda s, sp=spacing: model.sample(
                n, seed=s, sampler="heun", sampling_steps=5, spacing=sp))
    if diffusers:
        runs["diffusers DPMSolverMultistep-10"] = (
            10, lambda s: _diffusers_dpm(model, 10, n, s))
    eds: dict[str, list[float]] = {k: [] for k in runs}
    secs: dict[str, list[float]] = {k: [] for k in runs}
    for seed in seeds:  # alternating: every sampler once per seed
        for label, (_, draw) in runs.items():
            t0 = time.perf_counter()
            x = draw(seed)  # type: ignore[operator]
            secs[label].append(time.perf_counter() - t0)
            eds[label].append(energy_distance(x, held))
    out: dict = {}
    for label, (calls, _) in runs.items():
        out[label] = {
            "calls": calls,
            "ed_median": statistics.median(eds[label]),
            "ed_per_seed": eds[label],
            "s_per_1000": statistics.median(secs[label]) * 1000 / n,
        }
        print(f"  {label}: {out[label]}", flush=True)
    ref = out["ppgen DDPM-1000"]["ed_median"]
    for label in out:
        out[label]["ed_ratio_to_ddpm1000"] = out[label]["ed_median"] / ref
    return out


def overhead(dims: int, rounds: int, steps: int = 200) -> dict:
    """Median microseconds per DPM-Solver++(2M) step with the network replaced by a constant."""
    from diffusers import DPMSolverMultistepScheduler

    n = 1000
    model = DDPM(event_shape=(dims,), timesteps=1000, hidden=[8], standardize=False)
    model.net = _Fixed(torch.zeros(n, dims))
    net = _Fixed(torch.zeros(n, dims))

    def ours() -> float:
        t0 = time.perf_counter()
        model.sample(n, seed=0, sampler="dpm++2m", sampling_steps=steps)
        return (time.perf_counter() - t0) / steps

    def theirs() -> float:
        sched = DPMSolverMultistepScheduler(num_train_timesteps=1000)
        sched.set_timesteps(steps)
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        x = torch.randn(n, dims, generator=g)
        for k in sched.timesteps:
            x = sched.step(net(x, k), k, x).prev_sample
        return (time.perf_counter() - t0) / steps

    times: dict[str, list[float]] = {"ppgen": [], "diffusers": []}
    for _ in range(rounds):
        times["ppgen"].append(ours())
        times["diffusers"].append(theirs())
    med = {k: statistics.median(v) * 1e6 for k, v in times.items()}
    return {"us_per_step": med, "ratio": med["ppgen"] / med["diffusers"]}


def likelihood(model: DDPM, held: Tensor, n: int) -> dict:
    """The probability-flow ODE likelihood and the bound on the first ``n`` held-out points."""
    out = {}
    for name, opts in (("ode", {"rtol": 1e-5, "atol": 1e-5}), ("elbo", {})):
        t0 = time.perf_counter()
        ev = ppgen.evaluate(model, held[:n], estimator=name, **opts)
        out[name] = {**ev.to_dict(), "seconds": time.perf_counter() - t0}
        print(f"  {name}: {ev}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4000, help="training steps")
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=1000, help="samples per seed")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the overhead runs")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--likelihood", action="store_true")
    p.add_argument("--likelihood-n", type=int, default=1000)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    try:
        import diffusers  # noqa: F401

        have_diffusers = True
    except ImportError:
        have_diffusers = False
    result: dict = {
        "machine": f"{platform.system()} {platform.machine()}, torch {torch.__version__}",
        "diffusers": have_diffusers,
        "threads": torch.get_num_threads(),
    }
    d = _data("moons")
    model = ppgen.build("ddpm", d["train"], timesteps=1000, hidden=[256, 256, 256], **d["build"])
    t0 = time.perf_counter()
    ppgen.fit(model, d["train"], steps=args.steps, seed=0, progress=False, device="cpu")
    result["train_s"] = time.perf_counter() - t0
    held = d["held"]
    result["ed_data"] = energy_distance(d["train"].data[:args.n], held)
    print(f"moons: trained in {result['train_s']:.0f} s; data-to-data ED "
          f"{result['ed_data']:.5f}", flush=True)
    result["quality"] = quality(model, held, args.seeds, args.n, have_diffusers)
    if have_diffusers and not args.skip_overhead:
        result["overhead"] = {f"D={dims}": overhead(dims, args.rounds) for dims in (2, 64)}
        print(f"  overhead: {result['overhead']}", flush=True)
    if args.likelihood:
        result["likelihood"] = likelihood(model, held, args.likelihood_n)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
