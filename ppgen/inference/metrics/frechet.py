"""The Frechet distance between Gaussians fitted to features (FID's formula)."""

from __future__ import annotations

__all__ = [
    "frechet_distance",
]

from typing import Any

import torch
from torch import Tensor

from ppgen.inference.metrics.base import (
    MetricResult,
    _generator,
    _pair,
)
from ppgen.inference.metrics.features import FeatureSpec
from ppgen.inference.metrics.registry import MetricInputs, register_metric, statistic_rows


def _gaussian_fit(f: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(F,)`` and unbiased covariance ``(F, F)`` of features ``(N, F)``."""
    mean = f.mean(0)
    centred = f - mean
    return mean, centred.T @ centred / (f.shape[0] - 1)


def _frechet(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    r""":math:`\|\mu_1 - \mu_2\|^2 + \mathrm{tr}(\Sigma_1 + \Sigma_2 - 2(\Sigma_1\Sigma_2)^{1/2})`,
    with :math:`\mathrm{tr}(\Sigma_1\Sigma_2)^{1/2} = \sum_i \sqrt{\lambda_i(S \Sigma_2 S)}`,
    :math:`S = \Sigma_1^{1/2}` (symmetric eigendecompositions: no complex square roots)."""
    w, v = torch.linalg.eigh(cov1)
    root1 = (v * w.clamp_min(0).sqrt()) @ v.T
    inner = root1 @ cov2 @ root1
    lam = torch.linalg.eigvalsh(0.5 * (inner + inner.T)).clamp_min(0)
    value = (mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * lam.sqrt().sum()
    return float(value)


@torch.no_grad()
def frechet_distance(
    x: Tensor,
    y: Tensor,
    features: FeatureSpec = None,
    *,
    num_bootstrap: int = 50,
    seed: int = 0,
) -> MetricResult:
    r"""The Frechet distance between Gaussians fitted to the features of ``x`` and ``y``.

    .. math::
        d^2 = \|\mu_x - \mu_y\|^2 + \mathrm{tr}\big(\Sigma_x + \Sigma_y
        - 2 (\Sigma_x \Sigma_y)^{1/2}\big),

    FID's formula (Heusel et al. 2017) on ppgen's features: for 8x8 digits the fixed digits
    classifier's 64 penultimate activations (:mod:`ppgen.inference.metrics.features`), for other
    data the raw points, or any function ``features`` maps a batch with. Like FID it is
    biased upwards at small sample sizes (Chong & Forsyth 2020): compare values at equal N.
    ``stderr`` is the bootstrap standard deviation (both sides resampled ``num_bootstrap``
    times).

    Arguments:
        x: the model's samples ``(N, *event_shape)``.
        y: the reference data ``(M, *event_shape)``.
        features: None/``"auto"``, ``"raw"``, ``"digits"``, ``"digits-binary"`` or a function
            ``(N, *event_shape) -> (N, F)``.
        num_bootstrap: bootstrap resamples for ``stderr`` (0: none).
        seed: seeds the bootstrap.

    Returns:
        A :class:`MetricResult` with ``value`` (in squared feature units) and ``stderr``.

    References:
        Heusel et al., GANs Trained by a Two Time-Scale Update Rule..., arXiv:1706.08500.
        Chong & Forsyth, Effectively Unbiased FID and Inception Score, arXiv:1911.07023.

    Example:
        >>> import torch
        >>> x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
        >>> y = 2.0 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(1)) + 3.0
        >>> r = frechet_distance(x, y)  # exact for the two Gaussians: 2 * 3^2 + 2 * (2 - 1)^2
        >>> abs(r.value - 20.0) < 3 * r.stderr
        True
    """
    fx, fy, label = _pair(x, y, features, "auto")
    value = _frechet(*_gaussian_fit(fx), *_gaussian_fit(fy))
    stderr = None
    if num_bootstrap > 0:
        g = _generator(seed)
        boot = []
        for _ in range(num_bootstrap):
            ix = torch.randint(fx.shape[0], (fx.shape[0],), generator=g)
            iy = torch.randint(fy.shape[0], (fy.shape[0],), generator=g)
            boot.append(_frechet(*_gaussian_fit(fx[ix]), *_gaussian_fit(fy[iy])))
        if num_bootstrap > 1:
            stderr = float(torch.tensor(boot, dtype=torch.float64).std())
    return MetricResult(
        name="frechet_distance",
        value=value,
        stderr=stderr,
        num_x=fx.shape[0],
        num_y=fy.shape[0],
        features=label,
        details={"feature_dims": fx.shape[1], "num_bootstrap": num_bootstrap},
    )


@register_metric(
    "fd",
    rows=statistic_rows("Frechet distance", "± {} (bootstrap)"),
    aliases=("frechet", "frechet_distance", "fid"),
)
def _fd_entry(inputs: MetricInputs) -> dict[str, Any]:
    """The Frechet distance on the data's declared features."""
    x = inputs.require_samples()
    return frechet_distance(
        x, inputs.reference, features=inputs.features, seed=inputs.seed
    ).to_dict()
