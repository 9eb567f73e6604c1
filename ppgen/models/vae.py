r"""The variational autoencoder as a Pyro model/guide pair (Kingma & Welling 2014,
arXiv:1312.6114; Rezende et al. 2014, arXiv:1401.4082).

.. math::
    z \sim p(z),\quad x \mid z \sim p_\theta(x \mid z),\qquad
    q_\phi(z \mid x) = \mathcal N(\mu_\phi(x), \operatorname{diag}\sigma^2_\phi(x)),\\
    \log p(x) \ge \mathbb E_q[\log p_\theta(x \mid z)] - \mathrm{KL}(q_\phi(z \mid x) \,\|\, p(z)).

``model`` samples the prior at site ``"z"`` and observes the data at ``"x"`` under
``pyro.plate("data", N)``; ``guide`` is the amortized encoder. Both broadcast over extra leading
(particle) dims, so Pyro's ELBOs, ``Predictive``, ``MCMC(NUTS)`` and ppgen's IWAE/AIS estimators
run on them unchanged. Training uses the ``"elbo"`` objective, which by default calls
:meth:`VAE.elbo_parts` (closed-form KL, no traces) and can swap in any Pyro ELBO by name.

The decoder matches the data: Bernoulli (binary), Binomial(levels - 1) or a categorical over the
levels (discrete: an exact discrete likelihood, no dequantization), a discretized logistic mixture
(Salimans et al. 2017, arXiv:1701.05517; images), a Gaussian with learned variance (continuous).
"""

from __future__ import annotations

__all__ = ["VAE", "VAEConfig", "DiscretizedLogisticMixture"]

import dataclasses
import math
import warnings
from typing import Any, ClassVar, Literal

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import constraints

from ppgen.models.autoregressive import MADEDecoder
from ppgen.models.base import AbstractGenerativeModel, ModelConfig, pyro_program
from ppgen.models.capabilities import InitializesFromData
from ppgen.models.conditioning import AmortizedProposal, LatentObservationModel
from ppgen.models.distributions import DiscretizedLogisticMixture
from ppgen.models.flows import build_maf
from ppgen.models.nets import MLP

Decoder = Literal[
    "auto", "bernoulli", "binomial", "categorical", "logistic_mixture", "gaussian", "made"
]
_PARAMS = {"bernoulli": 1, "binomial": 1, "gaussian": 2}  # per dim; categorical/mixture below
_MIN_SCALE = 1e-3  # floor of the Gaussian decoder's std, in units of the data's std


@dataclasses.dataclass(frozen=True, kw_only=True)
class VAEConfig(ModelConfig):
    """Configuration of :class:`VAE`.

    Arguments:
        latent: the dimension of z.
        hidden: hidden widths of the encoder (the decoder mirrors them); channel widths of the
            stride-2 convolutions when ``net="conv"``.
        net: ``"mlp"`` or ``"conv"`` (image-shaped data ``(C, H, W)``, H and W divisible by
            ``2 ** len(hidden)``).
        decoder: ``"auto"`` (bernoulli for binary, binomial for discrete data below 256
            levels, logistic_mixture from 256 levels on, gaussian for continuous data), or one
            of ``bernoulli``, ``binomial``, ``categorical``,
            ``logistic_mixture`` (discrete/binary data) and ``gaussian`` (continuous data), or
            ``made``: an autoregressive decoder ``prod_d p(x_d | x_<d, z)`` for any
            kind (a conditional MADE, ``ppgen.models.autoregressive.MADEDecoder``; sampling
            takes D passes).
        logistic_components: mixture components of the ``logistic_mixture`` decoder.
        prior: ``"normal"`` (N(0, I)), ``"mixture"`` (a learned mixture of ``components``
            diagonal Gaussians) or ``"flow"`` (a learned flow; needs ``ppgen.models.flows``).
        components: components of the mixture prior.
        posterior: ``"gaussian"`` (diagonal) or ``"iaf"`` (``transforms`` inverse autoregressive
            steps; needs ``ppgen.models.flows``).
        transforms: flow steps of an IAF posterior or a flow prior.
        context_classes: the number of label classes of a conditional VAE (Sohn et al. 2015):
            encoder and decoder see a one-hot label; None for an unconditional VAE.
        beta: the KL weight (Higgins et al. 2017) the ``"elbo"`` objective trains with.
        warmup: steps of linear KL warm-up from 0 to ``beta`` (Sonderby et al. 2016).
        free_bits: the free-bits floor (nats per latent dimension) of Kingma et al. (2016).
    """

    latent: int = 16
    hidden: tuple[int, ...] = (256, 256)
    net: Literal["mlp", "conv"] = "mlp"
    decoder: Decoder = "auto"
    logistic_components: int = 5
    prior: Literal["normal", "mixture", "flow"] = "normal"
    components: int = 10
    posterior: Literal["gaussian", "iaf"] = "gaussian"
    transforms: int = 2
    context_classes: int | None = None
    beta: float = 1.0
    warmup: int = 0
    free_bits: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()  # ``hidden=256`` is ``(256,)`` there, as for every family


class _LevelCategorical(dist.Categorical):
    """A categorical over integer levels whose ``mean`` is the expected level (used by
    latent traversals), not torch's undefined (NaN) categorical mean."""

    @property
    def mean(self) -> Tensor:
        levels = torch.arange(self.logits.shape[-1], dtype=self.probs.dtype,
                              device=self.probs.device)
        return (self.probs * levels).sum(-1)


class _OwnDraws(dist.TorchDistribution):
    """An IAF posterior as a Pyro distribution that scores its own draws in the sampling pass.

    ``rsample`` runs the one-pass (base-to-latent) direction and keeps ``(z, log q(z))``;
    ``log_prob`` of that very tensor returns the kept value, and of any other value (a replayed
    or conditioned site: AIS, NUTS diagnostics) the exact, sequential density. So Pyro's ELBOs
    pay one pass, and every other tool still gets the true log q(z | x).
    """

    arg_constraints: ClassVar[dict] = {}
    has_rsample = True

    def __init__(self, flow: Any) -> None:
        self.flow = flow
        self._draw: tuple[Tensor, Tensor] | None = None
        super().__init__(flow.batch_shape, flow.event_shape, validate_args=False)

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, 1)

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> _OwnDraws:
        return _OwnDraws(self.flow.expand(torch.Size(batch_shape)))

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        z, log_q = self.flow.rsample_and_log_prob(sample_shape)
        self._draw = (z, log_q)
        return z

    def log_prob(self, value: Tensor) -> Tensor:
        if self._draw is not None and value is self._draw[0]:
            return self._draw[1]
        return self.flow.log_prob(value)


class _ConvEncoder(nn.Module):
    """Stride-2 4x4 convolutions (one per width), then a linear layer to ``out`` features."""

    def __init__(self, event_shape: tuple[int, ...], widths: tuple[int, ...], extra: int,
                 out: int) -> None:
        super().__init__()
        c, h, w = event_shape
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(c, width, 4, stride=2, padding=1), nn.ReLU()]
            c = width
        self.convs = nn.Sequential(*layers)
        self.out = nn.Linear(c * (h >> len(widths)) * (w >> len(widths)) + extra, out)

    def forward(self, x: Tensor, extra: Tensor | None) -> Tensor:
        lead = x.shape[:-3]
        h = self.convs(x.reshape(-1, *x.shape[-3:])).flatten(1)  # (prod(lead), features)
        h = h.reshape(*lead, -1)
        return self.out(h if extra is None else torch.cat([h, extra], -1))


class _ConvDecoder(nn.Module):
    """A linear layer to a coarse feature map, then stride-2 transposed convolutions back to
    ``(C * params, H, W)`` (the encoder's mirror)."""

    def __init__(self, event_shape: tuple[int, ...], widths: tuple[int, ...], inp: int,
                 params: int) -> None:
        super().__init__()
        c, h, w = event_shape
        self.coarse = (widths[-1], h >> len(widths), w >> len(widths))
        self.inp = nn.Linear(inp, math.prod(self.coarse))
        layers: list[nn.Module] = []
        outs = [*reversed(widths[:-1]), c * params]
        prev = widths[-1]
        for i, width in enumerate(outs):
            layers.append(nn.ConvTranspose2d(prev, width, 4, stride=2, padding=1))
            if i < len(outs) - 1:
                layers.append(nn.ReLU())
            prev = width
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        h = F.relu(self.inp(z)).reshape(-1, *self.coarse)  # (prod(lead), C', H', W')
        out = self.deconvs(h)
        return out.reshape(*lead, *out.shape[1:])


class VAE(AbstractGenerativeModel, LatentObservationModel, AmortizedProposal, InitializesFromData):
    r"""A variational autoencoder: Pyro ``model`` (prior, decoder) and ``guide`` (encoder).

    Likelihood: a **bound**. ``ppgen.evaluate`` reports IWAE-k (default k = 1000), a lower bound
    on log p(x) of the data as given; discrete data get an exact discrete likelihood at ``"x"``.

    References:
        Kingma & Welling, Auto-Encoding Variational Bayes, arXiv:1312.6114.
        Burda et al., Importance Weighted Autoencoders, arXiv:1509.00519.
        Sohn et al., Learning Structured Output Representation using Deep Conditional
        Generative Models, NeurIPS 2015 (the conditional VAE).

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("digits", "val")
        >>> m = ppgen.build("vae", ds, latent=4, hidden=[32])
        >>> m.sample(2, seed=0).shape
        torch.Size([2, 1, 8, 8])
        >>> m.elbo(ds.data[:3]).shape
        torch.Size([3])
    """

    likelihood: ClassVar = "bound"
    Config: ClassVar = VAEConfig
    default_objective: ClassVar = "elbo"
    incomplete_data_objective: ClassVar = "miwae"
    conditioning_methods: ClassVar = ("importance-resampling", "latent-nuts")

    def __init__(self, config: VAEConfig | None = None, **fields: object) -> None:
        super().__init__(config, **fields)
        cfg = self.config
        self.decoder_kind = self._resolve_decoder(cfg)
        if cfg.latent < 1:
            raise ValueError(f"latent must be positive, got {cfg.latent}")
        if cfg.beta < 0 or cfg.warmup < 0 or cfg.free_bits < 0:
            raise ValueError("beta, warmup and free_bits must be non-negative")
        if cfg.posterior not in ("gaussian", "iaf") or cfg.prior not in ("normal", "mixture",
                                                                         "flow"):
            raise ValueError(
                f"unknown posterior {cfg.posterior!r} or prior {cfg.prior!r}; posterior is "
                "gaussian or iaf, prior is normal, mixture or flow"
            )
        if (cfg.posterior == "iaf" or cfg.prior == "flow") and cfg.transforms < 1:
            raise ValueError(f"a flow needs transforms >= 1, got {cfg.transforms}")
        d, latent = cfg.num_dims, cfg.latent
        classes = cfg.context_classes or 0
        self.params_per_dim = {
            "categorical": cfg.levels or 0,
            "logistic_mixture": 3 * cfg.logistic_components,
        }.get(self.decoder_kind, _PARAMS.get(self.decoder_kind, 0))
        p = self.params_per_dim
        # an IAF posterior reads a context h(x) from the encoder besides the base Gaussian
        features = (cfg.hidden[-1] if cfg.hidden else 2 * latent) if cfg.posterior == "iaf" else 0
        if self.decoder_kind == "made":  # encoder as configured; the decoder is autoregressive
            self.decoder = MADEDecoder(cfg.event_shape, cfg.kind, cfg.levels,
                                       tuple(reversed(cfg.hidden)), latent + classes)
        if cfg.net == "conv":
            if len(cfg.event_shape) != 3 or not cfg.hidden:
                raise ValueError("net='conv' needs image-shaped data (C, H, W) and hidden widths")
            c, h, w = cfg.event_shape
            if h % (1 << len(cfg.hidden)) or w % (1 << len(cfg.hidden)):
                raise ValueError(
                    f"net='conv' with {len(cfg.hidden)} stride-2 layers needs H and W divisible "
                    f"by {1 << len(cfg.hidden)}, got {h}x{w}; use fewer hidden widths"
                )
            self.encoder = _ConvEncoder(cfg.event_shape, cfg.hidden, classes,
                                        2 * latent + features)
            if p:
                self.decoder = _ConvDecoder(cfg.event_shape, cfg.hidden, latent + classes, p)
        elif cfg.net == "mlp":
            self.encoder = MLP(d + classes, 2 * latent + features, cfg.hidden)
            if p:
                self.decoder = MLP(latent + classes, d * p, tuple(reversed(cfg.hidden)))
        else:
            raise ValueError(f"net must be 'mlp' or 'conv', got {cfg.net!r}")
        if cfg.prior == "mixture":
            if cfg.components < 1:
                raise ValueError(f"components must be positive, got {cfg.components}")
            g = torch.Generator().manual_seed(0)
            self.prior_logits = nn.Parameter(torch.zeros(cfg.components))
            self.prior_loc = nn.Parameter(torch.randn(cfg.components, latent, generator=g))
            self.prior_log_scale = nn.Parameter(torch.zeros(cfg.components, latent))
        made = tuple(cfg.hidden) or (4 * latent,)  # the flows' MADE widths
        if cfg.posterior == "iaf":  # sampling in one pass; scoring other points sequential
            self.posterior_flow = build_maf(latent, cfg.transforms, made, context=features,
                                            inverted=True, allow_sequential=True)
        if cfg.prior == "flow":  # MAF orientation: the prior density in one pass
            self.prior_flow = build_maf(latent, cfg.transforms, made)
        # constants as buffers, so .to(device/dtype) moves them: the input standardization
        # (set from data by initialize() for continuous data) and the prior's zero mean
        self.register_buffer("x_shift", torch.zeros(cfg.event_shape))
        self.register_buffer("x_scale", torch.ones(cfg.event_shape))
        self.register_buffer("zero", torch.zeros(latent))
        if cfg.kind != "continuous":
            assert cfg.levels is not None
            self.x_scale.fill_(float(cfg.levels - 1))  # levels -> [0, 1] for the encoder

    @staticmethod
    def _resolve_decoder(cfg: VAEConfig) -> str:
        if cfg.decoder == "auto":
            # 8-bit data: a Binomial(255, p) per pixel is far narrower than images' bimodal
            # pixels (0 or 255) and started at 96 bits/dim on Fashion-MNIST (the 18.2
            # after training), where the logistic mixture starts at 5.4; the threshold is the
            # autoregressive families' LOGISTIC_FROM_LEVELS
            if cfg.kind == "discrete" and cfg.levels is not None and cfg.levels >= 256:
                return "logistic_mixture"
            return {"binary": "bernoulli", "discrete": "binomial"}.get(cfg.kind, "gaussian")
        discrete = ("bernoulli", "binomial", "categorical", "logistic_mixture")
        if cfg.decoder in discrete and cfg.kind == "continuous":
            raise ValueError(
                f"decoder={cfg.decoder!r} models discrete levels; continuous data need "
                "decoder='gaussian'"
            )
        if cfg.decoder == "gaussian" and cfg.kind != "continuous":
            raise ValueError(
                "decoder='gaussian' would score discrete data with a density; use an exact "
                "discrete decoder (binomial, categorical, logistic_mixture, or bernoulli for "
                "binary data)"
            )
        if cfg.decoder == "bernoulli" and cfg.kind != "binary":
            raise ValueError("decoder='bernoulli' needs binary data; use binomial/categorical")
        if cfg.decoder not in (*discrete, "gaussian", "made"):
            raise ValueError(f"unknown decoder {cfg.decoder!r}")
        return cfg.decoder

    @property
    def conditional(self) -> bool:
        return self.config.context_classes is not None

    # ---- the pieces -------------------------------------------------------------------------

    def _one_hot(self, context: Tensor | None, lead: torch.Size | None = None) -> Tensor | None:
        if not self.conditional:
            return None
        labels = self.check_context(context, None)  # before any work: range, integers
        assert labels is not None
        c = F.one_hot(labels, self.config.context_classes).to(self.zero.dtype)
        return c if lead is None else c.expand(*lead, c.shape[-1])

    @property
    def context_classes(self) -> int | None:
        return self.config.context_classes

    def _check_context(self, context: Tensor | None, n: int) -> Tensor | None:
        return self.check_context(context, n) if self.conditional else None

    def encode(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The mean and standard deviation of the guide's Gaussian (the base of an IAF
        posterior), each ``(N, latent)``."""
        loc, scale, _ = self._encode(x, context)
        return loc, scale

    def _encode(
        self, x: Tensor, context: Tensor | None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        inp = (x - self.x_shift) / self.x_scale
        if mask is not None:  # MIWAE's encoder input: missing cells zero-filled (standardized)
            inp = inp.where(mask, 0.0)
        c = self._one_hot(context)
        if self.config.net == "conv":
            out = self.encoder(inp, c)
        else:
            flat = inp.flatten(-len(self.event_shape))
            out = self.encoder(flat if c is None else torch.cat([flat, c], -1))
        latent = self.config.latent
        loc, raw, h = out[..., :latent], out[..., latent : 2 * latent], out[..., 2 * latent :]
        return loc, F.softplus(raw) + 1e-4, (h if h.shape[-1] else None)

    def approximate_posterior(
        self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None
    ) -> dist.TorchDistribution:
        """q(z | x), the guide's distribution at ``"z"`` (not the model's posterior p(z | x),
        which ``ppgen.posterior`` samples), batch shape ``(N,)``, event shape ``(latent,)``: the
        diagonal Gaussian, or the IAF (Kingma et al. 2016, arXiv:1606.04934) on top of it,
        conditioned on h(x). With ``mask`` (True = observed) the encoder sees the missing cells
        as zeros in its standardized input, q(z | x_obs) of MIWAE (Mattei & Frellsen 2019)."""
        loc, scale, h = self._encode(x, context, mask)
        base = dist.Normal(loc, scale, validate_args=False).to_event(1)
        if self.config.posterior == "gaussian":
            return base
        return _OwnDraws(self.posterior_flow(h, base=base))

    def posterior(self, x: Tensor, context: Tensor | None = None) -> dist.TorchDistribution:
        """Deprecated name of :meth:`approximate_posterior` ("posterior" alone names the
        model's p(z | x), which ``ppgen.posterior`` samples)."""
        warnings.warn(
            "VAE.posterior(x) is deprecated; use VAE.approximate_posterior(x) (the same q(z | x))",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.approximate_posterior(x, context)

    def decode(self, z: Tensor, context: Tensor | None = None) -> dist.TorchDistribution:
        """p(x | z) with event shape ``event_shape``; ``z`` may carry leading particle dims,
        ``(..., N, latent)``."""
        c = self._one_hot(context, z.shape[:-1])
        inp = z if c is None else torch.cat([z, c], -1)
        if self.decoder_kind == "made":
            return self.decoder(inp)
        out = self.decoder(inp)
        shape, p = self.event_shape, self.params_per_dim
        if self.config.net == "conv":  # (..., C * p, H, W) -> (..., C, H, W, p)
            out = out.unflatten(-3, (shape[0], p)).movedim(-3, -1)
        else:  # (..., D * p) -> (..., *event, p)
            out = out.unflatten(-1, (*shape, p))
        return self._likelihood(out).to_event(len(shape))

    def _likelihood(self, out: Tensor) -> dist.TorchDistribution:
        kind, levels = self.decoder_kind, self.config.levels
        if kind == "bernoulli":
            return dist.Bernoulli(logits=out[..., 0], validate_args=False)
        if kind == "binomial":
            assert levels is not None
            return dist.Binomial(levels - 1, logits=out[..., 0], validate_args=False)
        if kind == "categorical":
            return _LevelCategorical(logits=out, validate_args=False)
        if kind == "logistic_mixture":
            assert levels is not None
            logits, loc, log_scale = out.chunk(3, -1)
            return DiscretizedLogisticMixture(logits, torch.tanh(loc), log_scale.clamp(min=-7),
                                              levels, validate_args=False)
        loc, raw = out[..., 0], out[..., 1]
        scale = (F.softplus(raw) + _MIN_SCALE) * self.x_scale
        return dist.Normal(self.x_shift + self.x_scale * loc, scale, validate_args=False)

    def prior(self) -> dist.TorchDistribution:
        """p(z), event shape ``(latent,)``."""
        if self.config.prior == "flow":
            return self.prior_flow()
        if self.config.prior == "mixture":
            comp = dist.Normal(self.prior_loc, self.prior_log_scale.exp()).to_event(1)
            return dist.MixtureSameFamily(dist.Categorical(logits=self.prior_logits), comp)
        return dist.Normal(self.zero, 1.0, validate_args=False).to_event(1)

    # ---- the Pyro programs ------------------------------------------------------------------

    @pyro_program
    def model(self, x: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        n = x.shape[0] if x is not None else (1 if context is None else context.shape[0])
        with pyro.plate("data", n):
            z = pyro.sample("z", self.prior())
            return pyro.sample("x", self.decode(z, context), obs=x)

    @pyro_program
    def guide(self, x: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        if x is None:
            raise ValueError("the guide q(z | x) needs data x")
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.approximate_posterior(x, context))

    # ---- the bound, trace-free ------------------------------------------------------------

    def elbo_parts(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One-sample E_q[log p(x | z)] ``(N,)`` and the KL per latent dimension ``(N, latent)``
        in closed form for a Gaussian posterior and the N(0, I) prior; otherwise (mixture or
        flow prior, IAF posterior) a one-sample ``log q(z) - log p(z)`` ``(N, 1)``. The same
        random variables as the Pyro programs, without traces."""
        cfg = self.config
        if cfg.posterior == "iaf":
            q = self.approximate_posterior(x, context)
            z, log_q = q.flow.rsample_and_log_prob()  # one IAF pass, density of its own draw
            kl = (log_q - self.prior().log_prob(z)).unsqueeze(-1)
            return self.decode(z, context).log_prob(x), kl
        loc, scale = self.encode(x, context)
        z = loc + scale * torch.randn_like(loc)  # reparameterized draw of q(z | x)
        log_lik = self.decode(z, context).log_prob(x)
        if cfg.prior == "normal":
            kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1) - torch.log(scale)  # KL(N(m,s)||N(0,1))
        else:
            q = dist.Normal(loc, scale, validate_args=False).to_event(1)
            kl = (q.log_prob(z) - self.prior().log_prob(z)).unsqueeze(-1)
        return log_lik, kl

    def elbo(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        log_lik, kl = self.elbo_parts(x, context)
        return log_lik - kl.sum(-1)

    # ---- incomplete data (MIWAE) ------------------------------------------------------------

    def observed_log_weights(
        self,
        x: Tensor,
        mask: Tensor | None,
        num_particles: int = 1,
        context: Tensor | None = None,
    ) -> Tensor:
        r"""MIWAE's importance log-weights ``(K, N)`` (Mattei & Frellsen 2019,
        arXiv:1812.02633, eq. 4): :math:`z_k \sim q(z \mid x_{obs})` (the encoder on the
        zero-filled input), :math:`\log w_k = \sum_{d\ obs} \log p(x_d \mid z_k)
        + \log p(z_k) - \log q(z_k \mid x_{obs})`; the decoder factorizes over cells, so
        the likelihood of the observed cells is the sum of theirs. The values of ``x`` in
        missing cells are never read (they may be NaN)."""
        reason = self.latent_conditioning_reason()
        if reason is not None:
            raise ValueError(f"{reason}; it cannot score incomplete data")
        if mask is None:
            mask = torch.ones_like(x, dtype=torch.bool)
        q = self.latent_proposal(x, mask, context)
        z = q.rsample(torch.Size([num_particles]))  # (K, N, latent)
        log_q, log_prior = q.log_prob(z), self.prior().log_prob(z)
        return self.observed_log_likelihood(z, x, mask, context) + log_prior - log_q

    # the conditioning interfaces (ppgen.models.conditioning): ppgen.impute's latent methods

    def latent_conditioning_reason(self) -> str | None:
        if self.decoder_kind == "made":
            return ("VAE with decoder='made' has no likelihood of the observed cells alone (its "
                    "decoder conditions each cell on the previous ones, missing ones included)")
        return None

    def latent_prior(self) -> dist.TorchDistribution:
        return self.prior()

    def latent_proposal(
        self, x: Tensor, observed: Tensor, context: Tensor | None = None
    ) -> dist.TorchDistribution:
        observed = observed.expand_as(x)
        return self.approximate_posterior(x.where(observed, self.x_shift.to(x.dtype)), context,
                                          observed)

    def observed_log_likelihood(
        self, z: Tensor, x: Tensor, observed: Tensor, context: Tensor | None = None
    ) -> Tensor:
        observed = observed.expand_as(x)
        x = x.where(observed, self.x_shift.to(x.dtype))  # a valid value in the cells not read
        px = self.decode(z, context)
        base = px.base_dist if isinstance(px, dist.Independent) else px
        lp = base.log_prob(x).where(observed, 0.0)  # (..., N, *event)
        return lp.flatten(lp.dim() - len(self.event_shape)).sum(-1)

    def sample_given_latent(
        self, z: Tensor, generator: torch.Generator | None, context: Tensor | None = None
    ) -> Tensor:
        return self._draw(self.decode(z, context), generator)

    # ---- sampling and hooks -------------------------------------------------------------

    @torch.no_grad()
    def _sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        context = self._check_context(context, n)
        generator = self.sampling_generator(seed, generator)
        opts = {"generator": generator, "device": self.zero.device, "dtype": self.zero.dtype}
        latent = self.config.latent
        if self.config.prior == "mixture":
            probs = torch.softmax(self.prior_logits, -1)
            k = torch.multinomial(probs, n, replacement=True, generator=generator)
            eps = torch.randn(n, latent, **opts)
            z = self.prior_loc[k] + self.prior_log_scale[k].exp() * eps
        elif self.config.prior == "flow":
            z = self.prior_flow().transform.inverse(torch.randn(n, latent, **opts))
        else:
            z = torch.randn(n, latent, **opts)
        return self._draw(self.decode(z, context), generator)

    def _draw(self, px: dist.TorchDistribution, generator: torch.Generator | None) -> Tensor:
        """A draw of x from p(x | z), with ``generator`` (torch's samplers ignore one)."""
        base = px.base_dist if isinstance(px, dist.Independent) else px
        kind = self.decoder_kind
        if kind == "made":
            return px.sample(generator=generator)
        if kind == "bernoulli":
            return torch.bernoulli(base.probs, generator=generator)
        if kind == "binomial":
            return torch.binomial(base.total_count.expand_as(base.probs), base.probs,
                                  generator=generator)
        if kind == "categorical":
            probs = base.probs
            flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
            return flat.reshape(probs.shape[:-1]).to(probs.dtype)
        if kind == "logistic_mixture":
            return base.sample(generator=generator)
        eps = torch.randn(base.loc.shape, generator=generator, device=base.loc.device,
                          dtype=base.loc.dtype)
        return base.loc + base.scale * eps

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Standardize continuous inputs with the data's moments and start the decoder's
        output bias at the data's per-dimension marginal (faster early training)."""
        cfg = self.config
        if cfg.kind == "continuous":
            self.x_shift.copy_(x.mean(0))
            self.x_scale.copy_(x.std(0).clamp_min(1e-3) if x.shape[0] > 1 else 1.0)
            return
        if cfg.net != "mlp" or self.decoder_kind not in ("bernoulli", "binomial"):
            return
        assert cfg.levels is not None
        p = (x.mean(0) / (cfg.levels - 1)).clamp(1e-3, 1 - 1e-3).flatten()
        last = self.decoder[-1]
        assert isinstance(last, nn.Linear)
        last.bias.copy_(torch.logit(p))

    def fit_defaults(self) -> dict[str, Any]:
        cfg = self.config
        options = {k: v for k, v in (("beta", cfg.beta), ("warmup", cfg.warmup),
                                     ("free_bits", cfg.free_bits))
                   if v != {"beta": 1.0, "warmup": 0, "free_bits": 0.0}[k]}
        return {"objective_options": options} if options else {}

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"latent={cfg.latent}, decoder={self.decoder_kind!r}, net={cfg.net!r}, "
            f"prior={cfg.prior!r}, posterior={cfg.posterior!r}, " + super().extra_repr()
        )
