"""Fine-tuning on real MNIST: freezing really freezes, per-group learning rates
apply, every target builds with disjoint splits, and pretraining beats training
from scratch in the default scenario."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from core.checkpoint import load_checkpoint
from core.finetune import FinetuneConfig, finetune, freeze_groups, pretrain_base, resolve_groups
from core.targets import NEW_CLASSES, build_target
from core.train import TrainConfig


@pytest.fixture(scope="session")
def base_dir(trained_run):
    """The session's trained_run as the base: `fast` after 150 steps on full MNIST (about 98%)."""
    return trained_run


def _run(cfg: FinetuneConfig, base, data, run_dir=None) -> tuple[list[dict], dict]:
    events = list(finetune(cfg, base, data, run_dir=run_dir))
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    return events, events[-1]


def _hashes(images: torch.Tensor) -> set[str]:
    return {hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in images}


def test_freezing_keeps_weights_and_bn_buffers_bit_identical(base_dir, mnist, tmp_path):
    base = load_checkpoint(base_dir).model.state_dict()
    cfg = FinetuneConfig(target="inverted", freeze=["block1", "block2"], max_steps=15, lr=1e-2, baseline=False,
                         device="cpu", max_test=500, eval_every=5)
    events, done = _run(cfg, base_dir, mnist, run_dir=tmp_path / "ft")
    start = events[0]
    n_frozen = sum(v.numel() for k, v in base.items() if k.startswith(("groups.block1.", "groups.block2."))
                   and ("weight" in k or "bias" in k))
    assert start["frozen_params"] == n_frozen and start["trainable_params"] == start["params"] - n_frozen
    assert [g["frozen"] for g in start["groups"]] == [True, True, False, False]

    after = load_checkpoint(tmp_path / "ft").model.state_dict()  # the saved fine-tuned checkpoint
    frozen_keys = [k for k in base if k.startswith(("groups.block1.", "groups.block2."))]
    assert any("running_mean" in k for k in frozen_keys) and any("num_batches_tracked" in k for k in frozen_keys)
    for k in frozen_keys:  # parameters *and* BatchNorm buffers
        assert torch.equal(base[k], after[k]), f"frozen {k} changed"
    changed = [k for k in base if k.startswith(("groups.block3.", "groups.head."))
               and not torch.equal(base[k], after[k])]
    assert "groups.head.1.weight" in changed and "groups.block3.2.running_mean" in changed
    # The returned model is a normal trainable model again, and the checkpoint records the run.
    assert all(p.requires_grad for p in done["model_obj"].parameters())
    done["model_obj"].train()  # no longer pinned to eval mode
    assert done["model_obj"].groups["block1"].training is True
    meta = load_checkpoint(tmp_path / "ft")
    assert meta.train_config["finetune"]["freeze"] == ["block1", "block2"]
    assert meta.metrics["finetune"]["target_acc_after"] == done["target_acc_after"]


def test_per_group_learning_rates_apply(base_dir, mnist):
    """Adam moves each weight by about lr per step, so a 1e-2 head against a
    1e-6 body must show ~10^4 times larger updates in the head."""
    base = load_checkpoint(base_dir).model.state_dict()
    cfg = FinetuneConfig(target="inverted", lr=1e-6, head_lr=1e-2, max_steps=10, baseline=False, device="cpu",
                         max_test=200, eval_every=100)
    _, done = _run(cfg, base_dir, mnist)
    after = done["model_obj"].state_dict()

    def mean_update(prefix):
        return float(torch.cat([(after[k] - base[k]).abs().flatten() for k in base
                                if k.startswith(prefix) and k.endswith("weight")]).mean())

    head, body = mean_update("groups.head."), mean_update("groups.block2.")
    assert head > 1e-3 and body < 2e-5 and head > 500 * body


def test_freeze_names_are_checked(base_dir):
    model = load_checkpoint(base_dir).model
    assert resolve_groups(model, ["features"]) == ["block1", "block2", "block3"]
    with pytest.raises(ValueError, match="unknown layer group 'conv9'.*block1, block2, block3, head"):
        resolve_groups(model, ["conv9"])
    with pytest.raises(ValueError, match="nothing left to train"):
        freeze_groups(model, ["features", "head"])


def test_every_target_builds_with_disjoint_splits(mnist, tmp_path):
    from core.samples import SampleStore

    store = SampleStore(tmp_path / "drawings")
    y = mnist.test_labels.numpy()
    for d in range(10):  # "people's drawings": real test digits, 3 per class, saved through the store
        for i in np.flatnonzero(y == d)[:3]:
            store.add(mnist.test_images[i], d)
    plain_test = _hashes(mnist.test_images[:2000])
    specs = ["inverted", "rotated", "rotated:90", "thick", "thin", "noisy", "new-classes", "subset:300",
             f"user:{tmp_path / 'drawings'}"]
    for spec in specs:
        t = build_target(spec, mnist, shots=5, seed=3, max_test=2000)
        for x, yy in ((t.train_images, t.train_labels), (t.test_images, t.test_labels)):
            assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (28, 28) and len(x) == len(yy) > 0
            assert set(yy.tolist()) <= set(t.classes)
        assert not _hashes(t.train_images) & _hashes(t.test_images), f"{spec}: train and test overlap"
        counts = torch.bincount(t.train_labels, minlength=10)
        if spec.startswith("user:"):
            assert counts.tolist() == [2] * 10 and len(t.test_labels) == 10
        elif spec.startswith("subset:"):
            assert counts.sum() == 300
        elif spec == "new-classes":
            assert counts[list(NEW_CLASSES)].tolist() == [5] * 5 and counts.sum() == 25
            assert set(t.test_labels.tolist()) == set(NEW_CLASSES)
            assert set(t.original_labels.tolist()) == {0, 1, 2, 3, 4}
        else:
            assert counts.tolist() == [5] * 10
            # A real shift: the test images are not plain MNIST test digits.
            assert len(_hashes(t.test_images) & plain_test) < 0.05 * len(t.test_images), spec
    again = build_target("noisy", mnist, shots=5, seed=3, max_test=2000)
    assert torch.equal(again.train_images, build_target("noisy", mnist, shots=5, seed=3, max_test=2000).train_images)
    assert not torch.equal(again.train_images, build_target("noisy", mnist, shots=5, seed=4).train_images)
    for bad in ("upside-down", "subset:abc", "subset:3", "rotated:x", "user:", "noisy:-1"):
        with pytest.raises(ValueError):
            build_target(bad, mnist)


def test_default_scenario_finetune_beats_scratch_by_10_points(mnist):
    """Pretrained on full MNIST, target inverted, K=10 per class, the same 200-step budget. The base is
    the shipped mnist-fast (1 epoch, 99.2%) as the Fine-tune page rebuilds it from its ONNX file: the
    README's measured scenario (the session's 150-step trained_run gains 9.9 points, under the bar)."""
    from core.inference import EXPORT_DIR
    from core.insights import checkpoint_for

    base = checkpoint_for(EXPORT_DIR / "mnist-fast.onnx", "cpu", calibration=mnist.train_images[:2048])
    cfg = FinetuneConfig.recommended("inverted", device="cpu", eval_every=1000)  # what the CLI runs
    assert cfg.shots == 10 and cfg.max_steps == 200 and cfg.baseline
    events, r = _run(cfg, base, mnist)
    phases = [e for e in events if e["event"] == "phase"]
    assert [(p["phase"], p["total_steps"]) for p in phases] == [("finetune", 200), ("scratch", 200)]
    assert r["test_size"] == 10_000 and r["train_size"] == 100 and r["frozen_groups"] == ["block3", "head"]
    assert r["target_acc_after"] > r["target_acc_before"] + 0.2
    assert r["target_acc_after"] - r["scratch_target_acc"] >= 0.10, r
    assert r["original_acc_before"] > 0.97


def test_new_classes_needs_a_0_to_4_base_and_learns_5_to_9(base_dir, mnist, tmp_path):
    with pytest.raises(ValueError, match="finetune-base"):
        list(finetune(FinetuneConfig(target="new-classes", device="cpu"), base_dir, mnist))
    cfg = TrainConfig.preset("fast", max_steps=120, device="cpu", augment=True)
    done = [e for e in pretrain_base(mnist, (0, 1, 2, 3, 4), run_dir=tmp_path / "b04", cfg=cfg)][-1]
    assert done["classes"] == [0, 1, 2, 3, 4] and done["test_acc"] > 0.9
    assert load_checkpoint(tmp_path / "b04").metrics["classes"] == [0, 1, 2, 3, 4]
    # The recipe: frozen features, a fresh head (the old one learned that 5-9 never happen).
    ft = FinetuneConfig.recommended("new-classes", max_steps=60, device="cpu", max_test=1000, eval_every=1000,
                                    baseline=False)
    events, r = _run(ft, tmp_path / "b04", mnist)
    assert events[0]["frozen_groups"] == ["block1", "block2", "block3"] and events[0]["train_size"] == 50
    assert r["target_acc_before"] < 0.05  # it has never seen a 5-9
    assert r["target_acc_after"] > 0.7 and r["original_acc_before"] > 0.9


def test_cli_finetune_json(base_dir, small_mnist_dir, tmp_path, capsys):
    from core.cli import main

    # The CLI's own work (arguments, output, files) on a 2,000 + 500-digit slice: every score is
    # measured on the slice's test digits, which keeps the test quick.
    code = main(["finetune", str(base_dir), "--target", "thick", "--max-steps", "8", "--freeze", "block1",
                 "--data", str(small_mnist_dir), "--device", "cpu", "--out", str(tmp_path / "ft"), "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.strip().splitlines()
    r = json.loads(lines[-1])
    for k in ("target_acc_before", "target_acc_after", "scratch_target_acc", "original_acc_before",
              "original_acc_after"):
        assert 0 <= r[k] <= 100, k
    assert r["original_acc_before"] > 90  # percent, not a fraction
    assert "trainable" in out and "frozen" in out and "scratch" in out
    assert r["frozen_params"] > 0 and (tmp_path / "ft" / "model.safetensors").is_file()
    assert main(["finetune", str(base_dir), "--target", "thick", "--freeze", "conv9", "--data",
                 str(small_mnist_dir)]) == 1
    assert "unknown layer group" in capsys.readouterr().err


def test_long_few_shot_budget_is_a_valid_training_config():
    """K=1: 10 digits, one step per epoch, so 2,000 steps need 2,000 epochs (once refused by
    TrainConfig's epoch limit although the fine-tune config accepted it)."""
    cfg = FinetuneConfig.recommended("inverted", shots=1, max_steps=2000).validate()
    tcfg = cfg.train_config("fast", per_epoch=1)
    assert tcfg.epochs == 2000 and tcfg.max_steps == 2000
    with pytest.raises(ValueError, match="max_steps must be a whole number"):
        FinetuneConfig(max_steps=20.5).validate()
