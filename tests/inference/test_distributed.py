"""Data-parallel training under torch.distributed (gloo on loopback, 2 processes, CPU)."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ppgen

ROOT = Path(__file__).resolve().parents[2]
WORKER = """
import sys, torch, ppgen
torch.set_num_threads(1)
out, steps, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
family, accumulate = sys.argv[4], int(sys.argv[5])
train = ppgen.datasets.load("digits", "train")
small = {"vae": {"hidden": [16], "latent": 2}}.get(family, {})
torch.manual_seed(0)  # the same initial weights in every launch
m = ppgen.build(family, train, **small)
ppgen.fit(m, train, steps=steps, batch_size=64, lr=0.05, seed=0, device="cpu", out=out,
          progress=False, resume=resume, checkpoint_every=5, accumulate=accumulate)
ev = ppgen.evaluate(m, ppgen.datasets.load("digits", "test").subset(64), seed=0)
import torch.distributed as dist
rank = dist.get_rank() if dist.is_initialized() else 0
torch.save({"state": m.state_dict(), "per_example": ev.per_example}, f"{out}/rank{rank}.pt")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SAMPLER = """
import sys, torch, ppgen
from ppgen.inference import distributed
torch.set_num_threads(1)
out = sys.argv[1]
train = ppgen.datasets.load("moons", "train")
m = ppgen.build("independent", train, components=3)
ctx = distributed.init(torch.device("cpu"))
x = distributed.sample(m, 10, seed=7, ctx=ctx, block=4)
if x is not None:
    torch.save(x, f"{out}/samples.pt")
"""


def _launch(
    tmp_path: Path,
    out: Path,
    steps: int,
    world: int,
    resume: bool = False,
    code: str = WORKER,
    extra: tuple[str, ...] = ("independent", "1"),
) -> None:
    script = tmp_path / "worker.py"
    script.write_text(code)
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        if world > 1:
            env.update(
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                WORLD_SIZE=str(world),
                RANK=str(rank),
                LOCAL_RANK=str(rank),
            )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(script),
                    str(out),
                    str(steps),
                    "1" if resume else "0",
                    *extra,
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    _launch(tmp_path, tmp_path / "one", steps=20, world=1)
    _launch(tmp_path, tmp_path / "two", steps=20, world=2)
    one = torch.load(tmp_path / "one" / "rank0.pt")
    for rank in range(2):
        two = torch.load(tmp_path / "two" / f"rank{rank}.pt")
        logits = two["state"]["logits"]
        assert torch.allclose(one["state"]["logits"], logits, atol=1e-5), f"rank {rank}"
        # evaluation is sharded and gathered: every rank holds all per-example values
        assert torch.allclose(one["per_example"], two["per_example"], atol=1e-4), f"rank {rank}"


def test_two_process_run_resumes_in_one_process(tmp_path):
    """A VAE (its loss draws latents on every slice's own random stream): 10 steps on 2
    processes, resumed to 20 in 1 process with accumulate=2, equal 20 uninterrupted steps in 1
    process with accumulate=2 (the checkpoint holds both streams)."""
    vae = ("vae", "2")
    _launch(tmp_path, tmp_path / "run", steps=10, world=2, extra=("vae", "1"))
    _launch(tmp_path, tmp_path / "run", steps=20, world=1, resume=True, extra=vae)
    _launch(tmp_path, tmp_path / "ref", steps=20, world=1, extra=vae)
    resumed = torch.load(tmp_path / "run" / "rank0.pt")["state"]
    ref = torch.load(tmp_path / "ref" / "rank0.pt")["state"]
    for k, v in ref.items():
        # float32; the gradients differ by summation order only (observed: equal bits)
        assert torch.allclose(resumed[k], v, rtol=0, atol=1e-5), k
    assert ppgen.load(tmp_path / "run" / "checkpoint.pt") is not None


def test_sharded_sampling_is_the_same_on_any_number_of_processes(tmp_path):
    for world in (1, 2):
        (tmp_path / str(world)).mkdir()
        _launch(tmp_path, tmp_path / str(world), steps=0, world=world, code=SAMPLER)
    one = torch.load(tmp_path / "1" / "samples.pt")
    two = torch.load(tmp_path / "2" / "samples.pt")
    assert one.shape == (10, 2) and torch.equal(one, two)
    assert not torch.equal(one[:4], one[4:8]), "blocks must use different seeds"


# Every family's training step under DDP. One 2-process group trains every family in turn (one
# launch, so CI pays the process start-up and the gloo rendezvous once); one plain process then
# trains every family with accumulate=2 (the same 2 batch slices on the same 2 random streams)
# and with accumulate=1. Float64 makes the only 1-vs-2-process difference the summation order
# of the averaged gradient (relative error ~1e-16), so a tight tolerance is meaningful.
EVERY_FAMILY = """
import sys, time, torch, ppgen
from tests.families import build_small
torch.set_num_threads(1)
out, steps, accumulates = sys.argv[1], int(sys.argv[2]), [int(a) for a in sys.argv[4].split(",")]
train = ppgen.datasets.load("digits", "train").subset(48)
import torch.distributed as dist
results = {}

def draws_nothing(m):
    # whether the training loss draws random numbers (dropout, latents, dequantization noise)
    obj = ppgen.inference.make_objective(m.default_objective, m)
    m.train()
    with torch.random.fork_rng():
        before = torch.get_rng_state()
        for group in obj.schedule(0):
            obj.loss(m, train.data[:4].double(), None, group, 0)
        return torch.equal(before, torch.get_rng_state())

for family in ppgen.models.names():
    for accumulate in accumulates:
        torch.manual_seed(0)
        m = build_small(family, train).double()
        t0 = time.perf_counter()
        h = ppgen.fit(m, train, steps=steps, batch_size=16, lr=1e-3, seed=0, device="cpu",
                      progress=False, log_every=1, accumulate=accumulate)
        results[(family, accumulate)] = {
            "state": {k: v.detach().clone() for k, v in m.state_dict().items()},
            "params": {k: v.detach().clone() for k, v in m.named_parameters()},
            "loss": h.loss,
            "deterministic": draws_nothing(m),
            "seconds": time.perf_counter() - t0,
        }
rank = dist.get_rank() if dist.is_initialized() else 0
torch.save(results, f"{out}/rank{rank}.pt")
"""


def test_every_family_trains_under_ddp_as_in_one_process(tmp_path):
    """Both ranks end identical; losses are finite; 2 processes equal 1 process with the same
    global batch in the same 2 slices (accumulate=2); families whose loss draws no random numbers
    (no dropout, latents or dequantization noise) also equal the plain 1-process run."""
    for world, accumulates in ((2, "1"), (1, "2,1")):
        (tmp_path / str(world)).mkdir()
        _launch(tmp_path, tmp_path / str(world), steps=3, world=world, code=EVERY_FAMILY,
                extra=(accumulates,))
    ranks = [torch.load(tmp_path / "2" / f"rank{r}.pt") for r in range(2)]
    one = torch.load(tmp_path / "1" / "rank0.pt")
    assert sorted({f for f, _ in one}) == sorted(ppgen.models.names())
    for family in ppgen.models.names():
        two = ranks[0][(family, 1)]
        assert len(two["loss"]) == 3 and all(math.isfinite(v) for v in two["loss"]), family
        # DDP all-reduces one gradient bucket and every rank applies it: identical bits; the
        # buffers a forward pass changes are broadcast from rank 0 at the end of fit
        for k, v in two["state"].items():
            assert torch.equal(v, ranks[1][(family, 1)]["state"][k]), f"{family}: {k}"
        references = [one[(family, 2)]] + ([one[(family, 1)]] if two["deterministic"] else [])
        for ref in references:
            # float64 and lr=1e-3: the gradients differ by summation order only (~1e-16
            # relative); Adam's first steps move each weight by at most lr * |m / sqrt(v)|,
            # so 3 steps cannot spread that beyond ~1e-12 unless a gradient component is
            # itself at rounding level, where 1e-9 still leaves three orders of headroom
            # (parameters: buffers a forward pass updates, such as MADE's mask counter, count
            # forward passes, two per step with accumulate=2)
            for k, v in two["params"].items():
                assert torch.allclose(v, ref["params"][k], rtol=0, atol=1e-9), f"{family}: {k}"
            # the logged loss is the global batch's mean on every process count
            assert two["loss"] == pytest.approx(ref["loss"], rel=1e-12), family
