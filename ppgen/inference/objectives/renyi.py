r"""The per-example Renyi bound (Li & Turner 2016, arXiv:1602.02311): the ``"RenyiELBO"``
estimator of the ``"elbo"`` objective, and the ``"renyi"`` objective that selects it by name.

.. math:: \mathcal L_\alpha(x) = \frac{1}{1-\alpha} \log \frac1K \sum_{k=1}^K w_k^{1-\alpha},
    \qquad w_k = \frac{p(x, z_k)}{q(z_k \mid x)},\ z_k \sim q(z \mid x),

over K vectorized particles; ``alpha=0`` is the IWAE objective of Burda et al. (2016,
arXiv:1509.00519), ``alpha=1`` the ELBO. Pyro's ``RenyiELBO`` pools the weights of the whole
batch before the log-mean-exp (a bound on log p of the batch) and has no ``differentiable_loss``;
this one is per example.
"""

from __future__ import annotations

__all__ = ["Renyi", "RenyiELBO"]

import math
import warnings
from typing import Any

import torch
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from ppgen.inference.objectives.base import register_objective
from ppgen.inference.objectives.elbo import ELBO, ELBOSettings, ELBOVariant, register_elbo
from ppgen.models.base import AbstractGenerativeModel
from ppgen.models.traces import importance_log_weights, probe


@register_elbo
class RenyiELBO(ELBOVariant):
    """The per-example Renyi bound of order ``settings.alpha`` (see the module's docstring)."""

    name = "RenyiELBO"

    def __init__(self, settings: ELBOSettings) -> None:
        super().__init__(settings)
        self._nesting: int | None = None

    def loss(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None, beta: float
    ) -> Tensor:
        return -self.lower_bound(model, x, context).mean()

    def lower_bound(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None
    ) -> Tensor:
        """The per-example Renyi bound, ``(N,)`` (a lower bound on log p(x) for alpha >= 0)."""
        if self._nesting is None:
            _, gt, self._nesting = probe(model.model, model.guide, x, context)
            assert gt is not None
            for name, site in gt.nodes.items():
                if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                    continue
                if not getattr(site["fn"], "has_rsample", False):
                    raise ValueError(
                        f"the Renyi bound needs reparameterized guide sites; {name!r} is not: "
                        "use elbo='TraceGraph_ELBO'"
                    )
        num_particles, alpha = self.settings.num_particles, self.settings.alpha
        log_w = importance_log_weights(model.model, model.guide, x, context,
                                       num_particles, self._nesting)  # (K, N)
        k = math.log(num_particles)
        if alpha == 1.0:
            return log_w.mean(0)
        a = 1.0 - alpha
        return (torch.logsumexp(a * log_w, 0) - k) / a

    def bound(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None
    ) -> Tensor:
        """Deprecated name of :meth:`lower_bound` (one name for a lower bound)."""
        warnings.warn(
            "RenyiELBO.bound is deprecated; use RenyiELBO.lower_bound (the same value)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.lower_bound(model, x, context)


@register_objective
class Renyi(ELBO):
    """The Renyi bound by objective name (``--objective renyi --objective.alpha=0`` trains the
    IWAE objective); :class:`~ppgen.inference.objectives.ELBO` with ``elbo="RenyiELBO"`` and 5
    particles by default."""

    name = "renyi"

    def __init__(
        self,
        model: AbstractGenerativeModel,
        num_particles: int = 5,
        alpha: float = 0.0,
        **options: Any,
    ) -> None:
        options.pop("elbo", None)
        super().__init__(model, elbo="RenyiELBO", num_particles=num_particles, alpha=alpha,
                         **options)
