"""A small hierarchical VAE written by the user (two latent layers), through ppgen.from_pyro.

    z2 ~ N(0, I_2),   z1 | z2 ~ N(mu(z2), sigma(z2)^2),   x | z1 ~ Bernoulli(logits(z1))
    q(z1 | x) q(z2 | z1)   (a bottom-up amortized guide)

The programs are methods of the user's own PyroModule; from_pyro trains its networks with the
ELBO, scores it with IWAE (a lower bound, labelled so) and returns posteriors as ArviZ data.

Run: python docs/examples/hierarchical_vae.py   (PPGEN_TINY=1 for a seconds-long smoke run)
"""

import os

import arviz as az
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

import ppgen

TINY = os.environ.get("PPGEN_TINY") == "1"  # CI runs every example with tiny settings


def mlp(inp: int, out: int, width: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(inp, width), nn.ReLU(), nn.Linear(width, out))


class HierarchicalVAE(PyroModule):
    def __init__(self, d: int = 64, z1: int = 8, z2: int = 2) -> None:
        super().__init__()
        self.d, self.z1, self.z2 = d, z1, z2
        self.top = mlp(z2, 2 * z1)  # p(z1 | z2)
        self.decoder = mlp(z1, d)  # p(x | z1)
        self.enc1 = mlp(d, 2 * z1)  # q(z1 | x)
        self.enc2 = mlp(z1, 2 * z2)  # q(z2 | z1)

    @staticmethod
    def _normal(h: torch.Tensor) -> dist.Distribution:
        loc, raw = h.chunk(2, -1)
        return dist.Normal(loc, F.softplus(raw) + 1e-3).to_event(1)

    def model(self, x=None):
        n = 1 if x is None else x.shape[0]
        with pyro.plate("data", n):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(self.z2), 1.0).to_event(1))
            z1 = pyro.sample("z1", self._normal(self.top(z2)))
            logits = self.decoder(z1).unflatten(-1, (1, 8, 8))
            return pyro.sample("x", dist.Bernoulli(logits=logits).to_event(3), obs=x)

    def guide(self, x=None):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", self._normal(self.enc1(x.flatten(-3))))
            pyro.sample("z2", self._normal(self.enc2(z1)))


if __name__ == "__main__":
    train = ppgen.datasets.load("digits-binary", "train")
    test = ppgen.datasets.load("digits-binary", "test")
    if TINY:
        train, test = train.subset(200), test.subset(20)
    net = HierarchicalVAE()
    m = ppgen.from_pyro(net.model, net.guide, event_shape=(1, 8, 8), likelihood="bound",
                        kind="binary", name="hvae")
    ppgen.fit(m, train, steps=30 if TINY else 3000, batch_size=100, lr=2e-3, progress=not TINY)
    ev = ppgen.evaluate(m, test, estimator="iwae", num_particles=10 if TINY else 1000)
    print(f"two-layer VAE on binary digits: {ev}")

    # ArviZ posteriors of both latent layers for three test digits: the amortized guide and NUTS
    x = test.data[:3]
    guide = ppgen.posterior(m, x, method="guide", num_samples=50 if TINY else 1000)
    nuts = ppgen.posterior(m, x, method="nuts", num_samples=10 if TINY else 500,
                           num_chains=2, warmup_steps=10 if TINY else 500)
    print(az.summary(nuts, var_names=["z2"], kind="diagnostics"))  # R-hat and ESS per coordinate
    gap = float(guide.posterior["z2"].mean() - nuts.posterior["z2"].mean())
    print(f"mean of z2, guide minus NUTS: {gap:+.3f}")
