r"""The fully factorized baseline: every dimension independent.

.. math:: p(x) = \prod_{d=1}^{D} p_d(x_d)

with a categorical over the levels (discrete), a Bernoulli (binary) or a mixture of Gaussians
(continuous) per dimension. It is the floor every structured family must beat, and the smallest
complete example of the protocol: read it before writing a family of your own.
"""

from __future__ import annotations

__all__ = ["Independent", "IndependentConfig"]

import dataclasses
import math
from typing import Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ppgen.models.base import AbstractGenerativeModel, ModelConfig, pyro_program
from ppgen.models.capabilities import InitializesFromData
from ppgen.models.conditioning import ExactConditional


@dataclasses.dataclass(frozen=True, kw_only=True)
class IndependentConfig(ModelConfig):
    """Configuration of :class:`Independent`.

    Arguments:
        components: Gaussian mixture components per dimension (continuous data).
    """

    components: int = 1


class Independent(AbstractGenerativeModel, ExactConditional, InitializesFromData):
    """Independent per-dimension model: categorical, Bernoulli or Gaussian mixture.

    Its exact log-likelihood has a closed-form maximizer (the empirical frequencies), which
    the tests use to check the trainer and the units.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("digits", split="val")
        >>> m = ppgen.build("independent", ds)
        >>> m.log_prob(ds.data[:3]).shape
        torch.Size([3])
    """

    likelihood: ClassVar = "exact"
    Config: ClassVar = IndependentConfig
    default_objective: ClassVar = "mle"
    conditioning_methods: ClassVar = ("exact-ancestral",)

    def __init__(self, config: IndependentConfig | None = None, **fields: object) -> None:
        super().__init__(config, **fields)
        cfg = self.config
        d = cfg.num_dims
        if cfg.kind == "continuous":
            k = cfg.components
            self.logits = nn.Parameter(torch.zeros(d, k))
            self.loc = nn.Parameter(
                torch.linspace(-1, 1, k).repeat(d, 1) if k > 1 else torch.zeros(d, 1)
            )
            self.log_scale = nn.Parameter(torch.zeros(d, k))
        else:
            assert cfg.levels is not None
            self.logits = nn.Parameter(torch.zeros(d, cfg.levels))

    def fit_defaults(self) -> dict[str, Any]:
        """Adam at 0.05: the free per-dimension logits start at zero and are far from the data's
        frequencies; at the generic 1e-3 a default ``ppgen fit independent`` stopped at 7.3
        bits/dim on MNIST, where the optimum is 1.7 (issue 19). The benchmark presets use 0.05
        and 0.02."""
        return {"lr": 0.05}

    def _marginals(self) -> dist.Distribution:
        """The D per-dimension distributions, batch shape ``(D,)``."""
        if self.config.kind == "continuous":
            mix = dist.Categorical(logits=self.logits)
            comp = dist.Normal(self.loc, self.log_scale.exp())
            return dist.MixtureSameFamily(mix, comp)
        return dist.Categorical(logits=self.logits)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        self._check_x(x)
        flat = x.reshape(x.shape[0], -1)  # (N, D)
        if self.config.kind != "continuous":
            flat = flat.long()
        return self._marginals().log_prob(flat).sum(-1)

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
        probs = self.logits.softmax(-1)  # (D, K)
        k = torch.multinomial(probs, n, replacement=True, generator=generator).T  # (n, D)
        if self.config.kind == "continuous":
            loc = self.loc.gather(1, k.T).T
            scale = self.log_scale.exp().gather(1, k.T).T
            eps = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
            out = loc + scale * eps
        else:
            out = k.to(self.logits.dtype)
        return out.reshape(n, *self.event_shape)

    # ---- conditioning (ppgen.impute): the missing dims are independent of the observed ----

    def exact_conditional_reason(self, observed: Tensor) -> str | None:
        return None

    def log_prob_conditional(
        self, x: Tensor, observed: Tensor, context: Tensor | None = None
    ) -> Tensor:
        r""":math:`\log p(x_m \mid x_o) = \sum_{d \in m} \log p_d(x_d)`."""
        flat = x.reshape(x.shape[0], -1)
        if self.config.kind != "continuous":
            flat = flat.long()
        per = self._marginals().log_prob(flat)  # (N, D)
        return per[:, ~observed.reshape(-1).to(per.device)].sum(-1)

    @torch.no_grad()
    def sample_conditional(
        self, x: Tensor, observed: Tensor, num_samples: int, generator: torch.Generator,
        context: Tensor | None = None,
    ) -> Tensor:
        """Unconditional draws with the observed entries put back (they are independent)."""
        n = x.shape[0]
        draws = self._sample(num_samples * n, generator=generator).reshape(num_samples, n, -1)
        return torch.where(observed, x, draws.reshape(num_samples, *x.shape).to(x.dtype))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Start continuous components at the data's per-dimension scale."""
        if self.config.kind == "continuous" and x.shape[0] > 1:
            flat = x.reshape(x.shape[0], -1)
            mean, std = flat.mean(0), flat.std(0).clamp_min(1e-3)
            k = self.config.components
            spread = (
                torch.linspace(-1, 1, k, dtype=x.dtype, device=x.device)
                if k > 1
                else x.new_zeros(1)
            )
            self.loc.copy_(mean[:, None] + std[:, None] * spread[None])
            self.log_scale.copy_(torch.log(std)[:, None] - 0.5 * math.log(k))
