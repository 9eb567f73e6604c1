r"""The variational objective ``"elbo"``: one name, one class per estimator of the bound.

:class:`ELBO` is the objective the trainer sees (options, beta warm-up, the validation loss);
the estimator it runs is an :class:`ELBOVariant` picked by the ``elbo`` option, one class each,
as Pyro keeps ``Trace_ELBO``, ``TraceGraph_ELBO`` and ``RenyiELBO`` apart: :class:`ModelELBO`
here (the model's own ``elbo_parts``), the Pyro trace ELBOs in
:mod:`~ppgen.inference.objectives.trace_elbo`, their JIT versions in
:mod:`~ppgen.inference.objectives.jit_elbo`, the per-example Renyi bound in
:mod:`~ppgen.inference.objectives.renyi`. Each variant registers itself with
:func:`register_elbo` when its module is imported (the package imports them in order).
"""

from __future__ import annotations

__all__ = [
    "ELBO",
    "ELBOSettings",
    "ELBOVariant",
    "ELBO_VARIANTS",
    "ModelELBO",
    "make_pyro_elbo",
    "register_elbo",
    "scale_latents",
]

import abc
import dataclasses
from typing import Any, ClassVar

import torch
from pyro.poutine.messenger import Messenger
from torch import Tensor

from ppgen.inference.objectives.base import AbstractObjective, register_objective
from ppgen.models.base import AbstractGenerativeModel

# Pyro ELBOs by name (the class name, or a short alias).
_ALIASES = {
    "trace": "Trace_ELBO",
    "mean_field": "TraceMeanField_ELBO",
    "tracegraph": "TraceGraph_ELBO",
    "renyi": "RenyiELBO",
    "jit_trace": "JitTrace_ELBO",
    "jit_mean_field": "JitTraceMeanField_ELBO",
}
_ELBO_NAMES = ("model", *sorted(set(_ALIASES.values())), *sorted(_ALIASES))


@dataclasses.dataclass(frozen=True)
class ELBOSettings:
    """The :class:`ELBO` objective's options that its estimator reads (see :class:`ELBO`)."""

    num_particles: int = 1
    alpha: float = 0.0
    beta: float = 1.0
    free_bits: float = 0.0
    jit_fallback: bool = False


class ELBOVariant(abc.ABC):
    """One estimator of the negative ELBO, in nats per example, for the :class:`ELBO`
    objective. Not a module: it owns no parameters (the model's are trained).

    Arguments:
        settings: the objective's options.
    """

    name: ClassVar[str]  # the ``elbo`` option that selects it (Pyro's class name)

    def __init__(self, settings: ELBOSettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    def loss(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None, beta: float
    ) -> Tensor:
        """The scalar loss on batch ``x`` with KL weight ``beta``."""


ELBO_VARIANTS: dict[str, type[ELBOVariant]] = {}


def register_elbo(cls: type[ELBOVariant]) -> type[ELBOVariant]:
    """Add an ELBO estimator under its ``name`` (a class decorator)."""
    ELBO_VARIANTS[cls.name] = cls
    return cls


class _ScaleLatents(Messenger):
    """Multiplies the log-density of every latent (unobserved) site by ``factor``: applied to
    both model and guide it turns the ELBO into E[log p(x|z)] - factor * KL (beta-VAE)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.factor


def scale_latents(fn: Any, factor: float) -> Any:
    """The Pyro program ``fn`` with every latent site's log-density scaled by ``factor`` (``fn``
    itself when the factor is 1)."""
    if factor == 1.0:
        return fn

    def scaled(*args: Any, **kwargs: Any) -> Any:
        with _ScaleLatents(factor):
            return fn(*args, **kwargs)

    return scaled


def make_pyro_elbo(name: str, num_particles: int) -> Any:
    """Pyro's ELBO class ``name`` with ``num_particles`` particles, vectorized when several."""
    import pyro.infer

    kwargs: dict[str, Any] = {"num_particles": num_particles,
                              "vectorize_particles": num_particles > 1}
    if name.startswith("Jit"):
        kwargs["ignore_jit_warnings"] = True
    return getattr(pyro.infer, name)(**kwargs)


@register_elbo
class ModelELBO(ELBOVariant):
    """The model's own :meth:`~ppgen.models.base.AbstractGenerativeModel.elbo_parts`: a
    closed-form KL without Pyro traces for the VAE (the cheap path), one pair of traces for any
    other bound model; the only variant with free bits."""

    name = "model"

    def loss(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None, beta: float
    ) -> Tensor:
        num_particles, free_bits = self.settings.num_particles, self.settings.free_bits
        total = x.new_zeros(())
        for _ in range(num_particles):
            log_lik, kl = model.elbo_parts(x, context)
            if free_bits > 0:
                kl_term = kl.mean(0).clamp(min=free_bits).sum()
            else:
                kl_term = kl.sum(-1).mean()
            total = total - (log_lik.mean() - beta * kl_term)
        return total / num_particles


@register_objective
class ELBO(AbstractObjective):
    r"""Stochastic variational inference: maximize a lower bound on log p(x) per example.

    .. math:: \mathcal L_\beta(x) = \mathbb E_q[\log p(x \mid z)]
        - \beta\, \sum_g \max\big(\lambda, \mathrm{KL}_g\big)

    (beta-VAE weight :math:`\beta`, linearly warmed up from 0 over ``warmup`` steps; free bits
    :math:`\lambda` per KL group, Kingma et al. 2016, arXiv:1606.04934, applied to the batch mean
    of each group). With ``beta=1`` and no free bits it is the plain ELBO.

    ``elbo`` picks the estimator (an :class:`ELBOVariant`):

    - ``"model"`` (default): the model's own :meth:`~ppgen.models.base.AbstractGenerativeModel.
      elbo_parts` hook: a closed-form KL without Pyro traces for the VAE (the cheap path), one
      pair of traces for any other bound model;
    - a Pyro ELBO by name, through ``differentiable_loss`` and plain torch optimizers:
      ``Trace_ELBO``, ``TraceMeanField_ELBO`` (analytic KL where Pyro knows it),
      ``TraceGraph_ELBO`` (Rao-Blackwellized score-function terms for discrete latents),
      ``JitTrace_ELBO``, ``JitTraceMeanField_ELBO`` (or their aliases ``trace``, ``mean_field``,
      ``tracegraph``, ``jit_trace``, ``jit_mean_field``); beta and warm-up scale the latent sites;
    - ``"RenyiELBO"`` (``"renyi"``): the Renyi bound of Li & Turner (2016, arXiv:1602.02311)
      :math:`\frac{1}{1-\alpha} \log \frac1K \sum_k w_k^{1-\alpha}` **per example** over
      ``num_particles`` vectorized particles; ``alpha=0`` is the IWAE objective of Burda et al.
      (2016). (Pyro's ``RenyiELBO`` pools the weights of the whole batch before the log-mean-exp,
      a bound on log p of the batch, and has no ``differentiable_loss``; this one is per example.)

    All estimators have the same gradient in expectation for ``beta=1`` (the tests check it).
    Losses are in nats per example.

    Arguments:
        model: a model with ``likelihood = "bound"``.
        elbo: the estimator, as above.
        num_particles: samples per example (averaged; vectorized for Pyro and Renyi ELBOs).
        alpha: the Renyi order (``elbo="RenyiELBO"`` only).
        beta: the KL weight.
        warmup: warm-up steps (0: none).
        free_bits: the free-bits floor in nats per KL group (``elbo="model"`` only).
        jit_fallback: for the JIT ELBOs: when the JIT cannot run the model (see
            :class:`~ppgen.inference.objectives.JitUnsupportedError`), warn and use the same
            ELBO without the JIT instead of raising.

    References:
        Kingma & Welling, arXiv:1312.6114; Higgins et al., beta-VAE (ICLR 2017); Sonderby et
        al., arXiv:1602.02282 (warm-up); Kingma et al., arXiv:1606.04934 (free bits); Li &
        Turner, arXiv:1602.02311; Burda et al., arXiv:1509.00519.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("digits", "val")
        >>> m = ppgen.build("vae", ds, latent=2, hidden=[8])
        >>> obj = ppgen.inference.make_objective("elbo", m, elbo="Trace_ELBO", beta=0.5)
        >>> obj.loss(m, ds.data[:10], None, "model", step=0).shape
        torch.Size([])
    """

    name = "elbo"

    def __init__(
        self,
        model: AbstractGenerativeModel,
        elbo: str = "model",
        num_particles: int = 1,
        alpha: float = 0.0,
        beta: float = 1.0,
        warmup: int = 0,
        free_bits: float = 0.0,
        jit_fallback: bool = False,
        **options: Any,
    ) -> None:
        if model.likelihood != "bound":
            raise ValueError(
                f"the '{self.name}' objective needs a model with a guide (likelihood='bound'); "
                f"{type(model).__name__} declares likelihood={model.likelihood!r} (its default "
                f"objective is {model.default_objective!r})"
            )
        if elbo not in _ELBO_NAMES:
            raise ValueError(f"unknown ELBO {elbo!r}; known: {list(_ELBO_NAMES)}")
        elbo = _ALIASES.get(elbo, elbo)
        if num_particles < 1 or beta < 0 or warmup < 0 or free_bits < 0:
            raise ValueError(
                "num_particles must be positive; beta, warmup and free_bits non-negative"
            )
        if free_bits > 0 and elbo != "model":
            raise ValueError(
                "free bits need the per-group KL terms of the model's elbo_parts; use "
                "elbo='model'"
            )
        if elbo == "RenyiELBO" and (beta != 1.0 or warmup):
            raise ValueError("the Renyi bound has no KL term to weight: use beta=1, warmup=0")
        if alpha != 0.0 and elbo != "RenyiELBO":
            raise ValueError("alpha is the order of the Renyi bound: pass elbo='RenyiELBO'")
        if not isinstance(jit_fallback, bool):
            raise ValueError(f"jit_fallback must be true or false, got {jit_fallback!r}")
        if jit_fallback and not elbo.startswith("Jit"):
            raise ValueError("jit_fallback applies to the JIT ELBOs (JitTrace_ELBO, "
                             f"JitTraceMeanField_ELBO), not to elbo={elbo!r}")
        super().__init__(model, elbo=elbo, num_particles=num_particles, alpha=alpha, beta=beta,
                         warmup=warmup, free_bits=free_bits, jit_fallback=jit_fallback,
                         **options)
        self.jit_fallback = jit_fallback
        self.num_particles, self.alpha = num_particles, alpha
        self.beta, self.warmup, self.free_bits = beta, warmup, free_bits
        if elbo.startswith("Jit") and warmup:
            raise ValueError("a jitted ELBO compiles a fixed beta: use warmup=0 (or Trace_ELBO)")
        settings = ELBOSettings(num_particles, alpha, beta, free_bits, jit_fallback)
        self.estimator: ELBOVariant = ELBO_VARIANTS[elbo](settings)

    @property
    def elbo(self) -> str:
        """The estimator in use (its Pyro name; a JIT ELBO that fell back names the plain one)."""
        return self.estimator.name

    def beta_at(self, step: int) -> float:
        """The KL weight at ``step`` (linear warm-up from 0 to ``beta``)."""
        if self.warmup and step < self.warmup:
            return self.beta * step / self.warmup
        return self.beta

    def loss(
        self,
        model: AbstractGenerativeModel,
        x: Tensor,
        context: Tensor | None,
        group: str,
        step: int,
    ) -> Tensor:
        return self.estimator.loss(model, x, context, self.beta_at(step))

    def validation_loss(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None
    ) -> Tensor:
        """The plain negative ELBO (beta = 1, no free bits), nats per example.

        Drawn with its own fixed random numbers (common to every validation), so it neither
        consumes the training RNG (a validation at the last step of a partial run would
        otherwise change the resumed run) nor adds draw-to-draw noise to the choice of the best
        checkpoint.
        """
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            return -model.elbo(x, context).mean()
