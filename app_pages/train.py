"""Train: pick a model and its hyperparameters, start a run, watch loss and
accuracy live, stop it at any time, and compare runs.

Training runs outside this server, in core.executor's worker processes (or a Ray
cluster): the page submits a job into the visitor's workspace and shows its place
in the queue, then its live events. The live panel is a fragment that redraws
every 2 s while the job runs (every 3 s while it waits); the rest of the page
does not rerun. Everything it shows comes back after a reload, from the workspace.
"""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from core.config import LIMITS, MODEL_INFO, PRESETS, TrainConfig, default_epochs
from core.executor import JobSpec, get_executor, read_events
from core.hardware import gpu_present
from core.workspace import RunRecord
from app_pages.common import (get_source, live_job, ordinal, page_header, page_link, public_error, sidebar_status,
                              workspace)

OPTIMIZERS = {"sgd": "SGD (Nesterov momentum)", "adam": "Adam", "adamw": "AdamW"}
SCHEDULES = {"onecycle": "One-cycle (warm up, then decay)", "cosine": "Cosine decay", "constant": "Constant"}
POLL_RUNNING_S, POLL_QUEUED_S = 2.0, 3.0  # the live panel's refresh, in seconds


# ------------------------------------------------------------------ state

def current_run() -> RunRecord | None:
    """The run the live panel shows: the one this visitor started or picked last, else (after a
    reload) their newest queued or running one, else their newest run."""
    runs = workspace().runs()
    name = st.session_state.get("train_active")
    if name in runs:
        return runs[name]
    active = [r for r in runs.values() if r.status in ("queued", "running")]
    return active[-1] if active else (list(runs.values())[-1] if runs else None)


def busy() -> bool:
    """This visitor has a run queued or running (one at a time each, so a room shares fairly)."""
    return any(r.status in ("queued", "running") for r in workspace().runs().values())


def _key(model: str, field: str) -> str:
    # One widget key per model and field: switching model shows that model's preset,
    # and switching back restores what the visitor had typed for it.
    return f"train_{model}_{field}"


def reset_preset(model: str) -> None:
    for k in [k for k in st.session_state if str(k).startswith(f"train_{model}_")]:
        del st.session_state[k]


def start(cfg: TrainConfig, requested_name: str) -> None:
    # No torch here: the worker checks that a batch fits in its device's memory before it trains
    # (core.train.check_memory), and the run then fails with the batch sizes that do fit.
    ws = workspace()
    name, run_dir = ws.new_run(requested_name or cfg.model)
    try:
        get_executor().submit(JobSpec("train", name, str(run_dir), cfg.to_dict(), workspace=ws.id))
    except Exception:
        ws.delete_run(name) if ws.run(name) else run_dir.rmdir()
        raise
    st.session_state.train_active = name
    if name != requested_name:
        st.session_state.train_renamed = (requested_name, name)


# ------------------------------------------------------------------ UI

def _number(col, label: str, model: str, field: str, default, help: str, **kw):
    """A number input bounded by core.train.LIMITS, keyed per model, kept across page switches."""
    lo, hi = kw.pop("bounds", LIMITS.get(field, (None, None)))
    return col.number_input(label, lo, hi, value=default, key=_key(model, field), persist_state="session",
                            help=help, **kw)


def _choice(col, label: str, model: str, field: str, options: dict, default: str, help: str):
    return col.selectbox(label, list(options), index=list(options).index(default), format_func=options.get,
                         key=_key(model, field), persist_state="session", help=help)


def form_ui(source) -> None:
    running = busy()
    model = st.selectbox("Model", list(MODEL_INFO), index=list(MODEL_INFO).index("fast"), key="train_model",
                         persist_state="session", format_func=lambda m: f"{m} — {MODEL_INFO[m]}",
                         help="The architecture. 'fast' reaches ~99% in one epoch on a CPU; 'accurate' is deeper "
                              "and trains with augmentation for the last few tenths of a percent.")
    p = TrainConfig.preset(model)
    c1, c2, c3, c4 = st.columns(4)
    # More epochs than the preset on the offline sample, so the default run is worth watching.
    epochs = _number(c1, "Epochs", model, "epochs", default_epochs(model, source.train or 60_000),
                     "Passes over the training digits.")
    batch = _number(c2, "Batch size", model, "batch_size", p.batch_size, step=32,
                    help="Digits per step. Bigger batches run faster per digit but take fewer steps.")
    lr = _number(c3, "Learning rate", model, "lr", p.lr, format="%.4g", step=None,
                 help="The step size. Too high diverges (the run stops and says so); too low learns slowly.")
    optimizer = _choice(c4, "Optimizer", model, "optimizer", OPTIMIZERS, p.optimizer,
                        "How gradients become weight updates.")
    c1, c2, c3, c4 = st.columns(4)
    schedule = _choice(c1, "Schedule", model, "schedule", SCHEDULES, p.schedule,
                       "How the learning rate changes over the run.")
    wd = _number(c2, "Weight decay", model, "weight_decay", p.weight_decay, format="%.4g", step=1e-4,
                 help="Pulls weights toward zero to curb overfitting.")
    smoothing = _number(c3, "Label smoothing", model, "label_smoothing", p.label_smoothing, step=0.05,
                        help="Trains towards 90% (say) instead of 100% certainty: better calibrated.")
    max_steps = _number(c4, "Stop after steps", model, "max_steps", 0, step=50, bounds=(0, LIMITS["max_steps"][1]),
                        help="0 trains every epoch in full; a number stops early (quick demos). For a few dozen "
                             "steps, lower the learning rate too (say 0.02): the presets are tuned for full epochs.")
    c1, c2, c3 = st.columns([1, 1, 2], vertical_alignment="bottom")
    augment = c1.toggle("Augment", value=p.augment, key=_key(model, "augment"), persist_state="session",
                        help="Randomly shift, rotate and scale digits each step: slower to fit, generalises better.")
    gpu = gpu_present()
    device = c2.selectbox("Device", ["auto", "cpu"] + (["cuda"] if gpu else []), key="train_device",
                          persist_state="session", help="auto uses the GPU when there is one." +
                                                        ("" if gpu else " No GPU here, so it is the CPU."))
    name = c3.text_input("Run name", value="", max_chars=80, key="train_name", persist_state="session",
                         placeholder=model, help="Letters, digits, '-' and '_'; anything else is replaced. "
                                                 "A name in use gets a -2, -3… suffix.")
    cfg = TrainConfig.preset(model, epochs=int(epochs), batch_size=int(batch), lr=float(lr), optimizer=optimizer,
                             schedule=schedule, weight_decay=float(wd), label_smoothing=float(smoothing),
                             augment=augment, device=device, max_steps=int(max_steps) or None)
    b1, b2, _ = st.columns([1, 1, 3])
    clicked = b1.button("Start training", type="primary", icon=":material/play_arrow:", disabled=running,
                        width="stretch", help="Your run is queued or going; stop it first." if running else None)
    b2.button("Reset to preset", on_click=reset_preset, args=(model,), width="stretch",
              help=f"Back to the '{model}' recipe: {PRESETS.get(model)}.")
    if clicked:
        try:
            cfg.validate()
            start(cfg, name.strip())
        except ValueError as e:  # bad hyperparameters, name or device: say which and why
            st.error(f"Cannot start: {public_error(e)}")
        else:
            st.rerun()  # redraw with the live panel running and Start disabled


def _eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def charts_ui(events: list[dict]) -> None:
    steps = pd.DataFrame([e for e in events if e["event"] == "step"])
    epochs = pd.DataFrame([e for e in events if e["event"] == "epoch"])
    left, right = st.columns(2)
    if steps.empty:
        left.caption("The loss curve appears after the first step.")
        return
    base = alt.Chart(steps).encode(x=alt.X("step:Q", title="Step"))
    raw = base.mark_line(opacity=0.3, color="#7C5CFF").encode(y=alt.Y("loss:Q", title="Training loss"),
                                                              tooltip=["step", alt.Tooltip("loss:Q", format=".4f")])
    window = max(2, len(steps) // 25)  # ~4% of the run so far: smooth, yet not lagging on short runs
    smooth = base.transform_window(smooth="mean(loss)", frame=[-window, 0]).mark_line(color="#7C5CFF").encode(
        y="smooth:Q")
    left.altair_chart((raw + smooth).properties(height=280, title="Loss (faint: per step; solid: smoothed)"),
                      width="stretch")
    acc = steps[["step", "train_acc"]].rename(columns={"train_acc": "accuracy"}).assign(
        series="train (running, this epoch)") if "train_acc" in steps else pd.DataFrame()
    if not epochs.empty and "val_acc" in epochs:
        acc = pd.concat([acc, epochs[["step", "val_acc"]].rename(columns={"val_acc": "accuracy"}).assign(
            series="validation (end of epoch)")])
    if acc.empty:
        return
    lines = alt.Chart(acc).mark_line().encode(
        x=alt.X("step:Q", title="Step"),
        y=alt.Y("accuracy:Q", title="Accuracy", scale=alt.Scale(zero=False), axis=alt.Axis(format="%")),
        color=alt.Color("series:N", title=None, scale=alt.Scale(range=["#7C5CFF", "#F5A524"]),
                        legend=alt.Legend(orient="bottom")),
        tooltip=["series", "step", alt.Tooltip("accuracy:Q", format=".2%")])
    # Points mark the epochs only: a marker on every step is hundreds of symbols that the
    # visitor's browser redraws each second, and hides the line.
    points = lines.transform_filter(alt.datum.series != "train (running, this epoch)").mark_point(size=50,
                                                                                                 filled=True)
    right.altair_chart((lines + points).properties(height=280, title="Accuracy"), width="stretch")


def live_ui() -> None:
    """The current run: its place in the queue, then progress, live charts and Stop, then how it ended."""
    rec = current_run()
    if rec is None:
        return
    job = live_job(rec)
    status = job.status if job else rec.status
    events = job.events() if job else read_events(rec.dir)
    if status not in ("queued", "running") and st.session_state.get("train_refreshed") != rec.name:
        # The job just ended while this fragment was polling: one full rerun updates the run
        # table and the Start button, and stops the polling (run_every is set only while it runs).
        st.session_state.train_refreshed = rec.name
        if st.session_state.get("train_polling") == rec.name:
            st.rerun()
    elif status == "running" and st.session_state.get("train_poll_every") == POLL_QUEUED_S:
        st.rerun()  # it left the queue: poll at the running pace (run_every is fixed per full run)
    st.subheader(f"Run “{rec.name}”")
    if renamed := st.session_state.pop("train_renamed", None):
        if renamed[0]:
            st.caption(f"“{renamed[0]}” became “{renamed[1]}” (safe characters only, and names are unique).")
    start_ev = next((e for e in events if e.get("event") == "start"), None)
    step_ev = next((e for e in reversed(events) if e.get("event") == "step"), None)
    device = start_ev["device"] if start_ev else "…"
    if status == "queued":
        top = st.columns([4, 1], vertical_alignment="center")
        wait = job.eta_seconds if job else None
        top[0].info(f"Queued: **{ordinal(job.position or 1)} in line**" +
                    (f", about {_eta(wait)} before it starts" if wait else "") +
                    ". Runs take turns so that each one gets the whole machine.", icon=":material/hourglass_top:")
        if top[1].button("Cancel", icon=":material/close:", key="train_cancel", width="stretch",
                         help="Leave the queue; nothing is trained or saved."):
            job.stop()
            st.rerun()
    elif status == "running":
        top = st.columns([4, 1], vertical_alignment="center")
        if step_ev:
            done_frac = step_ev["step"] / max(1, step_ev["total_steps"])
            rate = step_ev["step"] / max(step_ev["elapsed"], 1e-9)
            eta = (step_ev["total_steps"] - step_ev["step"]) / max(rate, 1e-9)
            top[0].progress(done_frac, text=f"Step {step_ev['step']:,} of {step_ev['total_steps']:,} · epoch "
                                           f"{step_ev['epoch']} · {step_ev['images_per_sec']:,.0f} images/s · "
                                           f"ETA {_eta(eta)} · on {device}")
        else:
            top[0].progress(0.0, text=f"Preparing data and model on {device}…")
        if top[1].button("Stop", icon=":material/stop:", key="train_stop", width="stretch",
                         help="Stop after the current step. Checkpoints from completed epochs are kept."):
            job.stop()
            st.toast("Stopping after the current step…")
    else:
        outcome_ui(rec, status, events, job.error if job else (rec.job or {}).get("error"))
    charts_ui(events)


def outcome_ui(rec: RunRecord, status: str, events: list[dict], error: str | None) -> None:
    epoch = next((e for e in reversed(events) if e.get("event") == "epoch"), None)
    done = next((e for e in reversed(events) if e.get("event") == "done"), None)
    if done is None and status == "done" and rec.metrics.get("test_acc") is not None:
        done = {"device": "cpu", **rec.metrics}  # a run made elsewhere (the CLI): its run.json says how it ended
    step = next((e for e in reversed(events) if e.get("event") == "step"), None)
    ckpt = rec.weights
    if status == "done" and done:
        warm = done.get("warmup_seconds") or 0.0  # CUDA's one-time start-up, kept out of the training time
        st.success(f"Done: **{100 * done['test_acc']:.2f}%** test accuracy after {done.get('train_seconds', 0):.1f} s "
                   f"of training on {done['device']}" + (f" (plus {warm:.1f} s to start the GPU)" if warm >= 0.05 else "")
                   + f". Saved as run “{rec.name}”.", icon=":material/check_circle:")
        c1, c2, c3 = st.columns(3)
        with c1:
            page_link("app_pages/evaluate.py", "Evaluate it")
        with c2:
            page_link("app_pages/export.py", "Export it to ONNX")
        with c3:
            page_link("app_pages/finetune.py", "Fine-tune it")
    elif status == "stopped":
        if ckpt and epoch:
            at = f" at step {step['step']:,}" if step else ""
            st.warning(f"Stopped{at}. The last completed checkpoint survives: "
                       f"epoch {epoch['epoch']} (validation accuracy {100 * epoch.get('val_acc', 0):.2f}%), "
                       f"saved as run “{rec.name}”.", icon=":material/stop_circle:")
        else:
            st.warning("Stopped before the first epoch finished, so no checkpoint was written and no run was "
                       "saved. Set *Stop after steps* for a short run that still saves.", icon=":material/stop_circle:")
    elif status == "cancelled":
        st.info("Cancelled while it waited in the queue: nothing was trained.", icon=":material/close:")
    elif status == "interrupted":
        st.warning("This run was queued or training when the server stopped, so it did not finish." +
                   (" Its last completed epoch is kept." if ckpt else " Nothing was saved: start it again."),
                   icon=":material/warning:")
    else:  # failed: divergence, a dead worker or another error, with the explanation core gave
        st.error(f"Training stopped: {public_error(error or 'unknown error')}", icon=":material/error:")
        if ckpt and epoch:
            st.caption(f"The checkpoint from epoch {epoch['epoch']} is kept as run “{rec.name}”.")


def runs_ui() -> None:
    st.subheader("Your runs")
    runs = workspace().runs()
    if not runs:
        st.caption("No runs yet — start one above. Runs are private to your workspace: keep this page's link "
                   "(its `?ws=`) to find them again.")
        return
    rows = []
    for name, r in runs.items():
        m, c = r.metrics, r.config
        rows.append({"Run": name, "Status": r.status, "Model": c.get("model"),
                     "Epochs": m.get("epoch"), "Steps": m.get("step"), "Batch": c.get("batch_size"),
                     "LR": c.get("lr"), "Optimizer": c.get("optimizer"), "Augment": c.get("augment"),
                     "Val acc": _pct(m.get("val_acc")), "Test acc": _pct(m.get("test_acc")),
                     "Time (s)": m.get("train_seconds"), "Device": m.get("device", ""), "Kind": r.kind})
    df = pd.DataFrame(rows)
    st.dataframe(df, hide_index=True, width="stretch", column_config={
        "Val acc": st.column_config.NumberColumn(format="%.2f%%", help="On the held-out validation digits."),
        "Test acc": st.column_config.NumberColumn(format="%.2f%%", help="On the test digits, after the last epoch "
                                                                        "(empty for stopped runs)."),
        "LR": st.column_config.NumberColumn(format="%.4g"),
        "Time (s)": st.column_config.NumberColumn(format="%.1f"),
        "Status": st.column_config.TextColumn(help="done, stopped (last completed epoch kept), diverged, failed, "
                                                   "queued or running."),
    })
    best = df.dropna(subset=["Test acc"]).sort_values("Test acc", ascending=False).head(1)
    if not best.empty:
        st.caption(f"Best so far: **{best.iloc[0]['Run']}** at {best.iloc[0]['Test acc']:.2f}% test accuracy.")
    c0, c1, c2 = st.columns([2, 2, 1], vertical_alignment="bottom")
    shown = current_run()
    c0.selectbox("Show a run above", list(runs), index=list(runs).index(shown.name) if shown else 0,
                 key="train_show_pick", on_change=lambda: st.session_state.update(
                     train_active=st.session_state.train_show_pick),
                 help="Its charts, metrics and how it ended, in the panel above.")
    with_weights = [n for n, r in runs.items() if r.weights is not None]
    if not with_weights:
        return
    pick = c1.selectbox("Download a run's weights", with_weights, key="train_download_pick",
                        help="safetensors weights with the configs in the header: load them with "
                             "core.load_checkpoint, or export them to ONNX on the Export page.")
    c2.download_button("Download weights", runs[pick].weights.read_bytes, file_name=f"{pick}.safetensors",
                       icon=":material/download:", width="stretch")


def _pct(x):
    return None if x is None else 100 * float(x)


# ------------------------------------------------------------------ page

page_header("Train", "Train a CNN on MNIST right here. Pick a model (the presets are good recipes), start, and watch "
                     "the loss fall. Training keeps going while you visit other pages.")
source = get_source()  # which data the workers will train on, read from file headers: no torch here
sidebar_status(source)
if source is not None:
    if source.source == "sample":
        st.info("Training on the offline 5,000-digit sample: fine for learning how it works. The epochs are "
                "raised so a run gets about 200 steps; expect about 98% rather than 99%+.")
    form_ui(source)
    rec = current_run()
    polling = rec is not None and rec.status in ("queued", "running")
    st.session_state.train_polling = rec.name if polling else None
    # Poll only while a run is queued or going (a finished run's panel is static): every 2 s
    # while it trains, slower while it waits, since in a full room most pages are waiting and
    # every poll is CPU the one running job does not get.
    every = (POLL_QUEUED_S if rec.status == "queued" else POLL_RUNNING_S) if polling else None
    st.session_state.train_poll_every = every
    st.fragment(run_every=every)(live_ui)()
    runs_ui()
