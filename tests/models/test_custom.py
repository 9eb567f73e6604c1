"""User-defined Pyro programs through ppgen.from_pyro: fit, evaluate, save, Pyro tools."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.nn import PyroModule, PyroParam, pyro_method
from torch import nn
from torch.distributions import constraints

import ppgen
from ppgen import checkpoint as ckpt
from ppgen.models.custom import LateParameterError


def gmm_model(x=None):
    """A 1-D mixture of two Gaussians, written by a user, marginalized over the assignments."""
    weights = pyro.param("weights", torch.tensor([0.5, 0.5]), constraint=constraints.simplex)
    locs = pyro.param("locs", torch.tensor([-0.5, 0.5]))
    scales = pyro.param("scales", torch.tensor([1.0, 1.0]), constraint=constraints.positive)
    mix = dist.MixtureSameFamily(dist.Categorical(weights), dist.Normal(locs, scales))
    with pyro.plate("data", 1 if x is None else x.shape[0]):
        return pyro.sample("x", dist.Independent(mix.expand([1]), 1), obs=x)


def test_user_gaussian_mixture_recovers_its_parameters():
    g = torch.Generator().manual_seed(0)
    n = 4000
    z = torch.rand(n, generator=g) < 0.3
    x = torch.where(
        z, -2.0 + 0.5 * torch.randn(n, generator=g), 1.5 + 0.8 * torch.randn(n, generator=g)
    )
    data = ppgen.datasets.Dataset("user-gmm", x[:, None], "continuous")
    m = ppgen.from_pyro(gmm_model, event_shape=(1,), likelihood="exact", example=data.data[:2])
    assert sorted(n for n, _ in m.named_parameters()) == [
        "user_params.locs",
        "user_params.scales",
        "user_params.weights",
    ]
    ppgen.fit(m, data, steps=600, batch_size=1000, lr=0.05, progress=False, device="cpu")
    with torch.no_grad():
        trace = pyro.poutine.trace(m.model).get_trace(data.data[:1])
        mix = trace.nodes["x"]["fn"].base_dist
        weights = mix.mixture_distribution.probs.squeeze()
        locs = mix.component_distribution.loc.squeeze()
        scales = mix.component_distribution.scale.squeeze()
    order = locs.argsort()
    assert torch.allclose(locs[order], torch.tensor([-2.0, 1.5]), atol=0.1), locs
    assert torch.allclose(scales[order], torch.tensor([0.5, 0.8]), atol=0.1), scales
    assert torch.allclose(weights[order], torch.tensor([0.3, 0.7]), atol=0.05), weights
    assert len(pyro.get_param_store()) == 0, "user params never reach the global store"
    ev = ppgen.evaluate(m, data)
    assert ev.kind == "exact"


def test_wrapped_program_checkpoints_through_load_into(tmp_path):
    m = ppgen.from_pyro(gmm_model, event_shape=(1,), likelihood="exact", example=torch.zeros(2, 1))
    with torch.no_grad():
        m.user_params["locs"].add_(3.0)
    ppgen.save(m, tmp_path / "m.pt")
    with pytest.raises(ckpt.CheckpointError, match="model_class"):
        ppgen.load(tmp_path / "m.pt")
    fresh = ppgen.from_pyro(
        gmm_model, event_shape=(1,), likelihood="exact", example=torch.zeros(2, 1)
    )
    ckpt.load_into(fresh, tmp_path / "m.pt")
    x = torch.randn(5, 1)
    assert torch.equal(fresh.log_prob(x), m.log_prob(x))
    assert m.sample(7, seed=0).shape == (7, 1)


def test_bound_needs_a_guide():
    with pytest.raises(ValueError, match="guide"):
        ppgen.from_pyro(gmm_model, event_shape=(1,), likelihood="bound")


# ---- which parameters a wrapped program trains --------------------------------------------------


class _ValueEqualNet(PyroModule):
    """A dataclass-style PyroModule: ``__eq__`` without ``__hash__`` makes it unhashable, so
    torch cannot hold it as a submodule (torch keeps modules in sets)."""

    def __init__(self) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(2))
        self.lin = PyroModule[nn.Linear](2, 2)
        self.register_buffer("shift", torch.zeros(2))
        self.enc = nn.Linear(2, 4)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ValueEqualNet) and torch.equal(self.loc, other.loc)

    def model(self, x=None):
        with pyro.plate("data", 1 if x is None else x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            loc = self.lin(z) + self.loc + self.shift
            return pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

    def guide(self, x=None):
        with pyro.plate("data", x.shape[0]):
            h = self.enc(x)
            pyro.sample("z", dist.Normal(h[..., :2], F.softplus(h[..., 2:])).to_event(1))


def test_bound_methods_of_an_unhashable_module_are_trained_in_place(tmp_path):
    net = _ValueEqualNet()
    assert type(net).__hash__ is None
    m = ppgen.from_pyro(net.model, net.guide, event_shape=(2,), likelihood="bound")
    own = {id(p) for p in net.lin.parameters()} | {id(p) for p in net.enc.parameters()}
    own.add(id(net.loc))
    assert {id(p) for p in m.parameters()} == own, "exactly the owner's parameters, by identity"
    data = ppgen.datasets.Dataset("d", torch.randn(64, 2) + 3.0, "continuous")
    before = [p.detach().clone() for p in (net.loc, net.lin.bias, net.enc.weight)]
    ppgen.fit(m, data, steps=3, batch_size=32, progress=False, device="cpu")
    after = (net.loc, net.lin.bias, net.enc.weight)
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert len(pyro.get_param_store()) == 0
    m.double()  # forwarded to the module itself (parameters and buffers)
    assert net.loc.dtype == net.shift.dtype == torch.float64
    assert m.elbo(torch.zeros(3, 2, dtype=torch.float64)).shape == (3,)
    ppgen.save(m, tmp_path / "m.pt")
    fresh_net = _ValueEqualNet().double()
    fresh = ppgen.from_pyro(fresh_net.model, fresh_net.guide, event_shape=(2,),
                            likelihood="bound")
    ckpt.load_into(fresh, tmp_path / "m.pt")
    assert torch.equal(fresh_net.loc, net.loc) and torch.equal(fresh_net.enc.weight,
                                                              net.enc.weight)


def test_plain_functions_train_the_modules_they_capture():
    """A closure over a PyroModule and a global nn.Module registered with pyro.module: their own
    parameters are the wrapper's (never copies), and a loss reaches them."""
    decoder = PyroModule[nn.Linear](1, 2)  # a PyroModule built under Pyro's default settings

    def model(x=None):
        pyro.module("encoder", _ENCODER)  # the classic Pyro idiom for a plain nn.Module
        with pyro.plate("data", 1 if x is None else x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            return pyro.sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x)

    def guide(x=None):
        pyro.module("encoder", _ENCODER)
        with pyro.plate("data", x.shape[0]):
            h = _ENCODER(x)
            pyro.sample("z", dist.Normal(h[..., :1], F.softplus(h[..., 1:])).to_event(1))

    m = ppgen.from_pyro(model, guide, event_shape=(2,), likelihood="bound",
                        example=torch.zeros(2, 2))
    expected = {id(p) for p in (*decoder.parameters(), *_ENCODER.parameters())}
    assert {id(p) for p in m.parameters()} == expected
    loss = -m.elbo(torch.randn(5, 2)).mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    assert len(pyro.get_param_store()) == 0


_ENCODER = nn.Linear(2, 2)


def test_a_parameter_first_met_after_construction_is_an_error():
    with pytest.raises(LateParameterError, match="example="):
        ppgen.from_pyro(gmm_model, event_shape=(1,), likelihood="exact").log_prob(
            torch.zeros(2, 1)
        )

    def uses_a_module(x=None):
        pyro.module("net", _ENCODER)
        with pyro.plate("data", 1 if x is None else x.shape[0]):
            return pyro.sample("x", dist.Normal(_ENCODER.bias, 1.0).to_event(1), obs=x)

    # the module is reached by name at construction, so no example is needed
    m = ppgen.from_pyro(uses_a_module, event_shape=(2,), likelihood="exact")
    assert m.log_prob(torch.zeros(3, 2)).shape == (3,)


def test_a_pyro_param_attribute_of_a_bound_module_stays_out_of_the_global_store():
    class Scaled(PyroModule):
        def __init__(self) -> None:
            super().__init__()
            self.scale = PyroParam(torch.ones(2), constraint=constraints.positive)

        @pyro_method
        def model(self, x=None):
            with pyro.plate("data", 1 if x is None else x.shape[0]):
                return pyro.sample("x", dist.Normal(0.0, self.scale).to_event(1), obs=x)

    s = Scaled()
    m = ppgen.from_pyro(s.model, event_shape=(2,), likelihood="exact")
    x = torch.randn(4, 2)
    expected = dist.Normal(0.0, 1.0).log_prob(x).sum(-1)
    assert torch.allclose(m.log_prob(x), expected)
    assert [n for n, _ in m.named_parameters()] == ["user_modules.0.scale_unconstrained"]
    assert len(pyro.get_param_store()) == 0


class _TwoLayer(PyroModule):
    """A user's hierarchical model: z2 -> z1 -> x with a bottom-up guide q(z1|x) q(z2|z1)."""

    def __init__(self, d: int = 3) -> None:
        super().__init__()
        self.top, self.dec = nn.Linear(2, 4), nn.Linear(2, d)
        self.enc1, self.enc2 = nn.Linear(d, 4), nn.Linear(2, 4)

    @staticmethod
    def _normal(h):
        return dist.Normal(h[..., :2], F.softplus(h[..., 2:]) + 1e-3).to_event(1)

    def model(self, x=None):
        with pyro.plate("data", 1 if x is None else x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            z1 = pyro.sample("z1", self._normal(self.top(z2)))
            return pyro.sample("x", dist.Normal(self.dec(z1), 0.3).to_event(1), obs=x)

    def guide(self, x=None):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", self._normal(self.enc1(x)))
            pyro.sample("z2", self._normal(self.enc2(z1)))


def test_a_users_latent_model_gets_an_iwae_bound_and_arviz_posteriors():
    net = _TwoLayer()
    m = ppgen.from_pyro(net.model, net.guide, event_shape=(3,), likelihood="bound")
    g = torch.Generator().manual_seed(0)
    points = torch.randn(300, 3, generator=g) @ torch.randn(3, 3, generator=g)
    data = ppgen.datasets.Dataset("d", points, "continuous")
    ppgen.fit(m, data, steps=30, batch_size=100, lr=1e-2, progress=False, device="cpu")
    x = data.data[:20]
    ev = ppgen.evaluate(m, x, estimator="iwae", num_particles=200, seed=0)
    assert ev.kind == "lower_bound" and ev.estimator == "iwae-200"
    with torch.no_grad():
        elbo = torch.stack([m.elbo(x) for _ in range(200)]).mean(0)
    # IWAE-200 >= E[ELBO]: a gap far beyond the Monte Carlo noise of either side
    assert float((ev.per_example - elbo).mean()) > 0.05, (ev.per_example - elbo)
    post = ppgen.posterior(m, x[:2], method="guide", num_samples=40, num_chains=2)
    assert post.posterior["z1"].shape == post.posterior["z2"].shape == (2, 40, 2, 2)
    assert post.log_likelihood["x"].shape == (2, 40, 2)
    nuts = ppgen.posterior(m, x[:2], method="nuts", num_samples=10, num_chains=2,
                           warmup_steps=10)
    assert set(nuts.posterior.data_vars) == {"z1", "z2"} and "diverging" in nuts.sample_stats
    import arviz as az

    assert az.rhat(nuts)["z2"].shape == (2, 2)
