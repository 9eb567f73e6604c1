r"""FFJORD: a continuous normalizing flow solved with ``torchdiffeq``.

Data :math:`x = z(0)` flows to the base :math:`z(T)` along :math:`\dot z = f_\theta(z, t)`, and by
the instantaneous change of variables (Chen et al. 2018)

.. math:: \log p(x) = \log p_Z(z(T)) + \int_0^T \operatorname{tr}
    \frac{\partial f_\theta}{\partial z}(z(t), t)\, dt .

The trace is exact (D vector-Jacobian products, batched into one) or Hutchinson's unbiased
estimate :math:`\epsilon^\top (\partial f / \partial z)\, \epsilon` with one Rademacher
:math:`\epsilon` per solve (Grathwohl et al. 2019). ``trace="auto"`` uses Hutchinson in training
mode with gradients on (the training objective) and the exact trace otherwise, so every
evaluation through ``ppgen.evaluate`` (eval mode) is exact up to the solver's tolerances.
The adaptive solver's tolerances are configurable, the adjoint method optional, and the number
of function evaluations of the last solve is reported (:attr:`FFJORD.nfe`).
"""

from __future__ import annotations

__all__ = ["CNF", "FFJORD", "FFJORDConfig", "integrate_with_trace"]

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppgen.models.flows.core import (
    AbstractFlow,
    FlowConfig,
    FlowTransform,
    LazyTransform,
    broadcast_context,
)
from ppgen.models.flows.coupling import input_layers

TraceMode = Literal["auto", "exact", "hutchinson"]


class _ODENet(nn.Module):
    """:math:`f(z, t, c)`: an MLP whose every layer also reads :math:`t` (FFJORD's concat
    layers)."""

    def __init__(self, features: int, hidden: Sequence[int], context: int,
                 activation: str) -> None:
        super().__init__()
        widths = [features, *hidden, features]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:],
                                                                       strict=True))
        self.time = nn.ParameterList(nn.Parameter(torch.zeros(b)) for b in widths[1:])
        self.context = nn.Linear(context, widths[1], bias=False) if context else None
        self.act = torch.tanh if activation == "tanh" else F.softplus

    def forward(self, t: Tensor, z: Tensor, c: Tensor | None) -> Tensor:
        h = z
        last = len(self.linears) - 1
        for i, (lin, wt) in enumerate(zip(self.linears, self.time, strict=True)):
            h = torch.addcmul(lin(h), t, wt)
            if i == 0 and self.context is not None and c is not None:
                h = h + self.context(c)
            if i < last:
                h = self.act(h)
        return h


class _Dynamics(nn.Module):
    """The augmented ODE: the state and the running integral of the Jacobian's trace."""

    def __init__(self, f: Callable[[Tensor, Tensor], Tensor], trace: str,
                 noise: Tensor | None) -> None:
        super().__init__()
        self.f, self.trace, self.noise = f, trace, noise
        self.calls = 0

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        self.calls += 1
        z = state[0]
        outer_grad = torch.is_grad_enabled()
        if self.trace == "none":
            return self.f(t, z), torch.zeros_like(state[1])
        with torch.enable_grad():
            if not (outer_grad and z.requires_grad):  # keep z's graph only when it is needed
                z = z.detach().requires_grad_(True)
            f = self.f(t, z)
            if self.trace == "exact":
                d = z.shape[-1]
                eye = torch.eye(d, dtype=z.dtype, device=z.device)
                probes = eye.reshape(d, *([1] * (z.dim() - 1)), d).expand(d, *z.shape)
                (rows,) = torch.autograd.grad(f, z, probes, create_graph=outer_grad,
                                              is_grads_batched=True)  # rows[i] = d f_i / d z
                tr = rows.diagonal(dim1=0, dim2=-1).sum(-1)
            else:
                assert self.noise is not None
                (vjp,) = torch.autograd.grad(f, z, self.noise, create_graph=outer_grad)
                tr = (vjp * self.noise).sum(-1)
        if not outer_grad:
            f, tr = f.detach(), tr.detach()
        return f, tr


def integrate_with_trace(
    f: Callable[[Tensor, Tensor], Tensor],
    z: Tensor,
    start: float,
    end: float,
    *,
    trace: Literal["exact", "hutchinson", "none"] = "exact",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str = "dopri5",
    step_size: float | None = None,
    adjoint_params: tuple[Tensor, ...] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, int]:
    r"""Solve :math:`\dot z = f(t, z)` from ``start`` to ``end`` with ``torchdiffeq``, together
    with :math:`\int \operatorname{tr} \frac{\partial f}{\partial z}\, dt`: the machinery of
    every continuous flow (:class:`CNF`; a diffusion model's probability-flow ODE).

    Arguments:
        f: the vector field, ``(t, z) -> dz/dt``, ``z`` of shape ``(..., D)``.
        z: the initial state ``(..., D)``.
        start, end: the integration interval (``end < start`` integrates backwards).
        trace: ``"exact"`` (D vector-Jacobian products, batched into one), ``"hutchinson"``
            (one Rademacher probe per solve, Grathwohl et al. 2019) or ``"none"``.
        rtol, atol: the adaptive solver's tolerances.
        solver: a ``torchdiffeq`` method.
        step_size: the step of fixed-grid solvers.
        adjoint_params: backpropagate with the adjoint method through these parameters.
        generator: the random generator of Hutchinson's probe.

    Returns:
        ``(z(end), integral of the trace (...,), function evaluations)``.
    """
    from torchdiffeq import odeint, odeint_adjoint

    noise = None
    if trace == "hutchinson":
        noise = torch.randint(0, 2, z.shape, device=z.device, generator=generator).to(z.dtype)
        noise = noise * 2 - 1
    dyn = _Dynamics(f, trace, noise)
    times = torch.tensor([start, end], dtype=z.dtype, device=z.device)
    state = (z, z.new_zeros(z.shape[:-1]))
    options: dict[str, Any] = {}
    if step_size is not None:
        options["step_size"] = step_size
    kwargs: dict[str, Any] = dict(rtol=rtol, atol=atol, method=solver, options=options or None)
    if adjoint_params is not None:
        out = odeint_adjoint(dyn, state, times, adjoint_params=adjoint_params, **kwargs)
    else:
        out = odeint(dyn, state, times, **kwargs)
    return out[0][-1], out[1][-1], dyn.calls


class _CNFTransform(FlowTransform):
    def __init__(self, layer: CNF, context: Tensor | None) -> None:
        super().__init__(1)
        self.layer, self.context = layer, context

    def _trace_mode(self) -> str:
        mode = self.layer.trace
        if mode == "auto":
            return "hutchinson" if self.layer.training and torch.is_grad_enabled() else "exact"
        return mode

    def _solve(self, y: Tensor, forward: bool, trace: Any) -> tuple[Tensor, Tensor]:
        layer, c = self.layer, self.context

        def f(t: Tensor, z: Tensor) -> Tensor:
            return layer.net(t, z, None if c is None else broadcast_context(c, z.shape[:-1]))

        # data -> base integrates t from 0 to T; the inverse from T back to 0
        ends = (0.0, layer.time_length) if forward else (layer.time_length, 0.0)
        z, tr, layer.last_nfe = integrate_with_trace(
            f, y, *ends, trace=trace, rtol=layer.rtol, atol=layer.atol, solver=layer.solver,
            step_size=layer.step_size,
            adjoint_params=tuple(layer.net.parameters()) if layer.adjoint else None,
        )
        return z, tr

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._solve(x, True, self._trace_mode())

    def inv_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._solve(z, False, self._trace_mode())

    def inverse(self, z: Tensor) -> Tensor:
        return self._solve(z, False, "none")[0]


class CNF(LazyTransform):
    r"""A continuous normalizing flow block :math:`\dot z = f_\theta(z, t, c)`,
    :math:`t \in [0, T]`.

    Arguments:
        features: D.
        context: width of the context features (added to the first layer).
        hidden: the ODE network's hidden widths.
        activation: ``"tanh"`` or ``"softplus"`` (smooth, as adaptive solvers need).
        trace: ``"auto"`` (Hutchinson in training mode with gradients, else exact),
            ``"exact"`` or ``"hutchinson"``.
        solver: a ``torchdiffeq`` method (``"dopri5"``, ``"rk4"``, ...).
        rtol, atol: the adaptive solver's tolerances.
        step_size: the step of fixed-grid solvers.
        adjoint: backpropagate with the adjoint method (O(1) memory in the number of steps).
        time_length: T.

    Attributes:
        last_nfe: function evaluations of this block's last solve (a diagnostic).

    References:
        Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud. FFJORD: Free-form Continuous
        Dynamics for Scalable Reversible Generative Models, arXiv:1810.01367.
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        activation: Literal["tanh", "softplus"] = "tanh",
        trace: TraceMode = "auto",
        solver: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        step_size: float | None = None,
        adjoint: bool = False,
        time_length: float = 1.0,
    ) -> None:
        super().__init__()
        if trace not in ("auto", "exact", "hutchinson"):
            raise ValueError(f"trace must be auto, exact or hutchinson, got {trace!r}")
        if activation not in ("tanh", "softplus"):
            raise ValueError(f"activation must be tanh or softplus, got {activation!r}")
        self.net = _ODENet(features, hidden, context, activation)
        self.trace, self.solver, self.rtol, self.atol = trace, solver, rtol, atol
        self.step_size, self.adjoint, self.time_length = step_size, adjoint, time_length
        self.last_nfe = 0

    def forward(self, context: Tensor | None = None) -> FlowTransform:
        return _CNFTransform(self, context)

    def extra_repr(self) -> str:
        return f"solver={self.solver!r}, rtol={self.rtol}, atol={self.atol}, trace={self.trace!r}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class FFJORDConfig(FlowConfig):
    """Configuration of :class:`FFJORD`.

    Arguments:
        activation: the ODE network's activation (``"tanh"`` or ``"softplus"``).
        trace: ``"auto"``, ``"exact"`` or ``"hutchinson"`` (see :class:`CNF`).
        solver: the ``torchdiffeq`` method.
        rtol, atol: solver tolerances.
        step_size: step of fixed-grid solvers (``"rk4"``...), else None.
        adjoint: use the adjoint method for gradients.
        time_length: the integration time T of each block.
    """

    hidden: tuple[int, ...] = (64, 64)
    transforms: int = 1
    activation: Literal["tanh", "softplus"] = "tanh"
    trace: TraceMode = "auto"
    solver: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    step_size: float | None = None
    adjoint: bool = False
    time_length: float = 1.0


class FFJORD(AbstractFlow):
    r"""FFJORD: ``transforms`` continuous normalizing flow blocks in sequence.

    Image-shaped data is flattened. ``log_prob`` is exact (exact trace) in eval mode and
    Hutchinson's unbiased estimate in training mode with gradients, under ``trace="auto"``.
    The number of function evaluations of the last solve is :attr:`nfe`.

    References:
        Grathwohl et al. FFJORD: Free-form Continuous Dynamics for Scalable Reversible
        Generative Models, arXiv:1810.01367.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("moons", "val")
        >>> m = ppgen.build("ffjord", ds, hidden=[16], rtol=1e-3, atol=1e-3).eval()
        >>> m.log_prob(ds.data[:3]).shape, m.nfe > 0
        (torch.Size([3]), True)
    """

    Config: ClassVar = FFJORDConfig

    def _layers(self) -> tuple[list[LazyTransform], tuple[int, ...]]:
        cfg = self.config
        d = cfg.num_dims
        layers = input_layers(cfg.event_shape, "vector", cfg.standardize, cfg.whitens)
        layers += [CNF(d, 0, cfg.hidden, cfg.activation, cfg.trace, cfg.solver, cfg.rtol,
                       cfg.atol, cfg.step_size, cfg.adjoint, cfg.time_length)
                   for _ in range(cfg.transforms)]
        return layers, (d,)

    @property
    def nfe(self) -> int:
        """Function evaluations of the last solve, summed over the CNF blocks."""
        return sum(m.last_nfe for m in self.modules() if isinstance(m, CNF))

    def extra_repr(self) -> str:
        cfg = self.config
        return (f"solver={cfg.solver!r}, rtol={cfg.rtol}, atol={cfg.atol}, trace={cfg.trace!r}, "
                + super().extra_repr())
