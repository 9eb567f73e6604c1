"""The main job: every family trained and measured side by side on the same data.

``ppgen benchmark [--data digits] [--preset quick|full] [--families ...] [--out DIR] [--seed]``
trains each family through the shared trainer at a preset budget, then measures on the test
split: likelihood in bits/dim with its kind and standard error, sample quality, training time,
time to draw 1000 samples and to score 1000 test points, and whether latents are available. It
prints the table, writes ``DIR/report.md`` (table, command, versions, hardware),
``DIR/results.json`` and figures (samples beside real data, training curves, and for 2-D data
the learned density beside the true one).

The budgets live in :data:`PRESETS` as plain data: family name -> fit and build arguments. This
module sits above ``inference`` (like the CLI), so naming families here is configuration, not a
special case in the shared layer.
"""

from __future__ import annotations

__all__ = ["PRESETS", "run"]

import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ppgen import datasets, models
from ppgen.datasets.base import Dataset
from ppgen.fitting import fit
from ppgen.inference.likelihood import evaluate, select_observation_scale
from ppgen.inference.trainer import resolve_device
from ppgen.models.base import AbstractGenerativeModel

# family -> {"build": hyperparameters, "fit": trainer arguments, "evaluate": estimator options}
_QUICK: dict[str, dict[str, Any]] = {
    "independent": {"build": {}, "fit": {"steps": 300, "batch_size": 256, "lr": 0.05}},
    # ~30-35 s of training each on 2 CPU cores (about 21 ms per step on one core)
    "nade": {"build": {"hidden": [128]}, "fit": {"steps": 1500, "batch_size": 128, "lr": 3e-3}},
    "made": {"build": {}, "fit": {"steps": 1500, "batch_size": 128, "lr": 1e-3}},
    "pixelcnn": {
        "build": {"hidden": [32, 32, 32]},
        "fit": {"steps": 300, "batch_size": 64, "lr": 3e-3},
    },
    "gated-pixelcnn": {
        "build": {"hidden": [32, 32, 32]},
        "fit": {"steps": 300, "batch_size": 64, "lr": 3e-3},
    },
    # flows: three of six in the quick preset (about 20-40 s each on 2 free cores); all six in
    # full. MAF overfits the 1200 digits after ~300 steps (val 2.19 bits/dim, then rising), and
    # the trainer evaluates the last weights, so its budget stops near the best step.
    "realnvp": {"build": {"transforms": 6, "hidden": [64, 64]},
                "fit": {"steps": 600, "batch_size": 128, "lr": 1e-3}},
    "glow": {"build": {"transforms": 6, "hidden": [64, 64]},
             "fit": {"steps": 1200, "batch_size": 128, "lr": 1e-3}},
    "maf": {"build": {"transforms": 5, "hidden": [256, 256]},
            "fit": {"steps": 350, "batch_size": 128, "lr": 1e-3}},
    "vae": {
        "build": {"latent": 16, "hidden": [256, 256]},
        "fit": {"steps": 1600, "batch_size": 100, "lr": 1e-3},
        "evaluate": {"num_particles": 100},
    },
    # diffusion: an MLP denoiser (a U-Net step costs 15-30x more on CPU), T = 100 and the large
    # fixed variances (at this budget a much tighter bound than T = 1000: 3.1 against 3.9
    # bits/dim), 1000 samples by DDIM-50, the bound summed exactly over the 100 times
    "ddpm": {
        "build": {
            "denoiser": "mlp",
            "hidden": [512, 512],
            "time_features": 64,
            "timesteps": 100,
            "variance": "large",
            "sampler": "ddim",
            "sampling_steps": 50,
        },
        "fit": {"steps": 1500, "batch_size": 128},
        "evaluate": {"method": "exact"},
    },
    "gan": {
        "build": {"latent": 16, "hidden": [64, 32]},
        "fit": {"steps": 1000, "batch_size": 128, "lr": 5e-4},
        "evaluate": {"num_steps": 30, "num_particles": 2, "leapfrog_steps": 2},
    },
}
_FULL: dict[str, dict[str, Any]] = {
    "independent": {"build": {}, "fit": {"steps": 2000, "batch_size": 256, "lr": 0.02}},
    # a latent-class / Gaussian mixture trained by gradient from its EM start (the classical
    # rows beside it are fitted by EM on all of the training split, settings chosen on val)
    "mixture": {"build": {"components": 8}, "fit": {"steps": 1000, "batch_size": 256,
                                                     "lr": 0.01}},
    "nade": {"build": {}, "fit": {"steps": 4000, "batch_size": 128, "lr": 1e-3}},
    "made": {"build": {}, "fit": {"steps": 4000, "batch_size": 128, "lr": 1e-3}},
    "pixelcnn": {
        "build": {"hidden": [32, 32, 32, 32], "dropout": 0.3},
        "fit": {"steps": 1000, "batch_size": 64, "lr": 2e-3},
    },
    "gated-pixelcnn": {
        "build": {"hidden": [32, 32, 32, 32], "dropout": 0.3},
        "fit": {"steps": 1000, "batch_size": 64, "lr": 2e-3},
    },
    "nice": {"build": {"transforms": 6, "hidden": [256, 256]},
             "fit": {"steps": 1000, "batch_size": 128, "lr": 1e-3}},
    "realnvp": {"build": {"transforms": 8, "hidden": [64, 64]},
                "fit": {"steps": 3000, "batch_size": 128, "lr": 1e-3}},
    "glow": {"build": {"transforms": 8, "hidden": [64, 64]},
             "fit": {"steps": 3000, "batch_size": 128, "lr": 1e-3}},
    "maf": {"build": {"transforms": 5, "hidden": [256, 256]},
            "fit": {"steps": 350, "batch_size": 128, "lr": 1e-3}},
    "iaf": {"build": {"transforms": 5, "hidden": [256, 256]},
            "fit": {"steps": 350, "batch_size": 128, "lr": 1e-3}},
    "ffjord": {"build": {"transforms": 1, "hidden": [256, 256], "rtol": 1e-4, "atol": 1e-4},
               "fit": {"steps": 2000, "batch_size": 128, "lr": 1e-3}},
    "vae": {
        "build": {"latent": 16, "hidden": [256, 256]},
        "fit": {"steps": 3000, "batch_size": 100, "lr": 1e-3},
    },
    # diffusion: learned variances with the hybrid loss, a longer EMA, the exact bound
    "ddpm": {
        "build": {
            "denoiser": "mlp",
            "hidden": [512, 512, 512],
            "time_features": 64,
            "timesteps": 100,
            "variance": "learned",
            "sampler": "ddim",
            "sampling_steps": 50,
        },
        "fit": {"steps": 8000, "batch_size": 128, "ema": 0.999},
        "evaluate": {"method": "exact"},
    },
    "gan": {
        "build": {"latent": 16, "hidden": [64, 32]},
        "fit": {"steps": 3000, "batch_size": 128, "lr": 5e-4},
        "evaluate": {"num_steps": 100, "num_particles": 8},
    },
    # sequence families (on images they read each image as one step of its pixels; their own
    # comparison on series is benchmarks/sequences.py)
    "lgssm": {"build": {"state": 16}, "fit": {"steps": 2000, "batch_size": 128, "lr": 1e-2}},
    "seq-ar": {"build": {"hidden": [128], "components": 5},
               "fit": {"steps": 3000, "batch_size": 128, "lr": 1e-3}},
    "dmm": {"build": {"latent": 16, "hidden": [128, 128], "warmup": 500},
            "fit": {"steps": 3000, "batch_size": 128, "lr": 1e-3}},
}
PRESETS: dict[str, dict[str, Any]] = {
    # a smoke test of the whole pipeline: the quick families at 5 steps, short AIS schedules
    "tiny": {
        "families": {
            k: {
                **v,
                "fit": {**v["fit"], "steps": 5},
                "evaluate": {
                    **v.get("evaluate", {}),
                    **({"num_steps": 5} if "num_steps" in v.get("evaluate", {}) else {}),
                },
            }
            for k, v in _QUICK.items()
        },
        "seeds": [0],
        "num_samples": 64,
        "num_score": 64,
        "density_grid": 16,
    },
    "quick": {"families": _QUICK, "seeds": [0], "num_samples": 1000, "num_score": 1000,
              "density_grid": 64},
    "full": {"families": _FULL, "seeds": [0, 1, 2], "num_samples": 1000, "num_score": 1000,
             "density_grid": 100},
}


@dataclasses.dataclass
class FamilyResult:
    """One family's measurements on one seed."""

    family: str
    seed: int
    likelihood: dict[str, Any]
    kl_to_data: float | None
    train_seconds: float
    sample_seconds_per_1000: float
    score_seconds_per_1000: float
    latents: list[str]
    posterior: list[str]
    quality: dict[str, Any]
    steps: int
    #: for a classical baseline, the settings its validation split chose (``"K=3, full"``)
    baseline: str | None = None


def _latent_sites(model: AbstractGenerativeModel, x: Tensor) -> list[str]:
    """Names of the latent sample sites of ``model(x)`` (what a posterior could be over)."""
    from pyro import poutine
    from pyro.poutine.util import site_is_subsample

    with torch.no_grad():
        trace = poutine.trace(model.model).get_trace(x)
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]


def _posterior_methods(
    model: AbstractGenerativeModel, x: Tensor, latents: list[str]
) -> list[str]:
    """The ``ppgen.posterior`` methods available: ``"guide"`` when the guide draws every latent
    site (an amortized q(z | x)), ``"nuts"`` whenever there are latent sites (MCMC over them
    with the networks fixed; an implicit model's Delta site smoothed by its observation scale)."""
    if not latents:
        return []
    from pyro import poutine

    with torch.no_grad():
        trace = poutine.trace(model.guide).get_trace(x)
    drawn = {name for name, site in trace.nodes.items() if site["type"] == "sample"}
    return (["guide"] if set(latents) <= drawn else []) + ["nuts"]


def _short(names: list[str], most: int = 4) -> str:
    """A list of site names for a table cell: long lists (a diffusion's x_1..x_T) shortened."""
    if not names:
        return "none"
    if len(names) <= most:
        return ", ".join(names)
    return f"{names[0]}, ..., {names[-1]} ({len(names)} sites)"


def _timed(fn: Any, repeats: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _quality(samples: Tensor, test: Dataset, seed: int) -> dict[str, Any]:
    """Sample quality of ``samples`` against the test split: Frechet distance and KID on
    features (the fixed digits classifier for digits, raw points otherwise), k-NN
    precision/recall/density/coverage. A metric that cannot run on these samples (non-finite
    values) is recorded as nan with the reason, so one broken family does not stop the run."""
    from ppgen.inference import metrics

    x = samples.float().cpu()
    y = test.data.float()
    out: dict[str, Any] = {}
    try:
        fd = metrics.frechet_distance(x, y)
        out["fd"], out["fd_stderr"], out["features"] = fd.value, fd.stderr, fd.features
        kid = metrics.kid(x, y, seed=seed)
        out["kid"], out["kid_stderr"], out["kid_p_value"] = kid.value, kid.stderr, kid.p_value
        pr = metrics.precision_recall(x, y, k=5)
        out["precision"], out["recall"] = pr.precision, pr.recall
        out["density"], out["coverage"] = pr.density, pr.coverage
    except metrics.MetricError as e:
        out["error"] = str(e)
        for key in ("fd", "kid", "precision", "recall"):
            out.setdefault(key, float("nan"))
    return out


def _measure(
    name: str,
    spec: dict[str, Any],
    train: Dataset,
    val: Dataset,
    test: Dataset,
    seed: int,
    device: torch.device,
    out: Path,
    progress: bool,
    num_samples: int,
    num_score: int,
    density_grid: int | None = None,
    model: AbstractGenerativeModel | None = None,
) -> tuple[FamilyResult, Tensor, Any]:
    if model is None:
        model = models.build(name, train, **spec.get("build", {}))
    run_dir = out / f"{name}-seed{seed}"
    t0 = time.perf_counter()
    hist = fit(
        model,
        train,
        val=val,
        seed=seed,
        device=device,
        out=run_dir,
        overwrite=True,  # the benchmark's own directory: a rerun replaces its runs
        progress=progress,
        **spec["fit"],
    )
    train_seconds = time.perf_counter() - t0
    ev_options = dict(spec.get("evaluate", {}))
    if model.likelihood == "none" and "observation_scale" not in ev_options:
        # an implicit model is scored under a Gaussian observation model whose scale is chosen
        # on the validation split, never the test split (Wu et al. 2017)
        ev_options["observation_scale"] = select_observation_scale(
            model, val, seed=seed, **ev_options
        )
    ev = evaluate(model, test, seed=seed, **ev_options)
    kl = None
    if test.entropy is not None and ev.kind in ("exact", "lower_bound", "estimate"):
        kl = ev.nats - test.entropy  # KL(p_data || p_model) = NLL - H(p_data), in nats
    samples = model.sample(num_samples, seed=seed)
    sample_s = _timed(lambda: model.sample(num_samples, seed=seed), repeats=1)
    reps = math.ceil(num_score / len(test))
    x_score = test.data.repeat(reps, *([1] * len(test.event_shape)))[:num_score]
    # the cost of a score, without the Monte Carlo error's second pass (reported in the row)
    score_s = _timed(
        lambda: evaluate(model, x_score, seed=seed, mc_examples=0, **ev_options), repeats=1
    )
    quality = _quality(samples, test, seed)
    if density_grid and _two_d(test):
        _density_figure(model, name, ev.kind, test, ev_options, seed, density_grid,
                        out / f"density-{name}.png")
    latents = _latent_sites(model, test.data[:2].to(device))
    result = FamilyResult(
        family=name,
        seed=seed,
        likelihood={**ev.to_dict(), **({"observation_scale": ev_options["observation_scale"]}
                                       if "observation_scale" in ev_options else {})},
        kl_to_data=kl,
        train_seconds=train_seconds,
        sample_seconds_per_1000=sample_s * 1000 / num_samples,
        score_seconds_per_1000=score_s * 1000 / num_score,
        latents=latents,
        posterior=_posterior_methods(model, test.data[:2].to(device), latents),
        quality=quality,
        steps=hist.steps,
    )
    return result, samples.cpu(), hist


def _measure_baselines(
    train: Dataset, val: Dataset, test: Dataset, seed: int, num_samples: int, num_score: int,
    out: Path, density_grid: int | None,
) -> list[tuple[FamilyResult, Tensor]]:
    """The classical estimators of :mod:`ppgen.baselines` (settings chosen on ``val``), scored
    on ``test`` by the same ``evaluate`` path as every family and measured the same way."""
    from ppgen.baselines import classical_baselines

    t0 = time.perf_counter()
    fitted = classical_baselines(train, val, seed=seed)
    fit_seconds = (time.perf_counter() - t0) / max(1, len(fitted))
    rows = []
    for name, b in fitted.items():
        ev = evaluate(b.model, test, seed=seed)
        if density_grid and _two_d(test):
            _density_figure(b.model, name, ev.kind, test, {}, seed, density_grid,
                            out / f"density-{name}.png")
        kl = None if test.entropy is None else ev.nats - test.entropy
        samples = b.model.sample(num_samples, seed=seed)
        sample_s = _timed(lambda m=b.model: m.sample(num_samples, seed=seed), repeats=1)
        reps = math.ceil(num_score / len(test))
        x_score = test.data.repeat(reps, *([1] * len(test.event_shape)))[:num_score]
        score_s = _timed(lambda m=b.model, x=x_score: evaluate(m, x, seed=seed, mc_examples=0),
                         repeats=1)
        rows.append((FamilyResult(
            family=name, seed=seed, likelihood=ev.to_dict(), kl_to_data=kl,
            train_seconds=fit_seconds, sample_seconds_per_1000=sample_s * 1000 / num_samples,
            score_seconds_per_1000=score_s * 1000 / num_score, latents=[], posterior=[],
            quality=_quality(samples, test, seed), steps=0, baseline=b.setting,
        ), samples.cpu()))
    return rows


def _density_figure(
    model: AbstractGenerativeModel,
    name: str,
    kind: str,
    test: Dataset,
    ev_options: dict[str, Any],
    seed: int,
    size: int,
    path: Path,
) -> None:
    """The learned 2-D density on a ``size`` x ``size`` grid (scored by the same estimator and
    options as the test split, so a bound or an estimate is drawn as such and says so) beside
    the true density where the data set knows it, with test points overlaid."""
    from ppgen.plots import density_heatmap

    def log_prob(x: Tensor) -> Tensor:
        return evaluate(model, x, seed=seed, mc_examples=0, **ev_options).per_example

    density_heatmap(log_prob, data=test.data, path=path, true_log_prob=test.true_log_prob,
                    size=size, title=f"{name} ({kind})")


def _table(results: list[FamilyResult]) -> str:
    head = (
        "| family | bits/dim | kind | estimator | KL to data (nats) | FD | KID | precision | "
        "recall | train s | sample s/1000 | score s/1000 | latents | posterior |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in results:
        lk = r.likelihood
        kl = "" if r.kl_to_data is None else f"{r.kl_to_data:.3f}"
        q = r.quality
        family = r.family if r.baseline is None else f"{r.family} (classical: {r.baseline})"
        lines.append(
            f"| {family} | {lk['bits_per_dim']:.3f} ± {lk['bits_per_dim_stderr']:.3f} | "
            f"{lk['kind']} | {lk['estimator']} | {kl} | {q.get('fd', float('nan')):.3g} | "
            f"{q.get('kid', float('nan')):.3g} | {q.get('precision', float('nan')):.2f} | "
            f"{q.get('recall', float('nan')):.2f} | {r.train_seconds:.1f} | "
            f"{r.sample_seconds_per_1000:.3g} | {r.score_seconds_per_1000:.3g} | "
            f"{_short(r.latents)} | {', '.join(r.posterior) or 'none'} |"
        )
    return "\n".join(lines)


def _cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else the platform's word for it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _hardware(device: torch.device) -> str:
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (
        f"{platform.system()} {platform.machine()}, {_cpu_name()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads{gpu}"
    )


def run(
    data: str = "digits",
    preset: str = "quick",
    families: list[str] | None = None,
    out: str | Path = "runs/benchmark",
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    baselines: bool = True,
) -> list[FamilyResult]:
    """Run the benchmark and write its report; returns the per-family results.

    Arguments:
        data: a data set name (``ppgen list``); its train/val/test splits are used.
        preset: a key of :data:`PRESETS` (``tiny`` for smoke tests, ``quick``, ``full``).
        families: the families to run (default: every registered family the preset budgets;
            families that refuse the data's kind at build time are then skipped and listed in
            the report, while a family named here that refuses it raises).
        out: the report directory: ``report.md``, ``results.json``, figures, one run
            directory per family and seed.
        seed: the first seed (the preset's seeds are offsets from it).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        progress: show the trainer's progress bars.
        baselines: add the classical estimators of :mod:`ppgen.baselines` as rows (settings
            chosen on the validation split, scored on the test split like every family).

    Returns:
        One :class:`FamilyResult` per family and seed, in order.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    config = PRESETS[preset]
    chosen = families or [f for f in config["families"] if f in models.names()]
    unknown = [f for f in chosen if f not in config["families"]]
    if unknown:
        raise ValueError(
            f"preset {preset!r} has no budget for {unknown}; known: {sorted(config['families'])}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, val, test = (datasets.load(data, s) for s in ("train", "val", "test"))
    dev = resolve_device(device)
    seeds = [seed + s for s in config["seeds"]]
    results: list[FamilyResult] = []
    samples: dict[str, Tensor] = {}
    histories: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    started = time.gmtime()
    for i, name in enumerate(chosen):
        spec = config["families"][name]
        for s in seeds:
            torch.manual_seed(s)  # the initial weights, reproducibly
            try:
                model = models.build(name, train, **spec.get("build", {}))
            except ValueError as e:
                if families:  # asked for by name: the user should hear why it cannot run
                    raise
                skipped[name] = str(e)
                print(f"== {name}: skipped ({e})", file=sys.stderr)
                break
            print(f"== [{i + 1}/{len(chosen)}] {name} (seed {s})", file=sys.stderr)
            result, x, hist = _measure(
                name,
                spec,
                train,
                val,
                test,
                s,
                dev,
                out,
                progress,
                config["num_samples"],
                config["num_score"],
                density_grid=config["density_grid"] if s == seeds[0] else None,
                model=model,
            )
            results.append(result)
            samples.setdefault(name, x)
            histories.setdefault(name, hist)
    if baselines:
        print("== classical baselines", file=sys.stderr)
        for result, x in _measure_baselines(train, val, test, seeds[0], config["num_samples"],
                                            config["num_score"], out, config["density_grid"]):
            results.append(result)
            samples.setdefault(result.family, x)
    if not results:
        raise ValueError(f"no family could run on {data!r}: {skipped}")
    table = _table(results)
    print(table)
    command = (
        "ppgen " + " ".join(sys.argv[1:])
        if sys.argv and "ppgen" in sys.argv[0]
        else (
            f"ppgen benchmark --data {data} --preset {preset}"
            + (f" --families {' '.join(families)}" if families else "")
            + (f" --seed {seed}" if seed else "")
        )
    )
    import ppgen

    versions = {"ppgen": ppgen.__version__, "python": platform.python_version(),
                "torch": torch.__version__}
    for mod in ("pyro", "numpy"):
        versions[mod] = __import__(mod).__version__
    hardware = _hardware(dev)
    date = time.strftime("%Y-%m-%d %H:%M UTC", started)
    figures = _figures(out, samples, histories, test, config["density_grid"])
    report = [
        f"# ppgen benchmark: {data}, preset {preset}",
        "",
        f"Measured {date} on {hardware}.",
        f"Command: `{command}`",
        f"Versions: {', '.join(f'{k} {v}' for k, v in versions.items())}",
        f"Seeds: {', '.join(map(str, seeds))}",
        "",
        table,
        "",
        "bits/dim: mean negative log-likelihood of the test split per dimension, in bits, of the "
        "data as given; `kind` says whether it is exact, a lower bound or an estimate (never "
        "mixed). KL to data = NLL - H(p_data) in nats, the distance to the best achievable, "
        "only where the data density is known (an upper bound on the KL for a lower-bound "
        "kind). Sample quality (FD, KID, precision, recall) on "
        f"{config['num_samples']} samples against the test split; times in seconds per 1000 "
        "samples or test points. posterior: the `ppgen.posterior` methods available over the "
        "latents.",
        "Rows marked *classical* are the estimators a statistician tries first "
        "(`ppgen.baselines`: the maximum-likelihood Gaussian, a Gaussian mixture and a kernel "
        "density estimate on continuous data, a mixture of factorized categoricals on discrete "
        "data), their settings chosen on the validation split and scored on the test split by "
        "the same `ppgen.evaluate` path (`--no-baselines` leaves them out).",
    ]
    if skipped:
        report += ["", "Skipped (the family refuses this data):"]
        report += [f"- {k}: {v}" for k, v in skipped.items()]
    report += ["", "## Figures", ""]
    report += [f"![{f}]({f})" for f in figures]
    (out / "report.md").write_text("\n".join(report) + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {
                "data": data,
                "preset": preset,
                "date": date,
                "hardware": hardware,
                "command": command,
                "versions": versions,
                "seeds": seeds,
                "skipped": skipped,
                "figures": figures,
                "results": [dataclasses.asdict(r) for r in results],
            },
            indent=2,
        )
    )
    print(f"report: {out / 'report.md'}", file=sys.stderr)
    return results


def _figures(
    out: Path,
    samples: dict[str, Tensor],
    histories: dict[str, Any],
    test: Dataset,
    density_grid: int | None,
) -> list[str]:
    """Sample grids of every family beside the data, the training curves, and (for 2-D data,
    written by :func:`_measure`) the learned densities; returns the figure file names."""
    from ppgen.plots import sample_grid, samples_vs_data, training_curves

    names = ["samples-data.png"]
    sample_grid(test.data[:64], out / names[0], levels=test.levels, title="data")
    for name, x in samples.items():
        names.append(f"samples-{name}.png")
        samples_vs_data(x, test.data, out / names[-1], levels=test.levels,
                        titles=(name, "test data"))
    names.append("training-curves.png")
    training_curves(histories, out / names[-1])
    if _two_d(test) and density_grid:
        names += [f"density-{name}.png" for name in samples]
    return names


def _two_d(data: Dataset) -> bool:
    """Whether the learned density can be drawn on a plane beside the true one."""
    return data.kind == "continuous" and tuple(data.event_shape) == (2,)
