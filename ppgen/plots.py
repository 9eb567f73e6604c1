"""Figures: training curves and sample grids (matplotlib, Agg backend; nothing is shown).

Every function returns the ``Figure`` and, given ``path``, writes a PNG there.
"""

from __future__ import annotations

__all__ = ["latent_grid", "latent_scatter", "posterior_pair", "sample_grid", "training_curve"]

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


# ---- posteriors and latents (ppgen.inference.posterior.inspect) -------------------------------


def posterior_pair(
    draws: dict[str, Any],
    dim_names: list[str],
    path: str | os.PathLike | None = None,
    max_dims: int = 4,
    title: str | None = None,
) -> Figure:
    """A pair plot of posterior draws: marginal histograms on the diagonal, scatter below.

    Arguments:
        draws: label -> array ``(S, D)`` (e.g. ``{"nuts": ..., "guide": ...}``), overlaid.
        dim_names: the D coordinate names.
        max_dims: at most this many leading coordinates are drawn.
    """
    import numpy as np

    d = min(len(dim_names), max_dims)
    fig, axes = plt.subplots(d, d, figsize=(2.2 * d + 0.6, 2.2 * d + 0.4), squeeze=False)
    colours = ["C0", "C1", "C2", "C3"]
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            for (label, v), colour in zip(draws.items(), colours, strict=False):
                v = np.asarray(v)
                if i == j:
                    ax.hist(v[:, i], bins=30, density=True, alpha=0.45, color=colour, label=label)
                else:
                    ax.scatter(v[:, j], v[:, i], s=3, alpha=0.3, color=colour, label=label)
            if i == d - 1:
                ax.set_xlabel(dim_names[j])
            if j == 0 and i > 0:
                ax.set_ylabel(dim_names[i])
    axes[0, 0].legend(frameon=False, fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig, path)


def latent_scatter(
    codes: Any,
    labels: Any | None = None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """2-D latent codes ``(N, 2)`` as a scatter, coloured by integer label when given."""
    import numpy as np

    codes = np.asarray(codes)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    if labels is None:
        ax.scatter(codes[:, 0], codes[:, 1], s=4, alpha=0.6)
    else:
        sc = ax.scatter(codes[:, 0], codes[:, 1], c=np.asarray(labels), cmap="tab10", s=4,
                        alpha=0.7)
        fig.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    if title:
        ax.set_title(title, fontsize=9)
    return _finish(fig, path)


def latent_grid(
    rows: Tensor,
    path: str | os.PathLike | None = None,
    levels: int | None = None,
    row_labels: list[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Decoded points ``(R, C, *event_shape)``: one row per traversal/interpolation.

    Images (``(C, H, W)`` events or square vectors) are drawn as an R x C grid; 2-D points as
    one path per row in the data plane; other vectors as one line plot per row.
    """
    rows = rows.detach().float().cpu().numpy()
    r, c = rows.shape[:2]
    event = tuple(rows.shape[2:])
    if event == (2,):
        fig, ax = plt.subplots(figsize=(4.5, 4))
        for i in range(r):
            label = row_labels[i] if row_labels else None
            ax.plot(rows[i, :, 0], rows[i, :, 1], "o-", ms=3, lw=1, label=label)
        ax.legend(frameon=False, fontsize=7)
        ax.set_aspect("equal")
    else:
        if len(event) == 1:
            side = int(math.isqrt(event[0]))
            if side * side != event[0]:
                fig, axes = plt.subplots(r, 1, figsize=(6, 1.2 * r), squeeze=False)
                for i in range(r):
                    for j in range(c):
                        colour = plt.cm.viridis(j / max(c - 1, 1))
                        axes[i, 0].plot(rows[i, j], lw=0.8, color=colour)
                    if row_labels:
                        axes[i, 0].set_ylabel(row_labels[i], fontsize=7)
                if title:
                    fig.suptitle(title)
                return _finish(fig, path)
            rows = rows.reshape(r, c, 1, side, side)
        vmax = (levels - 1) if levels else float(rows.max())
        fig, axes = plt.subplots(r, c, figsize=(c * 0.8 + 0.6, r * 0.8 + 0.4), squeeze=False)
        for i in range(r):
            for j in range(c):
                ax = axes[i, j]
                ax.set_xticks([])
                ax.set_yticks([])
                img = rows[i, j].transpose(1, 2, 0)
                if img.shape[-1] == 1:
                    ax.imshow(img[..., 0], cmap="gray_r", vmin=0, vmax=vmax)
                else:
                    ax.imshow((img / max(vmax, 1e-8)).clip(0, 1))
                if j == 0 and row_labels:
                    ax.set_ylabel(row_labels[i], fontsize=7)
        fig.subplots_adjust(wspace=0.05, hspace=0.05)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)
