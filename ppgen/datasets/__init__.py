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
    "DataTypeError",
    "Dataset",
    "dequantize",
    "from_array",
    "from_cifar",
    "from_idx",
    "from_images",
    "load",
    "load_file",
    "logit_transform",
    "mixture_modes",
    "names",
    "quantize",
    "sample_toy",
    "SeriesDataset",
    "from_series",
    "load_series",
]

from pathlib import Path

from ppgen.datasets.arrays import from_array, is_file_spec, load_file
from ppgen.datasets.base import SPLITS, Dataset
from ppgen.datasets.cifar import from_cifar, is_cifar_path
from ppgen.datasets.digits import load_digits
from ppgen.datasets.images import (
    from_idx,
    from_images,
    is_idx_path,
    load_cifar_source,
    load_image_source,
)
from ppgen.datasets.series import (
    SERIES,
    SeriesDataset,
    from_series,
    is_series_spec,
    load_series,
    load_series_file,
)
from ppgen.datasets.toy import TOY_DATASETS, load_toy, mixture_modes, sample_toy
from ppgen.datasets.transforms import DataTransform, dequantize, logit_transform, quantize
from ppgen.datasets.validation import DataError, DataTypeError


def names() -> list[str]:
    """Every embedded dataset's name."""
    return ["digits", "digits-binary", *sorted(TOY_DATASETS), *SERIES]


def load(
    name: str | Path,
    split: str = "train",
    *,
    kind: str | None = None,
    levels: int | None = None,
    key: str | None = None,
) -> Dataset:
    """Load embedded dataset ``name`` (see :func:`names`) or user data, by split.

    User data is told apart by its path: a directory is a folder of PNG/JPEG images
    (:func:`from_images`), a file named like ``*-ubyte``, ``*.idx`` (optionally ``.gz``) an
    MNIST-format IDX file (:func:`from_idx`), ``data_batch_N``/``test_batch`` (``.bin``: the
    binary version; without: the python version, read by a restricted unpickler) or a folder
    of them CIFAR-10 (:func:`from_cifar`), and ``.npy``/``.npz``/``.csv`` files are arrays
    (:mod:`ppgen.datasets.arrays`). An embedded name wins over a folder of the same name.

    Arguments:
        name: an embedded name, or a path, optionally followed by ``#options``
            (``"x.npy#kind=discrete,levels=256"``; ``"faces/#size=32,grayscale=true"``;
            ``"train-images-idx3-ubyte.gz#labels=train-labels-idx1-ubyte.gz"``; ``kind=binary``
            thresholds images at 128; ``binarize=fixed`` draws one seeded Bernoulli
            binarization, ``binarize=dynamic`` redraws it for every training batch). User data
            has one fixed 80/10/10 split (see :mod:`ppgen.datasets.arrays`).
        split: ``"train"``, ``"val"`` or ``"test"``; user data also takes ``"all"``.
        kind: user data only: overrides the inferred kind.
        levels: user data only: overrides the inferred number of levels.
        key: ``.npz`` files only: the array to read.

    Returns:
        The :class:`Dataset`.

    Raises:
        DataError: for an unknown name or split, or bad user data (naming the file and the fix).

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "images-idx3-ubyte"
        >>> header = bytes([0, 0, 8, 3, 0, 0, 0, 20, 0, 0, 0, 2, 0, 0, 0, 2])
        >>> _ = f.write_bytes(header + bytes(range(80)))
        >>> ds = load(f, "test")
        >>> ds.event_shape, ds.kind, ds.levels, len(ds)
        ((1, 2, 2), 'discrete', 256, 2)
    """
    embedded = isinstance(name, str) and (
        name in ("digits", "digits-binary") or name in TOY_DATASETS or name in SERIES
    )
    if not embedded and is_series_spec(name):  # "series.csv#window=24": windows in time
        if kind is not None or levels is not None:
            raise DataError(f"{name}: a series is continuous; kind/levels do not apply")
        return load_series_file(name, split, key=key)
    if not embedded:
        path = Path(str(name).split("#", 1)[0])
        if is_cifar_path(name):
            if key is not None:
                raise DataError(f"{path}: key= selects an array of a .npz file only")
            return load_cifar_source(name, split, kind=kind, levels=levels)
        if path.is_dir() or is_idx_path(name):
            if key is not None:
                raise DataError(f"{path}: key= selects an array of a .npz file only")
            return load_image_source(name, split, kind=kind, levels=levels)
        if isinstance(name, Path) or is_file_spec(name):
            return load_file(name, split, kind=kind, levels=levels, key=key)
        if path.is_file():
            raise DataError(
                f"{name}: unsupported file type; use a .npy, .npz or .csv file, an IDX file "
                "(*-ubyte, *.idx, optionally .gz) or a folder of PNG/JPEG images"
            )
    if kind is not None or levels is not None or key is not None:
        raise DataError(
            f"kind/levels/key apply to user files only; {name!r} is an embedded dataset"
        )
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {SPLITS}")
    if name == "digits":
        return load_digits(split)
    if name == "digits-binary":
        return load_digits(split, binary=True)
    if name in TOY_DATASETS:
        return load_toy(str(name), split)
    if name in SERIES:
        return load_series(str(name), split)
    raise DataError(
        f"unknown dataset {name!r}; embedded datasets: {names()}, or a .npy/.npz/.csv file, an "
        "IDX file or a folder of PNG/JPEG images"
    )
