"""Draw: draw a digit, and an exported ONNX model reads it on every stroke.

The drawing goes through MNIST's own preprocessing (crop, scale into 20x20,
centre by mass in 28x28) before onnxruntime sees it; the page shows each
step, the ten probabilities, the provider and the latency. Drawings can be
saved with a label into this visitor's sample set, which feeds fine-tuning.
Works with no dataset: only the shipped model is needed.

Light on purpose: no torch and no Altair on this page (a server whose visitors only draw stays
under 200 MB; pandas does load, because Streamlit's components v2 serialisation imports it when
the canvas renders), and a stroke reruns only the drawing fragment (prediction, canvas, details,
steps), not the sidebar or the saved-samples section. The Prediction sits above the canvas, so on
a phone, where columns stack, the digit and the whole canvas share the screen.
"""
from __future__ import annotations

import html
import os
import time
from pathlib import Path

import streamlit as st
from streamlit_drawable_canvas import CanvasResult, st_canvas  # components v2: only inside a running app

from core import explore
from core.inference import ModelError, predict_canvas, predict_image
from core.samples import SampleError, SampleSet, SampleStore
from core.workspace import WorkspaceError
from app_pages.common import get_predictor, models, page_header, page_link, public_error, sidebar_status, workspace

CANVAS = 280  # pixels; 10x MNIST's 28. Fits a 360 px phone screen with Streamlit's margins.
STEP_TILE = 84  # pixels per preprocessing step: four fit side by side on a phone
PAINT_PAUSE_S = 0.05  # after sending the Prediction: see drawing_ui
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


def probability_bars(probs, digit: int) -> str:
    """The ten probabilities as a small HTML bar chart: one element, a few hundred bytes, drawn by
    the browser without a chart library (an Altair chart cost this page ~10 ms of Python and a
    Vega render per stroke)."""
    cells = []
    for d, p in enumerate(float(x) for x in probs):
        pct = 100 * p
        text = f"{pct:.0f}%" if pct >= 0.5 else ("<1%" if pct >= 0.05 else "0%")
        colour = "#7C5CFF" if d == digit else "#5b5f73"
        cells.append(
            f'<div title="{d}: {pct:.2f}%" style="flex:1;min-width:0;display:flex;flex-direction:column;'
            f'align-items:center;justify-content:flex-end;gap:2px">'
            f'<span style="font-size:11px;opacity:.75;white-space:nowrap">{text}</span>'
            f'<div style="width:70%;height:{max(1, round(80 * p))}px;background:{colour};border-radius:2px"></div>'
            f'<span style="font-size:14px{";font-weight:700" if d == digit else ""}">{d}</span></div>')
    said = ", ".join(f"{d}: {100 * float(p):.1f}%" for d, p in enumerate(probs))
    return (f'<div role="img" aria-label="{html.escape("Probability per digit: " + said)}" '
            f'style="display:flex;gap:2px;height:120px;align-items:stretch">{"".join(cells)}</div>')


# Touch screens have no hover, and the canvas's toolbar (undo, redo, clear) only shows while the
# pointer hovers the canvas: on a phone it stayed invisible. This pins it open where the primary
# pointer cannot hover. The toolbar's styles live in the canvas component's shadow root (its
# isolate_styles), so the rule goes in there; class names are streamlit-drawable-canvas 0.13's
# (pinned in requirements.txt; tests/test_draw_phone.py checks the toolbar shows on touch).
TOUCH_TOOLBAR_JS = """
const RULE = '@media (hover: none), (pointer: coarse) { .dc-toolbar { opacity: 1 !important; top: -2.65rem !important; } }';
function pin() {
  let done = false;
  for (const host of document.querySelectorAll('[data-testid="stBidiComponentIsolated"]')) {
    const root = host.shadowRoot;
    if (!root || !root.querySelector('.dc-toolbar')) continue;
    if (!root.querySelector('style[data-mnist-lab-touch]')) {
      const style = document.createElement('style');
      style.dataset.mnistLabTouch = '';
      style.textContent = RULE;
      root.appendChild(style);
    }
    done = true;
  }
  return done;
}
export default function () {
  if (pin()) return;
  const timer = setInterval(() => { if (pin()) clearInterval(timer); }, 100);  // the canvas is still mounting
  const stop = setTimeout(() => clearInterval(timer), 20000);
  return () => { clearInterval(timer); clearTimeout(stop); };
}
"""


@st.cache_resource(show_spinner=False)
def _touch_toolbar():
    return st.components.v2.component("mnist_lab_touch_toolbar", js=TOUCH_TOOLBAR_JS)


# ------------------------------------------------------------------ UI

def sidebar_ui() -> str | None:
    """The model picker (and the presenter's switch): changing them reruns the whole page."""
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
        if PRESENTER:  # only an explicit presenter setting may write visitors' drawings to disk
            st.toggle("Save to disk (data/samples)", key="draw_presenter_disk", value=False,
                      help="Presenter mode: also write saved drawings to data/samples, shared by every visitor.")
    return path


def drawn_image():
    """The drawing the canvas sent last, as RGBA [280,280,4], or None before the first stroke. Read
    from the canvas's state before the canvas is drawn, so the prediction can be the first thing
    this run sends: every message the browser handles before the Prediction delays it."""
    try:
        url = st.session_state.get("canvas")["drawing"]["data"]
    except (KeyError, TypeError):
        return None
    # The component's own decoder (base64 PNG -> numpy), as st_canvas(...).image_data would run it.
    return None if url is None else CanvasResult(None, url, return_image_data=True).image_data


def canvas_ui() -> None:
    """The canvas and its pen. The stroke width sits under the canvas, not in the sidebar: on a phone
    the sidebar is folded away."""
    stroke = st.session_state.get("draw_stroke", 18)
    st.markdown("**Draw a digit**")  # also the room the canvas toolbar opens into, above the canvas
    st_canvas(stroke_width=stroke, stroke_color="#FFFFFF", background_color="#000000", width=CANVAS, height=CANVAS,
              drawing_mode="freedraw", update_streamlit=True, return_image_data=True, key="canvas")
    st.slider("Stroke width", 6, 40, 18, key="draw_stroke", persist_state="session", width=CANVAS,
              help="Pen thickness in canvas pixels. Thickness is normalised away by the preprocessing, "
                   "within reason.")


def read_photo(predictor) -> tuple[dict | None, str | None]:
    """The uploaded photo, read like a drawing -> (prediction, None), or (None, why it is unusable), or
    (None, None) when there is none. Read from the uploader's state because the uploader sits below
    the prediction (phones show the canvas and the prediction first). The uploader checks the
    extension; core checks the content again: only PNG/JPEG, oversized images refused before decoding."""
    upload = st.session_state.get("draw_photo")
    if upload is None or predictor is None:
        return None, None
    try:
        return predict_image(predictor, upload.getvalue()), None
    except ValueError as e:
        return None, f"Could not read {public_error(upload.name)}: {public_error(e)}"


def photo_ui() -> None:
    """The photo uploader, outside the drawing fragment (uploading reruns the page, which is rare);
    the fragment reads the photo from its state and shows the prediction, or why it can't."""
    st.file_uploader("Or upload a photo of a digit (PNG or JPEG)", type=["png", "jpg", "jpeg"], key="draw_photo",
                     help="Dark ink on paper or white on black; it is cropped, scaled and centred like a drawing. "
                          "Removing it reads the canvas again.")


def metrics_ui(out: dict | None) -> None:
    """Prediction and Confidence on one line, always both (blank: "—"), so the canvas under them
    never moves between strokes. A horizontal container, not columns: columns stack on a phone."""
    blank = out is None or out["blank"]
    with st.container(horizontal=True, gap="medium"):
        st.metric("Prediction", "—" if blank else str(out["digit"]), width="content",
                  help="The digit the model thinks you drew.")
        st.metric("Confidence", "—" if blank else f"{100 * float(out['probs'][out['digit']]):.1f}%", width="content",
                  help="The model's probability for that digit. Confident is not the same as right: see the "
                       "Evaluate page's reliability diagram.")


def details_ui(out: dict | None, predictor, photo_name: str | None) -> None:
    """The ten probabilities, provider and latency; or, with nothing to read, what to do."""
    if out is None or out["blank"]:
        reason = (out or {}).get("reason", "").removeprefix("no digit: ")
        hint = "Draw a digit from 0 to 9 on the black canvas: one stroke or several, as large as you like."
        if reason and "empty" not in reason and "nothing" not in reason:
            hint = f"Not a digit yet: {reason}."  # e.g. a dot or a stray mark
        st.info(hint, icon=":material/draw:")
        return
    if photo_name:
        st.caption(f"Reading the uploaded photo **{public_error(photo_name)}**; remove it to read the canvas.")
    st.html(probability_bars(out["probs"], out["digit"]))
    runner_up = out["top3"][1] if len(out["top3"]) > 1 else None
    st.caption(f"onnxruntime on **{PROVIDERS.get(predictor.provider, predictor.provider)}** · "
               f"**{out['latency_ms']:.1f} ms** for preprocessing + inference"
               + (f" · runner-up: {runner_up[0]} ({100 * runner_up[1]:.1f}%)" if runner_up else ""))


def save_ui(out: dict | None) -> None:
    """Label (the prediction preselected) and Save sample, beside the prediction: they save the
    drawing this fragment run just read. Saving reruns the whole page so the counts below update."""
    default = str(out["digit"]) if out and not out["blank"] else None
    if st.session_state.get("draw_label_for", "") != default:  # a new prediction: preselect it
        st.session_state.draw_label_for = default
        st.session_state.draw_label = default
    # Pills, not a segmented control: ten of them wrap on a phone instead of running off its edge.
    # One key for good (the prediction is preselected through it): a widget keyed by the
    # prediction was a new widget, mounted afresh, on every stroke that changed the digit.
    label = st.pills("Label", [str(d) for d in range(10)], key="draw_label", wrap=True,
                     help="What you meant to draw (the prediction is preselected; correct it if it's wrong).")
    can_save = out is not None and not out["blank"] and label is not None
    if st.button("Save sample", icon=":material/add:", disabled=not can_save, type="primary"):
        store = workspace().samples
        try:
            workspace().check_quota(4096)
            store.add(out["pre"].image, int(label))
            if PRESENTER and st.session_state.get("draw_presenter_disk"):
                SampleStore().add(out["pre"].image, int(label))
            st.session_state.draw_saved = f"Saved a {label}. You have {len(store)} samples."
            st.rerun()  # the whole page: the samples section (outside this fragment) shows the new count
        except (SampleError, WorkspaceError) as e:
            st.error(f"Not saved: {public_error(e)}")


def steps_ui(out: dict | None) -> None:
    st.markdown("**What the model sees**")
    if out is None or not out["pre"].steps:
        st.caption("Each preprocessing step appears here once you draw.")
        return
    steps = out["pre"].steps
    tiles = []
    for img in steps.values():
        img = explore.pad_square(img)  # the crop is not square; same-size tiles line up
        tiles.append(explore.enlarge(img, max(1, STEP_TILE // img.shape[0])))
    # One image element for all steps (one message, and the browser wraps them on a narrow screen).
    st.image(tiles, caption=[f"{i}. {name}" for i, name in enumerate(steps, start=1)], width=STEP_TILE)


@st.fragment
def drawing_ui(path: str | None) -> None:
    """Everything a stroke changes, and nothing else: a stroke reruns this function only.
    The Prediction comes first (above the canvas, its first message), then the canvas with the
    details beside it (desktop) or under it (phone, where columns stack): drawing and reading the
    answer need no scrolling on a 390x844 screen. The canvas never moves between strokes."""
    rgba = drawn_image()
    photo = st.session_state.get("draw_photo")
    # onnxruntime only when there is something to read: a cold server's first visitor sees the
    # canvas before the model has loaded (it loads below, after the canvas).
    predictor = load_model(path) if path and (rgba is not None or photo is not None) else None
    out, photo_error = read_photo(predictor)
    if out is None and predictor is not None and rgba is not None:
        try:
            out = predict_canvas(predictor, rgba)
        except ValueError as e:  # a malformed canvas image: say so instead of failing the page
            st.error(f"Could not read the canvas: {public_error(e)}")
    metrics_ui(out)
    if out is not None:
        # Let the browser paint the Prediction before the rest of this run arrives. It handles the
        # messages that reach it together as one batch, so the bars, steps and widgets sent right
        # after the metrics held the digit back by ~65 ms (bench/draw_latency.py: +65 ms against the
        # one-fragment canvas app without the pause, -8 ms with it); the details follow 50 ms later.
        time.sleep(PAINT_PAUSE_S)
    if out is not None and not out["blank"]:
        st.session_state["last_drawing"] = out["pre"].image  # float32 [28,28]: Insights explains this drawing
    left, right = st.columns([1, 1.3], gap="medium")
    with left:
        canvas_ui()
    if predictor is None and path:
        predictor = load_model(path)  # says so now if the chosen model is unusable
    with right:
        if photo_error:
            st.error(photo_error, icon=":material/error:")
        if predictor is not None:
            details_ui(out, predictor, photo.name if photo is not None and out is not None else None)
            save_ui(out)
    steps_ui(out)


def samples_ui() -> None:
    """The visitor's saved samples: counts, zip download and upload. Outside the drawing fragment:
    it reads every saved PNG, which a stroke must not pay for; Save sample reruns the page."""
    store = workspace().samples
    st.subheader("Your labelled samples")
    st.caption("Collect your own handwriting with **Save sample** above; the Fine-tune page can adapt a model "
               "to it. Samples are kept in your workspace (this page's link brings them back), and you can "
               "download them.")
    note = st.session_state.pop("draw_saved", None)
    if note:
        st.toast(note, icon=":material/check:")
    samples = store.load()
    counts = samples.counts()
    if len(samples):
        st.caption("Your samples per digit: " + " · ".join(f"**{d}**: {n}" for d, n in enumerate(counts)))
    d1, d2 = st.columns(2)
    # A callable: the zip is built when the button is clicked, not on every run.
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
model_path = sidebar_ui()
if model_path is None:
    st.warning("No model to read drawings with: the shipped models in `exported/` are missing. Train a run, "
               "export it on the Export page, and it appears here.", icon=":material/warning:")
    page_link("app_pages/train.py", "Train a model")
drawing_ui(model_path)
# Static text stays outside the fragment: every element a stroke re-sends is one more message the
# browser handles before it shows the Prediction (measured: the fragment's later elements, not the
# sidebar or the samples section, made up the Draw page's extra latency).
st.caption("White ink on black, like MNIST. The toolbar above the canvas (it shows when you touch or hover the "
           "canvas) undoes, redoes and clears (the bin). The model reads your digit every time you lift the pen, "
           "through MNIST's recipe: crop to the ink, scale the longer side to 20 pixels, then centre the ink's "
           "mass in a 28×28 frame. Skipping it is why many canvas demos misread digits drawn small or off-centre.")
photo_ui()
st.divider()
samples_ui()
_touch_toolbar()(key="touch_toolbar")  # draws nothing; outside the fragment: strokes don't resend it
