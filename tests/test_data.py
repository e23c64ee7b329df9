"""Tests for dni_agents.data: offline loaders, strict file parsing, and the batch stream."""

from __future__ import annotations

import gzip
import itertools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dni_agents.data import (
    DATASETS,
    FASHION_MNIST_DIR,
    IDX_NAMES,
    DataError,
    DataFormatError,
    ImageDataset,
    UnknownDatasetError,
    batches,
    load_dataset,
    read_idx,
)

N_SPLIT = {"train": 12, "test": 7}


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write(path: Path, data: bytes, gz: bool) -> None:
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def _fake_idx_dir(root: Path, gz: bool, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write small random 28x28 IDX files (plain or gzip) and return what was written."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, (img, lbl) in IDX_NAMES.items():
        x = rng.integers(0, 256, size=(N_SPLIT[split], 28, 28), dtype=np.uint8)
        y = np.arange(N_SPLIT[split], dtype=np.uint8) % 10
        _write(root / img, _idx_bytes(x), gz)
        _write(root / lbl, _idx_bytes(y), gz)
        out[split] = (x, y)
    return out


def _check_standardized(ds: ImageDataset) -> None:
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.y_test.dtype == torch.int64 and ds.x_test.dtype == torch.float32
    c = ds.input_shape[0]
    per_channel = ds.x_train.transpose(0, 1).reshape(c, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(c), atol=1e-4)
    assert torch.allclose(per_channel.std(1), torch.ones(c), atol=1e-3)


def test_digits_shapes_split_and_stats() -> None:
    ds = load_dataset("digits")
    assert ds.name == "digits" and ds.num_classes == 10
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.y_train.shape == (1437,) and ds.y_test.shape == (360,)
    assert ds.input_shape == (1, 8, 8) and ds.input_dim == 64
    assert set(ds.y_train.tolist()) == set(range(10)) == set(ds.y_test.tolist())
    # stratified: every class has ~20% of its samples in the test split
    counts = torch.bincount(ds.y_test, minlength=10)
    assert int(counts.min()) >= 34 and int(counts.max()) <= 38
    _check_standardized(ds)
    # no sample lands in both splits
    train_rows = {tuple(r) for r in ds.x_train.flatten(1).tolist()}
    dup_rows = sum(tuple(r) in train_rows for r in ds.x_test.flatten(1).tolist())
    assert dup_rows <= 5  # the raw data contain a handful of genuine duplicate images


def test_digits_deterministic_and_independent_of_global_rng() -> None:
    np.random.seed(123)
    torch.manual_seed(123)
    a = load_dataset("digits")
    np.random.seed(7)
    torch.manual_seed(7)
    b = load_dataset("digits")
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_mnist_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    written = _fake_idx_dir(tmp_path, gz=gz)
    ds = load_dataset("mnist", root=tmp_path)
    assert ds.name == "mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (7, 1, 28, 28)
    assert ds.input_shape == (1, 28, 28) and ds.input_dim == 784
    assert ds.y_train.tolist() == written["train"][1].tolist()
    assert ds.y_test.tolist() == written["test"][1].tolist()
    # standardization is an affine map of the raw pixels, fitted on train only
    x_raw = torch.from_numpy(written["train"][0].astype(np.float32))
    mean, std = x_raw.mean(), x_raw.std()
    assert torch.allclose(ds.x_train[:, 0], (x_raw - mean) / std, atol=1e-5)
    x_test_raw = torch.from_numpy(written["test"][0].astype(np.float32))
    assert torch.allclose(ds.x_test[:, 0], (x_test_raw - mean) / std, atol=1e-5)
    _check_standardized(ds)


def test_read_idx_plain_and_gz_agree(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write(tmp_path / "a", _idx_bytes(arr), gz=False)
    _write(tmp_path / "a", _idx_bytes(arr), gz=True)
    assert np.array_equal(read_idx(tmp_path / "a", ndim=3), arr)
    assert np.array_equal(read_idx(tmp_path / "a.gz", ndim=3), arr)


def test_fashion_mnist_root_override(tmp_path: Path) -> None:
    _fake_idx_dir(tmp_path / "fm", gz=True, seed=1)
    ds = load_dataset("fashion_mnist", root=tmp_path / "fm")
    assert ds.name == "fashion_mnist"
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (7, 1, 28, 28)
    assert load_dataset("fashion-mnist", root=str(tmp_path / "fm")).name == "fashion_mnist"


def _fake_cifar_dir(folder: Path, per_file: int = 3) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i, name in enumerate([*(f"data_batch_{k}.bin" for k in range(1, 6)), "test_batch.bin"]):
        labels = (np.arange(per_file) + i) % 10
        pixels = rng.integers(0, 256, size=(per_file, 3072))
        (folder / name).write_bytes(np.column_stack([labels, pixels]).astype(np.uint8).tobytes())


@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar10_binary(tmp_path: Path, point_at: str) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    _fake_cifar_dir(folder)
    ds = load_dataset("cifar10", root=tmp_path if point_at == "parent" else folder)
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.input_shape == (3, 32, 32) and ds.input_dim == 3072
    assert ds.y_train.tolist()[:6] == [0, 1, 2, 1, 2, 3] and ds.y_test.tolist() == [5, 6, 7]
    _check_standardized(ds)
    # channel planes are R, G, B in record order: channel 0 of sample 0 is bytes 1..1024 of record 0
    raw = np.frombuffer((folder / "data_batch_1.bin").read_bytes(), np.uint8).reshape(-1, 3073)
    red = torch.from_numpy(raw[0, 1:1025].astype(np.float32)).reshape(32, 32)
    assert torch.corrcoef(torch.stack([red.flatten(), ds.x_train[0, 0].flatten()]))[0, 1] > 0.9999


def test_cifar10_truncated_file(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    _fake_cifar_dir(folder)
    (folder / "test_batch.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(DataFormatError, match="3073-byte"):
        load_dataset("cifar10", root=tmp_path)


def _assert_user_error(err: BaseException, *fragments: str) -> None:
    assert getattr(err, "user_error", False) is True
    msg = str(err)
    assert "\n" not in msg, "the CLI prints user errors on one line"
    for frag in fragments:
        assert frag in msg, (frag, msg)


def test_missing_directories(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as e:
        load_dataset("fashion_mnist", root=missing)
    assert isinstance(e.value, FileNotFoundError)
    _assert_user_error(e.value, str(missing), "apt-get install dataset-fashion-mnist")
    with pytest.raises(DataError) as e:
        load_dataset("mnist", root=missing)
    _assert_user_error(e.value, str(missing), "train-images-idx3-ubyte", "MNIST distribution")
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", root=missing)
    _assert_user_error(e.value, str(missing), "cifar-10-batches-bin", "binary version")


def test_missing_files_are_all_named(tmp_path: Path) -> None:
    _fake_idx_dir(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    (tmp_path / "train-images-idx3-ubyte").unlink()
    with pytest.raises(DataError) as e:
        load_dataset("mnist", root=tmp_path)
    _assert_user_error(e.value, "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", str(tmp_path))
    assert "train-labels" not in str(e.value).split(";")[0]


def test_root_required(tmp_path: Path) -> None:
    for name in ("mnist", "cifar10"):
        with pytest.raises(DataError) as e:
            load_dataset(name)
        _assert_user_error(e.value, "ff.data_root=DIR", "root")


def test_unknown_name() -> None:
    with pytest.raises(UnknownDatasetError) as e:
        load_dataset("imagenet")
    assert isinstance(e.value, ValueError)
    _assert_user_error(e.value, "imagenet", *DATASETS)


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda b: b"\x00\x00\x08\x01" + b[4:], "1 dimensions, expected 3"),
        (lambda b: b"\x00\x00\x07" + b[3:], "magic"),  # unknown element type code
        (lambda b: b"\x12\x34" + b[2:], "magic"),
        (lambda b: b[:-5], "size mismatch"),
        (lambda b: b + b"\x00", "size mismatch"),
        (lambda b: b[:6], "truncated"),
        (lambda b: gzip.compress(b)[:-12], "gzip"),
    ],
    ids=["ndim", "dtype", "magic", "short", "long", "header", "gz"],
)
def test_corrupt_idx(tmp_path: Path, corrupt, match: str) -> None:
    _fake_idx_dir(tmp_path, gz=False)
    target = tmp_path / "train-images-idx3-ubyte"
    target.write_bytes(corrupt(target.read_bytes()))
    with pytest.raises(DataFormatError, match=match) as e:
        load_dataset("mnist", root=tmp_path)
    _assert_user_error(e.value, str(target))


def test_idx_wrong_content(tmp_path: Path) -> None:
    _fake_idx_dir(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.full(7, 10, np.uint8)))
    with pytest.raises(DataFormatError, match="out of range"):
        load_dataset("mnist", root=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(6, np.uint8)))
    with pytest.raises(DataFormatError, match="7 images but 6 labels"):
        load_dataset("mnist", root=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((7, 8, 8), np.uint8)))
    with pytest.raises(DataFormatError, match="28x28"):
        load_dataset("mnist", root=tmp_path)


def _take(stream, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(itertools.islice(stream, k))


def test_batches_deterministic_and_epoch_coverage() -> None:
    x = torch.arange(20, dtype=torch.float32).reshape(20, 1) * 10
    y = torch.arange(20)
    a = _take(batches(x, y, 5, torch.Generator().manual_seed(3)), 12)
    b = _take(batches(x, y, 5, torch.Generator().manual_seed(3)), 12)
    c = _take(batches(x, y, 5, torch.Generator().manual_seed(4)), 12)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))
    assert any(not torch.equal(ya, yc) for (_, ya), (_, yc) in zip(a, c, strict=True))
    for xb, yb in a:
        assert xb.shape == (5, 1) and torch.equal(xb[:, 0], yb.float() * 10)  # pairs stay aligned
    epochs = [torch.cat([yb for _, yb in a[i : i + 4]]) for i in range(0, 12, 4)]
    for ep in epochs:  # three full epochs, each a permutation of all samples
        assert sorted(ep.tolist()) == list(range(20))
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled every epoch


def test_batches_drop_last_and_small_dataset() -> None:
    x, y = torch.randn(7, 2), torch.arange(7)
    got = _take(batches(x, y, 3, torch.Generator().manual_seed(0)), 6)
    assert all(len(yb) == 3 for _, yb in got)  # 7 // 3 = 2 full batches per epoch, remainder dropped
    for i in (0, 2, 4):
        ep = torch.cat([got[i][1], got[i + 1][1]])
        assert len(set(ep.tolist())) == 6
    tiny = _take(batches(x, y, 50, torch.Generator().manual_seed(0)), 3)
    assert all(sorted(yb.tolist()) == list(range(7)) for _, yb in tiny)  # N < batch_size: whole set


def test_batches_infinite_and_validates() -> None:
    stream = batches(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), 2, torch.Generator().manual_seed(0))
    assert len(_take(stream, 1000)) == 1000
    with pytest.raises(ValueError):
        batches(torch.zeros(4, 1), torch.zeros(3), 2, torch.Generator())
    with pytest.raises(ValueError):
        batches(torch.zeros(4, 1), torch.zeros(4), 0, torch.Generator())


@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"real Fashion-MNIST not installed in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist() -> None:
    ds = load_dataset("fashion_mnist")
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(ds.y_train), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(ds.y_test), torch.full((10,), 1000))
    _check_standardized(ds)


def test_batches_start_resumes_the_same_stream():
    x, y = torch.arange(23).float().unsqueeze(1), torch.arange(23)
    full = batches(x, y, 5, torch.Generator().manual_seed(3))
    reference = [next(full)[1] for _ in range(14)]
    for start in (0, 3, 4, 5, 9, 13):
        resumed = batches(x, y, 5, torch.Generator().manual_seed(3), start=start)
        for want in reference[start:]:
            assert torch.equal(next(resumed)[1], want)
