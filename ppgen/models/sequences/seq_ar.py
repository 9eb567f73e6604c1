r"""``seq-ar``: an autoregressive sequence model, a GRU with a Gaussian-mixture output per step.

.. math:: \log p(x_{1:T}) = \sum_{t=1}^{T} \log p(x_t \mid h_t), \qquad
    h_t = \mathrm{GRU}(h_{t-1}, x_{t-1}),\ x_0 = s \text{ (a learned start vector)}

with :math:`p(x_t \mid h_t)` a mixture of ``components`` diagonal Gaussians over the D values of
a step (continuous data: the mixture carries the correlation between them), a Bernoulli per value
(binary) or a categorical over the levels per value (discrete). Exact likelihood, no
dequantization.

**Why a GRU and not a causal convolution.** Both are causal by construction (the tests check it
by perturbing future values). The GRU's state summarizes the *whole* past (a causal convolution
sees a fixed receptive field, which must be sized to the longest seasonality: 52 weeks of co2),
its cost is linear in T for scoring as for sampling, and its hidden state *is* the sampling and
forecasting cache: drawing step t+1 costs one GRU step, never a pass over the prefix (a
convolution needs a per-layer activation cache for that), and conditioning on a history of any
length is one pass over it. On the short windows here (T <= 64) the convolution's parallelism
over time buys little.
"""

from __future__ import annotations

__all__ = ["SeqAR", "SeqARConfig"]

import dataclasses
from typing import ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ppgen.models.base import ConfigError, ModelConfig, pyro_program
from ppgen.models.capabilities import InitializesFromData
from ppgen.models.sequences.common import SequenceModel

_MIN_LOG_SCALE = -7.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class SeqARConfig(ModelConfig):
    """Configuration of :class:`SeqAR`.

    Arguments:
        hidden: GRU widths, one per layer; all equal (``[64, 64]``: two layers of 64).
        components: Gaussian mixture components per step (continuous data).
    """

    hidden: tuple[int, ...] = (64,)
    components: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(set(self.hidden)) > 1:
            raise ConfigError(
                f"SeqAR: the GRU layers share one width; hidden={list(self.hidden)} differs "
                f"(use e.g. {[self.hidden[0]] * len(self.hidden)})"
            )


class SeqAR(SequenceModel, InitializesFromData):
    """GRU autoregressive sequence model with a mixture output per step.

    Example:
        >>> import ppgen, numpy as np
        >>> ds = ppgen.datasets.from_series(np.sin(np.arange(300) / 4.0), window=12)
        >>> m = ppgen.build("seq-ar", ds, hidden=[8], components=2)
        >>> m.log_prob(ds.data[:3]).shape, m.sample(2, seed=0).shape
        (torch.Size([3]), torch.Size([2, 12, 1]))
    """

    likelihood: ClassVar = "exact"
    Config: ClassVar = SeqARConfig
    default_objective: ClassVar = "mle"
    forecast_method: ClassVar = "exact: the GRU state run over the history"

    def __init__(self, config: SeqARConfig | None = None, **fields: object) -> None:
        super().__init__(config, **fields)
        cfg = self.config
        d, width = self.step_dims, cfg.hidden[0]
        self.start = nn.Parameter(torch.zeros(d))
        self.gru = nn.GRU(d, width, num_layers=len(cfg.hidden), batch_first=True)
        if cfg.kind == "continuous":
            k = cfg.components
            out = k + 2 * k * d
        elif cfg.kind == "binary":
            out = d
        else:
            assert cfg.levels is not None
            out = d * cfg.levels
        self.head = nn.Linear(width, out)

    def _inputs(self, x: Tensor) -> Tensor:
        """The network's view of observed values: discrete levels scaled to [0, 1]."""
        if self.config.kind == "continuous":
            return x
        assert self.config.levels is not None
        return x / (self.config.levels - 1)

    def _step_dist(self, h: Tensor) -> dist.TorchDistribution:
        """p(x_t | h_t) for hidden states ``h`` of shape ``(..., width)``, event ``(D,)``."""
        out = self.head(h)
        d, cfg = self.step_dims, self.config
        if cfg.kind == "continuous":
            k = cfg.components
            logits, loc, log_scale = out.split([k, k * d, k * d], -1)
            loc = loc.unflatten(-1, (k, d))
            scale = log_scale.unflatten(-1, (k, d)).clamp(min=_MIN_LOG_SCALE).exp()
            comp = dist.Normal(loc, scale, validate_args=False).to_event(1)
            return dist.MixtureSameFamily(dist.Categorical(logits=logits), comp,
                                          validate_args=False)
        if cfg.kind == "binary":
            return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
        assert cfg.levels is not None
        return dist.Categorical(logits=out.unflatten(-1, (d, cfg.levels)),
                                validate_args=False).to_event(1)

    def _hidden(self, x: Tensor) -> Tensor:
        """The GRU's top-layer states that predict each step of ``(N, L, D)``: ``(N, L, width)``;
        the one for step t has read the start vector and x_1..x_{t-1} only."""
        n = x.shape[0]
        start = self.start.expand(n, 1, self.step_dims)
        out, _ = self.gru(torch.cat([start, self._inputs(x[:, :-1])], 1))
        return out

    def log_prob_steps(self, x: Tensor) -> Tensor:
        """``log p(x_t | x_{<t})`` for every step of ``(N, L, D)``: ``(N, L)``."""
        return self._step_dist(self._hidden(x)).log_prob(x)

    def log_prob_series(self, x: Tensor) -> Tensor:
        return self.log_prob_steps(x).sum(-1)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact log-density in nats, ``(N,)``."""
        self._check_x(x)
        return self.log_prob_series(self._as_steps(x.to(self.start.dtype)))

    @pyro_program
    def model(self, x: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        n = 1 if x is None else x.shape[0]
        if x is not None:
            x = self._check_x(x).to(self.start.dtype)
        with pyro.plate("data", n):
            return pyro.sample("x", self.distribution(context), obs=x)

    def _draw(self, h: Tensor, generator: torch.Generator | None) -> Tensor:
        """One draw of x_t given the top-layer states ``h`` of shape ``(S, width)``: ``(S, D)``."""
        out = self.head(h)
        d, cfg = self.step_dims, self.config
        if cfg.kind == "continuous":
            k = cfg.components
            logits, loc, log_scale = out.split([k, k * d, k * d], -1)
            comp = torch.multinomial(logits.softmax(-1), 1, generator=generator)  # (S, 1)
            idx = comp[:, :, None].expand(-1, 1, d)
            loc = loc.unflatten(-1, (k, d)).gather(1, idx)[:, 0]
            scale = log_scale.unflatten(-1, (k, d)).clamp(min=_MIN_LOG_SCALE).exp()
            scale = scale.gather(1, idx)[:, 0]
            eps = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
            return loc + scale * eps
        if cfg.kind == "binary":
            u = torch.rand(out.shape, generator=generator, device=out.device, dtype=out.dtype)
            return (u < torch.sigmoid(out)).to(out.dtype)
        assert cfg.levels is not None
        probs = out.unflatten(-1, (d, cfg.levels)).softmax(-1).reshape(-1, cfg.levels)
        v = torch.multinomial(probs, 1, generator=generator).reshape(-1, d)
        return v.to(out.dtype)

    def _roll(self, h: Tensor, state: Tensor, horizon: int,
              generator: torch.Generator | None) -> Tensor:
        """Cached sampling: ``horizon`` steps from the top-layer output ``h`` ``(S, width)``
        that predicts the next step and the GRU state ``(layers, S, width)`` after the last
        value seen; one GRU step per drawn step, never a pass over the prefix."""
        out = []
        for t in range(horizon):
            x = self._draw(h, generator)
            out.append(x)
            if t + 1 < horizon:
                o, state = self.gru(self._inputs(x)[:, None], state)
                h = o[:, 0]
        return torch.stack(out, 1)

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
        o, state = self.gru(self.start.expand(n, 1, self.step_dims))
        return self._as_event(self._roll(o[:, 0], state, self.steps, generator))

    @torch.no_grad()
    def forecast_paths(
        self, history: Tensor, horizon: int, num_samples: int, generator: torch.Generator
    ) -> Tensor:
        start = self.start.expand(1, 1, self.step_dims)
        o, state = self.gru(torch.cat([start, self._inputs(history)[None]], 1))
        h = o[:, -1].expand(num_samples, -1)  # predicts step L + 1
        state = state.expand(-1, num_samples, -1).contiguous()
        return self._roll(h, state, horizon, generator)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Start the mixture's means spread over the data's range and its scales at the data's."""
        cfg = self.config
        if cfg.kind != "continuous" or x.shape[0] < 2:
            return
        flat = self._as_steps(x.to(self.start.dtype)).reshape(-1, self.step_dims)
        mean, std = flat.mean(0), flat.std(0).clamp_min(1e-3)
        k, d = cfg.components, self.step_dims
        spread = torch.linspace(-1, 1, k, dtype=x.dtype) if k > 1 else x.new_zeros(1)
        bias = self.head.bias
        bias[k : k + k * d].copy_((mean[None] + std[None] * spread[:, None]).reshape(-1))
        bias[k + k * d :].copy_(torch.log(std).repeat(k) - 0.5 * torch.log(torch.tensor(k)))

    def extra_repr(self) -> str:
        cfg = self.config
        return f"hidden={list(cfg.hidden)}, components={cfg.components}, " + super().extra_repr()
