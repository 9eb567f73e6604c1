"""Train a 2-D VAE on digits, then look inside: guide vs NUTS posteriors, R-hat/ESS, the
amortization gap, latent scatter, traversals and interpolations.

Run: python docs/examples/inspect_vae.py   (PPGEN_TINY=1: a seconds-long smoke run)
"""

import os

import arviz as az

import ppgen
from ppgen.inference.posterior import amortization_gap
from ppgen.reports import inspect_report

TINY = os.environ.get("PPGEN_TINY") == "1"  # CI runs every example with tiny settings

train = ppgen.datasets.load("digits", "train")
val = ppgen.datasets.load("digits", "val")
test = ppgen.datasets.load("digits", "test")

# 1. a VAE with a 2-D latent space, so the codes can be drawn
m = ppgen.build("vae", train, latent=2, hidden=[64] if TINY else [256, 256])
ppgen.fit(m, train, steps=20 if TINY else 3000, batch_size=100, lr=1e-3, val=val,
          progress=not TINY)
print(ppgen.evaluate(m, test, num_particles=50 if TINY else 1000))

# 2. the posterior of three test digits, from the encoder and from NUTS
points = test.subset(2 if TINY else 3)
draws = 10 if TINY else 500
q = ppgen.posterior(m, points, method="guide", num_samples=draws, seed=0)
p = ppgen.posterior(m, points, method="nuts", num_samples=draws, num_chains=2, seed=0,
                    warmup_steps=10 if TINY else 500)
print(az.summary(p, var_names=["z"]))  # mean, sd, HDI, MCSE, ess_bulk, ess_tail, r_hat
print("guide means:", q.posterior["z"].mean(("chain", "draw")).values.round(2).tolist())
print("NUTS means: ", p.posterior["z"].mean(("chain", "draw")).values.round(2).tolist())

# 3. where the ELBO loses: approximation vs amortization gap, per example
gap = amortization_gap(m, points, num_particles=100 if TINY else 2000,
                       steps=10 if TINY else 500)
print(gap.table())
print(gap)

# 4. everything `ppgen inspect` does, with its figures in ./inspect-vae
report = inspect_report(m, test, out="inspect-vae", num_points=2 if TINY else 4,
                        method="guide" if TINY else "nuts", num_samples=draws,
                        gap_steps=10 if TINY else 300, verbose=False)
print("figures:", ", ".join(str(f) for f in report.files))
