"""Capabilities: small interfaces a family implements when it can do one more thing.

The protocol (:class:`~ppgen.models.base.AbstractGenerativeModel`) holds what every family has:
``model``, ``guide``, ``sample``, ``log_prob``, ``elbo`` and the declarations (``likelihood``,
``default_objective``, ``fit_defaults`` ...). What only some families can do is a capability
here, which a family declares by listing it among its bases, and which the shared layer
(objectives, estimators, the trainer) checks with ``isinstance`` before it relies on it:

- :class:`DenoisingModel`: a per-example denoising loss (diffusion); the ``"denoising"``
  objective needs it.
- :class:`ImplicitModel`: an ``"x"`` site that is a deterministic function of the latents (a GAN
  generator): the discriminator adversarial training builds, and the Gaussian observation scale
  under which AIS and posterior sampling score data.
- :class:`InitializesFromData`: data-dependent initialization on the first training batch.

Why ABC mixins and not ``typing.Protocol``: a runtime-checkable Protocol's ``isinstance`` only
probes that the names exist (duck typing, which the shared layer never does: a family *declares*
what it can do), it would match any class that happens to define a method of that name, and it
checks no signature. An ABC mixin is declared explicitly (``class GAN(AbstractGenerativeModel,
ImplicitModel)``), its abstract methods make a family that declares a capability without
implementing it fail at construction, and it can carry a sensible default (the implicit model's
MLP discriminator). A user's class written before capabilities existed, which defines one of
these hooks without declaring the capability, is registered with it (with a
``DeprecationWarning``) by :meth:`AbstractGenerativeModel.__init_subclass__`, so it keeps working.

Conditioning on observed coordinates (imputation) is a capability too; it lives in its own
module.

Example:
    >>> import ppgen
    >>> from ppgen.models.capabilities import DenoisingModel, ImplicitModel
    >>> ds = ppgen.datasets.load("moons", split="val")
    >>> isinstance(ppgen.build("gan", ds), ImplicitModel)
    True
    >>> isinstance(ppgen.build("maf", ds), DenoisingModel)
    False
"""

from __future__ import annotations

__all__ = [
    "CAPABILITIES",
    "DenoisingModel",
    "ImplicitModel",
    "InitializesFromData",
    "MissingCapabilityError",
    "require",
]

import abc
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ppgen.models.nets import MLP


class MissingCapabilityError(ValueError):
    """A model asked for something only a family with a given capability can do."""


class DenoisingModel(abc.ABC):
    """A model trained by a per-example denoising loss (diffusion families).

    The ``"denoising"`` objective averages :meth:`denoising_loss` over the batch.
    """

    summary: ClassVar[str] = "a model with a per-example denoising loss (diffusion)"

    @abc.abstractmethod
    def denoising_loss(
        self, x: Tensor, context: Tensor | None = None, **options: Any
    ) -> Tensor:
        """Per-example loss ``(N,)`` at one random time per example; ``options`` are the
        objective's (``loss``, ``vlb_weight``) and ``generator`` (a fixed one for the validation
        loss)."""


class ImplicitModel(abc.ABC):
    """A model whose ``"x"`` site is a deterministic (Delta) function of its latents: it has no
    density of its own (``likelihood = "none"``).

    Adversarial training builds its critic with :meth:`make_discriminator`; AIS and posterior
    sampling replace the Delta by the Gaussian observation model
    ``p(x | z) = N(g(z), s^2 I)`` with ``s`` = :attr:`observation_scale` (Wu et al. 2017,
    arXiv:1611.04273).
    """

    summary: ClassVar[str] = "an implicit model (a deterministic 'x' site, e.g. a GAN generator)"
    config: Any  # the model's config (set by the protocol's constructor)

    @property
    def observation_scale(self) -> float | None:
        """The standard deviation ``s`` of the Gaussian observation model under which data are
        scored; None when the model has none set (an estimator then needs
        ``observation_scale=`` from the caller)."""
        return None

    def make_discriminator(self) -> nn.Module:
        """A fresh discriminator (critic): a module mapping a batch ``(N, *event_shape)`` in
        the space of the ``"x"`` site to scores ``(N,)``. The ``"adversarial"`` objective builds
        and owns it (so it lands in the training checkpoint). Default: a LeakyReLU MLP
        (128, 128) on the flattened points."""
        net = MLP(self.config.num_dims, 1, (128, 128), torch.nn.LeakyReLU)
        return torch.nn.Sequential(torch.nn.Flatten(), net, torch.nn.Flatten(0))


class InitializesFromData(abc.ABC):
    """A model with a data-dependent initialization (standardization, ActNorm, an output bias
    at the data's marginal), which the trainer runs once on the first training batch and never
    again on resume."""

    summary: ClassVar[str] = "a model initialized from data"

    @abc.abstractmethod
    def initialize(self, x: Tensor) -> None:
        """Initialize from the batch ``x`` ``(N, *event_shape)``."""


#: The hook names that used to be defaults on the protocol, and the capability each belongs to.
CAPABILITIES: dict[str, type[abc.ABC]] = {
    "denoising_loss": DenoisingModel,
    "make_discriminator": ImplicitModel,
    "observation_scale": ImplicitModel,
    "initialize": InitializesFromData,
}


def require(model: object, capability: type, purpose: str) -> None:
    """Raise :class:`MissingCapabilityError` naming ``capability`` and ``purpose`` when
    ``model`` does not implement it, e.g. ``require(m, DenoisingModel, "the 'denoising'
    objective")``."""
    if isinstance(model, capability):
        return
    summary = getattr(capability, "summary", capability.__name__)
    hint = ""
    default = getattr(model, "default_objective", None)
    if isinstance(default, str):
        hint = f"; fit it with its default objective {default!r}"
    raise MissingCapabilityError(
        f"{purpose} needs a {capability.__name__} ({summary}); {type(model).__name__} does "
        f"not declare that capability (ppgen.models.capabilities){hint}"
    )
