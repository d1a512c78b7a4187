"""Checkpoints (core.checkpoint) under attack and faults: another architecture's weights, flipped
bytes, cut files, garbled headers, pickles in disguise, oversized files, SIGKILL mid-write.
Reads the session's trained_run (copied before anything is written next to it)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import KILL_CHECKPOINT, ROOT, kill_while_writing, sha


@pytest.mark.reliability("checkpoint architecture")
def test_checkpoint_from_another_architecture_is_refused(trained_run, tmp_path):
    from core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from core.models import ModelConfig

    fast = load_checkpoint(trained_run).model
    other = tmp_path / "mislabelled"
    save_checkpoint(other, fast, ModelConfig("classic"), {}, {})  # fast's weights, a header saying classic
    with pytest.raises(CheckpointError, match="weights do not fit the 'classic' architecture"):
        load_checkpoint(other)


@pytest.mark.reliability("checkpoint damaged")
def test_tampered_checkpoint_is_refused(trained_run, tmp_path):
    from core.checkpoint import CheckpointError, load_checkpoint

    good = trained_run / "model.safetensors"
    blob = bytearray(good.read_bytes())
    header_len = int.from_bytes(blob[:8], "little")
    # 1) Numbers changed after saving (the header still parses): the stored checksum catches it.
    altered = bytearray(blob)
    altered[8 + header_len + 100] ^= 0x40
    (tmp_path / "altered.safetensors").write_bytes(bytes(altered))
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        load_checkpoint(tmp_path / "altered.safetensors")
    # 2) Cut short, 3) a header that is not JSON.
    (tmp_path / "short.safetensors").write_bytes(bytes(blob[:len(blob) // 2]))
    with pytest.raises(CheckpointError, match="short.safetensors: (not a readable|corrupt)"):
        load_checkpoint(tmp_path / "short.safetensors")
    garbled = bytearray(blob)
    garbled[8:40] = b"\xff" * 32
    (tmp_path / "garbled.safetensors").write_bytes(bytes(garbled))
    with pytest.raises(CheckpointError, match="garbled.safetensors: not a readable safetensors"):
        load_checkpoint(tmp_path / "garbled.safetensors")
    assert load_checkpoint(good).model_config.name == "fast"  # the original still loads


class _Payload:
    """Unpickling this runs Path(marker).touch(): a harmless stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.reliability("pickles")
def test_pickle_payloads_are_never_executed(tmp_path, trained_run):
    from core.checkpoint import CheckpointError, load_checkpoint
    from core.inference import ModelError, load_predictor

    marker = tmp_path / "PWNED"
    payload = pickle.dumps({"state_dict": _Payload(marker)})
    pickle.loads(payload)  # the payload is live: unpickling it does run code
    assert marker.exists()
    marker.unlink()

    torch_style = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload(marker)}, torch_style)  # a torch.save zip with the payload inside
    marker.unlink(missing_ok=True)
    disguised = tmp_path / "run" / "model.safetensors"  # same bytes, our file name
    disguised.parent.mkdir()
    shutil.copy(torch_style, disguised)
    for path in (torch_style, disguised, disguised.parent):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        assert "pickle" in str(e.value) or "not a readable safetensors" in str(e.value)
    for name, blob in (("evil.onnx", payload), ("evil2.onnx", torch_style.read_bytes())):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ModelError, match="this is a PyTorch checkpoint, not an ONNX model"):
            load_predictor(tmp_path / name)
    with pytest.raises(pickle.UnpicklingError):  # torch's own safe mode refuses it as well
        torch.load(torch_style, weights_only=True)
    assert not marker.exists(), "a pickle payload was executed"


@pytest.mark.reliability("oversized model files")
def test_oversized_checkpoint_is_refused_before_reading(tmp_path):
    from core.checkpoint import MAX_CHECKPOINT_BYTES, CheckpointError, load_checkpoint

    huge = tmp_path / "model.safetensors"
    with open(huge, "wb") as f:
        f.truncate(MAX_CHECKPOINT_BYTES + 1)
    with pytest.raises(CheckpointError, match="over the 256 MB limit"):
        load_checkpoint(tmp_path)


@pytest.mark.reliability("kill mid-write")
def test_kill_during_a_checkpoint_write_leaves_the_previous_one_intact(copy_run):
    from core.checkpoint import load_checkpoint

    run = copy_run()
    before = {p.name: sha(p) for p in run.iterdir()}
    partial = kill_while_writing(KILL_CHECKPOINT, run)
    assert Path(partial).parent == run and Path(partial).name.startswith(".model.safetensors.")
    assert {p.name: sha(p) for p in run.iterdir() if not p.name.endswith(".tmp")} == before
    ckpt = load_checkpoint(run)
    assert "version" not in ckpt.metrics and ckpt.metrics["epoch"] == 1  # still the previous checkpoint


_WRITE_LOOP = r"""
import sys, torch
from core.checkpoint import save_checkpoint
from core.models import ModelConfig, build_model
model = build_model("fast")
for v in range(1, 10**6):
    with torch.no_grad():
        model.groups["head"][1].bias.fill_(v)
    save_checkpoint(sys.argv[1], model, ModelConfig("fast"), {}, {"version": v})
    print(v, flush=True)
"""


@pytest.mark.reliability("kill loop")
def test_kill_at_random_moments_in_a_loop_of_checkpoint_writes(tmp_path):
    from core.checkpoint import load_checkpoint

    rng = np.random.default_rng(6)
    run = tmp_path / "run"
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITE_LOOP, str(run)], cwd=ROOT, stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        first = proc.stdout.readline()  # torch is imported and one checkpoint exists
        assert first.strip().isdigit()
        time.sleep(float(rng.uniform(0.05, 0.6)))
        os.kill(proc.pid, signal.SIGKILL)
        printed = [int(first)] + [int(v) for v in proc.stdout.read().split()]
        proc.wait(30)
        ckpt = load_checkpoint(run)  # whatever the moment, a complete checkpoint is there
        v = ckpt.metrics["version"]
        assert v in (printed[-1], printed[-1] + 1), (v, printed[-1])  # the last finished (or just-renamed) one
        assert float(ckpt.model.groups["head"][1].bias[0].detach()) == v  # weights and header from the same save
        assert json.loads((run / "run.json").read_text())["metrics"]["version"] in (v - 1, v)
