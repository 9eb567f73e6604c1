"""Inpainting digits: exact conditional draws and conditional bits per missing pixel.

Fits MADE (with order-agnostic training, so every mask has an exact answer) and the independent
baseline on digits, hides the bottom half of the test images, and compares
- the conditional bits per missing dim, log p(x_bottom | x_top), of both (exact);
- the time of the exact autoregressive path and of the MCMC path (Gibbs) on the same model;
and draws the grid observed | completions | truth.

Run: python docs/examples/inpainting.py   (PPGEN_TINY=1 for a seconds-long smoke run)
"""

import os
import time

import ppgen
from ppgen import plots

TINY = os.environ.get("PPGEN_TINY") == "1"  # CI runs every example with tiny settings
STEPS = 20 if TINY else 3000
N_GIBBS = 4 if TINY else 32  # test images for the (slow) Gibbs timing
SWEEPS = 2 if TINY else 10

train = ppgen.datasets.load("digits", split="train")
test = ppgen.datasets.load("digits", split="test")
mask = ppgen.masks.named("bottom-half", test.event_shape)  # True = observed (the top half)

made = ppgen.build("made", train, hidden=[256], num_masks=4, order_agnostic=True)
ppgen.fit(made, train, steps=STEPS, batch_size=100, lr=1e-3, progress=False, seed=0)
base = ppgen.build("independent", train)
ppgen.fit(base, train, steps=min(STEPS, 500), batch_size=100, progress=False, seed=0)

for name, m in [("made", made), ("independent", base)]:
    ev = ppgen.evaluate(m.eval(), test, mask=mask)
    print(f"{name:12s} bottom half | top half: {ev}")

# CPU seconds (time.process_time): the development machine is shared, so wall time is noisy
start = time.process_time()
imp = ppgen.impute(made, test.data, mask, num_samples=8, seed=0)
exact_s = time.process_time() - start
print(f"exact-ancestral: {len(test.data)} images x 8 completions in {exact_s:.2f} CPU s")

start = time.process_time()
gibbs = ppgen.impute(made, test.data[:N_GIBBS], mask, num_samples=8, seed=0, method="gibbs",
                     sweeps=SWEEPS)
gibbs_s = time.process_time() - start
per_exact, per_gibbs = exact_s / len(test.data), gibbs_s / N_GIBBS
print(f"gibbs ({SWEEPS} sweeps): {N_GIBBS} images x 8 completions in {gibbs_s:.2f} CPU s; per "
      f"image {per_gibbs / per_exact:.0f}x the exact path; {gibbs.diagnostics}")

plots.inpainting_grid(test.data[:12], imp.mask[:12], imp.samples[:, :12], "inpainting.png",
                      levels=test.levels, title="MADE, bottom half: observed | 8 draws | truth")
print("wrote inpainting.png")
