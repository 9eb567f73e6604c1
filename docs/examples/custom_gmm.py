"""A user-defined Gaussian mixture, fit through ppgen.from_pyro.

Run: python docs/examples/custom_gmm.py
"""

import os

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

import ppgen

TINY = os.environ.get("PPGEN_TINY") == "1"  # CI runs every example with tiny settings


def model(x=None):
    weights = pyro.param("weights", torch.ones(3) / 3, constraint=constraints.simplex)
    locs = pyro.param("locs", torch.tensor([[-1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]))
    scale = pyro.param("scale", torch.ones(3, 2), constraint=constraints.positive)
    mix = dist.MixtureSameFamily(dist.Categorical(weights), dist.Normal(locs, scale).to_event(1))
    with pyro.plate("data", 1 if x is None else x.shape[0]):
        return pyro.sample("x", mix, obs=x)


train = ppgen.datasets.load("8gaussians", "train")
test = ppgen.datasets.load("8gaussians", "test")
m = ppgen.from_pyro(model, event_shape=(2,), likelihood="exact", example=train.data[:2])
ppgen.fit(m, train, steps=20 if TINY else 1000, batch_size=500, lr=0.05, progress=not TINY)
ev = ppgen.evaluate(m, test)
print(f"3-component mixture on 8gaussians: {ev}")
print(f"true density: {-test.true_log_prob(test.data).mean():.3f} nats")
