"""The :class:`Dataset` record every loader returns."""

from __future__ import annotations

__all__ = ["Dataset", "SPLITS", "default_feature_space"]

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import Tensor

from ppgen.datasets.validation import DataError, check_batch

SPLITS = ("train", "val", "test")

FeatureSpace = str | Callable[[Tensor], Tensor]


def default_feature_space(
    event_shape: tuple[int, ...], kind: str, levels: int | None
) -> FeatureSpace:
    """The feature space a dataset declares when its loader names none.

    Data shaped like the 8x8 digits (``(1, 8, 8)`` or ``(8, 8)``) that are binary, or discrete
    with the digits' 17 levels, are compared in the fixed digits classifier's features
    (``"digits-binary"`` / ``"digits"``), so a user's export of the digits is scored as the
    embedded set is; any other data in its raw points (``"raw"``).

    Example:
        >>> default_feature_space((8, 8), "discrete", 17)
        'digits'
        >>> default_feature_space((2,), "continuous", None)
        'raw'
    """
    if tuple(event_shape) in ((1, 8, 8), (8, 8)):
        if kind == "binary":
            return "digits-binary"
        if kind == "discrete" and levels == 17:
            return "digits"
    return "raw"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A split of a dataset, validated on construction.

    Attributes:
        name: the dataset's name (``"digits"``, ``"moons"``, a file path...).
        data: ``Tensor[N, *event_shape]``, float32. Discrete data holds integers ``0..levels-1``.
        kind: ``"binary"``, ``"discrete"`` or ``"continuous"``.
        levels: number of levels for discrete data (2 for binary), None for continuous.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` for user data.
        labels: optional ``LongTensor[N]`` of class labels (digits), used for context and plots.
        true_log_prob: ``x -> Tensor[N]`` in nats where the data density is known, else None.
        entropy: the data density's differential entropy in nats, where known.
        feature_space: what sample-quality metrics (Frechet distance, KID, precision/recall)
            compare: ``"raw"`` (the flattened points), ``"digits"`` / ``"digits-binary"`` (the
            fixed digits classifier's features) or a function ``(N, *event_shape) -> (N, F)``.
            None (the default): :func:`default_feature_space` of the data's shape and kind.
        modes: ``(centers Tensor[K, D], std)`` where the data are a known isotropic Gaussian
            mixture (the toys ``8gaussians``, ``grid25``), for mode coverage; else None.
        mask: for incomplete data (``from_array(x, missing="mask")``): a bool tensor of the
            data's shape, True where a cell is observed; ``data`` holds NaN in the missing
            cells, so a consumer that does not read the mask refuses the data (NaN) instead of
            using made-up values. None (the default) for complete data; an all-True mask is
            stored as None.
        binarize_probs: dynamic binarization (binary data only): each point's pixel
            intensities in ``[0, 1]``, the same shape as ``data``; training redraws every batch
            as Bernoulli draws of these, and ``data`` holds one fixed draw (for validation and
            scoring). None: ``data`` is the data.
    """

    name: str
    data: Tensor
    kind: str
    levels: int | None = None
    split: str = "all"
    labels: Tensor | None = None
    true_log_prob: Callable[[Tensor], Tensor] | None = None
    entropy: float | None = None
    feature_space: FeatureSpace | None = None
    modes: tuple[Tensor, float] | None = None
    mask: Tensor | None = None
    binarize_probs: Tensor | None = None

    def __post_init__(self) -> None:
        if not torch.is_tensor(self.data):
            raise DataError(f"dataset {self.name!r}: data must be a tensor")
        if self.data.dim() < 2:
            raise DataError(
                f"dataset {self.name!r}: data has shape {tuple(self.data.shape)}; it needs a "
                "batch dim and at least one event dim, e.g. (N, D)"
            )
        levels = 2 if self.kind == "binary" else self.levels
        if self.kind == "discrete" and (levels is None or levels < 2):
            raise DataError(f"dataset {self.name!r}: discrete data needs levels >= 2")
        if self.kind == "continuous" and levels is not None:
            raise DataError(f"dataset {self.name!r}: continuous data takes no levels")
        object.__setattr__(self, "levels", levels)
        if self.mask is not None:
            self._declare_missing()
        observed = self.data if self.mask is None else self.data.where(self.mask, 0.0)
        check_batch(
            observed, self.data.shape[1:], self.kind, levels, what=f"dataset {self.name!r}"
        )
        if self.data.dtype != torch.float32:
            object.__setattr__(self, "data", self.data.to(torch.float32))
        if self.labels is not None and self.labels.shape[0] != self.data.shape[0]:
            raise DataError(
                f"dataset {self.name!r}: {len(self.labels)} labels for {len(self)} points"
            )
        if self.binarize_probs is not None and (
            self.kind != "binary" or self.binarize_probs.shape != self.data.shape
        ):
            raise DataError(
                f"dataset {self.name!r}: binarize_probs is for binary data, one probability per "
                f"value of data {tuple(self.data.shape)}"
            )
        self._declare_metrics()

    def _declare_missing(self) -> None:
        """Check the mask (bool, the data's shape) and put NaN in the missing cells; an
        all-True mask is complete data (None)."""
        mask = self.mask
        if not torch.is_tensor(mask) or mask.dtype != torch.bool or mask.shape != self.data.shape:
            raise DataError(
                f"dataset {self.name!r}: mask must be a bool tensor of the data's shape "
                f"{tuple(self.data.shape)} (True = observed), got "
                f"{getattr(mask, 'dtype', type(mask).__name__)} of shape "
                f"{tuple(getattr(mask, 'shape', ()))}"
            )
        if bool(mask.all()):
            object.__setattr__(self, "mask", None)
            return
        data = self.data.to(torch.float32).masked_fill(~mask, float("nan"))
        object.__setattr__(self, "data", data)

    @property
    def missing_fraction(self) -> float:
        """The fraction of cells that are missing (0.0 for complete data)."""
        return 0.0 if self.mask is None else 1.0 - float(self.mask.float().mean())

    def _declare_metrics(self) -> None:
        """Resolve the default ``feature_space`` and check the declared ``modes``."""
        if self.feature_space is None:
            space = default_feature_space(self.event_shape, self.kind, self.levels)
            object.__setattr__(self, "feature_space", space)
        if self.modes is not None:
            centers, std = self.modes
            if (
                not torch.is_tensor(centers)
                or centers.dim() != 2
                or centers.shape[1] != self.num_dims
                or not std > 0
            ):
                raise DataError(
                    f"dataset {self.name!r}: modes must be (centers of shape (K, {self.num_dims}),"
                    f" std > 0); got centers {tuple(getattr(centers, 'shape', ()))}, std {std}"
                )

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one data point."""
        return tuple(self.data.shape[1:])

    @property
    def num_dims(self) -> int:
        """D, the number of scalar dimensions of one point (bits/dim divides by it)."""
        return math.prod(self.event_shape)

    def spec(self) -> dict:
        """The data facts a model config records: ``event_shape``, ``kind``, ``levels``."""
        return {"event_shape": self.event_shape, "kind": self.kind, "levels": self.levels}

    def subset(self, n: int) -> Dataset:
        """The first ``n`` points (for quick runs and tests)."""
        return self.select(slice(0, n))

    def select(self, index: Tensor | slice) -> Dataset:
        """The points ``index`` picks (a slice or indices), with their labels, their mask of
        observed cells and their binarization probabilities."""
        labels = None if self.labels is None else self.labels[index]
        mask = None if self.mask is None else self.mask[index]
        probs = None if self.binarize_probs is None else self.binarize_probs[index]
        return dataclasses.replace(
            self, data=self.data[index], labels=labels, mask=mask, binarize_probs=probs
        )

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"event_shape={self.event_shape}, kind={self.kind!r}, levels={self.levels}"
            + (")" if self.mask is None else f", missing={self.missing_fraction:.3g})")
        )
