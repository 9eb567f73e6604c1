r"""The noise schedule of a diffusion model: the forward process and its closed forms.

The forward (noising) process of Ho et al. (2020) is the Markov chain

.. math:: q(x_t \mid x_{t-1}) = \mathcal{N}(\sqrt{1 - \beta_t}\, x_{t-1}, \beta_t I),
    \qquad t = 1, \dots, T,

whose marginals and posteriors are Gaussian in closed form, with
:math:`\alpha_t = 1 - \beta_t` and :math:`\bar\alpha_t = \prod_{s \le t} \alpha_s`:

.. math:: q(x_t \mid x_0) = \mathcal{N}(\sqrt{\bar\alpha_t}\, x_0, (1 - \bar\alpha_t) I),
.. math:: q(x_{t-1} \mid x_t, x_0) = \mathcal{N}(\tilde\mu_t(x_t, x_0), \tilde\beta_t I),\quad
    \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\beta_t}{1-\bar\alpha_t} x_0
    + \frac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t} x_t,\quad
    \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t.

:class:`NoiseSchedule` holds these coefficients, computed once in float64 and stored as buffers
(so ``.to(device)`` moves them), indexed by the integer time ``t = 0..T`` (``t = 0`` is the data:
:math:`\bar\alpha_0 = 1`). Like diffusers' schedulers it is self-contained: it never calls the
network; the model hands it the network's noise prediction (``step``, ``ddim_step``).
"""

from __future__ import annotations

__all__ = ["KARRAS_RHO", "NoiseSchedule", "ScheduleError", "Spacing"]

import bisect
import math
from typing import Literal

import torch
from torch import Tensor, nn

from ppgen.models.base import building_on_meta as _building_on_meta

ScheduleKind = Literal["linear", "cosine"]
VarianceKind = Literal["small", "large"]
Spacing = Literal["uniform", "quadratic", "karras"]
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. (5) and table 1


class ScheduleError(ValueError):
    """An invalid noise schedule (non-increasing noise, betas outside (0, 1], a zero terminal SNR
    the parameterization cannot use)."""


# the per-step tables a schedule holds as buffers (their order is the table's below)
_TABLE = (
    "betas", "alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "posterior_variance", "posterior_log_variance", "log_betas", "large_log_variance",
    "posterior_mean_coef_x0", "posterior_mean_coef_xt",
)


def _linear_betas(timesteps: int, beta_start: float, beta_end: float) -> Tensor:
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def _cosine_betas(timesteps: int, s: float, max_beta: float) -> Tensor:
    # Nichol & Dhariwal 2021, eq. (17): alpha_bar(t) = f(t) / f(0),
    # f(t) = cos^2((t / T + s) / (1 + s) pi / 2)
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def _zero_terminal_snr(betas: Tensor) -> Tensor:
    # Lin et al. 2023 (arXiv:2305.08891), Algorithm 1: shift and scale sqrt(alpha_bar) so that
    # sqrt(alpha_bar_T) = 0 while sqrt(alpha_bar_1) keeps its value.
    root = torch.cumprod(1 - betas, 0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    alpha_bar = root**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


class NoiseSchedule(nn.Module):
    r"""A discrete-time variance-preserving noise schedule with its precomputed coefficients.

    Arguments:
        timesteps: T, the number of noising steps (at least 2).
        kind: ``"linear"`` (Ho et al. 2020: betas from ``beta_start`` to ``beta_end``) or
            ``"cosine"`` (Nichol & Dhariwal 2021, offset ``s = 0.008``).
        beta_start, beta_end: the linear schedule's end points; default ``1e-4 * 1000 / T`` and
            ``0.02 * 1000 / T`` (Ho et al.'s values, rescaled so any T adds the same noise).
        max_beta: the cap keeping every beta below 1 (default 0.999).
        zero_terminal_snr: rescale so that :math:`\bar\alpha_T = 0` exactly (Lin et al. 2023);
            then :math:`\beta_T = 1` and the prior term of the bound vanishes. Usable only with
            ``x0`` or ``v`` prediction (epsilon prediction cannot recover x0 at zero SNR).
        alphas_cumprod: build from given :math:`\bar\alpha_1 > \dots > \bar\alpha_T` instead
            (used to respace a schedule); overrides every other choice.

    Buffers (float, length T + 1, indexed by t, entry 0 for the data):
        ``betas``, ``alphas_cumprod``, ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``,
        ``posterior_variance`` (:math:`\tilde\beta_t`), ``posterior_log_variance`` (its log,
        with entry 1 replaced by entry 2, as in Nichol & Dhariwal, since
        :math:`\tilde\beta_1 = 0`), ``log_betas``, ``large_log_variance`` (:math:`\log\beta_t`
        with entry 1 replaced like the posterior's),
        ``posterior_mean_coef_x0``, ``posterior_mean_coef_xt``.

    Shapes:
        ``t`` is a Python int or a long tensor broadcasting against the leading (batch) dims of
        ``x``: ``(N,)`` for ``x`` of shape ``(N, *event_shape)``.

    References:
        Ho, Jain, Abbeel. Denoising Diffusion Probabilistic Models. arXiv:2006.11239.
        Nichol, Dhariwal. Improved Denoising Diffusion Probabilistic Models. arXiv:2102.09672.
        Song, Meng, Ermon. Denoising Diffusion Implicit Models. arXiv:2010.02502.
        Lin et al. Common Diffusion Noise Schedules and Sample Steps are Flawed. arXiv:2305.08891.

    Example:
        >>> s = NoiseSchedule(100, "cosine")
        >>> bool((s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all())
        True
        >>> x0 = torch.zeros(4, 2)
        >>> s.add_noise(x0, torch.ones(4, 2), torch.tensor([1, 2, 3, 100])).shape
        torch.Size([4, 2])
    """

    def __init__(
        self,
        timesteps: int,
        kind: ScheduleKind = "linear",
        *,
        beta_start: float | None = None,
        beta_end: float | None = None,
        max_beta: float = 0.999,
        zero_terminal_snr: bool = False,
        alphas_cumprod: Tensor | None = None,
    ) -> None:
        super().__init__()
        if alphas_cumprod is None and _building_on_meta():
            self._meta_placeholders(timesteps, kind, zero_terminal_snr)
            return
        if alphas_cumprod is not None:
            ab = alphas_cumprod.detach().to(torch.float64).cpu()
            betas = 1 - torch.cat([ab[:1], ab[1:] / ab[:-1]])
            timesteps = len(ab)
        else:
            if timesteps < 2:
                raise ScheduleError(f"timesteps must be at least 2, got {timesteps}")
            if not 0 < max_beta < 1:
                raise ScheduleError(f"max_beta must lie in (0, 1), got {max_beta}")
            if kind == "linear":
                scale = 1000 / timesteps
                start = beta_start if beta_start is not None else 1e-4 * scale
                end = beta_end if beta_end is not None else 0.02 * scale
                betas = _linear_betas(timesteps, start, end).clamp(max=max_beta)
            elif kind == "cosine":
                betas = _cosine_betas(timesteps, 0.008, max_beta)
            else:
                raise ScheduleError(f"unknown schedule {kind!r}; use 'linear' or 'cosine'")
            if zero_terminal_snr:
                betas = _zero_terminal_snr(betas)
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ScheduleError(
                "every beta must lie in (0, 1] so that alpha_bar strictly decreases; got "
                f"min {float(betas.min()):.3g}, max {float(betas.max()):.3g} "
                "(check beta_start/beta_end)"
            )
        if bool((betas[:-1] >= 1).any()):
            raise ScheduleError("only the terminal beta may equal 1 (zero terminal SNR)")
        self.timesteps = timesteps
        self.kind = kind
        self.zero_terminal_snr = bool(betas[-1] == 1)

        # 1. the forward process, in float64, with t = 0 (the data) in front
        betas = torch.cat([betas.new_zeros(1), betas])
        alphas = 1 - betas
        ab = torch.cumprod(alphas, 0)
        ab[-1] = 0.0 if self.zero_terminal_snr else ab[-1]
        flat = (ab[1:] >= ab[:-1]).nonzero().flatten()
        if len(flat):  # a beta below float64's resolution at 1: 1 - ab_t = 0 divides below
            t = int(flat[0]) + 1
            raise ScheduleError(
                f"alpha_bar does not decrease at t={t} in float64 (beta_{t} = "
                f"{float(betas[t]):.3g} is too small to change it); raise beta_start"
            )
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        # 2. the posterior q(x_{t-1} | x_t, x_0), eq. (6)-(7) of Ho et al.
        post_var = torch.zeros_like(betas)
        post_var[1:] = betas[1:] * (1 - ab_prev[1:]) / (1 - ab[1:])
        coef_x0 = torch.zeros_like(betas)
        coef_xt = torch.zeros_like(betas)
        coef_x0[1:] = ab_prev[1:].sqrt() * betas[1:] / (1 - ab[1:])
        coef_xt[1:] = alphas[1:].sqrt() * (1 - ab_prev[1:]) / (1 - ab[1:])
        # tilde-beta_1 = 0: the decoder at t = 1 uses tilde-beta_2 instead (Nichol & Dhariwal)
        clipped = post_var.clone()
        clipped[1] = post_var[2] if timesteps >= 2 else betas[1]
        clipped[0] = clipped[1]
        log_post_var = clipped.log()
        large = betas.clone()
        large[:2] = clipped[1]
        log_betas = betas.clone()
        log_betas[0] = betas[1]
        table = {
            "betas": betas,
            "alphas_cumprod": ab,
            "sqrt_alphas_cumprod": ab.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - ab).sqrt(),
            "posterior_variance": post_var,
            "posterior_log_variance": log_post_var,
            "log_betas": log_betas.log(),
            "large_log_variance": large.log(),
            "posterior_mean_coef_x0": coef_x0,
            "posterior_mean_coef_xt": coef_xt,
        }
        assert tuple(table) == _TABLE
        for name, value in table.items():
            self.register_buffer(name, value.to(torch.get_default_dtype()), persistent=False)
        # Python floats (float64) for the samplers' scalar steps: no tensor indexing per step.
        self._host = {name: value.tolist() for name, value in table.items()}
        self._ddpm = [self._ddpm_coefficients(t) for t in range(timesteps + 1)]
        self._ddim: dict[tuple[int, int, float], tuple[float, ...]] = {}

    def _meta_placeholders(self, timesteps: int, kind: str, zero_terminal_snr: bool) -> None:
        """The buffers' shapes without their values, for a size count on the meta device."""
        self.timesteps, self.kind, self.zero_terminal_snr = timesteps, kind, zero_terminal_snr
        for name in _TABLE:
            self.register_buffer(name, torch.empty(timesteps + 1), persistent=False)
        self._host: dict[str, list[float]] = {}
        self._ddpm: list[tuple[float, ...]] = []
        self._ddim = {}

    def _ddpm_coefficients(self, t: int) -> tuple[float, ...]:
        """Per-step floats of :meth:`step`: (a, b) of the mean from eps, eq. (11); sqrt(ab_t)
        and sqrt(1 - ab_t); the posterior coefficients (c0, c1); the small and large sds."""
        h = self._host
        if t == 0:
            return (math.nan,) * 8
        alpha, s1 = 1 - h["betas"][t], h["sqrt_one_minus_alphas_cumprod"][t]
        sa = h["sqrt_alphas_cumprod"][t]
        a = 1 / math.sqrt(alpha) if alpha > 0 else math.inf
        b = a * h["betas"][t] / s1
        c0, c1 = h["posterior_mean_coef_x0"][t], h["posterior_mean_coef_xt"][t]
        sd_small = math.exp(0.5 * h["posterior_log_variance"][t])
        sd_large = math.exp(0.5 * h["large_log_variance"][t])
        return a, b, sa, s1, c0, c1, sd_small, sd_large

    # ---- helpers --------------------------------------------------------------------------------

    def _at(self, name: str, t: int | Tensor, like: Tensor) -> Tensor | float:
        """Coefficient ``name`` at ``t``: a float for an int ``t``, else a tensor shaped to
        broadcast against ``like`` (``t.shape`` followed by ones)."""
        if isinstance(t, int):
            return self._host[name][t]
        buf = getattr(self, name)[t]
        return buf.reshape(*t.shape, *([1] * (like.dim() - t.dim()))).to(like.dtype)

    def extra_repr(self) -> str:
        snr = ", zero_terminal_snr=True" if self.zero_terminal_snr else ""
        return f"timesteps={self.timesteps}, kind={self.kind!r}{snr}"

    # ---- the forward process ------------------------------------------------------------------

    def add_noise(self, x0: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
        r"""A draw of :math:`x_t \sim q(x_t \mid x_0)` from the noise ``noise``:
        :math:`\sqrt{\bar\alpha_t} x_0 + \sqrt{1 - \bar\alpha_t} \epsilon` (eq. 4)."""
        return (
            self._at("sqrt_alphas_cumprod", t, x0) * x0
            + self._at("sqrt_one_minus_alphas_cumprod", t, x0) * noise
        )

    def velocity(self, x0: Tensor, noise: Tensor, t: int | Tensor) -> Tensor:
        r"""The v-prediction target :math:`\sqrt{\bar\alpha_t}\epsilon - \sqrt{1-\bar\alpha_t}x_0`
        (Salimans & Ho 2022, arXiv:2202.00512)."""
        return (
            self._at("sqrt_alphas_cumprod", t, x0) * noise
            - self._at("sqrt_one_minus_alphas_cumprod", t, x0) * x0
        )

    def marginal(self, x0: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor | float]:
        r"""Mean and standard deviation of :math:`q(x_t \mid x_0)`."""
        return self._at("sqrt_alphas_cumprod", t, x0) * x0, self._at(
            "sqrt_one_minus_alphas_cumprod", t, x0
        )

    def posterior(self, x0: Tensor, x_t: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor | float]:
        r"""Mean and variance of :math:`q(x_{t-1} \mid x_t, x_0)` for :math:`t \ge 1`
        (eq. 6-7; the variance is 0 at t = 1)."""
        mean = (
            self._at("posterior_mean_coef_x0", t, x_t) * x0
            + self._at("posterior_mean_coef_xt", t, x_t) * x_t
        )
        return mean, self._at("posterior_variance", t, x_t)

    # ---- conversions between the three parameterizations --------------------------------------

    def predict_x0(self, eps: Tensor, t: int | Tensor, x_t: Tensor) -> Tensor:
        r""":math:`\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\hat\epsilon) / \sqrt{\bar\alpha_t}`
        (eq. 15); undefined at zero SNR."""
        return (x_t - self._at("sqrt_one_minus_alphas_cumprod", t, x_t) * eps) / self._at(
            "sqrt_alphas_cumprod", t, x_t
        )

    def predict_eps(self, x0: Tensor, t: int | Tensor, x_t: Tensor) -> Tensor:
        r""":math:`\hat\epsilon = (x_t - \sqrt{\bar\alpha_t}\hat x_0) / \sqrt{1-\bar\alpha_t}`."""
        return (x_t - self._at("sqrt_alphas_cumprod", t, x_t) * x0) / self._at(
            "sqrt_one_minus_alphas_cumprod", t, x_t
        )

    def x0_from_velocity(self, v: Tensor, t: int | Tensor, x_t: Tensor) -> Tensor:
        r""":math:`\hat x_0 = \sqrt{\bar\alpha_t} x_t - \sqrt{1-\bar\alpha_t}\hat v`."""
        return (
            self._at("sqrt_alphas_cumprod", t, x_t) * x_t
            - self._at("sqrt_one_minus_alphas_cumprod", t, x_t) * v
        )

    def reverse_log_variance(
        self, t: int | Tensor, variance: VarianceKind, like: Tensor, frac: Tensor | None = None
    ) -> Tensor | float:
        r"""Log-variance of the reverse step :math:`p(x_{t-1} \mid x_t)`: ``"small"``
        :math:`\log\tilde\beta_t`, ``"large"`` :math:`\log\beta_t` (both clipped at t = 1), or,
        given ``frac`` in [0, 1], the learned interpolation
        :math:`\text{frac}\log\beta_t + (1-\text{frac})\log\tilde\beta_t` (iDDPM eq. 15)."""
        small = self._at("posterior_log_variance", t, like)
        if frac is not None:
            return frac * self._at("log_betas", t, like) + (1 - frac) * small
        return small if variance == "small" else self._at("large_log_variance", t, like)

    # ---- samplers' steps ----------------------------------------------------------------------

    def step(
        self,
        eps: Tensor | None,
        t: int,
        x_t: Tensor,
        generator: torch.Generator | None = None,
        *,
        x0: Tensor | None = None,
        variance: VarianceKind | Tensor = "small",
        clip: float | None = None,
        out: Tensor | None = None,
        scratch: Tensor | None = None,
    ) -> Tensor:
        r"""One ancestral step :math:`x_{t-1} \sim p(x_{t-1} \mid x_t)` (Ho et al. Algorithm 2).

        The mean is :math:`\tilde\mu_t(x_t, \hat x_0)` with :math:`\hat x_0` from ``eps``
        (eq. 15) or given as ``x0``, clamped to ``[-clip, clip]`` when ``clip`` is set. At t = 1
        the noise is that of the decoder (variance :math:`\tilde\beta_2`), so a loop over
        t = T..1 draws exactly from the model.

        Arguments:
            eps: the network's noise prediction at ``(x_t, t)`` (None when ``x0`` is given).
            t: the current time, ``1 <= t <= T``.
            x_t: the current state.
            generator: the random generator of the noise.
            x0: the predicted clean data instead of ``eps`` (x0- and v-parameterizations).
            variance: ``"small"``, ``"large"`` or a log-variance tensor (learned variances).
            clip: clamp the predicted x0 to ``[-clip, clip]`` (data scaled to [-1, 1]).
            out: a buffer shaped like ``x_t`` (not ``x_t`` itself) to write the result into.
            scratch: a buffer shaped like ``x_t`` for intermediate values.

        Returns:
            :math:`x_{t-1}` (``out`` when given).
        """
        a, b, sa, s1, c0, c1, sd_small, sd_large = self._ddpm[t]
        if x0 is None and eps is None:
            raise ValueError("step needs eps or x0")
        out = torch.empty_like(x_t) if out is None else out
        # 1. the noise, drawn straight into the result
        if isinstance(variance, Tensor):
            out.normal_(generator=generator).mul_(variance.mul(0.5).exp_())
        else:
            out.normal_(0.0, sd_small if variance == "small" else sd_large, generator=generator)
        # 2. the mean: eq. (11) from eps, or the posterior mean of the (clamped) x0, eq. (7)
        if x0 is None and clip is None:
            return out.add_(x_t, alpha=a).sub_(eps, alpha=b)
        if x0 is None:
            # sqrt(ab_t) x0 = x_t - s1 eps, clamped to sqrt(ab_t) [-clip, clip]: one pass fewer
            assert clip is not None
            tmp = torch.empty_like(x_t) if scratch is None else scratch
            u = torch.add(x_t, eps, alpha=-s1, out=tmp).clamp_(-clip * sa, clip * sa)
            return out.add_(u, alpha=c0 / sa).add_(x_t, alpha=c1)
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        return out.add_(x0, alpha=c0).add_(x_t, alpha=c1)

    def ddim_timesteps(self, steps: int) -> list[int]:
        """The ``steps`` times a DDIM/respaced sampler visits, from T down: "trailing" spacing
        (Lin et al. 2023, table 2), so the first step is at T and ``steps = T`` gives T..1."""
        if not 1 <= steps <= self.timesteps:
            raise ScheduleError(f"sampling steps must lie in [1, {self.timesteps}], got {steps}")
        ratio = self.timesteps / steps
        return [round(self.timesteps - i * ratio) for i in range(steps)]

    def ddim_step(
        self,
        eps: Tensor | None,
        t: int,
        s: int,
        x_t: Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        *,
        x0: Tensor | None = None,
        clip: float | None = None,
        out: Tensor | None = None,
        scratch: Tensor | None = None,
    ) -> Tensor:
        r"""One DDIM step from time ``t`` to an earlier time ``s`` (Song et al. eq. 12):

        .. math:: x_s = \sqrt{\bar\alpha_s}\hat x_0
            + \sqrt{1 - \bar\alpha_s - \sigma^2}\hat\epsilon + \sigma z,\quad
            \sigma = \eta\sqrt{\tfrac{1-\bar\alpha_s}{1-\bar\alpha_t}}
            \sqrt{1 - \tfrac{\bar\alpha_t}{\bar\alpha_s}}.

        When ``clip`` is set, :math:`\hat x_0` is clamped and :math:`\hat\epsilon` recomputed
        from the clamped :math:`\hat x_0`, so the step stays on the data's range (the
        recomputation is what keeps 50-step sampling of digits stable). Given ``x0`` instead of
        ``eps``, :math:`\hat\epsilon` is always computed from it.

        Arguments:
            eps: the network's noise prediction at ``(x_t, t)`` (None when ``x0`` is given).
            t, s: the current and the next time, ``0 <= s < t <= T``.
            x_t: the current state.
            eta: 0 for the deterministic DDIM, 1 for the DDPM posterior variance.
            generator: the random generator of the noise (used only when ``eta > 0``).
            x0: the predicted clean data instead of ``eps`` (x0- and v-parameterizations).
            clip: clamp the predicted x0 to ``[-clip, clip]``.
            out: a buffer shaped like ``x_t`` (not ``x_t`` itself) to write the result into.
            scratch: a buffer shaped like ``x_t`` for the noise.

        Returns:
            :math:`x_s` (``out`` when given).
        """
        if x0 is None and eps is None:
            raise ValueError("ddim_step needs eps or x0")
        key = (t, s, float(eta))
        coef = self._ddim.get(key)
        if coef is None:
            coef = self._ddim[key] = self._ddim_coefficients(t, s, eta)
        sa_s, direct_x, direct_eps, inv_sa, s1_over_sa, k_x0, k_xt, sigma = coef
        out = torch.empty_like(x_t) if out is None else out
        if x0 is None and clip is None:
            # x_s = sqrt(ab_s) (x_t - s1_t eps) / sa_t + direction eps
            torch.mul(x_t, direct_x, out=out).add_(eps, alpha=direct_eps)
        else:
            # x0 (clamped); eps' = (x_t - sa_t x0) / s1_t; x_s = sa_s x0 + direction eps'
            #   = (sa_s - direction sa_t / s1_t) x0 + (direction / s1_t) x_t
            if x0 is None:  # sqrt(ab_t) x0 = x_t - s1 eps, clamped to sqrt(ab_t) [-clip, clip]
                assert clip is not None
                sa_t = 1 / inv_sa
                torch.add(x_t, eps, alpha=-s1_over_sa * sa_t, out=out)
                out.clamp_(-clip * sa_t, clip * sa_t).mul_(k_x0 * inv_sa)
            else:
                out.copy_(x0)
                if clip is not None:
                    out.clamp_(-clip, clip)
                out.mul_(k_x0)
            out.add_(x_t, alpha=k_xt)
        if sigma > 0:
            z = torch.empty_like(x_t) if scratch is None else scratch
            out.add_(z.normal_(generator=generator), alpha=sigma)
        return out

    def _ddim_coefficients(self, t: int, s: int, eta: float) -> tuple[float, ...]:
        h = self._host
        if not 0 <= s < t <= self.timesteps:
            raise ScheduleError(
                f"a DDIM step needs 0 <= s < t <= {self.timesteps}, got {t} -> {s}"
            )
        ab_t, ab_s = h["alphas_cumprod"][t], h["alphas_cumprod"][s]
        sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s)) if eta > 0 else 0.0
        direction = math.sqrt(max(1 - ab_s - sigma**2, 0.0))
        sa_t, s1_t, sa_s = math.sqrt(ab_t), math.sqrt(1 - ab_t), math.sqrt(ab_s)
        inv_sa = 1 / sa_t if sa_t > 0 else math.inf
        direct_x = sa_s * inv_sa
        direct_eps = direction - sa_s * s1_t * inv_sa
        return (
            sa_s,
            direct_x,
            direct_eps,
            inv_sa,
            s1_t * inv_sa,
            sa_s - direction * sa_t / s1_t,
            direction / s1_t,
            sigma,
        )

    # ---- continuous time: the ODE samplers and the probability-flow likelihood ------------------

    def _log_sigmas(self) -> list[float]:
        r""":math:`\log\sigma_t` for t = 0..T, :math:`\sigma_t = \sqrt{(1-\bar\alpha_t)/
        \bar\alpha_t}` (the noise-to-signal ratio of EDM's variance-exploding form; entry 0 is
        -inf, entry T +inf at zero terminal SNR), computed once from the float64 table."""
        cached = self.__dict__.get("_log_sigma_table")
        if cached is None:
            ab = self._host["alphas_cumprod"]
            cached = [
                -math.inf if a >= 1 else math.inf if a <= 0 else 0.5 * math.log((1 - a) / a)
                for a in ab
            ]
            self.__dict__["_log_sigma_table"] = cached
        return cached

    def sigma_at(self, t: float) -> float:
        r""":math:`\sigma(t)`, continuous in ``t`` in [0, T]: the table's value at integer t,
        :math:`\log\sigma` linear between integers (diffusers' interpolation of
        ``log_sigmas``), and linear in t from :math:`\sigma(0) = 0` to :math:`\sigma_1` below
        t = 1 (where the network was never trained; only the probability-flow ODE goes there).
        The ODE samplers and :meth:`time_at` use this one map, so a sampler fed the exact noise
        prediction integrates the exact probability-flow ODE."""
        log_sigma, T = self._log_sigmas(), self.timesteps
        if not 0.0 <= t <= T:
            raise ScheduleError(f"time must lie in [0, {T}], got {t}")
        if t <= 1.0:
            return t * math.exp(log_sigma[1])
        lo = min(int(math.floor(t)), T - 1)
        w = t - lo
        a, b = log_sigma[lo], log_sigma[lo + 1]
        if w == 0.0:
            return math.exp(a)
        if w == 1.0 or math.isinf(b):
            return math.exp(b) if w == 1.0 else math.inf
        return math.exp((1 - w) * a + w * b)

    def alpha_sigma_at(self, t: float) -> tuple[float, float]:
        r""":math:`(\sqrt{\bar\alpha(t)}, \sqrt{1-\bar\alpha(t)})` at continuous time ``t``
        (from :meth:`sigma_at`: :math:`\bar\alpha = 1/(1+\sigma^2)`); exactly the table's
        values at integer t."""
        if float(t).is_integer():
            ab = self._host["alphas_cumprod"][int(t)]
            return math.sqrt(ab), math.sqrt(1 - ab)
        sigma = self.sigma_at(t)
        if math.isinf(sigma):
            return 0.0, 1.0
        alpha = 1 / math.sqrt(1 + sigma * sigma)
        return alpha, sigma * alpha

    def time_at(self, sigma: float) -> float:
        """The inverse of :meth:`sigma_at`: the time whose noise-to-signal ratio is ``sigma``
        (clamped to [0, T])."""
        log_sigma, T = self._log_sigmas(), self.timesteps
        if sigma <= 0.0:
            return 0.0
        s1 = math.exp(log_sigma[1])
        if sigma <= s1:
            return sigma / s1
        if sigma >= math.exp(log_sigma[T]):
            return float(T)
        ls = math.log(sigma)
        hi = bisect.bisect_left(log_sigma, ls, 1, T + 1)  # log_sigma[hi - 1] < ls <= [hi]
        a, b = log_sigma[hi - 1], log_sigma[hi]
        return hi - 1 + (ls - a) / (b - a)

    def sampling_times(self, steps: int, spacing: Spacing = "uniform") -> list[float]:
        r"""The ``steps + 1`` times :math:`T = t_0 > t_1 > \dots > t_K = 0` an ODE sampler visits
        (the network is called at :math:`t_0..t_{K-1}`; :math:`t_K = 0` is the data):

        - ``"uniform"``: :math:`t_i = T(1 - i/K)`, DDIM's trailing spacing
          (:meth:`ddim_timesteps`) before rounding;
        - ``"quadratic"``: :math:`t_i = 1 + (T-1)(1 - i/K)^2`, dense near the data (DDIM,
          Song et al. 2021, appendix D.2);
        - ``"karras"``: :math:`\sigma_i = (\sigma_{max}^{1/\rho} + \tfrac{i}{K-1}
          (\sigma_{min}^{1/\rho} - \sigma_{max}^{1/\rho}))^\rho`, :math:`\rho = 7`, between
          :math:`\sigma_{max} = \sigma_T` and :math:`\sigma_{min} = \sigma_1` (EDM, Karras et
          al. 2022, eq. 5), mapped to times by :meth:`time_at`.
        """
        T = self.timesteps
        if not 1 <= steps <= T:
            raise ScheduleError(f"sampling steps must lie in [1, {T}], got {steps}")
        if spacing == "uniform":
            times = [T * (1 - i / steps) for i in range(steps)]
        elif spacing == "quadratic":
            times = [1 + (T - 1) * (1 - i / steps) ** 2 for i in range(steps)]
        elif spacing == "karras":
            log_sigma = self._log_sigmas()
            if math.isinf(log_sigma[T]):
                raise ScheduleError(
                    "spacing='karras' needs a finite sigma_max, but this schedule has zero "
                    "terminal SNR; use spacing='uniform' or 'quadratic'"
                )
            hi, lo = math.exp(log_sigma[T]) ** (1 / KARRAS_RHO), math.exp(log_sigma[1]) ** (
                1 / KARRAS_RHO
            )
            ramp = [i / (steps - 1) if steps > 1 else 0.0 for i in range(steps)]
            times = [float(T)] + [
                self.time_at((hi + r * (lo - hi)) ** KARRAS_RHO) for r in ramp[1:]
            ]
        else:
            raise ScheduleError(
                f"spacing must be 'uniform', 'quadratic' or 'karras', got {spacing!r}"
            )
        return [*times, 0.0]

    def respaced(self, steps: int) -> tuple[NoiseSchedule, list[int]]:
        """A schedule over the ``steps`` times of :meth:`ddim_timesteps` (Nichol & Dhariwal,
        section 4): its :math:`\\bar\\alpha` are this schedule's at those times, so a network
        trained on this schedule denoises it (fed the original times, returned second, in
        increasing order)."""
        times = sorted(self.ddim_timesteps(steps))
        ab = torch.tensor([self._host["alphas_cumprod"][t] for t in times], dtype=torch.float64)
        new = NoiseSchedule(len(times), alphas_cumprod=ab)
        return new.to(buf_device(self)), times


def buf_device(module: nn.Module) -> torch.device:
    """The device of a module's first buffer (CPU when it has none)."""
    buf = next(module.buffers(), None)
    return buf.device if buf is not None else torch.device("cpu")
