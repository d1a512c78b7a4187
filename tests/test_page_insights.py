"""The Insights page (AppTest, real app): the visitor's drawing explained by their run; and
what Evaluate, Export, Fine-tune and Insights do with no dataset at all."""
from __future__ import annotations

import numpy as np
import torch

from helpers import metric, widget


def test_insights_explains_the_visitors_drawing(full_app, workspace_with_run, trained_model, mnist):
    img = mnist.test_images[3].numpy().astype(np.float32) / 255  # a real digit, as the Draw page stores it
    at = full_app("insights", ws_id=workspace_with_run.id, last_drawing=img)
    at.selectbox(key="ins_model").set_value(str(workspace_with_run.run("tiny").weights)).run()
    assert not at.exception
    with torch.no_grad():
        want = int(trained_model(torch.from_numpy(img)[None, None]).argmax())
    assert metric(at, "Prediction") == str(want)
    # explain another digit's score, and look at a test digit instead
    at.selectbox(key="ins_target").set_value((want + 1) % 10).run()
    assert not at.exception
    widget(at, "radio", "Digit to explain").set_value("A test digit").run()
    at.number_input(key="ins_index").set_value(7).run()
    assert not at.exception
    assert len(at.get("image")) >= 4  # input, saliency, Grad-CAM, filters and activation mosaics


def test_pages_without_a_dataset_explain_what_is_missing(app, workspace_with_run, monkeypatch, tmp_path, mnist):
    """MNIST_DIR pointing at an empty folder: no data. Insights still works on a drawing
    with the shipped model alone; the others say what is missing."""
    from core.inference import list_models

    monkeypatch.setenv("MNIST_DIR", str(tmp_path))
    img = mnist.test_images[0].numpy().astype(np.float32) / 255
    for page in ("evaluate", "export", "finetune"):
        at = app(page, ws_id=workspace_with_run.id)
        assert at.warning, f"{page}: no explanation shown"
        assert "MNIST" in at.warning[0].value or "test digits" in at.warning[0].value
    at = app("insights", ws_id=workspace_with_run.id if not list_models() else None, last_drawing=img)
    assert metric(at, "Prediction") == str(int(mnist.test_labels[0]))
