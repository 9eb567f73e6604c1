r"""Conditioning a fitted model on observed coordinates: imputation, inpainting, and the
conditional density of the missing part.

:func:`impute` is the one entry point (:mod:`~ppgen.inference.conditioning.api`); each method
is a module that registers itself with :func:`register_imputer` when imported here:

- :mod:`~ppgen.inference.conditioning.exact`: ``"exact-ancestral"`` (an autoregressive model's
  exact conditional) and ``"gibbs"`` (Gibbs over discrete levels with the exact joint);
- :mod:`~ppgen.inference.conditioning.mcmc`: ``"nuts"`` over the missing coordinates of a
  model with a differentiable exact density (flows, FFJORD);
- :mod:`~ppgen.inference.conditioning.latent`: ``"importance-resampling"`` (encoder
  proposals, MIWAE-style) and ``"latent-nuts"`` (NUTS over z given the observed cells, then
  decode) for latent-variable models (VAE, GAN);
- :mod:`~ppgen.inference.conditioning.repaint`: ``"repaint"`` (RePaint) for diffusion models;
- :mod:`~ppgen.inference.conditioning.density`: ``conditional_log_prob``, the conditional
  log-density of the missing part (``ppgen.evaluate(..., mask=)``).

A family says which methods apply to it in ``conditioning_methods`` (most preferred first) and
implements the interfaces of :mod:`ppgen.models.conditioning` they need.
"""

from __future__ import annotations

__all__ = [
    "IMPUTERS",
    "Imputation",
    "MethodResult",
    "impute",
    "register_imputer",
]

# isort: off
from ppgen.inference.conditioning.api import (
    IMPUTERS,
    Imputation,
    MethodResult,
    impute,
    register_imputer,
)
from ppgen.inference.conditioning import exact, mcmc  # noqa: F401 - register their methods
from ppgen.inference.conditioning import latent, repaint  # noqa: F401 - register theirs
# isort: on
