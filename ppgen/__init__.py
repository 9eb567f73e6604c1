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

import importlib
from typing import TYPE_CHECKING, Any

# The public names are imported at their first use (PEP 562), so that `import ppgen` costs
# nothing until something is used, and `ppgen --help` and `ppgen list` answer without importing
# torch. One line per name: name -> (module, attribute; None where the name is the module).
_PUBLIC: dict[str, tuple[str, str | None]] = {
    "analysis": ("ppgen.inference.analysis", None),
    "build": ("ppgen.models", "build"),
    "checkpoint": ("ppgen.checkpoint", None),
    "datasets": ("ppgen.datasets", None),
    "evaluate": ("ppgen.inference.likelihood", "evaluate"),
    "fit": ("ppgen.fitting", "fit"),
    "forecast": ("ppgen.inference.forecasting", "forecast"),
    "impute": ("ppgen.inference.conditioning", "impute"),
    "from_pyro": ("ppgen.models.custom", "from_pyro"),
    "inference": ("ppgen.inference", None),
    "load": ("ppgen.checkpoint", "load"),
    "load_run": ("ppgen.run_directory", "load_run"),
    "masks": ("ppgen.masks", None),
    "metrics": ("ppgen.inference.metrics", None),
    "models": ("ppgen.models", None),
    "posterior": ("ppgen.inference.posterior", "posterior"),
    "save": ("ppgen.checkpoint", "save"),
}

if TYPE_CHECKING:  # what the names are, for type checkers and documentation tools
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


def __getattr__(name: str) -> Any:
    """A public name (or any sub-module, ``ppgen.plots``), imported on first use."""
    if name in _PUBLIC:
        module, attribute = _PUBLIC[name]
        value = importlib.import_module(module)
        if attribute is not None:
            value = getattr(value, attribute)
    elif not name.startswith("_"):
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'ppgen' has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module 'ppgen' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"
