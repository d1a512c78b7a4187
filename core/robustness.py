"""Robustness: accuracy on MNIST test digits drawn the ways visitors draw, through the app's own path.

    report = robustness(load_predictor("exported/mnist-accurate.onnx"), data.test_images, data.test_labels)
    report["accuracy"]["rotation"]      # fraction right, 1,000 digits by default

Every digit is rendered onto a 280x280 RGBA canvas like a drawing (core.preprocess.digit_to_canvas,
as the Draw page's canvas returns it) and read by core.inference.predict_canvas, i.e. the same
preprocessing (crop, scale to 20x20, centre of mass) and the same model call as the Draw page. So a
row measures what a visitor would see, including what the preprocessing already undoes (placement)
and what it cannot (rotation, stroke width). A canvas the preprocessing calls blank counts as wrong.

The distortions are applied where they happen when someone draws: the shape of the digit (elastic,
rotation, blur and low resolution) on the 28x28 digit before it is drawn; the pen (tremor, stroke
width) and the placement on the canvas. Each row draws its random numbers from its own generator
(seed, row), so a row does not change when another is added or removed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CANVAS = 280

# name -> what it does, in words for tables
DISTORTIONS: dict[str, str] = {
    "clean": "the test digit drawn as is",
    "elastic": "elastic distortion (Simard et al.: alpha 34, sigma 4 px at 28x28)",
    "rotation": "rotated by a random angle in [-20, 20] degrees",
    "tremor": "shaky pen: rows and columns of the canvas shifted by smooth noise (sd 5 px of 280)",
    "hairline": "strokes thinned to a hairline (about 4 px of 280)",
    "thick": "strokes thickened to a fifth of the digit's height",
    "blur-lowres": "blurred: shrunk to 10-14 px and scaled back up",
    "small": "drawn small: 25-40% of the canvas, centred",
    "off-centre": "drawn at 40-60% size near an edge or corner of the canvas",
}


@dataclass
class RobustnessConfig:
    digits: int = 1000  # test digits per row (a fixed random subset)
    seed: int = 0
    distortions: tuple[str, ...] = tuple(DISTORTIONS)

    def validate(self) -> "RobustnessConfig":
        if not 1 <= int(self.digits) <= 10_000:
            raise ValueError(f"digits must be in [1, 10000], got {self.digits}")
        unknown = [d for d in self.distortions if d not in DISTORTIONS]
        if unknown:
            raise ValueError(f"unknown distortion(s) {', '.join(unknown)}; choose from {', '.join(DISTORTIONS)}")
        return self


# ------------------------------------------------------------------ the distortions

def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def elastic(digit: np.ndarray, rng: np.random.Generator, alpha: float = 34.0, sigma: float = 4.0) -> np.ndarray:
    """Simard, Steinkraus & Platt (2003): a random displacement field, smoothed, scaled by alpha."""
    from scipy.ndimage import gaussian_filter, map_coordinates

    h, w = digit.shape
    dx = gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode="constant") * alpha
    dy = gaussian_filter(rng.uniform(-1, 1, (h, w)), sigma, mode="constant") * alpha
    y, x = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return _u8(map_coordinates(digit.astype(np.float32), [y + dy, x + dx], order=1, mode="constant"))


def rotate(digit: np.ndarray, rng: np.random.Generator, max_degrees: float = 20.0) -> np.ndarray:
    from scipy.ndimage import rotate as nd_rotate

    angle = rng.uniform(-max_degrees, max_degrees)
    return _u8(nd_rotate(digit.astype(np.float32), angle, reshape=False, order=1, mode="constant"))


def blur_lowres(digit: np.ndarray, rng: np.random.Generator, sizes: tuple[int, int] = (10, 14)) -> np.ndarray:
    from PIL import Image

    s = int(rng.integers(sizes[0], sizes[1] + 1))
    small = Image.fromarray(digit).resize((s, s), Image.BILINEAR, reducing_gap=None)
    return np.asarray(small.resize(digit.shape[::-1], Image.BILINEAR))


def _ink(canvas: np.ndarray) -> np.ndarray:
    return canvas[..., 0]  # digit_to_canvas draws white strokes on opaque black: R = G = B = ink


def _canvas(ink: np.ndarray) -> np.ndarray:
    rgba = np.empty(ink.shape + (4,), np.uint8)
    rgba[..., :3] = ink[..., None]
    rgba[..., 3] = 255
    return rgba


def tremor(canvas: np.ndarray, rng: np.random.Generator, sd: float = 5.0, smooth: float = 3.0) -> np.ndarray:
    """A shaky pen: each row shifted sideways and each column up or down by smooth random noise."""
    from scipy.ndimage import gaussian_filter1d, map_coordinates

    ink = _ink(canvas).astype(np.float32)
    h, w = ink.shape

    def noise(n):
        z = gaussian_filter1d(rng.normal(size=n), smooth, mode="wrap")
        return z * (sd / max(float(z.std()), 1e-6))

    y, x = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    x = x + noise(h)[:, None]  # row r moves sideways
    y = y + noise(w)[None, :]  # column c moves up or down
    return _canvas(_u8(map_coordinates(ink, [y, x], order=1, mode="constant")))


def _ridge(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The centre line of the strokes (pixels whose distance to the background is a local maximum,
    within 0.75 px: a stroke's neighbours across it are a whole pixel lower, along it about equal)."""
    from scipy.ndimage import distance_transform_edt, maximum_filter

    dt = distance_transform_edt(mask)
    return mask & (dt >= maximum_filter(dt, size=3) - 0.75), dt


def stroke_width(canvas: np.ndarray, width: float, factor: int = 2) -> np.ndarray:
    """Redraw the strokes at `width` canvas pixels: their centre line, widened (erosion to the centre
    line, then dilation by a disk). Done at 1/factor of the canvas's resolution (the distance
    transforms are most of the suite's time) and scaled back up smoothly, which also gives the
    strokes the soft edges a real canvas draws."""
    from PIL import Image
    from scipy.ndimage import distance_transform_edt

    ink = _ink(canvas)
    h, w = ink.shape
    small = np.asarray(Image.fromarray(ink).resize((w // factor, h // factor), Image.BILINEAR))
    mask = small >= 128
    if not mask.any():
        return canvas
    ridge, _ = _ridge(mask)
    drawn = np.where(distance_transform_edt(~ridge) <= width / (2 * factor), 255, 0).astype(np.uint8)
    return _canvas(np.asarray(Image.fromarray(drawn).resize((w, h), Image.BILINEAR)))


def hairline(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return stroke_width(canvas, 4.0)


def thick(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rows = np.flatnonzero((_ink(canvas) >= 128).any(1))
    height = rows[-1] - rows[0] + 1 if len(rows) else CANVAS
    return stroke_width(canvas, height / 5)


def distort(name: str, digit: np.ndarray, rng: np.random.Generator, size: int = CANVAS) -> np.ndarray:
    """One 28x28 uint8 test digit -> the RGBA canvas [size,size,4] a visitor would hand the app."""
    from .preprocess import digit_to_canvas

    digit = np.asarray(digit, dtype=np.uint8)
    if name == "clean":
        return digit_to_canvas(digit, size)
    if name in ("elastic", "rotation", "blur-lowres"):
        fn = {"elastic": elastic, "rotation": rotate, "blur-lowres": blur_lowres}[name]
        return digit_to_canvas(fn(digit, rng), size)
    if name in ("tremor", "hairline", "thick"):
        fn = {"tremor": tremor, "hairline": hairline, "thick": thick}[name]
        return fn(digit_to_canvas(digit, size), rng)
    if name == "small":
        return digit_to_canvas(digit, size, scale=rng.uniform(0.25, 0.40))
    if name == "off-centre":
        scale = rng.uniform(0.40, 0.60)
        room = (size - int(round(size * scale))) // 2  # how far the digit can move and stay on the canvas
        offset = tuple(int(rng.choice([-1, 1]) * rng.uniform(0.6, 1.0) * room) for _ in range(2))
        return digit_to_canvas(digit, size, scale=scale, offset=offset)
    raise ValueError(f"unknown distortion {name!r}; choose from {', '.join(DISTORTIONS)}")


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, list(DISTORTIONS).index(name)])


def pick_digits(n_test: int, digits: int, seed: int) -> np.ndarray:
    """The fixed random subset of test indices every row uses."""
    return np.sort(np.random.default_rng(seed).choice(n_test, size=min(digits, n_test), replace=False))


def canvases(name: str, images: np.ndarray, seed: int = 0):
    """Yield the distorted canvas of each uint8 [N,28,28] image, in order (one row's inputs)."""
    rng = _rng(seed, name)
    for digit in images:
        yield distort(name, digit, rng)


# ------------------------------------------------------------------ the suite

def robustness(predictor, images, labels, cfg: RobustnessConfig | None = None, progress=None) -> dict:
    """Accuracy per distortion through the canvas path.

    predictor: anything with .predict(images) -> probs (an OnnxPredictor, a TorchPredictor).
    images, labels: the test split (uint8 [N,28,28] and [N], numpy or torch).
    progress: called as progress(done_rows, total_rows, name) after each row (for the app).
    Returns {"digits", "seed", "rows": [{distortion, description, accuracy, blank, n, seconds}],
    "accuracy": {name: fraction}}.
    """
    from .inference import predict_canvas

    cfg = (cfg or RobustnessConfig()).validate()
    images = np.asarray(images.cpu() if hasattr(images, "cpu") else images)
    labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).astype(np.int64)
    idx = pick_digits(len(labels), cfg.digits, cfg.seed)
    x, y = images[idx], labels[idx]
    rows = []
    for k, name in enumerate(cfg.distortions):
        t0 = time.perf_counter()
        right = blank = 0
        for canvas, label in zip(canvases(name, x, cfg.seed), y):
            out = predict_canvas(predictor, canvas)
            blank += out["blank"]
            right += int(not out["blank"] and out["digit"] == int(label))
        rows.append({"distortion": name, "description": DISTORTIONS[name], "accuracy": right / len(y),
                     "blank": blank, "n": int(len(y)), "seconds": time.perf_counter() - t0})
        if progress is not None:
            progress(k + 1, len(cfg.distortions), name)
    return {"digits": int(len(y)), "seed": cfg.seed, "rows": rows,
            "accuracy": {r["distortion"]: r["accuracy"] for r in rows}}


CARD_METHOD = "python -m core evaluate MODEL --robustness (core.robustness: canvas path)"


def write_to_card(onnx_path, report: dict) -> Path:
    """Record a robustness() report in the model card beside an exported .onnx (its `robustness`
    field: digits, seed, accuracy per distortion, date), atomically; -> the card's path. The card
    must exist: an export writes it, and re-exporting writes it anew without this field."""
    import json

    from .files import atomic_write_text
    from .inference import read_card

    card = read_card(onnx_path)
    if card is None:
        raise ValueError(f"{Path(onnx_path).name} has no model card (.json beside it) to record robustness in")
    card["robustness"] = {"digits": report["digits"], "seed": report["seed"], "method": CARD_METHOD,
                          "accuracy": dict(report["accuracy"]), "measured_at": time.strftime("%Y-%m-%d")}
    path = Path(onnx_path).with_suffix(".json")
    atomic_write_text(path, json.dumps(card, indent=2))
    return path
