"""Test environment: float64 by default, --device/--dtype options, a seed per test, and the
``small_model`` fixture that builds a small model of any family (see ``tests/families.py``)."""

from __future__ import annotations

import os

import pytest
import torch

from tests.families import build_small

torch.set_num_threads(int(os.environ.get("PPGEN_TEST_THREADS", "2")))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="device for tests that honour it (cpu, cuda)")
    parser.addoption("--dtype", default="float64", choices=["float32", "float64"],
                     help="dtype for exact mathematical checks")


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.config.getoption("--device"))


@pytest.fixture
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return getattr(torch, request.config.getoption("--dtype"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same random state (torch, numpy, random)."""
    import pyro

    pyro.set_rng_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """ppgen's cache (the metrics' digits feature classifier) goes to a temporary directory
    during tests, never to the user's cache."""
    old = os.environ.get("PPGEN_CACHE_DIR")
    os.environ["PPGEN_CACHE_DIR"] = str(tmp_path_factory.mktemp("ppgen-cache"))
    yield
    if old is None:
        os.environ.pop("PPGEN_CACHE_DIR", None)
    else:
        os.environ["PPGEN_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def small_model():
    """``small_model(family, dataset, **overrides)``: the family built small for the dataset
    (:func:`tests.families.build_small`); ``ValueError`` where the family refuses the data."""
    return build_small
