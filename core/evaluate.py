"""predict() and the metrics built on it.

Anything with `.predict(images) -> probs [N,10]` can be evaluated: the torch
predictor here and the onnxruntime one in inference.py expose the same call.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from .data import to_float
from .inference import softmax  # one softmax for both paths (inference.py has no torch)


class Predictor(Protocol):
    def predict(self, images) -> np.ndarray: ...


def as_float_batch(images) -> np.ndarray | torch.Tensor:
    """Accept uint8 [N,28,28] / [28,28] or float [N,1,28,28] in [0,1]; return float [N,1,28,28]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if images.dtype == torch.uint8:
        if images.ndim == 2:
            images = images[None]
        if images.ndim == 3:
            return to_float(images)
        if images.ndim == 4:
            return images.float().div_(255.0)
    images = images.float()
    if images.ndim == 2:
        images = images[None, None]
    elif images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise ValueError(f"expected images of shape [N,1,28,28] or [N,28,28], got {list(images.shape)}")
    return images


class TorchPredictor:
    """Wraps a torch model: predict(images) -> softmax probabilities, float32 numpy [N,10]."""

    def __init__(self, model: torch.nn.Module, device: torch.device | str | None = None, batch_size: int = 2048):
        # None: wherever the model's weights already are (a GPU model stays on the GPU).
        device = device if device is not None else next(model.parameters()).device
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.provider = f"torch-{self.device.type}"

    @torch.no_grad()
    def logits(self, images) -> np.ndarray:
        x = as_float_batch(images)
        out = []
        for i in range(0, len(x), self.batch_size):
            out.append(self.model(x[i:i + self.batch_size].to(self.device)).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 10), np.float32)

    def predict(self, images) -> np.ndarray:
        return softmax(self.logits(images))


def predict(model_or_predictor, images, device: torch.device | str | None = None) -> np.ndarray:
    """probs [N,10] from a torch model or any object with .predict."""
    if hasattr(model_or_predictor, "predict"):
        return model_or_predictor.predict(images)
    return TorchPredictor(model_or_predictor, device).predict(images)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15):
    """-> (ece, reliability table rows: bin lower/upper edge, confidence, accuracy, count)."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            acc, c = float(correct[m].mean()), float(conf[m].mean())
            ece += m.mean() * abs(acc - c)
            rows.append({"lo": float(lo), "hi": float(hi), "confidence": c, "accuracy": acc, "count": int(m.sum())})
    return float(ece), rows


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, k: int = 10) -> np.ndarray:
    """cm[true, predicted] counts, int64 [k,k]."""
    return np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)


def evaluate(model_or_predictor, images, labels, device: torch.device | str | None = None,
             top_mistakes: int = 50) -> dict:
    """Full report on (images, labels). Accuracies are fractions in [0,1]."""
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    if isinstance(images, torch.Tensor):
        images = images.cpu()
    probs = predict(model_or_predictor, images, device)
    preds = probs.argmax(1)
    cm = confusion_matrix(labels, preds)
    tp = np.diag(cm).astype(float)
    precision = tp / np.maximum(cm.sum(0), 1)
    recall = tp / np.maximum(cm.sum(1), 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    ece, reliability = expected_calibration_error(probs, labels)
    wrong = np.flatnonzero(preds != labels)
    wrong = wrong[np.argsort(-probs[wrong, preds[wrong]])][:top_mistakes]  # most confident first
    nll = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()) if len(labels) else 0.0
    return {
        "n": int(len(labels)),
        "accuracy": float((preds == labels).mean()) if len(labels) else 0.0,
        "nll": nll,
        "per_class": [{"digit": d, "precision": float(precision[d]), "recall": float(recall[d]),
                       "f1": float(f1[d]), "support": int(cm[d].sum())} for d in range(10)],
        "confusion": cm.tolist(),
        "ece": ece,
        "reliability": reliability,
        "mistakes": [{"index": int(i), "label": int(labels[i]), "pred": int(preds[i]),
                      "confidence": float(probs[i, preds[i]]), "probs": probs[i].round(4).tolist()} for i in wrong],
        "probs": probs,
    }
