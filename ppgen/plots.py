"""Figures: training curves and sample grids (matplotlib, Agg backend; nothing is shown).

Every function returns the ``Figure`` and, given ``path``, writes a PNG there.
"""

from __future__ import annotations

__all__ = ["sample_grid", "training_curve"]

import math
import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402


def _finish(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
    return fig


def training_curve(history: Any, path: str | os.PathLike | None = None) -> Figure:
    """Training loss (and validation loss when recorded) against step."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if history.train:
        steps = [r["step"] for r in history.train]
        keys = sorted({k for r in history.train for k in r if k.startswith("loss")})
        for k in keys:
            ax.plot(steps, [r.get(k, math.nan) for r in history.train], label=f"train {k}", lw=1)
    if history.val:
        ax.plot([r["step"] for r in history.val], [r["val_loss"] for r in history.val],
                "o-", ms=3, label="validation", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per example)")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    return _finish(fig, path)


def sample_grid(
    x: Tensor,
    path: str | os.PathLike | None = None,
    levels: int | None = None,
    ncol: int | None = None,
    title: str | None = None,
) -> Figure:
    """Images ``(N, C, H, W)`` as a grid; 2-D points ``(N, 2)`` as a scatter plot."""
    x = x.detach().float().cpu()
    if x.dim() == 2 and x.shape[1] == 2:
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5)
        ax.set_aspect("equal")
    else:
        if x.dim() == 2:  # vectors: show as square-ish images when possible
            side = int(math.isqrt(x.shape[1]))
            if side * side != x.shape[1]:
                raise ValueError(f"cannot draw vectors of size {x.shape[1]} as images")
            x = x.reshape(-1, 1, side, side)
        n = x.shape[0]
        ncol = ncol or int(math.ceil(math.sqrt(n)))
        nrow = int(math.ceil(n / ncol))
        vmax = (levels - 1) if levels else float(x.max())
        fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * 0.8, nrow * 0.8), squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.axis("off")
            if i < n:
                img = x[i].permute(1, 2, 0)
                img = img[..., 0] if img.shape[-1] == 1 else (img / max(vmax, 1e-8)).clamp(0, 1)
                ax.imshow(img, cmap="gray_r", vmin=0, vmax=vmax if img.dim() == 2 else None)
        fig.subplots_adjust(wspace=0.05, hspace=0.05)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)
