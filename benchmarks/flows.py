"""Normalizing flows side by side: ppgen against zuko, nflows and normflows (issue 3).

    python -m benchmarks.flows speed     [--rounds 7]   # D=64, H=256, batch 1024
    python -m benchmarks.flows overhead  [--rounds 9]   # D=2, H=64, batch 1024
    python -m benchmarks.flows quality   [--data moons digits] [--seeds 0]
    python -m benchmarks.flows all

Every library builds the same flows: 5 transforms, conditioners with two hidden layers of H
units (MADE for MAF, an MLP on half the features for RealNVP), a standard normal base, Adam.
Orientations are chosen so that ``log_prob`` is one network pass in every library (normflows'
``MaskedAffineAutoregressive`` is wrapped in ``Reverse``: as shipped, its density direction is
the D-pass one). ppgen runs through its families (``ppgen.models.get("maf")`` ...), so its
numbers include input validation; for the timings its leading standardizing ActNorm is off
(``standardize=False``, the same architecture as the peers), for the quality runs it is on
(the family's default).

Timing: rounds alternate between libraries (the order rotates each round), each round times a
few calls after a warm-up call, and the median over rounds is reported; ratios are ppgen's
throughput over each peer's, measured in the same process. Quality: the same training loop for
every library (same batches, steps, learning rate, seed), validation every ``eval_every`` steps
with early stopping (the best validation NLL's weights; a run stops after 5 evaluations without
improvement), then test NLL (nats for 2-D toys, bits/dim of
the discrete data for digits, with the logit transform's alpha 0.05 and Jacobians counted).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import ppgen
from ppgen.datasets import DataTransform

LIBS = ["ppgen", "zuko", "nflows", "normflows"]
FLOWS = ["maf", "realnvp"]


# ---- the same flows in every library ------------------------------------------------------------


@dataclass
class Built:
    """A flow behind one interface: log-density of model-space data, sampling, parameters."""

    log_prob: Callable[[torch.Tensor], torch.Tensor]
    sample: Callable[[int], torch.Tensor]
    module: torch.nn.Module
    initialize: Callable[[torch.Tensor], None] = field(default=lambda x: None)


def build(lib: str, flow: str, d: int, hidden: int, transforms: int = 5) -> Built:
    h = [hidden, hidden]
    if lib == "ppgen":  # the same architecture: no leading standardizing ActNorm
        m = ppgen.models.get(flow)(event_shape=(d,), transforms=transforms, hidden=h,
                                   standardize=False)
        return Built(m.log_prob, lambda n: m.sample(n), m, lambda x: m.initialize(x))
    if lib == "zuko":
        import zuko

        cls = zuko.flows.MAF if flow == "maf" else zuko.flows.RealNVP
        f = cls(d, transforms=transforms, hidden_features=h)
        return Built(lambda x: f().log_prob(x), lambda n: f().sample((n,)), f)
    if lib == "nflows":
        from nflows.distributions import StandardNormal
        from nflows.flows import Flow
        from nflows.nn.nets import MLP
        from nflows.transforms import (
            AffineCouplingTransform,
            CompositeTransform,
            MaskedAffineAutoregressiveTransform,
            ReversePermutation,
        )

        class Net(MLP):  # nflows' coupling calls its net with a context argument
            def forward(self, inputs, context=None):
                return super().forward(inputs)

        layers = []
        for i in range(transforms):
            if flow == "maf":
                layers += [MaskedAffineAutoregressiveTransform(
                    d, hidden, num_blocks=1, use_residual_blocks=False), ReversePermutation(d)]
            else:
                mask = (torch.arange(d) % 2 == i % 2).int()
                layers.append(AffineCouplingTransform(
                    mask, lambda i_, o_: Net([i_], [o_], h)))
        f = Flow(CompositeTransform(layers), StandardNormal([d]))
        return Built(f.log_prob, lambda n: f.sample(n), f)
    if lib == "normflows":
        import normflows as nf

        layers = []
        for _ in range(transforms):
            if flow == "maf":
                layers += [nf.flows.Reverse(nf.flows.MaskedAffineAutoregressive(
                    d, hidden, num_blocks=1, use_residual_blocks=False)),
                    nf.flows.Permute(d, mode="swap")]
            else:
                layers += [nf.flows.AffineCouplingBlock(nf.nets.MLP(
                    [d // 2, hidden, hidden, 2 * (d - d // 2)], init_zeros=True)),
                    nf.flows.Permute(d, mode="swap")]
        f = nf.NormalizingFlow(nf.distributions.DiagGaussian(d, trainable=False), layers)
        return Built(f.log_prob, lambda n: f.sample(n)[0], f)
    raise ValueError(lib)


# ---- data ---------------------------------------------------------------------------------------


def digits_model_space(split: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits (N, 64) dequantized and logit-transformed (alpha 0.05), and the per-example ladj."""
    ds = ppgen.datasets.load("digits", split)
    t = DataTransform("discrete", 17, 0.05)
    g = torch.Generator().manual_seed(seed)
    z, ladj = t(ds.data.reshape(len(ds), -1), generator=g)
    return z, ladj


# ---- timing -------------------------------------------------------------------------------------


def _timeit(fn: Callable[[], object], calls: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def speed(d: int, hidden: int, batch: int, rounds: int, libs: list[str], flows: list[str],
          sample_n: int, calls: int) -> dict:
    """Per (flow, lib): log_prob samples/s, training steps/s, sampling samples/s (medians)."""
    if d == 64:
        x = digits_model_space("train")[0][:batch]
    else:
        x = ppgen.datasets.load("moons", "train").data[:batch]
    if len(x) < batch:
        x = x.repeat(math.ceil(batch / len(x)), 1)[:batch]
    out: dict = {}
    for flow in flows:
        torch.manual_seed(0)
        built = {lib: build(lib, flow, d, hidden) for lib in libs}
        for b in built.values():
            with torch.no_grad():
                b.initialize(x)
        opts = {lib: torch.optim.Adam(b.module.parameters(), lr=1e-4)
                for lib, b in built.items()}
        times: dict = {lib: {"log_prob": [], "train": [], "sample": []} for lib in libs}
        for r in range(rounds):
            order = libs[r % len(libs):] + libs[: r % len(libs)]
            for lib in order:
                b, opt = built[lib], opts[lib]

                def lp(b=b):
                    with torch.no_grad():
                        b.log_prob(x)

                def step(b=b, opt=opt):
                    opt.zero_grad(set_to_none=True)
                    loss = -b.log_prob(x).mean()
                    loss.backward()
                    opt.step()

                def smp(b=b):
                    with torch.no_grad():
                        b.sample(sample_n)

                times[lib]["log_prob"].append(_timeit(lp, calls))
                times[lib]["train"].append(_timeit(step, calls))
                times[lib]["sample"].append(_timeit(smp, 1))
        res = {}
        for lib in libs:
            t = {k: statistics.median(v) for k, v in times[lib].items()}
            res[lib] = {
                "log_prob_per_s": batch / t["log_prob"],
                "log_prob_ms": 1000 * t["log_prob"],
                "train_steps_per_s": 1 / t["train"],
                "train_ms": 1000 * t["train"],
                "samples_per_s": sample_n / t["sample"],
                "sample_ms": 1000 * t["sample"],
            }
        out[flow] = res
    return out


def goal_ratios(res: dict, goals: dict[str, list[tuple[str, str, float]]]) -> list[dict]:
    """ppgen's throughput over the best peer's for each goal of ``goals`` (all ratios are
    "higher is better"; a goal holds when ratio >= goal). ``peer`` "fastest" means every peer
    in ``res``; peers absent from ``res`` are skipped."""
    rows = []
    for flow, per_lib in res.items():
        pp = per_lib.get("ppgen")
        if pp is None:
            continue
        for metric, peer, goal in goals.get(flow, []):
            peers = [p for p in per_lib if p != "ppgen"] if peer == "fastest" else [peer]
            peers = [p for p in peers if p in per_lib]
            if not peers:
                continue
            name = max(peers, key=lambda p: per_lib[p][metric])
            rows.append({"flow": flow, "metric": metric, "peer": peer, "best_peer": name,
                         "ratio": pp[metric] / per_lib[name][metric], "goal": goal})
    return rows


def print_speed(title: str, res: dict, goals: dict[str, list[tuple[str, str, float]]]) -> None:
    print(f"\n## {title}")
    for flow, per_lib in res.items():
        print(f"\n{flow}:")
        print(f"{'library':<10} {'log_prob/s':>11} {'lp ms':>8} {'train st/s':>11} "
              f"{'train ms':>9} {'samples/s':>10} {'sample ms':>10}")
        for lib, r in per_lib.items():
            print(f"{lib:<10} {r['log_prob_per_s']:>11.0f} {r['log_prob_ms']:>8.2f} "
                  f"{r['train_steps_per_s']:>11.2f} {r['train_ms']:>9.2f} "
                  f"{r['samples_per_s']:>10.0f} {r['sample_ms']:>10.1f}")
        for g in goal_ratios({flow: per_lib}, goals):
            ok = "holds" if g["ratio"] >= g["goal"] else "MISSED"
            print(f"  {g['metric']}: ppgen / {g['peer']} ({g['best_peer']}) = {g['ratio']:.2f}x"
                  f"  (goal >= {g['goal']}x: {ok})")


SPEED_GOALS = {
    "maf": [("log_prob_per_s", "zuko", 1.2), ("log_prob_per_s", "normflows", 1.0),
            ("train_steps_per_s", "fastest", 1.0), ("samples_per_s", "zuko", 1.5)],
    "realnvp": [("log_prob_per_s", "zuko", 1.2), ("log_prob_per_s", "normflows", 1.0),
                ("train_steps_per_s", "fastest", 1.0), ("samples_per_s", "fastest", 1.0)],
}
OVERHEAD_GOALS = {
    "maf": [("log_prob_per_s", "fastest", 1.0), ("train_steps_per_s", "fastest", 1.0)],
    "realnvp": [("log_prob_per_s", "fastest", 1.0), ("train_steps_per_s", "fastest", 1.0)],
}


# ---- quality ------------------------------------------------------------------------------------


@dataclass
class Split:
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def _nll(built: Built, x: torch.Tensor, discrete: bool, seed: int) -> float:
    """Mean NLL in nats of the data as given (dequantized with seed-fixed noise for digits)."""
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        if discrete and not isinstance(built.module, ppgen.models.AbstractGenerativeModel):
            z, ladj = DataTransform("discrete", 17, 0.05)(x.reshape(len(x), -1))
            lp = built.log_prob(z) + ladj
        else:
            lp = built.log_prob(x)
    return float(-lp.double().mean())


def fit_and_score(lib: str, flow: str, data: str, split: Split, hidden: int, steps: int,
                  batch: int, lr: float, eval_every: int, seed: int, patience: int = 5) -> dict:
    discrete = data == "digits"
    torch.manual_seed(seed)
    if lib == "ppgen":
        name = flow.removesuffix("-image")
        hp = {"transforms": 5, "hidden": [hidden, hidden]}
        if flow.endswith("-image"):  # convolutional conditioners: 64 channels, 6 steps
            hp = {"transforms": 6, "hidden": [64, 64]}
        if name == "ffjord":
            hp = {"transforms": 1, "hidden": [hidden, hidden], "rtol": 1e-4, "atol": 1e-4}
        shape = tuple(split.train.shape[1:]) if flow.endswith("-image") else (
            split.train[0].numel(),)
        m = ppgen.models.get(name)(event_shape=shape,
                                   kind="discrete" if discrete else "continuous",
                                   levels=17 if discrete else None, **hp)
        b = Built(m.log_prob, lambda n: m.sample(n), m, lambda x: m.initialize(x))
    else:
        b = build(lib, flow, split.train[0].numel(), hidden)
    flat = not (lib == "ppgen" and flow.endswith("-image"))
    train = split.train.reshape(len(split.train), -1) if flat else split.train
    val = split.val.reshape(len(split.val), -1) if flat else split.val
    test = split.test.reshape(len(split.test), -1) if flat else split.test
    opt = torch.optim.Adam(b.module.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=g)
    with torch.no_grad():
        b.initialize(train[perm[:batch]])
    best, best_state, best_step = math.inf, None, 0
    t0 = time.perf_counter()
    pos = 0
    for step in range(1, steps + 1):
        if pos + batch > len(train):
            perm, pos = torch.randperm(len(train), generator=g), 0
        xb = train[perm[pos : pos + batch]]
        pos += batch
        b.module.train()
        opt.zero_grad(set_to_none=True)
        if discrete and lib != "ppgen":
            z, ladj = DataTransform("discrete", 17, 0.05)(xb)
            loss = -(b.log_prob(z) + ladj).mean()
        else:
            loss = -b.log_prob(xb).mean()
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            b.module.eval()
            v = _nll(b, val, discrete, seed=123)
            if v < best:
                best, best_state, best_step = v, copy.deepcopy(b.module.state_dict()), step
            elif step - best_step >= patience * eval_every:
                break  # early stopping: no validation improvement in `patience` evaluations
    seconds = time.perf_counter() - t0
    b.module.load_state_dict(best_state)
    b.module.eval()
    nats = _nll(b, test, discrete, seed=456)
    d = test[0].numel()
    nfe = getattr(b.module, "nfe", None)  # FFJORD: function evaluations of the last solve
    return {"lib": lib, "flow": flow, "data": data, "seed": seed, "test_nats": nats, "nfe": nfe,
            "test_bpd": nats / (d * math.log(2)), "best_step": best_step, "steps_run": step,
            "train_seconds": seconds}


def gmm_digits(seed: int, components: int = 5) -> float:
    """Test bits/dim of a full-covariance Gaussian mixture on the dequantized logit digits."""
    from sklearn.mixture import GaussianMixture

    z_train, _ = digits_model_space("train", seed)
    z_test, ladj = digits_model_space("test", seed + 1)
    gmm = GaussianMixture(components, covariance_type="full", random_state=seed, reg_covar=1e-4)
    gmm.fit(z_train.double().numpy())
    lp = torch.from_numpy(gmm.score_samples(z_test.double().numpy())) + ladj.double()
    return float(-lp.mean() / (64 * math.log(2)))


def quality(datasets: list[str], seeds: list[int], libs: list[str], extra: list[str],
            flows: list[str]) -> list:
    results = []
    for data in datasets:
        sets = {s: ppgen.datasets.load(data, s).data for s in ("train", "val", "test")}
        split = Split(**sets)
        if data == "moons":
            cfg = {"hidden": 64, "steps": 2000, "batch": 256, "lr": 1e-3, "eval_every": 100}
        else:
            cfg = {"hidden": 256, "steps": 3000, "batch": 256, "lr": 1e-3, "eval_every": 100}
        for seed in seeds:
            runs = [(lib, flow) for flow in flows for lib in libs]
            runs += [("ppgen", f) for f in extra]
            for lib, flow in runs:
                r = fit_and_score(lib, flow, data, split, seed=seed, **cfg)
                print(f"{data} {flow:<14} {lib:<10} seed {seed}: test {r['test_nats']:.3f} nats "
                      f"({r['test_bpd']:.3f} bits/dim), best step {r['best_step']} of "
                      f"{r['steps_run']}, " + (f"NFE {r['nfe']}, " if r["nfe"] else "") +
                      f"{r['train_seconds']:.0f} s", flush=True)
                results.append(r)
            if data == "digits":
                bpd = gmm_digits(seed)
                print(f"digits gmm-5 (sklearn, full covariance) seed {seed}: {bpd:.3f} bits/dim")
                results.append({"lib": "sklearn", "flow": "gmm-5", "data": data, "seed": seed,
                                "test_bpd": bpd})
    print_quality_summary(results)
    return results


def print_quality_summary(results: list[dict]) -> None:
    """Median over seeds of test NLL per (data, flow, library), and ppgen against the best peer."""
    groups: dict = {}
    for r in results:
        key = (r["data"], r["flow"], r["lib"])
        groups.setdefault(key, []).append(r["test_bpd"] if r["data"] == "digits"
                                          else r.get("test_nats", math.nan))
    print("\nmedians over seeds (nats for toys, bits/dim for digits):")
    for (data, flow, lib), vals in sorted(groups.items()):
        print(f"  {data:<7} {flow:<14} {lib:<10} {statistics.median(vals):.3f}  "
              f"(n={len(vals)}: {', '.join(f'{v:.3f}' for v in vals)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["speed", "overhead", "quality", "all"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--libs", nargs="*", default=LIBS)
    p.add_argument("--flows", nargs="*", default=FLOWS)
    p.add_argument("--data", nargs="*", default=["moons", "digits"])
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--extra", nargs="*", default=[],
                   help="more ppgen families for the quality runs (realnvp-image, glow-image...)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# benchmarks/flows.py {' '.join(sys.argv[1:])}")
    cpu = platform.processor() or platform.machine()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu}, "
          f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}")
    out: dict = {}
    if args.what in ("speed", "all"):
        out["speed"] = speed(64, 256, 1024, args.rounds, args.libs, args.flows, 1024, args.calls)
        print_speed("D=64, H=256, batch 1024 (5 transforms)", out["speed"], SPEED_GOALS)
    if args.what in ("overhead", "all"):
        out["overhead"] = speed(2, 64, 1024, args.rounds, args.libs, args.flows, 1024,
                                args.calls * 5)
        print_speed("2-D per-call overhead, H=64, batch 1024 (5 transforms)", out["overhead"],
                    OVERHEAD_GOALS)
    if args.what in ("quality", "all"):
        out["quality"] = quality(args.data, args.seeds, args.libs, args.extra, args.flows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
