"""Canvas and photo preprocessing: MNIST's recipe (fit 20x20, center of mass at 14,14)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from core.preprocess import digit_to_canvas, preprocess_canvas, preprocess_photo
from helpers import encode_image, photo_variants

STEP_NAMES = ["ink", "cropped", "scaled 20x20", "centered 28x28"]


def center_of_mass(img: np.ndarray) -> tuple[float, float]:
    m = img.sum()
    return float(img.sum(1) @ np.arange(img.shape[0]) / m), float(img.sum(0) @ np.arange(img.shape[1]) / m)


def extent(img: np.ndarray, thr: float = 0.05) -> tuple[int, int]:
    rows, cols = np.flatnonzero((img > thr).any(1)), np.flatnonzero((img > thr).any(0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def iou(a: np.ndarray, b: np.ndarray, thr: float = 0.3) -> float:
    a, b = a > thr, b > thr
    return float((a & b).sum() / max((a | b).sum(), 1))


def draw_seven(size=280, box=(20, 30, 80, 110), width=7, background="black") -> np.ndarray:
    """A '7' drawn with a round brush in a small box near the top-left corner, as a canvas returns it."""
    transparent = background == "transparent"
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0) if transparent else (0, 0, 0, 255))
    d = ImageDraw.Draw(img)
    l, t, r, b = box
    ink = (255, 255, 255, 255)
    d.line([(l, t), (r, t), (l + (r - l) // 3, b)], fill=ink, width=width, joint="curve")
    return np.array(img)


@pytest.mark.parametrize("background", ["black", "transparent"])
def test_small_off_center_drawing_is_centered_and_mnist_sized(background):
    rgba = draw_seven(background=background)
    out = preprocess_canvas(rgba)
    assert not out.blank, out.reason
    assert out.image.shape == (28, 28) and out.image.dtype == np.float32
    assert 0.0 <= out.image.min() and out.image.max() == pytest.approx(1.0)
    cy, cx = center_of_mass(out.image)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5, (cy, cx)
    h, w = extent(out.image)
    assert max(h, w) in (19, 20, 21) and h > w  # a 7 is taller than wide; long side fits MNIST's 20 px box
    assert list(out.steps) == STEP_NAMES
    assert out.steps["ink"].shape == (280, 280)
    assert out.steps["scaled 20x20"].shape == (20, 20)
    assert out.steps["centered 28x28"] is out.image
    # The bounding box found is the drawn box (plus the brush radius).
    t, l, b, r = out.bbox
    assert abs(t - 30) <= 4 and abs(l - 20) <= 4 and abs(b - 110) <= 5 and abs(r - 80) <= 5


def test_polarity_white_on_black_equals_black_on_white():
    rgba = draw_seven()
    inverted = rgba.copy()
    inverted[..., :3] = 255 - inverted[..., :3]  # black strokes on a white, opaque canvas
    dark_on_clear = draw_seven(background="transparent")
    dark_on_clear[..., :3] = 0  # black strokes on a transparent canvas
    a, b, c = (preprocess_canvas(x).image for x in (rgba, inverted, dark_on_clear))
    assert np.abs(a - b).max() < 1e-6
    assert np.abs(a - c).max() < 0.02


def test_real_digits_drawn_small_and_off_center_come_out_like_mnist(mnist):
    """Real test digits, rendered at 25-50% of a 280 px canvas anywhere on it, come back
    as (nearly) the original MNIST image: same center, same size, same strokes."""
    rng = np.random.default_rng(0)
    images = mnist.test_images[:200].numpy()
    ious = []
    for i, img in enumerate(images):
        scale = rng.uniform(0.25, 0.5)
        room = int(280 * (1 - scale) / 2)
        offset = tuple(int(v) for v in rng.integers(-room, room + 1, size=2))
        out = preprocess_canvas(digit_to_canvas(img, 280, scale=scale, offset=offset,
                                                background="transparent" if i % 2 else "black"))
        assert not out.blank, out.reason
        cy, cx = center_of_mass(out.image)
        assert abs(cy - 14) <= 0.51 and abs(cx - 14) <= 0.51
        assert max(extent(out.image)) in (19, 20, 21)
        ious.append(iou(out.image, img / 255.0))
    assert np.mean(ious) >= 0.75, np.mean(ious)  # measured 0.85; unrelated digits score ~0.2
    assert np.percentile(ious, 10) >= 0.55


@pytest.mark.parametrize("canvas", [
    np.zeros((280, 280, 4), np.uint8),  # transparent, nothing drawn
    np.dstack([np.zeros((280, 280, 3), np.uint8), np.full((280, 280), 255, np.uint8)]),  # opaque black
    np.full((280, 280, 4), 255, np.uint8),  # opaque white
    np.dstack([np.full((280, 280, 3), 40, np.uint8), np.full((280, 280), 255, np.uint8)]),  # flat gray
])
def test_blank_canvas_is_no_digit(canvas):
    out = preprocess_canvas(canvas)
    assert out.blank and out.image is None
    assert "no digit" in out.reason


def test_a_dot_or_speck_is_no_digit():
    img = Image.new("RGBA", (280, 280), (0, 0, 0, 255))
    ImageDraw.Draw(img).ellipse([140, 140, 147, 147], fill=(255, 255, 255, 255))
    out = preprocess_canvas(np.asarray(img))
    assert out.blank and out.image is None and "dot" in out.reason
    assert preprocess_canvas(None).blank


def test_bad_canvas_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\[H,W,4\]"):
        preprocess_canvas(np.zeros((280, 280, 5), np.uint8))


def make_photo(digit: np.ndarray, rng, size=(640, 480), fmt="JPEG") -> bytes:
    """A phone-like photo: dark ink on off-white paper, uneven light, sensor noise, JPEG."""
    w, h = size
    n = int(rng.integers(120, 220))
    ink = np.asarray(Image.fromarray(digit).resize((n, n), Image.BICUBIC), np.float32) / 255
    canvas = np.zeros((h, w), np.float32)
    top, left = int(rng.integers(20, h - n - 20)), int(rng.integers(20, w - n - 20))
    canvas[top:top + n, left:left + n] = ink
    light = np.linspace(0.75, 1.0, w)[None, :] * np.linspace(0.9, 1.0, h)[:, None]
    paper = 235 * light - 170 * canvas * light + rng.normal(0, 5, (h, w))
    buf = io.BytesIO()
    Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)).convert("RGB").save(buf, fmt, quality=85)
    return buf.getvalue()


def test_photo_of_dark_ink_on_paper_is_inverted_and_centered(mnist):
    rng = np.random.default_rng(1)
    ious = []
    for img in mnist.test_images[:20].numpy():
        out = preprocess_photo(make_photo(img, rng))
        assert not out.blank, out.reason
        assert out.image.shape == (28, 28)
        assert out.image[0].max() == 0 and out.image[:, 0].max() == 0  # white ink on black now, not paper
        cy, cx = center_of_mass(out.image)
        assert abs(cy - 14) <= 0.51 and abs(cx - 14) <= 0.51
        ious.append(iou(out.image, img / 255.0))
    assert np.mean(ious) >= 0.75, np.mean(ious)  # measured 0.85


def test_blank_paper_photo_is_no_digit():
    rng = np.random.default_rng(2)
    paper = (230 * np.linspace(0.8, 1.0, 640)[None, :] + rng.normal(0, 4, (480, 640))).clip(0, 255)
    buf = io.BytesIO()
    Image.fromarray(paper.astype(np.uint8)).save(buf, "JPEG", quality=85)
    out = preprocess_photo(buf.getvalue())
    assert out.blank and out.image is None


def test_unreadable_image_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ValueError, match="notes.png: not a readable PNG/JPEG"):
        preprocess_photo(bad)


# ============================================================== uploads (README: Reliability)

@pytest.mark.reliability("uploads read")
def test_uploaded_images_of_every_kind_are_read_correctly(shipped, mnist, tmp_path):
    from core.inference import predict_image

    wrong = []
    for i in range(4):
        digit, label = mnist.test_images[i].numpy(), int(mnist.test_labels[i])
        for kind, blob in photo_variants(digit).items():
            r = predict_image(shipped, blob)
            if r["blank"] or r["digit"] != label:
                wrong.append((i, kind, label, r["digit"], r["reason"]))
    assert not wrong, wrong
    # A JPEG saved as .png (or any wrong extension): read by content, not by name.
    digit = mnist.test_images[0].numpy()
    misnamed = tmp_path / "photo.png"
    misnamed.write_bytes(photo_variants(digit)["jpeg"])
    r = predict_image(shipped, misnamed)
    assert not r["blank"] and r["digit"] == int(mnist.test_labels[0]), r["reason"]


@pytest.mark.reliability("uploads refused")
def test_bad_uploads_are_refused_without_decoding(monkeypatch, tmp_path):
    from PIL import ImageFile

    from core.preprocess import preprocess_photo

    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self))
    bomb = encode_image(Image.new("1", (10_000, 10_000), 1))  # ~13 KB that inflates to 100 million pixels
    assert len(bomb) < 100_000
    with pytest.raises(ValueError, match=r"10,000x10,000 pixels is over the 40-megapixel limit"):
        preprocess_photo(bomb)
    assert (10_000, 10_000) not in decoded  # refused from the header: never decompressed
    with pytest.raises(ValueError, match=r"empty file \(0 bytes\)"):
        preprocess_photo(b"")
    with pytest.raises(ValueError, match="not a readable PNG/JPEG image"):
        preprocess_photo(b"%PDF-1.4 definitely not a picture")
    gif = tmp_path / "digit.png"  # a GIF with a .png name: only PNG and JPEG decoders are exposed
    Image.new("L", (28, 28)).save(gif, format="GIF")
    with pytest.raises(ValueError, match="digit.png: not a readable PNG/JPEG image"):
        preprocess_photo(gif)
    truncated = encode_image(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), np.uint8)))[:3000]
    with pytest.raises(ValueError, match="damaged or truncated"):
        preprocess_photo(truncated)
