r"""Feature maps for sample-quality metrics: raw points, or a fixed classifier for 8x8 digits.

FID-style metrics compare distributions of *features*. No weights can be downloaded here, so
for sklearn's 8x8 digits ppgen trains a small fixed classifier (an MLP ``64 -> 128 -> 64 -> 10``)
on the digits training split, with a fixed seed, single-threaded, and caches its weights in the
user cache directory (:func:`cache_dir`). When the file is absent, unreadable or of another
version it is rebuilt, identically, and written atomically; it is read back through ppgen's safe
checkpoint path (checksum, ``weights_only=True``). The features are the 64 activations of the
penultimate layer, as FID uses Inception's pool layer.

For any other data the default features are the raw points, flattened to ``(N, D)``. Users may
pass any feature function ``(N, *event_shape) -> (N, F)`` instead, e.g. their own Inception.
"""

from __future__ import annotations

__all__ = [
    "DigitsClassifier",
    "FeatureSpec",
    "cache_dir",
    "digits_classifier",
    "resolve_features",
]

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

FeatureSpec = Callable[[Tensor], Tensor] | Literal["auto", "raw", "digits", "digits-binary"] | None

_VERSION = 1  # bump when the architecture or the recipe changes: old cache files are rebuilt
_SEED = 0
_STEPS = 150
_DIGITS_SHAPES = ((1, 8, 8), (8, 8))


def cache_dir() -> Path:
    """The directory where ppgen caches what it builds (the digits feature classifier).

    ``$PPGEN_CACHE_DIR`` when set; else the platform's user cache directory:
    ``$XDG_CACHE_HOME/ppgen`` or ``~/.cache/ppgen`` on Linux, ``~/Library/Caches/ppgen`` on
    macOS, ``%LOCALAPPDATA%\\ppgen\\Cache`` on Windows.

    Example:
        >>> import os
        >>> os.environ["PPGEN_CACHE_DIR"] = "/tmp/ppgen-cache-example"
        >>> str(cache_dir())
        '/tmp/ppgen-cache-example'
        >>> del os.environ["PPGEN_CACHE_DIR"]
    """
    env = os.environ.get("PPGEN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "ppgen"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", home / "AppData" / "Local")) / "ppgen" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "ppgen"


class DigitsClassifier(nn.Module):
    """The fixed feature network for 8x8 digits: an MLP ``64 -> 128 -> 64 -> 10`` (ReLU).

    Arguments:
        levels: the data's levels (17 for ``digits``, 2 for ``digits-binary``); inputs are
            divided by ``levels - 1`` so they lie in ``[0, 1]``.

    Shapes:
        ``features(x)``: ``(N, 1, 8, 8)``, ``(N, 8, 8)`` or ``(N, 64)`` -> ``(N, 64)``;
        ``forward(x)``: -> class logits ``(N, 10)``.

    Example:
        >>> import torch
        >>> DigitsClassifier(levels=17).features(torch.zeros(5, 1, 8, 8)).shape
        torch.Size([5, 64])
    """

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels
        self.accuracy: dict[str, float] = {}  # training/validation accuracy, set when built
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def features(self, x: Tensor) -> Tensor:
        """The 64 penultimate activations (what Frechet distance, KID and precision/recall use)."""
        flat = x.reshape(x.shape[0], 64).to(self.head.weight.dtype)  # (N, 64)
        return self.body(flat / (self.levels - 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """One intra-op thread for the duration (the build's float sums then have a fixed order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _build(binary: bool) -> tuple[DigitsClassifier, dict[str, float]]:
    """Train the classifier on the digits training split: fixed seed, full-batch Adam."""
    from ppgen.datasets import load

    name = "digits-binary" if binary else "digits"
    train, val = load(name, "train"), load(name, "val")
    with torch.random.fork_rng(devices=[]), _single_thread(), torch.enable_grad():
        torch.manual_seed(_SEED)
        net = DigitsClassifier(levels=2 if binary else 17)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
        assert train.labels is not None and val.labels is not None, "digits have labels"
        for _ in range(_STEPS):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(train.data), train.labels)
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            train_acc = float((net(train.data).argmax(1) == train.labels).float().mean())
            val_acc = float((net(val.data).argmax(1) == val.labels).float().mean())
    net.requires_grad_(False)
    return net, {"train_accuracy": train_acc, "val_accuracy": val_acc}


_LOADED: dict[tuple[str, bool], DigitsClassifier] = {}


def _file(binary: bool) -> Path:
    return cache_dir() / f"{'digits-binary' if binary else 'digits'}-features-v{_VERSION}.pt"


def digits_classifier(binary: bool = False, *, rebuild: bool = False) -> DigitsClassifier:
    """The fixed digits feature classifier, from the cache or built (and cached) when absent.

    Arguments:
        binary: the variant for ``digits-binary`` (0/1 pixels) instead of ``digits`` (17 levels).
        rebuild: train it again even when a cached file exists (the result is identical on one
            machine: fixed seed, one thread).

    Returns:
        A :class:`DigitsClassifier` in eval mode with frozen weights, on the CPU. Its training
        and validation accuracy are in ``classifier.accuracy``.

    Example:
        >>> import os, tempfile, ppgen
        >>> with tempfile.TemporaryDirectory() as cache:
        ...     os.environ["PPGEN_CACHE_DIR"] = cache
        ...     net = digits_classifier()  # trained here (about a second), then cached
        ...     cached = os.listdir(cache)
        ...     del os.environ["PPGEN_CACHE_DIR"]
        >>> cached, net.accuracy["val_accuracy"] > 0.95
        (['digits-features-v1.pt'], True)
        >>> net.features(ppgen.datasets.load("digits", "test").data).shape
        torch.Size([297, 64])
    """
    from ppgen.checkpoint import FORMAT_VERSION, CheckpointError, read_checkpoint, write_checkpoint

    path = _file(binary)
    key = (str(path), binary)
    if not rebuild and key in _LOADED:
        return _LOADED[key]
    net: DigitsClassifier | None = None
    if not rebuild and path.exists():
        try:
            payload = read_checkpoint(path)
            ours = payload.get("kind") == "ppgen-digits-features"
            if ours and payload.get("version") == _VERSION:
                net = DigitsClassifier(levels=2 if binary else 17)
                net.load_state_dict(payload["state_dict"], strict=True)
                net.eval().requires_grad_(False)
                net.accuracy = dict(payload["accuracy"])
        except (CheckpointError, RuntimeError, KeyError):
            net = None  # unreadable or foreign: rebuild below, identically
    if net is None:
        net, accuracy = _build(binary)
        net.accuracy = accuracy
        payload: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "kind": "ppgen-digits-features",
            "version": _VERSION,
            "binary": binary,
            "accuracy": accuracy,
            "state_dict": net.state_dict(),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_checkpoint(path, payload)
        except OSError:
            pass  # a read-only cache: the network is rebuilt identically next time
    _LOADED[key] = net
    return net


def _is_digits(x: Tensor) -> bool:
    return tuple(x.shape[1:]) in _DIGITS_SHAPES


def _all_binary(x: Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def _on_levels(x: Tensor, levels: int) -> bool:
    return bool(((x == x.round()) & (x >= 0) & (x <= levels - 1)).all())


@torch.no_grad()
def resolve_features(
    x: Tensor, y: Tensor, features: FeatureSpec, default: str = "auto"
) -> tuple[Tensor, Tensor, str]:
    """Map both batches to feature space; returns ``(fx, fy, label)`` as float64 ``(N, F)``.

    Arguments:
        x: the model's samples ``(N, *event_shape)``.
        y: the reference data ``(M, *event_shape)``.
        features: a function ``(N, *event_shape) -> (N, F)``; ``"raw"`` (flattened points);
            ``"digits"`` / ``"digits-binary"`` (the fixed classifier's features); ``"auto"``:
            for 8x8 images (``(1, 8, 8)`` or ``(8, 8)``) whose reference data ``y`` hold the
            digits' integer levels 0..16, the digits classifier (its binary variant when ``y``
            holds only 0 and 1), else raw; None: ``default``.
        default: what None means for the calling metric.

    Returns:
        ``fx`` ``(N, F)``, ``fy`` ``(M, F)`` and the features' label.

    Example:
        >>> import torch
        >>> fx, fy, label = resolve_features(torch.zeros(3, 2), torch.ones(4, 2), "auto")
        >>> fx.shape, fy.dtype, label
        (torch.Size([3, 2]), torch.float64, 'raw')
    """
    spec: Any = default if features is None else features
    if spec == "auto":
        spec = "raw"
        if _is_digits(x) and _is_digits(y):
            if _all_binary(y):
                spec = "digits-binary"
            elif _on_levels(y, 17):
                spec = "digits"
    if callable(spec):
        fx, fy = spec(x), spec(y)
        label = getattr(spec, "__name__", type(spec).__name__)
    elif spec == "raw":
        fx, fy = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
        label = "raw"
    elif spec in ("digits", "digits-binary"):
        for batch, what in ((x, "x"), (y, "y")):
            if batch.shape[1:].numel() != 64:
                raise ValueError(
                    f"features={spec!r} needs 8x8 digits, but {what} has event shape "
                    f"{tuple(batch.shape[1:])}; pass features='raw' or a feature function"
                )
        net = digits_classifier(binary=spec == "digits-binary")
        fx, fy = net.features(x.detach().cpu()), net.features(y.detach().cpu())
        label = f"{spec}-classifier-v{_VERSION}"
    else:
        raise ValueError(
            f"unknown features {spec!r}; pass 'auto', 'raw', 'digits', 'digits-binary' or a "
            "function mapping a batch (N, *event_shape) to (N, F)"
        )
    if not (torch.is_tensor(fx) and torch.is_tensor(fy)) or fx.dim() != 2 or fy.dim() != 2:
        raise ValueError(f"the feature function {label!r} must return (N, F) tensors")
    if fx.shape[1] != fy.shape[1]:
        raise ValueError(f"features of x and y differ in width: {fx.shape[1]} vs {fy.shape[1]}")
    return (
        fx.detach().to("cpu", torch.float64),
        fy.detach().to("cpu", torch.float64),
        label,
    )
