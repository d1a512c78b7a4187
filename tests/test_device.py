"""No GPU: the CPU everywhere, with a notice (engine, onnxruntime, the Draw and Train pages)."""
from __future__ import annotations

import pytest
import torch

from helpers import small_data, widget


@pytest.mark.reliability("no gpu")
def test_no_gpu_means_cpu_everywhere_with_a_notice(app, monkeypatch, mnist):
    import core.inference
    from core.device import DeviceError, resolve_device
    from core.inference import choose_providers, load_predictor
    from core.train import TrainConfig, train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what torch says on a box without a GPU
    monkeypatch.setattr(core.inference, "gpu_present", lambda: False)  # and the driver, for onnxruntime
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(DeviceError, match="CUDA was requested but no GPU is available here; use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="no GPU"):
        next(train(TrainConfig.preset("fast", device="cuda"), small_data(mnist)))
    assert choose_providers(gpu=False) == ["CPUExecutionProvider"]
    assert load_predictor(prefer_gpu=True).provider == "CPUExecutionProvider"
    for page in ("draw", "train"):
        at = app(page)
        notice = "\n".join(c.value for c in at.caption)
        # the sidebar's device line: "**Device:** CPU, 2 cores (no GPU found; everything runs on the CPU)"
        assert "**Device:** CPU" in notice and "(no GPU found; everything runs on the CPU)" in notice, (page, notice)
    assert widget(at, "selectbox", "Device").options == ["auto", "cpu"]
