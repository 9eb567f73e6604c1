"""User image data: folders of PNG/JPEG files (read with Pillow) and MNIST-format IDX files.

Both return a :class:`~ppgen.datasets.Dataset` of shape ``(N, C, H, W)`` holding integer levels
``0..255`` (kind ``"discrete"``, 256 levels), or ``0/1`` with ``binarize=True`` (kind
``"binary"``, pixels ``>= 128`` are 1). Every problem with a file (bytes that are not an image,
a wrong IDX magic number, a truncated file, images of mixed sizes, an empty folder) raises a
:class:`~ppgen.datasets.DataError` naming the file and the fix, before anything is returned.

Example:
    >>> import tempfile, pathlib, numpy as np
    >>> from PIL import Image
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for i in range(3):
    ...     Image.fromarray(np.full((6, 5), 40 * i, np.uint8)).save(folder / f"{i}.png")
    >>> ds = from_images(folder)
    >>> ds.event_shape, ds.kind, ds.levels, ds.data[:, 0, 0, 0].tolist()
    ((1, 6, 5), 'discrete', 256, [0.0, 40.0, 80.0])
"""

from __future__ import annotations

__all__ = [
    "BINARIZATIONS",
    "from_idx",
    "from_images",
    "is_idx_path",
    "load_cifar_source",
    "load_image_source",
]

import dataclasses
import gzip
import math
import os
import re
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch

from ppgen.datasets.arrays import parse_file_spec, split_indices
from ppgen.datasets.base import Dataset
from ppgen.datasets.validation import DataError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_SINGLE_CHANNEL_MODES = ("1", "L", "LA")
_COLOUR_MODES = ("P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")
# IDX type codes (http://yann.lecun.com/exdb/mnist/, "the IDX file format")
_IDX_TYPES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}
# MNIST's names: train-images-idx3-ubyte, t10k-labels.idx1-ubyte, optionally .gz; or *.idx
_IDX_NAME = re.compile(r"(ubyte|\.idx\d?)(\.gz)?$", re.IGNORECASE)


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _read_image(path: Path) -> PILImage:
    """Open and decode one file fully; any failure becomes a DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        # a warning while decoding (corrupt EXIF, a tag past the end, a decompression bomb) is a
        # damaged or unsafe file: refused like any other
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with Image.open(path) as im:
                if im.format not in ("PNG", "JPEG", "MPO"):
                    raise DataError(
                        f"{path}: holds a {im.format} image; only PNG and JPEG are read. "
                        "Convert it or remove it from the folder"
                    )
                im.load()
                mode = im.mode
                if mode not in _SINGLE_CHANNEL_MODES + _COLOUR_MODES:
                    raise DataError(
                        f"{path}: pixel mode {mode!r} (16-bit or floating point) is not an 8-bit "
                        "image; save it with 8 bits per channel"
                    )
                return im.copy()
    except (
        UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Warning,
        Image.DecompressionBombError,
    ) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(
            f"{path}: not a readable PNG/JPEG image ({type(e).__name__}: {e}); replace or remove "
            "the file"
        ) from None


def from_images(
    folder: str | os.PathLike,
    *,
    grayscale: bool | None = None,
    size: int | tuple[int, int] | None = None,
    binarize: bool = False,
    name: str | None = None,
) -> Dataset:
    """A dataset from a folder of PNG/JPEG images.

    The folder holds either the images themselves, or one sub-folder of images per class (then
    the labels are the classes' indices in the sorted sub-folder names, as in torchvision's
    ``ImageFolder``). Files are read in sorted order; names starting with a dot and files
    without a ``.png``/``.jpg``/``.jpeg`` suffix are skipped. Alpha channels are dropped.

    Arguments:
        folder: the directory.
        grayscale: True for one channel (Pillow's ``"L"`` luma, ITU-R 601-2), False for RGB,
            None to choose by the files: one channel if every image is single-channel
            (``"1"``, ``"L"``, ``"LA"``), else RGB.
        size: resize every image to ``(height, width)`` (an int for a square) with bicubic
            resampling; None requires all images to share one size.
        binarize: threshold at 128 to a binary dataset.
        name: the dataset's name (default: the folder path).

    Returns:
        A :class:`~ppgen.datasets.Dataset` with ``data`` of shape ``(N, C, H, W)``, integer
        levels ``0..255`` (``kind="discrete"``, ``levels=256``) or 0/1 (``kind="binary"``), and
        ``labels`` when the folder has class sub-folders.

    Raises:
        DataError: a missing or empty folder, a mix of images and class folders, a file that is
            not a decodable PNG/JPEG or not 8-bit, or (without ``size``) images of different
            sizes; the message names the file and the fix.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory; pass a folder of PNG/JPEG images")
    top = _image_files(root)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = [c for c in classes if _image_files(c)]
    if top and classes:
        raise DataError(
            f"{root}: holds images and class sub-folders ({classes[0].name}/...) at once; put "
            "every image in a class folder, or remove the sub-folders"
        )
    files = top or [f for c in classes for f in _image_files(c)]
    if not files:
        raise DataError(
            f"{root}: no PNG/JPEG images found (*.png, *.jpg, *.jpeg, directly or one folder "
            "per class)"
        )
    labels = None
    if classes:
        labels = torch.tensor(
            [i for i, c in enumerate(classes) for _ in _image_files(c)], dtype=torch.long
        )
    if isinstance(size, int):
        size = (size, size)
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise DataError(f"size must be a positive int or (height, width), got {size!r}")

    images = [_read_image(f) for f in files]
    if grayscale is None:
        grayscale = all(im.mode in _SINGLE_CHANNEL_MODES for im in images)
    mode = "L" if grayscale else "RGB"
    arrays = []
    first_shape = None
    for path, im in zip(files, images, strict=True):
        if im.mode in ("P", "PA"):
            im = im.convert("RGBA")  # a palette's transparency first becomes alpha (dropped)
        im = im.convert(mode)
        if size is not None:
            from PIL import Image

            im = im.resize((size[1], size[0]), Image.Resampling.BICUBIC)
        a = np.asarray(im, dtype=np.uint8)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (C, H, W)
        if first_shape is None:
            first_shape = (path, a.shape)
        elif a.shape != first_shape[1]:
            h0, w0 = first_shape[1][1:]
            raise DataError(
                f"{path}: is {a.shape[2]}x{a.shape[1]} (width x height) but {first_shape[0]} is "
                f"{w0}x{h0}; pass size=(height, width) to resize every image"
            )
        arrays.append(a)
    data = torch.from_numpy(np.stack(arrays)).to(torch.float32)
    return _dataset(name or str(root), data, labels, binarize)


#: how 8-bit images become binary: ``threshold`` (pixels >= 128 are 1), ``fixed`` (one
#: Bernoulli draw per pixel with probability intensity/255, seeded: the same binarization every
#: load, as the binarized MNIST of Salakhutdinov & Murray 2008) or ``dynamic`` (redrawn for every
#: training batch, as IWAE and later papers train; ``data`` holds one fixed draw for scoring)
BINARIZATIONS = ("threshold", "fixed", "dynamic")
_BINARIZE_SEED = 20080705  # the fixed draw's seed: one binarization for every user and load


def _dataset(
    name: str, data: torch.Tensor, labels: torch.Tensor | None, binarize: bool | str
) -> Dataset:
    if binarize is True or binarize == "threshold":
        return Dataset(name, (data >= 128).to(torch.float32), "binary", 2, labels=labels)
    if binarize in ("fixed", "dynamic"):
        probs = data / 255.0
        g = torch.Generator().manual_seed(_BINARIZE_SEED)
        fixed = torch.bernoulli(probs, generator=g)
        return Dataset(name, fixed, "binary", 2, labels=labels,
                       binarize_probs=probs if binarize == "dynamic" else None)
    return Dataset(name, data, "discrete", 256, labels=labels)


# deflate (gzip's compression) inflates at most 1032-fold (a 258-byte match in 2 bits)
_MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 20


def _read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzip-compressed) into an unsigned-byte array.

    The header is read first and fixes how many bytes may follow: a gzip stream is inflated
    only up to that size plus one byte, so a compressed file that inflates beyond its header
    (a decompression bomb) is refused after reading no more than the header promises, and a
    header that promises more than the compressed file could hold is refused before inflating.
    """
    if not path.is_file():
        raise DataError(f"{path}: no such file; pass the path of an IDX file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        stream = gzip.GzipFile(fileobj=f, mode="rb") if compressed else f
        try:
            return _parse_idx(path, stream, size, compressed)
        except (OSError, EOFError, zlib.error) as e:
            if not compressed:
                raise
            raise DataError(
                f"{path}: a damaged gzip file ({e}); download or decompress it again"
            ) from None
        finally:
            stream.close()


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    return data if data is not None else b""


def _parse_idx(path: Path, stream: BinaryIO, size: int, compressed: bool) -> np.ndarray:
    magic = _read_exactly(stream, 4)
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_TYPES or (
        magic[3] == 0
    ):
        shown = magic.hex() or "(empty)"
        raise DataError(
            f"{path}: not an IDX file: magic number {shown}, expected 0000 then a type code "
            "(08 for unsigned bytes) and the number of dims (0x00000803 for MNIST images, "
            "0x00000801 for labels)"
        )
    if magic[2] != 0x08:
        raise DataError(
            f"{path}: holds {_IDX_TYPES[magic[2]]} values; ppgen reads unsigned-byte IDX files "
            "(type 0x08), as MNIST's are"
        )
    ndim = magic[3]
    header = 4 + 4 * ndim
    raw_dims = _read_exactly(stream, 4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{path}: truncated header ({4 + len(raw_dims)} bytes for {ndim} dims)")
    dims = tuple(int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
    expected = math.prod(dims)
    if not compressed and size - header != expected:
        raise DataError(
            f"{path}: the header promises dims {dims} = {expected} bytes of data but the file "
            f"holds {size - header}; the file is truncated or damaged"
        )
    if compressed and header + expected > _MAX_DEFLATE_RATIO * size + 1024:
        raise DataError(
            f"{path}: the header promises dims {dims} = {expected} bytes of data, more than a "
            f"gzip file of {size} bytes can hold; the file is truncated or damaged"
        )
    try:
        out = np.empty(expected, dtype=np.uint8)
    except MemoryError:
        raise DataError(
            f"{path}: its dims {dims} need {expected / 2**30:.1f} GiB of memory, more than is "
            "free; use a smaller file"
        ) from None
    view, got = memoryview(out), 0
    while got < expected:  # bounded reads: never more than the header promises
        chunk = _read_exactly(stream, min(_CHUNK, expected - got))
        if not chunk:
            break
        view[got : got + len(chunk)] = chunk
        got += len(chunk)
    if got < expected:
        raise DataError(
            f"{path}: the header promises dims {dims} = {expected} bytes of data but the file "
            f"holds {got}; the file is truncated or damaged"
        )
    if compressed and _read_exactly(stream, 1):
        raise DataError(
            f"{path}: inflates beyond the {header + expected} bytes its header declares (dims "
            f"{dims}); the file is truncated or damaged, or a decompression bomb: refused "
            "without inflating the rest"
        )
    return out.reshape(dims)


def from_idx(
    path: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    *,
    binarize: bool = False,
    name: str | None = None,
) -> Dataset:
    """A dataset from an MNIST-format IDX image file (optionally gzip-compressed).

    The IDX format: two zero bytes, a type code (``0x08``: unsigned bytes), the number of dims,
    each dim as a big-endian 32-bit integer, then the values in C order. Image files have three
    dims ``(N, H, W)``; label files one, ``(N,)``. Gzip is detected from the bytes, not the name.

    Arguments:
        path: the images, e.g. ``train-images-idx3-ubyte.gz``.
        labels: the matching labels file (``train-labels-idx1-ubyte.gz``), or None.
        binarize: threshold at 128 to a binary dataset.
        name: the dataset's name (default: the file path).

    Returns:
        A :class:`~ppgen.datasets.Dataset` with ``data`` of shape ``(N, 1, H, W)``, levels
        ``0..255`` (``kind="discrete"``, 256 levels) or 0/1, and the labels when given.

    Raises:
        DataError: a missing file, a damaged gzip stream, a wrong magic number, a type other
            than unsigned bytes, the wrong number of dims, a length that disagrees with the
            header, or a label count that differs from the image count.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "images-idx3-ubyte"
        >>> pixels = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
        >>> header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in pixels.shape)
        >>> _ = f.write_bytes(header + pixels.tobytes())
        >>> from_idx(f).data.shape
        torch.Size([2, 1, 3, 4])
    """
    path = Path(path)
    images = _read_idx(path)
    if images.ndim != 3:
        hint = "; it looks like a labels file: pass it as labels=" if images.ndim == 1 else ""
        raise DataError(
            f"{path}: holds {images.ndim}-dim data {images.shape}; an IDX image file has three "
            f"dims (N, height, width){hint}"
        )
    if images.shape[0] == 0 or min(images.shape[1:]) == 0:
        raise DataError(f"{path}: holds no images (dims {images.shape})")
    y = None
    if labels is not None:
        labels_path = Path(labels)
        raw_labels = _read_idx(labels_path)
        if raw_labels.ndim != 1:
            raise DataError(
                f"{labels_path}: holds {raw_labels.ndim}-dim data; a labels file has one dim (N,)"
            )
        if raw_labels.shape[0] != images.shape[0]:
            raise DataError(
                f"{labels_path}: {raw_labels.shape[0]} labels for the {images.shape[0]} images "
                f"of {path}; pass the matching labels file"
            )
        y = torch.from_numpy(raw_labels.astype(np.int64))
    try:
        data = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)  # (N, 1, H, W)
    except MemoryError:
        raise DataError(
            f"{path}: its {images.size} pixels need {4 * images.size / 2**30:.1f} GiB of memory "
            "as float32, more than is free; use a smaller file"
        ) from None
    return _dataset(name or str(path), data, y, binarize)


# ---- ppgen.datasets.load(path) --------------------------------------------------------------


def is_idx_path(path: str | os.PathLike) -> bool:
    """True when the file name (before any ``#options``) reads as an IDX file: it ends in
    ``ubyte`` or ``.idx``/``.idx3``..., optionally followed by ``.gz``
    (``train-images-idx3-ubyte.gz``)."""
    name = Path(str(path).split("#", 1)[0]).name
    return bool(_IDX_NAME.search(name))


def load_image_source(
    spec: str | os.PathLike,
    split: str = "all",
    *,
    kind: str | None = None,
    levels: int | None = None,
) -> Dataset:
    """Load an image folder or an IDX file for :func:`ppgen.datasets.load`, by split.

    ``spec`` is the folder or file, optionally followed by ``#`` options: ``kind=binary``
    (threshold at 128; also ``levels=2``), ``binarize=threshold|fixed|dynamic`` (binary data:
    see :data:`BINARIZATIONS`), and for folders ``size=N`` and ``grayscale=true`` /
    ``false``, for IDX files ``labels=PATH`` (the labels file). The splits are those of
    :mod:`ppgen.datasets.arrays` (one fixed permutation, 80/10/10), taken after the images are
    read in sorted order.

    Arguments:
        spec: the folder or IDX file, with its options.
        split: ``"all"``, ``"train"``, ``"val"`` or ``"test"``.
        kind: ``"discrete"`` (256 levels, the default) or ``"binary"``.
        levels: 256 (the default) or 2 (binary).

    Returns:
        The :class:`~ppgen.datasets.Dataset`, named by the path.

    Raises:
        DataError: everything :func:`from_images` and :func:`from_idx` raise, an option the
            source does not take, or a kind/levels other than 8-bit or binary.
    """
    path = Path(str(spec).split("#", 1)[0])
    folder = path.is_dir()
    allowed = ("kind", "levels", "size", "grayscale") if folder else ("kind", "levels", "labels")
    file, options = parse_file_spec(spec, (*allowed, "binarize"))
    kind = kind if kind is not None else options.get("kind")
    levels = levels if levels is not None else options.get("levels")
    what = str(file)
    if (kind, levels) in ((None, None), ("discrete", None), (None, 256), ("discrete", 256)):
        binarize = False
    elif (kind, levels) in (("binary", None), ("binary", 2), (None, 2)):
        binarize = True
    else:
        raise DataError(
            f"{what}: image data has 256 levels (kind='discrete') or is thresholded to binary "
            f"(kind='binary'); got kind={kind!r}, levels={levels!r}"
        )
    how = options.get("binarize")
    if how is not None:
        if how not in BINARIZATIONS or (kind, levels) not in ((None, None), ("binary", None),
                                                             ("binary", 2), (None, 2)):
            raise DataError(
                f"{what}: binarize takes one of {', '.join(BINARIZATIONS)} (and makes the data "
                f"binary), got binarize={how!r} with kind={kind!r}, levels={levels!r}"
            )
        binarize = how
    if folder:
        grayscale = options.get("grayscale")
        if grayscale is not None:
            if grayscale.lower() not in ("true", "false"):
                raise DataError(f"{what}: grayscale must be true or false, got {grayscale!r}")
            grayscale = grayscale.lower() == "true"
        ds = from_images(file, grayscale=grayscale, size=options.get("size"))
    else:
        ds = from_idx(file, labels=options.get("labels"))
    ds = _dataset(ds.name, ds.data, ds.labels, binarize)
    idx = torch.from_numpy(split_indices(len(ds), split, what=what))
    return dataclasses.replace(ds.select(idx), split=split)


def load_cifar_source(
    spec: str | os.PathLike,
    split: str = "all",
    *,
    kind: str | None = None,
    levels: int | None = None,
) -> Dataset:
    """Load a CIFAR-10 batch file or folder (:func:`ppgen.datasets.cifar.from_cifar`) for
    :func:`ppgen.datasets.load`, by split (one fixed permutation, 80/10/10, as other user data;
    ``split="all"`` is the whole file). Options after ``#``: ``kind=discrete``, ``levels=256``
    (the only ones: CIFAR is 8-bit colour)."""
    from ppgen.datasets.cifar import from_cifar

    file, options = parse_file_spec(spec, ("kind", "levels"))
    kind = kind if kind is not None else options.get("kind")
    levels = levels if levels is not None else options.get("levels")
    if kind not in (None, "discrete") or levels not in (None, 256):
        raise DataError(
            f"{file}: CIFAR-10 is 8-bit colour (kind='discrete', levels=256); got kind={kind!r}, "
            f"levels={levels!r}"
        )
    ds = from_cifar(file)
    idx = torch.from_numpy(split_indices(len(ds), split, what=str(file)))
    return dataclasses.replace(ds.select(idx), split=split)
