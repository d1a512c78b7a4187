"""Data-page statistics on the real MNIST: checked against known facts and scikit-learn."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from core import explore


@pytest.fixture(scope="module")
def arrays(mnist):
    return (mnist.train_images.numpy(), mnist.train_labels.numpy(),
            mnist.test_images.numpy(), mnist.test_labels.numpy())


def test_label_counts_match_official_mnist(arrays):
    _, ty, _, vy = arrays
    train, test = explore.label_counts(ty), explore.label_counts(vy)
    assert train.sum() == 60_000 and test.sum() == 10_000
    # Published class sizes: "1" is the most frequent class, "5" the rarest, in both splits.
    assert train[1] == 6742 and train[5] == 5421
    assert test[1] == 1135 and test[5] == 892


def test_sample_indices_filter_by_label(arrays):
    _, ty, _, _ = arrays
    idx = explore.sample_indices(ty, digit=7, n=30, seed=1)
    assert len(idx) == 30 and len(set(idx.tolist())) == 30 and (ty[idx] == 7).all()
    assert not np.array_equal(idx, explore.sample_indices(ty, digit=7, n=30, seed=2))
    mixed = explore.sample_indices(ty, None, n=200, seed=0)
    assert len(np.unique(ty[mixed])) == 10
    bal = explore.balanced_subsample(ty, 1000, seed=0)
    assert len(bal) == 1000 and (explore.label_counts(ty[bal]) == 100).all()
    # A class too small for its share: the others fill in, and nothing repeats.
    few5 = np.concatenate([np.flatnonzero(ty != 5)[:900], np.flatnonzero(ty == 5)[:20]])
    sub = explore.balanced_subsample(ty[few5], 500, seed=0)
    assert len(sub) == 500 and len(np.unique(sub)) == 500 and explore.label_counts(ty[few5][sub])[5] == 20


def test_class_means_form_a_working_classifier(arrays):
    tx, ty, vx, vy = arrays
    mean, std = explore.class_mean_std(tx, ty)
    assert mean.shape == std.shape == (10, 28, 28) and mean.dtype == np.float32
    assert 0 <= mean.min() and mean.max() <= 1 and std.min() >= 0
    # Corners are always empty; the centre of the 1s is dense ink.
    assert mean[:, 0, 0].max() == 0 and std[:, 0, 0].max() == 0
    assert mean[1, 10:18, 13:15].mean() > 0.5
    # Nearest class mean on the held-out test set: known to score ~82%; chance is 10%.
    d = ((vx.reshape(len(vx), 1, -1) / 255.0 - mean.reshape(1, 10, -1)) ** 2).sum(-1)
    acc = (d.argmin(1) == vy).mean()
    assert 0.78 < acc < 0.88


def test_pixel_histogram_counts_every_pixel(arrays):
    tx = arrays[0][:5000]
    h = explore.pixel_histogram(tx, bins=16)
    assert h["counts"].sum() == tx.size and len(h["edges"]) == 17
    assert 0.75 < h["fraction_zero"] < 0.85  # MNIST is ~81% exact background
    assert h["counts"][0] > h["counts"][1:].sum()  # the dark bucket dominates
    assert h["counts"][-1] > h["counts"][8]  # ink is saturated: near-white beats mid-grey


def test_pca_matches_scikit_learn(arrays):
    from sklearn.decomposition import PCA

    tx = arrays[0][:5000]
    ours = explore.pca_fit(tx, n_components=3)
    ref = PCA(3, svd_solver="covariance_eigh").fit(tx.reshape(len(tx), -1).astype(np.float64) / 255)
    np.testing.assert_allclose(ours.explained_variance_ratio, ref.explained_variance_ratio_, rtol=1e-3)
    # Same axes up to sign; rows orthonormal.
    cos = np.abs((ours.components.astype(np.float64) * ref.components_).sum(1))
    assert (cos > 0.999).all()
    np.testing.assert_allclose(ours.components @ ours.components.T, np.eye(3), atol=1e-5)
    # MNIST's first two components explain ~17% of the variance.
    assert 0.14 < ours.explained_variance_ratio[:2].sum() < 0.20
    z = ours.transform(tx[:100])
    assert z.shape == (100, 3) and z.dtype == np.float32


def _knn_accuracy(coords, labels):
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return cross_val_score(KNeighborsClassifier(5), coords, labels, cv=5).mean()


def test_tsne_separates_digits_better_than_pca(arrays):
    tx, ty, _, _ = arrays
    idx, coords = explore.tsne_embed(tx, ty, n=300, seed=0, max_iter=400)
    assert coords.shape == (300, 2) and len(np.unique(idx)) == 300
    assert (explore.label_counts(ty[idx]) == 30).all()
    pca2 = explore.pca_fit(tx).transform(tx[idx])
    tsne_acc, pca_acc = _knn_accuracy(coords, ty[idx]), _knn_accuracy(pca2, ty[idx])
    # 5-NN in 2-D: t-SNE keeps the clusters (~0.8), PCA's 2-D plane mixes them (~0.4).
    assert tsne_acc > 0.7 and tsne_acc > pca_acc + 0.15, (tsne_acc, pca_acc)


def test_digit_data_url_round_trips(arrays):
    img = arrays[0][0]
    url = explore.digit_data_url(img, scale=2)
    assert url.startswith("data:image/png;base64,")
    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    assert back.shape == (56, 56) and np.array_equal(back[::2, ::2], img)
    grid = explore.pixel_grid(img)
    assert len(grid["x"]) == 784 and grid["value"][grid["y"] * 28 + grid["x"]].tolist() == img.ravel().tolist()
    assert explore.to_uint8(np.full((2, 28, 28), 0.25, np.float32), stretch=True).max() == 255
