"""Probabilistic PCA: a linear-Gaussian latent model whose marginal likelihood, posterior and
ELBO are closed form, wrapped with ``ppgen.from_pyro`` (the ground truth of the estimator and
posterior tests).

    z ~ N(0, I_L),   x | z ~ N(W z + mu, sigma^2 I_D)
    p(x) = N(mu, W W^T + sigma^2 I),   p(z | x) = N(M^-1 W^T (x - mu), sigma^2 M^-1),
    M = W^T W + sigma^2 I  (Tipping & Bishop 1999)
"""

from __future__ import annotations

import dataclasses
import math

import pyro
import pyro.distributions as dist
import torch

import ppgen


@dataclasses.dataclass(eq=False)  # compared by identity, like any module
class PPCA:
    W: torch.Tensor  # (D, L)
    mu: torch.Tensor  # (D,)
    sigma: float
    guide_scale: float = 1.0  # the guide's std is this times the exact posterior's marginal std
    guide_shift: float = 0.0  # and its mean is shifted by this many posterior stds

    @classmethod
    def random(cls, d: int, latent: int, sigma: float, seed: int, dtype=torch.float64, **kw):
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(d, latent, generator=g, dtype=dtype)
        mu = torch.randn(d, generator=g, dtype=dtype)
        return cls(W, mu, sigma, **kw)

    @property
    def d(self) -> int:
        return self.W.shape[0]

    @property
    def latent(self) -> int:
        return self.W.shape[1]

    def marginal(self) -> dist.MultivariateNormal:
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.d, dtype=self.W.dtype)
        return dist.MultivariateNormal(self.mu, cov)

    def posterior_cov(self) -> torch.Tensor:
        M = self.W.T @ self.W + self.sigma**2 * torch.eye(self.latent, dtype=self.W.dtype)
        return self.sigma**2 * torch.linalg.inv(M)

    def posterior_mean(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mu) @ self.W @ self.posterior_cov().T / self.sigma**2

    def guide_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sd = self.posterior_cov().diag().sqrt()
        return self.posterior_mean(x) + self.guide_shift * sd, self.guide_scale * sd

    def sample(self, n: int, seed: int) -> torch.Tensor:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return self.marginal().sample((n,))

    def exact_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.marginal().log_prob(x)

    def exact_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """The ELBO of the (diagonal Gaussian) guide in closed form."""
        m, s = self.guide_params(x)
        return sum(self.elbo_parts(x, m, s))

    def elbo_parts(self, x: torch.Tensor, m: torch.Tensor, s: torch.Tensor):
        """Closed forms of E_q[log p(x|z)], E_q[log p(z)] and H[q] for q = N(m, diag s^2),
        each ``(N,)``; differentiable in ``m`` and ``s``."""
        s2 = s.pow(2).expand_as(m)
        mean_x = m @ self.W.T + self.mu
        ll = dist.Normal(mean_x, self.sigma).log_prob(x).sum(-1) - (
            (s2 @ self.W.pow(2).T).sum(-1) / (2 * self.sigma**2)
        )
        prior = -0.5 * (m.pow(2) + s2).sum(-1) - 0.5 * self.latent * math.log(2 * math.pi)
        entropy = 0.5 * torch.log(2 * math.pi * math.e * s2).sum(-1)
        return ll, prior, entropy

    def model(self, x=None):
        n = 1 if x is None else x.shape[0]
        with pyro.plate("data", n):
            z = pyro.sample(
                "z", dist.Normal(self.mu.new_zeros(self.latent), 1.0).to_event(1)
            )
            return pyro.sample("x", dist.Normal(z @ self.W.T + self.mu, self.sigma).to_event(1),
                               obs=x)

    def implicit_model(self, x=None):
        """The same generator with a deterministic observation (a Delta at ``"x"``)."""
        n = 1 if x is None else x.shape[0]
        with pyro.plate("data", n):
            z = pyro.sample(
                "z", dist.Normal(self.mu.new_zeros(self.latent), 1.0).to_event(1)
            )
            return pyro.sample("x", dist.Delta(z @ self.W.T + self.mu, event_dim=1), obs=x)

    def guide(self, x=None):
        with pyro.plate("data", x.shape[0]):
            m, s = self.guide_params(x)
            pyro.sample("z", dist.Normal(m, s).to_event(1))

    def bound(self):
        return ppgen.from_pyro(self.model, self.guide, event_shape=(self.d,), likelihood="bound")

    def implicit(self):
        return ppgen.from_pyro(self.implicit_model, event_shape=(self.d,), likelihood="none")
