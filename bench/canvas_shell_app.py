"""bench/canvas_app.py's page, unchanged, inside a multipage shell shaped like streamlit_app.py's
(st.navigation, eight pages in two sidebar sections). Measures what the shell alone costs a
stroke, so bench/draw_latency.py can tell the Draw page's own cost from the app's."""
import streamlit as st

from canvas_app import canvas_page  # `streamlit run` puts this script's folder (bench/) on sys.path


def other():
    st.title("Other")


st.set_page_config(layout="wide")
st.navigation({
    "Lab": [st.Page(canvas_page, title="Canvas", default=True)]
    + [st.Page(other, title=f"Page {i}", url_path=f"page{i}") for i in range(2)],
    "Models": [st.Page(other, title=f"Page {i}", url_path=f"page{i}") for i in range(2, 7)],
}).run()
