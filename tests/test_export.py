"""ONNX export: graph contract, parity with torch on real digits, model card, variants, CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from core.checkpoint import load_checkpoint
from helpers import KILL_EXPORT, kill_while_writing, sha
from core.evaluate import TorchPredictor, evaluate
from core.export import ExportError, export_onnx, list_exported
from core.inference import load_predictor


@pytest.fixture(scope="module")
def exported(trained_run, mnist, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "mnist-test.onnx"
    card = export_onnx(trained_run, out, data=mnist, fp16=True, int8=True)
    return out, card


def test_graph_contract(exported):
    path, _ = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]  # dynamic batch
    assert out.name == "logits" and out.type.tensor_type.shape.dim[1].dim_value == 10
    props = {p.key: p.value for p in model.metadata_props}
    assert props["model_name"] == "mnist-test" and props["architecture"] == "fast"
    assert props["source_checkpoint"].endswith("model.safetensors") and props["training_date"].startswith("20")
    assert 0.9 < float(props["test_accuracy"]) <= 1.0


def test_parity_with_torch_on_real_digits(exported, trained_run, mnist):
    """Independent of the card: our own onnxruntime session vs the torch checkpoint."""
    path, card = exported
    x = (mnist.test_images[:2000].numpy().astype(np.float32) / 255)[:, None]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": x})[0]
    want = TorchPredictor(load_checkpoint(trained_run).model).logits(x)
    assert np.abs(got - want).max() <= 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()
    for n in (1, 37):  # the batch really is dynamic
        assert session.run(["logits"], {"image": x[:n]})[0].shape == (n, 10)
    p = card["parity"]
    assert p["passed"] and p["n"] == 10_000 and p["max_abs_dlogit"] <= 1e-4 and p["argmax_identical"]


def test_card_matches_the_file_and_evaluation(exported, trained_run, mnist):
    path, card = exported
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk == json.loads(json.dumps(card))
    assert card["size_bytes"] == path.stat().st_size and card["opset"] >= 18
    onnx_report = evaluate(load_predictor(path), mnist.test_images, mnist.test_labels)
    torch_report = evaluate(load_checkpoint(trained_run).model, mnist.test_images, mnist.test_labels)
    assert card["accuracy"] == pytest.approx(onnx_report["accuracy"], abs=1e-9)
    assert abs(onnx_report["accuracy"] - torch_report["accuracy"]) <= 1e-4  # evaluate() takes either
    assert card["data"]["test_size"] == 10_000
    assert card["latency"]["single_p50_ms"] > 0 and card["latency"]["batch_images_per_s"] > 0


def test_fp16_and_int8_variants(exported, mnist):
    path, card = exported
    kinds = {v["variant"]: v for v in card["variants"]}
    assert set(kinds) == {"fp16", "int8"}
    fp32_acc = card["accuracy"]
    for kind, v in kinds.items():
        vpath = path.with_name(v["file"])
        assert vpath.is_file() and v["size_bytes"] == vpath.stat().st_size < card["size_bytes"]
        pred = load_predictor(vpath)
        acc = evaluate(pred, mnist.test_images, mnist.test_labels)["accuracy"]
        assert acc == pytest.approx(v["accuracy"], abs=1e-9)
        assert acc >= fp32_acc - (0.002 if kind == "fp16" else 0.01), (kind, acc, fp32_acc)
        assert pred.metadata["variant"] == kind and pred.metadata["training_date"] == card["training_date"]
    assert kinds["fp16"]["vs_fp32"]["argmax_agree"] >= 0.998 * 10_000
    cards = list_exported(path.parent)
    assert [c["name"] for c in cards] == ["mnist-test", "mnist-test-fp16", "mnist-test-int8"]
    assert all(c["path"].endswith(".onnx") for c in cards)


def test_failed_parity_writes_nothing(trained_run, mnist, tmp_path, monkeypatch):
    """If the graph does not compute what the checkpoint does, the old file stays and no card appears."""
    import core.export as ex

    real = ex.to_onnx

    def drifted(model):
        bad = load_checkpoint(trained_run).model
        with torch.no_grad():
            bad.groups["head"][-1].bias.add_(1e-2)
        return real(bad)

    monkeypatch.setattr(ex, "to_onnx", drifted)
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous version")
    with pytest.raises(ExportError, match="parity check failed"):
        export_onnx(trained_run, out, data=mnist)
    assert out.read_bytes() == b"previous version"
    assert not out.with_suffix(".json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temp files left behind


def test_export_cli(trained_run, mnist_dir, tmp_path, capsys):
    from core.cli import main

    out = tmp_path / "cli.onnx"
    # the session run holds out no validation digits: no temperature to fit (tests/test_calibration.py fits one)
    assert main(["export", str(trained_run), "--out", str(out), "--data", str(mnist_dir), "--json",
                 "--no-calibrate"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    parity = next(line for line in lines if line.startswith("parity vs torch"))
    assert "10,000 test digits" in parity and parity.endswith("PASS")
    card = json.loads(lines[-1])
    assert card["parity"]["passed"] and card["file"] == "cli.onnx" and out.is_file()

    assert main(["export", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no such checkpoint" in err and len(err.splitlines()) == 1
    assert main(["export", str(trained_run), "--out", str(tmp_path / "x.txt"), "--data", str(mnist_dir)]) == 1
    assert ".onnx" in capsys.readouterr().err


@pytest.mark.reliability("kill mid-write")
def test_kill_during_an_export_write_leaves_the_previous_model_intact(trained_run, tmp_path, mnist_dir, shipped, mnist):
    from core.inference import DEFAULT_MODEL, load_predictor

    out = tmp_path / "mine.onnx"
    shutil.copy(DEFAULT_MODEL, out)
    shutil.copy(DEFAULT_MODEL.with_suffix(".json"), out.with_suffix(".json"))
    before = {p.name: sha(p) for p in tmp_path.iterdir()}
    partial = kill_while_writing(KILL_EXPORT, out, trained_run, mnist_dir)
    assert Path(partial).parent == tmp_path and Path(partial).name.startswith(".mine.onnx.")
    assert {p.name: sha(p) for p in tmp_path.iterdir() if not p.name.endswith(".tmp")} == before
    x = mnist.test_images[:200].numpy()
    assert np.array_equal(load_predictor(out, prefer_gpu=False).predict(x), shipped.predict(x))
