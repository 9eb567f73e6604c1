"""Classical density estimators, chosen on the validation split: the rows a deep model must beat.

:func:`classical_baselines` fits, on the training split, what a statistician would try first and
picks each one's settings by the validation split's log-likelihood (never the test split's):

- continuous data: the maximum-likelihood Gaussian (full covariance), a Gaussian mixture (number
  of components and covariance type chosen on validation) and a Gaussian kernel density estimate
  (bandwidth chosen on validation);
- discrete or binary data: a mixture of factorized categoricals (a latent-class model; number of
  components chosen on validation). The independent per-dimension model is already a family.

Each is a :class:`ppgen.models.mixture.Mixture`, so its exact ``log_prob`` goes through
``ppgen.evaluate`` exactly like every family's and is labelled ``exact``.

Example:
    >>> import ppgen
    >>> from ppgen.baselines import classical_baselines
    >>> train, val = (ppgen.datasets.load("moons", split=s).subset(400) for s in ("train", "val"))
    >>> sorted(classical_baselines(train, val))
    ['gaussian', 'gmm', 'kde']
"""

from __future__ import annotations

__all__ = ["Baseline", "classical_baselines"]

import dataclasses
import math

import numpy as np
import torch

from ppgen.datasets.base import Dataset
from ppgen.models.mixture import Mixture, fit_em, kernel_density

#: Components tried for the mixtures (those above the training size are skipped).
COMPONENTS = (1, 2, 3, 4, 6, 8, 12, 16)
#: KDE bandwidths tried, as multiples of Scott's rule ``sigma * N^(-1/(D+4))``.
BANDWIDTH_FACTORS = tuple(float(f) for f in np.logspace(-1.5, 0.5, 21))


@dataclasses.dataclass
class Baseline:
    """One fitted classical estimator.

    Attributes:
        name: ``"gaussian"``, ``"gmm"``, ``"kde"`` or ``"mixture"``.
        model: the fitted :class:`~ppgen.models.mixture.Mixture`.
        setting: what the validation split chose, in words (``"K=3, full"``, ``"h=0.31"``).
        val_nats: its mean negative log-likelihood on the validation split, nats.
    """

    name: str
    model: Mixture
    setting: str
    val_nats: float


@torch.no_grad()
def _val_nats(model: Mixture, val: Dataset) -> float:
    value = -model.log_prob(val.data.to(model.mix_logits)).mean().item()
    return value if math.isfinite(value) else math.inf


def _best(candidates: list[Baseline]) -> Baseline:
    return min(candidates, key=lambda b: b.val_nats)


def classical_baselines(train: Dataset, val: Dataset, seed: int = 0) -> dict[str, Baseline]:
    """Fit the classical estimators on ``train``, each one's settings chosen on ``val``.

    Arguments:
        train: the training split.
        val: the validation split (same shape and kind).
        seed: the EM initialisations' seed.

    Returns:
        name -> :class:`Baseline`: ``gaussian``, ``gmm`` and ``kde`` on continuous data;
        ``mixture`` on discrete or binary data.

    Raises:
        ValueError: when the splits disagree in shape or kind, or ``train`` has fewer than 2
            points.
    """
    if tuple(train.event_shape) != tuple(val.event_shape) or train.kind != val.kind:
        raise ValueError(
            f"classical_baselines: train is {train.kind} {tuple(train.event_shape)} but val is "
            f"{val.kind} {tuple(val.event_shape)}; pass two splits of the same data"
        )
    n = len(train)
    if n < 2:
        raise ValueError(f"classical_baselines: train has {n} point(s); it needs at least 2")
    ks = [k for k in COMPONENTS if k < n]
    out: dict[str, Baseline] = {}
    if train.kind == "continuous":
        g = fit_em(train, components=1, covariance="full", seed=seed)
        out["gaussian"] = Baseline("gaussian", g, "K=1, full", _val_nats(g, val))
        tried = []
        for cov in ("full", "diag"):
            for k in ks:
                m = fit_em(train, components=k, covariance=cov, seed=seed)
                tried.append(Baseline("gmm", m, f"K={k}, {cov}", _val_nats(m, val)))
        out["gmm"] = _best(tried)
        flat = train.data.reshape(n, -1).double()
        d = flat.shape[1]
        sigma = float(flat.std(0).mean())  # Scott's rule on the mean per-dimension scale
        scott = sigma * n ** (-1.0 / (d + 4))
        kdes = []
        for f in BANDWIDTH_FACTORS:
            h = scott * f
            m = kernel_density(train, h)
            kdes.append(Baseline("kde", m, f"h={h:.3g}", _val_nats(m, val)))
        out["kde"] = _best(kdes)
    else:
        tried = []
        for k in ks:
            m = fit_em(train, components=k, seed=seed)
            tried.append(Baseline("mixture", m, f"K={k}", _val_nats(m, val)))
        out["mixture"] = _best(tried)
    return out
