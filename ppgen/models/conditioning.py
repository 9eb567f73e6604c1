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

__all__ = ["DifferentiableDensity", "ExactConditional"]

import abc

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
