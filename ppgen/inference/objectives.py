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
    "Denoising",
    "Adversarial",
    "MaximumLikelihood",
    "Renyi",
    "make_objective",
    "objective_names",
    "register_objective",
]

import abc
import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pyro.poutine.messenger import Messenger
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


class Adversarial(AbstractObjective):
    r"""Adversarial training of an implicit model (a GAN's generator) against a discriminator.

    The objective builds the discriminator ``D`` with the model's
    :meth:`~ppgen.models.base.AbstractGenerativeModel.make_discriminator` hook and owns it, so it
    lands in the training checkpoint; the trainer runs two parameter groups,
    ``"discriminator"`` (``D``) and ``"generator"`` (the model), each with its own Adam.
    Real and generated points come from one trace of the model's Pyro program
    (:func:`ppgen.inference.implicit.observed_and_generated`): the value observed at ``"x"``
    (the data as the program sees it, e.g. dequantized) and the location of its Delta,
    :math:`G(z)` with :math:`z` from the prior. With ``d = D(x)`` a logit:

    - ``"ns"``: :math:`\min_D -\mathbb{E}\log\sigma(D(x)) - \mathbb{E}\log(1 - \sigma(D(G(z))))`,
      i.e. :math:`\max_D V(D, G)` with :math:`V = \mathbb{E}\log\sigma(D(x)) +
      \mathbb{E}\log(1-\sigma(D(G(z))))`; the generator minimizes the non-saturating
      :math:`-\mathbb{E}\log\sigma(D(G(z)))` (Goodfellow et al. 2014, sec. 3);
    - ``"minimax"``: the same discriminator, the generator minimizing :math:`V` itself, i.e.
      :math:`\mathbb{E}\log(1 - \sigma(D(G(z))))` (saturates early in training);
    - ``"hinge"``: :math:`\mathbb{E}[1 - D(x)]_+ + \mathbb{E}[1 + D(G(z))]_+`, generator
      :math:`-\mathbb{E} D(G(z))` (Lim & Ye 2017; Miyato et al. 2018);
    - ``"wgan-gp"``: critic :math:`\mathbb{E} D(G(z)) - \mathbb{E} D(x) + \lambda
      \mathbb{E}(\lVert\nabla D(\hat x)\rVert - 1)^2` on random interpolates
      :math:`\hat x`, generator :math:`-\mathbb{E} D(G(z))` (Gulrajani et al. 2017).

    Any loss may add the R1 penalty :math:`\frac{\gamma}{2}\mathbb{E}\lVert\nabla_x
    D(x)\rVert^2` on real data (Mescheder et al. 2018). During the generator's loss the
    discriminator's parameters are frozen, so its gradients stay those of its own step.

    Options (keywords; the model's ``fit_defaults()["objective_options"]`` fill the gaps):
        loss: ``"ns"`` (default), ``"minimax"``, ``"hinge"`` or ``"wgan-gp"``.
        r1: R1 weight :math:`\gamma` (default 0).
        gp: gradient-penalty weight :math:`\lambda` of ``wgan-gp`` (default 10).
        n_critic: discriminator updates per generator update (default 5 for ``wgan-gp``, else
            1). The trainer's ``steps`` counts discriminator updates; every batch is fresh.
        lr_generator / lr_discriminator: learning rates (default: the trainer's ``lr``).
        betas_generator / betas_discriminator: Adam betas (default ``(0.5, 0.999)``, and
            ``(0.0, 0.9)`` for ``wgan-gp``).
        collapse_threshold: the mode-collapse alarm fires when the batch coverage of the real
            points by generated ones falls below it (default 0.5; 2-D/3-D toy data only).

    References:
        Goodfellow et al. (2014), arXiv:1406.2661. Gulrajani et al. (2017), arXiv:1704.00028.
        Mescheder et al. (2018), arXiv:1801.04406. Lim & Ye (2017), arXiv:1705.02894.
        Naeem et al. (2020), coverage, arXiv:2002.09797.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("8gaussians", split="val")
        >>> gan = ppgen.build("gan", ds, latent=2, hidden=[32, 32])
        >>> obj = ppgen.inference.make_objective("adversarial", gan, loss="hinge", n_critic=2)
        >>> [obj.schedule(s) for s in range(2)]
        [('discriminator',), ('discriminator', 'generator')]
        >>> obj.loss(gan, ds.data[:64], None, "discriminator", 0).item() > 0
        True
    """

    name = "adversarial"
    LOSSES: ClassVar[tuple[str, ...]] = ("ns", "minimax", "hinge", "wgan-gp")
    _OPTIONS: ClassVar[tuple[str, ...]] = (
        "loss",
        "r1",
        "gp",
        "n_critic",
        "lr_generator",
        "lr_discriminator",
        "betas_generator",
        "betas_discriminator",
        "collapse_threshold",
    )

    def __init__(self, model: AbstractGenerativeModel, **options: Any) -> None:
        defaults = model.fit_defaults()
        if defaults.get("objective", model.default_objective) == self.name:
            options = {**defaults.get("objective_options", {}), **options}
        unknown = sorted(set(options) - set(self._OPTIONS))
        if unknown:
            raise ValueError(
                f"the adversarial objective has no option {unknown[0]!r}; known: "
                f"{list(self._OPTIONS)}"
            )
        super().__init__(model, **options)
        self.loss_name = str(options.get("loss", "ns"))
        if self.loss_name not in self.LOSSES:
            raise ValueError(f"loss must be one of {self.LOSSES}, got {self.loss_name!r}")
        self.r1 = float(options.get("r1", 0.0))
        self.gp = float(options.get("gp", 10.0))
        default_critic = 5 if self.loss_name == "wgan-gp" else 1
        self.n_critic = int(options.get("n_critic", default_critic))
        self.collapse_threshold = float(options.get("collapse_threshold", 0.5))
        if self.r1 < 0 or self.gp < 0 or self.n_critic < 1:
            raise ValueError(
                f"need r1 >= 0, gp >= 0 and n_critic >= 1; got r1={self.r1}, gp={self.gp}, "
                f"n_critic={self.n_critic}"
            )
        ref = next(model.parameters(), None)
        self.discriminator = model.make_discriminator()
        if ref is not None:
            self.discriminator.to(device=ref.device, dtype=ref.dtype)
        self._generator_params: list[nn.Parameter] = []
        self._stats: dict[str, Tensor] = {}
        self._updated: set[str] = set()

    # ---- what the trainer asks ------------------------------------------------------------------

    def param_groups(self, model: AbstractGenerativeModel) -> dict[str, list[nn.Parameter]]:
        """``"discriminator"``: the objective's network; ``"generator"``: the model."""
        self._generator_params = list(model.parameters())
        return {"discriminator": list(self.discriminator.parameters()),
                "generator": self._generator_params}

    def optimizer_options(self, group: str, lr: float) -> dict[str, Any]:
        """Separate learning rates and Adam betas per group (see the class options)."""
        betas = (0.0, 0.9) if self.loss_name == "wgan-gp" else (0.5, 0.999)
        group_lr = self.options.get(f"lr_{group}")
        group_betas = self.options.get(f"betas_{group}")
        return {
            "lr": float(group_lr) if group_lr is not None else lr,
            "betas": tuple(float(b) for b in group_betas) if group_betas is not None else betas,
        }

    def schedule(self, step: int) -> Sequence[str]:
        """The discriminator at every step; the generator after every ``n_critic``-th."""
        if (step + 1) % self.n_critic == 0:
            return ("discriminator", "generator")
        return ("discriminator",)

    def loss(
        self,
        model: AbstractGenerativeModel,
        x: Tensor,
        context: Tensor | None,
        group: str,
        step: int,
    ) -> Tensor:
        from ppgen.inference.implicit import observed_and_generated

        if group == "discriminator":
            self._updated = {"discriminator"}
            with torch.no_grad():
                real, fake = observed_and_generated(model, x, context)
            return self._discriminator_loss(real.detach(), fake.detach())
        if group == "generator":
            self._updated.add("generator")
            _, fake = observed_and_generated(model, x, context)
            with self._frozen_discriminator():
                d_fake = self.discriminator(fake)
            self._stats["g_score"] = d_fake.detach()
            if self.loss_name == "ns":
                return F.softplus(-d_fake).mean()  # -E log sigmoid(D(G(z)))
            if self.loss_name == "minimax":
                return -F.softplus(d_fake).mean()  # E log(1 - sigmoid(D(G(z))))
            return -d_fake.mean()
        raise ValueError(f"unknown parameter group {group!r}; the groups are discriminator, "
                         "generator")

    def _discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        if self.r1 > 0:
            real = real.requires_grad_(True)
        d_real = self.discriminator(real)  # (N,)
        d_fake = self.discriminator(fake)
        if self.loss_name in ("ns", "minimax"):
            loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        elif self.loss_name == "hinge":
            loss = F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
        else:
            loss = d_fake.mean() - d_real.mean() + self.gp * self._gradient_penalty(real, fake)
        if self.r1 > 0:
            (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
            loss = loss + 0.5 * self.r1 * grad.pow(2).reshape(len(grad), -1).sum(1).mean()
        self._stats.update(
            d_real=d_real.detach(), d_fake=d_fake.detach(), real=real.detach(), fake=fake
        )
        return loss

    def _gradient_penalty(self, real: Tensor, fake: Tensor) -> Tensor:
        r""":math:`\mathbb{E}(\lVert\nabla D(\hat x)\rVert - 1)^2` with
        :math:`\hat x = \epsilon x + (1-\epsilon) G(z)`, :math:`\epsilon \sim U[0,1]` per
        example (Gulrajani et al. 2017, eq. 3)."""
        shape = (real.shape[0],) + (1,) * (real.dim() - 1)
        eps = torch.rand(shape, device=real.device, dtype=real.dtype)
        mix = (eps * real.detach() + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.discriminator(mix).sum(), mix, create_graph=True)
        return (grad.reshape(len(grad), -1).norm(dim=1) - 1.0).pow(2).mean()

    @contextlib.contextmanager
    def _frozen_discriminator(self) -> Iterator[None]:
        """The discriminator's parameters do not require grad while the generator's loss is
        built, so its backward leaves the discriminator's gradients alone (and is cheaper)."""
        params = [p for p in self.discriminator.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)

    # ---- diagnostics ----------------------------------------------------------------------------

    @torch.no_grad()
    def diagnostics(self) -> dict[str, float]:
        r"""Numbers about the latest step (no random numbers are drawn):

        - ``d_accuracy_real`` / ``d_accuracy_fake``: the share of real (generated) points the
          discriminator puts on the real (generated) side of its threshold (0 for logits and
          hinge scores; the midpoint of the mean scores for a WGAN critic);
        - ``value``: the min-max value :math:`V(D, G)` (``ns``/``minimax``; its optimum
          :math:`-2\log 2` means the discriminator cannot tell the two apart), or
          ``critic_gap`` :math:`\mathbb{E} D(x) - \mathbb{E} D(G(z))` (hinge, WGAN: the
          Wasserstein-1 estimate for ``wgan-gp``);
        - ``grad_norm_discriminator`` / ``grad_norm_generator``: the norms of the gradients of
          the groups updated at that step;
        - on toy data (2 or 3 dimensions): ``coverage``, the share of real points whose
          5-nearest-real-neighbour ball holds a generated point (Naeem et al. 2020), and
          ``mode_collapse`` (1.0 when coverage < ``collapse_threshold``).
        """
        out: dict[str, float] = {}
        stats = self._stats
        if "d_real" in stats:
            d_real, d_fake = stats["d_real"], stats["d_fake"]
            threshold = (
                0.5 * float(d_real.mean() + d_fake.mean()) if self.loss_name == "wgan-gp" else 0.0
            )
            out["d_accuracy_real"] = float((d_real > threshold).double().mean())
            out["d_accuracy_fake"] = float((d_fake < threshold).double().mean())
            if self.loss_name in ("ns", "minimax"):
                value = F.logsigmoid(d_real).mean() + F.logsigmoid(-d_fake).mean()
                out["value"] = float(value)
            else:
                out["critic_gap"] = float(d_real.mean() - d_fake.mean())
            real, fake = stats["real"], stats["fake"]
            if real[0].numel() <= 3 and len(real) > 5:
                coverage = _coverage(real.reshape(len(real), -1), fake.reshape(len(fake), -1))
                out["coverage"] = coverage
                out["mode_collapse"] = float(coverage < self.collapse_threshold)
        groups = {"discriminator": list(self.discriminator.parameters()),
                  "generator": self._generator_params}
        for group in sorted(self._updated):
            grads = [p.grad for p in groups[group] if p.grad is not None]
            if grads:
                out[f"grad_norm_{group}"] = float(
                    torch.sqrt(sum(g.double().pow(2).sum() for g in grads))  # type: ignore[arg-type]
                )
        return out


def _coverage(real: Tensor, fake: Tensor, k: int = 5) -> float:
    """Share of ``real`` points whose ball to their k-th nearest real neighbour contains at
    least one ``fake`` point (Naeem et al. 2020, eq. 6)."""
    k = min(k, len(real) - 1)
    d_rr = torch.cdist(real, real)  # (N, N), zero diagonal
    radius = d_rr.kthvalue(k + 1, dim=1).values  # k-th neighbour, skipping the point itself
    nearest_fake = torch.cdist(real, fake).min(dim=1).values
    covered = nearest_fake <= radius
    return float(covered.double().mean()) if math.isfinite(float(radius.sum())) else 0.0


_OBJECTIVES: dict[str, type[AbstractObjective]] = {}


def register_objective(cls: type[AbstractObjective]) -> type[AbstractObjective]:
    """Add an objective class under its ``name`` (a class decorator)."""
    _OBJECTIVES[cls.name] = cls
    return cls


register_objective(MaximumLikelihood)
register_objective(Denoising)
register_objective(Adversarial)


def objective_names() -> list[str]:
    """Every objective name :func:`make_objective` accepts."""
    return sorted(_OBJECTIVES)


def make_objective(name: str, model: AbstractGenerativeModel, **options: Any) -> AbstractObjective:
    """Build objective ``name`` for ``model``."""
    if name not in _OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; known: {objective_names()}")
    return _OBJECTIVES[name](model, **options)


# ---- variational objectives (SVI) ---------------------------------------------------------------

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
        super().__init__(model, elbo=elbo, num_particles=num_particles, alpha=alpha, beta=beta,
                         warmup=warmup, free_bits=free_bits, **options)
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

        Pyro's JIT feeds parameters to the compiled trace by name from the global param store.
        ppgen keeps parameters in modules, so each call lends the model's parameters (the same
        tensors) to a temporary param-store scope, restored on exit: nothing leaks into the
        user's global store, and gradients land on the module's parameters.
        """
        import pyro
        from pyro import poutine
        from torch.distributions import constraints

        args = (x,) if context is None else (x, context)
        if self._jit_fns is None:
            model_fn, guide_fn = _scaled(model.model, self.beta), _scaled(model.guide, self.beta)
            with torch.no_grad(), poutine.block(), poutine.trace(param_only=True) as tr:
                guide_fn(*args)
                model_fn(*args)
            named = {
                name: (site["value"].unconstrained() if hasattr(site["value"], "unconstrained")
                       else site["value"])
                for name, site in tr.trace.nodes.items()
                if site["type"] == "param"
            }
            self._jit_fns = (model_fn, guide_fn, named)
        model_fn, guide_fn, named = self._jit_fns
        store = pyro.get_param_store()
        with store.scope():
            for name, param in named.items():
                store._params[name] = param
                store._param_to_name[param] = name
                store._constraints[name] = constraints.real
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

    def _renyi(
        self, model: AbstractGenerativeModel, x: Tensor, context: Tensor | None
    ) -> Tensor:
        """The per-example Renyi bound, ``(N,)``."""
        from ppgen.inference.likelihood import _probe, importance_log_weights

        if self._nesting is None:
            _, gt, self._nesting = _probe(model.model, model.guide, x, context)
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
