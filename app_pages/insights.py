"""Insights: what a CNN has learned and what it looks at. First-layer filters,
activation maps for your drawing or a test digit, and saliency / Grad-CAM
overlays. Works with the shipped model alone (no dataset needed for a drawing)."""
from __future__ import annotations

import copy
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from core import insights
from core.inference import softmax
from app_pages.common import public_error  # visitor-safe error text: no file-system paths
from app_pages.common import empty_state, get_data, models, page_header, sidebar_status

FACTOR = 8  # screen pixels per model pixel


# ------------------------------------------------------------------ cached loaders

@st.cache_resource(show_spinner="Loading the model's weights…", max_entries=16)
def _torch_model(path: str, mtime: float):
    """Torch weights for a run or ONNX file, shared read-only; callers get a copy (hooks are per call)."""
    return insights.torch_model_for(path, "cpu")


def get_model(path: str):
    return copy.deepcopy(_torch_model(path, Path(path).stat().st_mtime)).eval()


# ------------------------------------------------------------------ UI

def input_ui(data) -> tuple[np.ndarray | None, str]:
    """The digit to explain: the visitor's last drawing or a test digit -> (image [28,28], description)."""
    drawing = st.session_state.get("last_drawing")
    sources = (["Your last drawing"] if drawing is not None else []) + (["A test digit"] if data is not None else [])
    if not sources:
        empty_state("**No digit to explain yet** — draw one on the Draw page and come back to see what the "
                    "model makes of it.", "app_pages/draw.py", "Draw a digit")
        return None, ""
    source = st.radio("Digit to explain", sources, horizontal=True,
                      help="Your most recent drawing from the Draw page, or any digit of the test set.")
    if source == "Your last drawing":
        return np.asarray(drawing, np.float32), "your last drawing"
    n = len(data.test_labels)
    if "ins_index" not in st.session_state:
        st.session_state["ins_index"] = 0
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    c2.button("Random digit", icon=":material/casino:", width="stretch",
              on_click=lambda: st.session_state.update(ins_index=int(np.random.default_rng().integers(n))))
    i = c1.number_input("Test digit number", 0, n - 1, key="ins_index", step=1,
                        help=f"Index into the {n:,} test digits.")
    return data.test_images[int(i)].numpy(), f"test digit #{int(i)} (labelled {int(data.test_labels[int(i)])})"


def prediction_ui(model, image: np.ndarray, what: str) -> int:
    acts = insights.activations(model, image)
    probs = softmax(acts["head"][None])[0]
    pred = int(probs.argmax())
    c1, c2, c3 = st.columns([1, 1, 3], vertical_alignment="center")
    c1.image(insights.upscale(insights.as_input(image)[0, 0].numpy(), FACTOR // 2), caption=f"What the model sees: {what}")
    c2.metric("Prediction", str(pred), f"{100 * probs[pred]:.1f}% sure", delta_color="off", delta_arrow="off")
    df = pd.DataFrame({"digit": [str(d) for d in range(10)], "probability": probs})
    c3.altair_chart(alt.Chart(df).mark_bar().encode(
        x=alt.X("digit:N", title="Digit", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("probability:Q", title="Probability", scale=alt.Scale(domain=[0, 1])),
        color=alt.condition(f"datum.digit == '{pred}'", alt.value("#7C5CFF"), alt.value("#666666")),
        tooltip=["digit", alt.Tooltip("probability:Q", format=".3f")]).properties(height=180), width="stretch")
    return pred


def filters_ui(model, image: np.ndarray | None) -> None:
    filters = insights.first_layer_filters(model)
    k = filters.shape[-1]
    st.caption(f"The {len(filters)} weight patterns of the first layer ({filters.shape[1]}×{k} each): mid-grey = 0, "
               "brighter = positive, darker = negative. Each one slides over the image and lights up where its "
               "pattern is, so most are edge and stroke detectors at different angles.")
    many = len(filters) > 32
    c1, c2 = st.columns(2, gap="large")
    c1.image(insights.mosaic(filters, columns=16 if many else 8, factor=max(2, 48 // k), symmetric=True),
             caption="First-layer filters", width="stretch")
    responses = insights.first_layer_responses(model, image) if image is not None else None
    if responses is not None:
        c2.image(insights.mosaic(responses, columns=8, factor=3, color=True), width="stretch",
                 caption="Each filter applied to this digit, in the same order (bright = strong response)")
    elif image is None:
        c2.caption("Pick a digit above to see what each filter makes of it.")


def activations_ui(model, image: np.ndarray) -> None:
    acts = insights.activations(model, image)
    st.caption("What each layer group passes on for this digit. For convolutional groups, the 16 most active "
               "channels (bright = strong response); deeper groups see coarser, more abstract patterns.")
    for group, a in acts.items():
        if a.ndim == 3:
            top = insights.top_channels(a, 16)
            st.markdown(f"**{group}** · {a.shape[0]} channels of {a.shape[1]}×{a.shape[2]}")
            factor = max(2, 84 // a.shape[1])
            st.image(insights.mosaic(a[top], columns=8, factor=factor, color=True),
                     caption=f"{group}: channels {', '.join(map(str, top[:8]))}, …")
        else:
            label = "logits" if group == "head" else f"{a.shape[0]} units"
            st.markdown(f"**{group}** · {label}")
            df = pd.DataFrame({"unit": np.arange(len(a)).astype(str) if group == "head" else np.arange(len(a)),
                               "value": a})
            st.altair_chart(alt.Chart(df).mark_bar(color="#7C5CFF").encode(
                x=alt.X("unit:O" if group != "head" else "unit:N", title="Digit" if group == "head" else "Unit",
                        axis=alt.Axis(labelAngle=0, labels=group == "head" or len(a) <= 32)),
                y=alt.Y("value:Q", title="Value")).properties(height=140), width="stretch")


def attribution_ui(model, image: np.ndarray, pred: int) -> None:
    c1, c2 = st.columns(2)
    target = c1.selectbox("Explain the score of digit", range(10), index=pred, key="ins_target",
                          help="Defaults to the prediction; pick another digit to see what argues for it.")
    groups = insights.conv_groups(model)
    group = None
    if groups:
        default = insights.default_cam_group(model)
        names = list(groups)
        group = c2.selectbox("Grad-CAM layer group", names, index=names.index(default),
                             format_func=lambda g: f"{g} ({groups[g][1]}×{groups[g][2]} maps)",
                             help="Deeper groups are more about meaning but coarser; the default is the last "
                                  "group whose maps are at least 7×7.")
    sal, _ = insights.saliency(model, image, target=target)
    cols = st.columns(3, gap="medium")
    cols[0].image(insights.upscale(insights.as_input(image)[0, 0].numpy(), FACTOR), caption="Input", width="stretch")
    cols[1].image(insights.upscale(insights.overlay(image, sal), FACTOR), width="stretch",
                  caption=f"Saliency for {target}: pixels whose change moves the score most")
    if group:
        cam, _, used = insights.grad_cam(model, image, target=target, group=group)
        cols[2].image(insights.upscale(insights.overlay(image, cam), FACTOR), width="stretch",
                      caption=f"Grad-CAM for {target} on {used}: regions that argue for it")
    else:
        cols[2].info("Grad-CAM needs convolutional feature maps; this model is fully connected.")
    st.caption("Saliency is SmoothGrad (gradients averaged over 16 slightly noisy copies). Grad-CAM weighs a "
               "layer group's maps by their gradient; on 28×28 digits its maps are only 7×7 or 3×3, so read it "
               "as *where*, not *which stroke*.")


# ------------------------------------------------------------------ page

page_header("Insights", "Look inside a CNN: the patterns its first layer learned, how each layer responds to a "
            "digit, and which pixels drive its answer.")
data = get_data()
sidebar_status(data)
choices = {str(m.path): m.label(accuracy=False) for m in models(kinds=("run", "shipped"))}
if not choices:
    empty_state("**No model found** — the shipped models in `exported/` are missing and you have no runs yet: "
                "train one on the Train page.", "app_pages/train.py", "Train a model")
else:
    path = st.selectbox("Model", list(choices), format_func=choices.get, key="ins_model",
                        help="Your runs, or the shipped models (their PyTorch weights are rebuilt from the ONNX "
                             "file and checked against onnxruntime).")
    try:
        model = get_model(path)
    except (ValueError, OSError) as e:
        st.error(f"Cannot look inside this model: {public_error(e)}")
    else:
        image, what = input_ui(data)
        tabs = st.tabs(["Prediction & attribution", "Activation maps", "First-layer filters"])
        with tabs[2]:
            filters_ui(model, image)
        if image is not None:
            with tabs[0]:
                pred = prediction_ui(model, image, what)
                attribution_ui(model, image, pred)
            with tabs[1]:
                activations_ui(model, image)
        else:
            for t in tabs[:2]:
                t.caption("Pick a digit above first.")
