"""Export a checkpoint to ONNX, prove it computes the same thing, and describe it.

    card = export_onnx("runs/accurate", "exported/mnist-accurate.onnx", data=load_mnist())

The graph takes `image` float32 [N,1,28,28] in [0,1] (white ink on black; the
normalisation is inside) and returns `logits` [N,10], with a dynamic batch. It
is written only after onnx.checker passes and onnxruntime's logits match
torch's on >= 1,000 real test digits (max |dlogit| <= 1e-4, identical argmax).
A model card (same stem, .json) records the parity check, the test accuracy
measured through onnxruntime, size, latency, and any fp16/int8 variants.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import Checkpoint, load_checkpoint
from .files import atomic_write, atomic_write_text
from .data import PROJECT_ROOT, MNISTData, load_mnist
from .calibration import CalibrationError, calibrate as calibrate_model, nll
from .evaluate import TorchPredictor, expected_calibration_error
from .inference import (INPUT_NAME, OUTPUT_NAME, OnnxPredictor, cpu_threads, load_predictor, read_card,
                        softmax)
from .models import count_parameters

OPSET = 18
PARITY_TOL = 1e-4  # max |logit difference| allowed between torch and onnxruntime (fp32)
PARITY_MIN = 1000  # real test digits the parity check needs at least
CARD_FORMAT = "mnist-lab-card/1"
CALIBRATION_DIGITS = 512  # training digits for int8 calibration (never test digits)
ECE_BINS = 15  # equal-width confidence bins, as in core.evaluate and the calibration literature


class ExportError(ValueError):
    """The export failed a check (parity, onnx.checker) or its inputs are unusable."""


# ------------------------------------------------------------------ helpers

def _quiet():
    """The exporters and quantizer print progress; the CLI prints its own lines."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {cpu_threads()} cores"


def to_onnx(model: torch.nn.Module):
    """torch model -> onnx.ModelProto (opset 18, dynamic batch), via the torch.export-based exporter."""
    # Contiguous weights: a model fresh from training is channels_last, which torch.export traces
    # less reliably (fast's conv -> max-pool fails with a batch-1 example); the graph is the same.
    model = copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format).eval()
    example = torch.rand(2, 1, 28, 28)  # batch 2: a batch of 1 could be specialised into the graph
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=OPSET,
                dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 20)},), verbose=False)
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; all mean "cannot export"
        raise ExportError(f"torch.onnx.export failed: {str(e).splitlines()[0][:300]}") from e
    proto = program.model_proto
    return proto


def _check(proto) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"onnx.checker rejected the graph: {str(e).splitlines()[0][:300]}") from e


def _set_metadata(proto, props: dict) -> None:
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, str(v)


def _session_from_bytes(blob: bytes, name: Path) -> OnnxPredictor:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = cpu_threads()  # bulk work here: all cores
    session = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
    return OnnxPredictor(session, name, batch_size=2000)


def latency(predictor, images: np.ndarray, runs: int = 500, batch: int = 1000) -> dict:
    """Single-image p50/p95 (ms) and batch throughput (images/s) for one predictor."""
    one = images[:1]
    for _ in range(50):
        predictor.logits(one)
    times = np.empty(runs)
    for i in range(runs):
        t = time.perf_counter()
        predictor.logits(one)
        times[i] = time.perf_counter() - t
    xb = images[:batch]
    predictor.logits(xb)
    bt = []
    for _ in range(3):
        t = time.perf_counter()
        predictor.logits(xb)
        bt.append(time.perf_counter() - t)
    return {"single_p50_ms": float(np.median(times) * 1e3), "single_p95_ms": float(np.percentile(times, 95) * 1e3),
            "batch": int(len(xb)), "batch_images_per_s": float(len(xb) / min(bt)),
            "provider": predictor.provider, "machine": machine()}


def _write_bytes(path: Path, blob: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))


def _write_card(path: Path, card: dict) -> None:
    atomic_write_text(path, json.dumps(card, indent=2))


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _float_images(images: torch.Tensor) -> np.ndarray:
    return (images.numpy().astype(np.float32) * np.float32(1 / 255))[:, None]


def _quality(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Test ECE (ECE_BINS equal-width bins, core.evaluate's) and mean NLL of softmax(logits)."""
    probs = softmax(logits)
    ece, _ = expected_calibration_error(probs, labels, bins=ECE_BINS)
    return {"ece": ece, "nll": nll(logits, labels)}


def _parity(a: np.ndarray, b: np.ndarray, tol: float | None) -> dict:
    d = float(np.abs(a - b).max()) if len(a) else 0.0
    agree = int((a.argmax(1) == b.argmax(1)).sum())
    out = {"n": int(len(a)), "max_abs_dlogit": d, "argmax_agree": agree, "argmax_identical": agree == len(a)}
    if tol is not None:
        out.update(tolerance=tol, passed=bool(d <= tol and agree == len(a)))
    return out


# ------------------------------------------------------------------ variants

def to_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and math, float32 input/output (so callers need not change)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet():
        proto = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    atomic_write(dst, lambda tmp: onnx.save(proto, tmp))


def to_int8(src: Path, dst: Path, calibration: np.ndarray) -> None:
    """Static QDQ int8 (per-channel weights, uint8 activations), calibrated on real training digits.
    calibration: float32 [N,1,28,28]."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{INPUT_NAME: calibration[i:i + 64]} for i in range(0, len(calibration), 64)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp, _quiet():
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        atomic_write(dst, lambda t: quantize_static(str(pre), t, Reader(), quant_format=QuantFormat.QDQ,
                                                    per_channel=True, activation_type=QuantType.QUInt8,
                                                    weight_type=QuantType.QInt8))


# ------------------------------------------------------------------ export

def load_source(path: str | os.PathLike) -> Checkpoint:
    """What to export: a run folder or model.safetensors, or an .onnx file this project exported.

    For an .onnx file the weights are rebuilt from its initializers and checked against
    onnxruntime (core.insights.checkpoint_for), and its card supplies the training config (so
    calibration finds the same validation split), the metrics and the original checkpoint's
    name. That is how the shipped models, whose checkpoints are not in the repository, are
    re-exported with calibration."""
    path = Path(path)
    if path.suffix != ".onnx":
        return load_checkpoint(path, "cpu")
    from .insights import InsightError, checkpoint_for

    try:
        ckpt = checkpoint_for(path, "cpu")
    except InsightError as e:
        raise ExportError(str(e)) from None
    card = read_card(path) or {}
    ckpt.train_config = dict(card.get("train_config") or {})
    ckpt.metrics = {**(card.get("checkpoint_metrics") or {}), **ckpt.metrics,
                    "trained_at": card.get("training_date"), "source_checkpoint": card.get("source_checkpoint"),
                    "weights_rebuilt_from": f"{path.name} (ONNX initializers, sha256 {_sha256(path)[:16]}..., "
                                            "checked against onnxruntime)"}
    if (card.get("calibration") or {}).get("temperature"):
        ckpt.metrics["temperature"] = card["calibration"]["temperature"]  # already folded into these weights
    return ckpt


def _load_data(data) -> MNISTData:
    if isinstance(data, MNISTData):
        return data
    return load_mnist(data)


def export_onnx(checkpoint: str | os.PathLike | Checkpoint, out_path: str | os.PathLike, data=None,
                fp16: bool = False, int8: bool = False, calibrate: bool = False) -> dict:
    """Export, check, measure, and write out_path (+ the card as out_path.with_suffix(".json")).

    checkpoint: a run folder, a model.safetensors, a loaded Checkpoint, or an .onnx file this
    project exported (its weights are rebuilt from the initializers, see load_source).
    data: an MNISTData, a folder with the IDX files, or None (core.data.load_mnist's search).
    calibrate: fit a temperature on the run's validation split and fold it into the graph
    (core.calibration), so every consumer of `logits` gets calibrated probabilities; the card's
    "calibration" records T and the test ECE/NLL before and after. The CLI turns it on by default.
    Returns the card. Raises ExportError (nothing is written) if parity fails.
    """
    out_path = Path(out_path)
    if out_path.suffix != ".onnx":
        raise ExportError(f"{out_path}: the output must be an .onnx file")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_source(checkpoint)
    model = copy.deepcopy(ckpt.model).to("cpu").eval()  # the caller's model keeps its device and mode
    data = _load_data(data)
    if len(data.test_labels) < PARITY_MIN:
        raise ExportError(f"the parity check needs >= {PARITY_MIN:,} real test digits; "
                          f"{data.description} has {len(data.test_labels):,}")
    images = _float_images(data.test_images)  # [N,1,28,28] float32: the whole test split
    labels = data.test_labels.numpy()

    raw_logits = TorchPredictor(model, "cpu").logits(images)
    calibration = None
    if calibrate:
        if (ckpt.metrics or {}).get("temperature"):
            raise ExportError(f"{Path(ckpt.path).name} is already calibrated (T = {ckpt.metrics['temperature']:.4g} "
                              "is folded into its weights); export it with --no-calibrate")
        try:
            model, calibration = calibrate_model(model, data, ckpt.train_config)
        except CalibrationError as e:
            raise ExportError(str(e)) from None
    proto = to_onnx(model)
    _check(proto)
    blob = proto.SerializeToString()
    try:
        ort_logits = _session_from_bytes(blob, out_path).logits(images)
    except Exception as e:  # noqa: BLE001 - onnxruntime's own error types
        raise ExportError(f"onnxruntime cannot run the exported graph: {str(e).splitlines()[0][:300]}") from e
    torch_logits = TorchPredictor(model, "cpu").logits(images) if calibration else raw_logits
    parity = _parity(torch_logits, ort_logits, PARITY_TOL)
    if not parity["passed"]:
        raise ExportError(f"parity check failed on {parity['n']:,} test digits: max |dlogit| "
                          f"{parity['max_abs_dlogit']:.3g} (bar {PARITY_TOL:g}), argmax agrees on "
                          f"{parity['argmax_agree']:,}; nothing was written")
    accuracy = float((ort_logits.argmax(1) == labels).mean())
    metrics = ckpt.metrics or {}
    trained_at = metrics.get("trained_at") or time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(Path(ckpt.path).stat().st_mtime if ckpt.path else time.time()))
    name = out_path.stem
    quality = _quality(ort_logits, labels)
    if calibration is not None:
        before = _quality(raw_logits, labels)
        calibration.update(ece_before=before["ece"], ece_after=quality["ece"], nll_before=before["nll"],
                           nll_after=quality["nll"], measured_on=f"test ({len(labels):,} digits, {ECE_BINS} "
                                                                 "equal-width confidence bins)")
    source = metrics.get("source_checkpoint") or (_rel(ckpt.path) if ckpt.path else "(in memory)")
    props = {
        "model_name": name, "architecture": ckpt.model_config.name,
        "test_accuracy": f"{accuracy:.4f}", "test_set": f"{len(labels)} digits ({data.source})",
        "training_date": trained_at, "source_checkpoint": source,
        "temperature": f"{calibration['temperature']:.6f}" if calibration else "1 (not calibrated)",
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input": "image: float32 [N,1,28,28] in [0,1], white ink on black (normalised inside)",
        "output": "logits: float32 [N,10], digits 0-9", "variant": "fp32", "format": "mnist-lab-onnx/1",
    }
    _set_metadata(proto, props)
    proto.doc_string = getattr(model, "description", "") or ""
    blob = proto.SerializeToString()
    _write_bytes(out_path, blob)

    pred = load_predictor(out_path, prefer_gpu=False)  # the file as the app will load it
    card = {
        "format": CARD_FORMAT, "name": name, "file": out_path.name, "variant": "fp32",
        "architecture": ckpt.model_config.name, "description": proto.doc_string,
        "params": count_parameters(model), "size_bytes": out_path.stat().st_size, "sha256": _sha256(out_path),
        "opset": OPSET, "input": props["input"], "output": props["output"],
        "source_checkpoint": props["source_checkpoint"], "training_date": trained_at,
        "exported_at": props["exported_at"],
        **({"weights_rebuilt_from": metrics["weights_rebuilt_from"]} if metrics.get("weights_rebuilt_from") else {}),
        "train_config": {k: ckpt.train_config.get(k) for k in ("epochs", "optimizer", "lr", "batch_size", "augment",
                                                              "drawing_augment", "label_smoothing", "seed")
                         if k in ckpt.train_config},
        "checkpoint_metrics": {k: metrics[k] for k in ("test_acc", "val_acc", "epoch", "train_seconds", "device")
                               if k in metrics},
        "data": {"source": data.source, "description": data.description, "test_size": int(len(labels))},
        "accuracy": accuracy, "accuracy_torch": float((torch_logits.argmax(1) == labels).mean()),
        "ece": quality["ece"], "nll": quality["nll"], "calibration": calibration,
        "parity": parity,
        "latency": latency(pred, images),
        "variants": [],
    }

    _write_card(out_path.with_suffix(".json"), card)  # now, so a failing variant never leaves a stale card
    if fp16 or int8:
        calibration = _float_images(data.train_images[:CALIBRATION_DIGITS])
        for kind in (["fp16"] if fp16 else []) + (["int8"] if int8 else []):
            card["variants"].append(_variant(kind, out_path, card, ort_logits, images, labels, calibration))
        _write_card(out_path.with_suffix(".json"), card)
    return card


def _variant(kind: str, base: Path, base_card: dict, base_logits: np.ndarray, images: np.ndarray,
             labels: np.ndarray, calibration: np.ndarray) -> dict:
    """Write base-<kind>.onnx and its card; return the summary kept in the base card."""
    import onnx

    path = base.with_name(f"{base.stem}-{kind}.onnx")
    if kind == "fp16":
        to_fp16(base, path)
    else:
        to_int8(base, path, calibration)
    proto = onnx.load(str(path))
    # The converters drop metadata: start again from the base model's.
    props = {p.key: p.value for p in onnx.load(str(base), load_external_data=False).metadata_props}
    bulk = _session_from_bytes(proto.SerializeToString(), path)
    logits = bulk.logits(images)
    accuracy = float((logits.argmax(1) == labels).mean())
    quality = _quality(logits, labels)
    props.update(model_name=path.stem, variant=kind, test_accuracy=f"{accuracy:.4f}", base_model=base.name)
    _set_metadata(proto, props)
    blob = proto.SerializeToString()
    _write_bytes(path, blob)
    pred = load_predictor(path, prefer_gpu=False)
    lat = latency(pred, images)
    summary = {"variant": kind, "file": path.name, "size_bytes": path.stat().st_size, "accuracy": accuracy,
               "ece": quality["ece"], "nll": quality["nll"], "vs_fp32": _parity(base_logits, logits, None), "latency": lat,
               "speedup_vs_fp32": base_card["latency"]["single_p50_ms"] / lat["single_p50_ms"]}
    # The variant is converted from the base graph, so it carries the same folded temperature; its
    # own ECE after calibration is measured on its own logits.
    calibration = base_card.get("calibration")
    if calibration:
        calibration = {**calibration, "ece_after": quality["ece"], "nll_after": quality["nll"],
                       "inherited_from": base.name}
    card = {**{k: v for k, v in base_card.items() if k not in ("variants", "parity", "latency", "calibration")},
            "calibration": calibration,
            "name": path.stem, "file": path.name, "variant": kind, "base_model": base.name,
            "size_bytes": summary["size_bytes"], "sha256": _sha256(path), "accuracy": accuracy,
            "ece": quality["ece"], "nll": quality["nll"], "parity_vs_fp32": summary["vs_fp32"], "latency": lat}
    _write_card(path.with_suffix(".json"), card)
    return summary


def list_exported(folder: str | os.PathLike | None = None) -> list[dict]:
    """Model cards in folder (default exported/) whose .onnx exists, each with "path" and "card_path"."""
    from .inference import EXPORT_DIR

    folder = Path(folder) if folder else EXPORT_DIR
    cards = []
    for card_path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            card = json.loads(card_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        onnx_path = card_path.with_suffix(".onnx")
        if isinstance(card, dict) and card.get("format") == CARD_FORMAT and onnx_path.is_file():
            cards.append({**card, "path": str(onnx_path), "card_path": str(card_path)})
    order = {"fp32": 0, "fp16": 1, "int8": 2}  # each base model first, then its variants
    cards.sort(key=lambda c: (Path(c.get("base_model") or c["file"]).stem, order.get(c.get("variant"), 3), c["name"]))
    return cards


# ------------------------------------------------------------------ Triton

TRITON_MAX_BATCH = 256  # requests Triton's dynamic batcher may merge; the graph's batch is dynamic
_TRITON_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 2: "TYPE_UINT8", 3: "TYPE_INT8", 7: "TYPE_INT64"}


def _io(value_info) -> tuple[str, str, list]:
    """(name, Triton data type, dims as ints or None for a symbolic dim) of one graph input/output."""
    t = value_info.type.tensor_type
    if t.elem_type not in _TRITON_TYPES:
        raise ExportError(f"{value_info.name}: ONNX element type {t.elem_type} has no Triton data type here")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return value_info.name, _TRITON_TYPES[t.elem_type], dims


def triton_config(proto, name: str, max_batch_size: int = TRITON_MAX_BATCH) -> str:
    """config.pbtxt text for an ONNX model with a dynamic batch dimension, for Triton's
    onnxruntime backend. With max_batch_size > 0, Triton's dims leave out the batch dimension."""
    if not 0 < max_batch_size <= 1 << 20:
        raise ExportError(f"max_batch_size must be in [1, {1 << 20}], got {max_batch_size}")
    blocks = {}
    for kind, values in (("input", proto.graph.input), ("output", proto.graph.output)):
        inits = {i.name for i in proto.graph.initializer}
        entries = []
        for v in values:
            if v.name in inits:
                continue  # old exporters list initializers as inputs
            vname, dtype, dims = _io(v)
            if not dims or dims[0] is not None or any(d is None for d in dims[1:]):
                raise ExportError(f"{vname}: Triton batching needs a dynamic first (batch) dimension and fixed "
                                  f"other dimensions; the graph has {['N' if d is None else d for d in dims]}")
            entries.append(f'  {{\n    name: "{vname}"\n    data_type: {dtype}\n'
                           f'    dims: [ {", ".join(str(d) for d in dims[1:])} ]\n  }}')
        blocks[kind] = ",\n".join(entries)
    return (f'name: "{name}"\nplatform: "onnxruntime_onnx"\nbackend: "onnxruntime"\n'
            f"max_batch_size: {max_batch_size}\n"
            f"input [\n{blocks['input']}\n]\noutput [\n{blocks['output']}\n]\n"
            "# Merge single-image requests (a crowd drawing at once) into batches on the server.\n"
            "dynamic_batching { }\n")


def write_triton(onnx_path: str | os.PathLike, repository: str | os.PathLike, name: str | None = None,
                 max_batch_size: int = TRITON_MAX_BATCH) -> Path:
    """Add an exported model to a Triton model repository: repository/<name>/config.pbtxt and
    repository/<name>/1/model.onnx (the same bytes, so Triton serves the calibrated graph the app
    uses). name defaults to the file's stem. Returns the model's folder."""
    import onnx

    from .names import safe_name

    src = Path(onnx_path)
    blob = src.read_bytes()
    proto = onnx.load_from_string(blob)
    name = safe_name(name or src.stem)
    folder = Path(repository) / name
    text = triton_config(proto, name, max_batch_size)
    (folder / "1").mkdir(parents=True, exist_ok=True)
    _write_bytes(folder / "1" / "model.onnx", blob)
    atomic_write_text(folder / "config.pbtxt", text)
    return folder
