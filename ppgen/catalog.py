"""What ``ppgen list`` prints, as plain data: the families and the embedded datasets by name.

``ppgen --help`` and ``ppgen list`` answer in a fraction of a second because they import
neither torch nor the families; this module is what they read instead. The registries
(:func:`ppgen.models.names`, the families' ``Config`` and ``likelihood``,
:func:`ppgen.datasets.names`) remain the truth: ``tests/test_catalog.py`` checks this file
against them and, when a family or a hyperparameter is added, prints the line to put here.
"""

from __future__ import annotations

__all__ = ["DATASETS", "FAMILIES"]

# family -> (likelihood, hyperparameters: its Config's fields besides the data's spec), in the
# registry's order
FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "independent": ("exact", ("components",)),
    "mixture": ("exact", ("components", "covariance", "em_steps")),
    "nade": ("exact", ("hidden", "components", "output", "order", "activation", "encoding")),
    "made": ("exact", (
        "hidden", "num_masks", "ensemble", "dropout", "components", "output", "order",
        "connectivity", "mask_seed", "order_agnostic"
    )),
    "pixelcnn": ("exact", (
        "hidden", "kernel_size", "first_kernel_size", "output", "components", "num_classes",
        "dropout"
    )),
    "gated-pixelcnn": ("exact", (
        "hidden", "kernel_size", "first_kernel_size", "output", "components", "num_classes",
        "dropout"
    )),
    "realnvp": ("exact", (
        "transforms", "hidden", "logit_alpha", "standardize", "whiten", "layout", "scales",
        "norm", "soft_clamp"
    )),
    "nice": ("exact", ("transforms", "hidden", "logit_alpha", "standardize", "whiten")),
    "glow": ("exact", (
        "transforms", "hidden", "logit_alpha", "standardize", "whiten", "layout", "scales",
        "soft_clamp"
    )),
    "maf": ("exact", (
        "transforms", "hidden", "logit_alpha", "standardize", "whiten", "soft_clamp"
    )),
    "iaf": ("exact", (
        "transforms", "hidden", "logit_alpha", "standardize", "whiten", "soft_clamp"
    )),
    "ffjord": ("exact", (
        "transforms", "hidden", "logit_alpha", "standardize", "whiten", "activation", "trace",
        "solver", "rtol", "atol", "step_size", "adjoint", "time_length"
    )),
    "vae": ("bound", (
        "latent", "hidden", "net", "decoder", "logistic_components", "prior", "components",
        "posterior", "transforms", "context_classes", "beta", "warmup", "free_bits"
    )),
    "ddpm": ("bound", (
        "timesteps", "hidden", "denoiser", "time_features", "schedule", "zero_terminal_snr",
        "parameterization", "variance", "clip_denoised", "standardize", "sampler",
        "sampling_steps", "eta", "spacing"
    )),
    "gan": ("none", (
        "latent", "hidden", "objective", "architecture", "spectral_norm", "prior", "transforms",
        "r1"
    )),
    "lgssm": ("exact", ("state",)),
    "seq-ar": ("exact", ("hidden", "components")),
    "dmm": ("bound", ("latent", "hidden", "warmup", "proposals")),
}

DATASETS: tuple[str, ...] = (
    "digits", "digits-binary", "2spirals", "8gaussians", "checkerboard", "grid25", "moons",
    "pinwheel", "rings", "lorenz", "co2", "sunspots", "elnino", "macro",
)
