"""The configuration of :class:`~ppgen.models.diffusion.ddpm.DDPM`: every architectural and
sampling choice, recorded in checkpoints so a model rebuilds exactly."""

from __future__ import annotations

__all__ = ["DDPMConfig"]

import dataclasses
from typing import Literal

from ppgen.models.base import ModelConfig
from ppgen.models.diffusion.schedule import ScheduleError

Parameterization = Literal["epsilon", "x0", "v"]
Variance = Literal["small", "large", "learned"]
Sampler = Literal["ddpm", "ddim", "dpm++2m", "heun"]
SpacingChoice = Literal["uniform", "quadratic", "karras"]
BoundMethod = Literal["exact", "importance"]
LossKind = Literal["simple", "vlb", "hybrid"]

_DEFAULT_HIDDEN = {"mlp": (256, 256, 256), "unet": (32, 64)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DDPMConfig(ModelConfig):
    """Configuration of :class:`DDPM`.

    Arguments:
        timesteps: T, the length of the chain.
        hidden: the denoiser's widths: MLP hidden widths, or U-Net channels per resolution
            level; None for the default, ``(256, 256, 256)`` (MLP) or ``(32, 64)`` (U-Net).
        denoiser: ``"mlp"``, ``"unet"``, or ``"auto"`` (a U-Net for image-shaped data
            ``(C, H, W)``, else an MLP on the flattened data).
        time_features: the width of the sinusoidal time embedding.
        schedule: the noise schedule, ``"linear"`` or ``"cosine"``.
        zero_terminal_snr: rescale the schedule to :math:`\\bar\\alpha_T = 0` (needs ``x0`` or
            ``v`` parameterization).
        parameterization: what the network predicts: ``"epsilon"`` (the noise), ``"x0"`` (the
            data) or ``"v"`` (the velocity).
        variance: the reverse variances: fixed ``"small"`` (:math:`\\tilde\\beta_t`), fixed
            ``"large"`` (:math:`\\beta_t`), or ``"learned"`` (an interpolation of the two in log
            space, Nichol & Dhariwal 2021; train it with the hybrid loss, the default then).
        clip_denoised: clamp the predicted x0 to [-1, 1] in the reverse steps (the model, its
            bound and its samplers alike); None means True for discrete data (whose scaled
            support is [-1, 1]) and False for continuous data.
        standardize: standardize continuous data with the first training batch's moments.
        sampler: the default sampler of :meth:`DDPM.sample`: ``"ddpm"`` (ancestral: exactly
            the model's distribution with all T steps), ``"ddim"``, or a few-step solver of the
            probability-flow ODE, ``"dpm++2m"`` (DPM-Solver++(2M)) or ``"heun"`` (EDM).
        sampling_steps: the default number of sampler steps; None means T for DDPM, 50 (or T
            if smaller) for DDIM and 10 (or T) for the ODE solvers (Heun calls the network
            ``2 steps - 1`` times).
        spacing: the time grid of the ODE solvers (``"uniform"``, ``"quadratic"`` or
            ``"karras"``, see :meth:`NoiseSchedule.sampling_times`); None means
            ``"quadratic"`` for DPM-Solver++ and ``"uniform"`` for Heun (measured best on moons
            at about 10 network calls).
        eta: the default DDIM noise level (0: deterministic DDIM; 1: DDPM's variance).

    Example:
        >>> cfg = DDPMConfig(event_shape=(1, 8, 8), kind="discrete", levels=17, timesteps=100)
        >>> cfg.denoiser_kind(), cfg.hidden_widths("unet")
        ('unet', (32, 64))
        >>> DDPMConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    timesteps: int = 1000
    hidden: tuple[int, ...] | None = None
    denoiser: Literal["auto", "mlp", "unet"] = "auto"
    time_features: int = 128
    schedule: Literal["linear", "cosine"] = "linear"
    zero_terminal_snr: bool = False
    parameterization: Parameterization = "epsilon"
    variance: Variance = "small"
    clip_denoised: bool | None = None
    standardize: bool = True
    sampler: Sampler = "ddpm"
    sampling_steps: int | None = None
    eta: float = 0.0
    spacing: SpacingChoice | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        choices = {
            "denoiser": ("auto", "mlp", "unet"),
            "schedule": ("linear", "cosine"),
            "parameterization": ("epsilon", "x0", "v"),
            "variance": ("small", "large", "learned"),
            "sampler": ("ddpm", "ddim", "dpm++2m", "heun"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.timesteps < 2:
            raise ValueError(f"timesteps must be at least 2, got {self.timesteps}")
        if self.zero_terminal_snr and self.parameterization == "epsilon":
            raise ScheduleError(
                "zero_terminal_snr=True with parameterization='epsilon' cannot recover x0 at "
                "t = T (alpha_bar_T = 0); use parameterization='v' or 'x0'"
            )
        if self.sampling_steps is not None and not 1 <= self.sampling_steps <= self.timesteps:
            raise ValueError(
                f"sampling_steps must lie in [1, timesteps={self.timesteps}], "
                f"got {self.sampling_steps}"
            )
        if self.spacing is not None and self.spacing not in ("uniform", "quadratic", "karras"):
            raise ValueError(
                f"spacing must be one of ('uniform', 'quadratic', 'karras') or None, "
                f"got {self.spacing!r}"
            )
        if not 0.0 <= self.eta:
            raise ValueError(f"eta must be non-negative, got {self.eta}")
        if self.time_features < 2:
            raise ValueError(f"time_features must be at least 2, got {self.time_features}")
        self.denoiser_kind()  # validates the shape for a U-Net

    def denoiser_kind(self) -> Literal["mlp", "unet"]:
        """The denoiser ``"auto"`` resolves to for this data shape (validating a U-Net's)."""
        image = len(self.event_shape) == 3
        if self.denoiser == "mlp" or (self.denoiser == "auto" and not image):
            return "mlp"
        if not image:
            raise ValueError(
                f"denoiser='unet' needs image-shaped data (C, H, W); got event_shape "
                f"{self.event_shape}; use denoiser='mlp'"
            )
        levels = len(self.hidden_widths("unet"))
        factor = 2 ** (levels - 1)
        if self.event_shape[1] % factor or self.event_shape[2] % factor:
            if self.denoiser == "auto":
                return "mlp"
            raise ValueError(
                f"a U-Net with {levels} levels needs H and W divisible by {factor}; got "
                f"{self.event_shape[1:]}: pass fewer hidden levels or denoiser='mlp'"
            )
        return "unet"

    def hidden_widths(self, kind: Literal["mlp", "unet"]) -> tuple[int, ...]:
        """``hidden``, or the default widths of denoiser ``kind``."""
        return tuple(self.hidden) if self.hidden is not None else _DEFAULT_HIDDEN[kind]
