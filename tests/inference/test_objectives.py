"""The variational objectives: every ELBO estimator's gradient against the hand-derived
gradient of pPCA's closed-form ELBO; the VAE's trace-free path against Pyro's Trace_ELBO; beta,
warm-up, free bits, the Renyi/IWAE bound.

Gradient checks average R independent gradient estimates and compare each coordinate with the
expected value in units of its standard error; a bound of 5 has a false-alarm rate below 1e-6
per coordinate (normal approximation).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from ppca import PPCA

import ppgen
from ppgen.inference.likelihood import estimate_iwae
from ppgen.inference.objectives import ELBO, make_objective


def _ppca_with_guide_params(p: PPCA, x: torch.Tensor):
    """pPCA whose guide mean offset and log std are module parameters (via pyro.param)."""

    def guide(x=None):
        offset = pyro.param("offset", 0.3 * torch.ones(p.latent, dtype=x.dtype))
        log_s = pyro.param("log_s", -0.5 * torch.ones(p.latent, dtype=x.dtype))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(p.posterior_mean(x) + offset, log_s.exp()).to_event(1))

    m = ppgen.from_pyro(p.model, guide, event_shape=(p.d,), likelihood="bound", example=x)
    return m, m.user_params["offset"], m.user_params["log_s"]


def _grads(obj, m, params, x, step, r):
    out = []
    for _ in range(r):
        for q in params:
            q.grad = None
        obj.loss(m, x, None, "model", step).backward()
        out.append(torch.cat([q.grad.flatten() for q in params]))
    return torch.stack(out)


@pytest.mark.parametrize(
    ("elbo", "options"),
    [
        ("model", {}),
        ("model", {"beta": 0.5}),
        ("Trace_ELBO", {}),
        ("Trace_ELBO", {"beta": 0.5}),
        ("TraceMeanField_ELBO", {}),
        ("TraceGraph_ELBO", {}),
        ("RenyiELBO", {"alpha": 1.0, "num_particles": 3}),
        ("JitTrace_ELBO", {}),
        ("JitTraceMeanField_ELBO", {}),
        ("Trace_ELBO", {"num_particles": 2}),
    ],
)
def test_gradient_matches_the_closed_form(elbo, options):
    """E[gradient of the loss] = gradient of -mean(ELBO_beta) from pPCA's closed form."""
    p = PPCA.random(3, 2, 0.6, seed=1)
    x = p.sample(40, seed=2)
    m, offset, log_s = _ppca_with_guide_params(p, x)
    obj = make_objective("elbo", m, elbo=elbo, **options)
    beta = options.get("beta", 1.0)
    ll, prior, entropy = p.elbo_parts(x, p.posterior_mean(x) + offset, log_s.exp())
    exact_loss = -(ll + beta * (prior + entropy)).mean()
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(exact_loss, [offset, log_s])])
    g = _grads(obj, m, [offset, log_s], x, 0, 150)
    z = (g.mean(0) - exact) / (g.std(0) / g.shape[0] ** 0.5)
    assert z.abs().max() < 5, (elbo, options, g.mean(0), exact)
    assert len(pyro.get_param_store()) == 0


def test_vae_fast_path_has_the_trace_elbo_gradient():
    """The VAE's closed-form-KL, trace-free path and Pyro's Trace_ELBO estimate the same
    gradient: every coordinate's mean difference within 5 standard errors (Bonferroni over
    the ~200 coordinates keeps the false-alarm rate near 1e-4)."""
    ds = ppgen.datasets.load("digits", "val").subset(20)
    m = ppgen.build("vae", ds, latent=2, hidden=[6]).double()
    x = ds.data.double()
    params = list(m.parameters())
    r = 200
    fast = _grads(make_objective("elbo", m), m, params, x, 0, r)
    traced = _grads(make_objective("elbo", m, elbo="Trace_ELBO"), m, params, x, 0, r)
    se = (fast.var(0) / r + traced.var(0) / r).sqrt().clamp_min(1e-12)
    z = (fast.mean(0) - traced.mean(0)) / se
    assert z.abs().max() < 5, float(z.abs().max())
    # and the closed-form KL has the lower variance (that is why it is the default)
    assert fast.var(0).sum() < traced.var(0).sum()


def test_renyi_alpha_zero_is_the_iwae_bound():
    """With the same random numbers, the Renyi objective at alpha=0 is -mean IWAE-K."""
    p = PPCA.random(3, 2, 0.5, seed=4, guide_scale=1.3)
    m, x = p.bound(), p.sample(25, seed=0)
    obj = make_objective("renyi", m, num_particles=7)
    assert obj.options["elbo"] == "RenyiELBO" and obj.alpha == 0.0
    torch.manual_seed(3)
    loss = obj.loss(m, x, None, "model", 0)
    torch.manual_seed(3)
    iwae = estimate_iwae(m, x, num_particles=7)[0]
    assert torch.allclose(loss, -iwae.mean(), atol=1e-12)


def test_beta_warmup_and_free_bits():
    ds = ppgen.datasets.load("digits", "val").subset(16)
    m = ppgen.build("vae", ds, latent=3, hidden=[8]).double()
    x = ds.data.double()
    obj = ELBO(m, beta=2.0, warmup=10)
    assert [obj.beta_at(s) for s in (0, 5, 10, 50)] == [0.0, 1.0, 2.0, 2.0]
    torch.manual_seed(0)
    ll, kl = m.elbo_parts(x)
    for step, beta in ((0, 0.0), (5, 1.0), (20, 2.0)):
        torch.manual_seed(0)
        loss = obj.loss(m, x, None, "model", step)
        assert torch.allclose(loss, -(ll.mean() - beta * kl.sum(-1).mean()), atol=1e-12)
    # free bits: each latent dimension's batch-mean KL is floored at lambda
    floor = float(kl.detach().mean(0).max()) + 1.0
    fb = ELBO(m, free_bits=floor)
    torch.manual_seed(0)
    loss = fb.loss(m, x, None, "model", 0)
    assert torch.allclose(loss, -ll.mean() + 3 * floor, atol=1e-12)
    loss.backward()
    # below the floor the KL sends no gradient to the encoder's scale outputs
    enc = m.encoder[-1]
    assert enc.weight.grad is not None
    # the validation loss is the plain negative ELBO whatever beta is, with its own fixed
    # random numbers: the same value every time, and the training RNG untouched
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = obj.validation_loss(m, x, None)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, obj.validation_loss(m, x, None))
    torch.manual_seed(0)
    assert torch.allclose(a, -m.elbo(x).mean())


def test_the_trainer_uses_the_config_options():
    ds = ppgen.datasets.load("digits", "train").subset(200)
    m = ppgen.build("vae", ds, latent=2, hidden=[16], beta=0.5, warmup=4)
    hist = ppgen.fit(m, ds, steps=8, batch_size=50, progress=False, out=None)
    assert hist.steps == 8
    # the objective recorded in a run is rebuilt with the same options
    obj = make_objective("elbo", m, **m.fit_defaults()["objective_options"])
    assert obj.beta == 0.5 and obj.warmup == 4


def test_objective_errors():
    ds = ppgen.datasets.load("digits", "val")
    m = ppgen.build("vae", ds, latent=2, hidden=[8])
    with pytest.raises(ValueError, match="unknown ELBO"):
        make_objective("elbo", m, elbo="Magic_ELBO")
    with pytest.raises(ValueError, match="free bits"):
        make_objective("elbo", m, elbo="Trace_ELBO", free_bits=0.5)
    with pytest.raises(ValueError, match="Renyi"):
        make_objective("elbo", m, alpha=0.5)
    with pytest.raises(ValueError, match="beta=1"):
        make_objective("renyi", m, beta=2.0)
    with pytest.raises(ValueError, match="warmup=0"):
        make_objective("elbo", m, elbo="JitTrace_ELBO", warmup=5)
    with pytest.raises(ValueError, match="likelihood='bound'"):
        make_objective("elbo", ppgen.build("independent", ds))


# ---- the JIT ELBOs on a user's PyroModule ------------------------------------------------------


def _ppca_with_a_pyro_module_guide(p: PPCA, x: torch.Tensor):
    """pPCA whose guide is a user's PyroModule holding PyroParams (one constrained positive)
    and a captured, constrained pyro.param statement: every way a user's Pyro code can hold a
    parameter that the JIT must be fed by name."""
    from pyro.nn import PyroModule, PyroParam, pyro_method
    from torch.distributions import constraints

    class Guide(PyroModule):
        def __init__(self) -> None:
            super().__init__()
            self.offset = PyroParam(0.3 * torch.ones(p.latent, dtype=x.dtype))
            self.scale = PyroParam(0.6 * torch.ones(p.latent, dtype=x.dtype),
                                   constraint=constraints.positive)

        @pyro_method
        def guide(self, x=None):
            stretch = pyro.param("stretch", torch.full((p.latent,), 1.2, dtype=x.dtype),
                                 constraint=constraints.positive)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(p.posterior_mean(x) + self.offset,
                                             self.scale * stretch).to_event(1))

    g = Guide()
    m = ppgen.from_pyro(p.model, g.guide, event_shape=(p.d,), likelihood="bound", example=x)
    return m, g


@pytest.mark.parametrize("elbo", ["JitTrace_ELBO", "JitTraceMeanField_ELBO"])
def test_jit_elbos_train_the_pyro_params_of_a_pyro_module(elbo):
    """E[gradient] of the jitted loss = the closed-form gradient with respect to every leaf:
    the PyroParams' unconstrained tensors and the captured pyro.param (before the fix, the JIT
    fed the positive scale its unconstrained value and the first call raised)."""
    from torch.distributions import biject_to, constraints

    p = PPCA.random(3, 2, 0.6, seed=1)
    x = p.sample(40, seed=2)
    m, g = _ppca_with_a_pyro_module_guide(p, x)
    leaves = [g.offset_unconstrained, g.scale_unconstrained, m.user_params["stretch"]]
    assert {id(q) for q in m.parameters()} == {id(q) for q in leaves}
    obj = make_objective("elbo", m, elbo=elbo)
    s = g.scale_unconstrained.exp() * biject_to(constraints.positive)(m.user_params["stretch"])
    ll, prior, entropy = p.elbo_parts(x, p.posterior_mean(x) + g.offset_unconstrained, s)
    exact = torch.cat([q.flatten() for q in torch.autograd.grad(
        -(ll + prior + entropy).mean(), leaves)])
    grads = _grads(obj, m, leaves, x, 0, 150)
    z = (grads.mean(0) - exact) / (grads.std(0) / grads.shape[0] ** 0.5)
    assert z.abs().max() < 5, (elbo, grads.mean(0), exact)
    assert len(pyro.get_param_store()) == 0


def test_a_jit_failure_is_refused_clearly_or_falls_back_on_request(monkeypatch):
    p = PPCA.random(3, 2, 0.6, seed=1)
    x = p.sample(12, seed=2)
    m, _ = _ppca_with_a_pyro_module_guide(p, x)

    def cannot_trace(*args, **kwargs):
        raise RuntimeError("tracer cannot handle this operation\n(long torch detail)")

    monkeypatch.setattr(torch.jit, "trace", cannot_trace)
    from ppgen.inference.objectives import JitUnsupportedError

    obj = make_objective("elbo", m, elbo="JitTrace_ELBO")
    with pytest.raises(JitUnsupportedError, match="elbo='Trace_ELBO'.*jit_fallback=True") as e:
        obj.loss(m, x, None, "model", 0)
    assert "\n" not in str(e.value) and "cannot handle this operation" in str(e.value)
    fb = make_objective("elbo", m, elbo="JitTraceMeanField_ELBO", jit_fallback=True)
    assert fb.options["jit_fallback"] is True  # recorded, so a checkpoint rebuilds it
    with pytest.warns(RuntimeWarning, match="falling back to 'TraceMeanField_ELBO'"):
        first = fb.loss(m, x, None, "model", 0)
    second = fb.loss(m, x, None, "model", 1)  # no second warning (filterwarnings = error)
    assert torch.isfinite(first) and torch.isfinite(second)
    assert fb.elbo == "TraceMeanField_ELBO"
    assert len(pyro.get_param_store()) == 0


def test_an_error_of_the_program_itself_is_not_blamed_on_the_jit():
    p = PPCA.random(3, 2, 0.6, seed=1)

    def picky_guide(x=None):
        if x.shape[0] == 5:
            raise ValueError("this guide refuses batches of 5")
        p.guide(x)

    m = ppgen.from_pyro(p.model, picky_guide, event_shape=(p.d,), likelihood="bound")
    for fallback in (False, True):
        obj = make_objective("elbo", m, elbo="JitTrace_ELBO", jit_fallback=fallback)
        with pytest.raises(ValueError, match="refuses batches of 5") as e:
            obj.loss(m, p.sample(5, seed=0), None, "model", 0)
        assert "JIT" not in str(e.value)
    obj = make_objective("elbo", m, elbo="JitTrace_ELBO")
    assert torch.isfinite(obj.loss(m, p.sample(6, seed=0), None, "model", 0))


def test_jit_fallback_is_validated():
    p = PPCA.random(3, 2, 0.6, seed=1)
    m = p.bound()
    with pytest.raises(ValueError, match="JIT ELBOs"):
        make_objective("elbo", m, elbo="Trace_ELBO", jit_fallback=True)
    with pytest.raises(ValueError, match="true or false"):
        make_objective("elbo", m, elbo="JitTrace_ELBO", jit_fallback="yes")
