"""onnxruntime serving: the shipped models, the canvas path, provider choice, bad files, the predict CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from core.evaluate import evaluate
from core.inference import (CPU, CUDA, DEFAULT_MODEL, EXPORT_DIR, ModelError, choose_providers, list_models,
                            load_predictor, predict_canvas, read_card)
from core.preprocess import digit_to_canvas

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"

FAST = EXPORT_DIR / "mnist-fast.onnx"
BARS = {DEFAULT_MODEL: 0.995, FAST: 0.985}  # test accuracy through onnxruntime, full 10,000 digits


@pytest.fixture(scope="module")
def default():
    return load_predictor(DEFAULT_MODEL)


@pytest.mark.parametrize("path", list(BARS), ids=lambda p: p.name)
def test_shipped_model_accuracy_on_full_test_set(path, mnist):
    pred = load_predictor(path)
    report = evaluate(pred, mnist.test_images, mnist.test_labels)
    assert report["n"] == 10_000
    assert report["accuracy"] >= BARS[path], f"{path.name}: {100 * report['accuracy']:.2f}%"
    # The shipped card describes this very file and this very accuracy.
    card = read_card(path)
    assert card["size_bytes"] == path.stat().st_size
    assert card["accuracy"] == pytest.approx(report["accuracy"], abs=1e-9)
    assert card["parity"]["passed"] and card["parity"]["n"] >= 1000 and card["parity"]["max_abs_dlogit"] <= 1e-4
    assert path.stat().st_size < 2_000_000  # shipped in git: must stay small
    assert pred.metadata["model_name"] == path.stem
    assert float(pred.metadata["test_accuracy"]) == pytest.approx(report["accuracy"], abs=1e-4)


def test_canvas_path_keeps_accuracy_on_real_digits(default, mnist):
    """1,000 real test digits rendered as a 280x280 canvas returns them (white strokes,
    opaque black or transparent background) go through preprocess + onnxruntime."""
    images, labels = mnist.test_images[:1000].numpy(), mnist.test_labels[:1000].numpy()
    direct = default.predict(images).argmax(1)
    preds = []
    for i, img in enumerate(images):
        out = predict_canvas(default, digit_to_canvas(img, 280, background="transparent" if i % 2 else "black"))
        assert not out["blank"] and out["probs"].shape == (10,)
        assert out["digit"] == int(out["probs"].argmax()) and out["pre"].image.shape == (28, 28)
        assert abs(float(out["probs"].sum()) - 1) < 1e-4 and out["latency_ms"] > 0
        preds.append(out["digit"])
    acc = float((np.array(preds) == labels).mean())
    assert acc >= 0.99, f"canvas path {100 * acc:.1f}% vs direct {100 * (direct == labels).mean():.1f}%"


def test_canvas_path_small_off_center_digits(default, mnist):
    rng = np.random.default_rng(3)
    images, labels = mnist.test_images[1000:1300].numpy(), mnist.test_labels[1000:1300].numpy()
    preds = []
    for img in images:
        scale = rng.uniform(0.25, 0.6)
        room = int(280 * (1 - scale) / 2)
        out = predict_canvas(default, digit_to_canvas(img, 280, scale=scale,
                                                      offset=tuple(int(v) for v in rng.integers(-room, room + 1, 2))))
        preds.append(out["digit"])
    assert float((np.array(preds) == labels).mean()) >= 0.98


@pytest.mark.parametrize("brush", ["thick", "thin"])
def test_canvas_path_thick_and_thin_strokes(default, mnist, brush):
    """Strokes ~1.6 px thicker or ~0.8 px thinner (at 28x28 scale) than MNIST's, on a 140 px canvas."""
    from PIL import ImageFilter

    images, labels = mnist.test_images[2000:2300].numpy(), mnist.test_labels[2000:2300].numpy()
    f = ImageFilter.MaxFilter(9) if brush == "thick" else ImageFilter.MinFilter(5)
    preds = []
    for img in images:
        ink = np.asarray(Image.fromarray(digit_to_canvas(img, 140)[..., 0]).filter(f))
        preds.append(predict_canvas(default, np.dstack([ink, ink, ink, np.full_like(ink, 255)]))["digit"])
    assert float((np.array(preds) == labels).mean()) >= 0.97


def test_blank_canvas_gives_no_digit(default):
    out = predict_canvas(default, np.zeros((280, 280, 4), np.uint8))
    assert out["blank"] and out["digit"] is None and out["probs"] is None
    assert "no digit" in out["reason"] and out["pre"].blank


def test_predict_any_batch_and_input_form(mnist):
    pred = load_predictor(FAST)
    x = mnist.test_images[:1500].numpy()
    probs = pred.predict(x)  # > batch_size: chunked
    assert probs.shape == (1500, 10) and probs.dtype == np.float32
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    as_float = (x.astype(np.float32) / 255)[:, None]
    assert np.abs(pred.predict(as_float) - probs).max() < 1e-6
    assert np.abs(pred.predict(x[7]) - probs[7:8]).max() < 1e-6  # a single [28,28] image
    assert np.abs(pred.predict(mnist.test_images[:3]) - probs[:3]).max() < 1e-6  # a torch tensor
    assert pred.predict(x[:0]).shape == (0, 10)
    with pytest.raises(ValueError, match=r"\[N,1,28,28\]"):
        pred.predict(np.zeros((2, 32, 32), np.uint8))


def test_provider_choice_with_fake_gpu_lists():
    assert choose_providers([CUDA, CPU], gpu=True) == [CUDA, CPU]
    # onnxruntime-gpu lists CUDA on machines without a GPU: it must not be picked there.
    assert choose_providers(["TensorrtExecutionProvider", CUDA, CPU], gpu=False) == [CPU]
    assert choose_providers([CPU], gpu=True) == [CPU]  # CPU-only build on a GPU box
    assert choose_providers(["CoreMLExecutionProvider", CPU], gpu=False) == [CPU]


def test_session_reports_its_provider_and_metadata(default):
    assert default.provider == choose_providers()[0]
    assert default.provider in default.session.get_providers()
    for key in ("model_name", "test_accuracy", "training_date", "source_checkpoint"):
        assert default.metadata.get(key), key
    assert default.path == DEFAULT_MODEL


def test_list_models_puts_the_default_first():
    models = list_models()
    assert models[0]["path"] == str(DEFAULT_MODEL) and models[0]["default"] and models[0]["shipped"]
    assert {"mnist-accurate", "mnist-fast"} <= {m["name"] for m in models}
    assert all(m["card"] is not None for m in models if m["shipped"])


def _graph(in_shape, out_shape, name="wrong.onnx", tmp_path=None):
    """A valid ONNX file with the given input/output shapes (a Flatten + MatMul)."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape)
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)
    k = int(np.prod([d for d in in_shape[1:]]))
    w = helper.make_tensor("w", TensorProto.FLOAT, [k, out_shape[1]], np.zeros(k * out_shape[1], np.float32))
    g = helper.make_graph([helper.make_node("Flatten", ["image"], ["flat"]),
                           helper.make_node("MatMul", ["flat", "w"], ["logits"])], "g", [x], [y], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(m)
    path = tmp_path / name
    onnx.save(m, path)
    return path


def test_model_errors(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelError, match="notes.onnx: not a loadable ONNX model"):
        load_predictor(text)
    with pytest.raises(ModelError, match=r"input 'image'.*float32 \[N,1,28,28\]"):
        load_predictor(_graph(["N", 784], ["N", 10], "flat.onnx", tmp_path))
    with pytest.raises(ModelError, match=r"logits \[N,10\]"):
        load_predictor(_graph(["N", 1, 28, 28], ["N", 5], "five.onnx", tmp_path))
    ok = _graph(["N", 1, 28, 28], ["N", 10], "ok.onnx", tmp_path)
    assert load_predictor(ok).predict(np.zeros((3, 28, 28), np.uint8)).shape == (3, 10)  # right shapes load
    with pytest.raises(ModelError, match="over the"):
        load_predictor(FAST, max_bytes=10_000)
    with pytest.raises(ModelError, match="no such model"):
        load_predictor(tmp_path / "missing.onnx")
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ModelError, match="PyTorch checkpoint, not an ONNX model"):
        load_predictor(ckpt)


def _png(rgba: np.ndarray, path):
    Image.fromarray(rgba).save(path)
    return str(path)


def test_predict_cli(tmp_path, mnist, capsys):
    from core.cli import main

    digit = mnist.test_images[0].numpy()  # a 7
    label = int(mnist.test_labels[0])
    drawn = _png(digit_to_canvas(digit, 280), tmp_path / "drawn.png")
    # A photo-like JPEG: dark ink on light paper.
    paper = (235 - 0.7 * np.asarray(Image.fromarray(digit).resize((200, 200), Image.BICUBIC), np.float32))
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.pad(paper, 100, constant_values=235).astype(np.uint8)).save(photo, quality=90)
    blank = _png(np.zeros((280, 280, 4), np.uint8), tmp_path / "blank.png")

    assert main(["predict", str(DEFAULT_MODEL), drawn, str(photo), blank, "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert [r["digit"] for r in result["results"]] == [label, label, None]
    first = result["results"][0]
    assert len(first["top3"]) == 3 and first["top3"][0]["prob"] >= first["top3"][1]["prob"] >= first["top3"][2]["prob"]
    assert result["results"][2]["blank"] and "no digit" in result["results"][2]["reason"]
    assert out[1].startswith(f"{drawn}: {label} (") and "no digit" in out[3]

    assert main(["predict", str(DEFAULT_MODEL), str(tmp_path / "nope.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no such image" in err and len(err.splitlines()) == 1
    notes = tmp_path / "notes.onnx"
    notes.write_text("nope")
    assert main(["predict", str(notes), drawn]) == 1
    assert "not a loadable ONNX model" in capsys.readouterr().err


def test_predict_cli_as_a_real_process(tmp_path, mnist):
    drawn = _png(digit_to_canvas(mnist.test_images[1].numpy(), 280, background="transparent"), tmp_path / "d.png")
    proc = subprocess.run([sys.executable, "-m", "core", "predict", str(FAST), drawn, "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["results"][0]["digit"] == int(mnist.test_labels[1])
    assert "Warning" not in proc.stderr and "W:onnxruntime" not in proc.stderr  # no provider warning spam


# ============================================================== bad model files, canvases, load (README: Reliability)

def _onnx_model(in_shape, out_shape, path: Path) -> Path:
    """A valid ONNX graph with the given input/output shapes (None = dynamic)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, in_shape)
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)
    n_in = int(np.prod([d for d in in_shape[1:]]))
    w = helper.make_tensor("w", TensorProto.FLOAT, [n_in, out_shape[1]], np.zeros(n_in * out_shape[1], np.float32))
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], np.array([-1, n_in], np.int64))
    graph = helper.make_graph([helper.make_node("Reshape", ["image", "shape"], ["flat"]),
                               helper.make_node("MatMul", ["flat", "w"], ["logits"])], "g", [x], [y], [w, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.reliability("bad onnx")
@pytest.mark.reliability("oversized model files")
def test_bad_onnx_files_are_refused_with_the_reason(tmp_path, trained_run):
    from core.inference import MAX_MODEL_BYTES, ModelError, load_predictor

    cases = {
        "notes.onnx": (b"this is a text file, not a graph\n" * 20, r"notes.onnx: not a loadable ONNX model"),
        "empty.onnx": (b"", r"empty.onnx: empty file"),
        "ckpt.onnx": ((trained_run / "model.safetensors").read_bytes(), r"ckpt.onnx: not a loadable ONNX model"),
    }
    for name, (blob, msg) in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ModelError, match=msg):
            load_predictor(tmp_path / name)
    with pytest.raises(ModelError, match="PyTorch checkpoint, not an ONNX model"):
        load_predictor(trained_run / "model.safetensors")
    wrong_in = _onnx_model([None, 3, 32, 32], [None, 10], tmp_path / "cifar.onnx")
    with pytest.raises(ModelError, match=r"cifar.onnx: input 'image' is tensor\(float\) .*takes float32 \[N,1,28,28\]"):
        load_predictor(wrong_in)
    wrong_out = _onnx_model([None, 1, 28, 28], [None, 5], tmp_path / "five.onnx")
    with pytest.raises(ModelError, match=r"five.onnx: output 'logits' .*returns logits \[N,10\]"):
        load_predictor(wrong_out)
    # Over the size limit: refused from its size alone (a sparse file: nothing is parsed or even read).
    huge = tmp_path / "huge.onnx"
    with open(huge, "wb") as f:
        f.truncate(MAX_MODEL_BYTES + 1)
    with pytest.raises(ModelError, match=r"huge.onnx: 64.0 MB is over the 64 MB limit"):
        load_predictor(huge)


@pytest.mark.reliability("canvas")
def test_canvas_edge_cases_give_no_digit_with_a_reason(shipped):
    from core.inference import predict_canvas

    cases = {
        "all transparent": (np.zeros((280, 280, 4), np.uint8), "canvas is empty"),
        "all ink": (np.full((280, 280, 4), 255, np.uint8), "covered in ink"),
        "all NaN": (np.full((280, 280, 4), np.nan, np.float32), "invalid (not a number)"),
        "NaN and inf": (np.where(np.eye(280, dtype=bool)[..., None], np.inf, np.nan).repeat(4, 2).astype(np.float32),
                        "invalid (not a number)"),
    }
    for name, (rgba, reason) in cases.items():
        out = predict_canvas(shipped, rgba)
        assert out["blank"] and out["digit"] is None and out["probs"] is None, name
        assert reason in out["reason"], (name, out["reason"])
    with pytest.raises(ValueError, match=r"expected a canvas image of shape \[H,W,4\]"):
        predict_canvas(shipped, np.zeros((5,), np.uint8))


@pytest.mark.reliability("32 threads")
def test_load_32_threads_share_one_session(mnist):
    from core.bench import load_test
    from core.inference import DEFAULT_MODEL, load_predictor

    pred = load_predictor(DEFAULT_MODEL)  # the one session the app shares between visitors
    threads, per_thread = 32, 200
    images = mnist.test_images[:threads * per_thread].numpy()
    solo = np.concatenate([pred.predict(images[i:i + 1]) for i in range(len(images))])  # single-threaded
    r = load_test(pred, images, threads, per_thread)
    assert r["errors"] == []
    expected = solo.reshape(threads, per_thread, 10)
    same = np.all(r["probs"] == expected, axis=2)
    assert same.all(), f"{(~same).sum()} of {same.size} predictions differ from the single-threaded result"
    summary = {k: r[k] for k in ("threads", "per_thread", "p50_ms", "p95_ms", "throughput", "wall_s")}
    summary.update(provider=pred.provider, model=pred.name)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "reliability-load.json").write_text(json.dumps(summary, indent=2))
    print(f"\nload: {threads} threads x {per_thread} predictions on one {pred.provider} session: "
          f"p50 {r['p50_ms']:.3f} ms, p95 {r['p95_ms']:.3f} ms, {r['throughput']:,.0f} predictions/s")
