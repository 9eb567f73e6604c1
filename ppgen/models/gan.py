r"""Generative adversarial networks: an implicit sampler written as a Pyro program.

.. math::
    z \sim \mathcal{N}(0, I_k), \qquad x = G(z).

The generator pushes a standard normal through a network; the model has no tractable density,
so the family declares ``likelihood = "none"`` and never reports an exact one. Its Pyro program
draws ``z`` at site ``"z"`` and puts ``x = G(z)`` at site ``"x"`` as a ``Delta`` site, so
``Predictive``, ``poutine.condition`` on ``z`` (which gives ``G(z)``) and ``poutine.trace`` work
as on every other family.

Training is adversarial (``ppgen.inference.adversarial.Adversarial``): the discriminator is
*not* part of this module; the objective owns it (built through :meth:`GAN.make_discriminator`),
so it lands in the training checkpoint next to the generator and both optimizers.

Scoring follows Wu et al. (2017): the likelihood estimators and latent inversion replace the
Delta at ``"x"`` by the Gaussian observation model :math:`p(x \mid z) = \mathcal{N}(G(z),
s^2 I)` with ``s`` = :attr:`GAN.observation_scale` (choose it on validation data with
``select_observation_scale``), and anneal/sample over the latent sites.

**Discrete data** (digits: 17 levels; binary: 2). The generator works in *level units*:
:math:`G(z) \in (0, L)^D` via ``L * sigmoid``, the space of uniformly dequantized data. When
``x`` (integers ``v``) is observed, the program draws the dequantization noise as a latent site
``"u" ~ U[0, 1)^D`` and observes ``v + u`` at ``"x"``. An estimator that integrates over all
latent sites (AIS over ``z`` *and* ``u``) then estimates

.. math::
    P(v) = \int p(z) \int_{[0,1)^D} \mathcal{N}(v + u;\, G(z), s^2 I)\, du\, dz,

the probability of the data **as given** under the quantized Gaussian observation model: bins
of volume one, so no Jacobian is missing, and bits/dim are comparable with every other family.
The mass the Gaussian puts outside ``[0, L)`` is lost, so this model is slightly sub-normalized:
its log-likelihood estimate is conservative, never inflated. ``sample`` returns data units:
``floor(G(z))`` clipped to the levels (the sampler has no observation noise; ``s`` exists only
to score).
"""

from __future__ import annotations

__all__ = ["GAN", "GANConfig"]

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from ppgen.models.base import AbstractGenerativeModel, ModelConfig, pyro_program
from ppgen.models.capabilities import ImplicitModel, InitializesFromData
from ppgen.models.conditioning import LatentObservationModel
from ppgen.models.flows import build_maf

GANLoss = Literal["ns", "minimax", "hinge", "wgan-gp"]
_LOSSES = ("ns", "minimax", "hinge", "wgan-gp")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GANConfig(ModelConfig):
    """Configuration of :class:`GAN`.

    Arguments:
        latent: dimension ``k`` of the code ``z ~ N(0, I_k)``.
        hidden: hidden widths of the MLP pair, or the channel widths of the DCGAN pair (one
            stride-2 stage each, coarsest first: ``(128, 64)`` on 8x8 images goes
            2x2x128 -> 4x4x64 -> 8x8xC in the generator and back in the discriminator).
        objective: the adversarial loss the trainer uses by default: ``"ns"`` (non-saturating,
            Goodfellow et al. 2014), ``"minimax"`` (the saturating min-max game itself),
            ``"hinge"`` or ``"wgan-gp"`` (Gulrajani et al. 2017).
        architecture: ``"mlp"``, ``"dcgan"`` (images ``(C, H, W)``) or ``"auto"`` (DCGAN for
            3-D event shapes, MLP otherwise).
        spectral_norm: spectral normalization of every discriminator layer (Miyato et al. 2018).
        prior: the latent prior: ``"normal"`` (N(0, I_k)) or ``"flow"``, a learned MAF prior
            over z (``transforms`` masked affine steps, trained adversarially with the
            generator through its reparameterized draws; AIS and NUTS then use its density).
        transforms: steps of the flow prior.
        r1: weight ``gamma`` of the R1 penalty ``gamma/2 E||grad D(x_real)||^2`` the trainer uses
            by default (Mescheder et al. 2018); 0 turns it off; None (default) is 0.1 for
            ``ns``/``minimax``/``hinge`` and 0 for ``wgan-gp``, whose gradient penalty plays
            that role.
    """

    latent: int = 8
    hidden: tuple[int, ...] = (128, 128)
    objective: GANLoss = "ns"
    architecture: Literal["auto", "mlp", "dcgan"] = "auto"
    spectral_norm: bool = False
    prior: Literal["normal", "flow"] = "normal"
    transforms: int = 2
    r1: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.latent < 1:
            raise ValueError(f"latent must be a positive dimension, got {self.latent}")
        if any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be positive, got {self.hidden}")
        if self.objective not in _LOSSES:
            raise ValueError(f"objective must be one of {_LOSSES}, got {self.objective!r}")
        if self.architecture not in ("auto", "mlp", "dcgan"):
            raise ValueError(
                f"architecture must be auto, mlp or dcgan, got {self.architecture!r}"
            )
        if self.prior not in ("normal", "flow"):
            raise ValueError(f"prior must be 'normal' or 'flow', got {self.prior!r}")
        if self.prior == "flow" and self.transforms < 1:
            raise ValueError(f"a flow prior needs transforms >= 1, got {self.transforms}")
        if self.r1 is not None and self.r1 < 0:
            raise ValueError(f"r1 must be >= 0, got {self.r1}")
        if self.resolved_architecture == "dcgan":
            if len(self.event_shape) != 3:
                raise ValueError(
                    f"architecture='dcgan' needs image data (C, H, W), got event_shape "
                    f"{self.event_shape}; use architecture='mlp'"
                )
            if not self.hidden:
                raise ValueError("architecture='dcgan' needs at least one width in hidden")
            factor = 2 ** len(self.hidden)
            if any(s % factor for s in self.event_shape[1:]):
                raise ValueError(
                    f"the DCGAN pair halves the image {len(self.hidden)} times (one per hidden "
                    f"width), so H and W must be divisible by {factor}; got "
                    f"{self.event_shape[1:]}: use fewer hidden widths or architecture='mlp'"
                )

    @property
    def resolved_architecture(self) -> Literal["mlp", "dcgan"]:
        """``"dcgan"`` or ``"mlp"``, with ``"auto"`` resolved by the event shape."""
        if self.architecture == "auto":
            return "dcgan" if len(self.event_shape) == 3 and len(self.hidden) >= 1 else "mlp"
        return self.architecture


def _flat_apply(net: nn.Module, z: Tensor, out_shape: Sequence[int]) -> Tensor:
    """Apply ``net`` to ``z (..., k)`` with any leading (particle, data) dims flattened."""
    lead = z.shape[:-1]
    out = net(z.reshape(-1, z.shape[-1]))  # (prod(lead), ...)
    return out.reshape(*lead, *out_shape)


class _MLPGenerator(nn.Module):
    """``z (B, k) -> (B, D)``: Linear/ReLU stack."""

    def __init__(self, latent: int, out_features: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = latent
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class _DCGANGenerator(nn.Module):
    """``z (B, k) -> (B, C, H, W)``: a linear map to the coarsest grid, then one
    ``ConvTranspose2d(4, stride 2)`` per width (Radford et al. 2016, without batch norm so the
    network is a pure function of each ``z``: particles and eval/train agree)."""

    def __init__(self, latent: int, event_shape: Sequence[int], hidden: Sequence[int]) -> None:
        super().__init__()
        c, h, w = event_shape
        factor = 2 ** len(hidden)
        self.grid = (hidden[0], h // factor, w // factor)
        self.project = nn.Sequential(nn.Linear(latent, math.prod(self.grid)), nn.ReLU())
        layers: list[nn.Module] = []
        widths = [*hidden, c]
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            if i < len(hidden) - 1:
                layers.append(nn.ReLU())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).reshape(-1, *self.grid)  # (B, C0, H0, W0)
        return self.deconv(h)


class _Discriminator(nn.Module):
    """A scoring network ``(..., *event) -> (...)`` with an input affine map to about [-1, 1].

    ``body`` maps ``(B, *event)`` to ``(B, 1)``; ``scale``/``shift`` are fixed (level units of
    discrete data are mapped to [-1, 1]).
    """

    def __init__(
        self, body: nn.Module, event_shape: Sequence[int], scale: float, shift: float
    ) -> None:
        super().__init__()
        self.body = body
        self.event_shape = tuple(event_shape)
        self.scale = float(scale)
        self.shift = float(shift)

    def forward(self, x: Tensor) -> Tensor:
        k = len(self.event_shape)
        lead = x.shape[: x.dim() - k]
        h = x.reshape(-1, *self.event_shape) * self.scale + self.shift
        return self.body(h).reshape(lead)


def _maybe_sn(layer: nn.Module, enabled: bool) -> nn.Module:
    return _spectral_norm(layer) if enabled else layer


def _mlp_discriminator_body(
    num_dims: int, hidden: Sequence[int], spectral_norm: bool
) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = num_dims
    for h in hidden:
        layers += [_maybe_sn(nn.Linear(width, h), spectral_norm), nn.LeakyReLU(0.2)]
        width = h
    layers.append(_maybe_sn(nn.Linear(width, 1), spectral_norm))
    return nn.Sequential(*layers)


def _dcgan_discriminator_body(
    event_shape: Sequence[int], hidden: Sequence[int], spectral_norm: bool
) -> nn.Module:
    c, h, w = event_shape
    factor = 2 ** len(hidden)
    widths = [c, *reversed(hidden)]  # finest first: C -> hidden[-1] -> ... -> hidden[0]
    layers: list[nn.Module] = []
    for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [
            _maybe_sn(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), spectral_norm),
            nn.LeakyReLU(0.2),
        ]
    layers += [
        nn.Flatten(),
        _maybe_sn(nn.Linear(hidden[0] * (h // factor) * (w // factor), 1), spectral_norm),
    ]
    return nn.Sequential(*layers)


class GAN(AbstractGenerativeModel, LatentObservationModel, ImplicitModel, InitializesFromData):
    r"""A GAN generator as a Pyro program: :math:`z \sim \mathcal{N}(0, I)`, :math:`x = G(z)`.

    An MLP generator for vector data, a small DCGAN-style generator for images ``(C, H, W)``
    (8x8 digits). Likelihood: ``"none"`` (implicit); ``ppgen.evaluate`` scores it by AIS under
    the Gaussian observation model with scale :attr:`observation_scale` and labels the result
    ``estimate``. Trained by the ``"adversarial"`` objective, whose loss (``ns``, ``minimax``,
    ``hinge``, ``wgan-gp``) defaults to ``config.objective``.

    Arguments:
        config: a :class:`GANConfig`, or its fields as keywords.

    Shapes:
        ``model(x)``: ``x`` of shape ``(N, *event_shape)``; sites ``"z"`` ``(..., N, latent)``,
        ``"u"`` ``(..., N, *event_shape)`` (discrete data only) and ``"x"``.
        ``sample(n)``: ``(n, *event_shape)`` in data units.

    References:
        Goodfellow et al. (2014), Generative Adversarial Nets, arXiv:1406.2661.
        Radford et al. (2016), DCGAN, arXiv:1511.06434.
        Wu et al. (2017), On the Quantitative Analysis of Decoder-Based Generative Models,
        arXiv:1611.04273.

    Example:
        >>> import ppgen, torch
        >>> from pyro import poutine
        >>> ds = ppgen.datasets.load("moons", split="val")
        >>> gan = ppgen.build("gan", ds, latent=2, hidden=[32], objective="hinge")
        >>> z = torch.randn(1, 2)  # model() draws one point; conditioning on z gives G(z)
        >>> x = poutine.condition(gan.model, data={"z": z})()
        >>> torch.equal(x, gan.generate(z))
        True
        >>> gan.sample(4, seed=0).shape
        torch.Size([4, 2])
    """

    likelihood: ClassVar = "none"
    Config: ClassVar = GANConfig
    default_objective: ClassVar = "adversarial"
    conditioning_methods: ClassVar = ("latent-nuts",)

    def __init__(self, config: GANConfig | None = None, **fields: Any) -> None:
        super().__init__(config, **fields)
        cfg = self.config
        if cfg.resolved_architecture == "dcgan":
            self.generator: nn.Module = _DCGANGenerator(cfg.latent, cfg.event_shape, cfg.hidden)
        else:
            self.generator = _MLPGenerator(cfg.latent, cfg.num_dims, cfg.hidden)
        if cfg.prior == "flow":  # MAF orientation: the prior density in one pass
            k = cfg.latent
            self.prior_flow = build_maf(k, cfg.transforms, (4 * k, 4 * k))
        # The Gaussian observation model's scale, in the model's space (level units for
        # discrete data); a buffer so that a selected value travels with checkpoints.
        self.register_buffer("_observation_scale", torch.tensor(1.0))

    # ---- the generator --------------------------------------------------------------------------

    def generate(self, z: Tensor) -> Tensor:
        """``G(z)`` in the model's space: data units for continuous data, level units in
        ``(0, L)`` for discrete data.

        Shapes:
            ``z``: ``(..., latent)`` with any leading dims -> ``(..., *event_shape)``.
        """
        out = _flat_apply(self.generator, z, self.event_shape)
        if self.config.kind == "continuous":
            return out
        assert self.config.levels is not None
        return self.config.levels * torch.sigmoid(out)

    def prior(self) -> dist.TorchDistribution:
        """p(z), event shape ``(latent,)``: N(0, I) or the learned flow."""
        if self.config.prior == "flow":
            return self.prior_flow()
        return dist.Normal(self._observation_scale.new_zeros(self.config.latent), 1.0).to_event(1)

    def sample_latent(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws of z from :meth:`prior` with ``generator``, ``(n, latent)``."""
        ref = self._observation_scale
        eps = torch.randn(
            n, self.config.latent, generator=generator, device=ref.device, dtype=ref.dtype
        )
        if self.config.prior == "flow":
            return self.prior_flow().transform.inverse(eps)
        return eps

    @pyro_program
    def model(self, x: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        """``z ~ p(z)`` (N(0, I) or the flow prior) at ``"z"``, ``x = G(z)`` as a Delta at
        ``"x"`` (observed when given; discrete data as ``x + u`` with the latent
        ``"u" ~ U[0, 1)``). Broadcasts over outer (particle) plates. Returns the value at
        ``"x"``."""
        n = 1 if x is None else x.shape[0]
        k = len(self.event_shape)
        ref = self._observation_scale
        with pyro.plate("data", n):
            z = pyro.sample("z", self.prior())  # (..., N, latent)
            g = self.generate(z)  # (..., N, *event)
            obs = x
            if x is not None and self.config.kind != "continuous":
                # dequantization noise as a latent site: estimators integrate it (see module doc)
                u = pyro.sample(
                    "u", dist.Uniform(ref.new_zeros(()), 1.0).expand(self.event_shape).to_event(k)
                )
                obs = x + u
            return pyro.sample("x", dist.Delta(g, event_dim=k), obs=obs)

    @torch.no_grad()
    def _sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """``n`` draws ``G(z)`` in data units (``floor(G(z))`` clipped to the levels for
        discrete data), reproducible with ``seed`` or ``generator``."""
        generator = self.sampling_generator(seed, generator)
        x = self.generate(self.sample_latent(n, generator=generator))
        if self.config.kind == "continuous":
            return x
        assert self.config.levels is not None
        return torch.floor(x).clamp_(0, self.config.levels - 1)

    # ---- conditioning (ppgen.impute's "latent-nuts") ----------------------------------------

    def latent_prior(self) -> dist.TorchDistribution:
        return self.prior()

    def observed_log_likelihood(
        self, z: Tensor, x: Tensor, observed: Tensor, context: Tensor | None = None
    ) -> Tensor:
        r"""The Gaussian observation model on the observed cells: :math:`\sum_{d\ obs}
        \log \mathcal N(x_d; G(z)_d, s^2)` for continuous data; for discrete data each
        observed level v gets the mass of its unit cell, :math:`\log(\Phi((v + 1 - G_d)/s)
        - \Phi((v - G_d)/s))` (the dequantization noise integrated out in closed form, as
        the model's ``"u"`` site integrates it)."""
        observed = observed.expand_as(x)
        g = self.generate(z)  # (..., N, *event)
        s = self._observation_scale.to(g.dtype)
        x = x.where(observed, 0.0)
        if self.config.kind == "continuous":
            lp = dist.Normal(g, s).log_prob(x.expand_as(g))
        else:
            lo, hi = (x - g) / s, (x + 1 - g) / s
            # log(Phi(hi) - Phi(lo)), stable on either tail: mirror cells right of the mean
            right = lo > 0
            a, b = torch.where(right, -hi, lo), torch.where(right, -lo, hi)
            log_b = torch.special.log_ndtr(b)
            lp = log_b + torch.log1p(-torch.exp(torch.special.log_ndtr(a) - log_b).clamp(
                max=1 - 1e-12))
        lp = lp.where(observed, 0.0)
        return lp.flatten(lp.dim() - len(self.event_shape)).sum(-1)

    def sample_given_latent(
        self, z: Tensor, generator: torch.Generator | None, context: Tensor | None = None
    ) -> Tensor:
        """``G(z)`` in data units, as :meth:`sample` gives it (no observation noise)."""
        x = self.generate(z)
        if self.config.kind == "continuous":
            return x
        assert self.config.levels is not None
        return torch.floor(x).clamp_(0, self.config.levels - 1)

    # ---- evaluation and training hooks ----------------------------------------------------------

    @property
    def observation_scale(self) -> float:
        """Scale ``s`` of the Gaussian observation model ``N(G(z), s^2 I)`` used to score data
        (AIS) and to invert the generator (NUTS), in the model's space (level units for discrete
        data). Set by :meth:`initialize` to a tenth of the data's per-dimension standard
        deviation; assign a better one chosen on validation data
        (``gan.observation_scale = select_observation_scale(gan, val)``). Stored in checkpoints."""
        return float(self._observation_scale)

    @observation_scale.setter
    def observation_scale(self, value: float) -> None:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"observation_scale must be a positive number, got {value}")
        self._observation_scale.fill_(float(value))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the default observation scale from the first batch (a tenth of the root mean
        per-dimension variance, in the model's space)."""
        if x.shape[0] > 1:
            flat = x.reshape(x.shape[0], -1).to(self._observation_scale.dtype)
            rms = float(flat.var(0).mean().sqrt())
            if math.isfinite(rms) and rms > 0:
                self._observation_scale.fill_(0.1 * rms)

    def make_discriminator(self) -> nn.Module:
        """A fresh discriminator matching the generator: LeakyReLU MLP, or the mirrored DCGAN
        conv stack for images; spectral normalization when ``config.spectral_norm``. Discrete
        data (level units in ``[0, L)``) is mapped to ``[-1, 1]`` on the way in."""
        cfg = self.config
        if cfg.resolved_architecture == "dcgan":
            body = _dcgan_discriminator_body(cfg.event_shape, cfg.hidden, cfg.spectral_norm)
        else:
            body = _mlp_discriminator_body(cfg.num_dims, cfg.hidden, cfg.spectral_norm)
        if cfg.kind == "continuous":
            return _Discriminator(body, cfg.event_shape, 1.0, 0.0)
        return _Discriminator(body, cfg.event_shape, 2.0 / float(cfg.levels or 1), -1.0)

    def fit_defaults(self) -> dict[str, Any]:
        """Adversarial training with the configured loss and R1 weight; Adam with ``lr`` 1e-3
        for the MLP pair and 5e-4 for the DCGAN pair (betas set per loss by the objective);
        a generator EMA of 0.995."""
        cfg = self.config
        r1 = cfg.r1 if cfg.r1 is not None else (0.0 if cfg.objective == "wgan-gp" else 0.1)
        return {
            "objective": "adversarial",
            "objective_options": {"loss": cfg.objective, "r1": r1},
            "lr": 1e-3 if cfg.resolved_architecture == "mlp" else 5e-4,
            "ema": 0.995,
        }

    def estimator_defaults(self, estimator: str) -> dict[str, Any]:
        """AIS runs 50 annealing steps of 2 leapfrog steps unless told otherwise: a quick and
        conservative default (AIS underestimates log p in expectation, less with more steps).
        Reported figures pass ``num_steps`` (e.g. 300-1000) and ``leapfrog_steps`` explicitly."""
        return {"num_steps": 50, "leapfrog_steps": 2} if estimator == "ais" else {}

    def elbo(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """A GAN has no evidence lower bound (its ``"x"`` site is deterministic given ``z``)."""
        raise ValueError(
            "GAN is an implicit model: it has no ELBO; use ppgen.evaluate(gan, data), which "
            "estimates log p(x) by AIS under the Gaussian observation model"
        )

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"{cfg.resolved_architecture}, latent={cfg.latent}, objective={cfg.objective!r}, "
            + super().extra_repr()
        )
