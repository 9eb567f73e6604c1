"""The denoising objective of diffusion models."""

from __future__ import annotations

__all__ = ["Denoising"]

from typing import Any

import torch
from torch import Tensor

from ppgen.inference.objectives.base import AbstractObjective, register_objective
from ppgen.models.base import AbstractGenerativeModel
from ppgen.models.capabilities import DenoisingModel, require


@register_objective
class Denoising(AbstractObjective):
    r"""The denoising objective of diffusion models: the model's per-example
    ``denoising_loss`` at one random time per example, averaged over the batch. The model must
    be a :class:`~ppgen.models.capabilities.DenoisingModel`.

    Options (passed to the model's ``denoising_loss``): ``loss`` (``"simple"``, the
    simplified epsilon loss :math:`L_\text{simple}` of Ho et al., the default with fixed
    variances; ``"vlb"``, the variational bound's term; ``"hybrid"``,
    :math:`L_\text{simple} + \lambda L_\text{vlb}` of Nichol & Dhariwal, the default with
    learned variances) and ``vlb_weight`` (:math:`\lambda`, default 1e-3). The validation loss is
    the same loss with a fixed generator, so best-checkpoint selection compares like with like.

    References:
        Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239.
        Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672.

    Example:
        >>> import ppgen
        >>> from ppgen.inference.objectives import make_objective
        >>> ds = ppgen.datasets.load("moons", split="val")
        >>> m = ppgen.build("ddpm", ds, timesteps=10, hidden=[8], variance="learned")
        >>> obj = make_objective("denoising", m, loss="hybrid", vlb_weight=1e-3)
        >>> obj.loss(m, ds.data[:16], None, "model", 0).shape
        torch.Size([])
    """

    name = "denoising"

    def __init__(self, model: AbstractGenerativeModel, **options: Any) -> None:
        require(model, DenoisingModel, "the 'denoising' objective")
        unknown = sorted(set(options) - {"loss", "vlb_weight"})
        if unknown:
            raise ValueError(f"unknown denoising option {unknown[0]!r}; known: loss, vlb_weight")
        if options.get("loss", "simple") not in (None, "simple", "vlb", "hybrid"):
            raise ValueError(f"loss must be 'simple', 'vlb' or 'hybrid', got {options['loss']!r}")
        super().__init__(model, **options)

    def loss(
        self,
        model: AbstractGenerativeModel,
        x: Tensor,
        context: Tensor | None,
        group: str,
        step: int,
    ) -> Tensor:
        assert isinstance(model, DenoisingModel)  # checked when the objective was made
        return model.denoising_loss(x, context, **self.options).mean()

    def validation_loss(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None
    ) -> Tensor:
        assert isinstance(model, DenoisingModel)
        generator = torch.Generator(device=x.device).manual_seed(0)
        return model.denoising_loss(x, context, generator=generator, **self.options).mean()
