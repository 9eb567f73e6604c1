"""Diffusion models as latent Markov chains: DDPM with its closed-form bound, DDIM sampling.

- :mod:`~ppgen.models.diffusion.schedule`: :class:`NoiseSchedule`, the forward process and its
  closed forms (linear and cosine schedules, DDPM and DDIM steps);
- :mod:`~ppgen.models.diffusion.decoder`: :class:`DiscretizedGaussian`, discrete data's decoder;
- :mod:`~ppgen.models.diffusion.samplers`: the DDPM (ancestral, respaced) and DDIM loops, and
  the few-step ODE solvers DPM-Solver++(2M) and Heun (EDM);
- :mod:`~ppgen.models.diffusion.probability_flow`: the probability-flow ODE's exact likelihood;
- :mod:`~ppgen.models.diffusion.config`: :class:`DDPMConfig`;
- :mod:`~ppgen.models.diffusion.ddpm`: :class:`DDPM`, the family (registered as ``"ddpm"``).
"""

from __future__ import annotations

__all__ = [
    "DDPM",
    "DDPMConfig",
    "DiffusionBound",
    "DiscretizedGaussian",
    "NoiseSchedule",
    "ScheduleError",
    "probability_flow_log_prob",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_heun",
]

from ppgen.models.diffusion.config import DDPMConfig
from ppgen.models.diffusion.ddpm import DDPM, DiffusionBound
from ppgen.models.diffusion.decoder import DiscretizedGaussian
from ppgen.models.diffusion.probability_flow import probability_flow_log_prob
from ppgen.models.diffusion.samplers import (
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_heun,
)
from ppgen.models.diffusion.schedule import NoiseSchedule, ScheduleError
