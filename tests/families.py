"""Small models of every family, for tests (a helper module, not a test file).

One declaration of the small hyperparameters, by the names families share, so every family
builds in milliseconds. ``tests/conftest.py`` serves it as the ``small_model`` fixture; import it
directly (``from tests.families import build_small``) where a fixture cannot reach: a
parametrization computed at collection time, or a script run in a subprocess.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ppgen

# by shared name: a family takes the ones its Config has and ignores the rest
SMALL: dict[str, Any] = {
    "hidden": [16], "transforms": 2, "latent": 2, "timesteps": 10, "components": 2,
}


def small_hparams(family: str) -> dict[str, Any]:
    """The entries of :data:`SMALL` that family ``family``'s config declares."""
    names = {f.name for f in dataclasses.fields(ppgen.models.get(family).Config)}
    return {k: v for k, v in SMALL.items() if k in names}


def build_small(family: str, dataset: ppgen.datasets.Dataset,
                **overrides: Any) -> ppgen.models.AbstractGenerativeModel:
    """Family ``family`` built small for ``dataset`` (``overrides`` win over :data:`SMALL`);
    a family that cannot model the data raises its ``ValueError`` as ``ppgen.build`` does."""
    return ppgen.build(family, dataset, **{**small_hparams(family), **overrides})
