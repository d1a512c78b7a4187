"""README's "Reliability" table: every row names the test that proves it.

Each row has a key (ROWS: key -> how the row's first column begins). A test proves a row by
carrying `@pytest.mark.reliability("<key>")` (registered in pytest.ini). This test fails when a
row has no key, a key no row, or a key no test claims."""
from __future__ import annotations

import ast
import re


from helpers import ROOT

# key -> the beginning of the row's "what was tried" cell in README.md
ROWS = {
    "dataset files": "dataset: truncated IDX file",
    "checkpoint architecture": "checkpoint whose header says `classic`",
    "checkpoint damaged": "checkpoint with one weight byte flipped",
    "pickles": "a pickle whose unpickling creates a marker file",
    "bad onnx": "text file, empty file or checkpoint named `.onnx`",
    "oversized model files": "a 64 MB + 1 byte `.onnx`",
    "uploads read": "uploads of one real digit",
    "uploads refused": "uploads: 0 bytes",
    "canvas": "canvas: all transparent",
    "names": "run and export names",
    "hyperparameters": "lr 0, 1e6 or NaN",
    "memory": "batch 8192 with 128 MB of free memory",
    "stop": "Stop five steps into epoch 2",
    "kill mid-write": "SIGKILL of a real process half-way",
    "kill loop": "SIGKILL at random moments",
    "divergence": "NaN loss in epoch 2",
    "out of memory": "`torch.cuda.OutOfMemoryError`",
    "no gpu": "no GPU",
    "shipped model broken": "shipped model corrupt, then missing",
    "32 threads": "32 threads × 200 predictions",
    "concurrent open": "5 Chromium visitors open `/draw`",
    "concurrent drawing": "5 Chromium visitors each draw",
    "visitor isolation": "visitor A trains, exports and saves a drawing",
    "audit": "an audit hook",
    "error messages": "error messages shown to visitors",
    "logs": "logs",
    "killed worker": "`kill -9` of the worker process",
    "workspace id": "a workspace id that is unknown",
    "ray from a page": "a local Ray started from a page",
}
MARK = re.compile(r"""@pytest\.mark\.reliability\(\s*["']([^"']+)["']\s*\)""")


def readme_rows() -> list[str]:
    """The first cell of every body row of README's Reliability table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Reliability", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert len(rows) > 2 and set(rows[1].replace("|", "").strip()) <= set("-: "), rows[:2]
    return [r.strip("|").split(" | ")[0].strip() for r in rows[2:]]


def claimed() -> dict[str, list[str]]:
    """key -> "file::test" for every test function decorated with @pytest.mark.reliability(key)."""
    out: dict[str, list[str]] = {}
    for f in sorted((ROOT / "tests").glob("test_*.py")):
        if f.name == "test_reliability_table.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and ast.unparse(dec.func) == "pytest.mark.reliability":
                    assert node.name.startswith("test_"), f"{f.name}: reliability marker on {node.name}, not a test"
                    assert len(dec.args) == 1 and isinstance(dec.args[0], ast.Constant), ast.unparse(dec)
                    out.setdefault(dec.args[0].value, []).append(f"{f.name}::{node.name}")
    return out


def _key(cell: str) -> str | None:
    found = [k for k, start in ROWS.items() if cell.startswith(start)]
    assert len(found) <= 1, (cell, found)
    return found[0] if found else None


def test_every_row_has_a_key_and_every_key_a_row():
    cells = readme_rows()
    unkeyed = [c[:60] for c in cells if _key(c) is None]
    assert not unkeyed, f"README rows with no key in ROWS (add one): {unkeyed}"
    keys = [_key(c) for c in cells]
    assert len(keys) == len(set(keys)), "two README rows share a key"
    assert set(ROWS) == set(keys), f"keys whose row is gone from README: {sorted(set(ROWS) - set(keys))}"


def test_every_row_is_claimed_by_a_test_and_every_claim_is_a_row():
    marks = claimed()
    missing = [k for k in ROWS if k not in marks]
    assert not missing, f"README rows no test claims with @pytest.mark.reliability(key): {missing}"
    unknown = sorted(set(marks) - set(ROWS))
    assert not unknown, f"reliability markers naming no README row: {unknown}"


def test_the_markers_are_real_pytest_markers(request):
    """The marker is registered (pytest.ini), so a typo in its name is not silently a new marker."""
    names = [line.split(":")[0].split("(")[0].strip() for line in request.config.getini("markers")]
    assert "reliability" in names


def test_no_claim_hides_outside_a_test():
    """Every `reliability("...")` written in a test file is a marker on a test function."""
    written = 0
    for f in sorted((ROOT / "tests").glob("test_*.py")):
        if f.name != "test_reliability_table.py":
            written += len(MARK.findall(f.read_text()))
    assert written == sum(len(v) for v in claimed().values())


def test_print_which_test_proves_each_row(capsys):
    marks = claimed()
    with capsys.disabled():
        print()
        for key in ROWS:
            print(f"  {key:24} {', '.join(marks.get(key, ['-']))}")
