r"""Capabilities for conditioning a model on observed coordinates (imputation, inpainting).

The shared layer (:mod:`ppgen.inference.conditioning`) never names a family. A family says what
it supports in two ways, both read, never probed:

1. the class attribute ``conditioning_methods`` of
   :class:`~ppgen.models.base.AbstractGenerativeModel`: the names of the registered imputation
   methods that apply to it, in order of preference (``method="auto"`` takes the first one that
   accepts the mask), e.g. ``("exact-ancestral", "gibbs")`` for an autoregressive model,
   ``("nuts",)`` for a flow;
2. the interfaces below, which a family implements (as a second base class) when a method
   needs more than the protocol gives:

- :class:`ExactConditional`: the model can sample and score :math:`p(x_m \mid x_o)` exactly for
  some masks (an autoregressive model whose ordering puts the observed coordinates first);
- :class:`DifferentiableDensity`: the model's exact joint density of a point in continuous data
  units, differentiable in the point, so gradient-based MCMC (NUTS) can move the missing
  coordinates; for discrete data it is the dequantized density.

Masks are bool tensors, ``True`` = observed (:mod:`ppgen.masks`). The methods here take one
mask of ``event_shape`` for a whole batch: the shared layer groups rows by mask.
"""

from __future__ import annotations

__all__ = [
    "AmortizedProposal",
    "DifferentiableDensity",
    "ExactConditional",
    "LatentObservationModel",
    "ReverseDiffusion",
]

import abc

import pyro.distributions as dist
import torch
from torch import Tensor


class ExactConditional(abc.ABC):
    r"""A model that can draw from and score its exact conditional :math:`p(x_m \mid x_o)`.

    Implemented by the autoregressive families: when the observed coordinates come first in an
    ordering of the model, :math:`p(x_m \mid x_o) = \prod_{i > |o|} p(x_{o_i} \mid x_{o_{<i}})`
    is a product of the model's own conditionals, so ancestral sampling from position
    :math:`|o| + 1` on is exact, and so is the log-density.
    """

    @abc.abstractmethod
    def exact_conditional_reason(self, observed: Tensor) -> str | None:
        """None when the exact conditional is available for ``observed`` (a bool tensor of
        ``event_shape``); else a one-line reason it is not (e.g. no ordering of the model puts
        the observed coordinates first), which the shared layer reports."""

    @abc.abstractmethod
    def sample_conditional(
        self, x: Tensor, observed: Tensor, num_samples: int, generator: torch.Generator,
        context: Tensor | None = None,
    ) -> Tensor:
        """Draw ``num_samples`` completions of each row of ``x`` from :math:`p(x_m \\mid x_o)`.

        Arguments:
            x: ``(N, *event_shape)`` data; the entries where ``observed`` is False are ignored.
            observed: bool ``event_shape``; :meth:`exact_conditional_reason` returned None.
            num_samples: S.
            generator: the source of every random number.
            context: labels ``(N,)`` of a class-conditional model, else None.

        Returns:
            ``(S, N, *event_shape)``, equal to ``x`` on the observed entries.
        """

    @abc.abstractmethod
    def log_prob_conditional(
        self, x: Tensor, observed: Tensor, context: Tensor | None = None
    ) -> Tensor:
        r""":math:`\log p(x_m \mid x_o)` in nats, shape ``(N,)``, exact."""

    def exact_conditional_note(self, observed: Tensor) -> str | None:
        """Which model's conditional the exact path computes, when that needs saying (e.g. a
        sub-mixture of an ensemble); None when it is simply the model's."""
        return None


class DifferentiableDensity(abc.ABC):
    """A model whose exact joint density is a differentiable function of a continuous point."""

    @abc.abstractmethod
    def continuous_log_prob(self, v: Tensor, context: Tensor | None = None) -> Tensor:
        r"""Log-density ``(N,)`` in nats of points ``v`` of shape ``(N, *event_shape)`` in
        continuous data units, differentiable in ``v``.

        For continuous data it is ``log_prob``. For discrete data with ``L`` levels it is the
        dequantized density :math:`q(v)` on :math:`[0, L)^D` (no noise drawn), whose integral
        over the unit cell :math:`x + [0, 1)^D` is the model's probability of the discrete
        point :math:`x`; ``floor(v)`` maps a draw back to the levels.
        """


# ---- latent-variable and diffusion families (VAE, GAN, DDPM) --------------------------------


class LatentObservationModel(abc.ABC):
    r"""A model :math:`z \sim p(z)`, :math:`x \mid z \sim p(x \mid z)` whose likelihood
    factorizes over the cells of x, so :math:`p(x_o \mid z)` (the observed cells only) is
    tractable and differentiable in z: the posterior :math:`p(z \mid x_o)` can be sampled
    (``"latent-nuts"``, ``"importance-resampling"``) and the missing cells drawn from
    :math:`p(x_m \mid z)`, which is :math:`p(x_m \mid x_o)` after integrating z out.

    The VAE implements it with its decoder; the GAN with the Gaussian observation model
    :math:`\mathcal N(G(z), s^2 I)` of Wu et al. (2017) on the observed cells, so its answer
    is that of the Gaussian-observation model, not of the implicit Delta model.
    """

    @abc.abstractmethod
    def latent_prior(self) -> dist.TorchDistribution:
        """p(z), event shape ``(latent,)``, batch shape ``()``."""

    @abc.abstractmethod
    def observed_log_likelihood(
        self, z: Tensor, x: Tensor, observed: Tensor, context: Tensor | None = None
    ) -> Tensor:
        r""":math:`\log p(x_o \mid z)` in nats, shape ``z.shape[:-1]``, differentiable in z.

        Shapes:
            ``z``: ``(..., N, latent)``; ``x``: ``(N, *event_shape)`` (missing cells are never
            read); ``observed``: bool, broadcasting to ``x``.
        """

    @abc.abstractmethod
    def sample_given_latent(
        self, z: Tensor, generator: torch.Generator | None, context: Tensor | None = None
    ) -> Tensor:
        """A draw of x from p(x | z) in data units, ``(..., N, *event_shape)``."""

    def latent_conditioning_reason(self) -> str | None:
        """None when :meth:`observed_log_likelihood` applies to this model; else a one-line
        reason (e.g. a decoder whose cells are not conditionally independent given z)."""
        return None


class AmortizedProposal(abc.ABC):
    r"""A :class:`LatentObservationModel` with an encoder that reads the observed cells only:
    :math:`q(z \mid x_o)`, the proposal of importance resampling (MIWAE, Mattei & Frellsen
    2019)."""

    @abc.abstractmethod
    def latent_proposal(
        self, x: Tensor, observed: Tensor, context: Tensor | None = None
    ) -> dist.TorchDistribution:
        """q(z | x_o), batch shape ``(N,)``, event shape ``(latent,)``, reparameterized
        (``rsample``) and scoring its own draws (``log_prob``)."""


class ReverseDiffusion(abc.ABC):
    r"""A diffusion model's chain, opened up for RePaint (Lugmayr et al. 2022): the data in the
    chain's space, the forward process :math:`q(y_t \mid y_s)` and one reverse step
    :math:`p_\theta(y_{t-1} \mid y_t)`."""

    @property
    @abc.abstractmethod
    def diffusion_timesteps(self) -> int:
        """T, the number of steps of the chain."""

    @abc.abstractmethod
    def to_chain(self, x: Tensor) -> Tensor:
        """Data units -> the chain's space :math:`y_0`."""

    @abc.abstractmethod
    def from_chain(self, y: Tensor) -> Tensor:
        """The chain's space -> data units (quantized to the levels for discrete data)."""

    @abc.abstractmethod
    def forward_noise(
        self, y: Tensor, s: int, t: int, generator: torch.Generator | None
    ) -> Tensor:
        r"""A draw of :math:`y_t \sim q(y_t \mid y_s)` for ``0 <= s < t <= T``:
        :math:`\sqrt{\bar\alpha_t / \bar\alpha_s}\, y_s + \sqrt{1 - \bar\alpha_t /
        \bar\alpha_s}\, \epsilon`."""

    @abc.abstractmethod
    def reverse_step(self, y: Tensor, t: int, generator: torch.Generator | None) -> Tensor:
        r"""A draw of :math:`y_{t-1} \sim p_\theta(y_{t-1} \mid y_t)`, ``1 <= t <= T`` (at
        t = 1 the model's last step to the data, still in the chain's space)."""
