r"""Sample quality: two-sample statistics between a model's samples and data, each labelled.

Every function takes two batches, ``x`` (by convention the model's samples) and ``y`` (the
reference data), each ``(N, *event_shape)``, and returns a small frozen result object with
``value`` and, where defined, ``p_value`` and ``stderr``, plus what it was computed on (sizes,
features, settings):

- :func:`mmd`: squared maximum mean discrepancy, Gaussian kernel with the median-heuristic
  bandwidth, unbiased estimator, permutation-test p-value (Gretton et al. 2012);
- :func:`kid`: kernel inception distance, the unbiased MMD with the cubic polynomial kernel on
  features, averaged over subsets (Binkowski et al. 2018), with a permutation p-value;
- :func:`energy_distance`: the energy distance (Szekely & Rizzo 2013), permutation p-value;
- :func:`frechet_distance`: the Frechet distance between Gaussians fitted to features (FID's
  formula; Heusel et al. 2017), with a bootstrap standard error;
- :func:`precision_recall`: k-NN precision/recall (Kynkaanniemi et al. 2019) and
  density/coverage (Naeem et al. 2020);
- :func:`c2st`: a classifier two-sample test (Lopez-Paz & Oquab 2017) with an exact p-value;
- :func:`mode_coverage`: modes reached and the high-quality fraction on a known mixture;
- :func:`metrics_table` / :func:`format_table`: all of them (and the likelihood) for
  ``ppgen evaluate --metrics``, looked up in the registry :data:`METRICS`
  (:mod:`ppgen.inference.metrics.registry`): each metric's module registers its table entry
  with :func:`register_metric`, and this package imports the modules below in the order the
  table prints them. Adding a metric is one file.

Features (what FD, KID and precision/recall compare) come from
:mod:`ppgen.inference.metrics.features`: what the data declare (``Dataset.feature_space``: for
the 8x8 digits a small fixed classifier trained and cached by ppgen, for other data the raw
points), or any function the user passes. Kernel sums
are computed in row blocks, so memory stays ``O(block * N)`` and 5000 + 5000 points take
seconds on one CPU core.
"""

from __future__ import annotations

__all__ = [
    "METRICS",
    "MetricError",
    "MetricInputs",
    "MetricResult",
    "ModeCoverage",
    "PrecisionRecall",
    "c2st",
    "cache_dir",
    "digits_classifier",
    "energy_distance",
    "format_table",
    "frechet_distance",
    "kid",
    "metrics_table",
    "mmd",
    "mode_coverage",
    "precision_recall",
    "register_metric",
]

# The registry first, then the modules that register the table's metrics, in the order the
# table computes and prints them (the likelihood; mmd, kid, energy; fd; c2st; prdc; modes), then
# the table that reads them. The order is the registry's: keep it (isort is off here).
# isort: off
from ppgen.inference.metrics.base import MetricError, MetricResult
from ppgen.inference.metrics.features import cache_dir, digits_classifier
from ppgen.inference.metrics.registry import METRICS, MetricInputs, register_metric
from ppgen.inference.metrics import nll  # noqa: F401  (registers "likelihood")
from ppgen.inference.metrics.kernel import energy_distance, kid, mmd
from ppgen.inference.metrics.frechet import frechet_distance
from ppgen.inference.metrics.c2st import c2st
from ppgen.inference.metrics.manifold import PrecisionRecall, precision_recall
from ppgen.inference.metrics.modes import ModeCoverage, mode_coverage
from ppgen.inference.metrics.table import format_table, metrics_table

# isort: on
