"""Visitor-typed names never escape their folder and never collide."""
from __future__ import annotations

import pytest

from core.names import MAX_LEN, safe_name, unique_name


@pytest.mark.parametrize("raw", ["../../etc/passwd", "/etc/passwd", "..\\..\\windows\\system32", "a/../../b",
                                 "~/.ssh/id_rsa", "run\x00name", "\u202eevil.onnx", "  spaced out  ", ".hidden",
                                 "-rf", "x" * 500, "Mon modèle №1", "数字モデル", "CON", "nul.txt"])
def test_safe_name_is_one_harmless_component(raw, tmp_path):
    name = safe_name(raw)
    assert name and len(name) <= MAX_LEN
    assert "/" not in name and "\\" not in name and "\x00" not in name and ".." not in name
    assert not name.startswith((".", "-")) and name == name.strip()
    assert all(ch.isprintable() for ch in name)
    # The name resolves to a direct child of the folder it is joined to.
    target = (tmp_path / name).resolve()
    assert target.parent == tmp_path.resolve()
    target.mkdir()  # and the file system accepts it


def test_safe_name_keeps_readable_names():
    assert safe_name("fast-1ep") == "fast-1ep"
    assert safe_name("../../etc/passwd") == "etc-passwd"
    assert safe_name("My run 2") == "My-run-2"
    assert safe_name("Mon modèle №1") == "Mon-modèle-No1"  # NFKC folds "№"
    assert safe_name("CON") != "CON"  # Windows device names are never used as is


@pytest.mark.parametrize("raw", ["", "   ", "../..", "///", "\u202e\u200b", "...", 42])
def test_safe_name_refuses_names_without_letters(raw):
    with pytest.raises(ValueError, match="name"):
        safe_name(raw)


def test_unique_name_suffixes_taken_names():
    taken = {"fast", "fast-2"}
    assert unique_name("fast", taken) == "fast-3"
    assert unique_name("../fast", taken) == "fast-3"  # sanitized before comparing
    assert unique_name("other", taken) == "other"
    long = "y" * 200
    first = unique_name(long, set())
    second = unique_name(long, {first})
    assert second != first and len(second) <= MAX_LEN and second.endswith("-2")


NASTY = ["../../etc/passwd", "/etc/passwd", "/tmp/../../root/.ssh/id_rsa", "..", ".hidden", "C:\\Windows\\x",
         "a/../../b", "run\x00name", "x" * 500, "Mon modèle №1", "数字モデル", "\u202egnp.exe", "con",
         "--rm -rf", "~/.bashrc", "%2e%2e%2fetc"]


@pytest.mark.reliability("names")
def test_names_never_escape_their_folder(tmp_path):
    from core.names import MAX_LEN, safe_name, unique_name

    base = (tmp_path / "runs").resolve()
    for raw in NASTY:
        try:
            name = safe_name(raw)
        except ValueError as e:  # nothing usable left: refused, with what is allowed
            assert "no letters or digits" in str(e) and raw in ("..",), (raw, e)
            continue
        assert "/" not in name and "\\" not in name and "\x00" not in name and ".." not in name, (raw, name)
        assert not name.startswith((".", "-")) and 1 <= len(name) <= MAX_LEN, (raw, name)
        assert (base / name).resolve().parent == base, (raw, name)
    assert safe_name("Mon modèle №1") == "Mon-modèle-No1" and safe_name("数字モデル") == "数字モデル"
    for raw in ("", "../..", "///", "\u202e"):
        with pytest.raises(ValueError, match="no letters or digits"):
            safe_name(raw)
    taken = {"etc-passwd"}
    assert unique_name("../../etc/passwd", taken) == "etc-passwd-2"  # in use: a new name, never an overwrite
    assert unique_name("x" * 500, {"x" * MAX_LEN}) == "x" * (MAX_LEN - 2) + "-2"
