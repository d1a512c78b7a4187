"""The reference for bench/draw_latency.py: the canvas and a Prediction metric in one fragment,
running the same core.inference.predict_canvas as the Draw page, and nothing else. The gap between
this app and /draw is what the Draw page (and the app around it) costs per stroke.

Started the way the app is: `.venv/bin/streamlit run bench/canvas_app.py` from the project root.
bench/canvas_shell_app.py shows the same page inside a multipage shell like the app's."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `streamlit run` puts bench/ first, not the root

import streamlit as st
from streamlit_drawable_canvas import st_canvas

from core.inference import DEFAULT_MODEL, load_predictor, predict_canvas


@st.cache_resource
def predictor():
    return load_predictor(DEFAULT_MODEL)


@st.fragment
def canvas_ui():
    result = st_canvas(stroke_width=18, stroke_color="#FFFFFF", background_color="#000000", width=280, height=280,
                       drawing_mode="freedraw", update_streamlit=True, return_image_data=True, key="canvas")
    rgba = result.image_data
    out = predict_canvas(predictor(), rgba) if rgba is not None else None
    st.metric("Prediction", "—" if out is None or out["blank"] else str(out["digit"]))


def canvas_page():
    st.title("Canvas")
    canvas_ui()


if __name__ == "__main__":  # `streamlit run` runs the script as __main__; the shell app imports it
    canvas_page()
