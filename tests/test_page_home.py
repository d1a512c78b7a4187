"""The Home page (AppTest, real app and navigation, real digits): device, data, models, links;
and what Home, Data and Train say when there is no dataset at all."""
from __future__ import annotations

import json

import pytest

from helpers import new_app, texts


def test_home_shows_device_data_models_and_links(app, workspace_with_run):
    from core.hardware import cpu_count, gpu_names
    from core.inference import list_models

    acc = json.loads((workspace_with_run.runs_dir / "tiny" / "run.json").read_text())["metrics"]["test_acc"]
    at = app("home", ws_id=workspace_with_run.id)
    body = texts(at)
    # The "Training device" card names the device in words: "CPU · 2 cores" or the GPU's name.
    want = f":green[{gpu_names()[0]}]" if gpu_names() else f"CPU · {cpu_count()} cores"
    md = [m.value for m in at.markdown]
    assert "**Training device**" in md, md
    assert md[md.index("**Training device**") + 1] == want, md
    assert "2,000 train + 500 test digits" in body  # the data in use
    models = at.dataframe[0].value
    assert len(models) == len(list_models()) + 1  # every shipped file, and the visitor's one run
    mine = models[models["Model"] == "tiny"].iloc[0]
    assert mine["Where"].startswith("Your run") and mine["Accuracy"] == pytest.approx(100 * acc)
    for m in list_models():
        row = models[models["Model"].str.startswith(m["name"])].iloc[0]
        assert row["Accuracy"] == pytest.approx(100 * m["card"]["accuracy"])
    links = {p.value for p in at.get("page_link")}
    assert {"Draw", "Data", "Train", "Fine-tune", "Evaluate", "Export", "Insights"} <= links


def test_pages_explain_a_missing_dataset(app, monkeypatch, tmp_path):
    empty = tmp_path / "no-mnist-here"
    empty.mkdir()
    monkeypatch.setenv("MNIST_DIR", str(empty))
    for page in ("home", "data", "train"):
        at = new_app(page)
        assert not at.exception, (page, [e.value for e in at.exception])
        body = texts(at)
        assert "No MNIST data is available" in body and "MNIST_DIR" in body, page
        assert any("Draw" in p.value for p in at.get("page_link")), page
        if page == "home":  # Home still shows the device, the models and its links
            assert "**Training device**" in body and len(at.dataframe) == 1 and len(at.get("page_link")) >= 8
