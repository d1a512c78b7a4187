"""A visitor's workspace: their runs, exports and saved drawings, on disk under one id.

    ws, note = Workspace.open(url_id)   # the same id after a reload or a server restart
    name, run_dir = ws.new_run("fast")  # a unique, safe run folder
    ws.runs()                           # every run: finished, stopped, failed, queued or running
    ws.samples.add(image, label)        # drawings kept on disk, in the workspace

The id is 128 random bits (32 hex digits) and is the only key: nothing ever lists
workspaces, and an unknown, malformed or expired id opens a fresh workspace, never
someone else's. Workspaces unused for `ttl_days` are removed; each has a disk quota.
No torch and no Streamlit here: the Draw page uses this module.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .files import atomic_write_text, read_json
from .names import unique_name

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ID_RE = re.compile(r"^[0-9a-f]{32}$")
WEIGHTS_NAME, RUN_META = "model.safetensors", "run.json"
_MARKER = ".workspace"  # its mtime is the last time the workspace was opened


def workspaces_root() -> Path:
    return Path(os.environ.get("MNIST_LAB_WORKSPACES") or PROJECT_ROOT / "runs" / "workspaces")


def default_ttl_days() -> float:
    return float(os.environ.get("MNIST_LAB_WORKSPACE_DAYS") or 7)


def default_quota_bytes() -> int:
    return int(float(os.environ.get("MNIST_LAB_WORKSPACE_MB") or 200) * 2**20)


class WorkspaceError(ValueError):
    """A workspace operation that cannot be done (bad name, quota reached)."""


class QuotaExceeded(WorkspaceError):
    pass


@dataclass
class RunRecord:
    """One run folder as a page shows it. status: done | stopped | failed | queued | running |
    cancelled | interrupted (its job was queued or running when its server stopped)."""
    name: str
    dir: Path
    kind: str = "train"  # train | finetune | pretrain
    status: str = "done"
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    job: dict | None = None  # job.json, when the run was made by the executor

    @property
    def weights(self) -> Path | None:
        """The run's checkpoint, when it has one (a stopped run keeps its last completed epoch)."""
        p = self.dir / WEIGHTS_NAME
        return p if p.is_file() else None


def folder_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


class Workspace:
    def __init__(self, ws_id: str, root: str | os.PathLike | None = None, quota_bytes: int | None = None):
        if not ID_RE.match(ws_id or ""):
            raise WorkspaceError("a workspace id is 32 lowercase hex digits")
        self.id = ws_id
        self.root = Path(root) if root is not None else workspaces_root()
        self.dir = self.root / ws_id
        self.quota_bytes = default_quota_bytes() if quota_bytes is None else quota_bytes

    # -------------------------------------------------------------- opening
    @classmethod
    def create(cls, root: str | os.PathLike | None = None) -> "Workspace":
        ws = cls(secrets.token_hex(16), root)
        ws.dir.mkdir(parents=True, exist_ok=False)
        ws.touch()
        return ws

    @classmethod
    def open(cls, ws_id: str | None, root: str | os.PathLike | None = None,
             ttl_days: float | None = None) -> tuple["Workspace", str | None]:
        """The workspace with this id, or a fresh one. -> (workspace, note): note says why a fresh
        one was made when an id was given ("expired", "unknown", "malformed"), else None."""
        ttl = default_ttl_days() if ttl_days is None else ttl_days
        note = None
        if ws_id:
            if not ID_RE.match(ws_id):
                note = "That workspace link is malformed, so you have a fresh workspace."
            else:
                ws = cls(ws_id, root)
                if ws.dir.is_dir() and not ws.expired(ttl):
                    ws.touch()
                    return ws, None
                if ws.dir.is_dir():
                    shutil.rmtree(ws.dir, ignore_errors=True)
                    note = (f"That workspace was unused for more than {ttl:g} days and has been removed, "
                            "so you have a fresh one.")
                else:
                    note = "That workspace does not exist (or was removed), so you have a fresh one."
        return cls.create(root), note

    def touch(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / _MARKER).touch()

    def last_used(self) -> float:
        # A workspace being created has its folder a moment before its marker: then the folder's
        # own time counts, or a visitor's sweep of expired workspaces deletes it under its owner
        # (seen with five visitors opening a cold server at once).
        for path in (self.dir / _MARKER, self.dir):
            try:
                return path.stat().st_mtime
            except OSError:
                continue
        return 0.0

    def expired(self, ttl_days: float | None = None) -> bool:
        ttl = default_ttl_days() if ttl_days is None else ttl_days
        return time.time() - self.last_used() > ttl * 86400

    @staticmethod
    def remove_expired(root: str | os.PathLike | None = None, ttl_days: float | None = None,
                       keep: set[str] = frozenset()) -> list[str]:
        """Delete workspaces not opened for ttl_days; -> their ids. keep: ids with live jobs."""
        root = Path(root) if root is not None else workspaces_root()
        removed = []
        for d in root.iterdir() if root.is_dir() else []:
            if d.is_dir() and ID_RE.match(d.name) and d.name not in keep:
                ws = Workspace(d.name, root)
                if ws.expired(ttl_days):
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(d.name)
        return removed

    # -------------------------------------------------------------- folders
    @property
    def runs_dir(self) -> Path:
        return self.dir / "runs"

    @property
    def exports_dir(self) -> Path:
        return self.dir / "exports"

    @property
    def samples_dir(self) -> Path:
        return self.dir / "samples"

    @property
    def samples(self):
        """This visitor's labelled drawings, kept on disk (core.samples.SampleStore)."""
        from .samples import SampleStore

        return SampleStore(self.samples_dir)

    # -------------------------------------------------------------- quota
    def usage_bytes(self) -> int:
        return folder_bytes(self.dir) if self.dir.is_dir() else 0

    def check_quota(self, extra_bytes: int = 0) -> None:
        """Raise QuotaExceeded when the workspace (plus extra_bytes about to be written) is over quota."""
        used = self.usage_bytes()
        if used + extra_bytes > self.quota_bytes:
            raise QuotaExceeded(f"your workspace holds {used / 2**20:.1f} MB of its {self.quota_bytes / 2**20:.0f} MB "
                                "limit: delete some runs or exports first")

    # -------------------------------------------------------------- runs
    def new_run(self, requested: str) -> tuple[str, Path]:
        """A safe, unique run name and its (new, empty) folder. Checks the quota first."""
        self.check_quota()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        taken = {p.name for p in self.runs_dir.iterdir()}
        name = unique_name(requested, taken)
        run_dir = self.runs_dir / name
        run_dir.mkdir()
        return name, run_dir

    def run(self, name: str) -> RunRecord | None:
        from .executor import read_job  # no torch there either

        d = self.runs_dir / name
        if "/" in name or name in ("", ".", "..") or not d.is_dir():
            return None
        meta, job = read_json(d / RUN_META), read_job(d)
        if meta is None and job is None:
            return None
        metrics = dict((meta or {}).get("metrics") or {})
        config = (job or {}).get("config") or (meta or {}).get("train_config") or {}
        kind = (job or {}).get("kind") or ("finetune" if "target" in metrics else "train")
        if job is not None:
            status = job.get("status") or "done"
        else:  # made outside the executor (the CLI): a final test score means it finished
            status = "done" if metrics.get("test_acc") is not None else "stopped"
        return RunRecord(name, d, kind, status, config, metrics, job)

    def runs(self) -> dict[str, RunRecord]:
        """Every run, oldest first."""
        if not self.runs_dir.is_dir():
            return {}
        out = {}
        for d in sorted(self.runs_dir.iterdir(), key=lambda p: p.stat().st_mtime_ns if p.exists() else 0):
            rec = self.run(d.name)
            if rec is not None:
                out[d.name] = rec
        return out

    def delete_run(self, name: str) -> None:
        rec = self.run(name)
        if rec is None:
            raise WorkspaceError(f"no run named {name!r}")
        shutil.rmtree(rec.dir)

    def write_run_status(self, name: str, **fields) -> None:
        """Record fields (kind, status, config, error) in a run's job.json: for runs made outside
        the executor (imported, or by a script), so the pages list them like any other."""
        from .executor import JOB_FILE

        d = self.runs_dir / name
        if self.run(name) is None and not d.is_dir():
            raise WorkspaceError(f"no run named {name!r}")
        job = read_json(d / JOB_FILE) or {"name": name}
        job.update(fields)
        atomic_write_text(d / JOB_FILE, json.dumps(job, indent=2, default=str))

    # -------------------------------------------------------------- exports
    def export_path(self, requested: str) -> Path:
        """Where a new export goes: a safe name no file in exports/ uses yet (variants included)."""
        self.check_quota()
        self.exports_dir.mkdir(parents=True, exist_ok=True)
        name = unique_name(requested, {p.stem for p in self.exports_dir.glob("*.onnx")})
        return self.exports_dir / f"{name}.onnx"
