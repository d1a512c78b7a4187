"""Every model a visitor may pick, as one typed list: the shipped ONNX models, their own
ONNX exports and their own runs (PyTorch checkpoints). Every page that offers a model
asks here, so a page holds layout only.

No torch here: Draw and Home list models without loading PyTorch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .inference import EXPORT_DIR, list_models
from .workspace import Workspace

KINDS = ("shipped", "export", "run")
_WHERE = {"shipped": "Shipped", "export": "Your export", "run": "Your run"}


@dataclass(frozen=True)
class ModelEntry:
    kind: str                  # "shipped" | "export" | "run"
    name: str
    path: Path                 # the .onnx file, or the run's model.safetensors
    accuracy: float | None     # test accuracy in [0, 1], as recorded when the model was made
    trained_on: str | None     # data source it learned from: "dir" | "data" | "download" | "sample" | None
    variant: str               # "fp32" | "fp16" | "int8" for ONNX; "pytorch" for runs
    architecture: str | None = None
    params: int | None = None
    size_bytes: int | None = None
    default: bool = False      # the app's default model (shipped mnist-accurate)
    status: str = "done"       # runs: done | stopped | diverged
    card: dict = field(default_factory=dict, compare=False, hash=False)  # model card or run metrics

    @property
    def onnx(self) -> bool:
        return self.kind != "run"

    @property
    def key(self) -> str:
        """Stable across reruns and unique in a catalog: what a select box stores."""
        return f"{self.kind}:{self.path}"

    def label(self, accuracy: bool = True, runtime: bool = False) -> str:
        """"Shipped · mnist-accurate · 99.69% (default)" and the like, for select boxes."""
        text = f"{_WHERE[self.kind]} · {self.name}"
        if runtime:
            text += " (PyTorch)" if self.kind == "run" else " (ONNX)"
        if accuracy and self.accuracy is not None:
            text += f" · {100 * self.accuracy:.2f}%"
        return text + (" (default)" if self.default else "")


def _onnx_entry(kind: str, m: dict) -> ModelEntry:
    card = m.get("card") or {}
    path = Path(m["path"])
    size = card.get("size_bytes")
    if size is None and path.is_file():
        size = path.stat().st_size
    return ModelEntry(kind, m["name"], path, card.get("accuracy"), (card.get("data") or {}).get("source"),
                      m.get("variant") or card.get("variant") or "fp32", card.get("architecture"),
                      card.get("params"), size, bool(m.get("default")), "done", card)


def model_catalog(workspace: Workspace | None = None, kinds=KINDS, variants: bool = True) -> list[ModelEntry]:
    """Shipped models (default first), then the visitor's exports, then their runs that have
    a checkpoint. kinds: a subset of KINDS. variants=False leaves out fp16/int8 files."""
    out: list[ModelEntry] = []
    if "shipped" in kinds:
        out += [_onnx_entry("shipped", m) for m in list_models(EXPORT_DIR)]
    if workspace is not None and "export" in kinds and workspace.exports_dir.is_dir():
        out += [_onnx_entry("export", m) for m in list_models(workspace.exports_dir) if m.get("card")]
    if workspace is not None and "run" in kinds:
        for rec in workspace.runs().values():
            if rec.weights is None:
                continue  # queued, running before its first epoch, or failed without a checkpoint
            m = rec.metrics
            out.append(ModelEntry("run", rec.name, rec.weights, m.get("test_acc"), m.get("data_source"), "pytorch",
                                  rec.config.get("model") or m.get("model"), m.get("params"),
                                  rec.weights.stat().st_size, False, rec.status, m))
    if not variants:
        out = [e for e in out if e.variant in ("fp32", "pytorch")]
    return out
