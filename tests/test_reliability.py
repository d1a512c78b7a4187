"""Issue 6: reliability and security. Bad input, faults, concurrent visitors, public deployment.

Every case the issue lists that can run on a CPU is here, even where another test file
touches it too: this file is the proof for the whole list (README, "Reliability").
The browser part (5 visitors drawing while a 6th trains) is test_reliability_browser.py.

Training here is tiny: a 2,000-digit slice of the real MNIST (14 steps an epoch).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

# The AppTest fixtures and helpers of the page tests: a 2,000-digit MNIST slice in IDX files, private
# session folders in tmp, and one AppTest per visitor.
from test_app_c1 import (TIMEOUT, _canvas_state, _job, _poll, _write_idx, app, assert_ok, button,  # noqa: F401
                         metric, sessions, small_mnist_dir, texts, widget)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
ABS_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.-]+/)+")  # "/some/dir/" inside a message


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _no_paths(text: str, *roots: Path) -> None:
    """A message shown to a visitor names no folder: no absolute path, no tmp or project root."""
    assert not ABS_PATH.search(text), f"a file-system path in a visitor message: {text!r}"
    for r in (ROOT, Path.home(), *roots):
        assert str(r) not in text, f"{r} in a visitor message: {text!r}"


def _small_data(mnist, n_train=2000, n_test=500):
    from core.data import MNISTData

    return MNISTData(mnist.train_images[:n_train].clone(), mnist.train_labels[:n_train].clone(),
                     mnist.test_images[:n_test].clone(), mnist.test_labels[:n_test].clone(), "dir", "slice")


@pytest.fixture(scope="module")
def tiny_run(mnist, tmp_path_factory) -> Path:
    """A real checkpoint: the fast CNN after one epoch on 2,000 digits (~90% test accuracy)."""
    from core.train import TrainConfig, train

    run = tmp_path_factory.mktemp("tiny-run")
    cfg = TrainConfig.preset("fast", epochs=1, lr=0.05, val_size=200, device="cpu")
    events = list(train(cfg, _small_data(mnist), run_dir=run))
    assert events[-1]["test_acc"] > 0.6
    return run


@pytest.fixture(scope="module")
def shipped():
    from core.inference import DEFAULT_MODEL, load_predictor

    return load_predictor(DEFAULT_MODEL, prefer_gpu=False)


# ============================================================== bad input: dataset files

@pytest.fixture
def idx_dir(mnist, tmp_path) -> Path:
    """A good IDX folder (real digits); tests break one file at a time."""
    d = tmp_path / "idx"
    d.mkdir()
    _write_idx(d / "train-images-idx3-ubyte.gz", mnist.train_images[:300].numpy())
    _write_idx(d / "train-labels-idx1-ubyte.gz", mnist.train_labels[:300].numpy())
    _write_idx(d / "t10k-images-idx3-ubyte.gz", mnist.test_images[:100].numpy())
    _write_idx(d / "t10k-labels-idx1-ubyte.gz", mnist.test_labels[:100].numpy())
    return d


def _raw(path: Path) -> bytes:
    import gzip

    return gzip.decompress(path.read_bytes())


def _break_truncated(d):
    p = d / "train-images-idx3-ubyte.gz"
    p.write_bytes(_raw(p)[:-1000])  # unpacked, and 1,000 bytes short
    p.rename(d / "train-images-idx3-ubyte")


def _break_magic(d):
    p = d / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(_raw(p))
    raw[0:4] = (0x00000803).to_bytes(4, "big")  # an image magic on a label file
    p.unlink()
    (d / "t10k-labels-idx1-ubyte").write_bytes(bytes(raw))


def _break_counts(d, mnist):
    (d / "train-labels-idx1-ubyte.gz").unlink()
    _write_idx(d / "train-labels-idx1-ubyte.gz", mnist.train_labels[:299].numpy())


def _break_empty(d):
    (d / "t10k-images-idx3-ubyte.gz").unlink()
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(b"")


def _break_partial(d):
    (d / "t10k-images-idx3-ubyte.gz").unlink()
    (d / "t10k-labels-idx1-ubyte.gz").unlink()


@pytest.mark.parametrize("case, expected", [
    ("truncated", r"train-images-idx3-ubyte: truncated: header promises \(300, 28, 28\)"),
    ("wrong magic", r"t10k-labels-idx1-ubyte: magic 0x00000803 is not a label file"),
    ("count mismatch", r"has 300 images but train-labels-idx1-ubyte.gz has 299 labels"),
    ("empty", r"t10k-images-idx3-ubyte.gz: file is empty"),
    ("partial folder", r"missing t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"),
])
def test_bad_dataset_files_give_specific_errors_and_stay_untouched(idx_dir, mnist, case, expected):
    from core.data import DataError, load_mnist

    {"truncated": _break_truncated, "wrong magic": _break_magic, "empty": _break_empty,
     "partial folder": _break_partial, "count mismatch": lambda d: _break_counts(d, mnist)}[case](idx_dir)
    before = {p.name: _sha(p) for p in idx_dir.iterdir()}
    with pytest.raises(DataError, match=expected):
        load_mnist(idx_dir)  # an explicit folder never falls back silently to another source
    assert {p.name: _sha(p) for p in idx_dir.iterdir()} == before  # read-only: nothing changed or added


def test_data_page_explains_a_broken_dataset_without_paths(app, monkeypatch, idx_dir):
    _break_partial(idx_dir)
    monkeypatch.setenv("MNIST_DIR", str(idx_dir))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT)
    at.switch_page("app_pages/data.py").run()
    assert not at.exception
    warning = "\n".join(w.value for w in at.warning)
    assert "No MNIST data is available" in warning and "missing t10k-images-idx3-ubyte" in warning
    _no_paths(warning, idx_dir)


# ============================================================== bad input: model files

def test_checkpoint_from_another_architecture_is_refused(tiny_run, tmp_path):
    from core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from core.models import ModelConfig

    fast = load_checkpoint(tiny_run).model
    other = tmp_path / "mislabelled"
    save_checkpoint(other, fast, ModelConfig("classic"), {}, {})  # fast's weights, a header saying classic
    with pytest.raises(CheckpointError, match="weights do not fit the 'classic' architecture"):
        load_checkpoint(other)


def test_tampered_checkpoint_is_refused(tiny_run, tmp_path):
    from core.checkpoint import CheckpointError, load_checkpoint

    good = tiny_run / "model.safetensors"
    blob = bytearray(good.read_bytes())
    header_len = int.from_bytes(blob[:8], "little")
    # 1) Numbers changed after saving (the header still parses): the stored checksum catches it.
    altered = bytearray(blob)
    altered[8 + header_len + 100] ^= 0x40
    (tmp_path / "altered.safetensors").write_bytes(bytes(altered))
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load_checkpoint(tmp_path / "altered.safetensors")
    # 2) Cut short, 3) a header that is not JSON.
    (tmp_path / "short.safetensors").write_bytes(bytes(blob[:len(blob) // 2]))
    with pytest.raises(CheckpointError, match="short.safetensors: (not a readable|corrupt)"):
        load_checkpoint(tmp_path / "short.safetensors")
    garbled = bytearray(blob)
    garbled[8:40] = b"\xff" * 32
    (tmp_path / "garbled.safetensors").write_bytes(bytes(garbled))
    with pytest.raises(CheckpointError, match="garbled.safetensors: not a readable safetensors"):
        load_checkpoint(tmp_path / "garbled.safetensors")
    assert load_checkpoint(good).model_config.name == "fast"  # the original still loads


class _Payload:
    """Unpickling this runs Path(marker).touch(): a harmless stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_payloads_are_never_executed(tmp_path, tiny_run):
    from core.checkpoint import CheckpointError, load_checkpoint
    from core.inference import ModelError, load_predictor

    marker = tmp_path / "PWNED"
    payload = pickle.dumps({"state_dict": _Payload(marker)})
    pickle.loads(payload)  # the payload is live: unpickling it does run code
    assert marker.exists()
    marker.unlink()

    torch_style = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload(marker)}, torch_style)  # a torch.save zip with the payload inside
    marker.unlink(missing_ok=True)
    disguised = tmp_path / "run" / "model.safetensors"  # same bytes, our file name
    disguised.parent.mkdir()
    shutil.copy(torch_style, disguised)
    for path in (torch_style, disguised, disguised.parent):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        assert "pickle" in str(e.value) or "not a readable safetensors" in str(e.value)
    for name, blob in (("evil.onnx", payload), ("evil2.onnx", torch_style.read_bytes())):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ModelError, match="this is a PyTorch checkpoint, not an ONNX model"):
            load_predictor(tmp_path / name)
    with pytest.raises(pickle.UnpicklingError):  # torch's own safe mode refuses it as well
        torch.load(torch_style, weights_only=True)
    assert not marker.exists(), "a pickle payload was executed"


def test_no_code_path_unpickles():
    """Static guard: no pickle loads in the app or engine, torch.load only with weights_only=True."""
    offenders = []
    for f in [*ROOT.glob("core/*.py"), *ROOT.glob("app_pages/*.py"), ROOT / "streamlit_app.py"]:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"pickle\.loads?\(|allow_pickle\s*=\s*True|joblib\.load|dill\.", code) or (
                    "torch.load(" in code and "weights_only=True" not in code):
                offenders.append(f"{f.name}:{i}: {line.strip()}")
    assert not offenders, offenders


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


def test_bad_onnx_files_are_refused_with_the_reason(tmp_path, tiny_run):
    from core.inference import MAX_MODEL_BYTES, ModelError, load_predictor

    cases = {
        "notes.onnx": (b"this is a text file, not a graph\n" * 20, r"notes.onnx: not a loadable ONNX model"),
        "empty.onnx": (b"", r"empty.onnx: empty file"),
        "ckpt.onnx": ((tiny_run / "model.safetensors").read_bytes(), r"ckpt.onnx: not a loadable ONNX model"),
    }
    for name, (blob, msg) in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ModelError, match=msg):
            load_predictor(tmp_path / name)
    with pytest.raises(ModelError, match="PyTorch checkpoint, not an ONNX model"):
        load_predictor(tiny_run / "model.safetensors")
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


def test_oversized_checkpoint_is_refused_before_reading(tmp_path):
    from core.checkpoint import MAX_CHECKPOINT_BYTES, CheckpointError, load_checkpoint

    huge = tmp_path / "model.safetensors"
    with open(huge, "wb") as f:
        f.truncate(MAX_CHECKPOINT_BYTES + 1)
    with pytest.raises(CheckpointError, match="over the 256 MB limit"):
        load_checkpoint(tmp_path)


# ============================================================== bad input: uploaded images

def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _photos(digit: np.ndarray) -> dict[str, bytes]:
    """One real test digit (uint8 28x28, white on black) in every form a visitor might upload."""
    big = np.kron(digit, np.ones((8, 8), np.uint8))  # 224x224
    zeros = np.zeros_like(big)
    return {
        "png": _encode(Image.fromarray(big)),
        "jpeg": _encode(Image.fromarray(255 - big), "JPEG"),  # dark ink on white paper
        "rgba": _encode(Image.fromarray(np.dstack([big, big, big, np.full_like(big, 255)]), "RGBA")),
        "palette": _encode(Image.fromarray(big).convert("P")),
        "16-bit": _encode(Image.fromarray(big.astype(np.uint16) * 257)),  # PNG mode I;16
        "16-bit paper": _encode(Image.fromarray((65535 - big.astype(np.uint16) * 200))),  # dark ink, light paper
        "alpha only": _encode(Image.fromarray(np.dstack([zeros, zeros, zeros, big]), "RGBA")),
    }


def test_uploaded_images_of_every_kind_are_read_correctly(shipped, mnist, tmp_path):
    from core.inference import predict_image

    wrong = []
    for i in range(4):
        digit, label = mnist.test_images[i].numpy(), int(mnist.test_labels[i])
        for kind, blob in _photos(digit).items():
            r = predict_image(shipped, blob)
            if r["blank"] or r["digit"] != label:
                wrong.append((i, kind, label, r["digit"], r["reason"]))
    assert not wrong, wrong
    # A JPEG saved as .png (or any wrong extension): read by content, not by name.
    digit = mnist.test_images[0].numpy()
    misnamed = tmp_path / "photo.png"
    misnamed.write_bytes(_photos(digit)["jpeg"])
    r = predict_image(shipped, misnamed)
    assert not r["blank"] and r["digit"] == int(mnist.test_labels[0]), r["reason"]


def test_bad_uploads_are_refused_without_decoding(monkeypatch, tmp_path):
    from PIL import ImageFile

    from core.preprocess import preprocess_photo

    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.size) or real_load(self))
    bomb = _encode(Image.new("1", (10_000, 10_000), 1))  # ~13 KB that inflates to 100 million pixels
    assert len(bomb) < 100_000
    with pytest.raises(ValueError, match=r"10,000x10,000 pixels is over the 40-megapixel limit"):
        preprocess_photo(bomb)
    assert (10_000, 10_000) not in decoded  # refused from the header: never decompressed
    with pytest.raises(ValueError, match=r"empty file \(0 bytes\)"):
        preprocess_photo(b"")
    with pytest.raises(ValueError, match="not a readable PNG/JPEG image"):
        preprocess_photo(b"%PDF-1.4 definitely not a picture")
    gif = tmp_path / "digit.png"  # a GIF with a .png name: only PNG and JPEG decoders are exposed
    Image.new("L", (28, 28)).save(gif, format="GIF")
    with pytest.raises(ValueError, match="digit.png: not a readable PNG/JPEG image"):
        preprocess_photo(gif)
    truncated = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200), np.uint8)))[:3000]
    with pytest.raises(ValueError, match="damaged or truncated"):
        preprocess_photo(truncated)


def _photo_uploader(at):
    return next(u for u in at.get("file_uploader") if u.key == "draw_photo")


def test_draw_page_reads_uploaded_photos_and_explains_bad_ones(app, mnist):
    at = app("draw")
    digit, label = mnist.test_images[1].numpy(), int(mnist.test_labels[1])
    for kind, blob in _photos(digit).items():
        _photo_uploader(at).set_value((f"{kind}.png", blob, "image/png")).run()
        assert_ok(at)
        assert metric(at, "Prediction") == str(label), kind
    bad = {"empty.png": (b"", "empty file"), "bomb.png": (_encode(Image.new("1", (10_000, 10_000), 1)),
                                                          "over the 40-megapixel limit"),
           "notes.jpg": (b"hello", "not a readable PNG/JPEG image")}
    for name, (blob, msg) in bad.items():
        _photo_uploader(at).set_value((name, blob, "image/png")).run()
        assert not at.exception, name
        errors = "\n".join(e.value for e in at.error)
        assert f"Could not read {name}" in errors and msg in errors, errors
        _no_paths(errors)
        assert metric(at, "Prediction") == "—"  # no guess from a file that could not be read


# ============================================================== bad input: canvas data

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


def test_draw_page_explains_an_all_ink_canvas(app):
    at = app("draw")
    at.session_state["canvas"] = _canvas_state(np.full((280, 280, 4), 255, np.uint8))
    at.run()
    assert_ok(at)
    assert metric(at, "Prediction") == "—"
    assert any("covered in ink" in i.value for i in at.info)


# ============================================================== bad input: names

NASTY = ["../../etc/passwd", "/etc/passwd", "/tmp/../../root/.ssh/id_rsa", "..", ".hidden", "C:\\Windows\\x",
         "a/../../b", "run\x00name", "x" * 500, "Mon modèle №1", "数字モデル", "\u202egnp.exe", "con",
         "--rm -rf", "~/.bashrc", "%2e%2e%2fetc"]


def test_names_never_escape_their_folder(tmp_path):
    from core.names import MAX_LEN, safe_name, unique_name

    base = (tmp_path / "runs").resolve()
    for raw in NASTY:
        try:
            name = safe_name(raw)
        except ValueError as e:  # nothing usable left: refused, with what is allowed
            assert "no letters or digits" in str(e) and raw in ("..",), (raw, e)
            continue
        assert "/" not in name and "\\" not in name and "\x00" not in name and ".." not in name, (raw, name)
        assert not name.startswith((".", "-")) and 1 <= len(name) <= MAX_LEN, (raw, name)
        assert (base / name).resolve().parent == base, (raw, name)
    assert safe_name("Mon modèle №1") == "Mon-modèle-No1" and safe_name("数字モデル") == "数字モデル"
    for raw in ("", "../..", "///", "\u202e"):
        with pytest.raises(ValueError, match="no letters or digits"):
            safe_name(raw)
    taken = {"etc-passwd"}
    assert unique_name("../../etc/passwd", taken) == "etc-passwd-2"  # in use: a new name, never an overwrite
    assert unique_name("x" * 500, {"x" * MAX_LEN}) == "x" * (MAX_LEN - 2) + "-2"


def test_train_page_keeps_nasty_run_names_inside_the_visitors_folder(app, sessions):
    at = app("train")
    widget(at, "number_input", "Stop after steps").set_value(1)
    made = []
    for raw in ("/etc/cron.d/evil", "数字 " + "x" * 200):
        widget(at, "text_input", "Run name").set_value(raw[:80])
        button(at, "Start training").click().run()
        assert_ok(at)
        _poll(at, lambda a: not _job(a).running, what=f"run {raw[:20]!r}")
        at.run()
        made.append(at.session_state["train_active"])
    assert made[0] == "etc-cron.d-evil" and made[1].startswith("数字-xxx") and len(made[1]) <= 48
    mine = (sessions / at.session_state["session_id"] / "runs").resolve()
    for name in made:
        assert (mine / name / "model.safetensors").is_file()
    files = [p.resolve() for p in sessions.rglob("*") if p.is_file()]
    assert files and all(mine in p.parents for p in files), files
    assert not Path("/etc/cron.d/evil").exists()


# ============================================================== bad input: hyperparameters

@pytest.mark.parametrize("field, value, allowed", [
    ("lr", 0.0, "[1e-06, 10]"), ("lr", 1e6, "[1e-06, 10]"), ("lr", float("nan"), "[1e-06, 10]"),
    ("batch_size", 0, "[1, 8192]"), ("batch_size", 10**6, "[1, 8192]"), ("epochs", 0, "[1, 100000]"),
])
def test_bad_hyperparameters_are_refused_up_front(mnist, tmp_path, field, value, allowed):
    from core.train import TrainConfig, train

    cfg = TrainConfig.preset("fast", **{field: value})
    with pytest.raises(ValueError, match=re.escape(f"{field} must be in {allowed}, got {value!r}")):
        next(train(cfg, mnist, run_dir=tmp_path / "run"))  # before the first event: no work, no files
    assert not (tmp_path / "run").exists()


def test_a_step_that_cannot_fit_in_memory_is_refused_up_front(mnist, tmp_path, monkeypatch):
    import core.train as T

    model = T.build_model("accurate")
    need = T.step_memory_bytes(model, 8192)
    assert need > 8 * T.step_memory_bytes(model, 512) > 0  # grows with the batch
    with pytest.raises(ValueError, match=r"batch_size 8192 needs about .* GB per step but only 0.5 GB is free on "
                                         r"cpu; batch_size must be in \[1, \d+\] here") as e:
        T.check_memory(model, T.TrainConfig.preset("accurate", batch_size=8192), torch.device("cpu"), free=2**29)
    fit = int(re.search(r"\[1, (\d+)\]", str(e.value)).group(1))
    T.check_memory(model, T.TrainConfig.preset("accurate", batch_size=fit), torch.device("cpu"), free=2**29)  # fits
    monkeypatch.setattr(T, "free_memory_bytes", lambda device: 2**27)  # a box with 128 MB free
    with pytest.raises(ValueError, match="batch_size 8192 needs about"):
        next(T.train(T.TrainConfig.preset("fast", batch_size=8192), mnist, run_dir=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_train_page_refuses_a_batch_that_does_not_fit(app, monkeypatch):
    import core.train as T

    monkeypatch.setattr(T, "free_memory_bytes", lambda device: 2**27)
    at = app("train")
    lr = widget(at, "number_input", "Learning rate")
    batch = widget(at, "number_input", "Batch size")
    assert (lr.min, lr.max) == T.LIMITS["lr"] and (batch.min, batch.max) == T.LIMITS["batch_size"]
    batch.set_value(8192)
    button(at, "Start training").click().run()
    assert not at.exception
    err = "\n".join(e.value for e in at.error)
    assert "Cannot start: batch_size 8192 needs about" in err and "batch_size must be in [1," in err
    assert "train_active" not in at.session_state  # nothing started


# ============================================================== faults: stop, divergence, OOM

def _train_small(cfg_kw, mnist, run):
    """The fast CNN on 2,000 real digits (14 steps an epoch), checkpointing into run."""
    from core.train import TrainConfig, train

    cfg = TrainConfig.preset("fast", lr=0.05, val_size=200, device="cpu", **cfg_kw)
    return train(cfg, _small_data(mnist), run_dir=run)


def test_stop_mid_epoch_keeps_the_last_completed_checkpoint(mnist, tmp_path):
    from core.checkpoint import load_checkpoint

    run = tmp_path / "run"
    gen = _train_small({"epochs": 5}, mnist, run)
    saved = None
    for ev in gen:
        if ev["event"] == "epoch":
            saved = (run / "model.safetensors").read_bytes()
        if saved is not None and ev["event"] == "step" and ev["epoch"] == 2 and ev["step"] >= 14 + 5:
            break  # the visitor clicks Stop, five steps into epoch 2
    gen.close()
    assert (run / "model.safetensors").read_bytes() == saved
    ckpt = load_checkpoint(run)
    assert ckpt.metrics["epoch"] == 1 and ckpt.metrics["val_acc"] > 0.5
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_train_page_says_the_last_checkpoint_survives_a_stop(app, sessions):
    from core.checkpoint import load_checkpoint

    at = app("train")
    widget(at, "number_input", "Epochs").set_value(50)
    widget(at, "text_input", "Run name").set_value("stopme")
    button(at, "Start training").click().run()
    _poll(at, lambda a: _job(a).last("epoch") is not None, what="the first epoch")
    button(at, "Stop").click().run()
    _poll(at, lambda a: not _job(a).running, what="the stop")
    at.run()
    assert_ok(at)
    warning = "\n".join(w.value for w in at.warning)
    assert "The last completed checkpoint survives" in warning
    epoch = _job(at).last("epoch")["epoch"]
    assert load_checkpoint(sessions / at.session_state["session_id"] / "runs" / "stopme").metrics["epoch"] == epoch


def _fail_after(monkeypatch, calls: int, exc: BaseException | None):
    """From the calls-th training forward pass on, return NaN logits (exc None) or raise exc."""
    from core.models import MNISTModel

    real = MNISTModel.forward
    count = {"n": 0}

    def forward(self, x):
        if self.training:
            count["n"] += 1
            if count["n"] >= calls:
                if exc is not None:
                    raise exc
                return real(self, x) * float("nan")
        return real(self, x)

    monkeypatch.setattr(MNISTModel, "forward", forward)


def test_divergence_stops_with_an_explanation_and_keeps_the_good_checkpoint(mnist, tmp_path, monkeypatch):
    from core.checkpoint import load_checkpoint
    from core.train import TrainingDiverged

    _fail_after(monkeypatch, 14 + 3, None)  # epoch 1 is 14 steps; NaN from step 17 on
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as e:
        for ev in _train_small({"epochs": 3}, mnist, run):
            if ev["event"] == "epoch":
                good = (run / "model.safetensors").read_bytes()
    msg = str(e.value)
    assert "loss became nan at step 17 (epoch 2)" in msg and "try a smaller one" in msg
    assert "The last good checkpoint is kept" in msg and e.value.checkpoint == str(run / "model.safetensors")
    assert (run / "model.safetensors").read_bytes() == good
    ckpt = load_checkpoint(run)
    assert ckpt.metrics["epoch"] == 1 and all(torch.isfinite(p).all() for p in ckpt.model.parameters())


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")])
def test_out_of_memory_is_explained_and_keeps_the_checkpoint(mnist, tmp_path, monkeypatch, error):
    from core.checkpoint import load_checkpoint
    from core.train import TrainingOutOfMemory, oom_message

    _fail_after(monkeypatch, 14 + 2, error)
    run = tmp_path / "run"
    with pytest.raises(TrainingOutOfMemory) as e:
        list(_train_small({"epochs": 3}, mnist, run))
    msg = str(e.value)
    assert "out of memory" in msg and "try a smaller batch size (64 or less)" in msg, msg
    assert "The last good checkpoint is kept" in msg and load_checkpoint(run).metrics["epoch"] == 1
    gpu = oom_message(torch.device("cuda"), 512)
    assert "GPU" in gpu and "256 or less" in gpu and "device: cpu" in gpu


def test_train_page_shows_the_out_of_memory_advice(app, monkeypatch):
    _fail_after(monkeypatch, 3, torch.cuda.OutOfMemoryError("CUDA out of memory."))
    at = app("train")
    button(at, "Start training").click().run()
    _poll(at, lambda a: not _job(a).running, what="the failing run")
    at.run()
    assert not at.exception
    err = "\n".join(e.value for e in at.error)
    assert "Training stopped: out of memory" in err and "smaller batch size (64 or less)" in err, err
    _no_paths(err)


# ============================================================== faults: killed mid-write

_SLOW_WRITER = r"""
import os, sys, time
from pathlib import Path
import safetensors.torch

def slow(blob, path):
    # Half the bytes, on disk for real, then wait to be killed.
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 2]); f.flush(); os.fsync(f.fileno())
        print("WRITING", path, flush=True)
        time.sleep(120)
        f.write(blob[len(blob) // 2:])
"""

_KILL_CHECKPOINT = _SLOW_WRITER + r"""
import core.checkpoint as ck
from core.models import ModelConfig, build_model
ck.save_file = lambda state, path, metadata=None: slow(safetensors.torch.save(state, metadata=metadata), path)
import torch; torch.manual_seed(2)
ck.save_checkpoint(sys.argv[1], build_model("fast"), ModelConfig("fast"), {}, {"version": 2})
"""

_KILL_EXPORT = _SLOW_WRITER + r"""
Path.write_bytes = lambda self, blob: slow(blob, self)
from core.data import load_mnist
from core.export import export_onnx
export_onnx(sys.argv[2], sys.argv[1], data=load_mnist(sys.argv[3]))
"""


def _kill_while_writing(script: str, *args, timeout: float = 180) -> str:
    """Run script in a fresh interpreter; SIGKILL it once it is half-way through a write."""
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + timeout
        line = ""
        while not line.startswith("WRITING"):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, f"writer exited early: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "writer never started writing"
        partial = Path(line.split(" ", 1)[1].strip())
        assert partial.exists() and partial.stat().st_size > 0  # really mid-write
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        return str(partial)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_kill_during_a_checkpoint_write_leaves_the_previous_one_intact(tiny_run, tmp_path):
    from core.checkpoint import load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = {p.name: _sha(p) for p in run.iterdir()}
    partial = _kill_while_writing(_KILL_CHECKPOINT, run)
    assert Path(partial).parent == run and Path(partial).name.startswith(".model.safetensors.")
    assert {p.name: _sha(p) for p in run.iterdir() if not p.name.endswith(".tmp")} == before
    ckpt = load_checkpoint(run)
    assert "version" not in ckpt.metrics and ckpt.metrics["epoch"] == 1  # still the previous checkpoint


def test_kill_during_an_export_write_leaves_the_previous_model_intact(tiny_run, tmp_path, mnist_dir, shipped, mnist):
    from core.inference import DEFAULT_MODEL, load_predictor

    out = tmp_path / "mine.onnx"
    shutil.copy(DEFAULT_MODEL, out)
    shutil.copy(DEFAULT_MODEL.with_suffix(".json"), out.with_suffix(".json"))
    before = {p.name: _sha(p) for p in tmp_path.iterdir()}
    partial = _kill_while_writing(_KILL_EXPORT, out, tiny_run, mnist_dir)
    assert Path(partial).parent == tmp_path and Path(partial).name.startswith(".mine.onnx.")
    assert {p.name: _sha(p) for p in tmp_path.iterdir() if not p.name.endswith(".tmp")} == before
    x = mnist.test_images[:200].numpy()
    assert np.array_equal(load_predictor(out, prefer_gpu=False).predict(x), shipped.predict(x))


_WRITE_LOOP = r"""
import sys, torch
from core.checkpoint import save_checkpoint
from core.models import ModelConfig, build_model
model = build_model("fast")
for v in range(1, 10**6):
    with torch.no_grad():
        model.groups["head"][1].bias.fill_(v)
    save_checkpoint(sys.argv[1], model, ModelConfig("fast"), {}, {"version": v})
    print(v, flush=True)
"""


def test_kill_at_random_moments_in_a_loop_of_checkpoint_writes(tmp_path):
    from core.checkpoint import load_checkpoint

    rng = np.random.default_rng(6)
    run = tmp_path / "run"
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITE_LOOP, str(run)], cwd=ROOT, stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        first = proc.stdout.readline()  # torch is imported and one checkpoint exists
        assert first.strip().isdigit()
        time.sleep(float(rng.uniform(0.05, 0.6)))
        os.kill(proc.pid, signal.SIGKILL)
        printed = [int(first)] + [int(v) for v in proc.stdout.read().split()]
        proc.wait(30)
        ckpt = load_checkpoint(run)  # whatever the moment, a complete checkpoint is there
        v = ckpt.metrics["version"]
        assert v in (printed[-1], printed[-1] + 1), (v, printed[-1])  # the last finished (or just-renamed) one
        assert float(ckpt.model.groups["head"][1].bias[0].detach()) == v  # weights and header from the same save
        assert json.loads((run / "run.json").read_text())["metrics"]["version"] in (v - 1, v)


# ============================================================== faults: no GPU, missing shipped model

def test_no_gpu_means_cpu_everywhere_with_a_notice(app, monkeypatch, mnist):
    import core.inference
    from core.device import DeviceError, resolve_device
    from core.inference import choose_providers, load_predictor
    from core.train import TrainConfig, train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what torch says on a box without a GPU
    monkeypatch.setattr(core.inference, "gpu_present", lambda: False)  # and the driver, for onnxruntime
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(DeviceError, match="CUDA was requested but no GPU is available here; use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="no GPU"):
        next(train(TrainConfig.preset("fast", device="cuda"), _small_data(mnist)))
    assert choose_providers(gpu=False) == ["CPUExecutionProvider"]
    assert load_predictor(prefer_gpu=True).provider == "CPUExecutionProvider"
    for page in ("draw", "train"):
        at = app(page)
        notice = "\n".join(c.value for c in at.caption)
        assert "CPU (no GPU found; everything runs on the CPU)" in notice, page
    assert widget(at, "selectbox", "Device").options == ["auto", "cpu"]


def test_missing_or_corrupt_shipped_model_breaks_only_draw(app, monkeypatch, tmp_path):
    import core.inference

    shipped_dir = tmp_path / "exported"
    shipped_dir.mkdir()
    (shipped_dir / "mnist-accurate.onnx").write_bytes(b"\x08\x07truncated protobuf" * 3)  # corrupt
    monkeypatch.setattr(core.inference, "EXPORT_DIR", shipped_dir)
    monkeypatch.setattr(core.inference, "DEFAULT_MODEL", shipped_dir / "mnist-accurate.onnx")
    at = app("draw", check=False)
    assert not at.exception
    err = "\n".join(e.value for e in at.error)
    assert "This model can't be used: mnist-accurate.onnx: not a loadable ONNX model" in err, err
    _no_paths(err, tmp_path)
    assert widget(at, "slider", "Stroke width")  # the page itself still works
    for page in ("home", "data", "train"):
        at.switch_page(f"app_pages/{page}.py").run()
        assert_ok(at)
    (shipped_dir / "mnist-accurate.onnx").unlink()  # now missing altogether
    at.switch_page("app_pages/draw.py").run()
    assert not at.exception
    assert any("No model to read drawings with" in w.value for w in at.warning)


# ============================================================== concurrency

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


def test_visitors_never_see_each_others_runs_drawings_or_exports(app, sessions, monkeypatch, mnist, tmp_path):
    import core.data
    import core.samples
    from core.inference import DEFAULT_MODEL
    from core.preprocess import digit_to_canvas

    monkeypatch.setattr(core.data, "DEFAULT_DATA_DIR", tmp_path / "data")  # SampleStore's default root
    a = app("train")
    widget(a, "number_input", "Stop after steps").set_value(2)
    widget(a, "text_input", "Run name").set_value("alice-run")
    button(a, "Start training").click().run()
    _poll(a, lambda x: not _job(x).running, what="alice's run")
    a.run()
    # Alice exports (a model card + .onnx in her exports folder) and saves a drawing.
    exports = sessions / a.session_state["session_id"] / "exports"
    exports.mkdir(parents=True)
    shutil.copy(DEFAULT_MODEL, exports / "alice-model.onnx")
    card = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    (exports / "alice-model.json").write_text(json.dumps({**card, "name": "alice-model", "file": "alice-model.onnx"}))
    a.switch_page("app_pages/draw.py").run()
    assert any("alice-model" in o for o in widget(a, "selectbox", "Model").options)
    a.session_state["canvas"] = _canvas_state(digit_to_canvas(mnist.test_images[0].numpy()))
    a.run()
    widget(a, "button_group", "Label").set_value(str(int(mnist.test_labels[0])))
    button(a, "Save sample").click().run()
    assert_ok(a)
    assert len(a.session_state["samples"]) == 1

    b = app("train")
    assert "No runs yet" in texts(b) and not b.dataframe
    b.switch_page("app_pages/draw.py").run()
    assert not any("alice" in o for o in widget(b, "selectbox", "Model").options)
    assert len(b.session_state["samples"]) == 0 and "Your samples per digit" not in texts(b)
    for page in ("evaluate", "export", "finetune", "insights"):
        b.switch_page(f"app_pages/{page}.py").run()
        assert not b.exception, page
        assert "alice" not in texts(b) + json.dumps([s.options for s in b.selectbox], default=str), page
    assert b.session_state["session_id"] != a.session_state["session_id"]
    assert not (tmp_path / "data" / "samples").exists()  # nothing shared on disk without the presenter setting


def test_only_the_presenter_setting_shares_drawings(app, monkeypatch, mnist, tmp_path):
    import core.data
    import core.samples
    from core.preprocess import digit_to_canvas

    monkeypatch.setattr(core.data, "DEFAULT_DATA_DIR", tmp_path / "data")  # SampleStore's default root
    monkeypatch.setenv("MNIST_LAB_PRESENTER", "1")
    a = app("draw")
    toggle = next(t for t in a.get("toggle") if "disk" in t.label)
    assert toggle.value is False
    a.session_state["canvas"] = _canvas_state(digit_to_canvas(mnist.test_images[0].numpy()))
    a.run()
    widget(a, "button_group", "Label").set_value(str(int(mnist.test_labels[0])))
    button(a, "Save sample").click().run()
    assert_ok(a)
    assert len(a.session_state["samples"]) == 1  # saved for this visitor ...
    assert not (tmp_path / "data" / "samples").exists()  # ... and off the shared disk: private
    next(t for t in a.get("toggle") if "disk" in t.label).set_value(True).run()
    button(a, "Save sample").click().run()
    assert_ok(a)
    assert len(core.samples.SampleStore()) == 1  # on: written where every visitor's session can read it
    assert len(list((tmp_path / "data" / "samples").rglob("*.png"))) == 1


# ============================================================== public deployment

def test_streamlit_config_is_fit_for_a_public_deployment():
    import tomllib

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["maxUploadSize"] == 20  # MB (README): digits and sample zips, not arbitrary files
    assert cfg["server"]["maxMessageSize"] == 50  # MB (README)
    assert cfg["client"]["showErrorDetails"] == "none"  # no tracebacks (paths, code) for visitors
    assert cfg["client"]["toolbarMode"] == "minimal"
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["theme"]["base"] in ("dark", "light") and re.fullmatch(r"#[0-9A-Fa-f]{6}", cfg["theme"]["primaryColor"])
    assert cfg["logger"]["level"] in ("warning", "error")


def test_public_error_strips_paths():
    from app_pages.common import public_error

    msg = public_error(RuntimeError("/work/shared/mnist: missing t10k-images; kept: /tmp/s/ab12/runs/x/model."
                                    "safetensors. See https://example.com/a/b or C:\\Users\\bob\\m.onnx"))
    assert msg == ("mnist: missing t10k-images; kept: model.safetensors. See https://example.com/a/b or m.onnx")


def test_the_app_writes_only_inside_its_data_folders(app, sessions, mnist, tmp_path):
    """An audit hook sees every file the process opens for writing, renames or deletes while a
    visitor trains, draws and saves a sample: all of it must land in the visitor's folder
    (here under tmp) or the system temp dir. Nothing in the project, nothing elsewhere."""
    import tempfile

    from core.preprocess import digit_to_canvas

    log: list[tuple[str, str]] = []
    state = {"on": True}

    def hook(event, args):
        if not state["on"]:
            return
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing:
                log.append((event, os.fsdecode(args[0])))
        elif event in ("os.rename", "os.replace", "os.remove", "os.unlink", "os.rmdir", "os.mkdir", "shutil.rmtree",
                       "os.truncate", "os.chmod"):
            for a in args[:2]:
                if isinstance(a, (str, bytes, os.PathLike)):
                    log.append((event, os.fsdecode(a)))

    sys.addaudithook(hook)  # hooks cannot be removed; state["on"] turns it off
    try:
        at = app("train")
        widget(at, "number_input", "Stop after steps").set_value(2)
        button(at, "Start training").click().run()
        _poll(at, lambda x: not _job(x).running, what="the audited run")
        at.run()
        at.switch_page("app_pages/draw.py").run()
        at.session_state["canvas"] = _canvas_state(digit_to_canvas(mnist.test_images[3].numpy()))
        at.run()
        widget(at, "button_group", "Label").set_value(str(int(mnist.test_labels[3])))
        button(at, "Save sample").click().run()
        assert_ok(at)
    finally:
        state["on"] = False
    allowed = [Path(tempfile.gettempdir()).resolve(), tmp_path.resolve(), Path("/dev")]
    outside = sorted({(e, p) for e, p in log
                      if not any(r == Path(p).resolve() or r in Path(p).resolve().parents for r in allowed)})
    assert log, "the audit hook saw nothing: the test would prove nothing"
    assert any(sessions.resolve() in Path(p).resolve().parents for _, p in log)  # the run really was written
    assert not outside, outside


def test_logs_are_useful_and_quiet(mnist, tmp_path, capfd, caplog, monkeypatch):
    from core.inference import DEFAULT_MODEL, load_predictor, predict_canvas
    from core.preprocess import digit_to_canvas
    from core.train import TrainConfig, TrainingDiverged, train

    capfd.readouterr()
    pred = load_predictor(DEFAULT_MODEL, prefer_gpu=True)  # provider choice, warm-up: silent
    for i in range(5):
        predict_canvas(pred, digit_to_canvas(mnist.test_images[i].numpy()))
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)

    caplog.set_level(logging.INFO, logger="core")
    list(train(TrainConfig.preset("fast", epochs=1, lr=0.05, val_size=200, device="cpu"), _small_data(mnist),
               run_dir=tmp_path / "run"))
    records = [r for r in caplog.records if r.name.startswith("core")]
    assert len(records) == 2, [r.getMessage() for r in records]  # README: start and result, not every step
    assert "training fast on cpu" in records[0].getMessage() and "test accuracy" in records[1].getMessage()
    caplog.clear()
    _fail_after(monkeypatch, 3, None)
    with pytest.raises(TrainingDiverged):
        list(train(TrainConfig.preset("fast", epochs=1, lr=0.05, val_size=200, device="cpu"), _small_data(mnist)))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("core")]
    assert len(warnings) == 1 and "diverged" in warnings[0].getMessage()
