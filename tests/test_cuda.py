"""The CUDA paths: torch training and fine-tuning on the GPU, onnxruntime's CUDA provider.

Skipped on machines without a GPU (CI has none); run on a lent GPU machine. On the
CPU the same code paths are covered by test_train, test_finetune and test_inference.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.device import cuda_available

pytestmark = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")


def _ort_cuda_usable() -> bool:
    from core.inference import CUDA, choose_providers

    return choose_providers()[0] == CUDA


def test_training_on_cuda_reaches_the_cpu_bar_and_reports_warm_up(mnist, tmp_path):
    from core.checkpoint import load_checkpoint
    from core.evaluate import predict
    from core.train import TrainConfig, train

    cfg = TrainConfig.preset("fast", max_steps=300, device="auto")  # auto must pick the GPU by itself
    events = list(train(cfg, mnist, run_dir=tmp_path / "run"))
    start, done = events[0], events[-1]
    assert start["device_type"] == "cuda" and done["device"].startswith("cuda")
    assert done["test_acc"] >= 0.975, done["test_acc"]
    assert done["warmup_seconds"] > 0  # the CUDA start-up is paid (and timed) before the first step
    # The checkpoint written from the GPU loads on the CPU and predicts the same digits.
    ck = load_checkpoint(tmp_path / "run", "cpu")
    x = mnist.test_images[:2000]
    cpu = predict(ck.model, x, "cpu")
    on_gpu = load_checkpoint(tmp_path / "run", "cuda").model
    gpu = predict(on_gpu, x)  # no device given: it must run where the model is, not move it to the CPU
    assert next(on_gpu.parameters()).is_cuda
    assert (cpu.argmax(1) == gpu.argmax(1)).mean() > 0.999
    assert np.abs(cpu - gpu).max() < 1e-2


def test_finetune_on_cuda_with_scratch_baseline(mnist, tmp_path):
    """Regression: the from-scratch baseline model was built on the CPU and evaluated on GPU data."""
    from core.finetune import FinetuneConfig, finetune
    from core.train import TrainConfig, train

    base = tmp_path / "base"
    list(train(TrainConfig.preset("fast", max_steps=150, device="cuda"), mnist, run_dir=base))
    events = list(finetune(FinetuneConfig(target="thick", max_steps=30, device="cuda"), base, mnist,
                           run_dir=tmp_path / "ft"))
    done = events[-1]
    assert done["event"] == "done" and done["device"].startswith("cuda")
    assert done["scratch_target_acc"] is not None
    # 30 steps towards the "thick" digits must read them better than the base model did
    assert done["target_acc_after"] > done["target_acc_before"], (done["target_acc_before"], done["target_acc_after"])
    assert (tmp_path / "ft" / "model.safetensors").is_file()


def test_memory_check_reads_the_gpu_and_refuses_what_cannot_fit():
    from core.models import build_model
    from core.train import TrainConfig, check_memory, free_memory_bytes

    gpu = torch.device("cuda")
    free = free_memory_bytes(gpu)  # asked of the GPU, not the host
    assert free is not None and abs(free - torch.cuda.mem_get_info()[0]) < 1 << 30, (free, torch.cuda.mem_get_info())
    cfg = TrainConfig.preset("classic", batch_size=8192)
    check_memory(build_model("classic"), cfg, gpu)  # fits an 80 GB card
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, \d+\] here"):
        check_memory(build_model("classic"), cfg, gpu, free=64 << 20)  # as if only 64 MiB were free


@pytest.mark.skipif(not _ort_cuda_usable() if cuda_available() else True,
                    reason="onnxruntime's CUDA provider is not usable here")
@pytest.mark.parametrize("name", ["mnist-accurate.onnx", "mnist-fast.onnx"])
def test_ort_cuda_provider_matches_cpu_provider(mnist, name):
    from core.inference import CPU, CUDA, EXPORT_DIR, load_predictor

    gpu = load_predictor(EXPORT_DIR / name, prefer_gpu=True)
    cpu = load_predictor(EXPORT_DIR / name, prefer_gpu=False)
    assert gpu.provider == CUDA and cpu.provider == CPU
    x = mnist.test_images[:3000].numpy()
    lg, lc = gpu.logits(x), cpu.logits(x)
    assert np.array_equal(lg.argmax(1), lc.argmax(1))
    assert np.abs(lg - lc).max() < 1e-4  # TF32 is off (CUDA_OPTIONS); with it on this was 2e-3
    one = gpu.predict(x[:1])
    assert one.shape == (1, 10) and np.allclose(one, gpu.predict(x[:7])[:1], atol=1e-5)
