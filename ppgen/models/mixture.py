r"""Finite mixtures: the classical density estimators, inside the protocol.

.. math:: p(x) = \sum_{k=1}^{K} \pi_k \, p_k(x)

with :math:`p_k` a Gaussian (full, diagonal or spherical covariance) on continuous data and a
product of per-dimension categoricals on discrete or binary data (a latent-class model). One
component with a full covariance is the maximum-likelihood Gaussian; ``N`` equal-weight
spherical components centred on the training points are a Gaussian kernel density estimate.

A statistician's first question about a deep density is whether it beats these on the data at
hand, so they are a family like any other: their ``log_prob`` is exact and goes through the
same ``ppgen.evaluate`` path, and the trainer fits them by maximum likelihood.
:meth:`Mixture.initialize` starts from expectation-maximisation on the first batch
(scikit-learn's ``GaussianMixture`` on continuous data, a short EM of our own on discrete data),
so training starts at a local optimum;
:func:`fit_em` fits a whole data set in closed-form EM steps without the trainer, and
:func:`kernel_density` builds the kernel density estimate.

Example:
    >>> import ppgen, torch
    >>> ds = ppgen.datasets.load("moons", split="train")
    >>> m = ppgen.models.mixture.fit_em(ds, components=3)
    >>> m.log_prob(ds.data[:4]).shape
    torch.Size([4])
"""

from __future__ import annotations

__all__ = ["Mixture", "MixtureConfig", "fit_em", "kernel_density"]

import dataclasses
import math
from typing import ClassVar, Literal

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ppgen.datasets.base import Dataset
from ppgen.models.base import AbstractGenerativeModel, ConfigError, ModelConfig, pyro_program
from ppgen.models.capabilities import InitializesFromData

Covariance = Literal["full", "diag", "spherical"]

#: Added to the diagonal of every fitted covariance (scikit-learn's ``reg_covar``): a component
#: sitting on fewer distinct points than dimensions would otherwise be singular.
REG_COVAR = 1e-6
#: Pseudo-count per level added to the EM counts of discrete components, so a level a
#: component never saw keeps a finite log-probability.
PSEUDO_COUNT = 0.01


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixtureConfig(ModelConfig):
    """Configuration of :class:`Mixture`.

    Arguments:
        components: K, the number of mixture components.
        covariance: the Gaussian components' covariance on continuous data: ``"full"``,
            ``"diag"`` or ``"spherical"`` (ignored on discrete data).
        em_steps: EM iterations :meth:`Mixture.initialize` and :func:`fit_em` run.
    """

    components: int = 1
    covariance: Covariance = "full"
    em_steps: int = 100


class Mixture(AbstractGenerativeModel, InitializesFromData):
    """A finite mixture of Gaussians (continuous data) or of factorized categoricals (discrete).

    Parameters are unconstrained: mixture logits, component means and the Cholesky factor of
    each covariance with a log-parameterised diagonal (continuous); per-component, per-dimension
    level logits (discrete). Its ``model`` has one latent-free site ``"x"``: the component is
    summed out exactly, so ``log_prob`` is the exact density.
    """

    likelihood: ClassVar = "exact"
    Config: ClassVar = MixtureConfig
    default_objective: ClassVar = "mle"

    def __init__(self, config: MixtureConfig | None = None, **fields: object) -> None:
        super().__init__(config, **fields)
        cfg = self.config
        k, d = cfg.components, cfg.num_dims
        self.mix_logits = nn.Parameter(torch.zeros(k))
        if cfg.kind == "continuous":
            self.loc = nn.Parameter(torch.zeros(k, d))
            width = {"full": d, "diag": d, "spherical": 1}[cfg.covariance]
            self.log_scale = nn.Parameter(torch.zeros(k, width))
            if cfg.covariance == "full":  # the strictly lower triangle of each Cholesky factor
                self.tril = nn.Parameter(torch.zeros(k, d * (d - 1) // 2))
        else:
            assert cfg.levels is not None
            self.logits = nn.Parameter(torch.zeros(k, d, cfg.levels))

    # ---- the density --------------------------------------------------------------------------

    def scale_tril(self) -> Tensor:
        """The components' Cholesky factors, ``(K, D, D)`` (continuous data)."""
        k, d = self.loc.shape
        if self.config.covariance != "full":
            return torch.diag_embed(self.log_scale.exp().expand(k, d))
        rows, cols = torch.tril_indices(d, d, offset=-1, device=self.loc.device)
        lower = self.loc.new_zeros(k, d, d)
        lower[:, rows, cols] = self.tril
        return lower + torch.diag_embed(self.log_scale.exp())

    def _components(self) -> dist.Distribution:
        if self.config.kind == "continuous":
            if self.config.covariance == "full":
                return dist.MultivariateNormal(self.loc, scale_tril=self.scale_tril())
            scale = self.log_scale.exp().expand_as(self.loc)
            return dist.Normal(self.loc, scale).to_event(1)
        return dist.Categorical(logits=self.logits).to_event(1)

    def _flat(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        return flat if self.config.kind == "continuous" else flat.long()

    def component_log_prob(self, x: Tensor) -> Tensor:
        """log pi_k + log p_k(x_i), shape ``(N, K)``: the joint of point and component."""
        flat = self._flat(x)[:, None]  # (N, 1, D): broadcast against the K components
        return self._components().log_prob(flat) + self.mix_logits.log_softmax(-1)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        self._check_x(x)
        return self.component_log_prob(x).logsumexp(-1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """p(component k | x_i), shape ``(N, K)``."""
        return self.component_log_prob(x).softmax(-1)

    @pyro_program
    def model(self, x: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        n = 1 if x is None else x.shape[0]
        with pyro.plate("data", n):
            return pyro.sample("x", self.distribution(), obs=x)

    @torch.no_grad()
    def _sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        generator = self.sampling_generator(seed, generator)
        pi = self.mix_logits.softmax(-1)
        k = torch.multinomial(pi, n, replacement=True, generator=generator)  # (n,)
        if self.config.kind == "continuous":
            eps = torch.randn(n, self.loc.shape[1], generator=generator,
                              device=self.loc.device, dtype=self.loc.dtype)
            out = self.loc[k] + (self.scale_tril()[k] @ eps[:, :, None])[..., 0]
        else:
            probs = self.logits[k].softmax(-1)  # (n, D, L)
            out = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
            out = out.reshape(n, -1).to(self.logits.dtype)
        return out.reshape(n, *self.event_shape)

    # ---- fitting in closed form ---------------------------------------------------------------

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Start at an EM fit of ``x`` (the trainer passes its first batch): gradient training
        then starts at a local optimum of the likelihood instead of K identical components."""
        self.set_em_fit(x, seed=0)

    @torch.no_grad()
    def set_em_fit(self, x: Tensor, seed: int = 0) -> None:
        """Set the parameters to an EM fit of ``x`` (``(N, *event_shape)``)."""
        cfg = self.config
        flat = self._flat(x)
        if flat.shape[0] < cfg.components:
            raise ValueError(
                f"Mixture: {flat.shape[0]} points cannot fit {cfg.components} components; "
                "pass fewer components or more data"
            )
        if cfg.kind == "continuous":
            self._set_gaussian_em(flat, seed)
        else:
            self._set_categorical_em(flat, seed)

    def _set_gaussian_em(self, flat: Tensor, seed: int) -> None:
        from sklearn.mixture import GaussianMixture

        cfg = self.config
        gm = GaussianMixture(cfg.components, covariance_type=cfg.covariance, reg_covar=REG_COVAR,
                             max_iter=cfg.em_steps, random_state=seed)
        gm.fit(flat.detach().double().cpu().numpy())
        to = {"dtype": self.loc.dtype, "device": self.loc.device}
        self.mix_logits.copy_(torch.as_tensor(np.log(gm.weights_), **to))
        self.loc.copy_(torch.as_tensor(gm.means_, **to))
        cov = torch.as_tensor(gm.covariances_, dtype=torch.float64)
        if cfg.covariance == "full":
            chol = torch.linalg.cholesky(cov)
            d = chol.shape[-1]
            rows, cols = torch.tril_indices(d, d, offset=-1)
            self.log_scale.copy_(chol.diagonal(dim1=-2, dim2=-1).log().to(**to))
            self.tril.copy_(chol[:, rows, cols].to(**to))
        else:  # diag: (K, D) variances; spherical: (K,) variances
            var = cov if cfg.covariance == "diag" else cov[:, None]
            self.log_scale.copy_((0.5 * var.log()).to(**to))

    def _set_categorical_em(self, flat: Tensor, seed: int) -> None:
        """EM for a mixture of factorized categoricals (a latent-class model), from random
        responsibilities drawn with ``seed``; counts get :data:`PSEUDO_COUNT` per level."""
        cfg = self.config
        assert cfg.levels is not None
        onehot = nn.functional.one_hot(flat, cfg.levels).double()  # (N, D, L)
        g = torch.Generator(device=flat.device).manual_seed(seed)
        resp = torch.rand(flat.shape[0], cfg.components, generator=g, device=flat.device,
                          dtype=torch.float64).softmax(-1) if cfg.components > 1 else (
            onehot.new_ones(flat.shape[0], 1))
        for _ in range(max(1, cfg.em_steps)):
            counts = torch.einsum("nk,ndl->kdl", resp, onehot) + PSEUDO_COUNT  # M step
            log_theta = (counts / counts.sum(-1, keepdim=True)).log()
            log_pi = (resp.sum(0) + 1e-12).log() - math.log(flat.shape[0] + 1e-12 * cfg.components)
            joint = torch.einsum("ndl,kdl->nk", onehot, log_theta) + log_pi  # E step
            resp = joint.softmax(-1)
        self.mix_logits.copy_(log_pi.to(self.mix_logits))
        self.logits.copy_(log_theta.to(self.logits))

    def extra_repr(self) -> str:
        cfg = self.config
        cov = f", covariance={cfg.covariance}" if cfg.kind == "continuous" else ""
        return f"components={cfg.components}{cov}, kind={cfg.kind}"


def fit_em(data: Dataset, components: int = 1, covariance: Covariance = "full",
           em_steps: int = 100, seed: int = 0) -> Mixture:
    """A :class:`Mixture` fitted to all of ``data`` by EM (no gradient steps).

    Arguments:
        data: the training data.
        components: K.
        covariance: ``"full"``, ``"diag"`` or ``"spherical"`` (continuous data).
        em_steps: EM iterations.
        seed: the EM initialisation's seed.

    Returns:
        The fitted model (exact ``log_prob``; ``ppgen.evaluate`` scores it like any family).
    """
    m = Mixture(event_shape=tuple(data.event_shape), kind=data.kind, levels=data.levels,
                components=components, covariance=covariance, em_steps=em_steps)
    m.set_em_fit(data.data, seed=seed)
    return m


def kernel_density(data: Dataset, bandwidth: float) -> Mixture:
    """A Gaussian kernel density estimate of continuous ``data``: one spherical component of
    standard deviation ``bandwidth`` on each training point, equal weights.

    Arguments:
        data: the training points (continuous).
        bandwidth: the kernel's standard deviation, in the data's units.
    """
    if data.kind != "continuous":
        raise ValueError(
            f"kernel_density: data {data.name!r} is {data.kind}; a Gaussian kernel density "
            "estimate needs continuous data"
        )
    if not (math.isfinite(bandwidth) and bandwidth > 0):
        raise ConfigError(f"kernel_density: bandwidth must be a positive number, got {bandwidth}")
    x = data.data.reshape(len(data), -1)
    m = Mixture(event_shape=tuple(data.event_shape), kind="continuous", components=len(data),
                covariance="spherical")
    with torch.no_grad():
        m.loc.copy_(x)
        m.log_scale.fill_(math.log(bandwidth))
    return m
