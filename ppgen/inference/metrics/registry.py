r"""The metric registry: what ``metrics_table`` can compute, each metric registered by its module.

A metric of the table is a function of one :class:`MetricInputs` (the model's samples, the
reference data, the data's declared feature space and modes, the seed...) returning a
JSON-ready dict, plus a function that turns that dict into rows of :func:`format_table`'s text.
Each metric's module registers it with :func:`register_metric`; the package
(``ppgen/inference/metrics/__init__.py``) imports the modules in the order the table shows them,
as the estimators of :mod:`ppgen.inference.likelihood` register from their modules.

Adding a metric is one file: write the function, decorate it, and import the module from the
package's ``__init__`` (or from your own code, before calling the table)::

    from ppgen.inference.metrics.registry import register_metric, statistic_rows

    @register_metric("sliced_w", rows=statistic_rows("sliced Wasserstein"))
    def _sliced_w(inputs):
        return my_sliced_wasserstein(inputs.samples, inputs.reference).to_dict()

What the data must offer comes from their declarations (``Dataset.feature_space``,
``Dataset.modes``), never from recognising a dataset by its shape or name: a metric that needs
more than the samples says so with ``applies`` (``"all"`` leaves it out where it does not
apply; asked for by name it is reported as skipped, with ``skipped`` as the reason).
"""

from __future__ import annotations

__all__ = [
    "ALIASES",
    "METRICS",
    "Metric",
    "MetricInputs",
    "Row",
    "register_metric",
    "resolve_names",
    "statistic_rows",
]

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from ppgen.datasets.base import Dataset
from ppgen.inference.metrics.base import MetricError
from ppgen.inference.metrics.features import FeatureSpec

# One line of format_table's text: metric, value, uncertainty, p-value, computed on.
Row = tuple[str, str, str, str, str]


@dataclasses.dataclass(frozen=True)
class MetricInputs:
    """What a registered metric is computed from (built once per :func:`metrics_table` call).

    Attributes:
        model: the model being scored.
        data: the ``Dataset`` (or tensor) the table was called with.
        samples: ``n`` model samples ``(n, *event_shape)``, float32 on the CPU; None when no
            requested metric needs samples.
        reference: ``n`` data points ``(n, *event_shape)`` (a seeded subset), float32 CPU.
        features: the feature map for feature-space metrics: the caller's ``features=``, else
            the data's declared ``feature_space`` (``"auto"`` for a bare tensor).
        seed: seeds every random choice of the metric.
        num_permutations: permutations for permutation-test p-values.
        evaluation: an ``Evaluation`` of the model on the data already computed, or None.
    """

    model: Any
    data: Dataset | Tensor
    samples: Tensor | None
    reference: Tensor
    features: FeatureSpec
    seed: int
    num_permutations: int
    evaluation: Any = None

    @property
    def modes(self) -> tuple[Tensor, float] | None:
        """The data's declared mixture modes ``(centers (K, D), std)``, or None."""
        return self.data.modes if isinstance(self.data, Dataset) else None

    def require_samples(self) -> Tensor:
        """The model's samples (a metric registered with ``needs_samples=True`` has them)."""
        assert self.samples is not None, "registered with needs_samples=True: samples are drawn"
        return self.samples


MetricFn = Callable[[MetricInputs], dict[str, Any]]
RowsFn = Callable[[dict[str, Any]], list[Row]]


@dataclasses.dataclass(frozen=True)
class Metric:
    """A registered metric (see :func:`register_metric` for the fields)."""

    name: str
    compute: MetricFn
    rows: RowsFn
    aliases: tuple[str, ...] = ()
    needs_samples: bool = True
    applies: Callable[[MetricInputs], bool] | None = None
    skipped: str = "does not apply to these data"


# name -> Metric, in the order the table computes and prints them (the package's import order).
METRICS: dict[str, Metric] = {}
# alias -> name
ALIASES: dict[str, str] = {}


def register_metric(
    name: str,
    *,
    rows: RowsFn,
    aliases: Sequence[str] = (),
    needs_samples: bool = True,
    applies: Callable[[MetricInputs], bool] | None = None,
    skipped: str = "does not apply to these data",
) -> Callable[[MetricFn], MetricFn]:
    """Decorator adding a table metric under ``name``.

    Arguments:
        name: the name ``metrics_table(metrics=...)`` and ``ppgen evaluate --metrics`` take.
        rows: ``entry -> [Row, ...]``: the lines of :func:`format_table` for the metric's dict
            (:func:`statistic_rows` makes the usual one-line form).
        aliases: other names accepted for it (``"fid"`` for ``"fd"``).
        needs_samples: whether it compares the model's samples with the data (the likelihood
            row does not).
        applies: ``inputs -> bool``, where the metric needs something the data may not declare
            (e.g. known mixture modes); ``"all"`` leaves it out where False.
        skipped: the reason recorded when it was asked for by name and does not apply.

    Returns:
        The decorator; it returns the function unchanged.
    """
    key = name.strip().lower()
    keys = [a.strip().lower() for a in aliases]
    for word in (key, *keys):
        if not word or word == "all" or "," in word:
            raise ValueError(
                f"cannot register a metric named {word!r}: 'all', '' and commas are taken"
            )
    for alias in keys:
        if alias in METRICS and alias != key:
            raise ValueError(f"alias {alias!r} of {name!r} is already the metric {alias!r}")

    def add(fn: MetricFn) -> MetricFn:
        METRICS[key] = Metric(
            name=key,
            compute=fn,
            rows=rows,
            aliases=tuple(keys),
            needs_samples=needs_samples,
            applies=applies,
            skipped=skipped,
        )
        for alias in keys:
            ALIASES[alias] = key
        return fn

    return add


def resolve_names(metrics: str | Sequence[str]) -> tuple[list[str], set[str]]:
    """The registered names a request means, in order, and those named explicitly.

    ``"all"`` expands to every registered metric; aliases map to their metric; repeats are
    dropped. The second set holds the metrics named outright (not only through ``"all"``), which
    are reported as skipped, not left out, where they do not apply.

    Raises:
        MetricError: an unknown name, or none at all.
    """
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    names: list[str] = []
    explicit: set[str] = set()
    for item in (i.strip().lower() for i in items if i.strip()):
        chosen = list(METRICS) if item == "all" else [ALIASES.get(item, item)]
        for name in chosen:
            if name not in METRICS:
                raise MetricError(
                    f"unknown metric {item!r}; choose from 'all' or {', '.join(METRICS)} "
                    f"(aliases: {', '.join(sorted(ALIASES))})"
                )
            if item != "all":
                explicit.add(name)
            if name not in names:
                names.append(name)
    if not names:
        raise MetricError("no metric named; pass 'all' or a comma list such as 'mmd,fd'")
    return names, explicit


def _num(v: Any, fmt: str = ".4g") -> str:
    return "" if v is None else format(v, fmt)


def statistic_rows(label: str, uncertainty: str = "") -> RowsFn:
    """The one-line rows of a :class:`~ppgen.inference.metrics.MetricResult` dict.

    Arguments:
        label: the metric's name in the text (``"KID"``).
        uncertainty: how its ``stderr`` reads, ``{}`` standing for the number
            (``"± {} (bootstrap)"``); empty: not shown.
    """

    def rows(r: dict[str, Any]) -> list[Row]:
        err = ""
        if uncertainty and r.get("stderr") is not None:
            err = uncertainty.format(_num(r["stderr"], ".2g"))
        return [
            (label, _num(r["value"]), err, _num(r.get("p_value"), ".3g"), r.get("features", ""))
        ]

    return rows
