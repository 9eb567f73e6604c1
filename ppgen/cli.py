"""The ``ppgen`` command: ``list | fit | evaluate | sample | inspect | compare | benchmark``.

Hyperparameters are dotted overrides generated from the family's config dataclass
(``--model.hidden=512,512``, ``--objective.loss=hinge``); values are parsed as JSON, then as a
comma-separated list, never executed. ``fit`` writes the command and the config into the run
directory (``config.json``). Errors from bad input print one line and exit with status 2;
an interrupted fit exits 130 (SIGINT) or 143 (SIGTERM) after saving a checkpoint.
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import contextlib
import importlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ppgen.datasets.base import Dataset
    from ppgen.models.base import AbstractGenerativeModel


class _Deferred:
    """A module imported at its first attribute access, so that ``ppgen --help`` and ``ppgen
    list`` import neither torch nor the package (the commands' first use pays, once)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(importlib.import_module(self._name), attribute)


def _deferred_function(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, imported at the first call (a module attribute here, so a test can
    replace it)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"``{module}.{name}``, imported at the first call."
    return call


torch = _Deferred("torch")
datasets = _Deferred("ppgen.datasets")
models = _Deferred("ppgen.models")
run_directory = _Deferred("ppgen.run_directory")
train_config = _Deferred("ppgen.inference.train_config")
evaluate = _deferred_function("ppgen.inference.likelihood", "evaluate")
fit = _deferred_function("ppgen.fitting", "fit")
seed_everything = _deferred_function("ppgen.inference.trainer", "seed_everything")


def parse_value(text: str) -> Any:
    """A command-line value as data: JSON (``512``, ``0.3``, ``true``, ``[1, 2]``, ``"a"``), else a
    comma-separated list of such values (``512,512``), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        return [parse_value(part) for part in text.split(",") if part != ""]
    lowered = text.lower()
    if lowered in ("true", "false", "none", "null"):
        return {"true": True, "false": False}.get(lowered)
    return text


def parse_overrides(extra: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["--model.hidden=64,64", "--objective.loss", "hinge"]`` ->
    ``{"model": {"hidden": [64, 64]}, "objective": {"loss": "hinge"}}``."""
    out: dict[str, dict[str, Any]] = {"model": {}, "objective": {}}
    items = list(extra)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--") or "." not in item:
            raise ValueError(
                f"unrecognized argument {item!r}; overrides look like --model.hidden=64"
            )
        key, sep, value = item[2:].partition("=")
        if not sep:
            if i + 1 >= len(items):
                raise ValueError(f"{item} needs a value")
            value = items[i + 1]
            i += 1
        scope, _, name = key.partition(".")
        if scope not in out or not name:
            raise ValueError(f"unknown override scope in {item!r}; use --model.X or --objective.X")
        out[scope][name.replace("-", "_")] = parse_value(value)
        i += 1
    return out


def _not_overrides(extra: Sequence[str]) -> list[str]:
    """The items of ``extra`` that are neither ``--model.X``/``--objective.X`` overrides nor
    their values."""
    unknown = []
    items = list(extra)
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith(("--model.", "--objective.")):
            i += 1 if "=" in item else 2
            continue
        unknown.append(item)
        i += 1
    return unknown


def _build(name: str, spec: dict[str, Any], options: dict[str, Any]) -> AbstractGenerativeModel:
    """A model from a family name, or a user's class or builder named on the command line (the
    module is imported from the import path as it is: ``PYTHONPATH=.`` for one in the current
    directory; ppgen never adds a directory to ``sys.path``)."""
    return run_directory.build_from(name, spec, options)


def load_data(name: str, split: str) -> Dataset:
    return datasets.load(name, split=split)


def check_data_fits(model: AbstractGenerativeModel, data: Dataset, name: str) -> None:
    """Refuse, in one line naming both, data that a run's model cannot score: another shape,
    another kind (binary, discrete, continuous), or levels beyond the model's. Data of the
    same shape whose values lie in the model's levels are scored as the model's data (a file
    of 8-bit test images whose loader inferred fewer levels is fine)."""
    cfg = model.config
    shape, kind, levels = tuple(cfg.event_shape), cfg.kind, cfg.levels

    def describe(s: tuple[int, ...], k: str, lv: int | None) -> str:
        return f"{'x'.join(map(str, s))} {k} data" + (f" with {lv} levels" if lv else "")

    trained, given = describe(shape, kind, levels), describe(data.event_shape, data.kind,
                                                            data.levels)
    fault = None
    if data.event_shape != shape:
        fault = "another shape"
    elif (data.kind == "continuous") != (kind == "continuous") or (
        {data.kind, kind} == {"binary", "discrete"} and levels != data.levels
    ):
        fault = "another kind"
    elif levels is not None and len(data) and float(data.data.max()) > levels - 1:
        fault = f"values up to {float(data.data.max()):g}, beyond level {levels - 1}"
    if fault is not None:
        raise datasets.DataError(
            f"--data {name}: {given} ({fault}); the run's model was trained on {trained}: "
            "score it on data of the same shape and levels"
        )


def _load_run(
    run: str, trust_code: bool = False
) -> tuple[AbstractGenerativeModel, dict[str, Any]]:
    """A run directory's model and ``config.json``, read as untrusted data (see
    :mod:`ppgen.run_directory`): user code it names is imported only with ``--trust-code``."""
    model, record = run_directory.load_run(run, trust_code=trust_code)
    return model, record.config


# ---- commands ---------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from ppgen import catalog  # plain data, no torch (tests/test_cli_help.py keeps it true)

    print("families:")
    for name, (likelihood, fields) in catalog.FAMILIES.items():
        print(f"  {name:16s} likelihood={likelihood:6s} hyperparameters: {', '.join(fields)}")
    print("datasets:")
    for name in catalog.DATASETS:
        print(f"  {name}")
    return 0


def cmd_fit(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Fit a model into a run directory; the directory's records are complete from the start.

    ``config.json`` is written once, when training starts, with the data name (and a user's
    builder), so a run stopped at any point can be evaluated without ``--data``. From the first
    line on, SIGINT/SIGTERM end the command with one line and 130/143, whether they come while
    the data load, during training (a checkpoint is saved first) or during the summary
    evaluation after the last step.
    """
    with _signals_end_the_command() as progress:
        overrides = parse_overrides(extra)
        train = load_data(args.data, "train")
        val = None if args.no_val else load_data(args.data, "val")
        seed_everything(args.seed)  # the initial weights too are a function of --seed
        model = _build(args.model, train.spec(), overrides["model"])
        print(_size_line(model), flush=True)
        stem = Path(args.data.split("#", 1)[0]).stem
        out = Path(args.out or f"runs/{args.model.replace(':', '_')}-{stem}")
        run_info: dict[str, Any] = {"data": args.data}
        if ":" in args.model:  # a user's class or builder: how evaluate/sample rebuild it
            run_info["builder"] = args.model
            run_info["builder_options"] = overrides["model"]
        settings = train_config.from_arguments(args, objective_options=overrides["objective"])
        history = fit(model, train, settings, val=val, out=out, run_info=run_info)
        progress.update(step=history.steps, checkpoint=out / "checkpoint.pt")
        scored = val if val is not None else train
        if scored.mask is None:
            summary = str(evaluate(model, scored, seed=args.seed))
        else:  # incomplete data: nothing scores the missing cells; the objective's own number
            summary = (f"{scored.missing_fraction:.1%} of cells missing; the objective's "
                       f"last validation loss is {history.val[-1]['val_loss']:.4f} nats per "
                       "example" if history.val else
                       f"{scored.missing_fraction:.1%} of cells missing (no validation)")
    print(
        f"fit {args.model} on {args.data} in {history.elapsed:.1f}s: {history.summary()}; "
        f"{'val' if val is not None else 'train'}: {summary}"
    )
    print(f"run directory: {out}")
    return 0


def _size_line(model: AbstractGenerativeModel) -> str:
    """The model's size, said before training: its trained parameters, the values its weights
    file holds (parameters and buffers such as MADE's masks) and the checkpoint that holds those
    and Adam's two moments per parameter (measured: 1.215 MB for a MADE of 74,880 parameters
    and 148,609 values, 4 bytes each)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    count = sum(p.numel() for p in model.parameters())
    checkpoint = weights + 2 * params
    return (
        f"{type(model).__name__}: {count:,} parameters, ~{checkpoint / 1e6:,.1f} MB checkpoint "
        f"({weights / 1e6:,.1f} MB of weights and buffers)"
    )


@contextlib.contextmanager
def _signals_end_the_command() -> Iterator[dict[str, Any]]:
    """SIGINT/SIGTERM raise :class:`TrainingInterrupted` at once (``main`` prints its one line
    and exits 128 + the signal), where Python's defaults would print a ``KeyboardInterrupt``
    traceback or die without a word. ``fit`` defers them to the end of a step inside; the
    yielded dict says what the line reports: the steps done and the checkpoint saved."""
    import signal
    import threading

    from ppgen.inference.trainer import TrainingInterrupted

    progress: dict[str, Any] = {"step": 0, "checkpoint": None}

    def handle(signum: int, frame: Any) -> None:
        raise TrainingInterrupted(signum, progress["step"], progress["checkpoint"])

    if threading.current_thread() is not threading.main_thread():
        yield progress
        return
    old = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield progress
    except KeyboardInterrupt as e:  # a SIGINT that came between two handlers
        if isinstance(e, TrainingInterrupted):
            raise
        step, checkpoint = progress["step"], progress["checkpoint"]
        raise TrainingInterrupted(signal.SIGINT, step, checkpoint) from None
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def cmd_evaluate(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from ppgen.inference import distributed
    from ppgen.inference.trainer import resolve_device

    model, run_config = _load_run(args.run, args.trust_code)
    name = args.data or run_config.get("data")
    if name is None:
        raise ValueError("pass --data (the run directory does not record its dataset)")
    data = load_data(name, args.split)
    check_data_fits(model, data, name)
    ctx = distributed.init(resolve_device(args.device))  # under torchrun: sharded, gathered
    model.to(ctx.device)
    masked = {} if args.mask is None else {"mask": _mask_argument(args.mask, model)}
    ev = evaluate(
        model, data, estimator=args.estimator, num_particles=args.num_particles, seed=args.seed,
        **masked,
        progress=False if args.no_progress else None,
    )
    if not ctx.is_main:
        return 0
    result: dict[str, Any] = {"likelihood": ev.to_dict(), "data": name, "split": args.split}
    print(f"{name}/{args.split}: {ev}")
    print(f"  convention: {ev.convention}")
    if args.metrics:
        from ppgen.inference import metrics

        table = metrics.metrics_table(
            model, data, metrics=args.metrics, seed=args.seed, evaluation=ev
        )
        result["metrics"] = table
        print(metrics.format_table(table))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
    return 0


def _mask_argument(text: str, model: AbstractGenerativeModel) -> Any:
    """``--mask``: a mask name (``bottom-half``, ``random:0.5``...) or a ``.npy`` file of bools
    (read as plain data, never unpickled)."""
    if text.endswith(".npy"):
        import numpy as np

        from ppgen.masks import check_mask

        try:
            array = np.load(text, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"--mask {text}: cannot read a bool array from it ({e})") from None
        return check_mask(torch.from_numpy(array) if array.dtype == np.bool_ else array,
                          model.event_shape)
    return text


def cmd_impute(args: argparse.Namespace, extra: Sequence[str]) -> int:
    import numpy as np

    from ppgen.inference.conditioning import impute
    from ppgen.inference.trainer import resolve_device

    if args.n < 1:
        raise ValueError(f"-n must be >= 1, got {args.n}")
    out = Path(args.output)
    if out.suffix not in (".npz", ".csv"):
        raise ValueError(f"-o {out}: write .npz (samples, mask, data) or .csv (completed table)")
    model, run_config = _load_run(args.run, args.trust_code)
    name = args.data or run_config.get("data")
    if name is None:
        raise ValueError("pass --data (the run directory does not record its dataset)")
    own_holes = args.mask is None  # the data's own missing cells (FILE#missing=mask)
    split = args.split or ("all" if own_holes else "test")
    if own_holes and str(name) in datasets.names():
        raise ValueError(f"{name} has no missing cells: pass --mask (e.g. bottom-half)")
    data = load_data(name, split)
    if own_holes and data.mask is None:
        raise ValueError(
            f"{name} ({split}) has no missing cells: pass --mask, or load a table with holes "
            "as FILE#missing=mask"
        )
    if out.suffix == ".csv" and len(model.event_shape) != 1:
        raise ValueError(f"-o {out}: a .csv holds flat rows; images go to .npz")
    x = data.data if args.limit is None else data.data[: args.limit]
    context = None
    if model.conditional:
        context = data.labels if args.limit is None else data.labels[: args.limit]
    model.to(resolve_device(args.device)).eval()
    if own_holes:
        assert data.mask is not None
        mask: Any = data.mask if args.limit is None else data.mask[: args.limit]
    else:
        mask = _mask_argument(args.mask, model)
        if data.mask is not None:  # cells missing from the data stay missing
            from ppgen.masks import named

            given = named(mask, model.event_shape, seed=args.seed) if isinstance(mask, str) \
                else mask
            mask = given & (data.mask if args.limit is None else data.mask[: args.limit])
    imp = impute(model, x, mask, num_samples=args.n, seed=args.seed, method=args.method,
                 context=context)
    samples = imp.samples.detach().cpu()
    if out.suffix == ".npz":
        np.savez(out, samples=samples.numpy(), mask=imp.mask.cpu().numpy(),
                 data=x.detach().cpu().numpy(), method=np.array(imp.method))
    else:
        if model.config.kind == "continuous":
            completed = samples.double().mean(0)
        else:  # the most frequent level of each cell over the completions
            completed = samples.long().mode(0).values.double()
        np.savetxt(out, completed.numpy(), delimiter=",", fmt="%.6g")
    if args.png:
        from ppgen.plots import inpainting_grid

        rows = min(x.shape[0], 16)
        inpainting_grid(x[:rows], imp.mask[:rows], samples[:, :rows], args.png,
                        levels=model.config.levels, title=f"{name}: {imp.method}")
    print(f"{name}/{split}: {x.shape[0]} examples x {args.n} completions by {imp.method} "
          f"({'exact' if imp.exact else 'approximate'} draws) -> {out}")
    for note in imp.notes:
        print(f"  note: {note}")
    if imp.diagnostics:
        print(f"  diagnostics: {json.dumps(imp.diagnostics, default=float)}")
    return 0


def cmd_sample(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from ppgen.inference import distributed
    from ppgen.inference.trainer import resolve_device
    from ppgen.plots import sample_grid

    model, _ = _load_run(args.run, args.trust_code)
    context = _sample_labels(model, args.labels, args.n)
    ctx = distributed.init(resolve_device(args.device))
    model.to(ctx.device).eval()
    if context is not None:
        context = context.to(ctx.device)
    x = distributed.sample(model, args.n, args.seed, ctx, context=context)
    if x is None:  # not rank 0 under torchrun: rank 0 writes the file
        return 0
    out = Path(args.output)
    if out.suffix == ".npy":
        import numpy as np

        np.save(out, x.detach().cpu().numpy())
    else:
        sample_grid(x, out, levels=model.config.levels)
    print(f"wrote {args.n} samples to {out}")
    return 0


def _sample_labels(model: AbstractGenerativeModel, labels: str | None, n: int) -> Any:
    """The context of ``ppgen sample``: ``--labels 3`` gives every sample class 3, ``--labels
    0,1,2`` cycles through the list (sample i gets labels[i % len])."""
    if labels is None:
        if model.conditional:
            raise ValueError(
                f"{type(model).__name__} is conditional on class labels: pass --labels, e.g. "
                "--labels 3 (every sample) or --labels 0,1,2 (cycled over the samples)"
            )
        return None
    if not model.conditional:
        raise ValueError(f"{type(model).__name__} is unconditional: drop --labels")
    try:
        values = [int(v) for v in labels.split(",") if v.strip() != ""]
    except ValueError:
        raise ValueError(f"--labels takes integers separated by commas, got {labels!r}") from None
    if not values:
        raise ValueError("--labels is empty; pass e.g. --labels 3 or --labels 0,1,2")
    return torch.tensor([values[i % len(values)] for i in range(n)], dtype=torch.long)


def cmd_compare(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from ppgen.inference import analysis

    a, config_a = _load_run(args.run_a, args.trust_code)
    b, _ = _load_run(args.run_b, args.trust_code)
    name = args.data or config_a.get("data")
    if name is None:
        raise ValueError("pass --data")
    data = load_data(name, args.split)
    if not args.allow_mixed_kinds:
        check_data_fits(a, data, name)
        check_data_fits(b, data, name)
    result = analysis.compare(
        a,
        b,
        data,
        seed=args.seed,
        allow_mixed_kinds=args.allow_mixed_kinds,
        names=(args.run_a, args.run_b),
    )
    print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2, default=float))
    return 0


def cmd_inspect(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from ppgen import reports

    model, run_config = _load_run(args.run, args.trust_code)
    name = args.data or run_config.get("data")
    if name is None:
        raise ValueError("pass --data")
    data = load_data(name, args.split)
    check_data_fits(model, data, name)
    out = Path(args.out or (Path(args.run) if Path(args.run).is_dir() else Path(".")))
    reports.inspect_report(
        model, data, out=out, num_points=args.num_points, seed=args.seed, method=args.method
    )
    return 0


def cmd_benchmark(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from ppgen import benchmark

    benchmark.run(
        data=args.data,
        preset=args.preset,
        families=args.families,
        out=args.out,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        baselines=not args.no_baselines,
    )
    return 0


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (where it has one and the help does not
    already say it); choices show in the option's metavar, ``{a,b}``."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or isinstance(default, bool)
                or default is argparse.SUPPRESS or not action.option_strings):
            return text  # a switch's default is its absence
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """A sub-command's parser: no abbreviated flags, defaults in the help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


class _SubCommands(argparse._SubParsersAction):
    """Sub-commands whose costly options (generated from declarations that import torch:
    ``TrainConfig``, the estimator registry, the benchmark presets) are added when the command
    is chosen, so ``ppgen --help`` and ``ppgen list`` import neither torch nor the package.
    ``build_parser()`` adds them all at once (``lazy=False``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = False
        self._later: dict[argparse.ArgumentParser,
                          list[Callable[[argparse.ArgumentParser], None]]] = {}

    def declare(self, parser: argparse.ArgumentParser,
                add: Callable[[argparse.ArgumentParser], None]) -> None:
        """Run ``add(parser)`` now, or when ``parser``'s command is chosen if ``lazy``."""
        if self.lazy:
            self._later.setdefault(parser, []).append(add)
        else:
            add(parser)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        chosen = self.choices.get(values[0])
        for add in self._later.pop(chosen, []):  # type: ignore[arg-type]
            add(chosen)  # type: ignore[arg-type]
        super().__call__(parser, namespace, values, option_string)


def _nearest_flag(flag: str, parser: argparse.ArgumentParser) -> str:
    """`` (did you mean --steps?)`` for an unknown ``flag``, or nothing."""
    import difflib

    known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(flag.split("=", 1)[0], known, n=1, cutoff=0.7)
    return f" (did you mean {close[0]}?)" if close else ""


def _estimator_argument(p: argparse.ArgumentParser) -> None:
    from ppgen.inference.likelihood import ESTIMATORS  # filled as the package is imported

    names = sorted(ESTIMATORS)
    p.add_argument(
        "--estimator",
        default="auto",
        choices=["auto", *names],
        metavar="NAME",
        help="likelihood estimator: auto (the model's exact density, else its bound, else an "
        f"estimate) or one of {', '.join(names)}",
    )


def _preset_argument(p: argparse.ArgumentParser) -> None:
    from ppgen.benchmark import PRESETS

    p.add_argument("--preset", default="quick", choices=list(PRESETS),
                   help="budgets: tiny (a smoke test), quick or full")


def _trust_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="import the user code (module:Class or builder) the run directory names; this runs "
        "that code: only for runs you trust",
    )


_SPLITS = ("train", "val", "test", "all")  # ppgen.datasets.load's (tests/test_cli_help.py)


def _run_arguments(p: argparse.ArgumentParser, runs: tuple[str, ...] = ("run",)) -> None:
    """What every command that reads runs takes: the runs, the data and split, --trust-code."""
    for run in runs:
        p.add_argument(run, help="run directory or checkpoint file")
    p.add_argument("--data", default=None,
                   help="dataset to score on (default: the one the run was trained on)")
    p.add_argument("--split", default="test", choices=_SPLITS,
                   help="the split of the data to score (all: the whole of a user's file)")
    _trust_argument(p)


def _common_arguments(
    p: argparse.ArgumentParser, *, device: bool = True, progress: bool = False
) -> None:
    """--seed (every command), --device and --no-progress where they apply."""
    p.add_argument("--seed", type=int, default=0, help="random seed")
    if device:
        p.add_argument("--device", default="auto",
                       help="auto (CUDA when present), cpu, cuda, cuda:1...")
    if progress:
        p.add_argument("--no-progress", action="store_true",
                       help="no progress bars (by default they show on a terminal)")


def build_parser(lazy: bool = False) -> argparse.ArgumentParser:
    """The ``ppgen`` parser; with ``lazy``, the options that need torch to be declared are
    added when their command is chosen (what :func:`main` does)."""
    p = argparse.ArgumentParser(
        prog="ppgen", description=__doc__.splitlines()[0], allow_abbrev=False
    )
    p.register("action", "parsers", _SubCommands)
    # allow_abbrev=False for every sub-command too: a prefix such as --step must never be taken
    # for --steps (an unknown flag is an error that names the nearest known one)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    assert isinstance(sub, _SubCommands)
    sub.lazy = lazy

    sub.add_parser("list", help="families and datasets").set_defaults(fn=cmd_list)

    f = sub.add_parser("fit", help="train a model; overrides: --model.X=V --objective.X=V")
    f.add_argument("model", help="family name (see `ppgen list`) or package.module:Class")
    f.add_argument(
        "--data",
        required=True,
        help="embedded dataset name, a .npy/.npz/.csv file, an IDX file (*-ubyte[.gz]) or a "
        "folder of PNG/JPEG images; options after '#' (see ppgen.datasets.load)",
    )
    f.add_argument("--out", default=None, help="run directory (default runs/MODEL-DATA)")
    f.add_argument("--no-val", action="store_true", help="train without a validation split")
    # one flag per TrainConfig field, with its default and help
    sub.declare(f, lambda parser: train_config.add_arguments(parser))
    f.set_defaults(fn=cmd_fit)

    e = sub.add_parser("evaluate", help="labelled likelihood (and metrics) of a trained run")
    _run_arguments(e)
    sub.declare(e, _estimator_argument)
    e.add_argument(
        "--num-particles",
        type=int,
        default=None,
        help="samples per example of a stochastic estimator (default: the estimator's)",
    )
    e.add_argument("--mask", default=None,
                   help="score the missing part given the rest: a mask name (bottom-half, "
                   "top-half, left-half, right-half, center, random:P) or a .npy of bools "
                   "(True = observed); bits per missing dim")
    e.add_argument("--metrics", default=None, help="'all' or a comma list of sample metrics")
    e.add_argument("--json", default=None, help="also write the results as JSON here")
    _common_arguments(e, progress=True)
    e.set_defaults(fn=cmd_evaluate)

    m = sub.add_parser("impute", help="complete the missing part of data with a trained run")
    _run_arguments(m)
    m.add_argument("--mask", default=None,
                   help="bottom-half, top-half, left-half, right-half, center, random:P, or a "
                   ".npy of bools (True = observed); default: the data's own missing cells "
                   "(--data table.csv#missing=mask, the whole table in file order)")
    m.add_argument("-n", type=int, default=8, help="completions per example (default: 8)")
    m.add_argument("-o", "--output", default="imputed.npz",
                   help=".npz (samples, mask, data) or .csv (the completed table)")
    m.add_argument("--png", default=None, help="also draw observed | completions | truth here")
    m.add_argument("--method", default="auto", help="imputation method (default: auto)")
    m.add_argument("--limit", type=int, default=None, help="only the first N examples")
    _common_arguments(m)
    m.set_defaults(fn=cmd_impute, split=None)  # split: test with --mask, else all

    s = sub.add_parser("sample", help="draw samples from a trained run")
    s.add_argument("run", help="run directory or checkpoint file")
    s.add_argument("-n", type=int, default=64, help="number of samples (default: 64)")
    s.add_argument("-o", "--output", default="samples.png",
                   help=".png grid or .npy array (default: samples.png)")
    s.add_argument(
        "--labels",
        default=None,
        help="class labels of a conditional model: one (every sample) or a comma list (cycled)",
    )
    _trust_argument(s)
    _common_arguments(s)
    s.set_defaults(fn=cmd_sample)

    c = sub.add_parser("compare", help="paired comparison of two runs on the same data")
    _run_arguments(c, runs=("run_a", "run_b"))
    c.add_argument(
        "--allow-mixed-kinds",
        action="store_true",
        help="compare an exact likelihood with a bound or an estimate (labelled in the output)",
    )
    c.add_argument("--json", default=None, help="also write the comparison as JSON here")
    _common_arguments(c, device=False)
    c.set_defaults(fn=cmd_compare)

    i = sub.add_parser("inspect", help="posteriors and latents of a latent-variable run")
    _run_arguments(i)
    i.add_argument("--out", default=None, help="where the report goes (default: the run)")
    i.add_argument("--num-points", type=int, default=4,
                   help="test points whose posteriors are drawn (default: 4)")
    i.add_argument("--method", default="nuts", choices=["nuts", "guide"],
                   help="posterior of each point: NUTS, or the guide (default: nuts)")
    _common_arguments(i, device=False)
    i.set_defaults(fn=cmd_inspect)

    b = sub.add_parser("benchmark", help="every family side by side on the same data")
    b.add_argument("--data", default="digits", help="dataset (default: digits)")
    sub.declare(b, _preset_argument)
    b.add_argument("--families", nargs="*", default=None,
                   help="only these families (default: the preset's)")
    b.add_argument("--out", default="runs/benchmark",
                   help="report directory (default: runs/benchmark)")
    b.add_argument("--no-baselines", action="store_true",
                   help="leave out the classical rows (Gaussian, mixture, kernel density)")
    _common_arguments(b, progress=True)
    b.set_defaults(fn=cmd_benchmark)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ppgen`` console script and ``python -m ppgen``."""
    parser = build_parser(lazy=True)
    args, extra = parser.parse_known_args(argv)
    command = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
    # fit takes --model.X / --objective.X overrides beside its flags; anything else is unknown
    unknown = extra if args.command != "fit" else _not_overrides(extra)
    if unknown:
        command.error(f"unrecognized argument {unknown[0]}{_nearest_flag(unknown[0], command)}")
    if args.command != "list":  # the only command that needs no torch
        torch.set_num_threads(max(torch.get_num_threads(), 1))
    try:
        return int(args.fn(args, extra) or 0)
    except KeyboardInterrupt as e:
        trainer = sys.modules.get("ppgen.inference.trainer")  # loaded if it can have raised
        if trainer is None or not isinstance(e, trainer.TrainingInterrupted):
            raise
        where = f"; checkpoint saved to {e.checkpoint}" if e.checkpoint else ""
        print(f"ppgen: interrupted after step {e.step}{where}", file=sys.stderr)
        return e.exit_code
    except (ValueError, OSError) as e:  # FitError and DataError are ValueErrors
        print(f"ppgen: error: {e}", file=sys.stderr)
        return 2
