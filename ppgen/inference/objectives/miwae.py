r"""The ``"miwae"`` objective: fitting on incomplete data with the missing-data importance
weighted bound of Mattei & Frellsen (2019, arXiv:1812.02633).

.. math:: \mathcal L_K(x_{obs}) = \mathbb E\Big[\log \frac1K \sum_{k=1}^K
    \frac{p(x_{obs} \mid z_k)\, p(z_k)}{q(z_k \mid x_{obs})}\Big] \le \log p(x_{obs}),

per example, over the observed cells only (the dataset's ``mask``, True = observed), with K
importance samples from the encoder. On complete data (no mask) it is the IWAE bound of Burda
et al. (2016). The trainer hands each batch's slice of the mask to :meth:`MIWAE.loss`; the model
supplies the log-weights through its declared capability
(:meth:`~ppgen.models.base.AbstractGenerativeModel.observed_log_weights`, named by
``incomplete_data_objective``), so nothing here names a family.
"""

from __future__ import annotations

__all__ = ["MIWAE", "miwae_bound"]

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ppgen.inference.objectives.base import AbstractObjective, register_objective
from ppgen.models.base import AbstractGenerativeModel


def miwae_bound(
    model: AbstractGenerativeModel,
    x: Tensor,
    mask: Tensor | None,
    num_particles: int,
    context: Tensor | None = None,
) -> Tensor:
    """The per-example MIWAE bound ``(N,)`` in nats: ``logsumexp_k log w_k - log K``."""
    log_w = model.observed_log_weights(x, mask, num_particles, context)  # (K, N)
    return torch.logsumexp(log_w, 0) - math.log(num_particles)


@register_objective
class MIWAE(AbstractObjective):
    """Maximize the MIWAE bound on log p(x_obs) per example (see the module's docstring).

    Arguments:
        model: a model whose class names an ``incomplete_data_objective`` (it implements
            ``observed_log_weights``).
        num_particles: K, importance samples per example (the paper uses 20 on UCI tables).

    Example:
        >>> import ppgen, torch
        >>> ds = ppgen.datasets.load("moons", "val")
        >>> m = ppgen.build("vae", ds, latent=2, hidden=[8])
        >>> obj = ppgen.inference.make_objective("miwae", m, num_particles=4)
        >>> mask = torch.rand(ds.data[:10].shape) < 0.5
        >>> obj.loss(m, ds.data[:10], None, "model", step=0, mask=mask).shape
        torch.Size([])
    """

    name = "miwae"
    accepts_mask: ClassVar[bool] = True

    def __init__(
        self, model: AbstractGenerativeModel, num_particles: int = 20, **options: Any
    ) -> None:
        if model.incomplete_data_objective is None:
            raise ValueError(
                f"the '{self.name}' objective needs a model that scores its observed cells "
                f"only; {type(model).__name__} has none (its default objective is "
                f"{model.default_objective!r})"
            )
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or (
            num_particles < 1
        ):
            raise ValueError(f"num_particles must be a positive int, got {num_particles!r}")
        super().__init__(model, num_particles=num_particles, **options)
        self.num_particles = num_particles

    def loss(
        self,
        model: AbstractGenerativeModel,
        x: Tensor,
        context: Tensor | None,
        group: str,
        step: int,
        mask: Tensor | None = None,
    ) -> Tensor:
        return -miwae_bound(model, x, mask, self.num_particles, context).mean()

    def validation_loss(
        self,
        model: AbstractGenerativeModel,
        x: Tensor,
        context: Tensor | None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """The negative MIWAE bound, nats per example, with its own fixed random numbers
        (common to every validation; the training stream is not moved)."""
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(0)
            return self.loss(model, x, context, "model", 0, mask)
