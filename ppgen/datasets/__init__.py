"""Embedded data and user data, validated at the edge.

Example:
    >>> import ppgen
    >>> ds = ppgen.datasets.load("digits", split="train")
    >>> ds.event_shape, ds.kind, ds.levels, len(ds)
    ((1, 8, 8), 'discrete', 17, 1200)
"""

from __future__ import annotations

__all__ = [
    "DataError",
    "DataTransform",
    "Dataset",
    "dequantize",
    "from_idx",
    "from_images",
    "load",
    "logit_transform",
    "names",
    "quantize",
]

from ppgen.datasets.base import SPLITS, Dataset
from ppgen.datasets.digits import load_digits
from ppgen.datasets.images import from_idx, from_images
from ppgen.datasets.toy import TOY_DATASETS, load_toy
from ppgen.datasets.transforms import DataTransform, dequantize, logit_transform, quantize
from ppgen.datasets.validation import DataError


def names() -> list[str]:
    """Every embedded dataset's name."""
    return ["digits", "digits-binary", *sorted(TOY_DATASETS)]


def load(name: str, split: str = "train") -> Dataset:
    """Load embedded dataset ``name`` (see :func:`names`), split ``train``, ``val`` or ``test``.

    Raises:
        DataError: for an unknown name or split.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {SPLITS}")
    if name == "digits":
        return load_digits(split)
    if name == "digits-binary":
        return load_digits(split, binary=True)
    if name in TOY_DATASETS:
        return load_toy(name, split)
    raise DataError(f"unknown dataset {name!r}; embedded datasets: {names()}")
