"""Names typed by visitors (runs, exports) become folder and file names.

safe_name() turns any text into one harmless path component: no separators,
no "..", no hidden files, no control or direction-override characters, a
bounded length. unique_name() adds a -2, -3... suffix when a name is taken,
so a visitor never overwrites an earlier run by reusing its name.
"""
from __future__ import annotations

import re
import unicodedata

MAX_LEN = 48  # characters; also keeps names readable in tables

# Letters and digits of any script, "_", "-" and "." survive; every other run
# of characters (separators, spaces, quotes, control and format characters)
# becomes one "-".
_UNSAFE = re.compile(r"[^\w.-]+", re.UNICODE)
_REPEATS = re.compile(r"([._-])[._-]+")
# Device names Windows refuses as file names, whatever the extension.
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def safe_name(name: str, max_len: int = MAX_LEN) -> str:
    """Return a safe single path component built from `name`, or raise ValueError.

    "../../etc/passwd" -> "etc-passwd", "/abs/path" -> "abs-path",
    "Mon modèle №1" -> "Mon-modèle-No1". The result never starts with "."
    or "-" (no hidden files, no option-like names) and is at most max_len
    characters. Text with no letter or digit at all is refused.
    """
    if not isinstance(name, str):
        raise ValueError(f"a name must be text, got {type(name).__name__}")
    # NFKC folds look-alike forms (full-width letters, ligatures, "№") into plain ones.
    text = unicodedata.normalize("NFKC", name)
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] not in "CZ" or ch == " ")
    text = _UNSAFE.sub("-", text)
    text = _REPEATS.sub(r"\1", text)  # ".." can never survive, nor "--" clutter
    text = text.strip("._- ")
    if len(text) > max_len:
        text = text[:max_len].rstrip("._- ")
    if not any(ch.isalnum() for ch in text):
        raise ValueError(f"name {name[:40]!r} has no letters or digits; use letters, digits, '-' or '_' "
                         f"(up to {max_len} characters)")
    if text.split(".")[0].lower() in _RESERVED:
        text = f"{text}_"
    return text


def unique_name(name: str, taken, max_len: int = MAX_LEN) -> str:
    """safe_name(name), with -2, -3... appended if that name is already in `taken`."""
    base = safe_name(name, max_len)
    taken = set(taken)
    if base not in taken:
        return base
    for i in range(2, 10_000):
        suffix = f"-{i}"
        candidate = base[:max_len - len(suffix)].rstrip("._-") + suffix
        if candidate not in taken:
            return candidate
    raise ValueError(f"too many runs named {base!r}; choose another name")
