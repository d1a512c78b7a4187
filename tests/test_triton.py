"""Triton export: config.pbtxt parses with Triton's own ModelConfig protobuf (from the tritonclient
package) and agrees with the ONNX graph it sits next to."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from core.data import MNISTData
from core.export import ExportError, triton_config, write_triton
from core.inference import EXPORT_DIR
from core.train import TrainConfig, train

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}


@pytest.fixture(scope="module")
def model_config_pb2():
    """tritonclient's generated ModelConfig module. Loaded from its file because importing the
    tritonclient.grpc package also needs grpcio (a client transport this test does not use)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None:
        pytest.skip("tritonclient is not installed (pip install -r requirements.txt)")
    path = Path(spec.origin).parent / "grpc" / "model_config_pb2.py"
    mod_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def _check_folder(folder: Path, src: Path, pb2) -> None:
    config = text_format.Parse((folder / "config.pbtxt").read_text(), pb2.ModelConfig())
    assert config.name == folder.name
    assert config.platform == "onnxruntime_onnx" and config.backend == "onnxruntime"
    assert config.max_batch_size > 0 and config.HasField("dynamic_batching")
    blob = (folder / "1" / "model.onnx").read_bytes()
    assert blob == src.read_bytes()  # Triton serves the very file the app uses
    graph = onnx.load_from_string(blob).graph
    for declared, actual in ((config.input, graph.input), (config.output, graph.output)):
        assert [d.name for d in declared] == [a.name for a in actual]
        for d, a in zip(declared, actual):
            t = a.type.tensor_type
            assert pb2.DataType.Name(d.data_type) == ONNX_TO_TRITON[t.elem_type]
            assert t.shape.dim[0].dim_param and not t.shape.dim[0].HasField("dim_value")  # dynamic batch
            assert list(d.dims) == [x.dim_value for x in t.shape.dim[1:]]
    assert [(i.name, list(i.dims)) for i in config.input] == [("image", [1, 28, 28])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [10])]
    assert all(i.data_type == pb2.TYPE_FP32 for i in list(config.input) + list(config.output))
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    for n in (1, 37, config.max_batch_size):  # any batch up to what Triton may send
        x = np.random.default_rng(n).random((n, 1, 28, 28), dtype=np.float32)
        assert sess.run(["logits"], {"image": x})[0].shape == (n, 10)


@pytest.mark.parametrize("name", ["mnist-accurate", "mnist-accurate-fp16", "mnist-accurate-int8", "mnist-fast"])
def test_shipped_models_as_triton_repositories(name, tmp_path, model_config_pb2):
    src = EXPORT_DIR / f"{name}.onnx"
    folder = write_triton(src, tmp_path)
    assert folder == tmp_path / name
    _check_folder(folder, src, model_config_pb2)


def test_fixed_batch_graph_is_refused(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 28, 28])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g", [x], [y])
    with pytest.raises(ExportError, match="dynamic first"):
        triton_config(helper.make_model(graph), "fixed")


def test_cli_export_with_triton(mnist, mnist_dir, tmp_path, capsys, model_config_pb2):
    from core.cli import main

    small = MNISTData(mnist.train_images[:6000], mnist.train_labels[:6000], mnist.test_images,
                      mnist.test_labels, mnist.source, "first 6,000 training digits")
    run = tmp_path / "run"
    cfg = TrainConfig.preset("fast", max_steps=30, batch_size=64, val_size=500, device="cpu")
    list(train(cfg, small, run_dir=run))
    out, repo = tmp_path / "tiny.onnx", tmp_path / "repo"
    assert main(["export", str(run), "--out", str(out), "--fp16", "--triton", str(repo), "--data", str(mnist_dir),
                 "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert sum(line.startswith("triton: ") for line in lines) == 2
    assert json.loads(lines[-1])["triton"] == [str(repo / "tiny"), str(repo / "tiny-fp16")]
    _check_folder(repo / "tiny", out, model_config_pb2)
    _check_folder(repo / "tiny-fp16", out.with_name("tiny-fp16.onnx"), model_config_pb2)
