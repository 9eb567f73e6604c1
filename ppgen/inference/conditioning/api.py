r"""``ppgen.impute``: draw the missing part of ``x`` given the observed part, for any family.

One entry point, a registry of methods, and the family's own declaration of what applies to it
(``conditioning_methods``, most preferred first, and the interfaces of
:mod:`ppgen.models.conditioning`); this layer names no family.

A method is a function registered with :func:`register_imputer`. It receives a batch ``x``
``(n, *event_shape)`` that shares one mask ``observed`` (bool, ``event_shape``; the shared
layer groups the rows by mask, unless the method registers ``grouped=False`` and takes
``(n, *event_shape)`` masks), the number of completions ``num_samples``, a seeded
``torch.Generator`` and an int ``seed`` (for Pyro's global RNG, which this layer forks and
restores), and returns a :class:`MethodResult`. Its ``supports(model, observed)`` returns None
or the reason it cannot run, so ``method="auto"`` can pass over it, before any work.
"""

from __future__ import annotations

__all__ = [
    "IMPUTERS",
    "Imputation",
    "Imputer",
    "MethodResult",
    "families_with_methods",
    "impute",
    "prepare",
    "register_imputer",
    "resolve_method",
]

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from ppgen import masks as masks_module
from ppgen.datasets.base import Dataset
from ppgen.models.base import AbstractGenerativeModel


@dataclasses.dataclass
class MethodResult:
    """What a method returns for one group of rows sharing a mask.

    Attributes:
        samples: ``(S, n, *event_shape)`` completions (the shared layer copies the observed
            entries from the input afterwards, so they equal it exactly).
        diagnostics: numbers the method offers (ESS, R-hat, acceptance, weight ESS...).
        chains: for MCMC methods, the draws ``(C, T, n, *event_shape)`` in chain order (for
            :meth:`Imputation.to_inference_data`); None for independent draws.
    """

    samples: Tensor
    diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)
    chains: Tensor | None = None


class ImputeFn(Protocol):
    def __call__(
        self,
        model: AbstractGenerativeModel,
        x: Tensor,
        observed: Tensor,
        num_samples: int,
        generator: torch.Generator,
        seed: int,
        context: Tensor | None = None,
        **options: Any,
    ) -> MethodResult: ...


SupportsFn = Callable[[AbstractGenerativeModel, Tensor], "str | None"]


@dataclasses.dataclass(frozen=True)
class Imputer:
    """A registered method: its function, its applicability check, and what its draws are.

    Attributes:
        name: the method's name (``Imputation.method``).
        fn: the method.
        supports: ``(model, observed) -> None | reason``; checked before any work.
        exact: True when the draws are independent draws from the model's exact conditional
            (else they are MCMC or approximate draws, labelled so).
        grouped: True when the method takes one mask per call (the shared layer groups rows).
    """

    name: str
    fn: ImputeFn
    supports: SupportsFn
    exact: bool
    grouped: bool


#: Every registered method, by name.
IMPUTERS: dict[str, Imputer] = {}


def register_imputer(
    name: str,
    *,
    supports: SupportsFn | None = None,
    exact: bool = False,
    grouped: bool = True,
) -> Callable[[ImputeFn], ImputeFn]:
    """Decorator registering an imputation method under ``name`` (see the module docstring).

    Arguments:
        name: the method name families list in ``conditioning_methods``.
        supports: ``(model, observed) -> None | reason``; None means always.
        exact: the draws are exact, independent draws from the model's conditional.
        grouped: the method takes one ``event_shape`` mask per call.
    """

    def add(fn: ImputeFn) -> ImputeFn:
        if name in IMPUTERS:
            raise ValueError(f"imputation method {name!r} is already registered")
        IMPUTERS[name] = Imputer(name, fn, supports or (lambda m, o: None), exact, grouped)
        return fn

    return add


def families_with_methods() -> dict[str, tuple[str, ...]]:
    """Family name -> its declared methods, for every registered family that declares some."""
    from ppgen import models

    out = {}
    for name in models.names():
        methods = models.get(name).conditioning_methods
        if methods:
            out[name] = tuple(methods)
    return out


@dataclasses.dataclass(frozen=True)
class Imputation:
    """Completions of a batch given its observed part.

    Attributes:
        samples: ``(S, N, *event_shape)``; on the observed entries equal to the input exactly.
        mask: ``(N, *event_shape)`` bool, True = observed.
        method: the method that drew them (``"exact-ancestral"``, ``"nuts"``, ``"gibbs"``...;
            ``"observed"`` when nothing was missing, ``"unconditional"`` when nothing was
            observed).
        exact: True when the samples are independent draws from the model's exact
            conditional; False for MCMC (asymptotically exact, check ``diagnostics``) and
            approximate methods.
        diagnostics: what the method offers; with several mask groups, ``{"groups": [...]}``.
        notes: remarks a reader needs (all observed, all missing, which ordering was used).
        chains: ``(C, T, N, *event_shape)`` MCMC draws, or None for independent draws.
    """

    samples: Tensor
    mask: Tensor
    method: str
    exact: bool
    diagnostics: dict[str, Any]
    notes: tuple[str, ...] = ()
    chains: Tensor | None = None

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])

    def mean(self) -> Tensor:
        """The mean completion ``(N, *event_shape)`` (a point imputation)."""
        return self.samples.double().mean(0).to(self.samples.dtype)

    def to_inference_data(self) -> Any:
        """The draws of the missing coordinates as ArviZ ``InferenceData``.

        The posterior group holds ``x_missing`` with dims ``(chain, draw, example, missing)``
        (the missing coordinates of each example in flattened order; rows with fewer missing
        coordinates than the most are padded with NaN). MCMC methods give their chains; methods
        with independent draws give one chain of ``S`` draws. ``constant_data`` holds the mask.
        """
        from ppgen.inference.posterior import _arviz

        az = _arviz()
        draws = self.chains if self.chains is not None else self.samples.unsqueeze(0)
        c, t, n = draws.shape[:3]
        flat = draws.reshape(c, t, n, -1).double()
        missing = ~self.mask.reshape(n, -1)
        width = int(missing.sum(1).max()) if n else 0
        out = torch.full((c, t, n, width), math.nan, dtype=torch.float64)
        for i in range(n):
            idx = missing[i].nonzero().squeeze(1)
            out[:, :, i, : idx.numel()] = flat[:, :, i, idx]
        return az.from_dict(
            posterior={"x_missing": out.cpu().numpy()},
            constant_data={"observed": self.mask.cpu().numpy()},
            coords={"example": np.arange(n), "missing": np.arange(width)},
            dims={"x_missing": ["example", "missing"]},
            attrs={"method": self.method, "exact": int(self.exact)},
        )


# ---- validation, before any work ----------------------------------------------------------


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def prepare(
    model: AbstractGenerativeModel, x: Any, mask: Any, context: Any = None, seed: int = 0,
    complete: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate a conditioning request before any work; shared by :func:`impute` and the
    conditional ``evaluate``.

    Arguments:
        model: a ppgen model.
        x: ``(N, *event_shape)`` data (a Tensor or a Dataset); missing cells may hold NaN.
        mask: a mask name (:func:`ppgen.masks.named`, seeded with ``seed``) or a bool tensor
            broadcasting to ``(N, *event_shape)``, True = observed.
        context: labels of a class-conditional model (a Dataset's labels by default).
        seed: seeds a ``random:P`` mask.
        complete: the missing cells hold the true values and are kept (a conditional density
            scores them); they must then be valid data too.

    Returns:
        ``(x, mask, context)``: ``x`` on the model's device and dtype with missing cells set to
        a valid placeholder (0), ``mask`` ``(N, *event_shape)``, the validated context.

    Raises:
        ValueError: not a ppgen model, data of the wrong shape, a bad mask, NaN or infinity in
        an observed cell, values outside the model's support.
    """
    if not isinstance(model, AbstractGenerativeModel):
        raise ValueError(f"model must be a ppgen model, got {type(model).__name__}")
    if isinstance(x, Dataset):
        if model.conditional and context is None:
            context = x.labels
        x = x.data
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a tensor (N, *event_shape), got {type(x).__name__}")
    event = tuple(model.event_shape)
    if tuple(x.shape[1:]) != event or x.dim() != len(event) + 1:
        raise ValueError(
            f"x has shape {tuple(x.shape)}; {type(model).__name__} takes (N, *{event}): add a "
            "batch dim for one point (x[None])"
        )
    if x.shape[0] == 0:
        raise ValueError("x holds no examples; pass at least one row")
    if x.is_complex() or x.dtype == torch.bool:
        raise ValueError(f"x holds {x.dtype} values; pass real numbers")
    if isinstance(mask, str):
        mask = masks_module.named(mask, event, seed=seed)
    observed = masks_module.check_mask(mask, event, x.shape[0]).to(x.device)
    xf = x if x.is_floating_point() else x.double()
    bad = observed & ~torch.isfinite(xf)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"x holds {int(bad.sum())} NaN or infinite values in observed cells (the first at "
            f"index {first}); mark them missing in the mask (False) or fill them"
        )
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    device = param.device if param is not None else x.device
    filled = xf if complete else torch.where(
        observed, xf, torch.zeros((), dtype=xf.dtype, device=xf.device)
    )
    filled = filled.to(device=device, dtype=dtype)
    context = model.check_inputs(filled, context)
    return filled, observed.to(device), context


def _groups(observed: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Rows sharing a mask: ``[(mask of event_shape, row indices)]`` in first-seen order."""
    n = observed.shape[0]
    flat = observed.reshape(n, -1)
    patterns, inverse = torch.unique(flat, dim=0, return_inverse=True)
    order = sorted(range(len(patterns)), key=lambda g: int((inverse == g).nonzero()[0]))
    return [
        (patterns[g].reshape(observed.shape[1:]), (inverse == g).nonzero().squeeze(1))
        for g in order
    ]


def resolve_method(
    model: AbstractGenerativeModel, method: str, patterns: list[Tensor]
) -> Imputer:
    """The method to use: ``method`` if the family declares it and it accepts every mask, or
    for ``"auto"`` the first of the family's ``conditioning_methods`` that does.

    Raises:
        ValueError: an unknown method, one the family does not declare, or none that applies
            (naming the families that have one, and each method's reason).
    """
    name = type(model).__name__
    declared = tuple(model.conditioning_methods)
    if not declared:
        can = families_with_methods()
        listing = ", ".join(f"{f} ({', '.join(ms)})" for f, ms in can.items())
        raise ValueError(
            f"{name} declares no conditioning method, so it cannot impute; families that can: "
            f"{listing}"
        )
    if method != "auto":
        if method not in IMPUTERS:
            raise ValueError(f"unknown imputation method {method!r}; known: {sorted(IMPUTERS)}")
        if method not in declared:
            raise ValueError(
                f"{name} does not support method {method!r}; it supports {list(declared)} "
                "(or method='auto')"
            )
        candidates: tuple[str, ...] = (method,)
    else:
        candidates = tuple(m for m in declared if m in IMPUTERS)
        if not candidates:
            raise ValueError(
                f"{name} declares methods {list(declared)}, none of them registered (known: "
                f"{sorted(IMPUTERS)})"
            )
    reasons = []
    for cand in candidates:
        imputer = IMPUTERS[cand]
        why = next((r for r in (imputer.supports(model, p) for p in patterns) if r), None)
        if why is None:
            return imputer
        reasons.append(f"{cand}: {why}")
    raise ValueError(
        f"no conditioning method of {name} applies to this mask: {'; '.join(reasons)}"
    )


# ---- the entry point ----------------------------------------------------------------------


def impute(
    model: AbstractGenerativeModel,
    x: Tensor | Dataset,
    mask: Tensor | str,
    num_samples: int = 1,
    seed: int = 0,
    method: str = "auto",
    context: Tensor | None = None,
    **options: Any,
) -> Imputation:
    r"""Draw completions of ``x`` from the model's conditional :math:`p(x_m \mid x_o)`.

    Everything is checked before any work: the mask (shape, dtype), NaN in observed cells, the
    data against the model, the method against the family's declaration. A mask with nothing
    missing returns the input (with a note); a mask with nothing observed draws from the model
    unconditionally (with a note). The model's weights are fixed and the caller's RNG state is
    restored: ``seed`` alone decides the draws.

    Arguments:
        model: a fitted ppgen model whose family declares ``conditioning_methods``.
        x: ``(N, *event_shape)`` data (or a Dataset); missing cells may hold anything (NaN).
        mask: True = observed; a name of :func:`ppgen.masks.named` or a bool tensor that
            broadcasts to ``(N, *event_shape)``.
        num_samples: completions per example, S.
        seed: seeds every random number (and a ``random:P`` mask).
        method: ``"auto"`` (the family's first method that accepts the mask) or a registered
            method's name (``ppgen.inference.conditioning.IMPUTERS``).
        context: labels of a class-conditional model.
        **options: passed to the method (e.g. NUTS's ``warmup_steps``, Gibbs's ``sweeps``).

    Returns:
        An :class:`Imputation`.

    Example:
        >>> import ppgen
        >>> ds = ppgen.datasets.load("digits", split="val")
        >>> m = ppgen.build("made", ds, hidden=[32], num_masks=1).eval()
        >>> imp = ppgen.impute(m, ds.data[:4], "bottom-half", num_samples=2, seed=0)
        >>> imp.samples.shape, imp.method, imp.exact
        (torch.Size([2, 4, 1, 8, 8]), 'exact-ancestral', True)
        >>> bool((imp.samples[:, :, :, :4] == ds.data[:4, :, :4]).all())  # observed kept
        True
    """
    num_samples = _check_int(num_samples, "num_samples", 1)
    seed = _check_int(seed, "seed", 0)
    if not isinstance(method, str):
        raise ValueError(f"method must be a string, got {type(method).__name__}")
    xv, observed, context = prepare(model, x, mask, context, seed)
    n = xv.shape[0]
    if bool(observed.all()):
        return Imputation(
            xv.unsqueeze(0).expand(num_samples, *xv.shape).clone(), observed, "observed", True,
            {}, ("every coordinate is observed: the samples are the input",),
        )
    from ppgen.inference.posterior import _cuda_devices, _frozen

    if not bool(observed.any()):
        with _frozen(model), torch.random.fork_rng(devices=_cuda_devices(xv)):
            draws = model.sample(num_samples * n, seed=seed, context=_repeat(context, num_samples))
        return Imputation(
            draws.reshape(num_samples, n, *xv.shape[1:]).to(xv.dtype), observed,
            "unconditional", True, {},
            ("no coordinate is observed: the samples are unconditional draws from the model",),
        )
    groups = _groups(observed)
    imputer = resolve_method(model, method, [p for p, _ in groups])
    generator = torch.Generator(device=xv.device).manual_seed(seed)
    samples = xv.unsqueeze(0).repeat(num_samples, *([1] * xv.dim()))
    chains: Tensor | None = None
    diagnostics: list[dict[str, Any]] = []
    with _frozen(model), torch.random.fork_rng(devices=_cuda_devices(xv)):
        if imputer.grouped:
            parts = [(p, rows) for p, rows in groups]
        else:
            parts = [(observed, torch.arange(n, device=xv.device))]
        for g, (pattern, rows) in enumerate(parts):
            cb = None if context is None else context[rows]
            result = imputer.fn(
                model, xv[rows], pattern, num_samples, generator, seed * 1000 + g, cb, **options
            )
            samples[:, rows] = result.samples.to(samples.dtype)
            if result.chains is not None:
                if chains is None:
                    c, t = result.chains.shape[:2]
                    chains = xv.new_zeros(c, t, *xv.shape)
                chains[:, :, rows] = result.chains.to(xv.dtype)
            diagnostics.append({"rows": int(rows.numel()), **result.diagnostics})
    samples = torch.where(observed, xv, samples)  # observed entries equal the input exactly
    if chains is not None:
        chains = torch.where(observed, xv, chains)
    diag = diagnostics[0] if len(diagnostics) == 1 else {"groups": diagnostics}
    notes = tuple(diag.pop("notes", ())) if len(diagnostics) == 1 else ()
    return Imputation(samples, observed, imputer.name, imputer.exact, diag, notes, chains)


def _repeat(context: Tensor | None, times: int) -> Tensor | None:
    return None if context is None else context.repeat(times)
