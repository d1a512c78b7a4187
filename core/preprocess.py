"""Turn a drawing or a photo into the 28x28 digit the models were trained on.

MNIST's own recipe (LeCun et al.): the ink's bounding box is scaled to fit a
20x20 box keeping its aspect ratio, with anti-aliasing, and pasted into 28x28
so that its center of mass sits at the center. A drawn digit that skips any of
these steps looks nothing like the training data (too big, off-center, too
thick), which is why naive canvas demos misread so many digits.

Everything is numpy + PIL on small arrays: a 280x280 canvas takes well under a
millisecond. Images are float32 in [0,1], white ink on black, like the models'
input.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

BOX = 20  # the digit's longer side after scaling, as in MNIST
SIZE = 28
CENTER = 14.0  # MNIST's mean center of mass, in pixel-index coordinates (measured: 13.99, 14.01)
MAX_PIXELS = 40_000_000  # uploads: a 40-megapixel phone photo is fine, a decompression bomb is not
INK_FLOOR = 26  # of 255: fainter pixels are anti-aliasing fringe or noise, not strokes


@dataclass
class Preprocessed:
    """What the model sees, and how it got there.

    blank: True when there is no digit to read (then image is None and reason says why).
    image: float32 [28,28] in [0,1], white on black, or None when blank.
    steps: ordered intermediate images (float32 in [0,1]) for the UI to show.
    """

    blank: bool
    reason: str = ""
    image: np.ndarray | None = None
    steps: dict[str, np.ndarray] = field(default_factory=dict)
    bbox: tuple[int, int, int, int] | None = None  # (top, left, bottom, right) of the ink, exclusive ends
    ink_fraction: float = 0.0  # ink mass / canvas area


def _to_image(a: np.ndarray) -> Image.Image:
    """uint8 [H,W], [H,W,3] or [H,W,4] -> a PIL image sharing the layout (no channel slicing:
    slicing a strided view costs a copy, and PIL's C loops do the rest faster than numpy)."""
    mode = "L" if a.ndim == 2 else ("RGBA" if a.shape[2] == 4 else "RGB")
    return Image.fromarray(np.ascontiguousarray(a), mode)


def _ink_from_image(im: Image.Image, luma_im: Image.Image | None = None) -> np.ndarray:
    if luma_im is None:
        luma_im = im.convert("L") if im.mode != "L" else im  # ITU-R 601 brightness; alpha ignored
    if im.mode == "RGBA":
        alpha_im = im.getchannel("A")
        hist = alpha_im.histogram()
        if hist[0] > (im.width * im.height) // 5:
            # Transparent background: strokes are the painted pixels, whatever their color.
            if hist[0] == im.width * im.height:
                return np.zeros((im.height, im.width), np.uint8)
            luma, alpha = np.asarray(luma_im), np.asarray(alpha_im)
            dark_strokes = luma[alpha > 0].mean() < 128
            if dark_strokes:
                luma_im = Image.fromarray(255 - luma)
            return np.asarray(ImageChops.multiply(luma_im, alpha_im))  # luma * alpha / 255
        if hist[255] != im.width * im.height:
            # Partly see-through pixels over an opaque background: treat as drawn over black.
            luma_im = ImageChops.multiply(luma_im, alpha_im)
    luma = np.asarray(luma_im)
    bg = int(np.median(luma[::4, ::4]))  # the background level; a sparse sample is plenty
    if bg == 0:
        return luma  # the app's own canvas: white on black, nothing to do
    if bg == 255:
        return 255 - luma
    # A gray or tinted background: ink is the distance from it, stretched to full range.
    light = bg >= 128
    diff = (bg - luma.astype(np.int16)) if light else (luma.astype(np.int16) - bg)
    return (np.clip(diff, 0, None) * (255.0 / (bg if light else 255 - bg))).astype(np.uint8)


def canvas_ink(rgba: np.ndarray) -> np.ndarray:
    """uint8 [H,W,4] (or [H,W,3], [H,W]) -> ink uint8 [H,W], 255 = full stroke.

    The app draws white strokes on black; other canvases give dark strokes on a
    transparent or white background. The background is what most of the
    canvas is, so polarity is decided from it rather than assumed.
    """
    return _ink_from_image(_to_image(rgba))


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _trimmed_bbox(ink: np.ndarray, mask: np.ndarray, trim: float) -> tuple[int, int, int, int] | None:
    """Bounding box that ignores the outermost `trim` fraction of ink mass on each side
    (specks and paper edges in photos), never trimming into the digit's body."""
    box = _bbox(mask)
    if box is None or trim <= 0:
        return box
    w = np.where(mask, ink, 0).astype(np.float64)
    out = []
    for axis in (1, 0):  # row profile, then column profile
        prof = w.sum(axis)
        c = np.cumsum(prof) / prof.sum()
        lo = int(np.searchsorted(c, trim, side="right"))
        hi = int(np.searchsorted(c, 1 - trim, side="left")) + 1
        out.append((lo, hi))
    (t, b), (l, r) = out
    t, l, b, r = max(t, box[0]), max(l, box[1]), min(b, box[2]), min(r, box[3])
    return (t, l, b, r) if b > t and r > l else box


def mnist_layout(ink: np.ndarray, bbox: tuple[int, int, int, int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """ink uint8 [H,W] and its bbox -> (float32 [28,28], steps): MNIST's size and centering."""
    t, l, b, r = bbox
    crop = ink[t:b, l:r]
    h, w = crop.shape
    s = BOX / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    # LANCZOS on a downscale is area-aware (anti-aliased), like MNIST's own gray levels.
    # reducing_gap: a fast box pre-shrink first; same accuracy on rendered MNIST, ~25% quicker.
    scaled = np.asarray(Image.fromarray(crop).resize((nw, nh), Image.LANCZOS, reducing_gap=3.0), dtype=np.float32)
    peak = scaled.max()
    if peak > 0:
        scaled *= 1.0 / peak  # thin strokes fade when shrunk; MNIST strokes peak at full white
    total = scaled.sum()
    cy = float(scaled.sum(1) @ np.arange(nh, dtype=np.float32)) / total
    cx = float(scaled.sum(0) @ np.arange(nw, dtype=np.float32)) / total
    # Shift so the center of mass lands on (14,14); clip so no ink leaves the frame.
    top = min(max(int(round(CENTER - cy)), 0), SIZE - nh)
    left = min(max(int(round(CENTER - cx)), 0), SIZE - nw)
    out = np.zeros((SIZE, SIZE), np.float32)
    out[top:top + nh, left:left + nw] = scaled
    boxed = np.zeros((BOX, BOX), np.float32)
    boxed[(BOX - nh) // 2:(BOX - nh) // 2 + nh, (BOX - nw) // 2:(BOX - nw) // 2 + nw] = scaled
    steps = {"cropped": crop.astype(np.float32) / 255.0, "scaled 20x20": boxed, "centered 28x28": out}
    return out, steps


_FLOOR_LUT = np.arange(256, dtype=np.uint8)
_FLOOR_LUT[:INK_FLOOR] = 0


def _from_ink(ink: np.ndarray, min_ink: float, min_extent: float, trim: float = 0.0) -> Preprocessed:
    steps = {"ink": ink.astype(np.float32) * np.float32(1 / 255)}
    ink = _FLOOR_LUT[ink]  # fringe and noise below INK_FLOOR -> 0 (a table lookup)
    box = Image.fromarray(ink).getbbox()  # (left, top, right, bottom) of nonzero pixels, in C
    if box is None:
        return Preprocessed(True, "no digit: the canvas is empty", steps=steps)
    frac = float(ink.sum(dtype=np.int64)) / 255.0 / ink.size
    left, top, right, bottom = box
    bbox = (top, left, bottom, right)
    if trim > 0:
        bbox = _trimmed_bbox(ink, ink > 0, trim)
    t, l, b, r = bbox
    extent = max(b - t, r - l) / max(ink.shape)
    if frac < min_ink or extent < min_extent:
        return Preprocessed(True, "no digit: only a dot or a stray mark; draw a digit larger",
                            steps=steps, bbox=bbox, ink_fraction=frac)
    image, more = mnist_layout(ink, bbox)
    steps.update(more)
    return Preprocessed(False, "", image, steps, bbox, frac)


def _as_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        finite = a[np.isfinite(a)]  # NaN/inf pixels (a broken client) count as no ink
        a = a * 255.0 if finite.size and float(finite.max()) <= 1.0 else a
        return np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


def preprocess_canvas(rgba: np.ndarray, *, min_ink: float = 0.002, min_extent: float = 0.08) -> Preprocessed:
    """A canvas drawing, RGBA uint8 [H,W,4], -> Preprocessed.

    min_ink: least ink mass, as a fraction of the canvas area, that counts as a digit.
    min_extent: least size of the ink's longer side, as a fraction of the canvas's.
    Below either, the result is blank: a click or a speck is not read as a digit.
    """
    if rgba is None:
        return Preprocessed(True, "no digit: nothing was drawn")
    a = np.asarray(rgba)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or min(a.shape[:2]) < 1:
        raise ValueError(f"expected a canvas image of shape [H,W,4] (RGBA), got {list(a.shape)}")
    if a.size > MAX_PIXELS * 4:
        raise ValueError(f"canvas of {a.shape[1]:,}x{a.shape[0]:,} pixels is too large")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).any():
        return Preprocessed(True, "no digit: the canvas data is invalid (not a number)")
    im = _to_image(_as_uint8(a))
    luma_im = im.convert("L") if im.mode != "L" else im
    lo, hi = luma_im.getextrema()
    if hi - lo < INK_FLOOR and lo > 128:  # cheap pre-test on one band; the full test only when it passes
        ext = im.getextrema()
        bands = [ext] if im.mode == "L" else list(ext)
        opaque = im.mode != "RGBA" or bands[3][0] == 255
        cmin, cmax = min(b[0] for b in bands[:3]), max(b[1] for b in bands[:3])
        if opaque and cmax - cmin < INK_FLOOR and cmin > 128:
            # Solid bright canvas: on this app's black canvas that is ink edge to edge. Say so,
            # rather than calling a scribbled-over canvas "empty".
            return Preprocessed(True, "no digit: the canvas is covered in ink edge to edge; clear it and draw a digit")
    return _from_ink(_ink_from_image(im, luma_im), min_ink, min_extent)


def _background(gray: np.ndarray, q: float, blocks: int = 8) -> np.ndarray:
    """Slowly varying paper level: a percentile per block, bilinearly upsampled.
    Handles the uneven light of a phone photo, which a single threshold cannot."""
    h, w = gray.shape
    bh, bw = max(1, h // blocks), max(1, w // blocks)
    nb_h, nb_w = max(1, h // bh), max(1, w // bw)
    g = gray[:nb_h * bh, :nb_w * bw].reshape(nb_h, bh, nb_w, bw).transpose(0, 2, 1, 3).reshape(nb_h, nb_w, -1)
    level = np.percentile(g, q, axis=2).astype(np.float32)
    return np.asarray(Image.fromarray(level, "F").resize((w, h), Image.BILINEAR))


def _keep_digit_components(mask: np.ndarray) -> np.ndarray:
    """Drop specks and anything touching the border (shadows, paper edges, fingers)
    unless it is the biggest blob; keep every blob of a multi-stroke digit."""
    from scipy import ndimage  # lazy: only photos need it

    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    border = set(border[border > 0].tolist())
    inner = [i for i in range(1, n + 1) if i not in border]
    ref = max((sizes[i - 1] for i in inner), default=sizes.max())
    keep = [i for i in range(1, n + 1) if sizes[i - 1] >= 0.05 * ref and (i not in border or sizes[i - 1] == ref)]
    return np.isin(labels, keep)


def _check_pixels(size: tuple[int, int], name: str) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise ValueError(f"{name}: {w:,}x{h:,} pixels is over the {MAX_PIXELS / 1e6:.0f}-megapixel limit; "
                         "send a smaller picture (a digit needs far fewer pixels)")


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit gray -> 8-bit by scaling the range, not clipping it
    (PIL's convert("L") clips, which turns a 16-bit photo into solid white)."""
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return img
    a = np.asarray(img, dtype=np.float64)
    hi = 65535.0 if img.mode.startswith("I;16") or (a.size and a.max() > 255) else 255.0
    return Image.fromarray(np.clip(np.rint(a * (255.0 / hi)), 0, 255).astype(np.uint8), "L")


def open_image(src) -> Image.Image:
    """A path, bytes, file object, PIL image or array -> PIL image (EXIF rotation applied).

    Only PNG and JPEG are parsed (fewer decoders exposed to strangers' files), and the
    pixel count is checked from the header before anything is decoded, so a tiny
    compressed file that inflates to 10,000x10,000 pixels is refused, not unpacked.
    """
    if isinstance(src, Image.Image):
        img = src
    elif isinstance(src, np.ndarray):
        img = Image.fromarray(_as_uint8(src))
    else:
        name = os.path.basename(os.fspath(src)) if isinstance(src, (str, os.PathLike)) else "image"
        if isinstance(src, (bytes, bytearray)) and not src:
            raise ValueError(f"{name}: empty file (0 bytes), not a PNG/JPEG image")
        try:
            with warnings.catch_warnings():
                # Our own limit (below) is stricter than PIL's bomb warning, and says what to do.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src,
                                 formats=("PNG", "JPEG"))
                _check_pixels(img.size, name)
                img.load()
        except Image.DecompressionBombError as e:
            raise ValueError(f"{name}: too many pixels to decode safely; send a smaller picture") from e
        except UnidentifiedImageError as e:
            raise ValueError(f"{name}: not a readable PNG/JPEG image (the content is not PNG or JPEG, "
                             "whatever the file name says)") from e
        except (OSError, SyntaxError) as e:
            raise ValueError(f"{name}: not a readable PNG/JPEG image (damaged or truncated: {e})") from e
    _check_pixels(img.size, "image")
    return _to_8bit(ImageOps.exif_transpose(img))


def preprocess_photo(src, *, max_side: int = 512, min_ink: float = 0.0005,
                     min_extent: float = 0.04) -> Preprocessed:
    """A PNG/JPEG of a digit -> Preprocessed. Dark ink on light paper (a photo of a
    written digit) is detected and inverted; white-on-black images (MNIST PNGs,
    canvas exports) pass straight through; transparent PNGs go the canvas way."""
    img = open_image(src)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"))
        if np.count_nonzero(rgba[..., 3] == 0) > rgba[..., 3].size // 5:
            return _from_ink(canvas_ink(rgba), min_ink, min_extent)
    gray = img.convert("L")
    if max(gray.size) > max_side:  # photos: fewer pixels to touch and less paper grain
        gray.thumbnail((max_side, max_side), Image.BOX)
    g = np.asarray(gray, dtype=np.float32)
    if np.median(g) >= 128:  # light background: dark ink on paper
        bg = _background(g, 90)
        ink = np.clip(bg - g, 0, None) / np.maximum(bg, 1.0)
    else:
        bg = _background(g, 10)
        ink = np.clip(g - bg, 0, None) / np.maximum(255.0 - bg, 1.0)
    # Stretch so the strongest strokes are full ink, then drop paper texture.
    hi = float(np.percentile(ink, 99.5)) if ink.size else 0.0
    hi = max(hi, float(ink.max()) * 0.5)
    if hi < 0.1:  # no real contrast anywhere: an empty sheet
        return Preprocessed(True, "no digit: the image has no ink (too little contrast)",
                            steps={"ink": ink.astype(np.float32)})
    ink = np.clip((ink / hi - 0.25) / 0.75, 0, 1)
    mask = ink > 0
    if mask.any():
        ink = np.where(_keep_digit_components(mask), ink, 0)
    return _from_ink((ink * 255).astype(np.uint8), min_ink, min_extent, trim=0.002)


def digit_to_canvas(image: np.ndarray, size: int = 280, *, scale: float = 1.0, offset: tuple[int, int] = (0, 0),
                    background: str = "black") -> np.ndarray:
    """Render a 28x28 uint8 digit as a canvas would return it: RGBA uint8 [size,size,4],
    white strokes, smoothly upscaled. background: "black" (opaque) or "transparent".
    scale < 1 draws it smaller; offset moves it (pixels, may push it off-center)."""
    n = max(1, int(round(size * scale)))
    big = np.asarray(Image.fromarray(_as_uint8(np.asarray(image))).resize((n, n), Image.BICUBIC))
    ink = np.zeros((size, size), np.uint8)
    top, left = (size - n) // 2 + offset[0], (size - n) // 2 + offset[1]
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + n, size), min(left + n, size)
    if t1 > t0 and l1 > l0:
        ink[t0:t1, l0:l1] = big[t0 - top:t1 - top, l0 - left:l1 - left]
    rgba = np.empty((size, size, 4), np.uint8)
    if background == "transparent":
        rgba[..., :3] = 255
        rgba[..., 3] = ink
    elif background == "black":
        rgba[..., :3] = ink[..., None]
        rgba[..., 3] = 255
    else:
        raise ValueError(f"background must be 'black' or 'transparent', got {background!r}")
    return rgba
