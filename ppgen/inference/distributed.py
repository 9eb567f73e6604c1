"""Data-parallel training under ``torchrun``: detection, process group, sharding, reduction.

When launched by ``torchrun`` (``WORLD_SIZE > 1`` in the environment) the trainer initializes a
process group (``gloo`` on CPU, ``nccl`` on CUDA), gives each rank a contiguous slice of every
global batch, and wraps the objective's loss in ``DistributedDataParallel`` so gradients are
averaged across ranks. Because each rank's loss is a mean over an equal slice, the averaged
gradient equals the one-process gradient of the same global batch. Only rank 0 writes files.
"""

from __future__ import annotations

__all__ = [
    "Context",
    "all_reduce_max",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "gather_dicts",
    "init",
    "maybe_no_sync",
    "sample",
    "shard",
    "wrap",
]

import atexit
import contextlib
import dataclasses
import datetime
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

if TYPE_CHECKING:
    from ppgen.inference.objectives import AbstractObjective
    from ppgen.models.base import AbstractGenerativeModel


@dataclasses.dataclass(frozen=True)
class Context:
    """Where this process stands: rank, world size and device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init(device: torch.device) -> Context:
    """Detect ``torchrun``'s environment and join (or reuse) its process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context(0, 1, device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # the group ppgen opened, ppgen closes: a group still open at interpreter exit can abort
        # the process ("terminate called without an active exception"), which torchrun reports
        # as a failed run after a finished one
        atexit.register(_destroy)
    return Context(rank, world_size, device)


def _destroy() -> None:
    """Close the group at exit, every rank together: a gloo group still open while a peer's
    sockets close under it aborts the process now and then ("terminate called without an
    active exception"; measured on 2-process runs: 1 in 8 without the barrier, 0 in 48 with
    it). A peer already gone (it raised) ends the wait after a minute."""
    if not torch_dist.is_initialized():
        return
    if torch_dist.get_backend() == "gloo":
        try:
            torch_dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
        except RuntimeError:
            pass  # a rank is gone: close this one anyway
    torch_dist.destroy_process_group()


def shard(indices: Tensor, ctx: Context) -> Tensor:
    """This rank's contiguous slice of a global batch of indices."""
    if not ctx.distributed:
        return indices
    if len(indices) % ctx.world_size:
        raise ValueError(
            f"the global batch ({len(indices)}) must be divisible by the number of processes "
            f"({ctx.world_size}); choose another --batch-size"
        )
    per = len(indices) // ctx.world_size
    return indices[ctx.rank * per : (ctx.rank + 1) * per]


class _Loss(nn.Module):
    """The objective's loss as a module's ``forward``, so DDP can hook its backward."""

    def __init__(self, model: nn.Module, objective: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(
        self, x: Tensor, context: Tensor | None, group: str, step: int,
        mask: Tensor | None = None,
    ) -> Tensor:
        if mask is None:
            return self.objective.loss(self.model, x, context, group, step)
        return self.objective.loss(self.model, x, context, group, step, mask=mask)


def wrap(
    model: AbstractGenerativeModel, objective: AbstractObjective, ctx: Context
) -> Callable[..., Tensor]:
    """A callable ``(x, context, group, step, mask=None) -> loss``; gradient-averaging under
    DDP. The mask (incomplete data) reaches only objectives that declare ``accepts_mask``."""
    loss = _Loss(model, objective)
    if not ctx.distributed or not any(p.requires_grad for p in loss.parameters()):
        return loss
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    # An objective that steps parameter groups in turn (a GAN's generator, then its critic)
    # leaves the other groups out of each backward pass, which DDP must be told; with one group
    # every parameter gets a gradient, and the search for unused ones (a graph walk per step,
    # and a warning per rank from torch when it finds none) is skipped.
    several = len(objective.param_groups(model)) > 1
    return nn.parallel.DistributedDataParallel(loss, device_ids=ids,
                                               find_unused_parameters=several)


def all_reduce_sum(values: tuple[float, ...], ctx: Context) -> tuple[float, ...]:
    """Sum numbers over ranks (identity in one process)."""
    if not ctx.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    torch_dist.all_reduce(t)
    return tuple(t.tolist())


def all_reduce_mean(value: Tensor, ctx: Context) -> Tensor:
    """The mean of a tensor over ranks (identity in one process)."""
    if not ctx.distributed:
        return value
    value = value.clone()
    torch_dist.all_reduce(value)
    return value / ctx.world_size


def all_reduce_max(value: int, ctx: Context) -> int:
    """The largest of an integer over ranks (identity in one process)."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=ctx.device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return int(t.item())


def gather_dicts(part: dict[int, Any], ctx: Context) -> dict[int, Any]:
    """Merge every rank's dictionary (picklable values) into one, on every rank."""
    if not ctx.distributed:
        return dict(part)
    parts: list[dict[int, Any] | None] = [None] * ctx.world_size
    torch_dist.all_gather_object(parts, part)
    return {k: v for p in parts for k, v in (p or {}).items()}


def broadcast_buffers(module: nn.Module, ctx: Context) -> None:
    """Give every rank rank 0's buffers (e.g. statistics each rank updated on its own slice)."""
    if not ctx.distributed:
        return
    for b in module.buffers():
        torch_dist.broadcast(b, src=0)


def maybe_no_sync(loss: Callable[..., Tensor], sync: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` (gradients accumulate locally) unless ``sync``; a no-op without DDP."""
    if sync or not isinstance(loss, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return loss.no_sync()


def barrier(ctx: Context) -> None:
    """Wait for every rank (no-op in one process)."""
    if ctx.distributed:
        torch_dist.barrier()


def sample(
    model: nn.Module,
    n: int,
    seed: int,
    ctx: Context,
    context: Tensor | None = None,
    block: int = 1000,
) -> Tensor | None:
    """Draw ``n`` samples in blocks shared out over the ranks; gathered, in order, on rank 0.

    Block ``b`` holds samples ``b*block .. (b+1)*block - 1`` and is drawn with seed
    ``seed * 1_000_003 + b`` by whichever rank owns it (``b % world_size``), so the result is a
    function of ``(seed, n, block)`` alone: the same on 1 process or 8. Other ranks return None.
    """
    starts = list(range(0, n, block))
    mine = []
    for b, start in enumerate(starts):
        if b % ctx.world_size != ctx.rank:
            continue
        size = min(block, n - start)
        c = None if context is None else context[start : start + size]
        x = model.sample(size, seed=seed * 1_000_003 + b, context=c)  # type: ignore[operator]
        mine.append((b, x.detach().cpu()))
    if ctx.distributed:
        gathered: list[list[tuple[int, Tensor]]] | list[None] = [None] * ctx.world_size
        torch_dist.all_gather_object(gathered, mine)
        mine = [item for part in gathered for item in part]  # type: ignore[union-attr]
    if not ctx.is_main:
        return None
    return torch.cat([x for _, x in sorted(mine, key=lambda item: item[0])])
