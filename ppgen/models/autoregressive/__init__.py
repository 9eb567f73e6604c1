"""Autoregressive families: exact densities factorized as p(x) = prod_i p(x_i | x_<i).

One module per variant (STYLE.md, section 1): ``nade.py``, ``made.py``, ``pixelcnn.py``; and
``decoder.py``, the conditional MADE :class:`MADEDecoder`, a public building block other
families compose (the VAE's autoregressive decoder).
"""

from __future__ import annotations

__all__ = [
    "MADE",
    "NADE",
    "GatedPixelCNN",
    "MADEConfig",
    "MADEDecoder",
    "NADEConfig",
    "PixelCNN",
    "PixelCNNConfig",
]

from ppgen.models.autoregressive.decoder import MADEDecoder
from ppgen.models.autoregressive.made import MADE, MADEConfig
from ppgen.models.autoregressive.nade import NADE, NADEConfig
from ppgen.models.autoregressive.pixelcnn import GatedPixelCNN, PixelCNN, PixelCNNConfig
