"""MNIST Lab: navigation only. Each page lives in pages/ and calls into core/."""
import streamlit as st

from pages.common import app_navigation

st.set_page_config(page_title="MNIST Lab", page_icon="✍️", layout="wide")

pages = {
    "Lab": [
        st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("pages/draw.py", title="Draw", icon=":material/draw:", url_path="draw"),
        st.Page("pages/data.py", title="Data", icon=":material/dataset:", url_path="data"),
    ],
    "Models": [
        st.Page("pages/train.py", title="Train", icon=":material/model_training:", url_path="train"),
        st.Page("pages/finetune.py", title="Fine-tune", icon=":material/tune:", url_path="finetune"),
        st.Page("pages/evaluate.py", title="Evaluate", icon=":material/fact_check:", url_path="evaluate"),
        st.Page("pages/export.py", title="Export", icon=":material/ios_share:", url_path="export"),
        st.Page("pages/insights.py", title="Insights", icon=":material/visibility:", url_path="insights"),
    ],
}
page = st.navigation(pages)
with app_navigation():  # marks this run as v2 navigation (see pages.common)
    page.run()
