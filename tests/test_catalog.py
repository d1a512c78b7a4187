"""The model catalog (core.catalog): every model a visitor may pick, in one typed list:
shipped models first (the default flagged), then the visitor's exports, then their runs with weights."""
from __future__ import annotations

import json
import shutil

import pytest

from core.catalog import model_catalog
from core.inference import DEFAULT_MODEL, EXPORT_DIR, list_models, read_card
from core.workspace import Workspace


@pytest.fixture
def ws(tmp_path, trained_run):
    """A workspace with: a finished run (trained_run), a queued and a failed run without weights,
    and an export "mine" (a copy of the shipped mnist-fast, with an fp16 variant)."""
    ws = Workspace.create(tmp_path)
    _, run_dir = ws.new_run("tiny")
    run_dir.rmdir()
    shutil.copytree(trained_run, run_dir)
    for name, status in (("waiting", "queued"), ("broken", "failed")):
        ws.new_run(name)
        ws.write_run_status(name, kind="train", status=status, config={"model": "fast"})
    ws.exports_dir.mkdir()
    for src, dst in ((EXPORT_DIR / "mnist-fast.onnx", "mine.onnx"), (DEFAULT_MODEL.with_name("mnist-accurate-fp16.onnx"),
                                                                      "mine-fp16.onnx")):
        shutil.copy(src, ws.exports_dir / dst)
        card = json.loads(src.with_suffix(".json").read_text())
        (ws.exports_dir / dst).with_suffix(".json").write_text(
            json.dumps({**card, "name": dst[:-5], "file": dst, "accuracy": 0.9876 if dst == "mine.onnx" else 0.95}))
    return ws


def test_shipped_models_come_first_with_the_default_flagged():
    cat = model_catalog()  # no workspace: the shipped models only
    shipped = list_models()
    assert [e.kind for e in cat] == ["shipped"] * len(shipped) and len(cat) >= 2
    assert cat[0].default and cat[0].path == DEFAULT_MODEL and cat[0].name == "mnist-accurate"
    assert sum(e.default for e in cat) == 1
    for e, m in zip(cat, shipped):
        assert str(e.path) == m["path"] and e.accuracy == pytest.approx(read_card(e.path)["accuracy"])
        assert e.onnx and e.variant in ("fp32", "fp16", "int8")
    assert cat[0].label() == f"Shipped · mnist-accurate · {100 * cat[0].accuracy:.2f}% (default)"


def test_a_visitors_exports_and_runs_follow_and_runs_need_weights(ws):
    cat = model_catalog(ws)
    kinds = [e.kind for e in cat]
    assert kinds == sorted(kinds, key=["shipped", "export", "run"].index)  # shipped, then exports, then runs
    exports = [e for e in cat if e.kind == "export"]
    assert [e.name for e in exports] == ["mine", "mine-fp16"]
    assert exports[0].accuracy == 0.9876 and exports[0].variant == "fp32" and exports[1].variant == "fp16"
    assert exports[0].label() == "Your export · mine · 98.76%"
    runs = [e for e in cat if e.kind == "run"]
    assert [e.name for e in runs] == ["tiny"]  # the queued and the failed run have no weights: not offered
    run = runs[0]
    metrics = json.loads((ws.runs_dir / "tiny" / "run.json").read_text())["metrics"]
    assert run.path == ws.runs_dir / "tiny" / "model.safetensors" and not run.onnx and run.variant == "pytorch"
    assert run.accuracy == metrics["test_acc"] and run.architecture == "fast" and run.status == "done"
    assert run.label(runtime=True) == f"Your run · tiny (PyTorch) · {100 * run.accuracy:.2f}%"
    assert len({e.key for e in cat}) == len(cat)  # a select box can store the key
    assert {e.kind for e in model_catalog(ws, kinds=("run",))} == {"run"}
    assert {e.kind for e in model_catalog(ws, kinds=("shipped", "export"))} == {"shipped", "export"}


def test_variants_false_drops_fp16_and_int8(ws):
    every = model_catalog(ws)
    plain = model_catalog(ws, variants=False)
    assert {e.variant for e in every} >= {"fp32", "fp16", "pytorch"}
    assert {e.variant for e in plain} == {"fp32", "pytorch"}
    assert [e for e in every if e.variant in ("fp32", "pytorch")] == plain
    assert "mine-fp16" not in [e.name for e in plain] and "mine" in [e.name for e in plain]


def test_another_workspace_lists_none_of_it(ws, tmp_path):
    other = Workspace.create(tmp_path)
    assert [e for e in model_catalog(other) if e.kind != "shipped"] == []
