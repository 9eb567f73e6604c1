"""Every buildable family, by name.

Example:
    >>> import ppgen
    >>> "independent" in ppgen.models.names()
    True
"""

from __future__ import annotations

__all__ = [
    "MAX_PARAMETERS",
    "AbstractGenerativeModel",
    "ModelConfig",
    "build",
    "family_name",
    "get",
    "names",
]

from typing import Any

from ppgen.datasets.base import Dataset
from ppgen.models.autoregressive import MADE, NADE, GatedPixelCNN, PixelCNN
from ppgen.models.base import MAX_PARAMETERS, AbstractGenerativeModel, ModelConfig
from ppgen.models.diffusion import DDPM
from ppgen.models.flows import FFJORD, IAF, MAF, NICE, Glow, RealNVP
from ppgen.models.gan import GAN
from ppgen.models.independent import Independent
from ppgen.models.mixture import Mixture
from ppgen.models.sequences import DMM, LGSSM, SeqAR
from ppgen.models.vae import VAE

# One line per family: name -> final class. Keep sorted by family kind, then name.
_FAMILIES: dict[str, type[AbstractGenerativeModel]] = {
    "independent": Independent,
    "mixture": Mixture,
    "nade": NADE,
    "made": MADE,
    "pixelcnn": PixelCNN,
    "gated-pixelcnn": GatedPixelCNN,
    "realnvp": RealNVP,
    "nice": NICE,
    "glow": Glow,
    "maf": MAF,
    "iaf": IAF,
    "ffjord": FFJORD,
    "vae": VAE,
    "ddpm": DDPM,
    "gan": GAN,
    "lgssm": LGSSM,
    "seq-ar": SeqAR,
    "dmm": DMM,
}


def names() -> list[str]:
    """Every family name :func:`build` accepts."""
    return list(_FAMILIES)


def get(name: str) -> type[AbstractGenerativeModel]:
    """The class of family ``name``."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {names()}") from None


def family_name(model: AbstractGenerativeModel) -> str | None:
    """The registry name of ``model``'s class, or None for a user's own class."""
    for name, cls in _FAMILIES.items():
        if type(model) is cls:
            return name
    return None


def build(
    name: str,
    dataset: Dataset,
    *,
    max_parameters: int | None = MAX_PARAMETERS,
    **hparams: Any,
) -> AbstractGenerativeModel:
    """Build family ``name`` for ``dataset``'s shape and kind with hyperparameters ``hparams``.

    The hyperparameters are parsed and checked by the family's config (one int for a list of
    widths is a list of one; wrong types, sizes below 1 and unknown names are one-line errors
    naming the family and the field). A model that would hold more than ``max_parameters``
    values (default 2**28, about 1 GiB in float32; None: no limit) is refused before anything
    is allocated.
    """
    cls = get(name)
    spec = dataset.spec()
    clash = sorted(set(spec) & set(hparams))
    if clash:
        raise ValueError(f"{clash[0]!r} comes from the dataset; do not pass it to build()")
    config = cls.config_from(**spec, **hparams)
    cls.check_size(config, max_parameters)
    return cls(config)
