"""The shared, family-agnostic inference layer: training, likelihood, posteriors, metrics."""

from __future__ import annotations

__all__ = ["Estimate", "Evaluation", "bits_per_dim", "evaluate", "make_objective"]

from ppgen.inference.likelihood import Estimate, Evaluation, bits_per_dim, evaluate
from ppgen.inference.objectives import make_objective
