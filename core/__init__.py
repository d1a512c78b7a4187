"""MNIST Lab engine. Plain Python on torch and onnxruntime; never imports Streamlit.

The public API is listed below. Names load lazily on first use, so
`import core` is instant and has no side effects (Streamlit reruns pages
on every click).
"""
from importlib import import_module

_API = {
    # data.py
    "MNISTData": "data", "DataError": "data", "load_mnist": "data", "load_dir": "data", "load_sample": "data",
    "read_idx": "data", "split_validation": "data", "validation_size": "data", "to_float": "data",
    # augment.py
    "AugmentConfig": "augment", "augment": "augment",
    # robustness.py
    "robustness": "robustness", "RobustnessConfig": "robustness", "DISTORTIONS": "robustness",
    # device.py
    "resolve_device": "device", "DeviceError": "device", "device_name": "device", "cuda_available": "device",
    # models.py
    "MODELS": "models", "ModelConfig": "models", "build_model": "models", "count_parameters": "models",
    # config.py (no torch), train.py
    "TrainConfig": "config", "PRESETS": "config", "LIMITS": "config", "MODEL_INFO": "config",
    "default_epochs": "config", "total_steps": "config",
    "train": "train", "fit": "train", "TrainingDiverged": "train", "TrainingOutOfMemory": "train",
    "check_memory": "train", "warm_up": "train",
    # finetune.py, targets.py, samples.py
    "FinetuneConfig": "finetune", "finetune": "finetune", "pretrain_base": "finetune", "RECIPES": "finetune",
    "freeze_groups": "finetune", "unfreeze_all": "finetune", "resolve_groups": "finetune",
    "Target": "targets", "TARGETS": "targets", "build_target": "targets", "shift_images": "targets",
    "SampleSet": "samples", "SampleStore": "samples", "SampleError": "samples", "load_folder": "samples",
    "import_samples": "samples",
    # checkpoint.py
    "Checkpoint": "checkpoint", "CheckpointError": "checkpoint", "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    # evaluate.py
    "predict": "evaluate", "evaluate": "evaluate", "TorchPredictor": "evaluate",
    # export.py
    "export_onnx": "export", "list_exported": "export", "ExportError": "export", "load_source": "export",
    "write_triton": "export", "triton_config": "export",
    # calibration.py
    "fit_temperature": "calibration", "fold_temperature": "calibration", "calibrate": "calibration",
    "CalibrationError": "calibration",
    # inference.py
    "load_predictor": "inference", "OnnxPredictor": "inference", "ModelError": "inference",
    "choose_providers": "inference", "predict_canvas": "inference", "predict_image": "inference",
    "DEFAULT_MODEL": "inference", "list_models": "inference",
    # preprocess.py
    "preprocess_canvas": "preprocess", "preprocess_photo": "preprocess", "Preprocessed": "preprocess",
    # names.py, explore.py (Data page statistics)
    "safe_name": "names", "unique_name": "names",
    "label_counts": "explore", "class_mean_std": "explore", "pixel_histogram": "explore", "pca_fit": "explore",
    "tsne_embed": "explore",
    # insights.py (Insights and Evaluate pages)
    "first_layer_filters": "insights", "activations": "insights", "saliency": "insights", "grad_cam": "insights",
    "torch_model_for": "insights", "checkpoint_for": "insights", "InsightError": "insights",
    # executor.py (training jobs in worker processes or on Ray, off the web server)
    "JobSpec": "executor", "JobHandle": "executor", "Executor": "executor", "LocalExecutor": "executor",
    "RayExecutor": "executor", "get_executor": "executor", "read_job": "executor", "read_events": "executor",
}

__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'core' has no attribute {name!r}")
