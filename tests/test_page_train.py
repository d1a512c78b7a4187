"""The Train page (AppTest, real app, 2,000 real digits: 14 steps an epoch): a short run and the
runs table, live progress and Stop, divergence, bounds, out-of-memory, names, the offline sample's
defaults; and reload-safe workspaces: a run is still listed after a reload with the same `?ws=`,
and never shown to another visitor."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import (assert_ok, button, no_paths, poll, texts, train_job, train_on_page,
                     visitor_workspace, widget)


def test_train_a_short_run_and_compare_runs(app):
    from core.checkpoint import load_checkpoint

    at = app("train")
    assert "No runs yet" in texts(at)
    job = train_on_page(at, name="../../etc/passwd", epochs=4)
    assert_ok(at)
    assert job.status == "done", job.error
    success = "\n".join(s.value for s in at.success)
    assert "test accuracy" in success and "“etc-passwd”" in success  # sanitized name
    table = at.dataframe[0].value
    row = table[table["Run"] == "etc-passwd"].iloc[0]
    assert row["Status"] == "done" and row["Steps"] == 4 * 14 and row["Epochs"] == 4
    assert row["Test acc"] > 70  # 56 steps on 1,800 real digits (~90%); guessing scores 10%
    ws = visitor_workspace(at)
    weights = ws.runs_dir / "etc-passwd" / "model.safetensors"
    ckpt = load_checkpoint(weights)  # the run is a real, loadable checkpoint in the visitor's workspace
    assert ckpt.model_config.name == "fast" and ckpt.metrics["test_acc"] == pytest.approx(row["Test acc"] / 100)
    assert {p.value for p in at.get("page_link")} >= {"Evaluate it", "Export it to ONNX", "Fine-tune it"}
    assert at.query_params["ws"] == [ws.id] or at.query_params["ws"] == ws.id  # the id rides in the URL

    # A visit to another page keeps the visitor's settings and runs.
    at.switch_page("app_pages/data.py").run()
    at.switch_page("app_pages/train.py").run()
    assert_ok(at)
    assert not at.warning, [w.value for w in at.warning]
    assert widget(at, "number_input", "Epochs").value == 4
    assert list(at.dataframe[0].value["Run"]) == ["etc-passwd"]

    # The same name again gets a suffix instead of overwriting the first run.
    train_on_page(at, name="etc-passwd", steps=3)
    assert_ok(at)
    assert list(at.dataframe[0].value["Run"]) == ["etc-passwd", "etc-passwd-2"]
    assert "Best so far: **etc-passwd**" in texts(at)

    # A reload (new session state, same ?ws=): both runs, with their metrics, are still there.
    reload = app("train", ws_id=ws.id)
    assert visitor_workspace(reload).id == ws.id
    again = reload.dataframe[0].value
    assert list(again["Run"]) == ["etc-passwd", "etc-passwd-2"]
    first = again[again["Run"] == "etc-passwd"].iloc[0]
    assert first["Status"] == "done" and first["Steps"] == 56 and first["Test acc"] == pytest.approx(row["Test acc"])
    # A second visitor without the id gets a workspace of their own, with none of it.
    other = app("train")
    assert visitor_workspace(other).id != ws.id
    assert "No runs yet" in texts(other) and not other.dataframe


def test_reload_with_an_unknown_or_malformed_id_opens_a_fresh_workspace(app, workspace_with_run):
    """Someone else's id is never guessed from a bad link: each gets a fresh, empty workspace and a note."""
    for bad in ("../../etc", "abc", "0" * 32, workspace_with_run.id.upper()):
        at = app("train", ws_id=bad)
        ws = visitor_workspace(at)
        assert ws.id != workspace_with_run.id and ws.dir.parent == workspace_with_run.root
        assert "No runs yet" in texts(at) and not at.dataframe, bad
        notes = " ".join(t.value for t in at.toast)
        assert "fresh" in notes, (bad, notes)
    assert list(workspace_with_run.runs()) == ["tiny"]  # untouched
    mine = app("train", ws_id=workspace_with_run.id)
    assert list(mine.dataframe[0].value["Run"]) == ["tiny"] and not list(mine.toast)


@pytest.mark.reliability("stop")
def test_train_live_progress_then_stop_keeps_the_last_checkpoint(app):
    from core.checkpoint import load_checkpoint

    at = app("train")
    widget(at, "number_input", "Epochs").set_value(100)
    widget(at, "text_input", "Run name").set_value("long")
    button(at, "Start training").click().run()
    assert_ok(at)
    assert button(at, "Start training").disabled  # one run at a time
    # Live panel: progress with speed, ETA and device; loss and accuracy charts.
    poll(at, lambda a: train_job(a).last("epoch") is not None, what="the first epoch")
    assert train_job(at).running
    bar = at.get("progress")[0]
    assert "images/s" in bar.text and "ETA" in bar.text and "cpu" in bar.text.lower()
    assert len(at.get("vega_lite_chart")) == 2
    button(at, "Stop").click().run()
    poll(at, lambda a: not train_job(a).running, what="the stop")
    at.run()
    assert_ok(at)
    assert train_job(at).status == "stopped"
    warning = "\n".join(w.value for w in at.warning)
    assert "The last completed checkpoint survives" in warning
    row = at.dataframe[0].value.iloc[0]
    assert row["Run"] == "long" and row["Status"] == "stopped" and row["Epochs"] >= 1
    ckpt = load_checkpoint(visitor_workspace(at).runs_dir / "long")
    assert ckpt.metrics["epoch"] == row["Epochs"] == train_job(at).last("epoch")["epoch"]
    assert not button(at, "Start training").disabled


def _failed_run(at, name: str, error: str) -> None:
    """A run whose job failed in its worker, recorded as core.executor records it (job.json)."""
    import json
    import time

    rec_dir = visitor_workspace(at).new_run(name)[1]
    (rec_dir / "job.json").write_text(json.dumps({"id": "x" * 32, "kind": "train", "name": name, "status": "failed",
                                                  "error": error, "finished_at": time.time(), "config": {}}))
    (rec_dir / "events.jsonl").write_text(json.dumps({"event": "start", "device": "cpu (2 threads)"}) + "\n")


@pytest.mark.reliability("divergence")
def test_train_divergence_is_explained(app):
    from core.train import TrainingDiverged

    at = app("train")
    message = str(TrainingDiverged("training diverged: loss became nan at step 2 (epoch 1). The learning rate (10) "
                                   "is probably too high; try a smaller one. No epoch had finished, so no "
                                   "checkpoint was written."))
    _failed_run(at, "boom", message)
    at.session_state["train_active"] = "boom"
    at.run()
    err = "\n".join(e.value for e in at.error)
    assert "diverged" in err and "learning rate" in err and "try a smaller one" in err
    assert not at.exception


@pytest.mark.reliability("out of memory")
def test_train_page_shows_the_out_of_memory_advice(app):
    """A worker that ran out of memory: the page shows core's advice, with no paths."""
    from core.train import oom_message

    at = app("train")
    _failed_run(at, "oom", oom_message(torch.device("cpu"), 128))
    at.session_state["train_active"] = "oom"
    at.run()
    assert not at.exception
    err = "\n".join(e.value for e in at.error)
    assert "Training stopped: out of memory" in err and "smaller batch size (64 or less)" in err, err
    no_paths(err)


@pytest.mark.reliability("memory")
def test_train_page_inputs_carry_the_limits(app):
    """The form's bounds are core's LIMITS; a batch that cannot fit is refused by the worker before
    it trains (core.train.check_memory: tests/test_train.py)."""
    from core.config import LIMITS

    at = app("train")
    lr = widget(at, "number_input", "Learning rate")
    batch = widget(at, "number_input", "Batch size")
    assert (lr.min, lr.max) == LIMITS["lr"] and (batch.min, batch.max) == LIMITS["batch_size"]


@pytest.mark.reliability("names")
def test_train_page_keeps_nasty_run_names_inside_the_visitors_workspace(app, workspaces):
    at = app("train")
    made = []
    for raw in ("/etc/cron.d/evil", "数字 " + "x" * 200):
        made.append(train_on_page(at, name=raw[:80], steps=1).name)
        assert_ok(at)
    assert made[0] == "etc-cron.d-evil" and made[1].startswith("数字-xxx") and len(made[1]) <= 48
    ws = visitor_workspace(at)
    mine = ws.dir.resolve()
    for name in made:
        assert (ws.runs_dir / name / "model.safetensors").is_file()
    # every file the Train page wrote is under the visitor's own workspace folder
    files = [p.resolve() for p in workspaces.rglob("*") if p.is_file()]
    assert files and all(mine in p.parents for p in files), files
    assert not Path("/etc/cron.d/evil").exists()


def test_train_on_the_offline_sample_defaults_and_a_short_run(offline):
    from core.train import TrainConfig, total_steps

    at = offline("train")
    assert any("offline 5,000-digit sample" in i.value for i in at.info)
    epochs = widget(at, "number_input", "Epochs").value
    # One epoch of the sample is 28 steps of `fast` (67% test accuracy); the default must give ~200.
    assert epochs == 8
    assert total_steps(TrainConfig.preset("fast", epochs=epochs), 3600) >= 200
    assert "about 200 steps" in texts(at)
    job = train_on_page(at, steps=5)
    assert_ok(at)
    assert job.status == "done" and at.dataframe[0].value.iloc[0]["Steps"] == 5
