"""Export: turn one of this visitor's runs into an ONNX model (plus fp16 and int8
variants), prove it computes the same thing, measure it, and download it.
Exports land in the visitor's private folder and show up on the Draw page."""
from __future__ import annotations

from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

import core
from app_pages.common import public_error  # visitor-safe error text: no file-system paths
from app_pages.common import empty_state, get_data, models, page_header, page_link, sidebar_status, workspace


# ------------------------------------------------------------------ helpers

def _kb(n: int) -> str:
    return f"{n / 1024:,.0f} KB" if n < 2**20 else f"{n / 2**20:,.2f} MB"


def card_rows(cards: list[dict]) -> pd.DataFrame:
    """One row per model file: the figures the export wrote into its card."""
    rows = []
    for c in cards:
        lat = c.get("latency") or {}
        parity = c.get("parity") or c.get("parity_vs_fp32") or {}
        rows.append({
            "model": c["name"], "variant": c.get("variant", "fp32"), "accuracy": 100 * c.get("accuracy", float("nan")),
            "size": _kb(c.get("size_bytes", 0)),
            "max |Δ logit|": parity.get("max_abs_dlogit"),
            "argmax agrees": (f"{parity['argmax_agree']:,}/{parity['n']:,}" if "argmax_agree" in parity else ""),
            "p50 ms": lat.get("single_p50_ms"), "images/s": lat.get("batch_images_per_s"),
        })
    return pd.DataFrame(rows)


CARD_COLUMNS = {
    "model": st.column_config.TextColumn("Model"),
    "variant": st.column_config.TextColumn("Variant", help="fp32 is the exported graph; fp16 halves the weights; "
                                           "int8 is quantized, calibrated on 512 training digits."),
    "accuracy": st.column_config.NumberColumn("Test accuracy", format="%.2f%%", help="Measured through onnxruntime."),
    "size": st.column_config.TextColumn("Size"),
    "max |Δ logit|": st.column_config.NumberColumn(
        "Max |Δ logit|", format="%.1e", help="Parity: largest logit difference against PyTorch (fp32) or against "
                                             "the fp32 export (variants). The fp32 bar is 1e-4."),
    "argmax agrees": st.column_config.TextColumn("Same answer", help="Digits where both give the same top class."),
    "p50 ms": st.column_config.NumberColumn("Latency p50", format="%.3f ms", help="One digit, CPU provider."),
    "images/s": st.column_config.NumberColumn("Throughput", format="%,.0f /s", help="Batches of 1,000 digits."),
}


# ------------------------------------------------------------------ UI

def calibration_blocker(rec) -> str | None:
    """Why a run's confidence can't be calibrated on its MNIST validation digits, or None when it
    can: only a plain training run of all ten digits that held some out has them to fit on."""
    if rec is None or rec.kind != "train":
        return "a fine-tuned model's confidence would need held-out digits of its own target."
    if classes := rec.metrics.get("classes"):
        return (f"this base knows only digits {', '.join(map(str, classes))}; MNIST's validation digits "
                "include the others, which it is never meant to answer.")
    if int(rec.config.get("val_size", 5000) or 0) <= 0:
        return "this run held out no validation digits to fit a temperature on."
    return None


def export_form_ui(data) -> None:
    st.subheader("Export a run")
    my_runs = {m.name: m for m in models(kinds=("run",))}
    if not my_runs:
        empty_state("**No runs yet** — train one on the Train page, then come back to export it.",
                    "app_pages/train.py", "Train a model")
        return
    with st.form("export_form", border=True):
        run = st.selectbox("Run", list(my_runs), help="One of your trained or fine-tuned runs.")
        name = st.text_input("Export name", value="", placeholder="defaults to the run's name", max_chars=48,
                             help="Letters, digits, '-' and '_'. Other characters are replaced; an existing "
                                  "name gets a -2 suffix instead of being overwritten.")
        c1, c2, c3 = st.columns(3)
        fp16 = c1.checkbox("fp16 variant", help="Half-precision weights: half the size, usually the same answers.")
        int8 = c2.checkbox("int8 variant", help="Quantized to 8-bit integers: smallest; accuracy is re-measured.")
        calibrate = c3.checkbox("Calibrate confidence", value=True,
                                help="Fit a temperature on the digits the run held out for validation and fold "
                                     "it into the graph, so a shown 90% is right about 90% of the time. The "
                                     "answers (argmax) do not change. As `python -m core export` does.")
        go = st.form_submit_button("Export to ONNX", type="primary", icon=":material/ios_share:")
    if not go:
        return
    blocker = calibration_blocker(workspace().run(run))
    if calibrate and blocker:
        st.info(f"Not calibrated: {blocker}", icon=":material/info:")
    try:
        out = workspace().export_path(name.strip() or run)
    except ValueError as e:  # a name that cannot be made safe, or the workspace quota
        st.error(public_error(e))
        return
    with st.status(f"Exporting **{run}** as {out.name}…", expanded=True) as status:
        st.write("Converting to ONNX, checking the graph, and comparing with PyTorch on every test digit…")
        try:
            from core.export import export_onnx

            card = export_onnx(my_runs[run].path, out, data=data, fp16=fp16, int8=int8,
                               calibrate=calibrate and blocker is None)
        except (core.CheckpointError, ValueError, OSError) as e:
            status.update(label="Export failed", state="error")
            st.error(public_error(e))
            return
        parity = card["parity"]
        status.update(label=f"Exported {out.name}: parity passed (max |Δ logit| {parity['max_abs_dlogit']:.1e}, "
                            f"{parity['argmax_agree']:,}/{parity['n']:,} identical answers)", state="complete")

    if c := card.get("calibration"):  # outside the status box, which folds away once complete
        said = (f"Calibrated: temperature {c['temperature']:.3g}; expected calibration error on the test "
                f"digits {100 * c['ece_before']:.2f}% → {100 * c['ece_after']:.2f}%")
        if c["ece_after"] <= c["ece_before"]:
            st.success(said + ".", icon=":material/tune:")
        else:  # T is fitted on the validation digits; an already calibrated run can come out a hair worse
            st.info(said + ": no better on the test digits, so this run's confidence was already about "
                    "right (the temperature is fitted on its validation digits).", icon=":material/tune:")
    st.session_state["lat_model"] = str(out)  # measure the new export next
    st.toast(f"{out.name} is ready, and selectable on the Draw page.", icon=":material/check_circle:")


def exports_table_ui() -> None:
    st.subheader("Your exports")
    cards = [m.card | {"path": str(m.path)} for m in models(kinds=("export",))]
    if not cards:
        st.caption("Nothing exported yet in your workspace.")
        return
    st.dataframe(card_rows(cards), hide_index=True, width="stretch", column_config=CARD_COLUMNS)
    page_link("app_pages/draw.py", "Draw a digit with one of them")
    st.caption("Download a model to use it anywhere onnxruntime runs (input `image` float32 [N,1,28,28] in [0,1], "
               "white on black; output `logits` [N,10]).")
    cols = st.columns(min(4, len(cards)))
    for i, c in enumerate(cards):
        path = Path(c["path"])
        cols[i % len(cols)].download_button(
            f"{path.name} ({_kb(path.stat().st_size)})", data=path.read_bytes(), file_name=path.name,
            mime="application/octet-stream", icon=":material/download:", key=f"dl_{path.name}", width="stretch")


def latency_ui(data) -> None:
    st.subheader("Latency per provider")
    options = {str(m.path): m.label(accuracy=False) for m in models(kinds=("export", "shipped"))}
    if not options:
        st.caption("Export a model first.")
        return
    from core.inference import choose_providers

    providers = choose_providers()
    st.caption("Single-digit latency (p50, p95) and batch throughput for one model on every onnxruntime execution "
               f"provider this machine has ({', '.join(providers)}), next to PyTorch eager on the same weights. "
               "Measured live on this machine, which other visitors share: compare within one measurement.")
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    path = c1.selectbox("Model to measure", list(options), format_func=options.get, key="lat_model")
    if c2.button("Measure", icon=":material/speed:", width="stretch"):
        with st.spinner("Timing 300 single-digit calls per provider…"):
            st.session_state.setdefault("latency", {})[path] = measure_latency(path, providers, data)
    rows = st.session_state.get("latency", {}).get(path)
    if not rows:
        return
    df = pd.DataFrame(rows)
    st.dataframe(df, hide_index=True, width="stretch", column_config={
        "runtime": st.column_config.TextColumn("Runtime"),
        "p50 ms": st.column_config.NumberColumn("p50", format="%.3f ms"),
        "p95 ms": st.column_config.NumberColumn("p95", format="%.3f ms"),
        "images/s": st.column_config.NumberColumn("Throughput", format="%,.0f /s"),
        "vs torch": st.column_config.NumberColumn("Speed-up vs PyTorch", format="%.1f×")})
    st.altair_chart(alt.Chart(df).mark_bar(color="#7C5CFF").encode(
        x=alt.X("p50 ms:Q", title="Single-digit latency p50 (ms)"), y=alt.Y("runtime:N", title=None, sort=None),
        tooltip=["runtime", alt.Tooltip("p50 ms:Q", format=".3f"), alt.Tooltip("p95 ms:Q", format=".3f")]
    ).properties(height=alt.Step(34)), width="stretch")


def measure_latency(path: str, providers: list[str], data) -> list[dict]:
    """p50/p95/throughput for each provider, and for PyTorch eager when torch weights can be had."""
    from core.export import latency
    from core.inference import CUDA, load_predictor

    if data is not None:
        x = data.test_images[:1000].numpy().astype(np.float32)[:, None] / 255  # [N,1,28,28]
    else:
        x = np.zeros((1000, 1, 28, 28), np.float32)  # latency does not depend on the pixels
    rows = []
    for prov in providers:
        pred = load_predictor(path, prefer_gpu=(prov == CUDA))
        rows.append(_row(f"onnxruntime · {pred.provider.replace('ExecutionProvider', '')}",
                         latency(pred, x, runs=300)))
    try:
        from core.insights import torch_model_for

        device = core.resolve_device("auto")
        torch_pred = core.TorchPredictor(torch_model_for(path, device), device)
        rows.append(_row(f"PyTorch eager · {device.type.upper()}", latency(torch_pred, x, runs=300)))
    except (ValueError, OSError):
        pass  # no torch weights for this file: the ONNX rows still stand
    torch_p50 = next((r["p50 ms"] for r in rows if r["runtime"].startswith("PyTorch")), None)
    for r in rows:
        r["vs torch"] = torch_p50 / r["p50 ms"] if torch_p50 else None
    return rows


def _row(name: str, lat: dict) -> dict:
    return {"runtime": name, "p50 ms": lat["single_p50_ms"], "p95 ms": lat["single_p95_ms"],
            "images/s": lat["batch_images_per_s"]}


def shipped_ui() -> None:
    cards = [m.card for m in models(kinds=("shipped",)) if m.card]
    if not cards:
        return
    with st.expander("The shipped models, for comparison"):
        st.dataframe(card_rows(cards), hide_index=True, width="stretch", column_config=CARD_COLUMNS)


# ------------------------------------------------------------------ page

page_header("Export", "Turn a run into an ONNX model that runs anywhere: the export is checked against PyTorch on "
            "every test digit, measured, and then yours to download or to draw with.")
data = get_data()
sidebar_status(data)
if data is None:
    st.info("Exporting checks every export against PyTorch on real test digits, so it waits for a dataset "
            "(see above). Your earlier exports stay listed below.")
else:
    export_form_ui(data)
exports_table_ui()
latency_ui(data)
shipped_ui()
