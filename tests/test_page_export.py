"""The Export page (AppTest, real app, full MNIST): a visitor's run exported under a safe name into
their workspace, valid and equal to PyTorch; the export is then one of their models; empty states."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import assert_ok, visitor_workspace, widget


def test_export_writes_a_valid_onnx_model_under_a_safe_name(full_app, workspace_with_run, trained_model, mnist):
    import onnx
    import onnxruntime as ort

    at = full_app("export", ws_id=workspace_with_run.id)
    widget(at, "text_input", "Export name").input("../../etc/passwd")
    widget(at, "checkbox", "fp16 variant").check()
    widget(at, "button", "Export to ONNX").click().run()
    assert_ok(at)

    folder = visitor_workspace(at).exports_dir
    assert folder == workspace_with_run.exports_dir
    path = folder / "etc-passwd.onnx"  # the typed path was reduced to one harmless file name
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".onnx") == ["etc-passwd-fp16.onnx",
                                                                               "etc-passwd.onnx"]
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = mnist.test_images[:1000].numpy().astype(np.float32)[:, None] / 255
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        ref = trained_model(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() < 1e-4

    # the table lists both files and each can be downloaded
    labels = [b.label for b in at.get("download_button")]
    assert any("etc-passwd.onnx" in lab for lab in labels) and any("etc-passwd-fp16.onnx" in lab for lab in labels)
    table = at.dataframe[0].value
    assert list(table["variant"]) == ["fp32", "fp16"]
    assert any("held out no validation digits" in i.value for i in at.info)  # so not calibrated
    assert json.loads(path.with_suffix(".json").read_text())["calibration"] is None
    acc = workspace_with_run.run("tiny").metrics["test_acc"]
    assert table["accuracy"].iloc[0] == pytest.approx(100 * acc, abs=0.006)

    # the export is one of this visitor's models on the other pages
    at.switch_page("app_pages/evaluate.py").run()
    assert "Your export · etc-passwd (ONNX)" in at.selectbox(key="eval_model").options
    at.switch_page("app_pages/draw.py").run()
    assert any(o.startswith("Your export · etc-passwd") for o in widget(at, "selectbox", "Model").options)


def test_export_calibrates_a_run_with_a_validation_split(full_app, workspaces, mnist):
    """As the CLI does: a temperature fitted on the run's held-out digits is folded into the graph
    (ONNX logits = PyTorch logits / T, same answers). A run without validation digits ("tiny",
    above) is exported uncalibrated, and the page says why."""
    import onnxruntime as ort

    from core.checkpoint import load_checkpoint
    from core.evaluate import TorchPredictor
    from core.train import TrainConfig, train
    from core.workspace import Workspace

    ws = Workspace.create(workspaces)
    _, run_dir = ws.new_run("held")
    cfg = TrainConfig.preset("fast", max_steps=40, device="cpu", label_smoothing=0.2)  # val_size 5,000
    assert [e for e in train(cfg, mnist, run_dir=run_dir) if e["event"] == "done"]
    at = full_app("export", ws_id=ws.id)
    assert widget(at, "checkbox", "Calibrate confidence").value  # on by default
    widget(at, "button", "Export to ONNX").click().run()
    assert_ok(at)
    card = json.loads((ws.exports_dir / "held.json").read_text())
    c = card["calibration"]
    assert c["method"] == "temperature" and c["fitted_on"] == "validation (5,000 digits)"
    shown = [m.value for m in [*at.success, *at.info] if "Calibrated: temperature" in m.value]
    assert len(shown) == 1 and (c["ece_after"] <= c["ece_before"]) == (shown[0] in [m.value for m in at.success])
    x = mnist.test_images[:500].numpy().astype(np.float32)[:, None] / 255
    sess = ort.InferenceSession(str(ws.exports_dir / "held.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"image": x})[0]
    raw = TorchPredictor(load_checkpoint(run_dir).model).logits(x)
    assert np.abs(got - raw / c["temperature"]).max() <= 1e-4 and (got.argmax(1) == raw.argmax(1)).all()


def test_a_0_to_4_base_is_exported_uncalibrated_and_the_page_says_why(full_app, workspaces, mnist):
    """Its validation digits would include 5-9, which the base is never meant to answer."""
    from core.finetune import pretrain_base
    from core.train import TrainConfig
    from core.workspace import Workspace

    ws = Workspace.create(workspaces)
    _, run_dir = ws.new_run("base04")
    cfg = TrainConfig.preset("fast", max_steps=10, device="cpu")
    list(pretrain_base(mnist, (0, 1, 2, 3, 4), run_dir=run_dir, cfg=cfg))
    at = full_app("export", ws_id=ws.id)
    assert widget(at, "checkbox", "Calibrate confidence").value
    widget(at, "button", "Export to ONNX").click().run()
    assert_ok(at)
    assert any("knows only digits 0, 1, 2, 3, 4" in i.value for i in at.info), [i.value for i in at.info]
    assert json.loads((ws.exports_dir / "base04.json").read_text())["calibration"] is None
    assert not at.success


def test_empty_states_link_to_the_train_page(full_app):
    from core.inference import list_models

    pages = ["export"] + ([] if list_models() else ["finetune", "evaluate"])  # shipped models are bases too
    for page in pages:
        at = full_app(page)
        assert any("No runs yet" in m.value for m in at.markdown), page
        assert any(link.proto.page.endswith("train.py") or "train" in link.proto.page
                   for link in at.get("page_link")), page
