"""core.executor: the job queue, worker processes and Ray, on real MNIST digits (CPU).

Training uses a 2,000-digit slice of the real MNIST written as IDX files (an epoch of `fast`
is 14 steps), one worker for the local executor and a 2-CPU local Ray, so the module runs in
about a minute on a 2-core machine. Every executor is shut down by its fixture.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from core.checkpoint import load_checkpoint
from core.executor import WORKER_DIED, JobSpec, LocalExecutor, read_events, read_job
from core.finetune import FinetuneConfig
from core.train import TrainConfig

TIMEOUT = 120


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def local():
    """One local executor for the module, with one worker (MNIST_LAB_WORKERS=1): started once,
    since a worker's start (torch import) costs seconds."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNIST_LAB_WORKERS", "1")
        ex = LocalExecutor()
    assert ex.workers == 1
    yield ex
    ex.shutdown(timeout=30)
    assert not ex.worker_pids()


@pytest.fixture
def job(tmp_path, small_mnist_dir):
    """job(name, kind="train", **config) -> a JobSpec of a tiny CPU run in tmp_path."""
    def make(name: str, kind: str = "train", base: str | None = None, target: str | None = None,
             shots: int = 10, **overrides) -> JobSpec:
        if kind == "finetune":
            config = FinetuneConfig(**{"device": "cpu", "baseline": False, "max_test": 200, **overrides}).to_dict()
        else:
            config = TrainConfig.preset("fast", **{"epochs": 1, "val_size": 200, "device": "cpu",
                                                   **overrides}).to_dict()
        return JobSpec(kind, name, str(tmp_path / "runs" / name), config, data_dir=str(small_mnist_dir),
                       base=base, target=target, shots=shots, workspace="test")
    return make


def wait_for(cond, timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def steps(h) -> int:
    return sum(ev["event"] == "step" for ev in h.events())


def files(run_dir: str) -> set[str]:
    return {p.name for p in Path(run_dir).iterdir()} if Path(run_dir).exists() else set()


# ------------------------------------------------------------------ local executor

def test_queue_runs_in_submit_order_and_records_everything(local, job):
    a, b, c = (local.submit(job(n, max_steps=6)) for n in ("a", "b", "c"))
    wait_for(lambda: a.status != "queued", what="the first job to start")
    assert a.status == "running" and a.position is None
    assert (b.status, b.position) == ("queued", 1) and (c.status, c.position) == ("queued", 2)
    assert local.stats() == {"running": 1, "queued": 2, "workers": 1, "kind": "local"}
    wait_for(lambda: read_job(c.spec.run_dir, local).get("position") == 2, 5, "job.json to say position 2")
    for h in (a, b, c):
        assert h.wait(TIMEOUT)
    assert [h.status for h in (a, b, c)] == ["done"] * 3
    assert a.finished_at <= b.started_at and b.finished_at <= c.started_at  # one at a time, in order

    done = c.last("done")
    assert 0.0 <= done["test_acc"] <= 1.0 and "model_obj" not in done
    assert c.events() == read_events(c.spec.run_dir)  # the file says what the handle says
    assert [ev["event"] for ev in c.events()][:2] == ["start", "step"]
    rec = read_job(c.spec.run_dir, local)
    assert rec["status"] == "done" and rec["kind"] == "train" and rec["name"] == "c" and rec["executor"] == "local"
    assert rec["result"]["test_acc"] == done["test_acc"] and rec["config"]["log_every"] == 1
    assert rec["submitted_at"] <= rec["started_at"] <= rec["finished_at"] and "position" not in rec
    assert load_checkpoint(c.spec.run_dir).metrics["test_acc"] == done["test_acc"]


def test_stop_running_job_within_a_step_keeps_last_checkpoint(local, job):
    h = local.submit(job("stop-me", epochs=5))
    wait_for(lambda: h.last("epoch") is not None or h.finished, what="the first epoch")
    seen = steps(h)
    h.stop()
    assert h.wait(30)
    assert h.status == "stopped" and h.error is None and h.last("done") is None
    assert steps(h) <= seen + 2  # the step in flight, and at most one already on its way
    ckpt = load_checkpoint(h.spec.run_dir)
    assert 1 <= ckpt.metrics["epoch"] < 5
    assert read_job(h.spec.run_dir, local)["status"] == "stopped"
    assert h.events() == read_events(h.spec.run_dir)


def test_cancel_queued_job_never_runs(local, job):
    first = local.submit(job("long", epochs=5))
    queued = local.submit(job("never"))
    assert queued.status == "queued"
    # Jobs finished earlier measured the speed: a queued job gets a wait, a running one its time left.
    wait_for(lambda: first.last("step") is not None, what="the first step")
    assert queued.eta_seconds is not None and queued.eta_seconds >= first.eta_seconds >= 0
    queued.stop()
    assert queued.status == "cancelled" and queued.wait(0) and queued.position is None
    assert files(queued.spec.run_dir) == {"job.json"}
    assert read_job(queued.spec.run_dir, local)["status"] == "cancelled"
    first.stop()
    assert first.wait(TIMEOUT)
    time.sleep(0.2)
    assert files(queued.spec.run_dir) == {"job.json"} and queued.events() == []


def test_bad_settings_refused_before_queueing(local, job, tmp_path):
    before = local.stats()
    with pytest.raises(ValueError, match=r"lr must be in \[1e-06, 10\]"):
        local.submit(job("bad-lr", lr=100.0))
    with pytest.raises(ValueError, match=r"shots must be in \[1, 5000\]"):
        local.submit(job("bad-shots", kind="finetune", base=str(tmp_path), shots=0))
    with pytest.raises(ValueError, match="unknown target"):
        local.submit(job("bad-target", kind="finetune", base=str(tmp_path), target="upside-down"))
    with pytest.raises(ValueError, match="kind must be one of"):
        local.submit(JobSpec("evaluate", "x", str(tmp_path / "x"), {}))
    assert local.stats() == before
    assert not (tmp_path / "runs").exists()  # nothing written either


@pytest.mark.reliability("killed worker")
def test_killed_worker_fails_job_keeps_checkpoint_and_next_job_runs(local, job):
    h = local.submit(job("killed", epochs=6))
    nxt = local.submit(job("after-kill", max_steps=5))
    wait_for(lambda: h.last("epoch") is not None or h.finished, what="the first epoch")
    pid = h.worker["pid"]
    os.kill(pid, signal.SIGKILL)
    assert h.wait(30)
    assert h.status == "failed" and h.error == WORKER_DIED
    ckpt = load_checkpoint(h.spec.run_dir)  # the completed epoch's checkpoint, intact
    assert ckpt.metrics["epoch"] >= 1
    assert not [p for p in Path(h.spec.run_dir).iterdir() if p.name.endswith(".tmp")]
    rec = read_job(h.spec.run_dir, local)
    assert rec["status"] == "failed" and rec["error"] == WORKER_DIED
    assert nxt.wait(TIMEOUT) and nxt.status == "done", nxt.error
    assert nxt.worker["pid"] != pid and nxt.last("done")["test_acc"] is not None


def test_finetune_pretrain_and_a_failing_job_leave_the_worker_alive(local, job):
    base = local.submit(job("base", epochs=2))
    ft = local.submit(job("ft", kind="finetune", base=base.spec.run_dir, target="inverted", shots=5,
                          max_steps=20, eval_every=10, lr=3e-3))
    # new-classes needs a 0-4 base: the worker raises, the job fails with that message.
    bad = local.submit(job("ft-bad", kind="finetune", base=base.spec.run_dir, target="new-classes", shots=5,
                           max_steps=5))
    pre = local.submit(job("base-0-4", kind="pretrain", max_steps=5))
    for h in (base, ft, bad, pre):
        assert h.wait(TIMEOUT)
    assert pre.status == "done" and pre.last("done")["classes"] == [0, 1, 2, 3, 4], pre.error
    assert load_checkpoint(pre.spec.run_dir).metrics["classes"] == [0, 1, 2, 3, 4]
    assert base.status == "done" and ft.status == "done", (base.error, ft.error)
    done = ft.last("done")
    assert done["target"] == "inverted" and done["train_size"] == 50 and 0 <= done["target_acc_after"] <= 1
    assert {"start", "phase", "eval", "step", "done"} <= {ev["event"] for ev in ft.events()}
    assert read_job(ft.spec.run_dir, local)["config"]["shots"] == 5
    assert bad.status == "failed" and "needs a base pretrained only on digits" in bad.error
    assert bad.worker["pid"] == ft.worker["pid"]  # the same worker, still alive
    assert local.worker_pids() == [ft.worker["pid"]]


def test_job_json_of_a_job_no_executor_knows_reads_interrupted(tmp_path):
    run = tmp_path / "old-run"
    run.mkdir()
    (run / "job.json").write_text(json.dumps({"id": "gone", "kind": "train", "name": "old", "status": "running"}))
    (run / "events.jsonl").write_text('{"event": "start"}\n{"event": "step", "step": 1}\n{"event": "st')
    rec = read_job(run)
    assert rec["status"] == "interrupted" and rec["recorded_status"] == "running"
    assert read_events(run) == [{"event": "start"}, {"event": "step", "step": 1}]  # half a line is skipped
    assert read_job(tmp_path / "nothing") is None and read_events(tmp_path / "nothing") == []


def test_nothing_starts_on_import_and_get_executor_is_one_per_process(monkeypatch):
    import core.executor as ex_mod

    monkeypatch.setattr(ex_mod, "_SINGLETON", None)
    monkeypatch.setenv("MNIST_LAB_EXECUTOR", "local")
    ex = ex_mod.get_executor()
    try:
        assert ex is ex_mod.get_executor() and ex.kind == "local" and ex.worker_pids() == []
    finally:
        ex.shutdown()
    assert ex_mod._SINGLETON is None
    monkeypatch.setenv("MNIST_LAB_EXECUTOR", "spark")
    with pytest.raises(ValueError, match="local or ray"):
        ex_mod.get_executor()


# ------------------------------------------------------------------ Ray

@pytest.fixture(scope="module")
def ray_executor():
    """A RayExecutor that starts its own local Ray (2 CPUs, as on CI) from a thread that then
    ends, as Streamlit's script threads do: Ray's processes must outlive that thread."""
    ray = pytest.importorskip("ray")
    from core.executor import RayExecutor

    assert not ray.is_initialized()
    ex = RayExecutor(cpus_per_job=1, local_cpus=2)
    starter = threading.Thread(target=ex.start)
    starter.start()
    starter.join()
    time.sleep(1.0)  # the starting thread is gone: a Ray tied to it would be dead by now
    try:
        yield ex
    finally:
        ex.shutdown(timeout=30)
        assert not ray.is_initialized()


@pytest.mark.reliability("ray from a page")
def test_ray_runs_jobs_side_by_side_and_streams_events(ray_executor, job):
    a, b = (ray_executor.submit(job(n, max_steps=10)) for n in ("ray-a", "ray-b"))
    assert ray_executor.stats()["workers"] == 2
    for h in (a, b):
        assert h.wait(TIMEOUT)
        assert h.status == "done", h.error
        assert 0.0 <= h.last("done")["test_acc"] <= 1.0
        assert h.events() == read_events(h.spec.run_dir)
        rec = read_job(h.spec.run_dir, ray_executor)
        assert rec["executor"] == "ray" and rec["result"]["test_acc"] == h.last("done")["test_acc"]
    assert a.started_at < b.finished_at and b.started_at < a.finished_at  # 1 CPU each: both at once


@pytest.mark.reliability("ray from a page")
def test_ray_stop_and_cancel(ray_executor, job):
    long = [ray_executor.submit(job(f"ray-long-{i}", epochs=6)) for i in range(2)]
    queued = ray_executor.submit(job("ray-queued"))
    wait_for(lambda: all(h.last("epoch") is not None or h.finished for h in long), what="an epoch of each")
    assert queued.status == "queued" and queued.position == 1  # 2 CPUs, 1 per job: it waits
    queued.stop()
    assert queued.status == "cancelled" and files(queued.spec.run_dir) == {"job.json"}
    seen = steps(long[0])
    for h in long:
        h.stop()
    for h in long:
        assert h.wait(30) and h.status == "stopped"
    assert steps(long[0]) <= seen + 3
    assert load_checkpoint(long[0].spec.run_dir).metrics["epoch"] >= 1
    time.sleep(0.5)
    assert files(queued.spec.run_dir) == {"job.json"}
