"""Training objectives: one class per way of fitting a model, swappable by name.

An objective is an ``nn.Module`` (so it can own modules of its own, such as a GAN's
discriminator, and they land in the checkpoint). It tells the trainer which parameter groups
exist (one optimizer each), which groups update at a step and in what order, and the scalar
loss of each. The trainer owns everything else: batching, devices, clipping, the non-finite
guard, EMA and checkpoints. Like Pyro's ``ELBO`` -> ``ELBOModule``, but without a global
param store.

One module per objective, each registering itself with :func:`register_objective` (the protocol
and the registry are :mod:`~ppgen.inference.objectives.base`): ``"mle"``
(:mod:`~ppgen.inference.objectives.mle`), ``"denoising"``
(:mod:`~ppgen.inference.objectives.denoising`), ``"elbo"`` with one estimator class per
variant (:mod:`~ppgen.inference.objectives.elbo`, ``trace_elbo``, ``jit_elbo``, ``renyi``; the
Pyro internals they rely on in :mod:`~ppgen.inference.objectives.pyro_compat`), ``"renyi"``;
``"miwae"`` (:mod:`~ppgen.inference.objectives.miwae`: incomplete data, the observed cells
only); ``"adversarial"`` lives in :mod:`ppgen.inference.adversarial` (importable from here
too). This package imports them in order, so :func:`make_objective` knows every name.
"""

from __future__ import annotations

__all__ = [
    "ELBO",
    "AbstractObjective",
    "Adversarial",
    "Denoising",
    "JitUnsupportedError",
    "MIWAE",
    "MaximumLikelihood",
    "Renyi",
    "make_objective",
    "objective_names",
    "register_objective",
]

import importlib
from typing import TYPE_CHECKING, Any

from ppgen.inference.objectives.base import (
    AbstractObjective,
    make_objective,
    objective_names,
    register_objective,
)
from ppgen.inference.objectives.denoising import Denoising
from ppgen.inference.objectives.elbo import ELBO
from ppgen.inference.objectives.jit_elbo import JitUnsupportedError
from ppgen.inference.objectives.miwae import MIWAE
from ppgen.inference.objectives.mle import MaximumLikelihood
from ppgen.inference.objectives.renyi import Renyi
from ppgen.inference.objectives.trace_elbo import TraceELBO  # noqa: F401 - registers

if TYPE_CHECKING:  # resolved at run time by __getattr__ (it imports this package)
    from ppgen.inference.adversarial import Adversarial


def __getattr__(name: str) -> Any:
    if name == "Adversarial":  # registered by ppgen.inference, which imports it after us
        return importlib.import_module("ppgen.inference.adversarial").Adversarial
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
