r"""``lgssm``: the linear-Gaussian state-space model, the classical baseline inside the protocol.

.. math::
    z_0 \sim \mathcal N(\mu_0, \operatorname{diag}\sigma_0^2), \qquad
    z_t = z_{t-1} A + \epsilon_t,\ \epsilon_t \sim \mathcal N(0, \operatorname{diag} q^2), \qquad
    x_t = z_t C + c + \eta_t,\ \eta_t \sim \mathcal N(0, \operatorname{diag} r^2)

for ``t = 1..T`` (row vectors, Pyro's convention; ``z_0`` is the state one step *before* the
first observation, as in :class:`pyro.distributions.GaussianHMM`). The density is Pyro's
``GaussianHMM``: the exact marginal likelihood :math:`\log p(x_{1:T})`, integrating the states
out by Kalman filtering (in parallel over time), so ``likelihood = "exact"`` and ``mle`` fits it.
A diagonal process noise loses nothing: with ``A``, ``C`` and the initial law free, any positive
definite process covariance is the identity in another basis of the state.

Discrete data is uniformly dequantized (``dequantizes`` is True; the score is then a lower
bound on the discrete likelihood, labelled so by ``ppgen.evaluate``).

Forecasting is exact: :meth:`LGSSM.forecast_paths` draws the last state from the Kalman
filtering distribution ``GaussianHMM.filter(history)`` and runs the model forward.
"""

from __future__ import annotations

__all__ = ["LGSSM", "LGSSMConfig"]

import dataclasses
import math
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppgen.datasets.transforms import DataTransform
from ppgen.models.base import ModelConfig, pyro_program
from ppgen.models.capabilities import InitializesFromData
from ppgen.models.sequences.common import SequenceModel

_MIN_SCALE = 1e-3


@dataclasses.dataclass(frozen=True, kw_only=True)
class LGSSMConfig(ModelConfig):
    """Configuration of :class:`LGSSM`.

    Arguments:
        state: the dimension K of the hidden state.
    """

    state: int = 4


def _scale(raw: Tensor) -> Tensor:
    return F.softplus(raw) + _MIN_SCALE


def _inverse_scale(value: float) -> float:
    """The raw parameter whose :func:`_scale` is ``value``."""
    v = value - _MIN_SCALE
    return v + math.log(-math.expm1(-v))


class LGSSM(SequenceModel, InitializesFromData):
    """Linear-Gaussian state-space model scored by Kalman filtering (Pyro's ``GaussianHMM``).

    Example:
        >>> import ppgen, numpy as np
        >>> ds = ppgen.datasets.from_series(np.sin(np.arange(300) / 4.0), window=12)
        >>> m = ppgen.build("lgssm", ds, state=2)
        >>> m.log_prob(ds.data[:3]).shape
        torch.Size([3])
    """

    likelihood: ClassVar = "exact"
    Config: ClassVar = LGSSMConfig
    default_objective: ClassVar = "mle"
    forecast_method: ClassVar = "exact: Kalman filtering of the history (GaussianHMM.filter)"

    def __init__(self, config: LGSSMConfig | None = None, **fields: object) -> None:
        super().__init__(config, **fields)
        k, d = self.config.state, self.step_dims
        self.data_transform = DataTransform(self.config.kind, self.config.levels)
        self.init_loc = nn.Parameter(torch.zeros(k))
        self.init_scale_raw = nn.Parameter(torch.full((k,), _inverse_scale(1.0)))
        self.transition_matrix = nn.Parameter(0.9 * torch.eye(k))
        self.transition_scale_raw = nn.Parameter(torch.full((k,), _inverse_scale(0.3)))
        self.observation_matrix = nn.Parameter(torch.randn(k, d) / k**0.5)
        self.observation_loc = nn.Parameter(torch.zeros(d))
        self.observation_scale_raw = nn.Parameter(torch.full((d,), _inverse_scale(0.5)))

    @property
    def dequantizes(self) -> bool:
        return self.data_transform.dequantizes

    def set_parameters(self, **values: Any) -> None:
        """Set the model's parameters from their natural values (the tests compare the Kalman
        likelihood with statsmodels' for the same model): ``init_loc`` (K), ``init_scale`` (K),
        ``transition_matrix`` (K, K), ``transition_scale`` (K), ``observation_matrix`` (K, D),
        ``observation_loc`` (D), ``observation_scale`` (D). Scales are standard deviations."""
        with torch.no_grad():
            for name, value in values.items():
                value = torch.as_tensor(value)
                if name.endswith("_scale"):
                    v = value.to(torch.float64) - _MIN_SCALE
                    if bool((v <= 0).any()):
                        raise ValueError(f"{name} must exceed {_MIN_SCALE}, got {value}")
                    value = v + torch.log(-torch.expm1(-v))
                    name = name + "_raw"
                target = getattr(self, name, None)
                if not isinstance(target, nn.Parameter):
                    raise ValueError(f"LGSSM has no parameter {name!r}")
                if tuple(value.shape) != tuple(target.shape):
                    raise ValueError(
                        f"{name} has shape {tuple(value.shape)}, expected {tuple(target.shape)}"
                    )
                target.copy_(value.to(target))

    def hmm(self, steps: int) -> dist.GaussianHMM:
        """The model over ``steps`` time steps as a Pyro ``GaussianHMM`` (event ``(steps, D)``)."""
        k, d = self.config.state, self.step_dims
        init = dist.MultivariateNormal(
            self.init_loc, scale_tril=torch.diag_embed(_scale(self.init_scale_raw))
        )
        trans = dist.MultivariateNormal(
            self.init_loc.new_zeros(k),
            scale_tril=torch.diag_embed(_scale(self.transition_scale_raw)),
        )
        obs = dist.MultivariateNormal(
            self.observation_loc,
            scale_tril=torch.diag_embed(_scale(self.observation_scale_raw)),
        )
        assert self.observation_matrix.shape == (k, d)
        return dist.GaussianHMM(init, self.transition_matrix, trans, self.observation_matrix, obs,
                                duration=steps, validate_args=False)

    def log_prob_series(self, x: Tensor) -> Tensor:
        return self.hmm(x.shape[-2]).log_prob(x)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact log-density (Kalman filtering) of the data as given, in nats, ``(N,)``."""
        self._check_x(x)
        z, ladj = self.data_transform(x.to(self.init_loc.dtype))
        return self.log_prob_series(self._as_steps(z)) + ladj

    @pyro_program
    def model(self, x: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        n = 1 if x is None else x.shape[0]
        if x is not None:
            x = self._check_x(x).to(self.init_loc.dtype)
        with pyro.plate("data", n):
            return pyro.sample("x", self.distribution(context), obs=x)

    def _run(self, z: Tensor, horizon: int, generator: torch.Generator | None) -> Tensor:
        """From states ``z`` of shape ``(S, K)`` (the state before the first step), draw
        ``horizon`` steps of observations ``(S, horizon, D)`` in the model's space."""
        a, c = self.transition_matrix, self.observation_matrix
        q, r = _scale(self.transition_scale_raw), _scale(self.observation_scale_raw)
        out = []
        for _ in range(horizon):
            eps = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            z = z @ a + q * eps
            x = z @ c + self.observation_loc
            eta = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            out.append(x + r * eta)
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
        ref = self.init_loc
        eps = torch.randn((n, self.config.state), generator=generator, device=ref.device,
                          dtype=ref.dtype)
        z0 = self.init_loc + _scale(self.init_scale_raw) * eps
        x = self._run(z0, self.steps, generator)
        return self._as_event(self.data_transform.inverse(x))

    @torch.no_grad()
    def forecast_paths(
        self, history: Tensor, horizon: int, num_samples: int, generator: torch.Generator
    ) -> Tensor:
        if self.dequantizes:  # the middle of each level's dequantization interval
            assert self.config.levels is not None
            history = (history + 0.5) / self.config.levels
        filt = self.hmm(history.shape[0]).filter(history)  # the law of the last state
        eps = torch.randn((num_samples, self.config.state), generator=generator,
                          device=history.device, dtype=history.dtype)
        z = filt.loc + eps @ filt.scale_tril.transpose(-1, -2)
        return self.data_transform.inverse(self._run(z, horizon, generator))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Start the observation offset and noise at the data's per-variable mean and scale."""
        if x.shape[0] < 2:
            return
        z, _ = self.data_transform(x.to(self.init_loc.dtype))
        flat = self._as_steps(z).reshape(-1, self.step_dims)
        self.observation_loc.copy_(flat.mean(0))
        std = flat.std(0).clamp_min(10 * _MIN_SCALE)
        v = 0.5 * std - _MIN_SCALE
        self.observation_scale_raw.copy_(v + torch.log(-torch.expm1(-v)))

    def extra_repr(self) -> str:
        return f"state={self.config.state}, " + super().extra_repr()
