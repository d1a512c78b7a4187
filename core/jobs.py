"""Run an event generator (train, finetune) in a background thread.

The Train page starts a Job, keeps it in the visitor's session state and
redraws from job.snapshot() every second; the job keeps going while the
visitor clicks or switches pages. stop() ends it after the current step:
the generator is closed, so the last checkpoint written at an epoch end
stays as it was.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterator


class Job:
    def __init__(self, make_events: Callable[[], Iterator[dict]], name: str = "job"):
        self.name = name
        self._make_events = make_events
        self._events: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.status = "pending"  # pending | running | done | stopped | failed
        self.error: str | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None

    def start(self) -> "Job":
        self.status = "running"
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._run, name=f"mnist-lab-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        gen = None
        try:
            gen = self._make_events()
            for ev in gen:
                with self._lock:
                    self._events.append(ev)
                if self._stop.is_set():
                    gen.close()
                    self.status = "stopped"
                    return
            self.status = "done"
        except Exception as e:  # noqa: BLE001 - surfaced to the UI as a message, never a crash
            self.error = str(e) or e.__class__.__name__
            self.status = "failed"
        finally:
            self.finished_at = time.time()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self.status == "running"

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self._events)

    def last(self, event: str) -> dict | None:
        with self._lock:
            for ev in reversed(self._events):
                if ev.get("event") == event:
                    return ev
        return None
