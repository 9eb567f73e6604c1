r"""Statistics of density estimates: uncertainty, paired comparison, calibration, ArviZ.

Every likelihood ppgen reports is a mean of per-example values ``log p(x_i)`` (exact, a lower
bound or an estimate: :func:`ppgen.evaluate` labels it), so the questions a statistician asks
are about that sample of per-example values:

- how uncertain is the mean? :func:`bootstrap_ci`, :func:`summarize` (standard errors and
  bootstrap confidence intervals in nats and bits/dim);
- is model A better than model B on this test set? :func:`compare`: a *paired* comparison
  (the per-example differences share the test points, which removes most of the variance),
  refusing to compare an exact value with a bound or an estimate unless asked;
- is the density calibrated? :func:`hdr_coverage` (the share of test points inside the
  model's alpha highest-density region should be alpha) and :func:`pit` (probability integral
  transform of 1-D marginals);
- do a model's ``sample`` and ``log_prob`` agree? :func:`goodness_of_fit`;
- ArviZ: :func:`to_inference_data` puts the pointwise log-likelihoods of several models into
  one ``InferenceData`` (``log_likelihood`` group); :func:`arviz_compare` makes
  ``az.compare``'s table from it.
"""

from __future__ import annotations

__all__ = [
    "PIT",
    "Comparison",
    "ConfidenceInterval",
    "GoodnessOfFit",
    "HDRCoverage",
    "LikelihoodSummary",
    "MixedKindsError",
    "arviz_compare",
    "bootstrap_ci",
    "compare",
    "goodness_of_fit",
    "hdr_coverage",
    "pit",
    "summarize",
    "to_inference_data",
]

from ppgen.inference.analysis.bootstrap import (
    ConfidenceInterval,
    LikelihoodSummary,
    bootstrap_ci,
    summarize,
)
from ppgen.inference.analysis.calibration import PIT, HDRCoverage, hdr_coverage, pit
from ppgen.inference.analysis.comparison import Comparison, MixedKindsError, compare
from ppgen.inference.analysis.goodness import GoodnessOfFit, goodness_of_fit
from ppgen.inference.analysis.inference_data import arviz_compare, to_inference_data
