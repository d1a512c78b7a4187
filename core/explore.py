"""Statistics and embeddings behind the Data page.

Everything takes uint8 images [N,28,28] (numpy or torch) and int labels [N]
and returns plain numpy, so the page only draws. PCA is fitted on every
digit given; t-SNE, which is quadratic-ish, runs on a class-balanced
subsample after a 50-D PCA (the usual recipe: it removes pixel noise and
makes t-SNE several times faster).
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np


def _np(a) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _flat01(images) -> np.ndarray:
    """uint8 [N,28,28] -> float32 [N,784] in [0,1]."""
    x = _np(images)
    return x.reshape(len(x), -1).astype(np.float32) / 255.0


# --------------------------------------------------------------------- counts

def label_counts(labels, num_classes: int = 10) -> np.ndarray:
    """int64 [num_classes]: how many digits of each class."""
    return np.bincount(_np(labels).astype(np.int64), minlength=num_classes)[:num_classes]


def sample_indices(labels, digit: int | None = None, n: int = 40, seed: int = 0) -> np.ndarray:
    """n random indices, all of class `digit` when given (fewer if the class is smaller)."""
    labels = _np(labels)
    pool = np.arange(len(labels)) if digit is None else np.flatnonzero(labels == digit)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False)) if len(pool) else pool


def balanced_subsample(labels, n: int, seed: int = 0) -> np.ndarray:
    """min(n, N) sorted indices with the classes equally represented; when a class is
    too small for its share, the rest is filled at random from the other digits."""
    labels = _np(labels)
    n = min(n, len(labels))
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    per = n // max(1, len(classes))
    idx = [rng.permutation(np.flatnonzero(labels == c))[:per] for c in classes]
    out = np.concatenate(idx) if idx else np.zeros(0, np.int64)
    if len(out) < n:
        rest = np.setdiff1d(np.arange(len(labels)), out)
        out = np.concatenate([out, rng.permutation(rest)[:n - len(out)]])
    return np.sort(out)


# ------------------------------------------------------------ per-class images

def class_mean_std(images, labels, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """-> (mean, std), float32 [num_classes,28,28] in [0,1]; zeros for an absent class."""
    x = _flat01(images)
    y = _np(labels)
    mean = np.zeros((num_classes, x.shape[1]), np.float32)
    std = np.zeros_like(mean)
    for c in range(num_classes):
        xc = x[y == c]
        if len(xc):
            mean[c] = xc.mean(0)
            std[c] = xc.std(0)
    side = int(round(np.sqrt(x.shape[1])))
    return mean.reshape(num_classes, side, side), std.reshape(num_classes, side, side)


def pixel_histogram(images, bins: int = 32) -> dict:
    """Histogram of raw 0-255 intensities over every pixel.

    -> {"edges": float [bins+1], "counts": int64 [bins], "fraction_zero": share of pixels == 0,
        "fraction_full": share == 255}. MNIST is ~80% exact zeros, so the page plots on a log axis.
    """
    x = _np(images).ravel()
    counts256 = np.bincount(x, minlength=256).astype(np.int64)  # exact, and fast on uint8
    edges = np.linspace(0, 256, bins + 1)
    bucket = np.minimum((np.arange(256) * bins) // 256, bins - 1)
    counts = np.bincount(bucket, weights=counts256, minlength=bins).astype(np.int64)
    n = max(1, x.size)
    return {"edges": edges, "counts": counts, "fraction_zero": counts256[0] / n,
            "fraction_full": counts256[255] / n}


# ------------------------------------------------------------------ embeddings

@dataclass
class PCA:
    mean: np.ndarray  # float32 [784]
    components: np.ndarray  # float32 [k,784], orthonormal rows, largest variance first
    explained_variance_ratio: np.ndarray  # float64 [k]

    def transform(self, images) -> np.ndarray:
        """uint8 [N,28,28] -> float32 [N,k]."""
        return (_flat01(images) - self.mean) @ self.components.T


def _one_thread():
    """BLAS/OpenMP limited to one thread. Their worker threads spin-wait, and beside
    a training job (or other visitors) on a small CPU that made PCA and t-SNE 10x
    slower than one thread (measured: 60k-digit PCA 17 s -> 1.6 s, t-SNE 12 s -> 1 s)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def pca_fit(images, n_components: int = 2) -> PCA:
    """Exact PCA through the 784x784 covariance (cheap for any N, unlike an SVD of the data)."""
    with _one_thread():
        return _pca_fit(images, n_components)


def _pca_fit(images, n_components: int) -> PCA:
    x = _flat01(images)
    mean = x.mean(0)
    xc = x - mean
    # float32 matmul (2x faster than float64 on a CPU); centred [0,1] data keeps it accurate to ~1e-5.
    cov = (xc.T @ xc).astype(np.float64) / max(1, len(x) - 1)
    var, vecs = np.linalg.eigh(cov)  # ascending
    order = np.argsort(var)[::-1][:n_components]
    comps = vecs[:, order].T
    # Fix each component's sign (largest |loading| positive) so plots don't flip between runs.
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(1)])
    comps = comps * signs[:, None]
    ratio = var[order] / max(var.sum(), 1e-12)
    return PCA(mean.astype(np.float32), comps.astype(np.float32), ratio)


def tsne_embed(images, labels=None, n: int = 2000, seed: int = 0, perplexity: float = 30.0,
               max_iter: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """t-SNE of a class-balanced subsample -> (indices [m], coords float32 [m,2]).

    Without labels the subsample is uniform. max_iter 500 is enough for MNIST
    to separate into its clusters and halves the time of sklearn's default.
    """
    from sklearn.manifold import TSNE  # lazy: scikit-learn is slow to import

    with _one_thread():
        return _tsne(TSNE, images, labels, n, seed, perplexity, max_iter)


def _tsne(TSNE, images, labels, n, seed, perplexity, max_iter):
    x_all = _np(images)
    idx = (balanced_subsample(labels, n, seed) if labels is not None
           else np.sort(np.random.default_rng(seed).permutation(len(x_all))[:n]))
    x = x_all[idx]
    z = pca_fit(x, n_components=min(50, len(x) - 1)).transform(x)
    perplexity = min(perplexity, max(2.0, (len(x) - 1) / 3))  # sklearn requires perplexity < n
    coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                  max_iter=max_iter).fit_transform(z)
    return idx, coords.astype(np.float32)


# ----------------------------------------------------------------- images out

def digit_data_url(image, scale: int = 2) -> str:
    """uint8 [28,28] (or float in [0,1]) -> "data:image/png;base64,..." for chart tooltips."""
    from PIL import Image

    img = _np(image)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    if scale > 1:
        img = np.kron(img, np.ones((scale, scale), np.uint8))  # crisp pixels, no blur
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pixel_grid(image) -> dict[str, np.ndarray]:
    """A 28x28 image as long-form columns x (col), y (row), value, for a heatmap."""
    img = _np(image)
    rows, cols = np.indices(img.shape)
    return {"x": cols.ravel(), "y": rows.ravel(), "value": img.ravel()}


def to_uint8(image, stretch: bool = False) -> np.ndarray:
    """float [...,H,W] in [0,1] or uint8 -> uint8, for display.

    stretch=True rescales each image so its maximum is white: std images
    (max ~0.5) are otherwise too dark to read.
    """
    img = _np(image)
    if img.dtype == np.uint8 and not stretch:
        return img
    img = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else 1.0)
    if stretch:
        peak = img.reshape(*img.shape[:-2], -1).max(-1)[..., None, None]
        img = img / np.maximum(peak, 1e-12)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def enlarge(image, factor: int = 4) -> np.ndarray:
    """uint8 or float [H,W] -> uint8 [H*factor, W*factor] with nearest-neighbour pixels.
    Browsers blur small images when they scale them up; this keeps pixels crisp."""
    img = to_uint8(image)
    return np.kron(img, np.ones((factor, factor), np.uint8)) if factor > 1 else img


def pad_square(image) -> np.ndarray:
    """[H,W] -> [S,S] with S = max(H,W), centred on a zero (black) background."""
    img = _np(image)
    h, w = img.shape
    s = max(h, w)
    if h == w:
        return img
    out = np.zeros((s, s), img.dtype)
    out[(s - h) // 2:(s - h) // 2 + h, (s - w) // 2:(s - w) // 2 + w] = img
    return out
