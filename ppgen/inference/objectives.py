"""Training objectives: one class per way of fitting a model, swappable by name.

An objective is an ``nn.Module`` (so it can own modules of its own, such as a GAN's
discriminator, and they land in the checkpoint). It tells the trainer which parameter groups
exist (one optimizer each), which groups update at a step and in what order, and the scalar
loss of each. The trainer owns everything else: batching, devices, clipping, the non-finite
guard, EMA and checkpoints. Like Pyro's ``ELBO`` -> ``ELBOModule``, but without a global
param store.
"""

from __future__ import annotations

__all__ = [
    "AbstractObjective",
    "Denoising",
    "MaximumLikelihood",
    "make_objective",
    "objective_names",
    "register_objective",
]

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
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


class Denoising(AbstractObjective):
    r"""The denoising objective of diffusion models: the model's per-example
    ``denoising_loss`` at one random time per example, averaged over the batch.

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
        >>> ds = ppgen.datasets.load("moons", split="val")
        >>> m = ppgen.build("ddpm", ds, timesteps=10, hidden=[8], variance="learned")
        >>> obj = make_objective("denoising", m, loss="hybrid", vlb_weight=1e-3)
        >>> obj.loss(m, ds.data[:16], None, "model", 0).shape
        torch.Size([])
    """

    name = "denoising"

    def __init__(self, model: AbstractGenerativeModel, **options: Any) -> None:
        if model.default_objective != "denoising":
            raise ValueError(
                f"the 'denoising' objective trains diffusion models; {type(model).__name__}'s "
                f"default objective is {model.default_objective!r}"
            )
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
        return model.denoising_loss(x, context, **self.options).mean()

    def validation_loss(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None
    ) -> Tensor:
        generator = torch.Generator(device=x.device).manual_seed(0)
        return model.denoising_loss(x, context, generator=generator, **self.options).mean()


_OBJECTIVES: dict[str, type[AbstractObjective]] = {}


def register_objective(cls: type[AbstractObjective]) -> type[AbstractObjective]:
    """Add an objective class under its ``name`` (a class decorator)."""
    _OBJECTIVES[cls.name] = cls
    return cls


register_objective(MaximumLikelihood)
register_objective(Denoising)


def objective_names() -> list[str]:
    """Every objective name :func:`make_objective` accepts."""
    return sorted(_OBJECTIVES)


def make_objective(name: str, model: AbstractGenerativeModel, **options: Any) -> AbstractObjective:
    """Build objective ``name`` for ``model``."""
    if name not in _OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {objective_names()}")
    return _OBJECTIVES[name](model, **options)
