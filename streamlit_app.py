"""MNIST Lab: navigation only. Each page lives in app_pages/ and calls into core/.

The folder is not called pages/: Streamlit treats a pages/ folder beside the entrypoint as its
legacy (v1) multipage app, which a fresh server shows until st.navigation first runs."""
import streamlit as st

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
