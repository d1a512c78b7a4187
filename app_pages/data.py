"""Data: what MNIST looks like before any model sees it. Label counts, random
samples by label, per-class mean and spread, pixel intensities, a 2-D map of
all digits (PCA, and t-SNE on a subsample) and one digit's raw pixel values.
The numbers come from core.explore; this page only draws them."""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from core import explore
from app_pages.common import data_source_label, get_data, image_grid, page_header, sidebar_status

TABS = ["Labels", "Samples", "Class averages", "Pixels", "Embedding", "One digit"]
PCA_POINTS = 2500  # PCA is fitted on every training digit; this many are plotted (with images in tooltips)
TSNE_POINTS = 2000
DIGIT_COLORS = alt.Scale(scheme="category10", domain=[str(d) for d in range(10)])


# ------------------------------------------------------------------ cached computations
# Keyed by the data's description (which names its source and size); the arrays themselves
# are passed unhashed (leading underscore): hashing 47 MB on every rerun would cost more
# than the work.

@st.cache_data(show_spinner=False, max_entries=4)
def _counts(key: str, _data) -> pd.DataFrame:
    train = explore.label_counts(_data.train_labels)
    test = explore.label_counts(_data.test_labels)
    return pd.DataFrame({"digit": [str(d) for d in range(10)] * 2, "split": ["train"] * 10 + ["test"] * 10,
                         "count": np.concatenate([train, test])})


@st.cache_data(show_spinner="Averaging every training digit…", max_entries=4)
def _class_images(key: str, _data) -> tuple[np.ndarray, np.ndarray]:
    mean, std = explore.class_mean_std(_data.train_images, _data.train_labels)
    return explore.to_uint8(mean), explore.to_uint8(std, stretch=True)


@st.cache_data(show_spinner="Counting pixel intensities…", max_entries=4)
def _histogram(key: str, _data) -> dict:
    return explore.pixel_histogram(_data.train_images, bins=32)


def _points(images, labels, idx, coords) -> pd.DataFrame:
    # "image" is the one field name Vega's tooltip renders as a picture.
    return pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1], "digit": [str(int(v)) for v in labels[idx]],
                         "index": idx, "image": [explore.digit_data_url(images[i]) for i in idx]})


@st.cache_data(show_spinner="Fitting PCA on every training digit…", max_entries=4)
def _pca(key: str, _data) -> tuple[pd.DataFrame, np.ndarray]:
    images, labels = _data.train_images.numpy(), _data.train_labels.numpy()
    pca = explore.pca_fit(images, n_components=2)
    idx = explore.balanced_subsample(labels, PCA_POINTS, seed=0)
    return _points(images, labels, idx, pca.transform(images[idx])), pca.explained_variance_ratio


@st.cache_data(show_spinner=f"Running t-SNE on {TSNE_POINTS:,} digits (about 10-20 s, once for all visitors)…",
               max_entries=4)
def _tsne(key: str, _data) -> pd.DataFrame:
    images, labels = _data.train_images.numpy(), _data.train_labels.numpy()
    idx, coords = explore.tsne_embed(images, labels, n=TSNE_POINTS, seed=0)
    return _points(images, labels, idx, coords)


def _split(data, split: str):
    return (data.train_images, data.train_labels) if split == "train" else (data.test_images, data.test_labels)


# ------------------------------------------------------------------ UI

def overview_ui(data) -> None:
    c1, c2, c3 = st.columns(3)
    c1.metric("Training digits", f"{len(data.train_labels):,}")
    c2.metric("Test digits", f"{len(data.test_labels):,}")
    c3.metric("Image size", "28 × 28", help="Grayscale, 0 = black background, 255 = full white ink.")
    st.caption(f"Source: {data_source_label(data)}.")


def labels_ui(data) -> None:
    df = _counts(data.description, data)
    # Share of each split, not raw counts: the test split is 6x smaller, and the question
    # is whether both have the same balance.
    chart = alt.Chart(df).transform_joinaggregate(total="sum(count)", groupby=["split"]).transform_calculate(
        share="datum.count / datum.total").mark_bar().encode(
        x=alt.X("digit:N", title="Digit", axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("split:N", sort=["train", "test"]),
        y=alt.Y("share:Q", title="Share of the split", axis=alt.Axis(format="%")),
        color=alt.Color("split:N", sort=["train", "test"], title="Split",
                        scale=alt.Scale(range=["#7C5CFF", "#F5A524"])),
        tooltip=["digit", "split", alt.Tooltip("count:Q", format=",", title="digits"),
                 alt.Tooltip("share:Q", format=".1%")],
    ).properties(height=320)
    st.altair_chart(chart, width="stretch")
    train = df[df.split == "train"].set_index("digit")["count"]
    if train.min() == train.max():  # the offline sample is stratified: 400 of each digit
        balance = f"Every digit has exactly **{train.min():,}** training images. "
    else:
        balance = (f"Classes are roughly balanced: the most common digit is **{train.idxmax()}** "
                   f"({train.max():,}), the rarest **{train.idxmin()}** ({train.min():,}). ")
    st.caption(balance + "Train and test have the same balance, so a model can't score well by favouring one class.")


def samples_ui(data) -> None:
    c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
    digit = c1.segmented_control("Digit", ["All"] + [str(d) for d in range(10)], default="All", key="samples_digit",
                                 persist_state="session", help="Show only digits with this label.")
    split = c2.segmented_control("Split", ["train", "test"], default="train", key="samples_split",
                                 persist_state="session",
                                 help="Training digits are what models learn from; test digits are held out.")
    if c3.button("Shuffle", icon=":material/shuffle:", help="Draw another random set.", width="stretch"):
        st.session_state.samples_seed = st.session_state.get("samples_seed", 0) + 1
    images, labels = _split(data, split or "train")
    labels = labels.numpy()
    idx = explore.sample_indices(labels, None if digit in (None, "All") else int(digit), n=40,
                                 seed=st.session_state.get("samples_seed", 0))
    image_grid(images.numpy()[idx], [f"{labels[i]} · #{i}" for i in idx], columns=10, width=72)
    st.caption("Labels come from the dataset; the number after # is the digit's index, which the "
               "**One digit** tab can open.")


def class_averages_ui(data) -> None:
    mean, std = _class_images(data.description, data)
    st.markdown("**Mean image per digit**: where the ink usually is.")
    image_grid(mean, [str(d) for d in range(10)], columns=10, width=80)
    st.markdown("**Standard deviation per digit**: where writers disagree (brighter = more variation; "
                "each image is scaled to its own maximum).")
    image_grid(std, [str(d) for d in range(10)], columns=10, width=80)


def pixels_ui(data) -> None:
    h = _histogram(data.description, data)
    edges = h["edges"]
    df = pd.DataFrame({"from": edges[:-1], "to": edges[1:], "pixels": h["counts"]})
    chart = alt.Chart(df).mark_bar(color="#7C5CFF").encode(
        x=alt.X("from:Q", bin="binned", title="Pixel intensity (0 = background, 255 = full ink)",
                scale=alt.Scale(domain=[0, 256])),
        x2="to:Q",
        y=alt.Y("pixels:Q", title="Pixels (log scale)", scale=alt.Scale(type="log")),
        y2=alt.datum(1),  # bars on a log axis need a baseline above zero, or Vega draws none
        tooltip=[alt.Tooltip("from:Q", title="from", format=".0f"), alt.Tooltip("to:Q", title="to", format=".0f"),
                 alt.Tooltip("pixels:Q", format=",")],
    ).properties(height=320)
    st.altair_chart(chart, width="stretch")
    st.caption(f"{100 * h['fraction_zero']:.1f}% of all pixels are exactly 0 and {100 * h['fraction_full']:.1f}% "
               "are exactly 255: MNIST is nearly binary, with grey only at stroke edges (from anti-aliasing). "
               "The y axis is logarithmic, or the background would flatten everything else.")


def embedding_ui(data) -> None:
    method = st.segmented_control(
        "Method", ["PCA", "t-SNE"], default="PCA", key="embedding_method", persist_state="session",
        help="PCA: the two directions of largest variance, a linear projection fitted on every training digit. "
             f"t-SNE: a non-linear map that keeps neighbours together, run on {TSNE_POINTS:,} digits.")
    if method == "t-SNE":
        df = _tsne(data.description, data)
        st.caption(f"t-SNE of {len(df):,} training digits (balanced across classes, after a 50-D PCA). "
                   "Distances between clusters mean little; clusters themselves are digits that look alike.")
    else:
        df, ratio = _pca(data.description, data)
        st.caption(f"PCA fitted on all {len(data.train_labels):,} training digits; {len(df):,} of them plotted. "
                   f"The two axes explain {100 * ratio[0]:.1f}% and {100 * ratio[1]:.1f}% of the pixel variance, "
                   "so classes overlap: a linear 2-D view is not enough to separate digits.")
    pick = alt.selection_point(fields=["digit"], bind="legend")
    chart = alt.Chart(df).mark_circle(size=22).encode(
        x=alt.X("x:Q", title=f"{method} 1", axis=alt.Axis(labels=False, ticks=False)),
        y=alt.Y("y:Q", title=f"{method} 2", axis=alt.Axis(labels=False, ticks=False)),
        color=alt.Color("digit:N", scale=DIGIT_COLORS, title="Digit"),
        opacity=alt.condition(pick, alt.value(0.85), alt.value(0.06)),
        tooltip=[alt.Tooltip("image:N"), alt.Tooltip("digit:N"), alt.Tooltip("index:Q", format="d")],
    ).add_params(pick).properties(height=560).interactive()
    st.altair_chart(chart, width="stretch")
    st.caption("Hover a point to see the digit. Click a digit in the legend to highlight it; scroll to zoom.")


def one_digit_ui(data) -> None:
    c1, c2, c3 = st.columns([1, 2, 1], vertical_alignment="bottom")
    split = c1.segmented_control("Split", ["train", "test"], default="train", key="digit_split",
                                 persist_state="session",
                                 help="Which part of MNIST to pick the digit from.")
    images, labels = _split(data, split or "train")
    n = len(labels)
    if c3.button("Random digit", icon=":material/casino:", width="stretch"):
        st.session_state.digit_index = int(np.random.default_rng().integers(n))
    if st.session_state.get("digit_index", 0) >= n:
        st.session_state.digit_index = 0
    i = c2.number_input("Index", 0, n - 1, key="digit_index", persist_state="session", step=1,
                        help=f"Which of the {n:,} digits to show (the Samples tab shows indices after #).")
    img = images[i].numpy()
    grid = pd.DataFrame(explore.pixel_grid(img))
    base = alt.Chart(grid).encode(x=alt.X("x:O", axis=None), y=alt.Y("y:O", axis=None))
    heat = base.mark_rect().encode(color=alt.Color("value:Q", scale=alt.Scale(scheme="greys", reverse=True,
                                                                              domain=[0, 255]),
                                                   legend=alt.Legend(title="Intensity")),
                                   tooltip=["x", "y", "value"])
    text = base.mark_text(fontSize=8).transform_filter("datum.value > 0").encode(
        text="value:Q", color=alt.condition("datum.value > 128", alt.value("black"), alt.value("white")))
    left, right = st.columns([3, 1])
    left.altair_chart((heat + text).properties(width=620, height=620), width="content")
    with right:
        st.metric("Label", int(labels[i]))
        st.image(explore.enlarge(img, 6), caption="As a picture", width=168)
        st.caption(f"{int((img > 0).sum())} of 784 pixels have ink; the brightest is {int(img.max())}. "
                   "Zeros are left blank in the grid.")


# ------------------------------------------------------------------ page

page_header("Data", "MNIST: 70,000 handwritten digits, 28×28 grayscale, labelled 0-9. Look at what the models "
                    "learn from before training one.")
data = get_data()
sidebar_status(data)
if data is not None:
    overview_ui(data)
    # Lazy tabs: only the open one runs (t-SNE and PCA are not computed until asked for).
    # Bound to the URL, so /data?tab=Embedding opens straight on the map.
    tabs = st.tabs(TABS, key="tab", bind="query-params")
    for tab, ui in zip(tabs, (labels_ui, samples_ui, class_averages_ui, pixels_ui, embedding_ui, one_digit_ui)):
        if tab.open:
            with tab:
                ui(data)
