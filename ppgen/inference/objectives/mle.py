"""Exact maximum likelihood, for families with an exact density."""

from __future__ import annotations

__all__ = ["MaximumLikelihood"]

from typing import Any

from torch import Tensor

from ppgen.inference.objectives.base import AbstractObjective, register_objective
from ppgen.models.base import AbstractGenerativeModel


@register_objective
class MaximumLikelihood(AbstractObjective):
    r"""Exact maximum likelihood: minimize :math:`-\frac{1}{N}\sum_i \log p(x_i)` in nats.

    For families declaring ``likelihood = "exact"``.
    """

    name = "mle"

    def __init__(self, model: AbstractGenerativeModel, **options: Any) -> None:
        if model.likelihood != "exact":
            raise ValueError(
                f"the 'mle' objective needs an exact likelihood; {type(model).__name__} declares "
                f"likelihood={model.likelihood!r} (its default objective is "
                f"{model.default_objective!r})"
            )
        super().__init__(model, **options)

    def loss(
        self,
        model: AbstractGenerativeModel,
        x: Tensor,
        context: Tensor | None,
        group: str,
        step: int,
    ) -> Tensor:
        return -model.log_prob(x, context).mean()

    def validation_loss(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None
    ) -> Tensor:
        return -model.log_prob(x, context).mean()
