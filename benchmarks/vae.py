"""ppgen's SVI path against the same VAE written as a plain PyTorch ELBO loop, on digits.

    python -m benchmarks.vae [--epochs 250] [--chunk 10] [--trace-epochs 20] [--json out.json]

The VAE of issue 4: digits (17 levels), Binomial(16) decoder, encoder 64-256-256-2x16, mirror
decoder, batch 100, Adam 1e-3. Three arms start from the same weights:

- **ppgen**: ``ppgen.fit`` with the default ``"elbo"`` objective (the VAE's trace-free
  ``elbo_parts`` hook), run ``--chunk`` epochs per call and resumed from its checkpoint, so the
  arms alternate in one process. Epoch time comes from the trainer's own clock
  (``History.train[...]["time"]``, recorded at every epoch end), which excludes the setup and
  checkpoint I/O of each resumed call.
- **plain**: a hand-written loop: ``randperm`` batches, encoder, reparameterized draw,
  ``torch.distributions.Binomial(16, logits).log_prob``, closed-form KL, ``backward``, ``step``,
  ``loss.item()``.
- **trace** (timing only, ``--trace-epochs``): ``ppgen.fit`` with ``elbo="Trace_ELBO"``
  (Pyro's ``Trace_ELBO.differentiable_loss`` on the model/guide traces), compared with the plain
  epochs of the same rounds.

Reported: median epoch seconds of each arm and the ratios ppgen/plain (goal <= 1.15) and
trace/plain; the test IWAE-100 bound of ppgen and plain after ``--epochs`` epochs (goal: within
0.5 nats, and <= 2.0 bits/dim), each computed by ``ppgen.evaluate`` and, for the plain model,
also by a hand-written IWAE as a cross-check; and for ppgen's model the estimator ladder (ELBO,
IWAE-1/10/100/1000 on the test split, AIS against IWAE-1000 on ``--ais-examples`` test points)
and the BDMC sandwich on as many points simulated from the model.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import ppgen
from ppgen.inference.likelihood import bdmc
from ppgen.inference.trainer import batch_indices

LATENT, HIDDEN, BATCH, LR, LEVELS = 16, (256, 256), 100, 1e-3, 17


class PlainVAE(nn.Module):
    """The same VAE as ``ppgen.build("vae", digits, latent=16, hidden=[256, 256])``, in plain
    PyTorch: same layers, same parameterization (softplus scales), same closed-form KL."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256),
                                     nn.ReLU(), nn.Linear(256, 2 * LATENT))
        self.decoder = nn.Sequential(nn.Linear(LATENT, 256), nn.ReLU(), nn.Linear(256, 256),
                                     nn.ReLU(), nn.Linear(256, 64))

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.encoder(x / (LEVELS - 1)).chunk(2, -1)
        return loc, F.softplus(raw) + 1e-4

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        loc, scale = self.posterior(x)
        z = loc + scale * torch.randn_like(loc)
        px = torch.distributions.Binomial(LEVELS - 1, logits=self.decoder(z))
        log_lik = px.log_prob(x).sum(-1)
        kl = (0.5 * (loc.pow(2) + scale.pow(2) - 1) - scale.log()).sum(-1)
        return -(log_lik - kl).mean()

    @torch.no_grad()
    def iwae(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Hand-written IWAE-k per example (nats)."""
        loc, scale = self.posterior(x)
        q = torch.distributions.Normal(loc, scale)
        z = q.sample((k,))  # (k, N, L)
        px = torch.distributions.Binomial(LEVELS - 1, logits=self.decoder(z))
        log_w = (px.log_prob(x).sum(-1) + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
                 - q.log_prob(z).sum(-1))
        return torch.logsumexp(log_w, 0) - math.log(k)


def _copy_weights(src: ppgen.models.AbstractGenerativeModel, dst: PlainVAE) -> None:
    with torch.no_grad():
        for a, b in zip([*src.encoder, *src.decoder], [*dst.encoder, *dst.decoder], strict=True):
            for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
                pb.copy_(pa)


def _plain_epoch(model: PlainVAE, opt: torch.optim.Optimizer, x: torch.Tensor,
                 g: torch.Generator) -> float:
    t0 = time.perf_counter()
    perm = torch.randperm(len(x), generator=g)
    total = 0.0
    for b in range(len(x) // BATCH):
        xb = x[perm[b * BATCH : (b + 1) * BATCH]]
        opt.zero_grad(set_to_none=True)
        loss = model.loss(xb)
        loss.backward()
        opt.step()
        total += loss.item()
    return time.perf_counter() - t0


def _ppgen_epochs(model: ppgen.models.AbstractGenerativeModel, train: ppgen.datasets.Dataset,
                  run: Path, start: int, epochs: int, spe: int, seed: int,
                  objective_options: dict | None = None) -> list[float]:
    """Fit epochs ``start..start+epochs`` (resuming); their times from the trainer's clock."""
    hist = ppgen.fit(model, train, steps=(start + epochs) * spe, batch_size=BATCH, lr=LR,
                     seed=seed, device="cpu", out=run, resume=start > 0, overwrite=start == 0,
                     progress=False,
                     log_every=spe, eval_every=10**9, checkpoint_every=10**9,
                     objective_options=objective_options)
    times = [0.0] + [r["time"] for r in hist.train]  # one record per epoch end
    return [b - a for a, b in zip(times[start:], times[start + 1 :], strict=False)][:epochs]


def alternate_epochs(train: ppgen.datasets.Dataset, epochs: int, chunk: int, trace_epochs: int,
                     seed: int) -> tuple[dict[str, list[float]], dict]:
    """Train the arms from the same initial weights, alternating rounds of ``chunk`` epochs
    (ppgen, plain, and trace during the first ``trace_epochs``); returns the seconds of every
    epoch per arm and ``{"ours", "plain", "init"}`` (the trained models and initial weights)."""
    spe = len(train) // BATCH
    x_train = train.data.reshape(len(train), -1)
    # 1. the same initial weights in every arm (after ppgen's data-dependent init, which the
    #    trainer runs on the batch of step 0)
    torch.manual_seed(seed)
    ours = ppgen.build("vae", train, latent=LATENT, hidden=list(HIDDEN))
    ours.initialize(train.data[batch_indices(len(train), BATCH, seed, 0)])
    init = {k: v.clone() for k, v in ours.state_dict().items()}
    traced = ppgen.build("vae", train, latent=LATENT, hidden=list(HIDDEN))
    traced.load_state_dict(init)
    plain = PlainVAE()
    _copy_weights(ours, plain)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=LR)
    g = torch.Generator().manual_seed(seed)

    # 2. alternate rounds of `chunk` epochs: ppgen, plain, (trace)
    times: dict[str, list[float]] = {"ppgen": [], "plain": [], "trace": []}
    with tempfile.TemporaryDirectory() as tmp:
        done = 0
        while done < epochs:
            n = min(chunk, epochs - done)
            times["ppgen"] += _ppgen_epochs(ours, train, Path(tmp) / "ppgen", done, n, spe, seed)
            times["plain"] += [_plain_epoch(plain, plain_opt, x_train, g) for _ in range(n)]
            if done < trace_epochs:
                m = min(n, trace_epochs - done)
                times["trace"] += _ppgen_epochs(traced, train, Path(tmp) / "trace", done, m,
                                                spe, seed, {"elbo": "Trace_ELBO"})
            done += n
            print(f"epoch {done}: median s/epoch ppgen {statistics.median(times['ppgen']):.4f}"
                  f" plain {statistics.median(times['plain']):.4f}", flush=True)
    return times, {"ours": ours, "plain": plain, "init": init}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=250)
    p.add_argument("--chunk", type=int, default=10, help="epochs per alternation round")
    p.add_argument("--trace-epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ais-examples", type=int, default=50)
    p.add_argument("--ais-steps", type=int, default=200)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    train, test = (ppgen.datasets.load("digits", s) for s in ("train", "test"))
    x_test = test.data.reshape(len(test), -1)

    times, arms = alternate_epochs(train, args.epochs, args.chunk, args.trace_epochs, args.seed)
    ours, plain, init = arms["ours"], arms["plain"], arms["init"]

    # 3. test IWAE-100 of both, through ppgen.evaluate (plain weights loaded into a ppgen VAE)
    #    and the hand-written IWAE of the plain model as a cross-check
    twin = ppgen.build("vae", train, latent=LATENT, hidden=list(HIDDEN))
    twin.load_state_dict(init)
    with torch.no_grad():
        for a, b in zip([*plain.encoder, *plain.decoder], [*twin.encoder, *twin.decoder],
                        strict=True):
            for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
                pb.copy_(pa)
    ev_ours = ppgen.evaluate(ours, test, num_particles=100, seed=args.seed)
    ev_plain = ppgen.evaluate(twin, test, num_particles=100, seed=args.seed)
    torch.manual_seed(args.seed)
    hand = float(plain.iwae(x_test, 100).mean())
    # 4. the estimator ladder on ppgen's model: ELBO <= IWAE-k <= log p, AIS, and the BDMC
    #    sandwich on data simulated from the model (AIS's error with these settings)
    ladder = {"elbo": -ppgen.evaluate(ours, test, "elbo", seed=args.seed).nats}
    for k in (1, 10, 100, 1000):
        ladder[f"iwae-{k}"] = -ppgen.evaluate(ours, test, num_particles=k, seed=args.seed).nats
    sub = test.subset(args.ais_examples)
    ais_opts = {"num_particles": 16, "num_steps": args.ais_steps}
    t0 = time.perf_counter()
    ladder["ais-subset"] = -ppgen.evaluate(ours, sub, "ais", seed=args.seed, **ais_opts).nats
    ais_seconds = time.perf_counter() - t0
    ladder["iwae-1000-subset"] = -ppgen.evaluate(ours, sub, num_particles=1000,
                                                 seed=args.seed).nats
    sandwich = bdmc(ours, num_examples=args.ais_examples, seed=args.seed, **ais_opts)
    print("estimators (nats, test):", {k: round(v, 3) for k, v in ladder.items()})
    print(f"AIS on {args.ais_examples} test points: {ais_seconds:.1f} s; {sandwich}")
    med = {k: statistics.median(v) for k, v in times.items() if v}
    result = {
        "median_epoch_seconds": med,
        "ratio_ppgen_over_plain": med["ppgen"] / med["plain"],
        # the trace arm runs during the first --trace-epochs rounds only: compare it with the
        # plain epochs of the same rounds (the machine's load drifts over a run)
        "ratio_trace_over_plain": med.get("trace", math.nan)
        / statistics.median(times["plain"][: max(len(times["trace"]), 1)]),
        "epoch_seconds": times,
        "epochs": args.epochs,
        "iwae100_nats": {"ppgen": -ev_ours.nats, "plain": -ev_plain.nats,
                         "plain_hand_written": hand},
        "iwae100_bits_per_dim": {"ppgen": ev_ours.bits_per_dim,
                                 "plain": ev_plain.bits_per_dim},
        "stderr_nats": {"ppgen": ev_ours.stderr, "plain": ev_plain.stderr},
        "estimators_nats": ladder,
        "ais": {"examples": args.ais_examples, "seconds": ais_seconds, **ais_opts},
        "bdmc": {"lower": float(sandwich.lower.mean()), "upper": float(sandwich.upper.mean()),
                 "gap": sandwich.gap},
        "machine": f"{platform.system()} {platform.machine()}, {args.threads} torch thread(s)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    gap = abs(result["iwae100_nats"]["ppgen"] - result["iwae100_nats"]["plain"])
    print(f"median epoch: ppgen {med['ppgen']:.4f} s, plain {med['plain']:.4f} s, "
          f"ratio {result['ratio_ppgen_over_plain']:.3f} (goal <= 1.15)")
    if "trace" in med:
        print(f"Trace_ELBO path: {med['trace']:.4f} s/epoch, ratio "
              f"{result['ratio_trace_over_plain']:.3f}")
    print(f"test IWAE-100: ppgen {ev_ours}; plain {ev_plain} (hand-written {hand:.3f} nats); "
          f"gap {gap:.3f} nats (goal <= 0.5), ppgen <= 2.0 bits/dim: "
          f"{ev_ours.bits_per_dim <= 2.0}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
