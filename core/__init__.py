"""MNIST Lab engine. Plain Python on torch and onnxruntime; never imports Streamlit.

The public API is listed below. Names load lazily on first use, so
`import core` is instant and has no side effects (Streamlit reruns pages
on every click).
"""
from importlib import import_module

_API = {
    # data.py
    "MNISTData": "data", "DataError": "data", "load_mnist": "data", "load_dir": "data", "load_sample": "data",
    "read_idx": "data", "split_validation": "data", "to_float": "data",
    # augment.py
    "AugmentConfig": "augment", "augment": "augment",
    # device.py
    "resolve_device": "device", "DeviceError": "device", "device_name": "device", "cuda_available": "device",
    # models.py
    "MODELS": "models", "ModelConfig": "models", "build_model": "models", "count_parameters": "models",
    # train.py
    "TrainConfig": "train", "train": "train", "fit": "train", "TrainingDiverged": "train", "PRESETS": "train",
    # checkpoint.py
    "Checkpoint": "checkpoint", "CheckpointError": "checkpoint", "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    # evaluate.py
    "predict": "evaluate", "evaluate": "evaluate", "TorchPredictor": "evaluate",
}

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'core' has no attribute {name!r}")
