"""Scaling out with torchrun: data-parallel training of a user-defined model, 2 CPU processes.

Run as a plain script, it launches itself under torchrun (``python -m torch.distributed.run``)
with 2 processes on 127.0.0.1 and the gloo backend; each process is a rank. The trainer detects
torchrun's environment: every rank takes its share of each global batch, gradients are averaged
(DistributedDataParallel), rank 0 alone writes the run directory, and evaluation is sharded
and gathered. The same script runs on GPUs (NCCL) and on several nodes with torchrun's usual
options; nothing in the model changes.

Run: python docs/examples/torchrun_fit.py   (PPGEN_TINY=1 for a seconds-long smoke run)
     or directly: torchrun --nproc_per_node=2 docs/examples/torchrun_fit.py --worker
"""

import os
import socket
import subprocess
import sys
import tempfile

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

import ppgen

TINY = os.environ.get("PPGEN_TINY") == "1"  # CI runs every example with tiny settings


def model(x=None):
    """A user's 8-component Gaussian mixture (pyro.param statements become module parameters)."""
    weights = pyro.param("weights", torch.ones(8) / 8, constraint=constraints.simplex)
    seeded = torch.Generator().manual_seed(0)
    locs = pyro.param("locs", lambda: torch.randn(8, 2, generator=seeded))
    scale = pyro.param("scale", torch.ones(8, 2), constraint=constraints.positive)
    mix = dist.MixtureSameFamily(dist.Categorical(weights), dist.Normal(locs, scale).to_event(1))
    with pyro.plate("data", 1 if x is None else x.shape[0]):
        return pyro.sample("x", mix, obs=x)


def worker(out: str) -> None:
    """What every rank runs: the ordinary Python API."""
    import torch.distributed as torch_dist

    torch.set_num_threads(1)
    train = ppgen.datasets.load("8gaussians", "train")
    test = ppgen.datasets.load("8gaussians", "test")
    m = ppgen.from_pyro(model, event_shape=(2,), likelihood="exact", example=train.data[:2])
    ppgen.fit(m, train, steps=10 if TINY else 2000, batch_size=256, lr=0.05, seed=0,
              device="cpu", out=out, overwrite=True, progress=False)
    ev = ppgen.evaluate(m, test)  # sharded over the ranks, gathered on every rank
    if torch_dist.get_rank() == 0:
        world = torch_dist.get_world_size()
        print(f"{world} processes, global batch 256: test {ev}")


def launch(nproc: int = 2) -> None:
    """Start this script under torchrun on this machine (loopback, a free port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={port}", __file__, "--worker", out]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        print("rank 0 wrote:", sorted(os.listdir(out)))


if __name__ == "__main__":
    if "--worker" in sys.argv:
        rest = sys.argv[sys.argv.index("--worker") + 1:]
        worker(rest[0] if rest else "runs/torchrun-gmm")
    else:
        launch()
