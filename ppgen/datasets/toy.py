"""2-D toy densities with seedable samplers and, where analytic, their true log-density.

Every toy has fixed split sizes (train 10,000, val 2,000, test 5,000) drawn with fixed seeds,
so a split is the same on every machine.
"""

from __future__ import annotations

__all__ = ["TOY_DATASETS", "load_toy"]

import math
import zlib
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ppgen.datasets.base import Dataset

SPLIT_SIZES = {"train": 10_000, "val": 2_000, "test": 5_000}
_SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


def _moons(n: int, rng: np.random.RandomState) -> np.ndarray:
    from sklearn.datasets import make_moons

    x, _ = make_moons(n, noise=0.05, random_state=rng)
    return x


_8G_CENTERS = np.array(
    [(math.cos(2 * math.pi * k / 8), math.sin(2 * math.pi * k / 8)) for k in range(8)]
) * 2.0
_8G_STD = 0.1


def _eight_gaussians(n: int, rng: np.random.RandomState) -> np.ndarray:
    k = rng.randint(0, 8, size=n)
    return _8G_CENTERS[k] + _8G_STD * rng.randn(n, 2)


def _eight_gaussians_log_prob(x: Tensor) -> Tensor:
    centers = torch.as_tensor(_8G_CENTERS, dtype=x.dtype, device=x.device)
    sq = ((x[:, None, :] - centers[None]) ** 2).sum(-1)  # (N, 8)
    log_comp = -0.5 * sq / _8G_STD**2 - math.log(2 * math.pi * _8G_STD**2)
    return torch.logsumexp(log_comp, dim=1) - math.log(8)


# name -> (sampler, true log-density or None)
TOY_DATASETS: dict[str, tuple[Callable, Callable | None]] = {
    "moons": (_moons, None),
    "8gaussians": (_eight_gaussians, _eight_gaussians_log_prob),
}


def load_toy(name: str, split: str) -> Dataset:
    """The split of toy density ``name``."""
    sampler, log_prob = TOY_DATASETS[name]
    seed = (zlib.crc32(name.encode()) % 100_000) * 10 + _SPLIT_SEEDS[split]  # stable per name
    x = sampler(SPLIT_SIZES[split], np.random.RandomState(seed))
    return Dataset(name, torch.as_tensor(x, dtype=torch.float32), "continuous", None, split,
                   true_log_prob=log_prob)
