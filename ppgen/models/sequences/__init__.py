"""Sequence families: generative models of time series, time first (``event_shape == (T, D)``).

- ``lgssm`` (:class:`LGSSM`): linear-Gaussian state space, exact likelihood by Kalman filtering.
- ``seq-ar`` (:class:`SeqAR`): a GRU with a Gaussian-mixture output per step, exact likelihood.
- ``dmm`` (:class:`DMM`): the deep Markov model, SVI with KL annealing, scored by a lower bound.

Each also draws sample paths of the future given an observed past (``ppgen.forecast``).
"""

from __future__ import annotations

__all__ = ["DMM", "LGSSM", "DMMConfig", "LGSSMConfig", "SeqAR", "SeqARConfig", "SequenceModel"]

from ppgen.models.sequences.common import SequenceModel
from ppgen.models.sequences.dmm import DMM, DMMConfig
from ppgen.models.sequences.lgssm import LGSSM, LGSSMConfig
from ppgen.models.sequences.seq_ar import SeqAR, SeqARConfig
