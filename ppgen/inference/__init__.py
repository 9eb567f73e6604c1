"""The shared, family-agnostic inference layer: training, likelihood, posteriors, metrics.

The registries fill as their modules are imported, in this order, so ``evaluate`` and
``make_objective`` know every estimator and objective whichever module a user imports first:
the estimator registry (:mod:`~ppgen.inference.likelihood`), then the estimators
(:mod:`~ppgen.inference.estimators`, :mod:`~ppgen.inference.ais`); the objective registry and
its objectives (:mod:`~ppgen.inference.objectives`), then the adversarial objective
(:mod:`~ppgen.inference.adversarial`).
"""

from __future__ import annotations

__all__ = ["Estimate", "Evaluation", "bits_per_dim", "evaluate", "make_objective"]

# The order registers estimators after their registry, objectives after theirs.
# isort: off
from ppgen.inference.likelihood import Estimate, Evaluation, bits_per_dim, evaluate
from ppgen.inference import estimators, ais  # noqa: F401 - register their estimators
from ppgen.inference.objectives import make_objective
from ppgen.inference import adversarial  # noqa: F401 - registers its objective
# isort: on
