"""Labeled drawings: a visitor's in-memory set, zip download/upload, and an
optional on-disk store for presenters collecting a dataset.

Format (a folder and a zip use the same layout):

    <label>/<id>.png    label: the digit 0-9; id: 16 hex digits, a hash of label + pixels
                        PNG: 28x28 8-bit grayscale, white ink on black: the
                        preprocessed image the model sees (core.data.to_float input)

Ids are content hashes, so saving the same drawing twice keeps one file and a
zip round trip returns the same ids. Imports (`from_zip`, `load_folder`,
`python -m core samples import`) are more lenient: any PNG size (padded to a
square, resized to 28x28), black-on-white images (inverted when the border is
bright), RGBA (composited on black), an optional single top-level folder, and
instead of label folders a labels.csv (columns file,label) beside the PNGs.
Everything else is refused with a message naming the member: labels outside
0-9, undecodable or huge images, absolute or '..' paths, too many members or bytes.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import numpy as np

MAX_SAMPLES = 20_000  # per set or import: a session set stays a few MB of RAM
MAX_ZIP_BYTES = 64 * 2**20  # upload size
MAX_MEMBER_BYTES = 4 * 2**20  # one image file, uncompressed
MAX_TOTAL_BYTES = 256 * 2**20  # all members, uncompressed (zip bombs)
MAX_SIDE = 4096  # pixels per side before decoding (decompression bombs)
ID_RE = re.compile(r"^[0-9a-f]{16}$")


class SampleError(ValueError):
    """A sample, zip or folder is malformed; the message names the offending item."""


@dataclass(frozen=True)
class Sample:
    id: str
    label: int
    image: np.ndarray  # uint8 [28,28], white on black


# ------------------------------------------------------------------- helpers

def check_label(label) -> int:
    """0-9 as an int; anything else (10, -1, 3.5, "x", True) raises SampleError."""
    if isinstance(label, bool):
        raise SampleError(f"label must be a digit 0-9, got {label!r}")
    if isinstance(label, str):
        if not re.fullmatch(r"\s*[0-9]\s*", label):
            raise SampleError(f"label must be a digit 0-9, got {label!r}")
        return int(label)
    if isinstance(label, (int, np.integer)) and 0 <= int(label) <= 9:
        return int(label)
    if hasattr(label, "numel") and label.numel() == 1 and not label.is_floating_point():  # a torch scalar
        return check_label(int(label.item()))
    raise SampleError(f"label must be a digit 0-9, got {label!r}")


def as_image(image) -> np.ndarray:
    """uint8 [28,28] from uint8 [28,28]/[1,28,28] or float in [0,1] (numpy or torch)."""
    if hasattr(image, "detach"):  # a torch tensor (torch itself is not imported: Draw stays torch-free)
        image = image.detach().cpu().numpy()
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.shape != (28, 28):
        raise SampleError(f"a sample image must be 28x28, got shape {list(a.shape)}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise SampleError("float sample images must be finite and in [0, 1]")
        return np.rint(a * 255).astype(np.uint8)
    raise SampleError(f"sample images must be uint8 or float in [0,1], got {a.dtype}")


def sample_id(label: int, image: np.ndarray) -> str:
    return hashlib.sha256(bytes([label]) + image.tobytes()).hexdigest()[:16]


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def decode_png(data: bytes, name: str = "image") -> np.ndarray:
    """Any decodable PNG -> uint8 [28,28] white on black (see the module docstring)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise SampleError(f"{name}: not a PNG file ({im.format})")
            w, h = im.size
            if not (1 <= w <= MAX_SIDE and 1 <= h <= MAX_SIDE):
                raise SampleError(f"{name}: {w}x{h} pixels is outside 1..{MAX_SIDE} per side")
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                im = Image.alpha_composite(bg, rgba)
            g = im.convert("L")
    except SampleError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise SampleError(f"{name}: not a decodable image ({e})") from None
    a = np.asarray(g, dtype=np.uint8)
    if a.shape != (28, 28):
        # Pad to a square on the background colour, then area-resize: keeps the aspect ratio.
        h, w = a.shape
        side = max(h, w)
        bg = int(np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])))
        sq = np.full((side, side), bg, np.uint8)
        sq[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = a
        a = np.asarray(Image.fromarray(sq).resize((28, 28), Image.Resampling.BOX), dtype=np.uint8)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    if border.mean() > 127:  # black ink on white paper: flip to MNIST's polarity
        a = 255 - a
    return np.ascontiguousarray(a)


def _safe_parts(name: str) -> tuple[str, ...]:
    """Split a zip member name, refusing anything that could escape the target folder."""
    if "\x00" in name or "\\" in name:
        raise SampleError(f"unsafe member name {name!r} (backslash or NUL)")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise SampleError(f"unsafe member name {name!r} (absolute path)")
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
    if ".." in parts:
        raise SampleError(f"unsafe member name {name!r} ('..' path traversal)")
    return parts


# ----------------------------------------------------------------- the set

class SampleSet:
    """An ordered, de-duplicated set of labeled drawings held in memory (one per visitor)."""

    def __init__(self, samples: Iterable[Sample] = ()):
        self._items: dict[str, Sample] = {}
        for s in samples:
            self._put(s)

    def _put(self, s: Sample) -> None:
        if s.id not in self._items and len(self._items) >= MAX_SAMPLES:
            raise SampleError(f"a sample set holds at most {MAX_SAMPLES:,} drawings")
        self._items[s.id] = s

    def add(self, image, label) -> str:
        """Store one drawing; returns its id (the same id if this exact drawing is already here)."""
        label = check_label(label)
        img = as_image(image)
        s = Sample(sample_id(label, img), label, img)
        self._put(s)
        return s.id

    def remove(self, sample_id: str) -> None:
        if sample_id not in self._items:
            raise KeyError(f"no sample with id {sample_id!r}")
        del self._items[sample_id]

    def relabel(self, sample_id: str, label) -> str:
        s = self._items[sample_id]
        label = check_label(label)  # before removing: a bad label must not lose the sample
        self.remove(sample_id)
        return self.add(s.image, label)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Sample]:
        return iter(list(self._items.values()))

    def __contains__(self, sample_id) -> bool:
        return sample_id in self._items

    def __getitem__(self, sample_id: str) -> Sample:
        return self._items[sample_id]

    def ids(self) -> list[str]:
        return list(self._items)

    def counts(self) -> list[int]:
        """Drawings per digit, [10]."""
        c = [0] * 10
        for s in self._items.values():
            c[s.label] += 1
        return c

    def extend(self, other: "SampleSet") -> int:
        """Add every sample of other; returns how many were new."""
        before = len(self)
        for s in other:
            self._put(s)
        return len(self) - before

    def tensors(self):
        """(uint8 [N,28,28], int64 [N]) torch tensors: the format core.train.fit and the targets use."""
        import torch

        if not self._items:
            return torch.zeros((0, 28, 28), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
        items = list(self._items.values())
        x = torch.from_numpy(np.stack([s.image for s in items]))
        y = torch.tensor([s.label for s in items], dtype=torch.int64)
        return x, y

    def split(self, test_fraction: float = 0.3, seed: int = 0) -> tuple["SampleSet", "SampleSet"]:
        """Stratified, seeded split into disjoint (train, test) sets.

        Each digit with n >= 2 drawings puts round(n * test_fraction) of them, at least
        one and at most n - 1, in test; a digit drawn once goes to train.
        """
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        rng = np.random.default_rng(seed)
        train, test = SampleSet(), SampleSet()
        for d in range(10):
            group = sorted((s for s in self._items.values() if s.label == d), key=lambda s: s.id)
            order = rng.permutation(len(group))
            n_test = 0 if len(group) < 2 else min(len(group) - 1, max(1, round(len(group) * test_fraction)))
            for rank, i in enumerate(order):
                (test if rank < n_test else train)._put(group[i])
        return train, test

    # -- zip
    def to_zip(self) -> bytes:
        """The folder layout as zip bytes; identical sets give identical bytes."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for s in sorted(self._items.values(), key=lambda s: (s.label, s.id)):
                info = zipfile.ZipInfo(f"{s.label}/{s.id}.png", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, encode_png(s.image))
        return buf.getvalue()

    @classmethod
    def from_zip(cls, data: bytes) -> "SampleSet":
        """Validate and read an uploaded zip. Raises SampleError naming the first bad member."""
        if len(data) > MAX_ZIP_BYTES:
            raise SampleError(f"zip is {len(data) / 2**20:.1f} MB; the limit is {MAX_ZIP_BYTES // 2**20} MB")
        try:
            z = zipfile.ZipFile(io.BytesIO(data))
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise SampleError(f"not a valid zip file ({e})") from None
        with z:
            infos = [i for i in z.infolist() if not i.is_dir()]
            if len(infos) > MAX_SAMPLES + 10:
                raise SampleError(f"zip has {len(infos):,} members; the limit is {MAX_SAMPLES:,} drawings")
            total = 0
            for i in infos:
                _safe_parts(i.filename)
                if i.file_size > MAX_MEMBER_BYTES:
                    raise SampleError(f"{i.filename}: {i.file_size:,} bytes uncompressed; the limit per "
                                      f"file is {MAX_MEMBER_BYTES:,}")
                total += i.file_size
            if total > MAX_TOTAL_BYTES:
                raise SampleError(f"zip expands to {total:,} bytes; the limit is {MAX_TOTAL_BYTES:,}")

            def read(info):
                def f():
                    try:
                        with z.open(info) as fh:
                            b = fh.read(MAX_MEMBER_BYTES + 1)  # the header's size might lie
                    except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as e:
                        raise SampleError(f"{info.filename}: cannot be read from the zip ({e})") from None
                    if len(b) > MAX_MEMBER_BYTES:
                        raise SampleError(f"{info.filename}: larger than {MAX_MEMBER_BYTES:,} bytes")
                    return b
                return f

            return _read_entries([(i.filename, read(i)) for i in infos], "zip")


def _read_entries(entries: list, where: str) -> SampleSet:
    """entries: (posix name, () -> bytes). Label from a digit folder or from labels.csv."""
    parsed = []
    csv_labels: dict[tuple[str, ...], int] = {}
    for name, get in entries:
        parts = _safe_parts(name)
        if not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
            continue  # OS junk (.DS_Store, resource forks)
        if parts[-1].lower() == "labels.csv":
            csv_labels.update(_parse_labels_csv(get(), "/".join(parts), parts[:-1]))
        elif parts[-1].lower().endswith(".png"):
            parsed.append((parts, get))
    if not parsed:
        raise SampleError(f"{where}: no PNG drawings found (expected <label>/<id>.png or labels.csv + PNGs)")
    if len(parsed) > MAX_SAMPLES:
        raise SampleError(f"{where}: {len(parsed):,} drawings; the limit is {MAX_SAMPLES:,}")
    out = SampleSet()
    for parts, get in parsed:
        name = "/".join(parts)
        if parts in csv_labels:
            label = csv_labels[parts]
        elif len(parts) >= 2 and len(parts) <= 3:
            try:
                label = check_label(parts[-2])
            except SampleError:
                raise SampleError(f"{name}: folder {parts[-2]!r} is not a label 0-9 and no labels.csv "
                                  "names this file") from None
        else:
            raise SampleError(f"{name}: no label (put it in a folder named 0-9 or list it in labels.csv)")
        out.add(decode_png(get(), name), label)
    return out


def _parse_labels_csv(data: bytes, name: str, prefix: tuple[str, ...]) -> dict[tuple[str, ...], int]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SampleError(f"{name}: not UTF-8 text") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise SampleError(f"{name}: empty")
    header = [h.strip().lower() for h in rows[0]]
    fcol = next((header.index(h) for h in ("file", "filename", "path", "name") if h in header), None)
    lcol = header.index("label") if "label" in header else None
    if fcol is None or lcol is None:
        raise SampleError(f"{name}: needs a header with columns 'file' and 'label', got {rows[0]}")
    out = {}
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(fcol, lcol):
            raise SampleError(f"{name} line {n}: expected columns file,label")
        try:
            label = check_label(row[lcol])
        except SampleError as e:
            raise SampleError(f"{name} line {n}: {e}") from None
        out[prefix + _safe_parts(row[fcol].strip())] = label
    return out


# ---------------------------------------------------------------- on disk

def load_folder(path: str | os.PathLike) -> SampleSet:
    """Read a folder (the module's layout, or PNGs + labels.csv) or a .zip file."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".zip":
        return SampleSet.from_zip(path.read_bytes())
    if not path.is_dir():
        raise SampleError(f"{path}: no such folder or .zip file")
    entries = []
    for f in sorted(path.rglob("*")):
        if f.is_file() and not f.is_symlink():
            rel = f.relative_to(path).as_posix()
            if f.stat().st_size > MAX_MEMBER_BYTES:
                raise SampleError(f"{rel}: larger than {MAX_MEMBER_BYTES:,} bytes")
            entries.append((rel, f.read_bytes))
    return _read_entries(entries, str(path))


class SampleStore:
    """Drawings kept on disk under root (default data/samples) in the module's layout.

    Only an explicit presenter setting should create one; every write is atomic
    (temp file + rename), so a crash never leaves a half-written PNG.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        # data/samples under the project (core.data.DEFAULT_DATA_DIR, not imported: it needs torch)
        self.root = Path(root) if root is not None else Path(__file__).resolve().parent.parent / "data" / "samples"

    def path(self, sample_id: str, label: int) -> Path:
        if not ID_RE.match(sample_id):
            raise SampleError(f"bad sample id {sample_id!r}")
        return self.root / str(check_label(label)) / f"{sample_id}.png"

    def add(self, image, label) -> str:
        from .files import atomic_write

        label = check_label(label)
        img = as_image(image)
        sid = sample_id(label, img)
        dest = self.path(sid, label)
        if not dest.exists():
            data = encode_png(img)
            atomic_write(dest, lambda tmp: Path(tmp).write_bytes(data))
        return sid

    def add_set(self, samples: SampleSet) -> int:
        """Write every sample; returns how many were new on disk."""
        new = 0
        for s in samples:
            if not self.path(s.id, s.label).exists():
                self.add(s.image, s.label)
                new += 1
        return new

    def remove(self, sample_id: str) -> None:
        for d in range(10):
            p = self.path(sample_id, d)
            if p.exists():
                p.unlink()
                return
        raise KeyError(f"no sample with id {sample_id!r} in {self.root}")

    def load(self) -> SampleSet:
        if not self.root.exists():
            return SampleSet()
        return load_folder(self.root)

    def __len__(self) -> int:
        return sum(len(list((self.root / str(d)).glob("*.png"))) for d in range(10)) if self.root.exists() else 0


def import_samples(src: str | os.PathLike, out: str | os.PathLike | None = None) -> dict:
    """Read a folder or zip of labeled PNGs and write them to a store. -> summary dict."""
    samples = load_folder(src)
    store = SampleStore(out)
    new = store.add_set(samples)
    return {"read": len(samples), "new": new, "out": str(store.root), "total": len(store),
            "per_class": samples.counts()}
