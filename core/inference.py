"""Serving: onnxruntime sessions for exported models, on the GPU when one is present.

    p = load_predictor(DEFAULT_MODEL)        # once (the app caches it)
    probs = p.predict(uint8_images)          # [N,10], same call as TorchPredictor
    out = predict_canvas(p, canvas_rgba)     # drawn digit -> digit, probs, latency

This module never imports torch: the Draw page starts fast and works on a fresh
clone from the shipped model alone.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from .files import check_model_file
from .hardware import gpu_present
from .preprocess import Preprocessed, preprocess_canvas, preprocess_photo

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXPORT_DIR = PROJECT_ROOT / "exported"
DEFAULT_MODEL = EXPORT_DIR / "mnist-accurate.onnx"
SHIPPED = ("mnist-accurate", "mnist-fast")
MAX_MODEL_BYTES = 64 * 2**20  # the largest registry model (classic) is ~5 MB; anything huge is not ours
INPUT_NAME, OUTPUT_NAME = "image", "logits"
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
# TF32 off: ORT enables it by default on Ampere and newer, which moved logits by ~2e-3 against
# the CPU provider and torch on an H100. These models are far too small for TF32 to pay back
# (measured the same throughput), and parity is what the export promises.
CUDA_OPTIONS = {"use_tf32": "0"}


log = logging.getLogger(__name__)


class ModelError(ValueError):
    """A model file is missing, too big, not ONNX, or has the wrong inputs/outputs."""


def choose_providers(available: list[str] | None = None, gpu: bool | None = None) -> list[str]:
    """CUDA first when the build has it AND a GPU is really there, then CPU.

    onnxruntime-gpu lists CUDAExecutionProvider even on machines without a GPU,
    and asking for it there only produces warnings, so both must hold.
    """
    import onnxruntime as ort

    available = ort.get_available_providers() if available is None else list(available)
    gpu = gpu_present() if gpu is None else gpu
    if gpu and CUDA in available:
        return [CUDA, CPU]
    return [CPU]


_dlls_loaded = False


def _preload_cuda_dlls() -> None:
    """Load CUDA/cuDNN from the pip nvidia-* wheels (torch's CUDA build installs them)."""
    global _dlls_loaded
    if _dlls_loaded:
        return
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(io.StringIO()):  # it prints notes, not errors
            try:
                ort.preload_dlls()
            except (OSError, RuntimeError):
                pass  # the session then falls back to CPU, which we detect and report
    _dlls_loaded = True


def cpu_threads() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n)


def default_threads() -> int:
    """Intra-op threads for serving: 1 on boxes with <= 2 cores (these models are so small
    that a second thread costs more in hand-off than it saves, and the app shares the box),
    up to 4 on bigger ones, for batch work."""
    n = cpu_threads()
    return 1 if n <= 2 else min(4, n // 2)


def _as_batch(images) -> np.ndarray:
    """uint8 [N,28,28] / [28,28] / [N,1,28,28] or float in [0,1] (numpy or torch)
    -> C-contiguous float32 [N,1,28,28]."""
    if hasattr(images, "detach"):  # a torch tensor, without importing torch
        images = images.detach().cpu().numpy()
    x = np.asarray(images)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) * np.float32(1 / 255)
    elif x.dtype != np.float32:
        x = x.astype(np.float32)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
        raise ValueError(f"expected images of shape [N,1,28,28] or [N,28,28], got {list(x.shape)}")
    return np.ascontiguousarray(x)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _shape(arg) -> list:
    return [d if isinstance(d, int) else None for d in (arg.shape or [])]


class OnnxPredictor:
    """An onnxruntime session for one exported model.

    predict(images) -> probs float32 [N,10], like core.evaluate.TorchPredictor, so
    core.evaluate.evaluate() accepts either. Build it with load_predictor().
    """

    def __init__(self, session, path: Path, batch_size: int | None = None):
        self.session = session
        self.path = Path(path)
        self.provider: str = session.get_providers()[0]
        self.on_gpu = self.provider == CUDA
        self.metadata: dict[str, str] = dict(session.get_modelmeta().custom_metadata_map)
        self.batch_size = batch_size or (4096 if self.on_gpu else 1024)
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.input_type = session.get_inputs()[0].type  # "tensor(float)", or float16 for raw fp16 graphs

    @property
    def name(self) -> str:
        return self.metadata.get("model_name") or self.path.stem

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.input_type == "tensor(float16)":
            x = x.astype(np.float16)
        if self.on_gpu:
            # IO binding: one explicit host->device copy in, ORT allocates the output on the GPU.
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, x)
            binding.bind_output(self.output_name, "cuda")
            self.session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        else:
            out = self.session.run([self.output_name], {self.input_name: x})[0]
        return out.astype(np.float32, copy=False)

    def logits(self, images) -> np.ndarray:
        """images -> logits float32 [N,10], in chunks of batch_size."""
        x = _as_batch(images)
        if len(x) <= self.batch_size:
            return self._run(x) if len(x) else np.zeros((0, 10), np.float32)
        return np.concatenate([self._run(x[i:i + self.batch_size]) for i in range(0, len(x), self.batch_size)])

    def predict(self, images) -> np.ndarray:
        return softmax(self.logits(images))

    def __repr__(self) -> str:
        return f"OnnxPredictor({self.path.name}, provider={self.provider})"


def _check_file(path: Path, max_bytes: int) -> None:
    size = check_model_file(path, max_bytes, ModelError, "model file")
    with open(path, "rb") as f:
        head = f.read(8)
    if size == 0:
        raise ModelError(f"{path.name}: empty file, not an ONNX model")
    if head[:2] == b"PK" or head[:1] == b"\x80" or path.suffix in (".safetensors", ".pt", ".pth"):
        raise ModelError(f"{path.name}: this is a PyTorch checkpoint, not an ONNX model; "
                         "export it first: python -m core export CHECKPOINT")


def _ort_message(e: Exception) -> str:
    """onnxruntime's first error line without its error code, file path and C++ location."""
    import re

    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    msg = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", msg)
    msg = re.sub(r"Load model from .*? failed:", "", msg)
    msg = re.sub(r"/onnxruntime_src/\S+:\d+ .*?\)\s+", "", msg)
    return msg.strip()[:300]


def _check_io(session, name: str) -> None:
    ins, outs = session.get_inputs(), session.get_outputs()
    if len(ins) != 1 or len(outs) < 1:
        raise ModelError(f"{name}: expected one input and one output, found {len(ins)} inputs and "
                         f"{len(outs)} outputs")
    i, o = ins[0], outs[0]
    ishape, oshape = _shape(i), _shape(o)
    if i.type not in ("tensor(float)", "tensor(float16)") or len(ishape) != 4 or ishape[1:] != [1, 28, 28]:
        raise ModelError(f"{name}: input '{i.name}' is {i.type} {i.shape}; an MNIST model takes "
                         "float32 [N,1,28,28]")
    if len(oshape) != 2 or oshape[1] != 10:
        raise ModelError(f"{name}: output '{o.name}' has shape {o.shape}; an MNIST model returns logits [N,10]")
    if ishape[0] is not None and ishape[0] != 1:
        raise ModelError(f"{name}: input batch is fixed at {ishape[0]}; export with a dynamic batch")


def load_predictor(path: str | os.PathLike | None = None, prefer_gpu: bool = True, *,
                   threads: int | None = None, max_bytes: int = MAX_MODEL_BYTES,
                   warmup: bool = True) -> OnnxPredictor:
    """The one session factory: validate the file, pick the provider, tune, warm up.

    path: an .onnx file; None means the shipped default (DEFAULT_MODEL, read at call time).
    threads: CPU intra-op threads (default: default_threads()).
    max_bytes: larger files are refused before anything parses them.
    """
    import onnxruntime as ort

    path = Path(path) if path is not None else DEFAULT_MODEL
    _check_file(path, max_bytes)
    # Process-wide too: some warnings (e.g. provider fallbacks) come from the default logger,
    # not the session's. Errors still reach the log; chatter does not.
    ort.set_default_logger_severity(3)
    providers = choose_providers() if prefer_gpu else [CPU]
    if providers[0] == CUDA:
        _preload_cuda_dlls()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: no provider-fallback chatter in the app's logs
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = ort.InferenceSession(str(path), so, providers=[(p, CUDA_OPTIONS) if p == CUDA else p
                                                                 for p in providers])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph/... types
        msg = _ort_message(e)
        log.warning("refused model %s: %s", path.name, msg)
        raise ModelError(f"{path.name}: not a loadable ONNX model ({msg})") from e
    _check_io(session, path.name)
    pred = OnnxPredictor(session, path)
    log.info("loaded %s on %s", path.name, pred.provider)
    if warmup:
        # First runs allocate buffers and (on CUDA) pick conv algorithms: pay that here, not on a visitor's click.
        pred.logits(np.zeros((1, 1, 28, 28), np.float32))
        pred.logits(np.zeros((1, 1, 28, 28), np.float32))
    return pred


def predict_canvas(predictor, rgba: np.ndarray) -> dict:
    """A canvas drawing -> {"blank", "reason", "digit", "probs", "latency_ms", "pre"}.

    Blank canvases return digit=None and probs=None: no guess is made.
    latency_ms covers preprocessing and inference.
    """
    t0 = time.perf_counter()
    pre = preprocess_canvas(rgba)
    return _finish(predictor, pre, t0)


def predict_image(predictor, src) -> dict:
    """A PNG/JPEG (path, bytes, file, PIL image) -> the same dict as predict_canvas."""
    t0 = time.perf_counter()
    pre = preprocess_photo(src)
    return _finish(predictor, pre, t0)


def _finish(predictor, pre: Preprocessed, t0: float) -> dict:
    if pre.blank:
        return {"blank": True, "reason": pre.reason, "digit": None, "probs": None, "top3": [],
                "latency_ms": (time.perf_counter() - t0) * 1e3, "pre": pre}
    probs = predictor.predict(pre.image[None, None])[0]
    latency = (time.perf_counter() - t0) * 1e3
    order = np.argsort(-probs)[:3]
    return {"blank": False, "reason": "", "digit": int(order[0]), "probs": probs,
            "top3": [(int(d), float(probs[d])) for d in order], "latency_ms": latency, "pre": pre}


def read_card(onnx_path: str | os.PathLike) -> dict | None:
    """The model card next to an .onnx (same stem, .json), or None."""
    card = Path(onnx_path).with_suffix(".json")
    try:
        data = json.loads(card.read_text())
    except (OSError, ValueError):  # ValueError: JSONDecodeError and undecodable bytes
        return None
    return data if isinstance(data, dict) else None


def list_models(folder: str | os.PathLike | None = None) -> list[dict]:
    """Exported models: the shipped default first, then the other shipped ones, then the
    rest; each base model before its -fp16/-int8 variants.

    Each entry: {"name", "path", "default", "shipped", "variant", "card"} (card may be None)."""
    folder = Path(folder) if folder else EXPORT_DIR
    paths = sorted(folder.glob("*.onnx")) if folder.is_dir() else []
    rank = {name: i for i, name in enumerate(SHIPPED)}
    variants = {"fp16": 1, "int8": 2}

    def split(stem: str) -> tuple[str, str]:
        base, _, tail = stem.rpartition("-")
        return (base, tail) if tail in variants and base else (stem, "fp32")

    def key(p: Path):
        base, variant = split(p.stem)
        return rank.get(base, len(rank)), base, variants.get(variant, 0)

    out = []
    for p in sorted(paths, key=key):
        card = read_card(p)
        base, variant = split(p.stem)
        out.append({"name": p.stem, "path": str(p), "default": p.resolve() == DEFAULT_MODEL.resolve(),
                    "shipped": folder.resolve() == EXPORT_DIR.resolve() and base in rank,
                    "variant": (card or {}).get("variant", variant), "card": card})
    return out
