"""The adversarial objective (``ppgen/inference/adversarial.py``): every loss against its
formula on a linear discriminator, the generator step leaving the discriminator's gradients
alone, the critic schedule and optimizer options, the diagnostics (value function, mode-collapse
alarm), and a user's implicit Pyro program trained adversarially (the objective names no
family)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule

import ppgen
from ppgen.inference.implicit import ImplicitSiteError, observed_and_generated
from ppgen.inference.objectives import make_objective
from ppgen.models.gan import GAN


def _gan(event_shape=(2,), **kw):
    kw = {"latent": 2, "hidden": [8], **kw}
    return GAN(event_shape=tuple(event_shape), kind="continuous", levels=None, **kw)


class _Linear(torch.nn.Module):
    """D(x) = w . x + b: its input gradient is w everywhere."""

    def __init__(self, w, b):
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())
        self.b = torch.nn.Parameter(torch.tensor(b, dtype=w.dtype))

    def forward(self, x):
        return x.reshape(len(x), -1) @ self.w + self.b


@pytest.mark.parametrize("loss", ["ns", "minimax", "hinge", "wgan-gp"])
@pytest.mark.parametrize("r1", [0.0, 0.7])
def test_losses_match_their_formulas(loss, r1):
    torch.manual_seed(1)
    m = _gan((3,)).double()
    obj = make_objective("adversarial", m, loss=loss, r1=r1, gp=2.5)
    w = torch.tensor([0.3, -1.2, 0.5], dtype=torch.float64)
    obj.discriminator = _Linear(w, 0.1)
    x = torch.randn(7, 3, dtype=torch.float64)

    with torch.random.fork_rng():
        torch.manual_seed(5)
        got_d = obj.loss(m, x, None, "discriminator", 0)
        got_g = obj.loss(m, x, None, "generator", 0)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        real, fake = observed_and_generated(m, x)
        eps = torch.rand(7, 1, dtype=torch.float64) if loss == "wgan-gp" else None
        _, fake_g = observed_and_generated(m, x)
    d_real, d_fake, d_fake_g = real @ w + 0.1, fake @ w + 0.1, fake_g @ w + 0.1
    if loss in ("ns", "minimax"):
        want_d = -(torch.log(torch.sigmoid(d_real)).mean()
                   + torch.log(1 - torch.sigmoid(d_fake)).mean())
    elif loss == "hinge":
        want_d = torch.clamp(1 - d_real, min=0).mean() + torch.clamp(1 + d_fake, min=0).mean()
    else:  # a linear critic has gradient norm |w| at every interpolate
        assert eps is not None
        want_d = d_fake.mean() - d_real.mean() + 2.5 * (w.norm() - 1) ** 2
    want_d = want_d + 0.5 * r1 * w.pow(2).sum()  # R1 on a linear D: gamma/2 |w|^2
    want_g = {
        "ns": -torch.log(torch.sigmoid(d_fake_g)).mean(),
        "minimax": torch.log(1 - torch.sigmoid(d_fake_g)).mean(),
        "hinge": -d_fake_g.mean(),
        "wgan-gp": -d_fake_g.mean(),
    }[loss]
    assert torch.allclose(got_d, want_d, atol=1e-12), loss
    assert torch.allclose(got_g, want_g, atol=1e-12), loss


def test_generator_step_leaves_discriminator_gradients_alone():
    m = _gan((2,))
    obj = make_objective("adversarial", m)
    groups = obj.param_groups(m)
    x = torch.randn(16, 2)
    obj.loss(m, x, None, "discriminator", 0).backward()
    d_grads = [p.grad.clone() for p in groups["discriminator"]]
    obj.loss(m, x, None, "generator", 0).backward()
    for p, g in zip(groups["discriminator"], d_grads, strict=True):
        assert torch.equal(p.grad, g), "the generator's loss must not touch D's gradients"
    assert all(p.requires_grad for p in groups["discriminator"])
    assert all(p.grad is not None for p in groups["generator"])


def test_schedule_and_optimizer_options():
    m = _gan((2,))
    obj = make_objective("adversarial", m, loss="wgan-gp")
    assert obj.n_critic == 5
    assert [len(obj.schedule(s)) for s in range(10)] == [1, 1, 1, 1, 2] * 2
    assert obj.optimizer_options("generator", 1e-3) == {"lr": 1e-3, "betas": (0.0, 0.9)}
    obj = make_objective("adversarial", m, lr_discriminator=4e-4, betas_generator=[0.1, 0.2])
    assert obj.optimizer_options("discriminator", 1e-4) == {"lr": 4e-4, "betas": (0.5, 0.999)}
    assert obj.optimizer_options("generator", 1e-4) == {"lr": 1e-4, "betas": (0.1, 0.2)}
    # the model's configured loss and R1 weight are the objective's defaults
    m = _gan((2,), objective="hinge", r1=0.0)
    obj = make_objective("adversarial", m)
    assert (obj.loss_name, obj.r1) == ("hinge", 0.0)


def test_value_function_at_the_indifferent_discriminator_is_minus_two_log_two():
    m = _gan((2,))
    obj = make_objective("adversarial", m, loss="ns")
    obj.discriminator = _Linear(torch.zeros(2), 0.0)
    obj.param_groups(m)
    obj.loss(m, torch.randn(32, 2), None, "discriminator", 0)
    diag = obj.diagnostics()
    assert diag["value"] == pytest.approx(-2 * math.log(2), abs=1e-6)


def test_mode_collapse_alarm_fires_on_a_collapsed_batch_and_not_on_the_data():
    ds = ppgen.datasets.load("8gaussians", "val")
    x = ds.data[:512]
    m = _gan((2,))
    obj = make_objective("adversarial", m)
    # a generator collapsed onto one mode of 8
    obj._discriminator_loss(x, x[x[:, 0] > 1.5][:1].expand(512, 2) + 0.05 * torch.randn(512, 2))
    diag = obj.diagnostics()
    assert diag["coverage"] < 0.25 and diag["mode_collapse"] == 1.0, diag
    obj._discriminator_loss(x, ds.data[512:1024])  # an ideal generator: fresh data
    diag = obj.diagnostics()
    assert diag["coverage"] > 0.9 and diag["mode_collapse"] == 0.0, diag
    assert 0.0 <= diag["d_accuracy_real"] <= 1.0 and 0.0 <= diag["d_accuracy_fake"] <= 1.0


def test_a_users_implicit_pyro_program_trains_adversarially():
    """The objective is family-agnostic: a from_pyro program with a Delta "x" site and the
    base class's default discriminator."""

    class Line(PyroModule):
        def __init__(self):
            super().__init__()
            self.gen = torch.nn.Linear(1, 2)

        def model(self, x=None):
            with pyro.plate("data", 1 if x is None else len(x)):
                z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
                return pyro.sample("x", dist.Delta(self.gen(z), event_dim=1), obs=x)

        def explicit(self, x=None):
            with pyro.plate("data", 1 if x is None else len(x)):
                return pyro.sample("x", dist.Normal(self.gen.bias, 1.0).to_event(1), obs=x)

    line = Line()
    m = ppgen.from_pyro(line.model, event_shape=(2,), likelihood="none")
    data = ppgen.datasets.Dataset("line", torch.randn(256, 1) * torch.tensor([[1.0, 2.0]]),
                                  "continuous")
    hist = ppgen.fit(m, data, steps=4, batch_size=64, progress=False, device="cpu", log_every=2)
    assert set(hist.train[-1]) >= {"loss/discriminator", "loss/generator"}
    assert hist.diagnostics and "d_accuracy_real" in hist.diagnostics[-1]

    e = ppgen.from_pyro(line.explicit, event_shape=(2,), likelihood="none")
    with pytest.raises(ImplicitSiteError, match="not a Delta"):
        make_objective("adversarial", e).loss(e, data.data[:4], None, "discriminator", 0)
