"""Draw: draw a digit, and an exported ONNX model reads it on every stroke.

The drawing goes through MNIST's own preprocessing (crop, scale into 20x20,
centre by mass in 28x28) before onnxruntime sees it; the page shows each
step, the ten probabilities, the provider and the latency. Drawings can be
saved with a label into this visitor's sample set, which feeds fine-tuning.
Works with no dataset: only the shipped model is needed.
"""
from __future__ import annotations

import os
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st
from streamlit_drawable_canvas import st_canvas  # components v2: importable only inside a running app

from core import explore
from core.inference import ModelError, predict_canvas, predict_image
from core.samples import SampleError, SampleSet, SampleStore
from core.workspace import WorkspaceError
from app_pages.common import get_predictor, models, page_header, page_link, public_error, sidebar_status, workspace

CANVAS = 280  # pixels; 10x MNIST's 28
PRESENTER = os.environ.get("MNIST_LAB_PRESENTER") == "1"
PROVIDERS = {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "CUDA (GPU)"}


# ------------------------------------------------------------------ models

def model_options() -> dict[str, str]:
    """path -> label: shipped models (default first), then this visitor's own exports."""
    return {str(m.path): m.label() for m in models(kinds=("shipped", "export"))}


def load_model(path: str):
    """The shared onnxruntime session, or None after showing why it can't be used."""
    try:
        return get_predictor(path)
    except FileNotFoundError:
        st.error(f"The model file **{Path(path).name}** has disappeared. Pick another model in the sidebar.",
                 icon=":material/error:")
    except ModelError as e:
        st.error(f"This model can't be used: {public_error(e)}. Pick another model in the sidebar, or export a run "
                 "again.", icon=":material/error:")
    return None


# ------------------------------------------------------------------ UI

def sidebar_ui() -> tuple[str | None, int]:
    with st.sidebar:
        options = model_options()
        path = None
        if st.session_state.get("draw_model") not in options:
            st.session_state.pop("draw_model", None)  # a remembered model that is gone: back to the default
        if options:
            path = st.selectbox("Model", list(options), format_func=options.get, key="draw_model",
                                persist_state="session",
                                help="Shipped models, then the ones you exported on the Export page. "
                                     "The percentage is test accuracy.")
        stroke = st.slider("Stroke width", 6, 40, 18, key="draw_stroke", persist_state="session",
                           help="Pen thickness in canvas pixels. Thickness is normalised away by the "
                                "preprocessing, within reason.")
        if PRESENTER:  # only an explicit presenter setting may write visitors' drawings to disk
            st.toggle("Save to disk (data/samples)", key="draw_presenter_disk", value=False,
                      help="Presenter mode: also write saved drawings to data/samples, shared by every visitor.")
    return path, stroke


def canvas_ui(stroke: int):
    st.markdown("**Draw a digit**")
    result = st_canvas(stroke_width=stroke, stroke_color="#FFFFFF", background_color="#000000",
                       width=CANVAS, height=CANVAS, drawing_mode="freedraw", update_streamlit=True,
                       return_image_data=True, key="canvas")
    st.caption("White ink on black, like MNIST. The toolbar above the canvas undoes, redoes and clears "
               "(the bin). The model reads your digit every time you lift the pen.")
    return result.image_data


def photo_ui(predictor) -> dict | None:
    """An uploaded PNG/JPEG of a digit, read like a drawing; None when there is none (or it is unusable,
    after saying why). The uploader checks the extension; the content is checked again in core, which
    reads only PNG/JPEG and refuses oversized images before decoding them."""
    upload = st.file_uploader("Or upload a photo of a digit (PNG or JPEG)", type=["png", "jpg", "jpeg"],
                              key="draw_photo", help="Dark ink on paper or white on black; it is cropped, scaled "
                                                     "and centred like a drawing. Removing it reads the canvas again.")
    if upload is None or predictor is None:
        return None
    try:
        out = predict_image(predictor, upload.getvalue())
    except ValueError as e:
        st.error(f"Could not read {public_error(upload.name)}: {public_error(e)}", icon=":material/error:")
        return None
    st.caption(f"Reading the uploaded photo **{public_error(upload.name)}**; remove it to read the canvas.")
    return out


def prediction_ui(out: dict | None, predictor) -> None:
    if out is None or out["blank"]:
        st.metric("Prediction", "—", help="The digit the model thinks you drew.")
        reason = (out or {}).get("reason", "").removeprefix("no digit: ")
        hint = "Draw a digit from 0 to 9 on the black canvas: one stroke or several, as large as you like."
        if reason and "empty" not in reason and "nothing" not in reason:
            hint = f"Not a digit yet: {reason}."  # e.g. a dot or a stray mark
        st.info(hint, icon=":material/draw:")
        return
    probs = out["probs"]
    digit = out["digit"]
    c1, c2 = st.columns(2)
    c1.metric("Prediction", str(digit), help="The digit the model thinks you drew.")
    c2.metric("Confidence", f"{100 * float(probs[digit]):.1f}%", help="The model's probability for that digit. "
              "Confident is not the same as right: see the Evaluate page's reliability diagram.")
    df = pd.DataFrame({"digit": [str(d) for d in range(10)], "probability": probs.astype(float),
                       "top": [d == digit for d in range(10)]})
    chart = alt.Chart(df).mark_bar().encode(
        x=alt.X("digit:N", title="Digit", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("probability:Q", title="Probability", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        color=alt.condition("datum.top", alt.value("#7C5CFF"), alt.value("#5b5f73")),
        tooltip=["digit", alt.Tooltip("probability:Q", format=".2%")],
    ).properties(height=220)
    st.altair_chart(chart, width="stretch")
    runner_up = out["top3"][1] if len(out["top3"]) > 1 else None
    st.caption(f"onnxruntime on **{PROVIDERS.get(predictor.provider, predictor.provider)}** · "
               f"**{out['latency_ms']:.1f} ms** for preprocessing + inference"
               + (f" · runner-up: {runner_up[0]} ({100 * runner_up[1]:.1f}%)" if runner_up else ""))


def steps_ui(out: dict | None) -> None:
    st.markdown("**What the model sees**")
    if out is None or not out["pre"].steps:
        st.caption("Each preprocessing step appears here once you draw.")
        return
    steps = out["pre"].steps
    cols = st.columns(len(steps))
    for i, (col, (name, img)) in enumerate(zip(cols, steps.items()), start=1):
        img = explore.pad_square(img)  # the crop is not square; same-size tiles line up
        col.image(explore.enlarge(img, max(1, 112 // img.shape[0])), caption=f"{i}. {name}", width=112)
    st.caption("MNIST's recipe: crop to the ink, scale the longer side to 20 pixels, then centre the ink's mass "
               "in a 28×28 frame. Skipping it is why many canvas demos misread digits drawn small or off-centre.")


def samples_ui(out: dict | None) -> None:
    store = workspace().samples
    st.subheader("Save as a labelled sample")
    st.caption("Collect your own handwriting; the Fine-tune page can adapt a model to it. Samples are kept in "
               "your workspace (this page's link brings them back), and you can download them.")
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    default = str(out["digit"]) if out and not out["blank"] else None
    label = c1.segmented_control("Label", [str(d) for d in range(10)], default=default,
                                 key=f"draw_label_{default}", help="What you meant to draw (the prediction is "
                                                                   "preselected; correct it if it's wrong).")
    can_save = out is not None and not out["blank"] and label is not None
    if c2.button("Save sample", icon=":material/add:", disabled=not can_save, width="stretch", type="primary"):
        try:
            workspace().check_quota(4096)
            store.add(out["pre"].image, int(label))
            if PRESENTER and st.session_state.get("draw_presenter_disk"):
                SampleStore().add(out["pre"].image, int(label))
            st.toast(f"Saved a {label}. You have {len(store)} samples.", icon=":material/check:")
        except (SampleError, WorkspaceError) as e:
            st.error(f"Not saved: {public_error(e)}")
    samples = store.load()
    counts = samples.counts()
    if len(samples):
        st.caption("Your samples per digit: " + " · ".join(f"**{d}**: {n}" for d, n in enumerate(counts)))
    d1, d2 = st.columns(2)
    # A callable: the zip is built when the button is clicked, not on every stroke.
    d1.download_button("Download samples (.zip)", samples.to_zip, file_name="samples.zip",
                       mime="application/zip", disabled=not len(samples), icon=":material/download:",
                       help="<digit>/<id>.png, 28×28, white on black: re-upload later, or use with "
                            "python -m core samples import.")
    upload = d2.file_uploader("Add samples from a .zip", type=["zip"], key="draw_upload",
                              help="A zip downloaded here, or folders 0-9 of PNGs (or PNGs + labels.csv).")
    if upload is not None and st.session_state.get("draw_upload_done") != upload.file_id:
        st.session_state.draw_upload_done = upload.file_id  # import each uploaded file once, not on every rerun
        try:
            workspace().check_quota(upload.size)
            added = store.add_set(SampleSet.from_zip(upload.getvalue()))
            st.success(f"Added {added} new samples from {upload.name}.")
        except (SampleError, WorkspaceError) as e:
            st.error(f"Could not read {upload.name}: {public_error(e)}")
    if len(samples):
        page_link("app_pages/finetune.py", "Fine-tune a model on your samples")


# ------------------------------------------------------------------ page

page_header("Draw", "Draw a digit and an exported model reads it through onnxruntime, stroke by stroke.")
sidebar_status()
path, stroke = sidebar_ui()
predictor = load_model(path) if path else None
if path is None:
    st.warning("No model to read drawings with: the shipped models in `exported/` are missing. Train a run, "
               "export it on the Export page, and it appears here.", icon=":material/warning:")
    page_link("app_pages/train.py", "Train a model")

left, right = st.columns([1, 1.3], gap="large")
with left:
    rgba = canvas_ui(stroke)
    photo = photo_ui(predictor)
out = None
if photo is not None:
    out = photo
elif predictor is not None and rgba is not None:
    try:
        out = predict_canvas(predictor, rgba)
    except ValueError as e:  # a malformed canvas image: say so instead of failing the page
        st.error(f"Could not read the canvas: {public_error(e)}")
if out is not None and not out["blank"]:
    st.session_state["last_drawing"] = out["pre"].image  # float32 [28,28]: Insights explains this drawing
with right:
    if predictor is not None:
        prediction_ui(out, predictor)
steps_ui(out)
st.divider()
samples_ui(out)
