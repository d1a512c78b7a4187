"""Training on real MNIST: loss goes down, accuracy bar, determinism, checkpoints, divergence."""
import json
import logging
import re

import pytest
import torch

from core import data as D
from core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from core.evaluate import TorchPredictor, evaluate
from core.models import Fast, ModelConfig, build_model
from core.train import TrainConfig, TrainingDiverged, lr_factor, train
from helpers import small_data


def subset(mnist, n_train=6000, n_test=2000):
    return D.MNISTData(mnist.train_images[:n_train], mnist.train_labels[:n_train],
                       mnist.test_images[:n_test], mnist.test_labels[:n_test], "dir", "subset")


def run(cfg, data, run_dir=None):
    events = list(train(cfg, data, run_dir))
    return events, events[-1]


def test_a_few_steps_lower_the_loss(mnist):
    cfg = TrainConfig.preset("fast", max_steps=40, device="cpu", val_size=500)
    events, done = run(cfg, subset(mnist))
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert {"lr", "images_per_sec", "elapsed"} <= set(events[2])


def test_short_real_run_reaches_97_percent(mnist):
    """300 steps of the fast recipe (~2/3 of an epoch) on the full training set."""
    cfg = TrainConfig.preset("fast", max_steps=300, device="cpu")
    events, done = run(cfg, mnist)
    assert events[0]["event"] == "start" and events[0]["train_size"] == 55000
    epoch = [e for e in events if e["event"] == "epoch"]
    assert epoch and epoch[-1]["val_acc"] > 0.97
    assert done["event"] == "done" and done["test_acc"] >= 0.975, done["test_acc"]


def test_same_seed_same_weights_on_cpu(mnist):
    small = subset(mnist, 3000, 500)
    cfg = dict(max_steps=15, device="cpu", val_size=300, augment=True)
    a = run(TrainConfig.preset("fast", seed=7, **cfg), small)[1]["model_obj"].state_dict()
    b = run(TrainConfig.preset("fast", seed=7, **cfg), small)[1]["model_obj"].state_dict()
    c = run(TrainConfig.preset("fast", seed=8, **cfg), small)[1]["model_obj"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_checkpoint_round_trip(mnist, tmp_path):
    cfg = TrainConfig.preset("fast", max_steps=20, device="cpu", val_size=300)
    done = run(cfg, subset(mnist, 3000, 1000), tmp_path / "run")[1]
    weights = tmp_path / "run" / "model.safetensors"
    assert done["checkpoint"] == str(weights)
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.model_config.name == "fast" and ckpt.train_config["max_steps"] == 20
    assert TrainConfig.from_dict(ckpt.train_config) == cfg
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["metrics"]["test_acc"] == pytest.approx(done["test_acc"])
    x = mnist.test_images[:1000]
    before = TorchPredictor(done["model_obj"]).predict(x)
    after = TorchPredictor(ckpt.model).predict(x)
    # Same weights; the trained copy is channels_last, so allow float reassociation noise.
    assert abs(before - after).max() < 1e-5 and (before.argmax(1) == after.argmax(1)).all()
    assert evaluate(ckpt.model, x, mnist.test_labels[:1000])["accuracy"] == pytest.approx(done["test_acc"])


def test_checkpoint_errors(tmp_path):
    # weights of one architecture under another's name
    save_checkpoint(tmp_path / "mix", build_model("classic"), ModelConfig("fast"), {}, {})
    with pytest.raises(CheckpointError, match="do not fit the 'fast' architecture"):
        load_checkpoint(tmp_path / "mix")
    # tampered bytes
    bad = tmp_path / "bad" / "model.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(bad)
    # a pickle is refused by name, never opened
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"cos\nsystem\n(S'touch pwned'\ntR.")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    assert not (tmp_path / "pwned").exists()


class Poisoned(Fast):
    """A real model whose training forward turns NaN after `after` calls: fault injection."""

    def __init__(self, after):
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, x):
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                out = out * float("nan")
        return out


def test_divergence_stops_and_keeps_last_good_checkpoint(mnist, tmp_path):
    small = subset(mnist, 2000, 500)
    cfg = TrainConfig.preset("fast", epochs=3, batch_size=100, device="cpu", val_size=200)  # 18 steps/epoch
    # NaN in epoch 2: the epoch-1 checkpoint is kept and named
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 2\d.*learning rate") as e:
        list(train(cfg, small, tmp_path / "run", model=Poisoned(after=20)))
    assert e.value.checkpoint == str(tmp_path / "run" / "model.safetensors")
    assert "last good checkpoint is kept" in str(e.value)
    kept = load_checkpoint(tmp_path / "run")
    assert kept.metrics["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in kept.model.state_dict().values() if v.is_floating_point())
    # NaN before any epoch ends: the previous file is untouched
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(TrainingDiverged, match="No epoch had finished") as e:
        list(train(cfg, small, tmp_path / "run", model=Poisoned(after=3)))
    assert e.value.checkpoint is None
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("field,value", [("lr", 0.0), ("lr", 1e6), ("batch_size", 0), ("batch_size", 10**6),
                                         ("epochs", 0), ("model", "resnet"), ("device", "tpu")])
def test_bad_hyperparameters_refused_with_range(field, value):
    with pytest.raises(ValueError, match=field):
        cfg = TrainConfig(model=value) if field == "model" else TrainConfig.preset("fast", **{field: value})
        cfg.validate()


def test_onecycle_schedule_shape():
    f = [lr_factor(s, 1000, "onecycle", 0.2) for s in range(1000)]
    assert f[0] == 0 and max(f) == pytest.approx(1.0) and f.index(max(f)) == 200 and f[-1] < 0.002
    short = [lr_factor(s, 40, "onecycle", 0.2) for s in range(40)]
    assert short.index(max(short)) == 20  # short runs warm up for half their length


@pytest.mark.parametrize("field,value", [("epochs", 1.5), ("batch_size", 64.0), ("max_steps", 10.0)])
def test_fractional_counts_refused(field, value):
    with pytest.raises(ValueError, match=f"{field} must be a whole number"):
        TrainConfig.preset("fast", **{field: value}).validate()


def test_default_epochs_give_small_datasets_enough_steps():
    from core.train import MIN_DEFAULT_STEPS, default_epochs, total_steps

    assert default_epochs("fast", 60_000) == 1  # full MNIST: the preset's one epoch
    assert default_epochs("accurate", 60_000) == 20
    n = 4000  # the offline sample: 3,600 train after the 400-digit validation split
    epochs = default_epochs("fast", n)
    assert epochs == 8 and total_steps(TrainConfig.preset("fast", epochs=epochs), 3600) >= MIN_DEFAULT_STEPS
    assert total_steps(TrainConfig.preset("fast", epochs=epochs - 1), 3600) < MIN_DEFAULT_STEPS  # no more than needed


@pytest.mark.parametrize("epochs,max_steps", [(3, None), (3, 10), (2, 1000)])
def test_total_steps_is_what_fit_runs(mnist, epochs, max_steps):
    from core.train import total_steps

    data = subset(mnist, 1000, 100)  # 900 train after validation: 7 steps of 128 per epoch
    cfg = TrainConfig.preset("fast", epochs=epochs, max_steps=max_steps, device="cpu", val_size=100)
    events, done = run(cfg, data)
    steps = [e for e in events if e["event"] == "step"]
    assert steps[-1]["step"] == steps[-1]["total_steps"] == total_steps(cfg, 900) == done["step"]


# ============================================================== limits and faults (README: Reliability)

@pytest.mark.reliability("hyperparameters")
@pytest.mark.parametrize("field, value, allowed", [
    ("lr", 0.0, "[1e-06, 10]"), ("lr", 1e6, "[1e-06, 10]"), ("lr", float("nan"), "[1e-06, 10]"),
    ("batch_size", 0, "[1, 8192]"), ("batch_size", 10**6, "[1, 8192]"), ("epochs", 0, "[1, 100000]"),
])
def test_bad_hyperparameters_are_refused_up_front(mnist, tmp_path, field, value, allowed):
    from core.train import TrainConfig, train

    cfg = TrainConfig.preset("fast", **{field: value})
    with pytest.raises(ValueError, match=re.escape(f"{field} must be in {allowed}, got {value!r}")):
        next(train(cfg, mnist, run_dir=tmp_path / "run"))  # before the first event: no work, no files
    assert not (tmp_path / "run").exists()


@pytest.mark.reliability("memory")
def test_a_step_that_cannot_fit_in_memory_is_refused_up_front(mnist, tmp_path, monkeypatch):
    import core.train as T

    model = T.build_model("accurate")
    need = T.step_memory_bytes(model, 8192)
    assert need > 8 * T.step_memory_bytes(model, 512) > 0  # grows with the batch
    with pytest.raises(ValueError, match=r"batch_size 8192 needs about .* GB per step but only 0.5 GB is free on "
                                         r"cpu; batch_size must be in \[1, \d+\] here") as e:
        T.check_memory(model, T.TrainConfig.preset("accurate", batch_size=8192), torch.device("cpu"), free=2**29)
    fit = int(re.search(r"\[1, (\d+)\]", str(e.value)).group(1))
    T.check_memory(model, T.TrainConfig.preset("accurate", batch_size=fit), torch.device("cpu"), free=2**29)  # fits
    monkeypatch.setattr(T, "free_memory_bytes", lambda device: 2**27)  # a box with 128 MB free
    with pytest.raises(ValueError, match="batch_size 8192 needs about"):
        next(T.train(T.TrainConfig.preset("fast", batch_size=8192), mnist, run_dir=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def _train_small(cfg_kw, mnist, run):
    """The fast CNN on 2,000 real digits (14 steps an epoch), checkpointing into run."""
    from core.train import TrainConfig, train

    cfg = TrainConfig.preset("fast", lr=0.05, val_size=200, device="cpu", **cfg_kw)
    return train(cfg, small_data(mnist), run_dir=run)


@pytest.mark.reliability("stop")
def test_stop_mid_epoch_keeps_the_last_completed_checkpoint(mnist, tmp_path):
    from core.checkpoint import load_checkpoint

    run = tmp_path / "run"
    gen = _train_small({"epochs": 5}, mnist, run)
    saved = None
    for ev in gen:
        if ev["event"] == "epoch":
            saved = (run / "model.safetensors").read_bytes()
        if saved is not None and ev["event"] == "step" and ev["epoch"] == 2 and ev["step"] >= 14 + 5:
            break  # the visitor clicks Stop, five steps into epoch 2
    gen.close()
    assert (run / "model.safetensors").read_bytes() == saved
    ckpt = load_checkpoint(run)
    assert ckpt.metrics["epoch"] == 1 and ckpt.metrics["val_acc"] > 0.5
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.reliability("divergence")
def test_divergence_stops_with_an_explanation_and_keeps_the_good_checkpoint(mnist, tmp_path, fail_after):
    from core.checkpoint import load_checkpoint
    from core.train import TrainingDiverged

    fail_after(14 + 3, None)  # epoch 1 is 14 steps; NaN from step 17 on
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as e:
        for ev in _train_small({"epochs": 3}, mnist, run):
            if ev["event"] == "epoch":
                good = (run / "model.safetensors").read_bytes()
    msg = str(e.value)
    assert "loss became nan at step 17 (epoch 2)" in msg and "try a smaller one" in msg
    assert "The last good checkpoint is kept" in msg and e.value.checkpoint == str(run / "model.safetensors")
    assert (run / "model.safetensors").read_bytes() == good
    ckpt = load_checkpoint(run)
    assert ckpt.metrics["epoch"] == 1 and all(torch.isfinite(p).all() for p in ckpt.model.parameters())


@pytest.mark.reliability("out of memory")
@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")])
def test_out_of_memory_is_explained_and_keeps_the_checkpoint(mnist, tmp_path, fail_after, error):
    from core.checkpoint import load_checkpoint
    from core.train import TrainingOutOfMemory, oom_message

    fail_after(14 + 2, error)
    run = tmp_path / "run"
    with pytest.raises(TrainingOutOfMemory) as e:
        list(_train_small({"epochs": 3}, mnist, run))
    msg = str(e.value)
    assert "out of memory" in msg and "try a smaller batch size (64 or less)" in msg, msg
    assert "The last good checkpoint is kept" in msg and load_checkpoint(run).metrics["epoch"] == 1
    gpu = oom_message(torch.device("cuda"), 512)
    assert "GPU" in gpu and "256 or less" in gpu and "device: cpu" in gpu


@pytest.mark.reliability("logs")
def test_logs_are_useful_and_quiet(mnist, tmp_path, capfd, caplog, fail_after):
    from core.inference import DEFAULT_MODEL, load_predictor, predict_canvas
    from core.preprocess import digit_to_canvas
    from core.train import TrainConfig, TrainingDiverged, train

    capfd.readouterr()
    pred = load_predictor(DEFAULT_MODEL, prefer_gpu=True)  # provider choice, warm-up: silent
    for i in range(5):
        predict_canvas(pred, digit_to_canvas(mnist.test_images[i].numpy()))
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)

    caplog.set_level(logging.INFO, logger="core")
    list(train(TrainConfig.preset("fast", epochs=1, lr=0.05, val_size=200, device="cpu"), small_data(mnist),
               run_dir=tmp_path / "run"))
    records = [r for r in caplog.records if r.name.startswith("core")]
    assert len(records) == 2, [r.getMessage() for r in records]  # README: start and result, not every step
    assert "training fast on cpu" in records[0].getMessage() and "test accuracy" in records[1].getMessage()
    caplog.clear()
    fail_after(3, None)
    with pytest.raises(TrainingDiverged):
        list(train(TrainConfig.preset("fast", epochs=1, lr=0.05, val_size=200, device="cpu"), small_data(mnist)))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("core")]
    assert len(warnings) == 1 and "diverged" in warnings[0].getMessage()
