"""Files the engine writes and reads: atomic writes, and the checks every model file gets
before anything parses it (it exists and is not huge).

Messages name the file, never its folder (they reach visitors of a public app). No torch here:
the serving path (Draw) uses this module.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def check_model_file(path: Path, max_bytes: int, error: type[Exception], what: str) -> int:
    """Raise error(...) unless path is a file of at most max_bytes; returns its size.
    what: the kind of file in words ("checkpoint", "model file"), for the messages."""
    if not path.is_file():
        raise error(f"{path.name}: no such {what}")
    size = path.stat().st_size
    if size > max_bytes:
        raise error(f"{path.name}: {size / 2**20:.1f} MB is over the {max_bytes / 2**20:.0f} MB limit for "
                    f"MNIST {what}s; refusing to load it")
    return size


# The process umask, read once: os.umask can only be read by setting it, and doing that on every
# write would briefly give other threads (the app's training jobs) a umask of 0.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then rename over path. Nothing half-written is ever visible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_json(path: Path) -> dict | None:
    """A JSON object from path, or None when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
