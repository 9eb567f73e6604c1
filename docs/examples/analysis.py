"""Analysing density estimates: CIs, a paired comparison, calibration, sample quality, ArviZ.

Two models of the 8gaussians toy density: the independent baseline (a 4-component mixture per
coordinate) and a user-defined 8-component Gaussian mixture (ppgen.from_pyro).

Run: python docs/examples/analysis.py   (PPGEN_TINY=1 for a seconds-long smoke run)
"""

import os

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

import ppgen
from ppgen import plots, reports

TINY = os.environ.get("PPGEN_TINY") == "1"  # CI runs every example with tiny settings
STEPS = 10 if TINY else 1500
N = 300 if TINY else 5000  # samples for calibration and sample quality
GRID = 50 if TINY else 200  # heat-map resolution


def gmm(x=None):
    angles = torch.arange(8) * (2 * torch.pi / 8)
    init = torch.stack([angles.cos(), angles.sin()], 1) * 1.5
    weights = pyro.param("weights", torch.ones(8) / 8, constraint=constraints.simplex)
    locs = pyro.param("locs", init)
    scale = pyro.param("scale", 0.5 * torch.ones(8, 2), constraint=constraints.positive)
    mix = dist.MixtureSameFamily(dist.Categorical(weights), dist.Normal(locs, scale).to_event(1))
    with pyro.plate("data", 1 if x is None else x.shape[0]):
        return pyro.sample("x", mix, obs=x)


train = ppgen.datasets.load("8gaussians", "train")
test = ppgen.datasets.load("8gaussians", "test")
if TINY:
    test = test.subset(500)

independent = ppgen.build("independent", train, components=4)
mixture = ppgen.from_pyro(gmm, event_shape=(2,), likelihood="exact", example=train.data[:2])
for m in (independent, mixture):
    ppgen.fit(m, train, steps=STEPS, batch_size=500, lr=0.05, seed=0, progress=False)

# 1. Each model's test likelihood with its standard error and a 95% bootstrap CI
for name, m in (("independent", independent), ("mixture", mixture)):
    print(f"{name:12s}", ppgen.analysis.summarize(ppgen.evaluate(m, test)))
print(f"{'true density':12s} {-test.true_log_prob(test.data).double().mean():.3f} nats")

# 2. Paired comparison on the same test points (refuses exact-vs-bound unless asked)
print(ppgen.analysis.compare(mixture, independent, test, names=("mixture", "independent")))

# 3. Calibration: the share of test points inside each model's alpha-HDR, against alpha
hdr = {
    name: ppgen.analysis.hdr_coverage(m, test, num_samples=2 * N, seed=0)
    for name, m in (("independent", independent), ("mixture", mixture))
}
for name, r in hdr.items():
    print(f"{name}: max |coverage - alpha| = {r.max_deviation:.3f}, KS p = {r.p_value:.2g}")
plots.hdr_calibration(hdr, "hdr_calibration.png")
for name, m in (("independent", independent), ("mixture", mixture)):
    reports.density_heatmap(
        m, test.data, f"density_{name}.png", true_log_prob=test.true_log_prob, size=GRID
    )

# 4. Does sample() agree with log_prob? (a check of the model's code, not of the fit)
print(ppgen.analysis.goodness_of_fit(mixture, num_samples=N // 2))

# 5. Sample quality against the test data, and the modes a sampler reaches
samples = mixture.sample(N, seed=1)
y = test.data[:N]
print(ppgen.metrics.mmd(samples, y))
print(ppgen.metrics.energy_distance(samples, y))
print(ppgen.metrics.frechet_distance(samples, y))
print(ppgen.metrics.precision_recall(samples, y, k=5))
print(ppgen.metrics.c2st(samples, y))
angles = torch.arange(8) * (2 * torch.pi / 8)
centers = 2.0 * torch.stack([angles.cos(), angles.sin()], 1)  # 8gaussians: radius 2, std 0.1
print(ppgen.metrics.mode_coverage(samples, centers, std=0.1))
plots.samples_vs_data(samples, y, "samples_vs_data.png")

# 6. ArviZ: both models' pointwise log-likelihoods in one InferenceData, and az.compare's table
idata = ppgen.analysis.to_inference_data({"mixture": mixture, "independent": independent}, test)
print(ppgen.analysis.arviz_compare(idata)[["elpd_waic", "elpd_diff", "dse"]])
