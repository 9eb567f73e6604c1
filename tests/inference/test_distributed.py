"""Data-parallel training under torch.distributed (gloo on loopback, 2 processes, CPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

import ppgen

ROOT = Path(__file__).resolve().parents[2]
WORKER = """
import sys, torch, ppgen
torch.set_num_threads(1)
out, steps, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
train = ppgen.datasets.load("digits", "train")
m = ppgen.build("independent", train)
ppgen.fit(m, train, steps=steps, batch_size=64, lr=0.05, seed=0, device="cpu", out=out,
          progress=False, resume=resume, checkpoint_every=5)
ev = ppgen.evaluate(m, ppgen.datasets.load("digits", "test"))
import torch.distributed as dist
rank = dist.get_rank() if dist.is_initialized() else 0
torch.save({"logits": m.logits.detach(), "per_example": ev.per_example}, f"{out}/rank{rank}.pt")
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
    tmp_path: Path, out: Path, steps: int, world: int, resume: bool = False, code: str = WORKER
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
                [sys.executable, str(script), str(out), str(steps), "1" if resume else "0"],
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
        assert torch.allclose(one["logits"], two["logits"], atol=1e-5), f"rank {rank}"
        # evaluation is sharded and gathered: every rank holds all per-example values
        assert torch.allclose(one["per_example"], two["per_example"], atol=1e-4), f"rank {rank}"


def test_two_process_run_resumes_in_one_process(tmp_path):
    _launch(tmp_path, tmp_path / "run", steps=10, world=2)
    _launch(tmp_path, tmp_path / "run", steps=20, world=1, resume=True)
    _launch(tmp_path, tmp_path / "ref", steps=20, world=1)
    resumed = torch.load(tmp_path / "run" / "rank0.pt")["logits"]
    ref = torch.load(tmp_path / "ref" / "rank0.pt")["logits"]
    assert torch.allclose(resumed, ref, atol=1e-5)
    assert ppgen.load(tmp_path / "run" / "checkpoint.pt") is not None


def test_sharded_sampling_is_the_same_on_any_number_of_processes(tmp_path):
    for world in (1, 2):
        (tmp_path / str(world)).mkdir()
        _launch(tmp_path, tmp_path / str(world), steps=0, world=world, code=SAMPLER)
    one = torch.load(tmp_path / "1" / "samples.pt")
    two = torch.load(tmp_path / "2" / "samples.pt")
    assert one.shape == (10, 2) and torch.equal(one, two)
    assert not torch.equal(one[:4], one[4:8]), "blocks must use different seeds"
