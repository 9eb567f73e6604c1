"""Doctest environment: seeded, like the test suite."""

import pytest


@pytest.fixture(autouse=True)
def _seed_doctests() -> None:
    import pyro

    pyro.set_rng_seed(0)
