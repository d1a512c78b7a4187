"""Checkpoints: weights in safetensors with the configs in its header, plus a
readable run.json. Nothing is ever unpickled, and every write is atomic
(temp file in the same folder, then os.replace) so a crash mid-write leaves
the previous file intact.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .files import atomic_write, atomic_write_text, check_model_file
from .models import MNISTModel, ModelConfig, build_model

WEIGHTS_NAME = "model.safetensors"
META_NAME = "run.json"
FORMAT = "mnist-lab/1"
MAX_CHECKPOINT_BYTES = 256 * 2**20  # the biggest registry model (classic) is ~5 MB; anything huge is not ours


class CheckpointError(ValueError):
    """A checkpoint is missing, not ours, corrupt, or for another architecture."""


@dataclass
class Checkpoint:
    model: MNISTModel
    model_config: ModelConfig
    train_config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    path: Path | None = None


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order. Stored in the
    header, so a file whose numbers were altered after saving is caught at load time
    (safetensors itself has no checksum)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(run_dir: str | os.PathLike, model: MNISTModel, model_config: ModelConfig,
                    train_config: dict, metrics: dict) -> Path:
    """Write run_dir/model.safetensors and run_dir/run.json; returns the weights path."""
    run_dir = Path(run_dir)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "model_config": model_config.to_dict(), "train_config": train_config,
            "metrics": metrics}
    header = {k: json.dumps(v) for k, v in meta.items()}  # safetensors metadata is str -> str
    header["weights_sha256"] = json.dumps(weights_digest(state))
    weights = run_dir / WEIGHTS_NAME
    atomic_write(weights, lambda tmp: save_file(state, tmp, metadata=header))
    atomic_write_text(run_dir / META_NAME, json.dumps(meta, indent=2))
    return weights


def read_metadata(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path.name}: not a readable safetensors file ({e})") from e
    if header.get("format") != json.dumps(FORMAT):
        raise CheckpointError(f"{path.name}: not an MNIST Lab checkpoint (no '{FORMAT}' header)")
    try:
        return {k: json.loads(v) for k, v in header.items()}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path.name}: corrupt header ({e})") from e


def resolve_weights(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_NAME
    check_model_file(path, MAX_CHECKPOINT_BYTES, CheckpointError, "checkpoint")
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path.name}: checkpoints are .safetensors files (pickled .pt/.pth files "
                              "are refused: loading them could run arbitrary code)")
    return path


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> Checkpoint:
    """Rebuild the exact model from the config stored beside its weights."""
    weights = resolve_weights(path)
    meta = read_metadata(weights)
    try:
        model_config = ModelConfig(**meta["model_config"])
        model = build_model(model_config)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{weights.name}: bad model config in header ({e})") from e
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights.name}: corrupt weights ({e})") from e
    digest = meta.get("weights_sha256")
    if digest is not None and digest != weights_digest(state):
        raise CheckpointError(f"{weights.name}: the weights do not match the checksum saved with them; the file "
                              "was altered or damaged after it was written")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{weights.name}: corrupt weights (NaN or inf in {', '.join(bad[:3])})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:])[:300]
        raise CheckpointError(f"{weights.name}: weights do not fit the '{model_config.name}' architecture "
                              f"({detail})") from e
    model.to(device).eval()
    return Checkpoint(model, model_config, meta.get("train_config", {}), meta.get("metrics", {}), weights)
