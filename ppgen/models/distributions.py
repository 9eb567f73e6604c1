r"""Distributions shared by several families, below the families (STYLE.md, section 1).

A family imports what it scores data with from here rather than from another family: the
discretized logistic mixture is the output of PixelCNN and Gated PixelCNN and a decoder of the
VAE, so it lives here once (it had drifted into two copies with different numerics, see
:class:`DiscretizedLogisticMixture`).

- :func:`softplus`: :math:`\log(1 + e^x)` to full precision.
- :func:`inverse_cdf`: a categorical draw from a given uniform (samplers that pre-draw noise).
- :class:`DiscretizedLogisticMixture`: a mixture of logistics discretized to ``L`` levels.
"""

from __future__ import annotations

__all__ = ["DiscretizedLogisticMixture", "inverse_cdf", "softplus"]

from typing import Any, ClassVar

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import constraints

#: The range :class:`DiscretizedLogisticMixture` clamps its log-scales to, in units of the
#: ``[-1, 1]`` data range: below, a level's bin is 2000 scales wide and its mass is 1 to float
#: precision; above, every level has mass ``1/L`` to within 1e-3.
LOG_SCALE_MIN, LOG_SCALE_MAX = -7.0, 7.0


def softplus(x: Tensor) -> Tensor:
    r""":math:`\log(1 + e^x)` to full precision. ``F.softplus`` returns ``x`` itself above
    ``x = 20``, an error of :math:`e^{-x}` (up to 2e-9 nats per dimension), which a float64
    check that conditionals sum to one over every point sees; ``logsigmoid`` is exact."""
    return -F.logsigmoid(-x)


def inverse_cdf(logits: Tensor, u: Tensor) -> Tensor:
    """The categorical draw ``#{k : F(k) < u}`` (inverse CDF) for uniforms ``u``.

    Shapes: ``logits`` ``(..., K)``, ``u`` ``(...)`` -> ``(...)``.

    Example:
        >>> inverse_cdf(torch.log(torch.tensor([0.5, 0.25, 0.25])), torch.tensor([0.1, 0.6, 0.9]))
        tensor([0, 1, 2])
    """
    cdf = logits.softmax(-1).cumsum(-1)
    return (cdf < u[..., None]).sum(-1).clamp(max=logits.shape[-1] - 1)


class DiscretizedLogisticMixture(dist.TorchDistribution):
    r"""A mixture of logistics discretized to ``levels`` integer bins (Salimans et al. 2017).

    Level ``x`` sits at :math:`y = 2x/(L-1) - 1 \in [-1, 1]` with bin half-width
    :math:`\delta = 1/(L-1)`; the edge bins extend to :math:`\pm\infty`, so the probabilities of
    the ``L`` levels sum to one exactly:

    .. math::

        P(x) = \sum_k \pi_k \left[\sigma\!\left(\frac{y + \delta - \mu_k}{s_k}\right)
               - \sigma\!\left(\frac{y - \delta - \mu_k}{s_k}\right)\right].

    The difference of sigmoids is evaluated in log space without cancellation,
    :math:`\log(\sigma(a) - \sigma(b)) = a + \log(1 - e^{b-a}) - \mathrm{sp}(a) - \mathrm{sp}(b)`
    with :math:`\mathrm{sp}` the softplus and :math:`b - a = -2\delta/s` formed directly, so no
    bin falls back to an approximation: bins narrow against the scale (large ``s``) and bins far
    in a tail keep their relative precision. ``log_scale`` is clamped to ``[-7, 7]``
    (:data:`LOG_SCALE_MIN`, :data:`LOG_SCALE_MAX`).

    Used by PixelCNN / Gated PixelCNN (``output="logistic"``) and the VAE
    (``decoder="logistic_mixture"``). Until the two were merged, the VAE's copy computed
    :math:`\log(1 - e^{d})` from :math:`d = \log\sigma(b) - \log\sigma(a)` formed by subtraction
    and clamped below :math:`-10^{-12}`: it lost relative precision where a bin is narrow
    against the scale and floored the mass of a bin deep in a tail at :math:`10^{-12}\sigma(a)`
    (``tests/models/test_distributions.py`` checks both regimes against a direct computation).

    Arguments:
        logits: mixture logits, ``(..., K)``.
        loc: component locations on the ``[-1, 1]`` scale, ``(..., K)``.
        log_scale: component log-scales, ``(..., K)``.
        levels: the number of levels ``L``.

    References:
        Salimans et al. (2017), "PixelCNN++", arXiv:1701.05517, section 2.1.

    Example:
        >>> d = DiscretizedLogisticMixture(torch.zeros(2), torch.tensor([-0.5, 0.5]),
        ...                                torch.full((2,), -2.0), levels=256)
        >>> round(float(d.log_prob(torch.arange(256.0)).exp().sum()), 5)
        1.0
    """

    arg_constraints: ClassVar[dict] = {
        "logits": constraints.real_vector,
        "loc": constraints.real_vector,
        "log_scale": constraints.real_vector,
    }
    has_rsample = False

    def __init__(
        self,
        logits: Tensor,
        loc: Tensor,
        log_scale: Tensor,
        levels: int,
        validate_args: bool | None = None,
    ) -> None:
        self.logits, self.loc, self.log_scale = torch.broadcast_tensors(logits, loc, log_scale)
        self.levels = int(levels)
        super().__init__(self.logits.shape[:-1], torch.Size(), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> constraints.Constraint:
        return constraints.integer_interval(0, self.levels - 1)

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> DiscretizedLogisticMixture:
        shape = torch.Size(batch_shape) + self.logits.shape[-1:]
        return DiscretizedLogisticMixture(
            self.logits.expand(shape),
            self.loc.expand(shape),
            self.log_scale.expand(shape),
            self.levels,
            validate_args=self._validate_args,  # as torch's own expand: the setting carries
        )

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        levels = self.levels
        x = value[..., None]
        half = 1.0 / (levels - 1)
        inv_s = torch.exp(-self.log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX))
        y = 2.0 * half * x - 1.0
        upper = (y + half - self.loc) * inv_s  # a: the bin's upper edge, standardized
        lower = (y - half - self.loc) * inv_s  # b = a - 2 delta / s
        # log(sigma(a) - sigma(b)), stable for every a > b; b - a is formed directly, not by
        # subtraction, so it never rounds to 0
        mid = upper + torch.log(-torch.expm1(-2.0 * half * inv_s)) - softplus(upper)
        mid = mid - softplus(lower)
        log_cdf_upper = -softplus(-upper)  # x = 0: P = sigma(a)
        log_sf_lower = -softplus(lower)  # x = L - 1: P = 1 - sigma(b)
        lp = torch.where(x <= 0, log_cdf_upper, torch.where(x >= levels - 1, log_sf_lower, mid))
        return torch.logsumexp(self.logits.log_softmax(-1) + lp, dim=-1)

    @property
    def mean(self) -> Tensor:
        """The expected level, :math:`\\sum_l l\\, P(l)` (latent traversals read it)."""
        levels = torch.arange(self.levels, dtype=self.loc.dtype, device=self.loc.device)
        shape = (self.levels,) + (1,) * len(self.batch_shape)
        lp = self.log_prob(levels.reshape(shape).expand((self.levels, *self.batch_shape)))
        return (lp.exp() * levels.reshape(shape)).sum(0)

    def draw(self, u: Tensor) -> Tensor:
        """The sample that uniforms ``u`` of shape ``(*batch_shape, 2)`` map to: ``u[..., 0]``
        picks the component by inverse CDF, ``u[..., 1]`` the logistic by its quantile function;
        the result is rounded to its bin."""
        k = inverse_cdf(self.logits, u[..., 0])[..., None]
        loc = self.loc.gather(-1, k)[..., 0]
        log_s = self.log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX).gather(-1, k)[..., 0]
        tiny = torch.finfo(u.dtype).eps
        v = u[..., 1].clamp(tiny, 1.0 - tiny)
        y = loc + log_s.exp() * (torch.log(v) - torch.log1p(-v))
        return ((y + 1.0) * (self.levels - 1) / 2.0).round().clamp(0, self.levels - 1)

    def sample(
        self,
        sample_shape: torch.Size | tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draws of shape ``sample_shape + batch_shape``: two uniforms per draw (from
        ``generator``, else torch's global generator) mapped by :meth:`draw`."""
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            u = torch.rand(*shape, 2, generator=generator, dtype=self.loc.dtype,
                           device=self.loc.device)
            return self.expand(shape).draw(u)
