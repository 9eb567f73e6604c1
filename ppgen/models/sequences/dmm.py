r"""``dmm``: the deep Markov model (Krishnan, Shalit & Sontag, AAAI 2017, arXiv:1609.09869).

.. math::
    z_t \sim \mathcal N\big(\mu(z_{t-1}), \operatorname{diag}\sigma^2(z_{t-1})\big),\quad
    x_t \sim p(x_t \mid \mathrm{emit}(z_t)), \qquad t = 1..T,\ z_0 \text{ learned}

with the *gated transition* of the paper,
:math:`g = \mathrm{sigmoid}(W_2\,\mathrm{relu}(W_1 z))`,
:math:`\tilde\mu = U_2\,\mathrm{relu}(U_1 z)`,
:math:`\mu = (1 - g) \odot (L z + b) + g \odot \tilde\mu`,
:math:`\sigma = \mathrm{softplus}(S\,\mathrm{relu}(\tilde\mu))`
(``L`` starts at the identity: a nearly linear model at first), an MLP emission (``hidden``
widths; a diagonal Gaussian for continuous data, Bernoulli for binary, a categorical over the
levels for discrete), and the paper's structured guide (``ST-R``): a GRU run *backwards*
over ``x`` gives
:math:`h_t` (summarizing :math:`x_{t:T}`), and the *combiner*
:math:`\tfrac12(\tanh(W z_{t-1} + b) + h_t)` gives the loc and scale of
:math:`q(z_t \mid z_{t-1}, x_{t:T})`.

Latent sites are ``"z_1"`` .. ``"z_T"``; the whole sequence is observed at the one site ``"x"``
(the emissions are independent given the states, so one site with event ``(T, D)`` is the same
model as T sites). ``likelihood = "bound"``: SVI fits the ELBO with KL annealing (``warmup``
steps of linear warm-up of the KL weight, the paper's annealing), and ``ppgen.evaluate`` reports
the IWAE bound, labelled ``lower_bound``.

Forecasting (:meth:`DMM.forecast_paths`) filters the latent state on the history with the
*guide as an importance proposal*: ``proposals`` draws of :math:`z_{1:L}` from the guide, each
weighted by :math:`p(x_{1:L}, z_{1:L}) / q(z_{1:L} \mid x_{1:L})`, resampled in proportion to
the weights (sampling-importance-resampling); the last state of a resampled draw is a draw from
the filtering distribution :math:`p(z_L \mid x_{1:L})` as the number of proposals grows (the
guide's backward RNN sees the whole history, so at the last step its smoothing and filtering
targets coincide). The model is then run forward.
"""

from __future__ import annotations

__all__ = ["DMM", "DMMConfig"]

import dataclasses
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppgen.models.base import ModelConfig, pyro_program
from ppgen.models.nets import MLP
from ppgen.models.sequences.common import SequenceModel

_MIN_SCALE = 1e-3
_SCALAR = torch.Size()


@dataclasses.dataclass(frozen=True, kw_only=True)
class DMMConfig(ModelConfig):
    """Configuration of :class:`DMM`.

    Arguments:
        latent: dimension of the state z_t.
        hidden: the emission MLP's widths (``[64, 64]``); the first is also the width of the
            transition's networks, the guide's GRU and the combiner.
        warmup: KL annealing: training steps over which the KL weight rises linearly from 0
            to 1 (0: none).
        proposals: guide draws per forecast path for the importance resampling of the filter.
    """

    latent: int = 8
    hidden: tuple[int, ...] = (64, 64)
    warmup: int = 0
    proposals: int = 16


class GatedTransition(nn.Module):
    """The DMM's gated transition ``z_{t-1} -> (loc, scale)`` of ``z_t`` (module docstring)."""

    def __init__(self, latent: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, latent))
        self.proposed = nn.Sequential(
            nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, latent)
        )
        self.linear = nn.Linear(latent, latent)
        self.scale = nn.Linear(latent, latent)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(latent))
            self.linear.bias.zero_()

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        g = torch.sigmoid(self.gate(z))
        proposed = self.proposed(z)
        loc = (1 - g) * self.linear(z) + g * proposed
        scale = F.softplus(self.scale(F.relu(proposed))) + _MIN_SCALE
        return loc, scale


class DMM(SequenceModel):
    """Deep Markov model: gated nonlinear transition, MLP emission, backward-GRU guide.

    Example:
        >>> import ppgen, numpy as np
        >>> ds = ppgen.datasets.from_series(np.sin(np.arange(300) / 4.0), window=12)
        >>> m = ppgen.build("dmm", ds, latent=2, hidden=[8])
        >>> ppgen.evaluate(m, ds.data[:3], num_particles=4).kind
        'lower_bound'
    """

    likelihood: ClassVar = "bound"
    Config: ClassVar = DMMConfig
    default_objective: ClassVar = "elbo"
    forecast_method: ClassVar = (
        "approximate: the guide as an importance proposal for the filtering distribution, "
        "resampled (sampling-importance-resampling)"
    )

    def __init__(self, config: DMMConfig | None = None, **fields: object) -> None:
        super().__init__(config, **fields)
        cfg = self.config
        zd, hd, d = cfg.latent, cfg.hidden[0], self.step_dims
        if cfg.kind == "continuous":
            out = 2 * d
        elif cfg.kind == "binary":
            out = d
        else:
            assert cfg.levels is not None
            out = d * cfg.levels
        self.z_0 = nn.Parameter(torch.zeros(zd))
        self.q_z_0 = nn.Parameter(torch.zeros(zd))
        self.transition = GatedTransition(zd, hd)
        self.emitter = MLP(zd, out, cfg.hidden)
        self.rnn = nn.GRU(d, hd, batch_first=True)
        self.combine_z = nn.Linear(zd, hd)
        self.combine_loc = nn.Linear(hd, zd)
        self.combine_scale = nn.Linear(hd, zd)

    def fit_defaults(self) -> dict[str, Any]:
        """KL annealing as configured (``warmup``)."""
        w = self.config.warmup
        return {"objective_options": {"warmup": w}} if w else {}

    # ---- the generative model -------------------------------------------------------------

    def _inputs(self, x: Tensor) -> Tensor:
        if self.config.kind == "continuous":
            return x
        assert self.config.levels is not None
        return x / (self.config.levels - 1)

    def emission(self, z: Tensor) -> dist.TorchDistribution:
        """p(x_t | z_t) for states ``(..., L, latent)``, batch ``(..., L)``, event ``(D,)``."""
        out = self.emitter(z)
        cfg, d = self.config, self.step_dims
        if cfg.kind == "continuous":
            loc, raw = out.split([d, d], -1)
            return dist.Normal(loc, F.softplus(raw) + _MIN_SCALE, validate_args=False).to_event(1)
        if cfg.kind == "binary":
            return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
        assert cfg.levels is not None
        return dist.Categorical(logits=out.unflatten(-1, (d, cfg.levels)),
                                validate_args=False).to_event(1)

    @pyro_program
    def model(self, x: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        n = 1 if x is None else x.shape[0]
        if x is not None:
            x = self._check_x(x).to(self.z_0.dtype)
        with pyro.plate("data", n):
            z = self.z_0.expand(n, self.config.latent)
            states = []
            for t in range(self.steps):
                loc, scale = self.transition(z)
                z = pyro.sample(f"z_{t + 1}", dist.Normal(loc, scale).to_event(1))
                states.append(z)
            px = self.emission(torch.stack(states, -2))  # batch (..., n, T), event (D,)
            px = px.to_event(1)  # event (T, D)
            if len(self.event_shape) != 2 or self.event_shape[1] != self.step_dims:
                px = _Reshaped(px, self.event_shape)
            return pyro.sample("x", px, obs=x)

    # ---- the guide ------------------------------------------------------------------------

    def _backward_states(self, x: Tensor) -> Tensor:
        """h_t summarizing x_t..x_T: a GRU over the reversed sequence, ``(N, L, hidden)``."""
        rev, _ = self.rnn(self._inputs(self._as_steps(x)).flip(1))
        return rev.flip(1)

    def _combine(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        c = 0.5 * (torch.tanh(self.combine_z(z)) + h)
        return self.combine_loc(c), F.softplus(self.combine_scale(c)) + _MIN_SCALE

    @pyro_program
    def guide(self, x: Tensor | None = None, context: Tensor | None = None) -> None:
        if x is None:
            raise ValueError("the DMM's guide is q(z | x): pass the observed sequences x")
        x = self._check_x(x).to(self.z_0.dtype)
        n = x.shape[0]
        h = self._backward_states(x)
        with pyro.plate("data", n):
            z = self.q_z_0.expand(n, self.config.latent)
            for t in range(self.steps):
                loc, scale = self._combine(z, h[:, t])
                z = pyro.sample(f"z_{t + 1}", dist.Normal(loc, scale).to_event(1))

    # ---- any length: scoring and forecasting ------------------------------------------------

    def _log_weights(self, x: Tensor, k: int, generator: torch.Generator | None
                     ) -> tuple[Tensor, Tensor]:
        """``k`` guide draws of the states for each sequence of ``x`` ``(N, L, D)`` in the
        network's input view and their log importance weights ``log p(x, z) - log q(z | x)``:
        ``((k, N), (k, N, latent))`` (the last state)."""
        n, length, _ = x.shape
        h = self.rnn(x.flip(1))[0].flip(1)
        zq = self.q_z_0.expand(k, n, self.config.latent)
        zp = self.z_0.expand(k, n, self.config.latent)
        log_w = x.new_zeros(k, n)
        states = []
        for t in range(length):
            qloc, qscale = self._combine(zq, h[:, t])
            eps = torch.randn(qloc.shape, generator=generator, device=x.device, dtype=x.dtype)
            z = qloc + qscale * eps
            ploc, pscale = self.transition(zp)
            log_w = log_w + dist.Normal(ploc, pscale).log_prob(z).sum(-1)
            log_w = log_w - dist.Normal(qloc, qscale).log_prob(z).sum(-1)
            states.append(z)
            zq = zp = z
        raw = self._raw(x)
        log_w = log_w + self.emission(torch.stack(states, -2)).log_prob(raw).sum(-1)
        return log_w, states[-1]

    def _raw(self, x_inputs: Tensor) -> Tensor:
        """Values in the network's input view back to the data's (levels for discrete data)."""
        if self.config.kind == "continuous":
            return x_inputs
        assert self.config.levels is not None
        return (x_inputs * (self.config.levels - 1)).round()

    def log_prob_series(self, x: Tensor, num_particles: int = 64) -> Tensor:
        """The IWAE bound with ``num_particles`` guide draws for sequences ``(N, L, D)`` of any
        length: a *lower bound* on log p in expectation (not an exact value)."""
        from ppgen.models.traces import log_mean_exp

        log_w, _ = self._log_weights(self._inputs(x), num_particles, None)
        return log_mean_exp(log_w, 0)

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
        z = self.z_0.expand(n, self.config.latent)
        return self._as_event(self._run(z, self.steps, generator))

    def _run(self, z: Tensor, horizon: int, generator: torch.Generator | None) -> Tensor:
        """``horizon`` steps of observations ``(S, horizon, D)`` after states ``z``
        ``(S, latent)``."""
        out = []
        for _ in range(horizon):
            loc, scale = self.transition(z)
            eps = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
            z = loc + scale * eps
            out.append(self._draw(self.emission(z).base_dist, generator))
        return torch.stack(out, 1)

    def _draw(self, d: dist.Distribution, generator: torch.Generator | None) -> Tensor:
        if isinstance(d, dist.Normal):
            eps = torch.randn(d.loc.shape, generator=generator, device=d.loc.device,
                              dtype=d.loc.dtype)
            return d.loc + d.scale * eps
        if isinstance(d, dist.Bernoulli):
            u = torch.rand(d.probs.shape, generator=generator, device=d.probs.device,
                           dtype=d.probs.dtype)
            return (u < d.probs).to(d.probs.dtype)
        probs = d.probs
        v = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
        return v.reshape(probs.shape[:-1]).to(probs.dtype)

    @torch.no_grad()
    def forecast_paths(
        self, history: Tensor, horizon: int, num_samples: int, generator: torch.Generator
    ) -> Tensor:
        k = self.config.proposals * num_samples
        log_w, last = self._log_weights(self._inputs(history)[None], k, generator)
        probs = torch.softmax(log_w[:, 0], 0)
        idx = torch.multinomial(probs, num_samples, replacement=True, generator=generator)
        return self._run(last[idx, 0], horizon, generator)

    def extra_repr(self) -> str:
        cfg = self.config
        return f"latent={cfg.latent}, hidden={list(cfg.hidden)}, " + super().extra_repr()


class _Reshaped(dist.TorchDistribution):
    """A distribution over ``(T, D)`` seen with the data's own event shape (``(T,)``, or an
    image's ``(C, H, W)`` read as T = C rows of H * W values)."""

    arg_constraints: ClassVar[dict] = {}

    def __init__(self, base: dist.TorchDistribution, event_shape: torch.Size) -> None:
        self.base = base
        super().__init__(base.batch_shape, torch.Size(event_shape), validate_args=False)

    @property
    def support(self) -> Any:
        return self.base.support

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> _Reshaped:
        return _Reshaped(self.base.expand(batch_shape), self.event_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        batch = value.shape[: value.dim() - len(self.event_shape)]
        steps = self.base.event_shape
        return self.base.log_prob(value.reshape(*batch, *steps))

    def sample(self, sample_shape: torch.Size = _SCALAR) -> Tensor:
        s = self.base.sample(sample_shape)
        return s.reshape(*s.shape[: s.dim() - 2], *self.event_shape)
