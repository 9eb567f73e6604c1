"""ppgen: deep generative models as Pyro programs. Define, fit, score honestly, look inside.

Example:
    >>> import ppgen
    >>> train = ppgen.datasets.load("digits", split="train")
    >>> m = ppgen.build("independent", train)
    >>> hist = ppgen.fit(m, train, steps=20, batch_size=100, lr=0.05, progress=False)
    >>> ev = ppgen.evaluate(m, ppgen.datasets.load("digits", split="test"))
    >>> ev.kind, ev.bits_per_dim < 4.087  # better than uniform over 17 levels
    ('exact', True)
"""

from __future__ import annotations

__all__ = [
    "analysis",
    "build",
    "checkpoint",
    "datasets",
    "evaluate",
    "fit",
    "forecast",
    "from_pyro",
    "impute",
    "inference",
    "load",
    "load_run",
    "masks",
    "metrics",
    "models",
    "posterior",
    "save",
]

from ppgen import checkpoint, datasets, inference, masks, models
from ppgen.checkpoint import load, save
from ppgen.fitting import fit
from ppgen.inference import analysis, metrics
from ppgen.inference.conditioning import impute
from ppgen.inference.forecasting import forecast
from ppgen.inference.likelihood import evaluate
from ppgen.inference.posterior import posterior
from ppgen.models import build
from ppgen.models.custom import from_pyro
from ppgen.run_directory import load_run

__version__ = "0.1.0"
