"""ppgen: deep generative models as Pyro programs. Define, fit, score honestly, look inside."""

from __future__ import annotations

__all__ = ["build", "datasets", "evaluate", "inference", "models"]

from ppgen import datasets, inference, models
from ppgen.inference.likelihood import evaluate
from ppgen.models import build

__version__ = "0.1.0"
