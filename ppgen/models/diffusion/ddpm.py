r"""DDPM: a diffusion model written as the latent-variable Pyro program it is.

The generative model is a Markov chain of T Gaussian latents ending in an observation,

.. math:: p_\theta(x_{0:T}) = \mathcal{N}(x_T; 0, I)\,
    \prod_{t=2}^{T} p_\theta(x_{t-1} \mid x_t)\; p_\theta(x_0 \mid x_1),\qquad
    p_\theta(x_{t-1} \mid x_t) = \mathcal{N}(\tilde\mu_t(x_t, \hat x_0(x_t, t)), \sigma_t^2 I),

and the variational family is the fixed forward process :math:`q(x_{1:T} \mid x_0)` of the
:class:`~ppgen.models.diffusion.schedule.NoiseSchedule`. ``model`` samples sites ``"x_T"``, ...,
``"x_1"`` and observes ``"x"`` (:math:`x_0`); ``guide`` samples the same latent sites from
:math:`q(x_T \mid x_0)\prod_t q(x_{t-1} \mid x_t, x_0)`. Pyro's tools (``poutine.trace``,
``Predictive``, ``Trace_ELBO``) therefore work unchanged, and the evidence lower bound is

.. math:: \log p_\theta(x_0) \ge -\underbrace{D_{KL}(q(x_T|x_0) \| p(x_T))}_{L_T}
    - \sum_{t=2}^{T} \underbrace{\mathbb{E}_q D_{KL}(q(x_{t-1}|x_t,x_0) \| p_\theta(x_{t-1}|x_t))}
    _{L_{t-1}} + \underbrace{\mathbb{E}_q \log p_\theta(x_0 \mid x_1)}_{-L_0},

with every KL between Gaussians in closed form (Ho et al. 2020, eq. 5). :meth:`DDPM.bound`
computes it per example, either summing all T terms or importance-sampling the times.

Data scaling: discrete data (``L`` levels) is mapped to [-1, 1] by :math:`y = 2v/(L-1) - 1`
and observed through the discretized Gaussian decoder, so the bound is on the probability of the
discrete data as given. Continuous data is standardized per dimension with the first training
batch (``initialize``; ``standardize=False`` turns it off) and observed through a Gaussian
decoder in data units, so the standardization's Jacobian is counted.
"""

from __future__ import annotations

__all__ = ["DDPM", "DDPMConfig", "DiffusionBound"]

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ppgen.models.base import AbstractGenerativeModel, pyro_program
from ppgen.models.capabilities import DenoisingModel, InitializesFromData
from ppgen.models.conditioning import ReverseDiffusion
from ppgen.models.diffusion.config import (
    BoundMethod,
    DDPMConfig,
    LossKind,
    Sampler,
    SpacingChoice,
)
from ppgen.models.diffusion.decoder import DiscretizedGaussian, quantize_unit
from ppgen.models.diffusion.probability_flow import (
    ADAPTIVE_SOLVERS,
    EXACT_TRACE_MAX_DIMS,
    probability_flow_log_prob,
)
from ppgen.models.diffusion.samplers import (
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_heun,
)
from ppgen.models.diffusion.schedule import NoiseSchedule
from ppgen.models.nets import TimeMLP, UNet


@dataclasses.dataclass(frozen=True)
class DiffusionBound:
    """The terms of the variational bound of a batch, per example, in nats.

    Attributes:
        per_example: the bound on log p(x), ``(N,)``: ``-(prior + diffusion + decoder)``.
        prior: :math:`L_T`, the KL of :math:`q(x_T|x_0)` to :math:`\\mathcal N(0, I)`, ``(N,)``.
        diffusion: :math:`\\sum_{t=2}^T L_{t-1}`, the reverse-step KLs, ``(N,)``.
        decoder: :math:`L_0 = -\\log p(x_0|x_1)`, ``(N,)``.
        mc_stderr: the Monte Carlo standard error of ``diffusion`` from sampling the times
            (``method="importance"``; zeros for ``"exact"``, whose only noise is the one draw of
            each :math:`x_t`), ``(N,)``.
        method: ``"exact"`` or ``"importance"``.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("digits", split="val")
        >>> m = ppgen.build("ddpm", ds, timesteps=10, hidden=[8])
        >>> b = m.bound(ds.data[:3], method="importance", num_t=4)
        >>> torch.allclose(b.per_example, -(b.prior + b.diffusion + b.decoder))
        True
    """

    per_example: Tensor
    prior: Tensor
    diffusion: Tensor
    decoder: Tensor
    mc_stderr: Tensor
    method: str

    @property
    def stderr(self) -> float:
        """The Monte Carlo standard error of the batch mean from sampling the times, in nats."""
        n = self.per_example.shape[0]
        return float(self.mc_stderr.double().pow(2).sum().sqrt() / max(n, 1))


class DDPM(AbstractGenerativeModel, ReverseDiffusion, DenoisingModel, InitializesFromData):
    r"""Denoising diffusion probabilistic model, a Pyro program with T latent states.

    ``model``/``guide`` are the reverse chain and the forward process (see the module docstring);
    the likelihood is the closed-form variational bound (:meth:`elbo`, kind ``lower_bound``);
    :meth:`sample` runs ancestral DDPM or DDIM with any number of steps, chosen at call time.
    Training minimizes :meth:`denoising_loss` through the ``"denoising"`` objective (the
    simplified epsilon loss by default), with an EMA of the weights (:meth:`fit_defaults`).

    Arguments:
        config: a :class:`DDPMConfig`, or its fields as keywords.

    References:
        Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239.
        Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672.
        Song, Meng, Ermon. Denoising Diffusion Implicit Models. arXiv:2010.02502.
        Salimans, Ho. Progressive Distillation for Fast Sampling (v-prediction). arXiv:2202.00512.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("moons", split="val")
        >>> m = ppgen.build("ddpm", ds, timesteps=20, hidden=[32])
        >>> m.sample(3, seed=0, sampler="ddim", sampling_steps=5).shape
        torch.Size([3, 2])
        >>> m.elbo(ds.data[:4]).shape
        torch.Size([4])
    """

    likelihood: ClassVar = "bound"
    Config: ClassVar = DDPMConfig
    default_objective: ClassVar = "denoising"
    default_estimator: ClassVar = "elbo"
    probability_flow: ClassVar = True
    conditioning_methods: ClassVar = ("repaint",)
    #: ``evaluate(estimator="auto")`` sums all T terms of the bound while examples x T x D
    #: (pixel-steps of the denoiser) stay within this; above it, it importance-samples the
    #: times. 2**25: the 300 digits of a test split at T = 1000 (1.9e7) keep the exact sum; 200
    #: MNIST images at T = 1000 (1.6e8; over 9 minutes on 2 cores) get the estimate, ~10x cheaper.
    EXACT_BOUND_BUDGET: ClassVar[int] = 2**25
    #: times drawn per example by the importance-sampled bound ``auto`` picks
    AUTO_NUM_T: ClassVar[int] = 64

    def choose_estimator(self, num_examples: int) -> tuple[str | None, dict[str, Any], str | None]:
        """The closed-form bound, its T terms summed when the data are small, importance-sampled
        (``method="importance"``, :attr:`AUTO_NUM_T` times per example, its Monte Carlo error
        reported) when examples x T x D exceed :attr:`EXACT_BOUND_BUDGET`."""
        cfg = self.config
        T, d, k = cfg.timesteps, cfg.num_dims, self.AUTO_NUM_T
        cost = num_examples * T * d
        if T <= 2 * k or cost <= self.EXACT_BOUND_BUDGET:
            return "elbo", {}, None
        return "elbo", {"method": "importance", "num_t": k}, (
            f"estimator auto: the bound's T={T} timestep terms importance-sampled ({k} times "
            f"per example; {num_examples} examples x T x {d} dims = {cost:.2g} denoiser "
            f"pixel-steps exceed the exact sum's budget of 2**25); the Monte Carlo error is "
            "reported; pass estimator='elbo' for the exact sum"
        )

    def __init__(self, config: DDPMConfig | None = None, **fields: Any) -> None:
        super().__init__(config, **fields)
        cfg: DDPMConfig = self.config
        self.schedule = NoiseSchedule(
            cfg.timesteps, cfg.schedule, zero_terminal_snr=cfg.zero_terminal_snr
        )
        self._kind = cfg.denoiser_kind()
        self._out_mult = 2 if cfg.variance == "learned" else 1
        hidden = cfg.hidden_widths(self._kind)
        if self._kind == "unet":
            c = cfg.event_shape[0]
            self.net: nn.Module = UNet(c, c * self._out_mult, hidden, cfg.time_features)
        else:
            d = cfg.num_dims
            self.net = TimeMLP(d, d * self._out_mult, hidden, cfg.time_features)
        self.register_buffer("data_loc", torch.zeros(cfg.event_shape))
        self.register_buffer("data_scale", torch.ones(cfg.event_shape))
        discrete = cfg.kind != "continuous"
        clip = cfg.clip_denoised if cfg.clip_denoised is not None else discrete
        self._clip: float | None = 1.0 if clip else None

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"{super().extra_repr()}, timesteps={cfg.timesteps}, denoiser={self._kind!r}, "
            f"parameterization={cfg.parameterization!r}, variance={cfg.variance!r}"
        )

    # ---- data <-> the chain's space -------------------------------------------------------------

    def _encode(self, x: Tensor) -> Tensor:
        """Data units -> the chain's space: [-1, 1] for discrete data, standardized else."""
        cfg = self.config
        if cfg.kind != "continuous":
            assert cfg.levels is not None
            return x * (2.0 / (cfg.levels - 1)) - 1.0
        return (x - self.data_loc) / self.data_scale

    def _decode(self, y: Tensor) -> Tensor:
        """The chain's space -> data units (quantized to the nearest level for discrete data)."""
        cfg = self.config
        if cfg.kind != "continuous":
            assert cfg.levels is not None
            return quantize_unit(y, cfg.levels)
        return y * self.data_scale + self.data_loc

    # ---- the network and the reverse kernel -----------------------------------------------------

    def _times(self, like: Tensor) -> Tensor:
        """The network's time input for t = 0..T: t on a 0..1000 scale whatever T is."""
        T = self.config.timesteps
        return torch.arange(T + 1, device=like.device, dtype=like.dtype) * (1000.0 / T)

    def _denoiser(
        self, table: Tensor | None = None
    ) -> Callable[[Tensor, Any], tuple[Tensor, Tensor | None]]:
        """The network as a function ``(x_t, time) -> (prediction, raw variance or None)``, both
        shaped like ``x_t`` (any leading dims: particles), attributes bound once for the
        samplers' loops. With ``table`` (:meth:`_times`), ``time`` is the integer t instead."""
        net, k = self.net, len(self.event_shape)
        learned, unet = self._out_mult == 2, self._kind == "unet"

        def call(x_t: Tensor, time: Any) -> tuple[Tensor, Tensor | None]:
            if table is not None:
                time = table[time]
            if unet:
                out = net(x_t, time)  # (..., m C, H, W)
                if not learned:
                    return out, None
                pred, raw = out.chunk(2, dim=-3)
                return pred, raw
            out = net(x_t if k == 1 else x_t.flatten(-k), time)  # (..., m D)
            if not learned:
                return (out if k == 1 else out.view(x_t.shape)), None
            pred, raw = out.chunk(2, dim=-1)
            return pred.reshape(x_t.shape), raw.reshape(x_t.shape)

        return call

    def _continuous_denoiser(self) -> Callable[[Tensor, float], tuple[Tensor, Tensor | None]]:
        """The network at a float time ``t`` in [0, T] (the ODE solvers' grid), on the same
        0..1000 scale as :meth:`_times`."""
        call, scale = self._denoiser(), 1000.0 / self.config.timesteps

        def at(x_t: Tensor, t: float) -> tuple[Tensor, Tensor | None]:
            return call(x_t, x_t.new_tensor(t * scale))

        return at

    def _network(self, x_t: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor | None]:
        """The denoiser at ``(x_t, t)``; see :meth:`_denoiser`."""
        if isinstance(t, int):
            t = torch.tensor(t, device=x_t.device)
        time = t.to(x_t.dtype) * (1000.0 / self.config.timesteps)
        return self._denoiser()(x_t, time)

    def _predicted_x0(self, pred: Tensor, t: int | Tensor, x_t: Tensor) -> Tensor:
        """The predicted x0 from the network's output (eq. 15 for epsilon), unclipped."""
        s, p = self.schedule, self.config.parameterization
        if p == "epsilon":
            return s.predict_x0(pred, t, x_t)
        return pred if p == "x0" else s.x0_from_velocity(pred, t, x_t)

    def _reverse_from(
        self, pred: Tensor, raw: Tensor | None, x_t: Tensor, t: int | Tensor, clip: bool = True
    ) -> tuple[Tensor, Tensor | float]:
        r"""Mean and log-variance of :math:`p_\theta(x_{t-1} \mid x_t)` given the network's
        outputs (at t = 1: the decoder's Gaussian, in the chain's space)."""
        x0 = self._predicted_x0(pred, t, x_t)
        if clip and self._clip is not None:
            x0 = x0.clamp(-self._clip, self._clip)
        mean, _ = self.schedule.posterior(x0, x_t, t)
        frac = None if raw is None else torch.sigmoid(raw)
        variance: Any = self.config.variance
        return mean, self.schedule.reverse_log_variance(t, variance, x_t, frac)

    def _reverse(self, x_t: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor | float]:
        """:meth:`_reverse_from` at the network's outputs for ``(x_t, t)``."""
        pred, raw = self._network(x_t, t)
        return self._reverse_from(pred, raw, x_t, t)

    def _decoder(self, mean: Tensor, log_var: Tensor | float) -> dist.Distribution:
        r""":math:`p(x_0 \mid x_1)` over the data as given, from the t = 1 reverse Gaussian."""
        cfg = self.config
        scale = _std(log_var, mean)
        k = len(self.event_shape)
        if cfg.kind != "continuous":
            assert cfg.levels is not None
            return DiscretizedGaussian(mean, scale, cfg.levels).to_event(k)
        return dist.Normal(
            mean * self.data_scale + self.data_loc, scale * self.data_scale
        ).to_event(k)

    # ---- the Pyro programs --------------------------------------------------------------------

    def _check_context(self, context: Tensor | None) -> None:
        if context is not None:
            raise ValueError("DDPM is unconditional: it takes no context (pass context=None)")

    def _zeros(self) -> Tensor:
        return self.data_loc.new_zeros(self.event_shape)

    @pyro_program
    def model(self, x: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        """The reverse chain: ``"x_T"`` ~ N(0, I), ``"x_{t-1}"`` ~ p(. | x_t), then ``"x"`` ~
        p(. | x_1) (site names use the numbers: ``"x_1000"``, ..., ``"x_1"``)."""
        self._check_context(context)
        n = 1 if x is None else x.shape[0]
        k, T = len(self.event_shape), self.config.timesteps
        with pyro.plate("data", n):
            zero = self._zeros()
            x_t = pyro.sample(f"x_{T}", dist.Normal(zero, torch.ones_like(zero)).to_event(k))
            for t in range(T, 1, -1):
                mean, log_var = self._reverse(x_t, t)
                x_t = pyro.sample(f"x_{t - 1}", dist.Normal(mean, _std(log_var, mean)).to_event(k))
            mean, log_var = self._reverse(x_t, 1)
            return pyro.sample("x", self._decoder(mean, log_var), obs=x)

    @pyro_program
    def guide(self, x: Tensor | None = None, context: Tensor | None = None) -> None:
        """The forward process q(x_T | x_0) prod_t q(x_{t-1} | x_t, x_0); needs ``x``."""
        self._check_context(context)
        if x is None:
            raise ValueError("the DDPM guide is the forward process q(x_1:T | x_0): pass x")
        k, T = len(self.event_shape), self.config.timesteps
        y0 = self._encode(x)
        with pyro.plate("data", x.shape[0]):
            mean, std = self.schedule.marginal(y0, T)
            x_t = pyro.sample(f"x_{T}", dist.Normal(mean, _std_of(std, mean)).to_event(k))
            for t in range(T, 1, -1):
                mean, var = self.schedule.posterior(y0, x_t, t)
                x_t = pyro.sample(
                    f"x_{t - 1}", dist.Normal(mean, _std_of(math.sqrt(var), mean)).to_event(k)
                )

    # ---- the bound ----------------------------------------------------------------------------

    def _kl_terms(
        self, y0: Tensor, x: Tensor, t: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        """One-draw terms at times ``t`` (one per row of ``y0``): :math:`L_{t-1}` for t >= 2,
        :math:`L_0` for t = 1. Shapes: ``y0``/``x`` ``(B, *event)``, ``t`` ``(B,)`` -> ``(B,)``."""
        eps = torch.randn(y0.shape, generator=generator, dtype=y0.dtype, device=y0.device)
        x_t = self.schedule.add_noise(y0, eps, t)
        mean_p, log_var_p = self._reverse(x_t, t)
        return self._terms_from(mean_p, log_var_p, y0, x, x_t, t)

    def _terms_from(
        self,
        mean_p: Tensor,
        log_var_p: Tensor | float,
        y0: Tensor,
        x: Tensor,
        x_t: Tensor,
        t: Tensor,
    ) -> Tensor:
        """The bound's term per row given the reverse Gaussian at ``(x_t, t)``: the closed-form
        KL to the posterior q(x_{t-1} | x_t, x_0) for t >= 2, -log p(x | x_1) for t = 1."""
        k = len(self.event_shape)
        mean_q, var_q = self.schedule.posterior(y0, x_t, t)
        var_q = torch.as_tensor(var_q).clamp_min(torch.finfo(y0.dtype).tiny)  # 0 at t = 1
        log_var_p = torch.as_tensor(log_var_p, dtype=y0.dtype, device=y0.device)
        kl = 0.5 * (
            log_var_p - var_q.log() + (var_q + (mean_q - mean_p) ** 2) / log_var_p.exp() - 1
        )
        kl = kl.expand(y0.shape).flatten(-k).sum(-1)
        first = t == 1
        if not bool(first.any()):
            return kl
        nll = -self._decoder(mean_p, log_var_p).log_prob(x)
        return torch.where(first, nll, kl)

    def _terms_all(
        self, y0: Tensor, x: Tensor, times: Tensor, rows: int, generator: torch.Generator | None
    ) -> Tensor:
        """Terms at every time in ``times`` for every example: ``(N, len(times))``."""
        n = y0.shape[0]
        per = max(rows // max(n, 1), 1)
        cols = []
        for chunk in times.split(per):
            tt = chunk.repeat_interleave(n)  # (c N,), time-major
            yy = y0.repeat(len(chunk), *([1] * (y0.dim() - 1)))
            xx = x.repeat(len(chunk), *([1] * (x.dim() - 1)))
            cols.append(self._kl_terms(yy, xx, tt, generator).reshape(len(chunk), n).T)
        return torch.cat(cols, dim=1)

    def bound(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        method: BoundMethod = "exact",
        num_t: int = 64,
        pilot: int = 8,
        rows: int = 8192,
        generator: torch.Generator | None = None,
    ) -> DiffusionBound:
        r"""The variational bound of each example, term by term, in nats.

        :math:`L_T` is exact. ``method="exact"`` evaluates every :math:`L_{t-1}`, t = 2..T, and
        :math:`L_0` with one draw of :math:`x_t \sim q(x_t|x_0)` each (T network calls per
        example). ``method="importance"`` keeps :math:`L_T` and :math:`L_0` exact and estimates
        :math:`\sum_{t\ge2} L_{t-1}` by ``num_t`` times per example drawn from a proposal
        :math:`\pi(t) \propto \sqrt{\overline{L_{t-1}^2}}` fitted on ``pilot`` examples of the
        batch (mixed 9:1 with the uniform, so the weights stay bounded): the unbiased estimate
        :math:`\frac1K\sum_k L_{t_k-1}/\pi(t_k)` with its standard error (``mc_stderr``).

        Arguments:
            x: data as given, ``(N, *event_shape)``.
            context: must be None (unconditional).
            method: ``"exact"`` or ``"importance"``.
            num_t: times drawn per example (importance sampling).
            pilot: examples used to fit the proposal (0: the uniform proposal).
            rows: network batch size when evaluating many (example, time) pairs.
            generator: random generator (default: torch's global one).

        Returns:
            A :class:`DiffusionBound`.
        """
        self._check_context(context)
        self._check_x(x)
        if method not in ("exact", "importance"):
            raise ValueError(f"method must be 'exact' or 'importance', got {method!r}")
        if num_t < 2 and method == "importance":
            raise ValueError(f"num_t must be at least 2 (for a standard error), got {num_t}")
        T, k = self.config.timesteps, len(self.event_shape)
        y0 = self._encode(x)
        ab_T = float(self.schedule._host["alphas_cumprod"][T])
        # 1. L_T = KL(N(sqrt(ab_T) y0, 1 - ab_T) || N(0, 1)), zero for a zero terminal SNR
        log_term = 0.0 if ab_T == 0.0 else math.log1p(-ab_T)
        prior = 0.5 * (ab_T * y0**2 - ab_T - log_term).flatten(-k).sum(-1)
        # 2. L_0, the decoder, exact in the times (one draw of x_1)
        ones = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        decoder = self._kl_terms(y0, x, ones, generator)
        # 3. the reverse-step KLs, t = 2..T
        times = torch.arange(2, T + 1, device=x.device)
        if method == "exact":
            diffusion = self._terms_all(y0, x, times, rows, generator).sum(1)
            stderr = torch.zeros_like(diffusion)
        else:
            probs = torch.full((T - 1,), 1.0 / (T - 1), dtype=y0.dtype, device=x.device)
            if pilot > 0:
                m = min(pilot, x.shape[0])
                with torch.no_grad():  # the proposal carries no gradient
                    pilot_terms = self._terms_all(y0[:m], x[:m], times, rows, generator)
                scale = pilot_terms.pow(2).mean(0).sqrt()
                if float(scale.sum()) > 0:
                    probs = 0.9 * scale / scale.sum() + 0.1 * probs
            idx = torch.multinomial(
                probs.expand(x.shape[0], -1), num_t, replacement=True, generator=generator
            )  # (N, K)
            tt = times[idx].T.reshape(-1)  # (K N,), draw-major
            yy = y0.repeat(num_t, *([1] * (y0.dim() - 1)))
            xx = x.repeat(num_t, *([1] * (x.dim() - 1)))
            terms = (
                torch.cat(
                    [
                        self._kl_terms(yc, xc, tc, generator)
                        for yc, xc, tc in zip(
                            yy.split(rows), xx.split(rows), tt.split(rows), strict=True
                        )
                    ]
                )
                .reshape(num_t, -1)
                .T
            )  # (N, K)
            weighted = terms / probs[idx]
            diffusion = weighted.mean(1)
            stderr = weighted.std(1) / math.sqrt(num_t)
        total = -(prior + diffusion + decoder)
        return DiffusionBound(total, prior, diffusion, decoder, stderr, method)

    def elbo(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        method: BoundMethod = "exact",
        num_t: int = 64,
        pilot: int = 8,
        rows: int = 8192,
    ) -> Tensor:
        """The closed-form variational bound on log p(x) per example, in nats, ``(N,)``.

        Select the method through the estimator options:
        ``ppgen.evaluate(m, data, estimator="elbo", method="importance", num_t=64)``; see
        :meth:`bound` for the options and the terms.
        """
        return self.bound(
            x, context, method=method, num_t=num_t, pilot=pilot, rows=rows
        ).per_example

    @torch.no_grad()
    def ode_log_prob(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        trace: Literal["auto", "exact", "hutchinson"] = "auto",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        solver: str = "dopri5",
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, str, tuple[str, ...]]:
        r"""The log-likelihood of ``x`` (data as given) under this model's probability-flow
        ODE (:func:`~ppgen.models.diffusion.probability_flow.probability_flow_log_prob`): the
        model the deterministic samplers (DDIM, DPM-Solver++, Heun) draw from in the limit of
        many steps, a different model from the ancestral chain :meth:`elbo` bounds.

        Continuous data: the density of the data as given (the standardization's Jacobian
        counted), ``"exact"`` up to the solver's tolerances with the exact trace, an
        ``"estimate"`` (unbiased) with Hutchinson's. Discrete data: uniformly dequantized inside
        each level's bin of width :math:`2/(L-1)` in [-1, 1], so
        :math:`\log P(v) \ge \mathbb E_u \log p(y_v + u) + D \log(2/(L-1))`, a
        ``"lower_bound"`` (Jensen; one draw of u per example). The predicted x0 is not
        clipped: clipping would make the vector field non-smooth.

        Select it through ``ppgen.evaluate(m, data, estimator="ode", rtol=1e-5)``.

        Arguments:
            x: data ``(N, *event_shape)`` as given.
            context: must be None.
            trace: ``"exact"``, ``"hutchinson"``, or ``"auto"`` (exact up to
                :data:`~ppgen.models.diffusion.probability_flow.EXACT_TRACE_MAX_DIMS`
                dimensions).
            rtol, atol: the adaptive solver's tolerances.
            solver: a ``torchdiffeq`` method (``"dopri5"``...).
            generator: the random generator of the dequantization and Hutchinson's probe.

        Returns:
            ``(log-likelihoods in nats (N,), kind, notes)``.
        """
        self._check_context(context)
        self._check_x(x)
        cfg = self.config
        if trace == "auto":
            trace = "exact" if cfg.num_dims <= EXACT_TRACE_MAX_DIMS else "hutchinson"
        if trace not in ("exact", "hutchinson"):
            raise ValueError(f"trace must be 'auto', 'exact' or 'hutchinson', got {trace!r}")
        for name, tol in (("rtol", rtol), ("atol", atol)):
            if isinstance(tol, bool) or not (
                isinstance(tol, int | float) and math.isfinite(tol) and tol > 0
            ):
                raise ValueError(f"{name} must be a positive number, got {tol!r}")
        if solver not in ADAPTIVE_SOLVERS:
            raise ValueError(
                f"solver must be an adaptive torchdiffeq method, one of {ADAPTIVE_SOLVERS} "
                f"(the tolerances are what make the likelihood exact), got {solver!r}"
            )
        if cfg.kind == "continuous":
            y0 = self._encode(x)
            jacobian = -self.data_scale.log().sum().expand(x.shape[0])
        else:
            assert cfg.levels is not None
            half = 1.0 / (cfg.levels - 1)
            u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            y0 = self._encode(x) + half * (2 * u - 1)
            jacobian = x.new_full((x.shape[0],), cfg.num_dims * math.log(2 * half))
        lp, nfe = probability_flow_log_prob(
            self.schedule, self._continuous_denoiser(), y0,
            parameterization=cfg.parameterization, trace=trace, rtol=rtol, atol=atol,
            solver=solver, generator=generator,
        )
        if cfg.kind == "continuous":
            kind = "exact" if trace == "exact" else "estimate"
        else:
            kind = "lower_bound"
        what = {
            "exact": "exact up to the solver's tolerances (exact trace)",
            "estimate": "an unbiased estimate (Hutchinson's trace, one probe per example)",
            "lower_bound": "a lower bound on the discrete likelihood (uniform dequantization, "
            f"{trace} trace)",
        }[kind]
        notes = (
            f"probability-flow ODE likelihood, {what}: {solver} with rtol={rtol:g}, "
            f"atol={atol:g}; {nfe} function evaluations for a batch of {x.shape[0]}",
        )
        return lp + jacobian, kind, notes

    # ---- training -----------------------------------------------------------------------------

    def denoising_loss(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        loss: LossKind | None = None,
        vlb_weight: float = 1e-3,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""Per-example training loss at one uniformly drawn time per example, ``(N,)``.

        - ``"simple"``: :math:`\|f_\theta(x_t, t) - \text{target}\|^2` averaged over dimensions,
          the target being :math:`\epsilon`, :math:`x_0` or :math:`v` by parameterization
          (Ho et al. :math:`L_\text{simple}`);
        - ``"vlb"``: the bound's term at that time, :math:`L_{t-1}` (or :math:`L_0` at t = 1),
          per dimension: an unbiased estimate of :math:`L_\text{vlb} / (T D)` up to the
          constant :math:`L_T`;
        - ``"hybrid"``: ``simple + vlb_weight * vlb`` with the mean detached inside the vlb term,
          so the bound trains only the variances (Nichol & Dhariwal, section 3.1).

        Arguments:
            x: a batch of data as given.
            context: must be None.
            loss: the loss; default ``"hybrid"`` with learned variances, else ``"simple"``.
            vlb_weight: :math:`\lambda` of the hybrid loss.
            generator: random generator for times and noise (default: torch's global one).
        """
        self._check_context(context)
        loss = loss or ("hybrid" if self.config.variance == "learned" else "simple")
        if loss not in ("simple", "vlb", "hybrid"):
            raise ValueError(f"loss must be 'simple', 'vlb' or 'hybrid', got {loss!r}")
        if loss == "hybrid" and self.config.variance != "learned":
            raise ValueError(
                "the hybrid loss trains learned variances: build with variance='learned'"
            )
        T, k, s = self.config.timesteps, len(self.event_shape), self.schedule
        y0 = self._encode(x)
        n = y0.shape[0]
        t = torch.randint(1, T + 1, (n,), generator=generator, device=y0.device)
        eps = torch.randn(y0.shape, generator=generator, dtype=y0.dtype, device=y0.device)
        x_t = s.add_noise(y0, eps, t)
        pred, raw = self._network(x_t, t)
        p = self.config.parameterization
        target = eps if p == "epsilon" else y0 if p == "x0" else s.velocity(y0, eps, t)
        simple = (pred - target).pow(2).flatten(-k).mean(-1)
        if loss == "simple":
            if raw is not None:  # keep the variance head in the graph (no gradient signal)
                simple = simple + 0.0 * raw.flatten(-k).mean(-1)
            return simple
        # the bound's term at t, with the network's own (unclipped) x0: a training loss
        mean_p, log_var_p = self._reverse_from(
            pred.detach() if loss == "hybrid" else pred, raw, x_t, t, clip=False
        )
        vlb = self._terms_from(mean_p, log_var_p, y0, x, x_t, t) / self.config.num_dims
        return vlb if loss == "vlb" else simple + vlb_weight * vlb

    def fit_defaults(self) -> dict[str, Any]:
        """EMA of the weights (decay 0.995: a half-life of about 140 steps, right for runs of a
        few thousand steps; raise it for long runs), Adam at 1e-3, gradients clipped at 1."""
        return {"ema": 0.995, "lr": 1e-3, "clip_grad": 1.0}

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Standardize continuous data with this batch's per-dimension mean and std."""
        if self.config.kind == "continuous" and self.config.standardize and x.shape[0] > 1:
            self.data_loc.copy_(x.mean(0))
            self.data_scale.copy_(x.std(0).clamp_min(1e-3))

    # ---- sampling -----------------------------------------------------------------------------

    @torch.no_grad()
    def _sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
        sampler: Sampler | None = None,
        sampling_steps: int | None = None,
        eta: float | None = None,
        spacing: SpacingChoice | None = None,
    ) -> Tensor:
        """Draw ``n`` points in data units (levels for discrete data), ``(n, *event_shape)``.

        Arguments:
            n: the number of points.
            seed: seeds a generator on the model's device (else ``generator``, else torch's).
            generator: the random generator.
            context: must be None.
            sampler: ``"ddpm"`` (ancestral; with all T steps exactly the model's distribution,
                the one :meth:`elbo` bounds; with fewer, the respaced chain of Nichol & Dhariwal),
                ``"ddim"`` (Song et al.; ``eta=0`` deterministic given x_T), or a deterministic
                solver of the probability-flow ODE: ``"dpm++2m"`` (DPM-Solver++(2M), Lu et al.
                2022) or ``"heun"`` (EDM, Karras et al. 2022). Default: the config's.
            sampling_steps: the number of steps (default: the config's, else T for DDPM,
                min(50, T) for DDIM, min(10, T) for the ODE solvers); network calls are the
                steps, but ``2 steps - 1`` for Heun.
            eta: DDIM's noise level (default: the config's ``eta``).
            spacing: the ODE solvers' time grid, ``"uniform"``, ``"quadratic"`` or
                ``"karras"`` (default: the config's, else quadratic for DPM-Solver++ and uniform
                for Heun, the best of the three for each on moons at about 10 network calls,
                docs/benchmarks.md); DDPM and DDIM use their trailing integer grid and take none.
        """
        self._check_context(context)
        cfg = self.config
        sampler = sampler or cfg.sampler
        eta = cfg.eta if eta is None else float(eta)
        if sampler not in ("ddpm", "ddim", "dpm++2m", "heun"):
            raise ValueError(
                f"sampler must be 'ddpm', 'ddim', 'dpm++2m' or 'heun', got {sampler!r}"
            )
        ode = sampler in ("dpm++2m", "heun")
        if spacing is not None and not ode:
            raise ValueError(
                f"spacing={spacing!r} applies to the ODE samplers ('dpm++2m', 'heun'); "
                f"sampler={sampler!r} uses its own integer grid: drop spacing"
            )
        spacing = spacing or cfg.spacing or ("uniform" if sampler == "heun" else "quadratic")
        if spacing not in ("uniform", "quadratic", "karras"):
            raise ValueError(
                f"spacing must be 'uniform', 'quadratic' or 'karras', got {spacing!r}"
            )
        default_steps = {"ddpm": cfg.timesteps, "ddim": 50}.get(sampler, 10)
        steps = sampling_steps or cfg.sampling_steps or min(default_steps, cfg.timesteps)
        if not 1 <= steps <= cfg.timesteps or n < 1:
            raise ValueError(
                f"need n >= 1 and 1 <= sampling_steps <= {cfg.timesteps}, got {n}, {steps}"
            )
        device, dtype = self.data_loc.device, self.data_loc.dtype
        generator = self.sampling_generator(seed, generator)
        x = torch.randn((n, *self.event_shape), generator=generator, device=device, dtype=dtype)
        options = {"parameterization": cfg.parameterization, "clip": self._clip}
        if ode:
            solve = sample_heun if sampler == "heun" else sample_dpmpp_2m
            x = solve(self.schedule, self._continuous_denoiser(), x, steps, spacing=spacing,
                      **options)
            return self._decode(x)
        denoise = self._denoiser(self._times(x))
        if sampler == "ddpm":
            variance: Any = cfg.variance
            x = sample_ddpm(
                self.schedule, denoise, x, steps, generator, variance=variance, **options
            )
        else:
            x = sample_ddim(self.schedule, denoise, x, steps, eta, generator, **options)
        return self._decode(x)

    # ---- the chain opened up for RePaint (ppgen.models.conditioning.ReverseDiffusion) ------

    @property
    def diffusion_timesteps(self) -> int:
        return self.config.timesteps

    def to_chain(self, x: Tensor) -> Tensor:
        return self._encode(x)

    def from_chain(self, y: Tensor) -> Tensor:
        return self._decode(y)

    def forward_noise(
        self, y: Tensor, s: int, t: int, generator: torch.Generator | None
    ) -> Tensor:
        ab = self.schedule._host["alphas_cumprod"]
        ratio = ab[t] / ab[s]
        eps = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return math.sqrt(ratio) * y + math.sqrt(max(1.0 - ratio, 0.0)) * eps

    def reverse_step(self, y: Tensor, t: int, generator: torch.Generator | None) -> Tensor:
        mean, log_var = self._reverse(y, t)
        eps = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return mean + _std(log_var, mean) * eps


def _std(log_var: Tensor | float, like: Tensor) -> Tensor:
    """exp(log_var / 2) as a tensor on ``like``'s device and dtype."""
    if isinstance(log_var, Tensor):
        return (0.5 * log_var).exp()
    return like.new_tensor(math.exp(0.5 * log_var))


def _std_of(std: Tensor | float, like: Tensor) -> Tensor:
    return std if isinstance(std, Tensor) else like.new_tensor(std)
