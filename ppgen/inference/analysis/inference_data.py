"""Pointwise log-likelihoods of several models as ArviZ ``InferenceData``."""

from __future__ import annotations

__all__ = [
    "arviz_compare",
    "to_inference_data",
]

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from ppgen.datasets.base import Dataset
from ppgen.inference.analysis.bootstrap import (
    _as_values,
    _data_parts,
)
from ppgen.inference.analysis.comparison import MixedKindsError
from ppgen.inference.likelihood import Evaluation, evaluate
from ppgen.models.base import AbstractGenerativeModel


def to_inference_data(
    models: Mapping[str, AbstractGenerativeModel | Evaluation | Tensor],
    data: Dataset | Tensor | None = None,
    *,
    estimator: str = "auto",
    allow_mixed_kinds: bool = False,
    seed: int = 0,
    **options: Any,
) -> Any:
    """The pointwise log-likelihoods of several models as one ArviZ ``InferenceData``.

    The ``log_likelihood`` group holds one variable per model, dims ``(chain, draw, example)``
    with one chain and one draw (a trained network is a point estimate, not a posterior), so
    ``az.waic(idata, var_name=name)`` reports the test-set elpd (the summed held-out
    log-likelihood: one draw gives ``p_waic = 0``) with its standard error, and
    :func:`arviz_compare` gives ``az.compare``'s table (elpd differences with paired standard
    errors). PSIS-LOO does not apply: the data are held out already. The ``observed_data``
    group holds the data when given; ``attrs`` record each model's kind and estimator.

    Arguments:
        models: name -> a ppgen model (evaluated on ``data``), an ``Evaluation``, or bare
            per-example log-likelihoods ``(N,)`` in nats (kind unknown).
        data: the shared test data (needed for models).
        estimator: passed to :func:`ppgen.evaluate` for models.
        allow_mixed_kinds: put values of different kinds side by side (refused otherwise).
        seed: seeds the evaluation.
        **options: estimator options.

    Returns:
        ``arviz.InferenceData`` (built with ``arviz.from_dict``, ArviZ 0.x API).

    Example:
        >>> import ppgen
        >>> test = ppgen.datasets.load("digits", "test")
        >>> idata = to_inference_data({"uniform": ppgen.build("independent", test)}, test)
        >>> idata.log_likelihood["uniform"].shape
        (1, 1, 297)
    """
    import arviz as az

    if not models:
        raise ValueError("pass at least one model")
    log_lik: dict[str, Any] = {}
    kinds: dict[str, str] = {}
    estimators: dict[str, str] = {}
    for name, model in models.items():
        if isinstance(model, AbstractGenerativeModel):
            if data is None:
                raise ValueError(f"pass data to evaluate {name!r} on")
            ev = evaluate(model, data, estimator=estimator, seed=seed,
                          **{"mc_examples": 0, **options})  # per-example values only
            values, kinds[name], estimators[name] = ev.per_example, ev.kind, ev.estimator
        elif isinstance(model, Evaluation):
            values, kinds[name], estimators[name] = model.per_example, model.kind, model.estimator
        else:
            values, kinds[name], estimators[name] = torch.as_tensor(model), "unknown", "given"
        log_lik[name] = _as_values(values, f"log-likelihoods of {name!r}").numpy()[None, None, :]
    sizes = {v.shape[-1] for v in log_lik.values()}
    if len(sizes) != 1:
        raise ValueError(f"the models were scored on different numbers of examples: {sizes}")
    known = {k for k in kinds.values() if k != "unknown"}
    if len(known) > 1 and not allow_mixed_kinds:
        raise MixedKindsError(
            f"the log-likelihoods are of different kinds {kinds}; evaluate them alike or pass "
            "allow_mixed_kinds=True"
        )
    observed = None
    if data is not None:
        x, _ = _data_parts(data)
        observed = {"x": x.reshape(x.shape[0], -1).cpu().numpy()}
    return az.from_dict(
        log_likelihood=log_lik,
        observed_data=observed,
        dims={**{name: ["example"] for name in log_lik}, "x": ["example", "dim"]},
        attrs={
            "ppgen_kinds": ",".join(f"{k}={v}" for k, v in kinds.items()),
            "ppgen_estimators": ",".join(f"{k}={v}" for k, v in estimators.items()),
        },
    )


def arviz_compare(idata: Any, *, scale: Literal["log", "negative_log", "deviance"] = "log") -> Any:
    """``az.compare``'s table for the models in one :func:`to_inference_data` result.

    Splits the ``log_likelihood`` variables into one ``InferenceData`` per model and calls
    ``az.compare(..., ic="waic")``: on held-out data with one draw, ``elpd_waic`` is the summed
    test log-likelihood, ``elpd_diff`` its difference from the best model and ``dse`` the
    standard error of that paired difference.

    Arguments:
        idata: the output of :func:`to_inference_data` (two or more variables).
        scale: ArviZ's scale (``"log"``: higher is better).

    Returns:
        A ``pandas.DataFrame`` ranked best first.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> idata = to_inference_data({"a": torch.randn(100, generator=g),
        ...                            "b": torch.randn(100, generator=g) - 1})
        >>> list(arviz_compare(idata).index)
        ['a', 'b']
    """
    import warnings

    import arviz as az

    names = list(idata.log_likelihood.data_vars)
    if len(names) < 2:
        raise ValueError(f"arviz_compare needs two or more models, got {names}")
    parts = {name: az.InferenceData(log_likelihood=idata.log_likelihood[[name]]) for name in names}
    with warnings.catch_warnings():
        # ArviZ 0.23 calls a pandas API that pandas >= 3 deprecates; nothing the user can act on
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="arviz")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="pandas")
        return az.compare(parts, ic="waic", scale=scale)
