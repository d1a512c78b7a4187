"""Helpers shared by several test modules (fixtures live in conftest.py).

Browser tests (test_browser.py, test_reliability_browser.py):
start `streamlit run` on a free port, wait for pages, draw with the mouse, read the
prediction. Needs /usr/bin/chromium; without it tests skip locally and fail in CI.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
STARTUP_S = 90
PAGE_S = 120  # a cold page may load MNIST and start onnxruntime on a busy 2-core box


def require_chromium():
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing in CI: apt-get install chromium")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); set CI=1 to make this a failure")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


README = ROOT / "README.md"
# The only flags a test may add to the README's command: where to listen, and no browser tab.
TEST_FLAGS = ("--server.port", "--server.headless")


def readme_app_command() -> list[str]:
    """The README's "set up and start the app" command, last step only (the venv already exists):
    `.venv/bin/streamlit run streamlit_app.py`. Read from the README itself, so the tests start the
    app exactly as users do, and a change to one is a change to the other."""
    text = README.read_text()
    block = text.split("Set up and start the app", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return block.strip().split("&&")[-1].split()


def app_argv(port: int) -> list[str]:
    """readme_app_command() plus a port and headless mode, nothing else (test_app_shell checks it)."""
    argv = readme_app_command()
    exe = ROOT / argv[0]
    if not exe.exists():  # a checkout whose venv lives elsewhere: the streamlit beside this Python
        exe = Path(sys.executable).parent / Path(argv[0]).name
    return [str(exe), *argv[1:], "--server.port", str(port), "--server.headless", "true"]


@contextlib.contextmanager
def streamlit_server(env: dict, log: Path):
    """The app started with the README's command on a free local port with env; yields its URL."""
    port = _free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(app_argv(port), cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.returncode not in (0, -15, None) and log.exists():
            print(log.read_text()[-3000:])


def server_pid(url: str) -> int:
    """The pid of the `streamlit run` serving url (started by streamlit_server)."""
    port = url.rsplit(":", 1)[1]
    for d in Path("/proc").iterdir():
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"run" in argv and b"--server.port" in argv and port.encode() in argv:
            return int(d.name)
    raise LookupError(f"no streamlit process listens on {url}")


QUIET_S = 0.8  # a cached loader's spinner can appear a moment after a run starts
# True once Streamlit's root has said data-test-script-state="notRunning", with no skeletons,
# stale elements or spinners, for a steady QUIET_S; any busy poll restarts the count. The start
# of the quiet spell lives on window (IDLE_RESET_JS clears it) so page.wait_for_function can
# poll it: that call is the same in Playwright's sync and async APIs.
IDLE_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const busy = !app || app.getAttribute('data-test-script-state') !== 'notRunning'
    || document.querySelector('[data-testid="stSkeleton"], [data-stale="true"], [data-testid="stSpinner"]') !== null;
  const now = performance.now();
  if (busy) { window.__mnistLabQuietSince = null; return false; }
  if (window.__mnistLabQuietSince == null) { window.__mnistLabQuietSince = now; }
  return now - window.__mnistLabQuietSince > %d;
}""" % (QUIET_S * 1000)
IDLE_RESET_JS = "() => { window.__mnistLabQuietSince = null; }"
IDLE_POLL_MS = 200


def idle_timeout_message(title: str, timeout_s: float) -> str:
    return f"page '{title}' still running after {timeout_s:.0f} s"


def wait_until_idle(page, title: str, timeout_s: float = PAGE_S) -> None:
    """Wait for the page's own title, then for its script run to finish (IDLE_JS). Sync Playwright;
    test_reliability_browser._idle is the same for the async API."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=timeout_s * 1000)
    page.evaluate(IDLE_RESET_JS)
    try:
        page.wait_for_function(IDLE_JS, polling=IDLE_POLL_MS, timeout=timeout_s * 1000)
    except PlaywrightTimeout:
        raise AssertionError(idle_timeout_message(title, timeout_s)) from None


def assert_no_errors(page, name: str) -> None:
    exc = page.locator('[data-testid="stException"]')
    assert exc.count() == 0, f"{name}: exception shown: {exc.first.inner_text()[:1500]}"
    err = page.locator('[data-testid="stAlertContentError"]')
    assert err.count() == 0, f"{name}: error shown: {err.first.inner_text()[:500]}"
    body = page.locator("body").inner_text()
    for marker in ("Traceback (most recent call last)", "This app has encountered an error"):
        assert marker not in body, f"{name}: '{marker}' on the page"


def screenshot(page, name: str, whole: bool = True) -> Path:
    """The whole page: Streamlit scrolls inside its own container, so Playwright's full_page
    sees one screen. Grow the viewport to the content's height for the shot instead (a second or
    more each; whole=False: the screen as the visitor sees it, at once)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if not whole:
        page.screenshot(path=str(path))
        return path
    size = page.viewport_size
    height = page.evaluate("""() => Math.max(...[...document.querySelectorAll(
        '[data-testid="stMain"], [data-testid="stMainBlockContainer"], [data-testid="stAppViewContainer"]')]
        .map(e => e.scrollHeight), window.innerHeight)""")
    page.set_viewport_size({"width": size["width"], "height": min(int(height) + 40, 8000)})
    page.wait_for_timeout(300)  # let charts re-lay out at the new size
    page.screenshot(path=str(path))
    page.set_viewport_size(size)
    return path


# Strokes in units of the canvas side (0-1), drawn the way a person would.
STROKES = {
    "1": [[(0.50, 0.15), (0.50, 0.85)]],
    "7": [[(0.25, 0.18), (0.75, 0.18), (0.42, 0.85)]],
    "0": [[(0.50, 0.15), (0.30, 0.30), (0.28, 0.60), (0.40, 0.84), (0.60, 0.84), (0.72, 0.60), (0.70, 0.30),
           (0.50, 0.15)]],
}


def draw(page, canvas_box, strokes) -> None:
    x0, y0, w, h = canvas_box["x"], canvas_box["y"], canvas_box["width"], canvas_box["height"]
    for stroke in strokes:
        (sx, sy), rest = stroke[0], stroke[1:]
        page.mouse.move(x0 + sx * w, y0 + sy * h)
        page.mouse.down()
        for ex, ey in rest:
            page.mouse.move(x0 + ex * w, y0 + ey * h, steps=12)
        page.mouse.up()


def prediction(page) -> str:
    metric = page.locator('[data-testid="stMetric"]').filter(has_text="Prediction").first
    return metric.locator('[data-testid="stMetricValue"]').inner_text().strip()


def clear(page) -> None:
    """The canvas toolbar's reset (trash) button; the toolbar lives in the component's DOM."""
    for sel in ('button[title*="Reset" i]', 'button[aria-label*="Reset" i]', 'button[title*="Clear" i]',
                'button[aria-label*="Clear" i]'):
        btn = page.locator(sel)
        if btn.count():
            btn.first.click()
            return
    raise AssertionError("the canvas toolbar has no reset/clear button")


# ------------------------------------------------------------------ AppTest helpers (the page tests)
# Shared by every test_page_*.py and the engine tests that write IDX files; fixtures live in conftest.py.

TIMEOUT = 240  # AppTest's per-run timeout: a cold page may load MNIST and start onnxruntime


def write_idx(path: Path, arr) -> None:
    """A gzipped IDX file (images [N,28,28] or labels [N]) holding arr as uint8."""
    import gzip
    import struct

    import numpy as np

    arr = np.asarray(arr)
    magic = 0x0803 if arr.ndim == 3 else 0x0801
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.astype(np.uint8).tobytes())


def new_app(page: str | None = None, ws_id: str | None = None, **state):
    """A new visitor (fresh session state) on the real app; with page, already switched to it and run.
    ws_id: the `?ws=` the visitor's URL carries (a reload or a bookmark)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT)
    if ws_id is not None:
        at.query_params["ws"] = ws_id
    for k, v in state.items():
        at.session_state[k] = v
    if page is not None:
        at.switch_page(f"app_pages/{page}.py").run()
    return at


def assert_ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def texts(at) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [a.value for kind in ("info", "warning", "success", "error") for a in getattr(at, kind)]
    return "\n".join(parts)


def widget(at, kind: str, label: str):
    found = [w for w in getattr(at, kind) if w.label == label]
    assert found, f"no {kind} labelled {label!r}: {[w.label for w in getattr(at, kind)]}"
    return found[0]


def button(at, label: str):
    return widget(at, "button", label)


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def pct(text: str) -> float:
    return float(text.rstrip("%").replace(",", ""))


def visitor_workspace(at):
    """The core.workspace.Workspace this AppTest visitor uses (after its first run)."""
    return at.session_state["workspace"]


class JobView:
    """A test's view of a page's job: the executor's JobHandle, plus .running and .join()."""

    def __init__(self, handle):
        self.handle = handle

    def __getattr__(self, name):
        return getattr(self.handle, name)

    @property
    def name(self) -> str:
        return self.handle.spec.name

    @property
    def running(self) -> bool:
        return self.handle.status in ("queued", "running")

    def join(self, timeout: float | None = None) -> None:
        self.handle.wait(timeout)


def job_for(at, name: str) -> JobView:
    """The executor's job behind one of this visitor's runs."""
    from core.executor import get_executor

    rec = visitor_workspace(at).run(name)
    assert rec is not None and rec.job, f"no job recorded for run {name!r}"
    handle = get_executor().get(rec.job["id"])
    assert handle is not None, f"the executor does not know run {name!r}'s job"
    return JobView(handle)


def train_job(at) -> JobView:
    """The Train page's active job (run by core.executor, outside the page)."""
    return job_for(at, at.session_state["train_active"])


def poll(at, until, timeout_s: float = 120, what: str = "") -> None:
    """Rerun the page (as the live fragment would) until until(at) holds."""
    deadline = time.monotonic() + timeout_s
    while not until(at):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
        at.run()
        assert not at.exception, [e.value for e in at.exception]


def train_on_page(at, name: str | None = None, steps: int | None = None, epochs: int | None = None):
    """Start a run on the Train page (at is on it), wait for it to end, rerun; -> the finished job."""
    if epochs is not None:
        widget(at, "number_input", "Epochs").set_value(epochs)
    if steps is not None:
        widget(at, "number_input", "Stop after steps").set_value(steps)
    if name is not None:
        widget(at, "text_input", "Run name").set_value(name)
    button(at, "Start training").click().run()
    assert not at.exception, [e.value for e in at.exception]
    poll(at, lambda a: not train_job(a).running, what=f"run {name!r}")
    at.run()
    return train_job(at)


def stop_jobs(at) -> None:
    """No job a test's visitor started may outlive its test: stop them and wait."""
    from core.executor import get_executor

    ws = at.session_state["workspace"] if "workspace" in at.session_state else None
    if ws is None:
        return
    for h in get_executor().jobs():
        if h.spec.workspace == ws.id and not h.finished:
            h.stop()
            h.wait(60)


def canvas_state(rgba) -> dict:
    """What streamlit-drawable-canvas sends back after a stroke: Fabric JSON plus a PNG data URL."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return {"drawing": {"raw": {"objects": [{"type": "path"}], "background": "#000000"}, "data": url},
            "backgroundFit": None}


def sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def no_paths(text: str, *roots: Path) -> None:
    """A message shown to a visitor names no folder: no absolute path, no tmp or project root."""
    import re

    assert not re.search(r"(?<![\w.:/])/(?:[\w.-]+/)+", text), f"a file-system path in a visitor message: {text!r}"
    for r in (ROOT, Path.home(), *roots):
        assert str(r) not in text, f"{r} in a visitor message: {text!r}"


def small_data(mnist, n_train=2000, n_test=500):
    """The first n_train/n_test real digits as an in-memory MNISTData (14 steps an epoch of `fast`)."""
    from core.data import MNISTData

    return MNISTData(mnist.train_images[:n_train].clone(), mnist.train_labels[:n_train].clone(),
                     mnist.test_images[:n_test].clone(), mnist.test_labels[:n_test].clone(), "dir", "slice")


def encode_image(img, fmt: str = "PNG") -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def photo_variants(digit) -> dict[str, bytes]:
    """One real test digit (uint8 28x28, white on black) in every form a visitor might upload."""
    import numpy as np
    from PIL import Image

    big = np.kron(digit, np.ones((8, 8), np.uint8))  # 224x224
    zeros = np.zeros_like(big)
    return {
        "png": encode_image(Image.fromarray(big)),
        "jpeg": encode_image(Image.fromarray(255 - big), "JPEG"),  # dark ink on white paper
        "rgba": encode_image(Image.fromarray(np.dstack([big, big, big, np.full_like(big, 255)]), "RGBA")),
        "palette": encode_image(Image.fromarray(big).convert("P")),
        "16-bit": encode_image(Image.fromarray(big.astype(np.uint16) * 257)),  # PNG mode I;16
        "16-bit paper": encode_image(Image.fromarray((65535 - big.astype(np.uint16) * 200))),  # dark ink, light paper
        "alpha only": encode_image(Image.fromarray(np.dstack([zeros, zeros, zeros, big]), "RGBA")),
    }


def save_drawing(at, image, label: int) -> None:
    """On the Draw page: draw a real digit (as the canvas returns it), label it, click Save sample."""
    from core.preprocess import digit_to_canvas

    at.session_state["canvas"] = canvas_state(digit_to_canvas(image))
    at.run()
    widget(at, "button_group", "Label").set_value(str(int(label)))
    button(at, "Save sample").click().run()


# ------------------------------------------------------------------ killing a writer half-way (test_checkpoint, test_export)

SLOW_WRITER = r"""
import os, sys, time
from pathlib import Path
import safetensors.torch
def slow(blob, path):
    # Half the bytes, on disk for real, then wait to be killed.
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 2]); f.flush(); os.fsync(f.fileno())
        print("WRITING", path, flush=True)
        time.sleep(120)
        f.write(blob[len(blob) // 2:])
"""

KILL_CHECKPOINT = SLOW_WRITER + r"""
import core.checkpoint as ck
from core.models import ModelConfig, build_model
ck.save_file = lambda state, path, metadata=None: slow(safetensors.torch.save(state, metadata=metadata), path)
import torch; torch.manual_seed(2)
ck.save_checkpoint(sys.argv[1], build_model("fast"), ModelConfig("fast"), {}, {"version": 2})
"""

KILL_EXPORT = SLOW_WRITER + r"""
Path.write_bytes = lambda self, blob: slow(blob, self)
from core.data import load_mnist
from core.export import export_onnx
export_onnx(sys.argv[2], sys.argv[1], data=load_mnist(sys.argv[3]))
"""

def kill_while_writing(script: str, *args, timeout: float = 180) -> str:
    """Run script in a fresh interpreter; SIGKILL it once it is half-way through a write."""
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + timeout
        line = ""
        while not line.startswith("WRITING"):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, f"writer exited early: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "writer never started writing"
        partial = Path(line.split(" ", 1)[1].strip())
        assert partial.exists() and partial.stat().st_size > 0  # really mid-write
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
        return str(partial)
    finally:
        if proc.poll() is None:
            proc.kill()
