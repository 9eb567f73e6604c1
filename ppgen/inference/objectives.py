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
    "ELBO",
    "AbstractObjective",
    "Adversarial",
    "Denoising",
    "JitUnsupportedError",
    "MaximumLikelihood",
    "Renyi",
    "make_objective",
    "objective_names",
    "register_objective",
]

import abc
import math
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from pyro.poutine.messenger import Messenger
from torch import Tensor, nn
from torch.distributions import biject_to, constraints, transform_to

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


# ---- variational objectives (SVI) ---------------------------------------------------------------

class JitUnsupportedError(ValueError):
    """A JIT ELBO cannot run this model (a parameter it cannot be fed, or a program
    ``torch.jit.trace`` cannot compile); the plain ELBO of the same name without ``Jit`` can."""


class _Mapped(constraints.Constraint):
    """A constraint that only carries the map from a parameter's unconstrained leaf to the value
    its program uses, so the param store reproduces that value exactly (``transform_to`` of it
    is the map; registered below for this private class only)."""

    def __init__(self, transform: Any) -> None:
        super().__init__()
        self.transform = transform

    def check(self, value: Tensor) -> Tensor:
        return torch.ones(value.shape, dtype=torch.bool, device=value.device)


@transform_to.register(_Mapped)
def _mapped_transform(constraint: _Mapped) -> Any:
    return constraint.transform


class _ParamSites(Messenger):
    """Records, for each parameter statement, its value and the constraint the param store
    held for it when it ran (a PyroModule's PyroParam) or the statement's own."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: dict[str, tuple[Tensor, Any]] = {}

    def _pyro_post_param(self, msg: dict[str, Any]) -> None:
        import pyro

        name = msg["name"]
        store = pyro.get_param_store()
        if name in store._params:
            constraint = store._constraints.get(name, constraints.real)
        else:
            constraint = msg["kwargs"].get("constraint", constraints.real)
        self.sites.setdefault(name, (msg["value"], constraint))


def _jit_setup(
    model: AbstractGenerativeModel, args: tuple[Tensor, ...], beta: float
) -> tuple[Any, Any, dict[str, tuple[Tensor, Any]]]:
    """The programs a JIT ELBO compiles and, per parameter name, the unconstrained leaf tensor
    to feed it with the map to the value the program uses. Raises :class:`JitUnsupportedError`
    for a parameter with no such leaf."""
    from pyro import poutine

    model_fn, guide_fn = _scaled(model.model, beta), _scaled(model.guide, beta)
    recorder = _ParamSites()
    with torch.no_grad(), poutine.block(), recorder:
        guide_fn(*args)
        model_fn(*args)
    named = {}
    for name, (value, constraint) in recorder.sites.items():
        ref = getattr(value, "unconstrained", None)
        leaf = ref() if callable(ref) else None
        if leaf is None and isinstance(value, nn.Parameter):
            leaf = value  # an unconstrained parameter served as it is
        if leaf is None:
            raise JitUnsupportedError(
                f"parameter {name!r} is a tensor computed from others, with no unconstrained "
                "leaf the JIT can be fed"
            )
        # the map the program applied: the constraint's transform (Pyro's param store uses
        # transform_to, a wrapped program may use biject_to); whichever reproduces the value
        for transform in (transform_to(constraint), biject_to(constraint)):
            if transform(leaf).shape == value.shape and torch.equal(transform(leaf), value):
                break
        else:
            raise JitUnsupportedError(
                f"parameter {name!r}: no map of its constraint {constraint} gives the value "
                "the program used from its unconstrained leaf"
            )
        named[name] = (leaf, transform)
    return model_fn, guide_fn, named


# Pyro ELBOs by name (the class name, or a short alias).
_PYRO_ELBOS = {
    "trace": "Trace_ELBO",
    "mean_field": "TraceMeanField_ELBO",
    "tracegraph": "TraceGraph_ELBO",
    "renyi": "RenyiELBO",
    "jit_trace": "JitTrace_ELBO",
    "jit_mean_field": "JitTraceMeanField_ELBO",
}
_ELBO_NAMES = ("model", *sorted(set(_PYRO_ELBOS.values())), *sorted(_PYRO_ELBOS))


class _ScaleLatents(Messenger):
    """Multiplies the log-density of every latent (unobserved) site by ``factor``: applied to
    both model and guide it turns the ELBO into E[log p(x|z)] - factor * KL (beta-VAE)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.factor


def _scaled(fn: Any, factor: float) -> Any:
    if factor == 1.0:
        return fn

    def scaled(*args: Any, **kwargs: Any) -> Any:
        with _ScaleLatents(factor):
            return fn(*args, **kwargs)

    return scaled


class ELBO(AbstractObjective):
    r"""Stochastic variational inference: maximize a lower bound on log p(x) per example.

    .. math:: \mathcal L_\beta(x) = \mathbb E_q[\log p(x \mid z)]
        - \beta\, \sum_g \max\big(\lambda, \mathrm{KL}_g\big)

    (beta-VAE weight :math:`\beta`, linearly warmed up from 0 over ``warmup`` steps; free bits
    :math:`\lambda` per KL group, Kingma et al. 2016, arXiv:1606.04934, applied to the batch mean
    of each group). With ``beta=1`` and no free bits it is the plain ELBO.

    ``elbo`` picks the estimator:

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
            :class:`JitUnsupportedError`), warn and use the same ELBO without the JIT instead
            of raising.

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
        elbo = _PYRO_ELBOS.get(elbo, elbo)
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
        self.elbo, self.num_particles, self.alpha = elbo, num_particles, alpha
        self.beta, self.warmup, self.free_bits = beta, warmup, free_bits
        self._pyro_elbo: Any = None
        self._nesting: int | None = None
        self._jit_fns: Any = None
        if elbo.startswith("Jit") and warmup:
            raise ValueError("a jitted ELBO compiles a fixed beta: use warmup=0 (or Trace_ELBO)")
        if elbo not in ("model", "RenyiELBO"):
            import pyro.infer

            cls = getattr(pyro.infer, elbo)
            kwargs: dict[str, Any] = {"num_particles": num_particles,
                                      "vectorize_particles": num_particles > 1}
            if elbo.startswith("Jit"):
                kwargs["ignore_jit_warnings"] = True
            self._pyro_elbo = cls(**kwargs)

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
        beta = self.beta_at(step)
        if self.elbo == "model":
            total = x.new_zeros(())
            for _ in range(self.num_particles):
                log_lik, kl = model.elbo_parts(x, context)
                if self.free_bits > 0:
                    kl_term = kl.mean(0).clamp(min=self.free_bits).sum()
                else:
                    kl_term = kl.sum(-1).mean()
                total = total - (log_lik.mean() - beta * kl_term)
            return total / self.num_particles
        if self.elbo == "RenyiELBO":
            return -self._renyi(model, x, context).mean()
        if self.elbo.startswith("Jit"):
            return self._jit_loss(model, x, context)
        fn = getattr(self._pyro_elbo, "differentiable_loss", None)
        model_fn, guide_fn = _scaled(model.model, beta), _scaled(model.guide, beta)
        if fn is not None:
            return fn(model_fn, guide_fn, x, context) / x.shape[0]
        # TraceGraph_ELBO has no differentiable_loss: its surrogate carries the gradient (its
        # ELBO value is still attached to the graph, so only its value is kept)
        elbo, surrogate = self._pyro_elbo._loss_and_surrogate_loss(
            model_fn, guide_fn, (x, context), {}
        )
        return (surrogate + (-elbo - surrogate).detach()) / x.shape[0]

    def _jit_loss(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None
    ) -> Tensor:
        """A jitted Pyro ELBO with module-local parameters.

        Pyro's JIT feeds parameters to the compiled trace by name from the global param store,
        each as an unconstrained leaf tensor that the store maps to its constrained value. ppgen
        keeps parameters in modules, so each call lends the model's parameters (the same leaf
        tensors, with the maps that give the values the programs use: a ``PyroParam``'s
        constraint, a captured ``pyro.param``'s) to a temporary param-store scope, restored on
        exit: nothing leaks into the user's global store, and gradients land on the module's
        parameters. A parameter the JIT cannot be fed (a tensor computed from others, with no
        unconstrained leaf) raises :class:`JitUnsupportedError` at the first call, naming it;
        so does a program the JIT cannot compile when the plain ELBO runs it. With
        ``jit_fallback=True`` the objective warns once and uses the plain ELBO instead.
        """
        args = (x,) if context is None else (x, context)
        if self._jit_fns is None:
            try:
                self._jit_fns = _jit_setup(model, args, self.beta)
                return self._jit_call(x, args)
            except Exception as e:
                return self._jit_failed(model, x, context, e)
        return self._jit_call(x, args)

    def _jit_call(self, x: Tensor, args: tuple[Tensor, ...]) -> Tensor:
        import pyro

        model_fn, guide_fn, named = self._jit_fns
        store = pyro.get_param_store()
        with store.scope():
            for name, (leaf, transform) in named.items():
                store._params[name] = leaf
                store._param_to_name[leaf] = name
                store._constraints[name] = _Mapped(transform)
            with warnings.catch_warnings():
                # torch 2.x deprecates the torch.jit.trace that Pyro's JIT ELBOs are built on
                warnings.filterwarnings("ignore", "`torch.jit.trace` is deprecated",
                                        DeprecationWarning)
                if self.elbo == "JitTrace_ELBO":
                    # Pyro 1.9's JitTrace_ELBO.differentiable_loss adds the surrogate's gradient
                    # to a loss that is itself still attached (twice the gradient); keep only
                    # the surrogate's gradient, as Trace_ELBO does
                    value, surrogate = self._pyro_elbo.loss_and_surrogate_loss(
                        model_fn, guide_fn, *args
                    )
                    loss = surrogate + (value - surrogate).detach()
                else:
                    jit = self._pyro_elbo
                    if getattr(jit, "_differentiable_loss", None) is not None:
                        # Pyro 1.9's JitTraceMeanField_ELBO tests a different attribute than
                        # the one it caches its compiled loss in, and so recompiles at every
                        # call; point the tested one at the cache
                        jit._loss_and_surrogate_loss = jit._differentiable_loss
                    loss = jit.differentiable_loss(model_fn, guide_fn, *args)
        return loss / x.shape[0]

    def _jit_failed(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None,
        error: Exception,
    ) -> Tensor:
        """The first jitted call failed: an error of the program itself (the plain ELBO fails
        too) propagates as it is; a JIT-only failure is a :class:`JitUnsupportedError`, or,
        with ``jit_fallback=True``, a warning and the plain ELBO from then on."""
        import pyro.infer

        self._jit_fns = None
        plain = {"JitTrace_ELBO": "Trace_ELBO",
                 "JitTraceMeanField_ELBO": "TraceMeanField_ELBO"}[self.elbo]
        fallback = getattr(pyro.infer, plain)(num_particles=self.num_particles,
                                              vectorize_particles=self.num_particles > 1)
        model_fn, guide_fn = _scaled(model.model, self.beta), _scaled(model.guide, self.beta)
        loss = fallback.differentiable_loss(model_fn, guide_fn, x, context) / x.shape[0]
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if not isinstance(error, JitUnsupportedError):
            reason = f"{type(error).__name__} while compiling: {reason}"
        if not self.jit_fallback:
            raise JitUnsupportedError(
                f"elbo={self.elbo!r} cannot run {type(model).__name__}: {reason}; use "
                f"elbo={plain!r} (the same estimator without the JIT), or pass "
                "jit_fallback=True (CLI: --objective.jit_fallback=true) to fall back to it "
                "with a warning"
            ) from error
        warnings.warn(
            f"elbo={self.elbo!r} cannot run {type(model).__name__} ({reason}); falling back "
            f"to {plain!r} as jit_fallback=True asks", RuntimeWarning, stacklevel=3,
        )
        self.elbo, self._pyro_elbo = plain, fallback
        return loss

    def _renyi(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None
    ) -> Tensor:
        """The per-example Renyi bound, ``(N,)``."""
        from ppgen.models.traces import importance_log_weights, probe

        if self._nesting is None:
            _, gt, self._nesting = probe(model.model, model.guide, x, context)
            assert gt is not None
            from pyro.poutine.util import site_is_subsample

            for name, site in gt.nodes.items():
                if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                    continue
                if not getattr(site["fn"], "has_rsample", False):
                    raise ValueError(
                        f"the Renyi bound needs reparameterized guide sites; {name!r} is not: "
                        "use elbo='TraceGraph_ELBO'"
                    )
        log_w = importance_log_weights(model.model, model.guide, x, context,
                                       self.num_particles, self._nesting)  # (K, N)
        k = math.log(self.num_particles)
        if self.alpha == 1.0:
            return log_w.mean(0)
        a = 1.0 - self.alpha
        return (torch.logsumexp(a * log_w, 0) - k) / a

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


class Renyi(ELBO):
    """The Renyi bound by objective name (``--objective renyi --objective.alpha=0`` trains the
    IWAE objective); :class:`ELBO` with ``elbo="RenyiELBO"`` and 5 particles by default."""

    name = "renyi"

    def __init__(
        self,
        model: AbstractGenerativeModel,
        num_particles: int = 5,
        alpha: float = 0.0,
        **options: Any,
    ) -> None:
        options.pop("elbo", None)
        super().__init__(model, elbo="RenyiELBO", num_particles=num_particles, alpha=alpha,
                         **options)


register_objective(ELBO)
register_objective(Renyi)


# The adversarial objective lives in its own module (re-exported here); importing it registers it.
from ppgen.inference.adversarial import Adversarial  # noqa: E402

register_objective(Adversarial)
