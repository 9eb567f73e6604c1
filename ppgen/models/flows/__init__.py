r"""Normalizing flows: NICE, RealNVP, Glow, MAF, IAF and FFJORD, and their layers.

One module per variant (STYLE.md, section 1): ``core`` (transforms with ``call_and_ladj``, lazy
layers, :class:`NormalizingFlow`, the family base), ``layers`` (actnorm, batch norm, squeeze,
factor-out, invertible 1x1 convolution), ``coupling`` (NICE, RealNVP), ``glow``,
``autoregressive`` (MAF, IAF) and ``ffjord``.

The layers are building blocks: compose them with :class:`Flow` into a conditional
distribution. :func:`build_maf` is the public builder other families compose (the VAE's IAF
posterior and MAF prior, the GAN's MAF prior): a family imports it, never the layers' internals.

Example:
    >>> import torch
    >>> from ppgen.models.flows import Flow, MaskedAffineAutoregressive
    >>> prior = Flow([MaskedAffineAutoregressive(2, hidden=[16]) for _ in range(2)], (2,))
    >>> z = prior().rsample((5,))
    >>> prior().log_prob(z).shape
    torch.Size([5])
"""

from __future__ import annotations

__all__ = [
    "CNF",
    "FFJORD",
    "IAF",
    "MAF",
    "NICE",
    "AbstractFlow",
    "ActNorm",
    "AffineCoupling",
    "BatchNorm",
    "ComposedTransform",
    "ConvAffineCoupling",
    "DiagonalScale",
    "FFJORDConfig",
    "FactorOut",
    "Flatten",
    "Flow",
    "FlowConfig",
    "FlowTransform",
    "Glow",
    "GlowConfig",
    "IAFConfig",
    "InvertibleLinear",
    "LazyComposedTransform",
    "LazyTransform",
    "MAFConfig",
    "MaskedAffineAutoregressive",
    "NICEConfig",
    "NormalizingFlow",
    "Permutation",
    "RealNVP",
    "RealNVPConfig",
    "SequentialDensityError",
    "Squeeze",
    "StandardNormal",
    "alternating_orders",
    "build_maf",
    "flow_sample",
    "maf_layers",
]

from ppgen.models.flows.autoregressive import (
    IAF,
    MAF,
    IAFConfig,
    MAFConfig,
    MaskedAffineAutoregressive,
    alternating_orders,
    build_maf,
    maf_layers,
)
from ppgen.models.flows.core import (
    AbstractFlow,
    ComposedTransform,
    Flow,
    FlowConfig,
    FlowTransform,
    LazyComposedTransform,
    LazyTransform,
    NormalizingFlow,
    SequentialDensityError,
    StandardNormal,
    flow_sample,
)
from ppgen.models.flows.coupling import (
    NICE,
    AffineCoupling,
    ConvAffineCoupling,
    DiagonalScale,
    NICEConfig,
    RealNVP,
    RealNVPConfig,
)
from ppgen.models.flows.ffjord import CNF, FFJORD, FFJORDConfig
from ppgen.models.flows.glow import Glow, GlowConfig
from ppgen.models.flows.layers import (
    ActNorm,
    BatchNorm,
    FactorOut,
    Flatten,
    InvertibleLinear,
    Permutation,
    Squeeze,
)
