"""The objective protocol (:class:`AbstractObjective`, what the trainer asks of an objective)
and the objective registry.

Each objective module registers its class here with :func:`register_objective` when it is
imported; the package ``ppgen.inference`` imports them in order, so :func:`make_objective` knows
every name whichever module was imported first.
"""

from __future__ import annotations

__all__ = ["AbstractObjective", "make_objective", "objective_names", "register_objective"]

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from ppgen.models.base import AbstractGenerativeModel


class AbstractObjective(nn.Module, abc.ABC):
    """Base of every objective.

    Arguments:
        model: the model this objective trains (objectives may read its config to build
            modules of their own).
        options: objective-specific keyword options; recorded in ``self.options`` so a
            checkpoint can rebuild the objective (keep them JSON-able).
    """

    name: ClassVar[str]
    #: True when :meth:`loss` and :meth:`validation_loss` take a keyword ``mask`` (bool, the
    #: batch's shape, True = observed): the trainer then fits incomplete data (a dataset with
    #: a ``mask``) with it, passing each batch's slice of the mask; other objectives are never
    #: given one, and ``ppgen.fit`` refuses incomplete data for them before any work.
    accepts_mask: ClassVar[bool] = False

    def __init__(self, model: AbstractGenerativeModel, **options: Any) -> None:
        super().__init__()
        self.options = dict(options)

    def param_groups(self, model: AbstractGenerativeModel) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups, one optimizer each. Default: all of the model's parameters
        plus the objective's own, in one group ``"model"``."""
        return {"model": [*model.parameters(), *self.parameters()]}

    def optimizer_options(self, group: str, lr: float) -> dict[str, Any]:
        """Keyword arguments of ``torch.optim.Adam`` for ``group`` (e.g. a GAN's separate
        learning rates and betas). Default: the trainer's ``lr``."""
        return {"lr": lr}

    def schedule(self, step: int) -> Sequence[str]:
        """The groups that update at ``step``, in order; each gets the step's batch."""
        return ("model",)

    @abc.abstractmethod
    def loss(
        self,
        model: AbstractGenerativeModel,
        x: Tensor,
        context: Tensor | None,
        group: str,
        step: int,
    ) -> Tensor:
        """The scalar loss to minimize for parameter group ``group`` on batch ``x``."""

    def validation_loss(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None
    ) -> Tensor | None:
        """A scalar to select the best checkpoint on (lower is better), or None when the
        objective has no meaningful validation number."""
        return None

    def diagnostics(self) -> dict[str, float]:
        """Extra numbers the trainer logs with each step (e.g. discriminator accuracy)."""
        return {}


_OBJECTIVES: dict[str, type[AbstractObjective]] = {}


def register_objective(cls: type[AbstractObjective]) -> type[AbstractObjective]:
    """Add an objective class under its ``name`` (a class decorator)."""
    _OBJECTIVES[cls.name] = cls
    return cls


def objective_names() -> list[str]:
    """Every objective name :func:`make_objective` accepts."""
    return sorted(_OBJECTIVES)


def make_objective(name: str, model: AbstractGenerativeModel, **options: Any) -> AbstractObjective:
    """Build objective ``name`` for ``model``."""
    if name not in _OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {objective_names()}")
    return _OBJECTIVES[name](model, **options)
