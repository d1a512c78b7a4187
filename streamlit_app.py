"""MNIST Lab: navigation, and what the server loads once when it starts. Each page lives in
app_pages/ and calls into core/.

`streamlit run streamlit_app.py` finds the `st.App` below and serves it; Streamlit then runs this
same file for every visitor, as `__main__`, where it only sets up navigation.

The folder is not called pages/: Streamlit treats a pages/ folder beside the entrypoint as its
legacy (v1) multipage app, which a fresh server shows until st.navigation first runs."""
import threading
from contextlib import asynccontextmanager

import streamlit as st


def preload() -> None:
    """What a fresh server's first visitor would otherwise wait for, imported once at start-up:
    pandas and pyarrow, which Streamlit's components-v2 serialisation imports when the Draw canvas
    first renders (1.1 s of that first visit, py-spy), and onnxruntime with the Draw page's engine
    modules (its first prediction). Never torch: the serving path does not load it."""
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401
    import onnxruntime  # noqa: F401  (after: the canvas comes before the first prediction)

    import core.inference  # noqa: F401  (and core.preprocess, PIL)


@asynccontextmanager
async def lifespan(_app):
    # A thread: the server takes visitors at once, and a visitor who arrives as it starts still
    # gains, since a browser spends its first second parsing Streamlit's bundle before it connects.
    threading.Thread(target=preload, name="mnist-lab-preload", daemon=True).start()
    yield


if __name__ == "__main__":  # a visitor's run
    st.set_page_config(page_title="MNIST Lab", page_icon="✍️", layout="wide")
    pages = {
        "Lab": [
            st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
            st.Page("app_pages/draw.py", title="Draw", icon=":material/draw:", url_path="draw"),
            st.Page("app_pages/data.py", title="Data", icon=":material/dataset:", url_path="data"),
        ],
        "Models": [
            st.Page("app_pages/train.py", title="Train", icon=":material/model_training:", url_path="train"),
            st.Page("app_pages/finetune.py", title="Fine-tune", icon=":material/tune:", url_path="finetune"),
            st.Page("app_pages/evaluate.py", title="Evaluate", icon=":material/fact_check:", url_path="evaluate"),
            st.Page("app_pages/export.py", title="Export", icon=":material/ios_share:", url_path="export"),
            st.Page("app_pages/insights.py", title="Insights", icon=":material/visibility:", url_path="insights"),
        ],
    }
    st.navigation(pages).run()
else:  # `streamlit run` imports this file once, as a module, to find the server's app
    app = st.App("streamlit_app.py", lifespan=lifespan)
