"""ppgen/models/capabilities.py: what each family declares it can do, the shared layer's checks
(an objective or estimator refuses a model without the capability it needs, naming the
capability, before any work), the protocol left without family-shaped hooks, and user classes
written against the old hooks still working (with a DeprecationWarning)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import ClassVar

import pyro
import pyro.distributions as dist
import pytest
import torch

import ppgen
from ppgen.inference.implicit import resolve_observation_scale
from ppgen.inference.objectives import make_objective
from ppgen.models.base import AbstractGenerativeModel, ModelConfig, pyro_program
from ppgen.models.capabilities import (
    CAPABILITIES,
    DenoisingModel,
    ImplicitModel,
    InitializesFromData,
    MissingCapabilityError,
)

FAMILIES = ppgen.models.names()
SMALL = {"hidden": [8], "transforms": 2, "latent": 2, "timesteps": 4, "components": 2}

# What each registered family can do. A new family adds its row (the test below fails until it
# does), so a capability is never acquired or lost by accident.
DECLARED = {
    "independent": {InitializesFromData},
    "nade": {InitializesFromData},
    "made": {InitializesFromData},
    "pixelcnn": set(),
    "gated-pixelcnn": set(),
    "realnvp": {InitializesFromData},
    "nice": {InitializesFromData},
    "glow": {InitializesFromData},
    "maf": {InitializesFromData},
    "iaf": {InitializesFromData},
    "ffjord": {InitializesFromData},
    "vae": {InitializesFromData},
    "ddpm": {DenoisingModel, InitializesFromData},
    "gan": {ImplicitModel, InitializesFromData},
    "mixture": {InitializesFromData},
    "lgssm": {InitializesFromData},
    "seq-ar": {InitializesFromData},
    "dmm": set(),
}
NEEDS = {"denoising": DenoisingModel, "adversarial": ImplicitModel}


def _small(family: str) -> AbstractGenerativeModel:
    cls = ppgen.models.get(family)
    names = {f.name for f in dataclasses.fields(cls.Config)}
    data = "digits" if family in ("pixelcnn", "gated-pixelcnn", "glow") else "moons"
    ds = ppgen.datasets.load(data, "val").subset(16)
    return ppgen.build(family, ds, **{k: v for k, v in SMALL.items() if k in names})


def test_every_family_declares_its_capabilities():
    assert set(DECLARED) == set(FAMILIES), "add the new family's row to DECLARED"
    for family, caps in DECLARED.items():
        cls = ppgen.models.get(family)
        have = {c for c in set(CAPABILITIES.values()) if issubclass(cls, c)}
        assert have == caps, family


def test_the_protocol_carries_no_family_shaped_hook():
    """What only some families can do lives in a capability, not on the base class."""
    for name in CAPABILITIES:
        assert not hasattr(AbstractGenerativeModel, name), name


@pytest.mark.parametrize("objective", sorted(NEEDS))
@pytest.mark.parametrize("family", FAMILIES)
def test_an_objective_refuses_a_model_without_its_capability(family, objective):
    """The fault class: every (family, capability-bound objective) pair either builds the
    objective (the family declares the capability) or is refused at once with a ValueError
    naming the capability and the objective, and the model's parameters are untouched."""
    m = _small(family)
    capability = NEEDS[objective]
    if isinstance(m, capability):
        make_objective(objective, m)
        return
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(MissingCapabilityError, match=capability.__name__) as info:
        make_objective(objective, m)
    assert isinstance(info.value, ValueError)
    assert f"'{objective}' objective" in str(info.value)
    assert m.default_objective in str(info.value)  # the hint names the one that fits
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_users_implicit_program_is_an_implicit_model_with_the_default_critic():
    def model(x=None):
        with pyro.plate("data", 1 if x is None else len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            return pyro.sample("x", dist.Delta(2 * z, event_dim=1), obs=x)

    m = ppgen.from_pyro(model, event_shape=(2,), likelihood="none")
    assert isinstance(m, ImplicitModel) and m.observation_scale is None
    critic = m.make_discriminator()
    assert critic(torch.randn(5, 2)).shape == (5,)
    assert resolve_observation_scale(m, 0.3) == 0.3


def test_an_explicit_model_has_no_observation_scale():
    m = _small("maf")
    assert not isinstance(m, ImplicitModel)
    assert resolve_observation_scale(m, None) is None
    with pytest.raises(ValueError, match="positive"):
        resolve_observation_scale(m, -1.0)


def test_declaring_a_capability_without_its_method_fails_at_construction():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class _Config(ModelConfig):
        pass

    class Forgetful(AbstractGenerativeModel, DenoisingModel):
        likelihood: ClassVar = "exact"
        Config: ClassVar = _Config

        @pyro_program
        def model(self, x=None, context=None):
            return None

    with pytest.raises(TypeError, match="denoising_loss"):
        Forgetful(event_shape=(2,))


@dataclasses.dataclass(frozen=True, kw_only=True)
class _LegacyConfig(ModelConfig):
    pass


def test_a_users_class_with_the_old_hooks_keeps_working_with_a_deprecation_warning():
    """A class written before capabilities (``initialize`` and ``denoising_loss`` defined,
    nothing declared) is registered with both, so the trainer initializes it and the denoising
    objective accepts it; the warning names the base to add."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        class Legacy(AbstractGenerativeModel):
            likelihood: ClassVar = "exact"
            Config: ClassVar = _LegacyConfig
            default_objective: ClassVar = "denoising"

            def __init__(self, config=None, **fields):
                super().__init__(config, **fields)
                self.loc = torch.nn.Parameter(torch.zeros(self.event_shape))

            @pyro_program
            def model(self, x=None, context=None):
                with pyro.plate("data", 1 if x is None else x.shape[0]):
                    return pyro.sample("x", dist.Normal(self.loc, 1.0).to_event(1), obs=x)

            def initialize(self, x):
                with torch.no_grad():
                    self.loc.copy_(x.mean(0))

            def denoising_loss(self, x, context=None, **options):
                return ((x - self.loc) ** 2).sum(-1)

    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any("InitializesFromData" in m for m in messages), messages
    assert any("DenoisingModel" in m for m in messages), messages
    m = Legacy(event_shape=(2,))
    assert isinstance(m, InitializesFromData) and isinstance(m, DenoisingModel)
    data = ppgen.datasets.Dataset("shifted", torch.randn(64, 2) + 5.0, "continuous")
    ppgen.fit(m, data, steps=1, batch_size=64, lr=1e-9, progress=False, device="cpu")
    assert torch.allclose(m.loc.detach(), data.data.mean(0), atol=1e-6)  # initialized from data
