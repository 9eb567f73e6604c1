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
    "from_array",
    "load",
    "load_file",
    "logit_transform",
    "mixture_modes",
    "names",
    "quantize",
    "sample_toy",
]

from pathlib import Path

from ppgen.datasets.arrays import from_array, is_file_spec, load_file
from ppgen.datasets.base import SPLITS, Dataset
from ppgen.datasets.digits import load_digits
from ppgen.datasets.toy import TOY_DATASETS, load_toy, mixture_modes, sample_toy
from ppgen.datasets.transforms import DataTransform, dequantize, logit_transform, quantize
from ppgen.datasets.validation import DataError


def names() -> list[str]:
    """Every embedded dataset's name."""
    return ["digits", "digits-binary", *sorted(TOY_DATASETS)]


def load(
    name: str | Path,
    split: str = "train",
    *,
    kind: str | None = None,
    levels: int | None = None,
    key: str | None = None,
) -> Dataset:
    """Load embedded dataset ``name`` (see :func:`names`) or a user file, by split.

    Arguments:
        name: an embedded name, or a ``.npy``/``.npz``/``.csv`` path, optionally followed by
            ``#options`` (``"x.npy#kind=discrete,levels=256"``; see
            :mod:`ppgen.datasets.arrays` for the inference rules and the fixed split).
        split: ``"train"``, ``"val"`` or ``"test"``; user files also take ``"all"``.
        kind: user files only: overrides the inferred kind.
        levels: user files only: overrides the inferred number of levels.
        key: ``.npz`` files only: the array to read.

    Returns:
        The :class:`Dataset`.

    Raises:
        DataError: for an unknown name or split, or a bad file (naming the file and the fix).
    """
    if isinstance(name, Path) or is_file_spec(name):
        return load_file(name, split, kind=kind, levels=levels, key=key)
    if kind is not None or levels is not None or key is not None:
        raise DataError(
            f"kind/levels/key apply to user files only; {name!r} is an embedded dataset"
        )
    embedded = name in ("digits", "digits-binary") or name in TOY_DATASETS
    if not embedded and Path(name).is_file():
        raise DataError(f"{name}: unsupported file type; use a .npy, .npz or .csv file")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {SPLITS}")
    if name == "digits":
        return load_digits(split)
    if name == "digits-binary":
        return load_digits(split, binary=True)
    if name in TOY_DATASETS:
        return load_toy(name, split)
    raise DataError(
        f"unknown dataset {name!r}; embedded datasets: {names()}, or a .npy/.npz/.csv file"
    )
