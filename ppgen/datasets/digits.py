"""scikit-learn's 8x8 digits (shipped inside scikit-learn: no download).

1797 images of 64 pixels with integer levels 0..16, ``event_shape`` (1, 8, 8), kind
``"discrete"``, 17 levels. Fixed split: ``numpy.random.RandomState(0).permutation(1797)``; the
first 1200 are train, the next 300 val, the last 297 test. ``digits-binary`` thresholds the
same images at >= 8 (kind ``"binary"``). Both declare their ``feature_space`` for sample-quality
metrics: the fixed digits classifier's features (``"digits"``, ``"digits-binary"``).
"""

from __future__ import annotations

__all__ = ["load_digits"]

import functools

import numpy as np
import torch

from ppgen.datasets.base import Dataset

_SPLIT_SLICES = {"train": slice(0, 1200), "val": slice(1200, 1500), "test": slice(1500, 1797)}


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    order = np.random.RandomState(0).permutation(len(bunch.target))
    return bunch.images[order].astype(np.float32), bunch.target[order].astype(np.int64)


def load_digits(split: str, binary: bool = False) -> Dataset:
    """The digits split ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
    images, labels = _digits_arrays()
    part = _SPLIT_SLICES[split]
    x = torch.from_numpy(images[part].copy()).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(labels[part].copy())
    if binary:
        return Dataset(
            "digits-binary",
            (x >= 8).float(),
            "binary",
            2,
            split,
            labels=y,
            feature_space="digits-binary",
        )
    return Dataset("digits", x, "discrete", 17, split, labels=y, feature_space="digits")
