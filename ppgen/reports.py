"""Reports that score and draw: a model's 2-D density, ``ppgen inspect``'s look inside a
latent-variable model, a run's training curve.

Here, beside :mod:`ppgen.benchmark`, scoring (``ppgen.inference``) and drawing
(:mod:`ppgen.plots`) meet: the inference layer computes numbers and never draws, and the plots
draw numbers and never score a model.
"""

from __future__ import annotations

__all__ = [
    "InspectReport",
    "density_heatmap",
    "inspect_report",
    "write_training_curve",
]

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import Tensor

from ppgen import plots
from ppgen.checkpoint import write_atomic
from ppgen.datasets.base import Dataset
from ppgen.inference.likelihood import evaluate
from ppgen.inference.posterior import AmortizationGap, Method, inspect_latents
from ppgen.models.base import AbstractGenerativeModel


def density_heatmap(
    model: AbstractGenerativeModel,
    data: Tensor | None = None,
    path: str | os.PathLike | None = None,
    true_log_prob: Callable[[Tensor], Tensor] | None = None,
    bounds: tuple[float, float, float, float] | None = None,
    size: int = 200,
    title: str | None = None,
    max_points: int = 2000,
) -> Figure:
    """A model's 2-D density as a heat map with the data overlaid, beside the true density.

    The grid is scored with ``ppgen.evaluate`` (the model's default estimator, per-example
    values only: ``mc_examples=0``), so an exact density, a bound or an estimate is drawn as
    such, and the default title names which (``"learned: MAF (exact)"``).

    Arguments:
        model: a ppgen model on 2-D data.
        data: points ``(N, 2)`` drawn as a light scatter over the map (at most ``max_points``).
        path: where to write the PNG.
        true_log_prob: the data's true log-density (toy datasets carry it): drawn beside.
        bounds: ``(xmin, xmax, ymin, ymax)``; default: the data's range plus a margin.
        size: grid points per axis.
        title: the title of the learned panel.
        max_points: the most data points drawn.
    """
    if bounds is None:
        bounds = plots.density_bounds(data)
    param = next(model.parameters(), None)
    kinds: list[str] = []

    def log_prob(x: Tensor) -> Tensor:
        ev = evaluate(model, x if param is None else x.to(param.dtype), mc_examples=0)
        kinds.append(ev.kind)
        return ev.per_example

    grid = plots.density_grid(log_prob, bounds, size)
    if title is None:
        title = f"learned: {type(model).__name__}" + (f" ({kinds[-1]})" if kinds else "")
    return plots.density_heatmap(grid, data, path, true_log_prob=true_log_prob, bounds=bounds,
                                 size=size, title=title, max_points=max_points)


# ---- ppgen inspect ----------------------------------------------------------------------------


@dataclasses.dataclass
class InspectReport:
    """What :func:`inspect_report` computed and wrote.

    Attributes:
        summary: ``az.summary`` of the posterior (a pandas DataFrame) with ESS and R-hat.
        posterior: the ``InferenceData`` of the inspected points.
        gap: the per-example amortization gap, for models with a guide.
        files: the figures written.
    """

    summary: Any
    posterior: Any
    gap: AmortizationGap | None
    files: list[Path]


def inspect_report(
    model: AbstractGenerativeModel,
    data: Dataset,
    out: str | Path = ".",
    num_points: int = 4,
    seed: int = 0,
    method: Method = "nuts",
    *,
    num_samples: int = 300,
    num_chains: int = 2,
    observation_scale: float | None = None,
    gap_steps: int = 300,
    verbose: bool = True,
) -> InspectReport:
    """Look inside a latent-variable model: what ``ppgen inspect RUN --data NAME`` does.

    For ``num_points`` examples of ``data``: the posterior (``method``) with ``az.summary``
    (mean, sd, HDI, MCSE, bulk/tail ESS, R-hat) printed, a pair plot of the posterior (NUTS draws
    against the guide's where both exist) and, for models with a guide, the per-example
    amortization gap. Over the whole split: a latent-space scatter coloured by label (2-D
    latents), latent traversals (each latent dimension swept from its prior 5% to 95% quantile
    around an example's posterior mean) and interpolations between examples, as PNG grids.
    The numbers come from :func:`ppgen.inference.posterior.inspect_latents`.

    (Formerly ``ppgen.inference.posterior.inspect``, a name that shadowed the standard
    library's ``inspect``; the old name still works, with a ``DeprecationWarning``.)

    Arguments:
        model: a model with latent sites.
        data: a Dataset (its labels colour the scatter and condition a conditional model).
        out: the directory for the figures.
        num_points: examples inspected.
        seed: seeds the choice of examples and every draw.
        method: ``"nuts"`` or ``"guide"``.
        num_samples: posterior draws per chain.
        num_chains: chains.
        observation_scale: for implicit models (see :func:`ppgen.posterior`).
        gap_steps: Adam steps fitting the per-example q* of ``amortization_gap``.
        verbose: print the summary and gaps.

    Returns:
        An :class:`InspectReport`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    li = inspect_latents(model, data, num_points, seed, method, num_samples=num_samples,
                         num_chains=num_chains, observation_scale=observation_scale,
                         gap_steps=gap_steps)
    levels = model.config.levels
    files = [out / "posterior_pair.png"]
    plots.posterior_pair(li.pair, li.dim_names, path=files[-1],
                         title=f"p(z | x) of example {int(li.indices[0])}")
    if li.codes is not None:
        files.append(out / "latent_scatter.png")
        plots.latent_scatter(li.codes, li.labels, path=files[-1],
                             title=f"E_q[{li.code_site} | x], coloured by label")
    files.append(out / "traversals.png")
    plots.latent_grid(li.traversals, path=files[-1], levels=levels,
                      row_labels=li.traversal_labels,
                      title="latent traversals (prior 5%-95% quantiles)")
    if li.interpolations is not None:
        files.append(out / "interpolations.png")
        plots.latent_grid(li.interpolations, path=files[-1], levels=levels,
                          row_labels=li.interpolation_labels,
                          title="interpolations between posterior means")
    if verbose:
        print(f"posterior of {len(li.indices)} examples ({method}): indices "
              f"{li.indices.tolist()}")
        print(li.summary.to_string())
        if li.gap is not None:
            print(li.gap.table())
            print(li.gap)
        for f in files:
            print(f"wrote {f}")
    return InspectReport(li.summary, li.posterior, li.gap, files)


# ---- training curves --------------------------------------------------------------------------


def write_training_curve(history: Any | Mapping[str, Any], out_dir: str | Path) -> Path | None:
    """Draw a run's ``training_curve.png`` into ``out_dir`` from the ``History`` that
    ``ppgen.fit`` returned (or its ``to_dict()``), atomically (a kill mid-write leaves the
    previous figure). A figure is never worth losing a run over: a file-system or drawing error
    is printed to stderr and None returned.

    ``ppgen.fit`` and ``ppgen fit`` draw it with the run's records; a caller of
    :func:`ppgen.inference.trainer.fit`, which never draws, calls this.

    Returns:
        The file written, or None.
    """
    import io

    import matplotlib.pyplot as plt

    path = Path(out_dir) / "training_curve.png"
    try:
        fig = plots.training_curve(history)
        buffer = io.BytesIO()
        try:
            fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        finally:
            plt.close(fig)
        write_atomic(path, buffer.getvalue(), "training curve")
    except (OSError, ValueError) as e:
        print(f"ppgen: could not write the training curve: {e}", file=sys.stderr)
        return None
    return path
