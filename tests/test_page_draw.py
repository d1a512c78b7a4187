"""The Draw page (AppTest, real app): real test digits read through the canvas, samples saved in
the visitor's workspace (and back after a reload), uploaded photos, bad canvases and model files,
and the presenter setting."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from helpers import (assert_ok, button, canvas_state, encode_image, metric, new_app, no_paths, photo_variants,
                     save_drawing, texts, visitor_workspace, widget)


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

    at = app("draw")
    images, labels = mnist.test_images[:10].numpy(), mnist.test_labels[:10].numpy()
    hits = 0
    for img, label in zip(images, labels):
        # A test digit as the canvas would return it: 280x280 RGBA, white on black, smaller and off-centre.
        at.session_state["canvas"] = canvas_state(digit_to_canvas(img, scale=0.7, offset=(20, -15)))
        at.run()
        assert_ok(at)
        hits += metric(at, "Prediction") == str(int(label))
    assert hits >= 9, f"{hits}/10 test digits read correctly"
    assert float(metric(at, "Confidence").rstrip("%")) > 0
    body = texts(at)
    assert "onnxruntime on **CPU**" in body and " ms** for preprocessing + inference" in body
    steps = [c for img in at.get("image") for c in img.captions]
    assert steps[-1].endswith("centered 28x28") and len(steps) >= 3  # what the model sees, step by step

    # Save the last drawing with its true label: it lands in the visitor's workspace, on disk.
    widget(at, "button_group", "Label").set_value(str(int(labels[-1])))
    button(at, "Save sample").click().run()
    assert_ok(at)
    ws = visitor_workspace(at)
    samples = ws.samples.load()
    assert len(samples) == 1 and samples.counts()[int(labels[-1])] == 1
    assert len(list(ws.samples_dir.rglob("*.png"))) == 1
    assert "Your samples per digit" in texts(at)

    # A reload (new session state, same ?ws=) brings the drawing back.
    reload = app("draw", ws_id=ws.id)
    assert visitor_workspace(reload).id == ws.id
    assert len(visitor_workspace(reload).samples.load()) == 1 and "Your samples per digit" in texts(reload)

    # Another visitor has none, and can take the zip in.
    other = app("draw")
    assert visitor_workspace(other).id != ws.id and "Your samples per digit" not in texts(other)
    zip_upload = next(u for u in other.get("file_uploader") if u.key == "draw_upload")  # not the photo uploader
    zip_upload.set_value(("mine.zip", samples.to_zip(), "application/zip")).run()
    assert_ok(other)
    assert "Added 1 new samples" in "\n".join(s.value for s in other.success)
    assert len(visitor_workspace(other).samples.load()) == 1

    zip_upload = next(u for u in other.get("file_uploader") if u.key == "draw_upload")
    zip_upload.set_value(("junk.zip", b"not a zip", "application/zip")).run()
    assert not other.exception
    assert any("not a valid zip" in e.value for e in other.error)


def test_draw_corrupt_or_missing_model_gives_a_message(app, monkeypatch, tmp_path):
    at = app("draw")
    # A visitor export whose .onnx is garbage: listed, but choosing it explains instead of crashing.
    exports = visitor_workspace(at).exports_dir
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

    import core.catalog

    monkeypatch.setattr(core.inference, "EXPORT_DIR", tmp_path / "empty")
    monkeypatch.setattr(core.catalog, "EXPORT_DIR", tmp_path / "empty")  # the catalog's own binding
    fresh = new_app("draw")
    assert not fresh.exception
    assert any("No model to read drawings with" in w.value for w in fresh.warning)


@pytest.mark.reliability("shipped model broken")
def test_missing_or_corrupt_shipped_model_breaks_only_draw(app, monkeypatch, tmp_path):
    import core.inference

    shipped_dir = tmp_path / "exported"
    shipped_dir.mkdir()
    (shipped_dir / "mnist-accurate.onnx").write_bytes(b"\x08\x07truncated protobuf" * 3)  # corrupt
    import core.catalog

    monkeypatch.setattr(core.inference, "EXPORT_DIR", shipped_dir)
    monkeypatch.setattr(core.catalog, "EXPORT_DIR", shipped_dir)
    monkeypatch.setattr(core.inference, "DEFAULT_MODEL", shipped_dir / "mnist-accurate.onnx")
    at = app("draw", check=False)
    assert not at.exception
    err = "\n".join(e.value for e in at.error)
    assert "This model can't be used: mnist-accurate.onnx: not a loadable ONNX model" in err, err
    no_paths(err, tmp_path)
    assert widget(at, "slider", "Stroke width")  # the page itself still works
    for page in ("home", "data", "train"):
        at.switch_page(f"app_pages/{page}.py").run()
        assert_ok(at)
    (shipped_dir / "mnist-accurate.onnx").unlink()  # now missing altogether
    at.switch_page("app_pages/draw.py").run()
    assert not at.exception
    assert any("No model to read drawings with" in w.value for w in at.warning)


def _photo_uploader(at):
    return next(u for u in at.get("file_uploader") if u.key == "draw_photo")


@pytest.mark.reliability("uploads refused")
def test_draw_page_reads_uploaded_photos_and_explains_bad_ones(app, mnist):
    at = app("draw")
    digit, label = mnist.test_images[1].numpy(), int(mnist.test_labels[1])
    for kind, blob in photo_variants(digit).items():
        _photo_uploader(at).set_value((f"{kind}.png", blob, "image/png")).run()
        assert_ok(at)
        assert metric(at, "Prediction") == str(label), kind
    bad = {"empty.png": (b"", "empty file"), "bomb.png": (encode_image(Image.new("1", (10_000, 10_000), 1)),
                                                          "over the 40-megapixel limit"),
           "notes.jpg": (b"hello", "not a readable PNG/JPEG image")}
    for name, (blob, msg) in bad.items():
        _photo_uploader(at).set_value((name, blob, "image/png")).run()
        assert not at.exception, name
        errors = "\n".join(e.value for e in at.error)
        assert f"Could not read {name}" in errors and msg in errors, errors
        no_paths(errors)
        assert metric(at, "Prediction") == "—"  # no guess from a file that could not be read


@pytest.mark.reliability("canvas")
def test_draw_page_explains_an_all_ink_canvas(app):
    at = app("draw")
    at.session_state["canvas"] = canvas_state(np.full((280, 280, 4), 255, np.uint8))
    at.run()
    assert_ok(at)
    assert metric(at, "Prediction") == "—"
    assert any("covered in ink" in i.value for i in at.info)


def test_presenter_setting_is_explicit(app, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_PRESENTER", "1")
    at = new_app("draw")
    assert not at.exception
    toggle = [t for t in at.get("toggle") if "disk" in t.label]
    assert len(toggle) == 1 and toggle[0].value is False  # shown, but off until the presenter turns it on


@pytest.mark.reliability("visitor isolation")
def test_only_the_presenter_setting_shares_drawings(app, monkeypatch, mnist, shared_samples):
    import core.samples

    monkeypatch.setenv("MNIST_LAB_PRESENTER", "1")
    a = app("draw")
    assert next(t for t in a.get("toggle") if "disk" in t.label).value is False
    save_drawing(a, mnist.test_images[0].numpy(), int(mnist.test_labels[0]))
    assert_ok(a)
    assert len(visitor_workspace(a).samples) == 1  # saved for this visitor ...
    assert not shared_samples.exists()  # ... and off the shared disk: private
    next(t for t in a.get("toggle") if "disk" in t.label).set_value(True).run()
    button(a, "Save sample").click().run()
    assert_ok(a)
    assert len(core.samples.SampleStore()) == 1  # on: written where every visitor's session can read it
    assert len(list(shared_samples.rglob("*.png"))) == 1
