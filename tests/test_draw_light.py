"""Issue 12: Draw is light. Home, Draw and the sidebar never import torch, and a stroke reruns
only the drawing fragment, yet saving still saves the digit just drawn.

The torch check runs the real app (streamlit_app.py, AppTest) in a fresh interpreter, so nothing
this test process imported can hide an import. The fragment check uses a real `streamlit run`
server and Chromium (tests/helpers.py), since only the browser sends fragment-only reruns.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from core.workspace import Workspace
from helpers import (CHROMIUM, CHROMIUM_ARGS, STROKES, assert_no_errors, draw, prediction, require_chromium,
                     streamlit_server, wait_until_idle)

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh interpreter: Draw with a real test digit in the canvas, Save sample, then Home.
SCRIPT = textwrap.dedent(r"""
    import base64, io, json, sys
    from pathlib import Path
    import numpy as np
    from PIL import Image
    from streamlit.testing.v1 import AppTest
    from core.data import find_file, read_idx
    from core.preprocess import digit_to_canvas

    mnist = Path(sys.argv[1])
    images = read_idx(find_file(mnist, "t10k-images-idx3-ubyte"), "images")
    labels = read_idx(find_file(mnist, "t10k-labels-idx1-ubyte"), "labels")
    at = AppTest.from_file("streamlit_app.py", default_timeout=120)
    at.switch_page("app_pages/draw.py").run()
    out = {"blank": next(m.value for m in at.metric if m.label == "Prediction")}
    read = []
    for img, label in zip(images[:5], labels[:5]):
        buf = io.BytesIO()
        Image.fromarray(digit_to_canvas(img, scale=0.7, offset=(20, -15))).save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        at.session_state["canvas"] = {"drawing": {"raw": {"objects": [{"type": "path"}], "background": "#000000"},
                                                  "data": url}, "backgroundFit": None}
        at.run()
        read.append((int(label), next(m.value for m in at.metric if m.label == "Prediction")))
    out["read"] = read
    out["bars"] = [h.proto.body for h in at.get("html")]
    out["steps"] = [c for img in at.get("image") for c in img.captions]
    next(b for b in at.button if b.label == "Save sample").click().run()
    out["errors"] = [e.value for e in at.exception] + [e.value for e in at.error]
    out["after_save"] = "\n".join(c.value for c in at.caption)
    at.switch_page("app_pages/home.py").run()
    out["errors"] += [e.value for e in at.exception] + [e.value for e in at.error]
    out["home"] = "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption])
    out["torch"] = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
    out["heavy"] = sorted(m for m in ("altair", "sklearn", "mlxtend") if m in sys.modules)
    print("RESULT " + json.dumps(out))
""")


def test_home_draw_and_the_sidebar_never_import_torch(mnist_dir, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MNIST_DIR": str(mnist_dir),
           "MNIST_LAB_WORKSPACES": str(tmp_path / "ws"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(mnist_dir)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(line.removeprefix("RESULT "))
    assert not out["errors"], out["errors"]
    assert out["blank"] == "—"
    assert sum(str(label) == shown for label, shown in out["read"]) >= 4, out["read"]
    assert len(out["bars"]) == 1 and "Probability per digit" in out["bars"][0]  # the ten probabilities
    assert len(out["steps"]) >= 3 and out["steps"][-1].endswith("centered 28x28"), out["steps"]
    last = out["read"][-1][1]
    assert f"**{last}**: 1" in out["after_save"], out["after_save"]  # saved, and the counts show it
    assert "60,000 train + 10,000 test digits" in out["home"]  # Home still tells the data source
    assert out["torch"] == [], f"torch imported by Home/Draw: {out['torch'][:5]}"
    assert out["heavy"] == [], out["heavy"]


def test_describe_source_matches_load_mnist_without_torch(mnist_dir, tmp_path):
    """The torch-free description Home shows agrees with what load_mnist really loads."""
    code = ("import sys, json; from core.data import describe_source; i = describe_source(sys.argv[1]);"
            "print(json.dumps([i.source, i.train, i.test, 'torch' in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", code, str(mnist_dir)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["dir", 60000, 10000, False], proc.stderr[-2000:]

    from core.data import DataError, describe_source, load_mnist

    data = load_mnist(mnist_dir)
    info = describe_source(mnist_dir)
    assert (info.train, info.test) == (len(data.train_labels), len(data.test_labels))
    # A truncated file is caught from its size alone, like load_mnist catches it by reading it.
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in mnist_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "t10k-labels-idx1-ubyte.gz").write_bytes((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()[:-100])
    assert describe_source(broken).source is None
    with pytest.raises(DataError):
        load_mnist(broken)
    assert describe_source(tmp_path / "nothing-here").source is None


@pytest.fixture(scope="module")
def server(tmp_path_factory, mnist_dir):
    require_chromium()
    ws = tmp_path_factory.mktemp("ws")
    env = {"MNIST_DIR": str(mnist_dir), "MNIST_LAB_WORKSPACES": str(ws)}
    with streamlit_server(env, tmp_path_factory.mktemp("log") / "server.log") as url:
        yield url, ws


def test_a_stroke_reruns_only_the_drawing_fragment(server):
    """A sample written to the visitor's folder behind the page's back appears in the samples
    section only when that section runs: not after a stroke (fragment), but after Save (whole page)."""
    from playwright.sync_api import sync_playwright

    url, ws_root = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(f"{url}/draw")
        wait_until_idle(page, "Draw")
        ws_id = page.url.split("ws=")[1].split("&")[0]
        Workspace(ws_id, ws_root).samples.add(np.eye(28, dtype=np.uint8) * 255, 4)  # a "4" not yet shown
        canvas = page.locator("canvas.upper-canvas").first
        draw(page, canvas.bounding_box(), STROKES["7"])
        page.wait_for_function("""() => [...document.querySelectorAll('[data-testid="stMetricValue"]')]
                                  .some(v => v.innerText.trim() === '7')""", timeout=60_000)
        wait_until_idle(page, "Draw")
        body = page.locator("body").inner_text()
        assert "Your samples per digit" not in body, "the samples section reran on a stroke"
        page.get_by_role("button", name="Save sample").click()
        page.get_by_text("Your samples per digit").wait_for(timeout=60_000)
        wait_until_idle(page, "Draw")
        counts = page.get_by_text("Your samples per digit").inner_text()
        assert "4: 1" in counts and "7: 1" in counts, counts  # the digit just drawn, and the page reran
        assert prediction(page) == "7"
        assert_no_errors(page, "draw-after-save")
        browser.close()


def _texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    return "\n".join(parts + [a.value for kind in ("info", "warning", "error") for a in getattr(at, kind)])


def test_home_describes_every_data_source_without_loading_it(monkeypatch, tmp_path, mnist_dir):
    """Home's Data card and sidebar from describe_source(): full MNIST, a folder with no MNIST in
    it, the offline sample, and a machine that would download on first use."""
    import core.data
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MNIST_LAB_WORKSPACES", str(tmp_path / "ws"))

    def home():
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
        at.switch_page("app_pages/home.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return _texts(at)

    monkeypatch.setenv("MNIST_DIR", str(mnist_dir))
    body = home()
    assert "60,000 train + 10,000 test digits" in body and "official MNIST files from MNIST_DIR" in body
    assert str(mnist_dir) not in body  # no server paths for visitors
    empty = tmp_path / "no-mnist-here"
    empty.mkdir()
    monkeypatch.setenv("MNIST_DIR", str(empty))
    body = home()
    assert "No MNIST data is available" in body and "MNIST_DIR" in body and str(tmp_path) not in body
    monkeypatch.delenv("MNIST_DIR")
    monkeypatch.setattr(core.data, "DEFAULT_DATA_DIR", tmp_path / "no-data")
    monkeypatch.setenv("MNIST_NO_DOWNLOAD", "1")
    assert "offline 5,000-digit sample" in home()
    monkeypatch.delenv("MNIST_NO_DOWNLOAD")
    # Offline (this machine), the download mirror cannot be reached: the sample, said once.
    monkeypatch.setattr(core.data, "_download_failed", False)
    monkeypatch.setattr(core.data, "download_reachable", lambda timeout=3.0: False)
    assert "offline 5,000-digit sample" in home()
    # A machine that can reach the mirror downloads MNIST when a page first needs it.
    monkeypatch.setattr(core.data, "download_reachable", lambda timeout=3.0: True)
    assert "MNIST is not downloaded yet" in home()
