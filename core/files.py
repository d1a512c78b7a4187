"""The checks every model file gets before anything parses it: it exists and is not huge.

Messages name the file, never its folder (they reach visitors of a public app).
"""
from __future__ import annotations

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
