r"""The discretized Gaussian decoder :math:`p(x_0 \mid x_1)` of a diffusion model on discrete data.

Data with ``L`` levels ``v = 0..L-1`` is scaled to :math:`y_v = 2v/(L-1) - 1 \in [-1, 1]`; level
``v`` owns the bin :math:`[y_v - \delta, y_v + \delta]` with :math:`\delta = 1/(L-1)`, the outer
bins extended to :math:`\pm\infty` (Ho et al. 2020, eq. 13):

.. math:: P(v) = \Phi\Big(\frac{y_v + \delta - \mu}{\sigma}\Big)
    - \Phi\Big(\frac{y_v - \delta - \mu}{\sigma}\Big).

It is a proper distribution over the ``L`` levels, so a bound computed with it is a bound on
the probability of the discrete data as given: no dequantization gap.
"""

from __future__ import annotations

__all__ = ["DiscretizedGaussian"]

from typing import Any, ClassVar

import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all


def _log_ndtr_diff(a: Tensor, b: Tensor) -> Tensor:
    r""":math:`\log(\Phi(b) - \Phi(a))` for ``a < b``, accurate in both tails."""
    upper = a > 0  # both in the upper tail: use Phi(-a) - Phi(-b)
    hi = torch.where(upper, -a, b)
    lo = torch.where(upper, -b, a)
    log_hi = torch.special.log_ndtr(hi)
    log_lo = torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1(log_lo - log_hi))


class DiscretizedGaussian(dist.TorchDistribution):
    r"""A Gaussian :math:`\mathcal{N}(\mu, \sigma^2)` on [-1, 1] discretized to ``levels`` bins.

    Arguments:
        loc: :math:`\mu`, in the scaled space [-1, 1].
        scale: :math:`\sigma > 0`.
        levels: L, the number of levels (2 for binary data).

    Shapes:
        ``loc`` and ``scale`` broadcast to the batch shape; values are levels ``0..L-1`` (as
        floats or integers) of that shape; the event shape is ``()`` (use ``.to_event``).

    References:
        Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239, eq. (13).

    Example:
        >>> d = DiscretizedGaussian(torch.zeros(3), torch.ones(3), levels=17)
        >>> p = d.log_prob(torch.arange(17.0)[:, None].expand(17, 3)).exp().sum(0)
        >>> torch.allclose(p, torch.ones(3))
        True
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "loc": constraints.real,
        "scale": constraints.positive,
    }
    has_rsample = False

    def __init__(
        self, loc: Tensor, scale: Tensor | float, levels: int, validate_args: bool | None = None
    ) -> None:
        if levels < 2:
            raise ValueError(f"a discretized Gaussian needs at least 2 levels, got {levels}")
        self.loc, self.scale = broadcast_all(loc, scale)
        self.levels = int(levels)
        super().__init__(self.loc.shape, torch.Size(), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> constraints.Constraint:
        return constraints.integer_interval(0, self.levels - 1)

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> DiscretizedGaussian:
        batch_shape = torch.Size(batch_shape)
        return DiscretizedGaussian(
            self.loc.expand(batch_shape),
            self.scale.expand(batch_shape),
            self.levels,
            validate_args=False,
        )

    @property
    def mean(self) -> Tensor:
        """Not the level of the mean: the Gaussian's mean mapped to level units (for plots)."""
        return (self.loc + 1) * (self.levels - 1) / 2

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        half = 1.0 / (self.levels - 1)
        y = value.to(self.loc.dtype) * (2 * half) - 1  # the bin centre in [-1, 1]
        a = (y - half - self.loc) / self.scale
        b = (y + half - self.loc) / self.scale
        first = torch.special.log_ndtr(b)  # v = 0: Phi(b)
        last = torch.special.log_ndtr(-a)  # v = L-1: 1 - Phi(a)
        middle = _log_ndtr_diff(a, b)
        lp = torch.where(value <= 0, first, torch.where(value >= self.levels - 1, last, middle))
        return lp

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            y = self.loc.expand(shape) + self.scale.expand(shape) * torch.randn(
                shape, dtype=self.loc.dtype, device=self.loc.device
            )
            return quantize_unit(y, self.levels)


def quantize_unit(y: Tensor, levels: int) -> Tensor:
    """The level ``0..levels-1`` whose bin in [-1, 1] holds ``y`` (nearest centre, clamped)."""
    return ((y + 1) * ((levels - 1) / 2)).round_().clamp_(0, levels - 1)
