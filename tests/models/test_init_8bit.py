"""At initialisation, every family's explicit likelihood of 28x28 8-bit images starts near the
uniform model's 8 bits/dim, not far above (the VAE's default Binomial(255) decoder started at 96
bits/dim on Fashion-MNIST and still scored 18.2 after a few hundred steps on MNIST)."""

from __future__ import annotations

import pytest
import torch

import ppgen
from ppgen.datasets import Dataset
from ppgen.models.capabilities import InitializesFromData

UNIFORM = 8.0
SLACK = 0.5  # "near": at most half a bit per dimension above the uniform model

# small widths: the point is the output distribution and its initialisation, not capacity
SMALL = {
    "independent": {},
    "made": {"hidden": [64], "num_masks": 1},
    "nade": {"hidden": [16]},
    "pixelcnn": {"hidden": [8, 8]},
    "realnvp": {},
    "nice": {},
    "glow": {},
    "vae": {},
}
# over ~10 s each on a shared 2-core CPU (IAF's density takes D = 784 sequential passes)
SLOW = {
    "gated-pixelcnn": {"hidden": [8, 8]},
    "maf": {},
    "iaf": {},
    "ddpm": {"hidden": [8], "timesteps": 50},
    "ffjord": {},
}


def mnist_like(n: int, seed: int = 0) -> torch.Tensor:
    """28x28 8-bit images like handwritten digits: a black background, a few bright strokes
    with grey edges."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 28, 28)
    for i in range(n):
        for _ in range(3):
            r, c = torch.randint(4, 20, (2,), generator=g).tolist()
            h, w = torch.randint(2, 8, (2,), generator=g).tolist()
            x[i, 0, r : r + h, c : c + w] = 255.0
            x[i, 0, r + h : r + h + 1, c : c + w] = 128.0
    return x


def initial_bits_per_dim(family: str, options: dict) -> float:
    torch.manual_seed(0)
    x = mnist_like(48)
    ds = Dataset("mnist-like", x, "discrete", 256)
    model = ppgen.build(family, ds, **options)
    if isinstance(model, InitializesFromData):
        model.initialize(x)  # as fit does before the first step, on the data it is scored on
    estimator = "elbo" if model.likelihood == "bound" else "auto"
    ev = ppgen.evaluate(model, x[:8], estimator=estimator, seed=0, mc_examples=0)
    return ev.bits_per_dim


@pytest.mark.parametrize("family", sorted(SMALL))
def test_explicit_likelihood_starts_near_uniform_at_8bit(family):
    bpd = initial_bits_per_dim(family, SMALL[family])
    assert bpd <= UNIFORM + SLACK, f"{family} starts at {bpd:.2f} bits/dim"


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(SLOW))
def test_explicit_likelihood_starts_near_uniform_at_8bit_slow(family):
    bpd = initial_bits_per_dim(family, SLOW[family])
    assert bpd <= UNIFORM + SLACK, f"{family} starts at {bpd:.2f} bits/dim"


def test_vae_decoder_default_by_levels():
    """The VAE's auto decoder: Bernoulli for binary, Binomial below 256 levels (the digits),
    the discretized logistic mixture for 8-bit data."""
    def decoder(kind: str, levels: int | None) -> str:
        ds = Dataset("d", torch.zeros(2, 1, 4, 4), kind, levels)
        return ppgen.build("vae", ds, latent=2, hidden=[4]).decoder_kind

    assert decoder("binary", 2) == "bernoulli"
    assert decoder("discrete", 17) == "binomial"
    assert decoder("discrete", 256) == "logistic_mixture"
    assert decoder("discrete", 1024) == "logistic_mixture"
