"""Training jobs outside the web server: a first-come queue in front of worker processes
(default) or a Ray cluster (MNIST_LAB_EXECUTOR=ray).

    ex = get_executor()
    job = ex.submit(JobSpec("train", "fast-1", "runs/fast-1", TrainConfig(model="fast").to_dict()))
    job.status, job.position, job.eta_seconds, job.last("step")   # cheap: poll every second
    job.stop()                                                      # within one step; queued: cancelled

Why: training in a thread of the Streamlit server made four visitors training at once take
10x longer than one after the other (every run used every core, plus the GIL), and stalled
the server. Here the server only dispatches and records; the maths runs in as many worker
processes as the machine runs efficiently (one per GPU, else one per four cores), each with
its share of the cores, and the rest wait their turn.

Each job keeps two files in its run_dir besides the checkpoint (model.safetensors, run.json),
so a reloaded page or a restarted server can show a run without its handle:

  job.json      {"id", "kind", "name", "status", "error", "submitted_at", "started_at",
                 "finished_at", "config", "executor", "position" (only while queued),
                 "run_dir", "data_dir", "base", "target", "shots", "max_test", "workspace",
                 "worker" ({"pid", "host", "device", "threads"} once started), "result"
                 (the JSON-safe "done" event, once done)}. Times are Unix seconds (UTC).
                 Rewritten atomically at every change of status (and of queue position).
  events.jsonl  one JSON event per line, as train()/finetune()/pretrain_base() yield them
                 ("model_obj" dropped, tensors and numpy values as lists and numbers,
                 non-finite floats as null). Step events are appended in batches at most
                 ~0.5 s apart, every other event at once.
  stop          (Ray jobs, only while a stop request stands) the server asks the task to stop.

read_job(run_dir) reports a job that job.json calls queued or running, but that no live
executor of this process knows, as "interrupted" (see its docstring).

Status: queued -> running -> done | failed | stopped; queued -> cancelled.
"""
from __future__ import annotations

import atexit
import contextlib
import heapq
import json
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, fields
from importlib import import_module
from pathlib import Path
from typing import Callable, Iterator

from .files import atomic_write_text, read_json
from .hardware import cpu_count, gpu_names

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
EVENTS_FILE = "events.jsonl"
KINDS = ("train", "finetune", "pretrain")
ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "stopped", "cancelled")
WORKER_DIED = ("the worker process running this job died (killed, or out of memory); "
               "the last completed checkpoint is kept")
FLUSH_SECONDS = 0.5  # step events reach events.jsonl at most this late
KEEP_FINISHED = 256  # finished handles kept in memory per executor (their files stay on disk)


@dataclass
class JobSpec:
    """What to run. config: TrainConfig.to_dict() for train/pretrain, FinetuneConfig.to_dict()
    for finetune.

    data_dir: an MNIST folder; None means core.load_mnist()'s discovery where the job runs,
    with the submitting process's $MNIST_DIR passed along when that folder exists there.
    base (finetune): a run folder, model.safetensors, or a shipped .onnx (core.insights.checkpoint_for).
    target/shots/max_test (finetune): the target the worker builds with core.targets.build_target;
    each one, when given here (target not None, shots not 10, max_test not None), replaces
    the config's field of the same name, so the recorded config always says what ran.
    A user:<folder> target's folder must exist until the job has started (keep it in run_dir).
    """
    kind: str
    name: str
    run_dir: str
    config: dict
    data_dir: str | None = None
    base: str | None = None
    target: str | None = None
    shots: int = 10
    max_test: int | None = None
    workspace: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ files

def _json_safe(v):
    """Plain JSON types only: what the handle keeps is exactly what events.jsonl reads back."""
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items() if k != "model_obj"}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return float(v) if math.isfinite(v) else None
    if hasattr(v, "tolist"):  # torch tensors, numpy arrays and numpy scalars, without importing either
        return _json_safe(v.tolist())
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return str(v)


def read_events(run_dir: str | os.PathLike) -> list[dict]:
    """The events a job recorded in run_dir/events.jsonl ([] when none). A line that does not
    parse (the last one, while it is being written) is skipped."""
    try:
        text = (Path(run_dir) / EVENTS_FILE).read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict):
            out.append(ev)
    return out


def read_job(run_dir: str | os.PathLike, executor: "Executor | None" = None) -> dict | None:
    """run_dir/job.json as a dict, or None when there is none (or it is unreadable).

    A job recorded as queued or running whose id `executor` does not know is reported with
    status "interrupted" (and "recorded_status" keeping what the file says): its server
    stopped, or it was submitted by another process. executor defaults to the process-wide
    one if get_executor() has already made it; this never starts one, and with none at all
    every queued/running record reads as interrupted.
    """
    job = read_json(Path(run_dir) / JOB_FILE)
    if job is None or job.get("status") not in ACTIVE:
        return job
    ex = executor if executor is not None else _SINGLETON
    if ex is None or ex.get(str(job.get("id"))) is None:
        job["recorded_status"] = job["status"]
        job["status"] = "interrupted"
        job.pop("position", None)
    return job


# ------------------------------------------------------------------ settings

def _check_keys(config: dict, cls) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} for a {cls.__name__}; "
                         f"known: {', '.join(sorted(known))}")


def _check_target(target: str) -> None:
    from .config import KINDS as TARGET_KINDS, SHIFTS, TARGETS, parse_spec

    kind, arg = parse_spec(target)
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if kind in SHIFTS and arg is not None:
        import torch

        from .targets import shift_images

        shift_images(kind, torch.zeros(1, 28, 28, dtype=torch.uint8), arg)  # raises on a bad DEG / SIGMA
    if kind == "subset":
        try:
            n = int(arg or "")
        except ValueError:
            raise ValueError(f"subset:N needs a whole number of digits, got {target!r}") from None
        if n < 1:
            raise ValueError(f"subset:N needs at least 1 digit, got {n}")
    if kind == "user" and (not arg or not Path(arg).is_dir()):
        raise ValueError("user:DIR needs an existing folder of labeled drawings")


def _prepare_config(spec: JobSpec) -> dict:
    """The config a job will run with, validated; raises ValueError (naming the allowed range)
    before anything is queued. Train jobs get log_every=1: the stop flag is read after every
    event, so a step event every step is what makes Stop take effect within one step."""
    if spec.kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {spec.kind!r}")
    if not isinstance(spec.name, str) or not spec.name.strip():
        raise ValueError("a job needs a name")
    if not spec.run_dir:
        raise ValueError("a job needs a run_dir")
    if not isinstance(spec.config, dict):
        raise ValueError(f"config must be a dict (a config's to_dict()), got {type(spec.config).__name__}")
    if spec.data_dir is not None and not Path(spec.data_dir).is_dir():
        raise ValueError("data_dir is not a folder")
    if spec.kind in ("train", "pretrain"):
        from .config import TrainConfig  # no torch: the web server validates jobs too

        _check_keys(spec.config, TrainConfig)
        cfg = TrainConfig.from_dict(spec.config).validate()
        cfg.log_every = 1
        return cfg.to_dict()
    from .finetune import FinetuneConfig

    _check_keys(spec.config, FinetuneConfig)
    config = dict(spec.config)
    if spec.target is not None:
        config["target"] = spec.target
    if spec.shots != JobSpec.shots:
        config["shots"] = spec.shots
    if spec.max_test is not None:
        config["max_test"] = spec.max_test
    cfg = FinetuneConfig.from_dict(config).validate()
    _check_target(cfg.target)
    if not spec.base:
        raise ValueError("a fine-tune job needs a base model (a run folder, checkpoint or .onnx file)")
    if not Path(spec.base).exists():
        raise ValueError(f"base model {Path(spec.base).name}: no such file or folder")
    return cfg.to_dict()


# ------------------------------------------------------------------ what a worker runs

class _DataCache:
    """Datasets a worker already loaded, by folder: a worker serves many jobs, and reading
    full MNIST again for each would cost seconds per job."""

    def __init__(self, size: int = 2):
        self._size = size
        self._data: OrderedDict = OrderedDict()

    def get(self, data_dir: str | None, mnist_dir: str | None):
        from .data import load_mnist

        if data_dir is None and mnist_dir and Path(mnist_dir).is_dir():
            data_dir = mnist_dir
        key = data_dir or ""
        if key not in self._data:
            self._data[key] = load_mnist(data_dir)
            while len(self._data) > self._size:
                self._data.popitem(last=False)
        self._data.move_to_end(key)
        return self._data[key]


def _job_events(payload: dict, data) -> Iterator[dict]:
    kind, config, run_dir = payload["kind"], dict(payload["config"]), payload["run_dir"]
    if payload.get("force_device"):
        config["device"] = payload["force_device"]
    if kind in ("train", "pretrain"):
        from .train import TrainConfig

        cfg = TrainConfig.from_dict(config)
        if kind == "train":
            from .train import train

            return train(cfg, data, run_dir=run_dir)
        from .finetune import pretrain_base

        return pretrain_base(data, run_dir=run_dir, cfg=cfg)
    from .finetune import FinetuneConfig, finetune
    from .insights import checkpoint_for

    # As the Fine-tune page does: a shipped .onnx base is rebuilt in torch, calibrated on real digits.
    base = checkpoint_for(payload["base"], "cpu", calibration=data.train_images[:2048])
    return finetune(FinetuneConfig.from_dict(config), base, data, run_dir=run_dir)


def _error_text(e: BaseException) -> str:
    return str(e) or e.__class__.__name__


def _worker_info() -> dict:
    import torch

    from .device import configure_cpu

    configure_cpu()  # this worker's share of the cores ($MNIST_LAB_TORCH_THREADS), also for GPU jobs
    return {"pid": os.getpid(), "host": socket.gethostname(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available()}


def _run_job(payload: dict, cache: _DataCache, should_stop: Callable[[], bool]) -> Iterator[dict]:
    """One job, in a worker: yields control messages ({"_ctl": "running" | "end", ...}) and the
    job's JSON-safe events. should_stop() is asked before anything runs and after every event;
    a stop closes the training generator, so the checkpoint of the last completed epoch
    (written atomically) is what stays on disk."""
    if should_stop():
        yield {"_ctl": "end", "status": "cancelled", "error": None}
        return
    yield {"_ctl": "running", "worker": _worker_info()}
    gen = None
    status, error = "done", None
    try:
        data = cache.get(payload.get("data_dir"), payload.get("mnist_dir"))
        gen = _job_events(payload, data)
        for ev in gen:
            ev = _json_safe(ev)
            yield ev
            if ev.get("event") != "done" and should_stop():
                status = "stopped"
                break
    except Exception as e:  # noqa: BLE001 - reported as the job's error; the worker lives on
        status, error = "failed", _error_text(e)
    finally:
        if gen is not None:
            gen.close()
    if status == "failed":
        _free_memory()
    yield {"_ctl": "end", "status": status, "error": error}


def _free_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # a failed (out-of-memory) job must not starve the next one
    except Exception:  # noqa: BLE001 - best effort
        pass


# ------------------------------------------------------------------ handles

class JobHandle:
    """A submitted job, as seen by the process that submitted it. Thread-safe; every read is a
    snapshot under a lock, cheap enough to poll each second from many page reruns."""

    def __init__(self, spec: JobSpec, config: dict, executor: "Executor"):
        self.id = uuid.uuid4().hex[:12]
        self.spec = spec
        self.config = config
        self._executor = executor
        self._lock = threading.Lock()
        self._io = threading.Lock()  # one writer of job.json / events.jsonl at a time, in order
        self._status = "queued"
        self._error: str | None = None
        self._events: list[dict] = []
        self._last: dict[str, dict] = {}
        self._pending: list[str] = []
        self._flushed_at = 0.0
        self._finished = threading.Event()
        self.submitted_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.worker: dict | None = None
        self.run_dir = Path(spec.run_dir)
        self._mnist_dir = os.environ.get("MNIST_DIR") if spec.data_dir is None else None
        self._stop_requested: float | None = None

    def __repr__(self) -> str:
        return f"JobHandle({self.id}, {self.spec.kind} {self.spec.name!r}, {self.status})"

    # ---- public reads
    @property
    def status(self) -> str:
        return self._status

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def position(self) -> int | None:
        """1-based place in line while queued, else None."""
        return self._executor._position(self) if self._status == "queued" else None

    @property
    def eta_seconds(self) -> float | None:
        """Queued: a rough wait (the work ahead over the workers); running: the time left at the
        current step rate. None when nothing measured yet allows a guess."""
        if self._status not in ACTIVE:
            return None
        return self._executor._eta(self)

    @property
    def finished(self) -> bool:
        return self._status in FINISHED

    def events(self) -> list[dict]:
        with self._lock:
            return list(self._events)

    def last(self, event_name: str) -> dict | None:
        with self._lock:
            return self._last.get(event_name)

    def stop(self) -> None:
        """Running: stop after the current step (last completed checkpoint kept, "stopped");
        queued: cancel ("cancelled", nothing runs). Finished: nothing."""
        self._executor._stop(self)

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    # ---- executor side
    def _payload(self) -> dict:
        return {"id": self.id, "kind": self.spec.kind, "config": self.config, "run_dir": str(self.run_dir),
                "data_dir": self.spec.data_dir, "mnist_dir": self._mnist_dir, "base": self.spec.base}

    def _record(self, position: int | None) -> dict:
        s = self.spec
        rec = {"id": self.id, "kind": s.kind, "name": s.name, "status": self._status, "error": self._error,
               "submitted_at": self.submitted_at, "started_at": self.started_at, "finished_at": self.finished_at,
               "config": self.config, "executor": self._executor.kind, "run_dir": str(self.run_dir),
               "data_dir": s.data_dir, "base": s.base, "target": self.config.get("target") if s.kind == "finetune"
               else None, "shots": self.config.get("shots"), "max_test": self.config.get("max_test"),
               "workspace": s.workspace, "worker": self.worker, "result": self._last.get("done")}
        if self._status == "queued" and position is not None:
            rec["position"] = position
        return rec

    def _write_job(self) -> None:
        with self._io:
            position = self.position
            with self._lock:
                text = json.dumps(self._record(position), indent=2)
            try:
                atomic_write_text(self.run_dir / JOB_FILE, text)
            except OSError as e:  # a full or vanished disk must not kill the dispatcher
                log.warning("job %s: cannot write %s: %s", self.id, JOB_FILE, e)

    def _flush(self, force: bool = False) -> None:
        with self._io:
            with self._lock:
                if not self._pending or (not force and time.monotonic() - self._flushed_at < FLUSH_SECONDS):
                    return
                lines, self._pending = self._pending, []
                self._flushed_at = time.monotonic()
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                with open(self.run_dir / EVENTS_FILE, "a") as f:
                    f.write("".join(lines))
            except OSError as e:
                log.warning("job %s: cannot append to %s: %s", self.id, EVENTS_FILE, e)

    def _add_event(self, ev: dict) -> None:
        with self._lock:
            if self._status in FINISHED:
                return
            self._events.append(ev)
            name = ev.get("event")
            if isinstance(name, str):
                self._last[name] = ev
            self._pending.append(json.dumps(ev) + "\n")
        self._flush(force=ev.get("event") != "step")


# ------------------------------------------------------------------ executors

class Executor:
    """What the pages use: submit, look up, list, stop (via the handle), shut down."""

    kind = "base"

    def __init__(self):
        self._lock = threading.RLock()
        self._handles: OrderedDict[str, JobHandle] = OrderedDict()
        self._closed = False
        # Measured, for the queue's wait estimates.
        self._sec_per_step: dict[tuple, float] = {}
        self._durations: dict[str, list[float]] = {}
        self._n_images: dict[str, int] = {}

    # ---- public
    def submit(self, spec: JobSpec) -> JobHandle:
        """Validate, record job.json, queue. Raises ValueError (bad settings, naming the allowed
        range) or RuntimeError (shut down) with nothing queued."""
        if self._closed:
            raise RuntimeError("this executor has been shut down")
        config = _prepare_config(spec)
        self._check_resources(spec, config)
        h = JobHandle(spec, config, self)
        with self._lock:
            self._handles[h.id] = h
        self._enqueue(h)
        h._write_job()  # after enqueueing, so it has its place in line (a later write wins: see _io)
        return h

    def get(self, job_id: str) -> JobHandle | None:
        with self._lock:
            return self._handles.get(job_id)

    def jobs(self) -> list[JobHandle]:
        with self._lock:
            return list(self._handles.values())

    def stats(self) -> dict:
        with self._lock:
            hs = list(self._handles.values())
        return {"running": sum(h.status == "running" for h in hs), "queued": sum(h.status == "queued" for h in hs),
                "workers": self.workers, "kind": self.kind}

    @property
    def workers(self) -> int:
        return 1

    @property
    def closed(self) -> bool:
        return self._closed

    def shutdown(self, timeout: float = 30.0) -> None:
        raise NotImplementedError

    # ---- for subclasses
    def _check_resources(self, spec: JobSpec, config: dict) -> None:
        pass

    def _enqueue(self, h: JobHandle) -> None:
        raise NotImplementedError

    def _stop(self, h: JobHandle) -> None:
        raise NotImplementedError

    def _queued(self) -> list[JobHandle]:
        """Queued handles in the order they will start."""
        with self._lock:
            return [h for h in self._handles.values() if h._status == "queued"]

    def _position(self, h: JobHandle) -> int | None:
        q = self._queued()
        return q.index(h) + 1 if h in q else None

    def _set_running(self, h: JobHandle, worker: dict | None = None) -> bool:
        with self._lock:
            if h._status != "queued":
                return False
            with h._lock:
                h._status = "running"
                h.started_at = time.time()
                if worker is not None:
                    h.worker = worker
        return True

    def _finish(self, h: JobHandle, status: str, error: str | None = None) -> None:
        with self._lock:
            if h._status in FINISHED:
                return
            was_running = h._status == "running"
            with h._lock:
                h._status = status
                h._error = error
                h.finished_at = time.time()
            if was_running:
                self._measure(h)
            self._forget_old()
        h._flush(force=True)
        h._write_job()
        h._finished.set()
        if status == "failed":
            log.warning("job %s (%s) failed: %s", h.id, h.spec.name, error)

    def _forget_old(self) -> None:
        done = [k for k, h in self._handles.items() if h._status in FINISHED]
        for k in done[:max(0, len(done) - KEEP_FINISHED)]:
            del self._handles[k]

    def _after_queue_change(self) -> None:
        """Queued jobs' job.json carry their place in line: rewrite them when it moves."""
        for h in self._queued():
            h._write_job()

    # ---- wait estimates
    def _data_key(self, h: JobHandle) -> str:
        return h.spec.data_dir or h._mnist_dir or ""

    def _model_key(self, h: JobHandle) -> tuple:
        return (h.spec.kind, h.config.get("model") or "", h.config.get("device", "auto"))

    def _measure(self, h: JobHandle) -> None:
        steps = sum(1 for ev in h._events if ev.get("event") == "step")
        took = (h.finished_at or time.time()) - (h.started_at or h.submitted_at)
        start = h._last.get("start") or {}
        if h.spec.kind == "train" and isinstance(start.get("train_size"), int):
            self._n_images[self._data_key(h)] = start["train_size"] + int(start.get("val_size") or 0)
        if h._status == "done":
            recent = self._durations.setdefault(h.spec.kind, [])
            recent.append(took)
            del recent[:-20]  # the recent past: speeds change with load and hardware
            if steps:
                self._sec_per_step[self._model_key(h)] = took / steps
                self._sec_per_step[("any",)] = took / steps

    def _estimate_steps(self, h: JobHandle) -> int | None:
        c = h.config
        bs = int(c.get("batch_size") or 1)
        max_steps = c.get("max_steps")
        if h.spec.kind in ("train", "pretrain"):
            n = self._n_images.get(self._data_key(h))
            if n is None:
                return max_steps
            if h.spec.kind == "pretrain":
                n //= 2  # digits 0-4 only
            n_train = max(1, n - min(int(c.get("val_size") or 0), n // 10))
            total = int(c.get("epochs") or 1) * max(1, n_train // min(bs, n_train))
            return min(total, max_steps) if max_steps else total
        kind, _, arg = str(c.get("target") or "").partition(":")
        n_train = {"new-classes": 5 * int(c.get("shots") or 10)}.get(kind, 10 * int(c.get("shots") or 10))
        if kind == "subset" and arg.isdigit():
            n_train = int(arg)
        elif kind == "user":
            n_train = None
        if n_train is None:
            total = max_steps
        else:
            per = max(1, n_train // min(bs, n_train))
            epochs = c.get("epochs") or math.ceil((max_steps or per) / per)
            total = min(epochs * per, max_steps) if max_steps else epochs * per
        if total is None:
            return None
        return total * (2 if c.get("baseline", True) else 1)

    def _estimate_seconds(self, h: JobHandle) -> float | None:
        steps = self._estimate_steps(h)
        spp = self._sec_per_step.get(self._model_key(h)) or self._sec_per_step.get(("any",))
        if steps and spp:
            return steps * spp
        took = self._durations.get(h.spec.kind) or [d for ds in self._durations.values() for d in ds]
        return sum(took) / len(took) if took else None

    def _remaining(self, h: JobHandle) -> float | None:
        step = h._last.get("step")
        if step and step.get("step") and step.get("total_steps"):
            rate = float(step.get("elapsed") or 0.0) / step["step"]
            left = (step["total_steps"] - step["step"]) * rate
            if h.spec.kind == "finetune" and step.get("phase") == "finetune" and h.config.get("baseline", True):
                left += step["total_steps"] * rate  # the from-scratch baseline comes after
            return left
        est = self._estimate_seconds(h)
        if est is None:
            return None
        return max(0.0, est - (time.time() - (h.started_at or time.time())))

    def _eta(self, h: JobHandle) -> float | None:
        with self._lock:
            if h._status == "running":
                return self._remaining(h)
            running = [r for r in self._handles.values() if r._status == "running"]
            ahead = []
            for q in self._queued():
                if q is h:
                    break
                ahead.append(q)
            free = [self._remaining(r) for r in running]
            work = [self._estimate_seconds(q) for q in ahead]
        if any(x is None for x in free + work):
            return None
        # Hand the work ahead to the workers in queue order, each to whichever frees up first.
        slots = sorted(free + [0.0] * max(0, self.workers - len(free)))[:max(1, self.workers)]
        heapq.heapify(slots)
        for w in work:
            heapq.heappush(slots, heapq.heappop(slots) + w)
        return slots[0]


# ------------------------------------------------------------------ local worker processes

def _worker_main(conn, stop_seq, env: dict) -> None:
    """A worker process: import torch once, warm up, then run jobs sent over conn until told to
    exit or the server goes away (its end of the pipe closes)."""
    os.environ.update(env)
    # Ctrl-C in the server's terminal reaches the whole process group; the server shuts jobs
    # down itself (stop, then exit), so a worker ignores it rather than die mid-step.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Training is batch work; the web server answers people. At a lower priority the worker still
    # gets every idle cycle, but a visitor's stroke is read first when the two compete for the cores.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.nice(int(os.environ.get("MNIST_LAB_WORKER_NICE", "10")))
    try:
        info = _warm_up_worker()
    except BaseException as e:  # noqa: BLE001 - reported to the server, which fails the job
        info, error = None, _error_text(e)
    try:
        conn.send({"_ctl": "ready", "worker": info} if info else {"_ctl": "start_failed", "error": error})
    except OSError:
        return
    if info is None:
        return
    cache = _DataCache()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if not isinstance(msg, tuple) or msg[0] != "job":
            return
        _, seq, payload = msg
        try:
            for ev in _run_job(payload, cache, lambda: stop_seq.value == seq):
                conn.send(ev)
        except (BrokenPipeError, EOFError, OSError):
            return
        _trim_memory()


def _trim_memory() -> None:
    """Give a finished job's freed heap back to the system: an idle worker otherwise keeps the
    high-water mark of its biggest job."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


def _warm_up_worker() -> dict:
    """The once-per-process costs, paid before the first job: torch's import, its CPU kernels'
    first use, and on a GPU the CUDA context (core.train.warm_up)."""
    t0 = time.perf_counter()
    import torch

    from .device import configure_cpu, device_name, resolve_device
    from .models import ModelConfig, build_model
    from .train import TrainConfig, warm_up

    import_module(".finetune", __package__)  # imported now, not during the first fine-tune

    configure_cpu()
    device = resolve_device("auto")
    model = build_model(ModelConfig(name="fast"))
    if device.type == "cuda":
        warm_up(model, TrainConfig(), device, 128)
    else:
        model.train()
        model(torch.zeros(8, 1, 28, 28)).sum().backward()
    del model
    info = _worker_info()
    info.update(device=device_name(device), startup_seconds=time.perf_counter() - t0)
    return info


class _Slot:
    """One worker process and the dispatcher thread that feeds it."""

    def __init__(self, index: int):
        self.index = index
        self.proc = None
        self.conn = None
        self.stop_seq = None
        self.info: dict | None = None
        self.thread: threading.Thread | None = None
        self.seq = 0
        self.job: JobHandle | None = None


class LocalExecutor(Executor):
    """Persistent worker processes ("spawn": the server is multi-threaded, never fork it), one
    job each at a time, a first-come queue in front. Like every "spawn" child, a worker imports
    the server's main module under another name: it must do nothing at import outside its
    `if __name__ == "__main__":` block (Streamlit's command does nothing).

    workers: $MNIST_LAB_WORKERS, else one per GPU (each pinned to its GPU through
    CUDA_VISIBLE_DEVICES), else one per four cores (1 on a 2-core box). Each gets cores // workers
    torch threads, so jobs side by side never oversubscribe the cores."""

    kind = "local"

    def __init__(self, workers: int | None = None):
        super().__init__()
        gpus = len(gpu_names())
        env_n = os.environ.get("MNIST_LAB_WORKERS")
        try:
            n = workers or (int(env_n) if env_n else 0)
        except ValueError:
            raise ValueError(f"MNIST_LAB_WORKERS must be a whole number, got {env_n!r}") from None
        self._n = max(1, n or gpus or cpu_count() // 4)
        self._gpus = gpus
        self._threads = max(1, cpu_count() // self._n)
        self._queue: deque[JobHandle] = deque()
        self._cond = threading.Condition(self._lock)
        self._slots = [_Slot(i) for i in range(self._n)]
        self._started = False
        import multiprocessing

        self._ctx = multiprocessing.get_context("spawn")

    @property
    def workers(self) -> int:
        return self._n

    def start(self) -> None:
        """Start the workers now (submit does it on first use): torch's import and warm-up
        then happen before the first job rather than inside it."""
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
        for slot in self._slots:
            slot.thread = threading.Thread(target=self._dispatch, args=(slot,), daemon=True,
                                           name=f"mnist-lab-dispatch-{slot.index}")
            slot.thread.start()

    def worker_pids(self) -> list[int]:
        return [s.proc.pid for s in self._slots if s.proc is not None and s.proc.is_alive()]

    def _check_resources(self, spec: JobSpec, config: dict) -> None:
        if str(config.get("device", "auto")).startswith("cuda") and not self._gpus:
            raise ValueError("device cuda was requested but this machine has no GPU; use auto or cpu")

    def _enqueue(self, h: JobHandle) -> None:
        with self._cond:
            self._queue.append(h)
            self._cond.notify()
        self.start()

    def _queued(self) -> list[JobHandle]:
        with self._lock:
            return list(self._queue)

    def _stop(self, h: JobHandle) -> None:
        with self._lock:
            if h in self._queue:
                self._queue.remove(h)
                cancelled = True
            else:
                cancelled = False
                if h._status == "running" and h._stop_requested is None:
                    h._stop_requested = time.time()
                    for slot in self._slots:
                        if slot.job is h and slot.stop_seq is not None:
                            slot.stop_seq.value = slot.seq
        if cancelled:
            self._finish(h, "cancelled")
            self._after_queue_change()

    # ---- the dispatcher thread of one slot
    def _spawn(self, slot: _Slot) -> str | None:
        """Start slot's worker and wait until it is warm; returns an error text on failure."""
        env = {"MNIST_LAB_TORCH_THREADS": str(self._threads), "OMP_NUM_THREADS": str(self._threads),
               "MKL_NUM_THREADS": str(self._threads)}
        if self._gpus:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(self._gpus)]
            env["CUDA_VISIBLE_DEVICES"] = ids[slot.index % len(ids)]
        parent, child = self._ctx.Pipe()
        slot.stop_seq = self._ctx.Value("q", -1, lock=False)
        proc = self._ctx.Process(target=_worker_main, args=(child, slot.stop_seq, env), daemon=True,
                                 name=f"mnist-lab-worker-{slot.index}")
        proc.start()
        child.close()  # so that the worker's death reads as EOF here
        slot.proc, slot.conn = proc, parent
        try:
            msg = parent.recv()
        except (EOFError, OSError):
            msg = {"_ctl": "start_failed", "error": f"the worker process exited while starting "
                                                  f"(exit code {proc.exitcode})"}
        if msg.get("_ctl") != "ready":
            self._reap(slot)
            return str(msg.get("error") or "the worker process did not start")
        slot.info = msg["worker"]
        log.info("executor worker %d ready: %s", slot.index, slot.info)
        return None

    def _reap(self, slot: _Slot) -> None:
        if slot.conn is not None:
            slot.conn.close()
        if slot.proc is not None:
            slot.proc.join(5)
            if slot.proc.is_alive():
                slot.proc.kill()
                slot.proc.join(5)
        slot.proc = slot.conn = slot.info = None

    def _take(self) -> JobHandle | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            h = self._queue.popleft()
            self._set_running(h)
            return h

    def _dispatch(self, slot: _Slot) -> None:
        failures = 0
        while not self._closed:
            if slot.proc is None or not slot.proc.is_alive():
                if slot.proc is not None:
                    self._reap(slot)
                error = self._spawn(slot)
                if error is not None:
                    failures += 1
                    log.warning("executor worker %d did not start: %s", slot.index, error)
                    if failures >= 3:  # a broken install: fail the next job with the reason, not loop
                        h = self._take()
                        if h is not None:
                            self._finish(h, "failed", f"the worker process could not start: {error}")
                            self._after_queue_change()
                    time.sleep(min(30.0, 2.0 ** failures))
                    continue
                failures = 0
            h = self._take()
            if h is None:
                break
            self._after_queue_change()
            h._write_job()
            self._run_on(slot, h)
        if slot.proc is not None and slot.conn is not None:
            try:
                slot.conn.send(("exit",))
            except OSError:
                pass
            self._reap(slot)

    def _run_on(self, slot: _Slot, h: JobHandle) -> None:
        with self._lock:
            slot.seq += 1
            slot.job = h
            slot.stop_seq.value = -1
            if h._stop_requested is not None:
                slot.stop_seq.value = slot.seq  # stopped between leaving the queue and now
        status, error = "failed", WORKER_DIED
        payload = h._payload()
        if self._gpus and str(h.config.get("device", "")).startswith("cuda:"):
            payload["force_device"] = "cuda"  # the worker sees only its own GPU, as cuda:0
        try:
            slot.conn.send(("job", slot.seq, payload))
            while True:
                if not slot.conn.poll(FLUSH_SECONDS):
                    h._flush()
                    continue
                msg = slot.conn.recv()
                ctl = msg.get("_ctl")
                if ctl is None:
                    h._add_event(msg)
                elif ctl == "running":
                    with h._lock:
                        h.worker = {**(slot.info or {}), **msg["worker"]}
                    h._write_job()
                elif ctl == "end":
                    status, error = msg["status"], msg["error"]
                    break
        except (EOFError, OSError):
            self._reap(slot)  # a fresh worker is started before the next job
            _remove_partial_files(h.run_dir)
        finally:
            with self._lock:
                slot.job = None
        if status == "cancelled":
            status = "stopped" if h._events else "cancelled"
        self._finish(h, status, error)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Cancel queued jobs, stop running ones (after their current step) and end the workers;
        a worker still busy after `timeout` seconds is killed."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            queued = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
            running = [s.job for s in self._slots if s.job is not None]
        for h in queued:
            self._finish(h, "cancelled")
        for h in running:
            self._stop(h)
        deadline = time.monotonic() + timeout
        for h in running:
            h.wait(max(0.0, deadline - time.monotonic()))
        for slot in self._slots:
            if slot.thread is not None:
                slot.thread.join(max(0.1, deadline - time.monotonic()))
            if slot.proc is not None and slot.proc.is_alive():
                slot.proc.kill()
                slot.proc.join(5)
        _forget_singleton(self)


def _remove_partial_files(run_dir: Path) -> None:
    """A worker killed inside core.files.atomic_write leaves its temporary file behind (the real
    file is untouched): remove those, so the run folder holds only complete files."""
    try:
        for p in run_dir.glob(".*.tmp"):
            p.unlink(missing_ok=True)
    except OSError:
        pass


# ------------------------------------------------------------------ Ray

STOP_FILE = "stop"  # a Ray job's stop request, in its run_dir


class _StopFile:
    """should_stop() for a Ray task: has the server written run_dir/stop? The run directory is
    on a volume the server and every node share (the task writes its checkpoints there too).

    No Ray call in here on purpose: a Ray task blocked in ray.get (even briefly, asking an actor
    whether to stop) lends its CPUs to the next queued task, which then trains beside it. That
    ran three 2-CPU jobs at once on 2 cores, each 14x slower than alone."""

    def __init__(self, run_dir: str):
        self._path, self._stopped = Path(run_dir) / STOP_FILE, False

    def __call__(self) -> bool:  # once per step: one stat, microseconds against a step's milliseconds
        self._stopped = self._stopped or self._path.exists()
        return self._stopped


_RAY_CACHE: _DataCache | None = None


def _ray_job(payload: dict) -> Iterator[dict]:
    """The Ray task (a streaming generator): run_job's messages, one Ray object each."""
    global _RAY_CACHE
    os.environ["MNIST_LAB_TORCH_THREADS"] = str(payload["threads"])
    if _RAY_CACHE is None:  # Ray reuses worker processes: keep the data loaded between jobs
        _RAY_CACHE = _DataCache(size=1)
    yield from _run_job(payload, _RAY_CACHE, _StopFile(payload["run_dir"]))


RAY_WORKER_DIED = ("the Ray worker running this job died (killed, out of memory, or its node went away); "
                   "the last completed checkpoint is kept")
STOP_GRACE_SECONDS = 60.0  # a stop not honoured by then (a step that hangs) is forced with ray.cancel


class RayExecutor(Executor):
    """Each job is a Ray task asking for its CPUs (and one GPU when the cluster has GPUs and the
    job may use CUDA), so Ray queues and places jobs across the cluster. Events stream back
    through a streaming generator task; one pump thread here reads them all.

    Ray starts on first submit: connecting to $RAY_ADDRESS when set (or `address`), else a
    local Ray sized to this machine. Already initialised (ray.init by the caller): used as is.
    Every node needs this project's code importable (the same checkout on PYTHONPATH, or a
    runtime_env), the data (data_dir / $MNIST_DIR at the same path, else its own discovery,
    down to the offline sample), and run_dir on a volume shared with the server: the task
    writes checkpoints there while the server writes job.json and events.jsonl beside them.
    """

    kind = "ray"

    def __init__(self, cpus_per_job: int | None = None, address: str | None = None,
                 local_cpus: int | None = None):
        """local_cpus: the size of the local Ray this starts when there is no address (default:
        this machine's cores)."""
        super().__init__()
        self._local_cpus = local_cpus
        self._ray_owner_exit = threading.Event()
        env_cpus = os.environ.get("MNIST_LAB_JOB_CPUS")
        self._cpus = int(cpus_per_job or (int(env_cpus) if env_cpus else 0) or min(4, cpu_count()))
        self._address = address or os.environ.get("RAY_ADDRESS")
        self._ray = None
        self._owns_ray = False
        self._remote = None
        self._gens: dict[str, object] = {}  # job id -> ObjectRefGenerator, while it may yield
        self._pump: threading.Thread | None = None
        self._wake = threading.Condition(self._lock)
        self._resources: tuple[float, dict] = (0.0, {})

    def start(self) -> None:
        with self._lock:
            if self._ray is not None or self._closed:
                return
            import ray

            if not ray.is_initialized():
                self._init_ray(ray)
                self._owns_ray = True
            self._ray = ray
            self._remote = ray.remote(max_retries=0)(_ray_job)
            self._pump = threading.Thread(target=self._pump_events, daemon=True, name="mnist-lab-ray-pump")
            self._pump.start()

    def _init_ray(self, ray) -> None:
        """ray.init from a thread that lives as long as this process.

        A local Ray's GCS and raylet are started with PR_SET_PDEATHSIG, which Linux fires when
        the *thread* that started them exits. Streamlit runs each script run in a thread that
        ends right after it, so a ray.init made there was killed within seconds, and with it
        the server (Ray's driver exits when it loses its GCS). Connecting to a cluster starts
        no local processes, but goes through the same thread for one code path."""
        done: dict = {}
        ready = threading.Event()

        def owner() -> None:
            try:
                if self._address:
                    ray.init(address=self._address, log_to_driver=False)
                else:
                    # Small: no dashboard, an 80 MB object store (events are tiny), no worker logs
                    # in the server's output.
                    ray.init(num_cpus=self._local_cpus or cpu_count(), num_gpus=len(gpu_names()),
                             include_dashboard=False,
                             object_store_memory=80 * 2**20, log_to_driver=False,
                             logging_level=logging.WARNING)
            except BaseException as e:  # noqa: BLE001 - handed to start()'s caller
                done["error"] = e
            ready.set()
            if "error" not in done:
                self._ray_owner_exit.wait()  # keep Ray's processes' parent thread alive

        threading.Thread(target=owner, daemon=True, name="mnist-lab-ray-owner").start()
        ready.wait()
        if "error" in done:
            raise done["error"]

    def _cluster(self) -> dict:
        if self._ray is None:
            return {}
        at, res = self._resources
        if time.monotonic() - at > 5.0:
            try:
                res = dict(self._ray.cluster_resources())
            except Exception:  # noqa: BLE001 - keep the last answer
                pass
            self._resources = (time.monotonic(), res)
        return res

    @property
    def workers(self) -> int:
        res = self._cluster()
        if not res:
            return max(1, cpu_count() // self._cpus)
        gpus = int(res.get("GPU", 0))
        return max(1, gpus or int(res.get("CPU", 1) // self._cpus))

    def _check_resources(self, spec: JobSpec, config: dict) -> None:
        self.start()
        device = str(config.get("device", "auto"))
        if device.startswith("cuda") and not self._cluster().get("GPU"):
            raise ValueError("device cuda was requested but the Ray cluster has no GPU; use auto or cpu")

    def _enqueue(self, h: JobHandle) -> None:
        device = str(h.config.get("device", "auto"))
        use_gpu = device != "cpu" and bool(self._cluster().get("GPU"))
        payload = {**h._payload(), "threads": self._cpus if not use_gpu else 1,
                   # Ray sets CUDA_VISIBLE_DEVICES to the GPU it gave; a job given none stays on the CPU.
                   "force_device": "cuda" if use_gpu else "cpu"}
        opts = dict(num_cpus=payload["threads"], num_gpus=1 if use_gpu else 0, num_returns="streaming",
                    name=f"mnist-lab-{h.spec.kind}-{h.spec.name}"[:100])
        with self._wake:
            self._gens[h.id] = self._remote.options(**opts).remote(payload)
            self._wake.notify()

    def _stop(self, h: JobHandle) -> None:
        with self._lock:
            if h._status not in ACTIVE or self._ray is None:
                return
            if h._stop_requested is None:
                h._stop_requested = time.time()
            queued = h._status == "queued"
            gen = self._gens.get(h.id)
            if queued:
                self._gens.pop(h.id, None)
        if not queued:
            atomic_write_text(h.run_dir / STOP_FILE, "")
        if queued:
            if gen is not None:
                self._ray.cancel(gen)
            self._finish(h, "cancelled")
            self._after_queue_change()

    def _pump_events(self) -> None:
        ray = self._ray
        while True:
            with self._wake:
                while not self._gens and not self._closed:
                    self._wake.wait(1.0)
                if self._closed and not self._gens:
                    return
                live = dict(self._gens)
            try:
                # Sleep until any job has news (or the flush interval passes), then read every
                # job's ready events without blocking.
                ready, _ = ray.wait(list(live.values()), num_returns=1, timeout=FLUSH_SECONDS)
                if ready:
                    for job_id, gen in live.items():
                        self._drain(job_id, gen)
            except Exception as e:  # noqa: BLE001 - Ray itself failing: report, don't spin
                log.warning("ray.wait failed: %s", e)
                time.sleep(1.0)
                continue
            now = time.time()
            for job_id in live:
                h = self.get(job_id)
                if h is None:
                    continue
                h._flush()
                if (h._stop_requested is not None and now - h._stop_requested > STOP_GRACE_SECONDS
                        and job_id in self._gens):
                    ray.cancel(live[job_id])

    def _drain(self, job_id: str, gen, limit: int = 1000) -> None:
        """Read every event gen has ready (without blocking)."""
        ray = self._ray
        h = self.get(job_id)
        for _ in range(limit):
            if job_id not in self._gens:
                return  # cancelled meanwhile
            try:
                ready, _ = ray.wait([gen], timeout=0)
                if not ready:
                    return
                msg = ray.get(next(gen))
            except StopIteration:
                self._end(job_id, h, "failed", "the Ray task ended without reporting a result")
                return
            except Exception as e:  # noqa: BLE001 - the task's worker died, or it was cancelled
                if isinstance(e, ray.exceptions.TaskCancelledError):
                    self._end(job_id, h, "stopped" if h is not None and h._events else "cancelled", None)
                else:
                    first = (str(e).strip().splitlines() or [""])[0][:300]
                    if h is not None:
                        _remove_partial_files(h.run_dir)
                    self._end(job_id, h, "failed", RAY_WORKER_DIED + (f" ({first})" if first else ""))
                return
            if h is None:
                continue
            ctl = msg.get("_ctl")
            if ctl is None:
                h._add_event(msg)
            elif ctl == "running":
                if self._set_running(h, msg["worker"]):
                    self._after_queue_change()
                    h._write_job()
            elif ctl == "end":
                status = msg["status"]
                if status == "cancelled" and h._events:
                    status = "stopped"
                self._end(job_id, h, status, msg["error"])
                return

    def _end(self, job_id: str, h: JobHandle | None, status: str, error: str | None) -> None:
        with self._lock:
            self._gens.pop(job_id, None)
        if h is not None:
            with contextlib.suppress(OSError):
                (h.run_dir / STOP_FILE).unlink(missing_ok=True)
            self._finish(h, status, error)

    def shutdown(self, timeout: float = 30.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            hs = [h for h in self._handles.values() if h._status in ACTIVE]
        for h in hs:
            if h._status == "queued":
                self._stop(h)
        running = [h for h in hs if h._status == "running"]
        for h in running:
            self._stop(h)
        deadline = time.monotonic() + timeout
        for h in running:
            h.wait(max(0.0, deadline - time.monotonic()))
        with self._wake:
            left = list(self._gens.items())
            self._wake.notify_all()
        for job_id, gen in left:  # still going after the timeout: forced
            try:
                self._ray.cancel(gen, force=True)
            except Exception:  # noqa: BLE001
                pass
            h = self.get(job_id)
            self._end(job_id, h, "stopped" if h is not None and h._events else "cancelled", None)
        if self._pump is not None:
            self._pump.join(5)
        if self._ray is not None:
            if self._owns_ray:
                self._ray.shutdown()
                self._ray_owner_exit.set()
        _forget_singleton(self)


# ------------------------------------------------------------------ the process-wide executor

_SINGLETON: Executor | None = None
_SINGLETON_LOCK = threading.Lock()


def get_executor() -> Executor:
    """The process's executor, made on first call (nothing starts on import, and no worker
    starts before the first submit): $MNIST_LAB_EXECUTOR = local (default) | ray."""
    global _SINGLETON
    with _SINGLETON_LOCK:
        if _SINGLETON is None or _SINGLETON.closed:
            kind = (os.environ.get("MNIST_LAB_EXECUTOR") or "local").strip().lower()
            if kind == "local":
                _SINGLETON = LocalExecutor()
            elif kind == "ray":
                _SINGLETON = RayExecutor()
            else:
                raise ValueError(f"MNIST_LAB_EXECUTOR must be local or ray, got {kind!r}")
            atexit.register(_SINGLETON.shutdown, 10.0)
        return _SINGLETON


def _forget_singleton(ex: Executor) -> None:
    global _SINGLETON
    with _SINGLETON_LOCK:
        if _SINGLETON is ex:
            _SINGLETON = None
