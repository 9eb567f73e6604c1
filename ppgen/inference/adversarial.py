r"""Adversarial training of implicit models (GANs): the discriminator's and the generator's
losses (non-saturating, minimax, hinge, WGAN-GP), the R1 penalty, and the diagnostics the
trainer logs (discriminator accuracies, the min-max value or critic gap, gradient norms, and on
toy data batch coverage with a mode-collapse alarm).
"""

from __future__ import annotations

__all__ = ["Adversarial"]

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppgen.inference.objectives.base import AbstractObjective, register_objective
from ppgen.models.base import AbstractGenerativeModel
from ppgen.models.capabilities import ImplicitModel, require


@register_objective
class Adversarial(AbstractObjective):
    r"""Adversarial training of an implicit model (a GAN's generator) against a discriminator.

    The model must be an :class:`~ppgen.models.capabilities.ImplicitModel`. The objective builds
    the discriminator ``D`` with its
    :meth:`~ppgen.models.capabilities.ImplicitModel.make_discriminator` and owns it, so it
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
        require(model, ImplicitModel, "the 'adversarial' objective")
        assert isinstance(model, ImplicitModel)
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
