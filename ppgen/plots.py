"""Figures from numbers: training curves, sample grids, analysis and latent plots (matplotlib,
Agg backend; nothing is shown).

Every function takes tensors, arrays, records or results (an ``HDRCoverage``, a ``History``),
never a model: nothing here scores anything. Reports that score a model and draw the result
(``density_heatmap`` of a model, ``inspect_report``) live in :mod:`ppgen.reports`. Every function
returns the ``Figure`` and, given ``path``, writes a PNG there.
"""

from __future__ import annotations

__all__ = [
    "density_bounds",
    "density_grid",
    "density_heatmap",
    "hdr_calibration",
    "inpainting_grid",
    "latent_grid",
    "latent_scatter",
    "pit_histogram",
    "posterior_pair",
    "sample_grid",
    "samples_vs_data",
    "training_curve",
    "training_curves",
]

import math
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402


def _finish(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
    return fig


def _records(history: Any) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """The train and validation records of a ``History`` or of its ``to_dict()`` mapping."""
    if isinstance(history, Mapping):
        return list(history.get("train", [])), list(history.get("val", []))
    return list(history.train), list(history.val)


def training_curve(
    history: Any | Mapping[str, Any], path: str | os.PathLike | None = None
) -> Figure:
    """Training loss (and validation loss when recorded) against step.

    Arguments:
        history: the ``History`` that ``ppgen.fit`` returned, or its ``to_dict()`` (the
            contents of a run's ``history.json``): only its ``train`` and ``val`` records are
            read.
        path: where to write the PNG.
    """
    train, val = _records(history)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        steps = [r["step"] for r in train]
        keys = sorted({k for r in train for k in r if k.startswith("loss")})
        for k in keys:
            ax.plot(steps, [r.get(k, math.nan) for r in train], label=f"train {k}", lw=1)
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val],
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
        ax.scatter(x[:, 0].numpy(), x[:, 1].numpy(), s=2, alpha=0.5)
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
        fig, ax = plt.subplots(figsize=(ncol * 0.8, nrow * 0.8))
        _draw_mosaic(ax, x, ncol, nrow, vmax)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


# ---- analysis figures (ppgen.inference.analysis) ----------------------------------------------


def hdr_calibration(
    results: Any | Mapping[str, Any],
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """The HDR calibration curve: share of data inside the alpha-HDR against alpha.

    Arguments:
        results: an ``HDRCoverage`` (from ``ppgen.analysis.hdr_coverage``) or a mapping
            name -> ``HDRCoverage`` to draw several models on one plot.
        path: where to write the PNG.
        title: the figure title.

    Returns:
        The figure: the diagonal (perfect calibration) and each curve with +-2 standard-error
        bars. Above the diagonal: the model is too broad; below: too narrow or missing modes.
    """
    curves = dict(results) if isinstance(results, Mapping) else {"model": results}
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="0.5", lw=1, ls="--", label="calibrated")
    for name, r in curves.items():
        ax.errorbar(
            r.levels,
            r.coverage,
            yerr=[2 * s for s in r.stderr],
            marker="o",
            ms=3,
            lw=1,
            capsize=2,
            label=f"{name} (KS p={r.p_value:.2g})",
        )
    ax.set_xlabel("HDR level alpha (model probability inside)")
    ax.set_ylabel("share of data inside the alpha-HDR")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=7, loc="upper left")
    ax.set_title(title or "HDR calibration")
    return _finish(fig, path)


def pit_histogram(
    result: Any,
    path: str | os.PathLike | None = None,
    bins: int = 10,
    max_dims: int = 8,
) -> Figure:
    """Histograms of the marginal PIT values (``ppgen.analysis.pit``), one panel per dimension.

    The dashed line is the uniform count and the band its +-2 binomial standard errors. A U
    shape: the marginal is too narrow; a hump: too wide; a slope: shifted.
    """
    counts = result.histogram(bins)[:max_dims]  # (D', bins)
    n = int(result.values.shape[0])
    dims = counts.shape[0]
    ncol = min(dims, 4)
    nrow = int(math.ceil(dims / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.4 * ncol, 2.0 * nrow), squeeze=False)
    expected = n / bins
    band = 2 * math.sqrt(n * (1 / bins) * (1 - 1 / bins))
    edges = [i / bins for i in range(bins)]
    for d, ax in enumerate(axes.flat):
        if d >= dims:
            ax.axis("off")
            continue
        ax.bar(edges, counts[d].tolist(), width=1 / bins, align="edge", color="C0", alpha=0.7)
        ax.axhline(expected, color="0.3", ls="--", lw=1)
        ax.axhspan(expected - band, expected + band, color="0.8", alpha=0.5)
        ax.set_title(f"dim {d} (p={float(result.p_values[d]):.2g})", fontsize=8)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return _finish(fig, path)


Bounds = tuple[float, float, float, float]


def density_bounds(data: Tensor | None) -> Bounds:
    """``(xmin, xmax, ymin, ymax)`` of 2-D points plus a 10% margin; ``(-3, 3, -3, 3)`` without
    data. The default window of :func:`density_heatmap`."""
    if data is None:
        return (-3.0, 3.0, -3.0, 3.0)
    lo, hi = data.min(0).values, data.max(0).values
    pad = 0.1 * (hi - lo)
    return (
        float(lo[0] - pad[0]),
        float(hi[0] + pad[0]),
        float(lo[1] - pad[1]),
        float(hi[1] + pad[1]),
    )


def density_grid(log_prob: Callable[[Tensor], Tensor], bounds: Bounds, size: int) -> Tensor:
    """``log_prob`` on a ``size`` x ``size`` grid over ``bounds`` (rows: y, columns: x), float64.

    The grid's end points are the outer cell centres; points are scored in chunks of 8192.
    """
    import torch

    x0, x1, y0, y1 = bounds
    xs = torch.linspace(x0, x1, size)
    ys = torch.linspace(y0, y1, size)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)  # (size^2, 2)
    with torch.no_grad():
        lp = torch.cat([log_prob(chunk).detach().double().cpu() for chunk in points.split(8192)])
    return lp.reshape(size, size)


def _is_model(density: Any) -> bool:
    """Whether ``density`` is a ppgen model, without importing the models (a model instance
    exists only once ``ppgen.models.base`` has been imported)."""
    base = sys.modules.get("ppgen.models.base")
    return base is not None and isinstance(density, base.AbstractGenerativeModel)


def density_heatmap(
    density: Callable[[Tensor], Tensor] | Tensor,
    data: Tensor | None = None,
    path: str | os.PathLike | None = None,
    true_log_prob: Callable[[Tensor], Tensor] | None = None,
    bounds: Bounds | None = None,
    size: int = 200,
    title: str | None = None,
    max_points: int = 2000,
) -> Figure:
    """A 2-D density as a heat map with the data overlaid, and beside it the true density.

    To draw a ppgen model, use :func:`ppgen.reports.density_heatmap`: it scores the model with
    ``ppgen.evaluate`` and names the kind of score (exact, bound, estimate) in the title.
    Passing a model here still works but is deprecated (it forwards there with a
    ``DeprecationWarning``).

    Arguments:
        density: a function ``(N, 2) -> (N,)`` of log-densities, or its values already on the
            grid: a ``(size, size)`` tensor as :func:`density_grid` returns for ``bounds``.
        data: points ``(N, 2)`` drawn as a light scatter over the map (at most ``max_points``).
        path: where to write the PNG.
        true_log_prob: the data's true log-density (toy datasets carry it): drawn beside.
        bounds: ``(xmin, xmax, ymin, ymax)``; default: :func:`density_bounds` of the data.
        size: grid points per axis.
        title: the title of the learned panel (default: ``"learned: <function name>"``).
        max_points: the most data points drawn.
    """
    if _is_model(density):
        warnings.warn(
            "ppgen.plots.density_heatmap(model, ...) is deprecated: plots draw numbers; use "
            "ppgen.reports.density_heatmap(model, ...), which scores the model and draws",
            DeprecationWarning,
            stacklevel=2,
        )
        from ppgen import reports  # the shim only: plots itself never scores a model

        return reports.density_heatmap(density, data, path, true_log_prob=true_log_prob,
                                       bounds=bounds, size=size, title=title,
                                       max_points=max_points)
    if bounds is None:
        bounds = density_bounds(data)
    if isinstance(density, Tensor):
        if tuple(density.shape) != (size, size):
            raise ValueError(f"density: a grid of log-densities must have shape ({size}, {size})"
                             f" (size), got {tuple(density.shape)}")
        learned = density.detach().double().cpu()
        default_title = "learned"
    else:
        learned = density_grid(density, bounds, size)
        default_title = f"learned: {getattr(density, '__name__', 'density')}"
    panels = [(default_title if title is None else title, learned)]
    if true_log_prob is not None:
        panels.append(("true density", density_grid(true_log_prob, bounds, size)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    # the grid's values sit at cell centres: the linspace end points are the outer centres
    dx, dy = (bounds[1] - bounds[0]) / (size - 1), (bounds[3] - bounds[2]) / (size - 1)
    extent = (bounds[0] - dx / 2, bounds[1] + dx / 2, bounds[2] - dy / 2, bounds[3] + dy / 2)
    for ax, (label, lp) in zip(axes[0], panels, strict=True):
        ax.imshow(lp.exp().numpy(), origin="lower", extent=extent, cmap="magma", aspect="auto")
        if data is not None:
            pts = data.detach().float().cpu()[:max_points].numpy()
            ax.scatter(pts[:, 0], pts[:, 1], s=1, c="c", alpha=0.3, linewidths=0)
        ax.set_title(label, fontsize=9)
        ax.set_xlim(bounds[0], bounds[1])
        ax.set_ylim(bounds[2], bounds[3])
    fig.tight_layout()
    return _finish(fig, path)


def samples_vs_data(
    samples: Tensor,
    data: Tensor,
    path: str | os.PathLike | None = None,
    levels: int | None = None,
    n: int = 64,
    titles: tuple[str, str] = ("samples", "data"),
) -> Figure:
    """The model's samples beside real data: image grids, or scatter plots for 2-D points on
    shared axes.

    Arguments:
        samples: ``(N, C, H, W)`` images or ``(N, 2)`` points from the model.
        data: the same shape, from the data.
        path: where to write the PNG.
        levels: the data's levels (sets the grey scale of discrete images).
        n: the most images (or 10x as many points) drawn per panel.
        titles: the two panels' titles.
    """
    left = samples.detach().float().cpu()
    right = data.detach().float().cpu()
    if left.dim() == 2 and left.shape[1] == 2:
        fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
        for ax, pts, label in zip(axes, (left, right), titles, strict=True):
            pts = pts[: 10 * n * 4].numpy()
            ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
            ax.set_title(label)
            ax.set_aspect("equal")
        fig.tight_layout()
        return _finish(fig, path)
    if left.dim() == 2:
        side = int(math.isqrt(left.shape[1]))
        if side * side != left.shape[1]:
            raise ValueError(f"cannot draw vectors of size {left.shape[1]} as images")
        left, right = left.reshape(-1, 1, side, side), right.reshape(-1, 1, side, side)
    left, right = left[:n], right[:n]
    ncol = int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(max(left.shape[0], right.shape[0]) / ncol))
    vmax = (levels - 1) if levels else float(max(left.max(), right.max()))
    fig, axes = plt.subplots(1, 2, figsize=(2 * ncol * 0.8 + 0.4, nrow * 0.8 + 0.4))
    for ax, imgs, label in zip(axes, (left, right), titles, strict=True):
        _draw_mosaic(ax, imgs, ncol, nrow, vmax)
        ax.set_title(label)
    fig.tight_layout()
    return _finish(fig, path)


def _draw_mosaic(ax: Any, imgs: Tensor, ncol: int, nrow: int, vmax: float) -> None:
    """Images ``(N, C, H, W)`` tiled into one picture (one ``imshow``: drawing a grid of 64
    axes costs seconds) with a one-pixel blank border around each image."""
    import numpy as np

    n, c, h, w = imgs.shape
    rgb = c != 1
    canvas = np.full(
        (nrow * (h + 1) + 1, ncol * (w + 1) + 1, *((3,) if rgb else ())),
        1.0 if rgb else np.nan,
    )
    for i in range(n):
        r, q = divmod(i, ncol)
        img = imgs[i].permute(1, 2, 0)
        img = (img / max(vmax, 1e-8)).clamp(0, 1) if rgb else img[..., 0]
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = (
            img.numpy()
        )
    ax.axis("off")
    if rgb:
        ax.imshow(canvas, interpolation="nearest")
    else:
        cmap = plt.get_cmap("gray_r").with_extremes(bad="white")
        ax.imshow(canvas, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")


# ---- posteriors and latents (ppgen.reports.inspect_report) ------------------------------------


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


# ---- several runs side by side (ppgen benchmark) ----------------------------------------------


def training_curves(
    histories: Mapping[str, Any], path: str | os.PathLike | None = None, ncol: int = 4
) -> Figure:
    """Training (and validation) loss against step for several runs, one panel per run.

    Each panel has its own y-axis: the losses of different objectives (a likelihood in nats per
    example, a GAN's adversarial losses) are not on one scale.

    Arguments:
        histories: run name -> the :class:`~ppgen.inference.trainer.History` that ``fit``
            returned (anything with ``train`` and ``val`` record lists) or its ``to_dict()``.
        path: where to write the PNG.
        ncol: panels per row.

    Returns:
        The figure, with one axes per run.

    Example:
        >>> h = {"train": [{"step": 1, "loss": 3.0, "time": 0.1},
        ...                {"step": 2, "loss": 2.0, "time": 0.2}],
        ...      "val": [{"step": 2, "val_loss": 2.5}]}  # a History, or its to_dict()
        >>> fig = training_curves({"made": h, "vae": h})
        >>> len(fig.axes)
        2
        >>> plt.close(fig)
    """
    names = list(histories)
    if not names:
        raise ValueError("training_curves needs at least one history")
    ncol = max(1, min(ncol, len(names)))
    nrow = int(math.ceil(len(names) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 2.6 * nrow), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        train, val = _records(histories[name])
        if train:
            steps = [r["step"] for r in train]
            keys = sorted({k for r in train for k in r if k.startswith("loss")})
            marker = "." if len(steps) < 30 else None  # a short run: show every point
            for k in keys:
                ax.plot(steps, [r.get(k, math.nan) for r in train], lw=1,
                        marker=marker, label=f"train {k}")
        if val:
            ax.plot([r["step"] for r in val], [r["val_loss"] for r in val],
                    "o-", ms=2, lw=1, label="validation")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=6)
    for ax in list(axes.flat)[len(names):]:
        fig.delaxes(ax)
    fig.tight_layout()
    return _finish(fig, path)


# ---- conditioning (ppgen impute) --------------------------------------------------------------


def inpainting_grid(
    x: Tensor,
    mask: Tensor,
    samples: Tensor,
    path: str | os.PathLike | None = None,
    levels: int | None = None,
    title: str | None = None,
) -> Figure:
    """Rows of images: observed part (missing cells blank) | completions | truth.

    Arguments:
        x: the true images ``(N, C, H, W)`` (or ``(N, D)`` with D a square).
        mask: ``(N, *event_shape)`` bool, True = observed.
        samples: completions ``(S, N, *event_shape)``.
        path: where to write the figure.
        levels: the data's levels (the grey scale's top).
        title: the figure's title.
    """
    x = x.detach().float().cpu()
    samples = samples.detach().float().cpu()
    mask = mask.detach().cpu().expand(x.shape)
    if x.dim() == 2:
        side = int(math.isqrt(x.shape[1]))
        if side * side != x.shape[1]:
            raise ValueError(f"cannot draw vectors of size {x.shape[1]} as images")
        x, mask = x.reshape(-1, 1, side, side), mask.reshape(-1, 1, side, side)
        samples = samples.reshape(samples.shape[0], -1, 1, side, side)
    blank = math.nan if x.shape[1] == 1 else 0.5 * float((levels or 2) - 1)
    seen = torch.where(mask, x, torch.full_like(x, blank))
    s = samples.shape[0]
    rows = torch.cat([seen[None], samples, x[None]]).transpose(0, 1)  # (N, S + 2, C, H, W)
    grid = rows.reshape(-1, *x.shape[1:])
    return sample_grid(grid, path, levels=levels, ncol=s + 2,
                       title=title or f"observed | {s} completions | truth")
