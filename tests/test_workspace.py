"""Visitors' workspaces (core.workspace): 128-bit ids from `secrets`, reopened by id after a reload,
never someone else's for an unknown, malformed or expired id, expiry, quota, runs and samples on disk.
Then the pages (AppTest): visitors never see each other's work, and the app writes only inside the
visitor's workspace."""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.workspace import ID_RE, QuotaExceeded, Workspace, WorkspaceError
from helpers import (assert_ok, button, canvas_state, poll, save_drawing, texts, train_job, train_on_page,
                     visitor_workspace, widget)

DAY = 86400


def _age(ws: Workspace, days: float) -> None:
    """Pretend ws was last opened `days` ago (the marker's mtime is its last use)."""
    t = time.time() - days * DAY
    os.utime(ws.dir / ".workspace", (t, t))


# ============================================================== ids

def test_ids_are_128_random_bits_from_secrets(tmp_path, monkeypatch):
    import core.workspace

    calls = []
    real = core.workspace.secrets.token_hex
    monkeypatch.setattr(core.workspace.secrets, "token_hex", lambda n: calls.append(n) or real(n))
    made = [Workspace.create(tmp_path) for _ in range(50)]
    assert calls == [16] * 50  # 16 bytes = 128 bits, from the `secrets` CSPRNG
    ids = [ws.id for ws in made]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and len(set(ids)) == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ids)
    for bad in ("../../etc", "abc", "", "A" * 32, "0" * 31, "0" * 33, "0" * 31 + "g"):
        assert not ID_RE.match(bad)
        with pytest.raises(WorkspaceError, match="32 lowercase hex digits"):
            Workspace(bad, tmp_path)


def test_the_same_id_reopens_the_same_workspace(tmp_path):
    ws = Workspace.create(tmp_path)
    name, run_dir = ws.new_run("mine")
    (run_dir / "run.json").write_text(json.dumps({"metrics": {"test_acc": 0.9}}))
    _age(ws, 3)
    again, note = Workspace.open(ws.id, tmp_path, ttl_days=7)
    assert note is None and again.id == ws.id and again.dir == ws.dir
    assert list(again.runs()) == ["mine"] and again.runs()["mine"].metrics["test_acc"] == 0.9
    assert time.time() - again.last_used() < 60  # opening it counts as a use


@pytest.mark.reliability("workspace id")
@pytest.mark.parametrize("given, why", [
    ("../../etc", "malformed"), ("abc", "malformed"), ("0123456789ABCDEF0123456789abcdef", "malformed"),
    ("/" + "0" * 31, "malformed"), ("0" * 32, "does not exist"), ("f" * 32, "does not exist"),
])
def test_an_unknown_or_malformed_id_gives_a_fresh_workspace_never_another(tmp_path, given, why):
    someone = Workspace.create(tmp_path / "root")
    someone.samples.add(np.zeros((28, 28), np.uint8) + 255 * np.eye(28, dtype=np.uint8), 1)
    before = sorted(p.relative_to(someone.dir) for p in someone.dir.rglob("*"))
    ws, note = Workspace.open(given, tmp_path / "root")
    assert ws.id != someone.id and ID_RE.match(ws.id) and ws.dir.parent == tmp_path / "root"
    assert note and why in note and "fresh" in note
    assert ws.runs() == {} and len(ws.samples) == 0  # nothing of anyone else's
    assert sorted(p.relative_to(someone.dir) for p in someone.dir.rglob("*")) == before  # untouched
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == sorted([someone.id, ws.id])
    assert not (tmp_path / "etc").exists()


@pytest.mark.reliability("workspace id")
def test_an_expired_id_is_removed_and_gives_a_fresh_workspace(tmp_path):
    old = Workspace.create(tmp_path)
    old.new_run("forgotten")
    _age(old, 8)
    ws, note = Workspace.open(old.id, tmp_path, ttl_days=7)
    assert ws.id != old.id and not old.dir.exists()
    assert "unused for more than 7 days" in note and "fresh" in note


def test_remove_expired_deletes_old_workspaces_and_keeps_fresh_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_WORKSPACE_DAYS", "2")
    old, fresh, busy = (Workspace.create(tmp_path) for _ in range(3))
    _age(old, 3)
    _age(busy, 3)
    _age(fresh, 1)
    (tmp_path / "not-a-workspace").mkdir()  # nothing but workspace folders is ever removed
    removed = Workspace.remove_expired(tmp_path, keep={busy.id})  # busy: a live job
    assert removed == [old.id]
    assert not old.dir.exists() and fresh.dir.is_dir() and busy.dir.is_dir()
    assert (tmp_path / "not-a-workspace").is_dir()
    assert sorted(Workspace.remove_expired(tmp_path, ttl_days=0.5)) == sorted([busy.id, fresh.id])
    assert Workspace.remove_expired(tmp_path / "nowhere") == []


@pytest.mark.reliability("concurrent open")
def test_a_workspace_being_created_survives_another_visitors_sweep(tmp_path):
    """Five visitors opening a cold server at once: one's sweep of expired workspaces ran between
    another's mkdir and its marker, and deleted the new workspace under its owner."""
    ws = Workspace(secrets.token_hex(16), tmp_path)
    ws.dir.mkdir()  # created, marker not yet written
    assert Workspace.remove_expired(tmp_path, ttl_days=7) == []
    ws.touch()
    assert ws.dir.is_dir() and not ws.expired(7)


def test_many_visitors_create_and_sweep_at_once(tmp_path):
    """Threads creating workspaces while others sweep: every created workspace is still there."""
    made, errors = [], []

    def visitor():
        try:
            for _ in range(20):
                made.append(Workspace.open(None, tmp_path)[0])
                Workspace.remove_expired(tmp_path, ttl_days=7)
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=visitor) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(ws.dir.is_dir() for ws in made) and len(made) == 100


# ============================================================== quota

@pytest.mark.reliability("workspace id")
def test_the_quota_bites_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_WORKSPACE_MB", "1")
    ws = Workspace.create(tmp_path)
    assert ws.quota_bytes == 2**20
    name, run_dir = ws.new_run("first")  # under the quota: fine
    with open(run_dir / "model.safetensors", "wb") as f:
        f.truncate(3 * 2**19)  # 1.5 MB (sparse)
    with pytest.raises(QuotaExceeded, match=r"your workspace holds 1\.5 MB of its 1 MB limit: delete some runs or "
                                            r"exports first"):
        ws.new_run("second")
    with pytest.raises(QuotaExceeded):
        ws.export_path("mine")
    assert [p.name for p in ws.runs_dir.iterdir()] == ["first"] and not ws.exports_dir.exists()
    shutil.rmtree(run_dir)
    ws.new_run("second")  # room again

    small = Workspace(Workspace.create(tmp_path).id, tmp_path, quota_bytes=100)
    small.check_quota(50)
    with pytest.raises(QuotaExceeded, match="limit: delete some runs or exports first"):
        small.check_quota(200)  # what is about to be written counts too


# ============================================================== runs, exports, samples

def test_runs_are_read_from_disk_with_their_status(tmp_path, trained_run):
    ws = Workspace.create(tmp_path)
    name, run_dir = ws.new_run("../../etc/passwd")
    assert name == "etc-passwd" and run_dir == ws.runs_dir / "etc-passwd"
    assert ws.new_run("etc-passwd")[0] == "etc-passwd-2"  # a taken name is never reused
    run_dir.rmdir()
    shutil.copytree(trained_run, run_dir)
    ws.write_run_status("etc-passwd-2", kind="train", status="queued", config={"model": "fast"})
    runs = ws.runs()
    assert set(runs) == {"etc-passwd", "etc-passwd-2"}
    done, queued = runs["etc-passwd"], runs["etc-passwd-2"]
    assert done.status == "done" and done.kind == "train" and done.weights == run_dir / "model.safetensors"
    assert done.metrics["test_acc"] > 0.95 and done.config["model"] == "fast"
    # queued in its job.json, but no executor of this process runs it (its server stopped): interrupted
    assert queued.status == "interrupted" and queued.weights is None and queued.config == {"model": "fast"}
    assert queued.job["recorded_status"] == "queued"
    assert ws.run("..") is None and ws.run("a/b") is None and ws.run("missing") is None
    ws.delete_run("etc-passwd-2")
    assert list(ws.runs()) == ["etc-passwd"]
    with pytest.raises(WorkspaceError, match="no run named"):
        ws.delete_run("../..")
    out = ws.export_path("../../etc/passwd")
    assert out == ws.exports_dir / "etc-passwd.onnx"


def test_samples_live_on_disk_in_the_workspace(tmp_path, mnist):
    ws = Workspace.create(tmp_path)
    for i in range(3):
        ws.samples.add(mnist.test_images[i].numpy(), int(mnist.test_labels[i]))
    again, _ = Workspace.open(ws.id, tmp_path)
    assert len(again.samples) == 3 and len(list(ws.samples_dir.rglob("*.png"))) == 3
    other = Workspace.create(tmp_path)
    assert len(other.samples) == 0


# ============================================================== the pages (AppTest)

def test_the_quota_is_shown_on_the_train_page(app, monkeypatch, workspaces):
    full = Workspace.create(workspaces)
    with open(full.dir / "big.bin", "wb") as f:
        f.truncate(2 * 2**20)  # 2 MB (sparse) in a workspace allowed 1 MB
    monkeypatch.setenv("MNIST_LAB_WORKSPACE_MB", "1")
    at = app("train", ws_id=full.id)
    assert visitor_workspace(at).id == full.id
    button(at, "Start training").click().run()
    assert not at.exception
    err = "\n".join(e.value for e in at.error)
    assert "Cannot start: your workspace holds" in err and "delete some runs or exports first" in err, err
    assert visitor_workspace(at).runs() == {}


@pytest.mark.reliability("visitor isolation")
def test_visitors_never_see_each_others_runs_drawings_or_exports(app, workspaces, mnist, shared_samples):
    from core.inference import DEFAULT_MODEL

    a = app("train")
    train_on_page(a, name="alice-run", steps=2)
    assert_ok(a)
    # Alice exports (a model card + .onnx in her exports folder) and saves a drawing.
    exports = visitor_workspace(a).exports_dir
    exports.mkdir(parents=True)
    shutil.copy(DEFAULT_MODEL, exports / "alice-model.onnx")
    card = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    (exports / "alice-model.json").write_text(json.dumps({**card, "name": "alice-model", "file": "alice-model.onnx"}))
    a.switch_page("app_pages/draw.py").run()
    assert any("alice-model" in o for o in widget(a, "selectbox", "Model").options)
    save_drawing(a, mnist.test_images[0].numpy(), int(mnist.test_labels[0]))
    assert_ok(a)
    assert len(visitor_workspace(a).samples) == 1

    b = app("train")
    assert visitor_workspace(b).id != visitor_workspace(a).id
    assert "No runs yet" in texts(b) and not b.dataframe
    b.switch_page("app_pages/draw.py").run()
    assert not any("alice" in o for o in widget(b, "selectbox", "Model").options)
    assert len(visitor_workspace(b).samples) == 0 and "Your samples per digit" not in texts(b)
    for page in ("home", "evaluate", "export", "finetune", "insights"):
        b.switch_page(f"app_pages/{page}.py").run()
        assert not b.exception, page
        shown = texts(b) + json.dumps([s.options for s in b.selectbox], default=str)
        shown += json.dumps([df.value.to_dict() for df in b.dataframe], default=str)
        assert "alice" not in shown, page
    assert not shared_samples.exists()  # nothing shared on disk without the presenter setting


@pytest.mark.reliability("audit")
@pytest.mark.reliability("names")
def test_the_app_writes_only_inside_the_visitors_workspace(app, workspaces, mnist, tmp_path):
    """An audit hook sees every file the process opens for writing, renames or deletes while a
    visitor trains, draws and saves a sample: all of it must land in the visitor's workspace
    (here under tmp) or the system temp dir. Nothing in the project, nothing elsewhere."""
    import tempfile

    log: list[tuple[str, str]] = []
    state = {"on": True}

    def hook(event, args):
        if not state["on"]:
            return
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing:
                log.append((event, os.fsdecode(args[0])))
        elif event in ("os.rename", "os.replace", "os.remove", "os.unlink", "os.rmdir", "os.mkdir", "shutil.rmtree",
                       "os.truncate", "os.chmod"):
            for a in args[:2]:
                if isinstance(a, (str, bytes, os.PathLike)):
                    log.append((event, os.fsdecode(a)))

    sys.addaudithook(hook)  # hooks cannot be removed; state["on"] turns it off
    try:
        at = app("train")
        widget(at, "number_input", "Stop after steps").set_value(2)
        button(at, "Start training").click().run()
        poll(at, lambda x: not train_job(x).running, what="the audited run")
        at.run()
        at.switch_page("app_pages/draw.py").run()
        at.session_state["canvas"] = canvas_state(__import__("core.preprocess", fromlist=["digit_to_canvas"])
                                                  .digit_to_canvas(mnist.test_images[3].numpy()))
        at.run()
        widget(at, "button_group", "Label").set_value(str(int(mnist.test_labels[3])))
        button(at, "Save sample").click().run()
        assert_ok(at)
    finally:
        state["on"] = False
    allowed = [Path(tempfile.gettempdir()).resolve(), tmp_path.resolve(), Path("/dev")]
    outside = sorted({(e, p) for e, p in log
                      if not any(r == Path(p).resolve() or r in Path(p).resolve().parents for r in allowed)})
    assert log, "the audit hook saw nothing: the test would prove nothing"
    mine = visitor_workspace(at).dir.resolve()
    assert any(mine in Path(p).resolve().parents for _, p in log)  # the run and the sample really were written
    assert any("/samples/" in p for _, p in log if mine in Path(p).resolve().parents)
    assert not outside, outside
