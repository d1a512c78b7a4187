"""Fine-tune: adapt a trained model to new data (your drawings, a built-in shift,
or new classes), freezing the layer groups you choose, and compare honestly
with the same model trained from scratch on the same data and step budget."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

import core
from core.executor import JobSpec, get_executor, read_events
from app_pages.common import public_error  # visitor-safe error text: no file-system paths
from app_pages.common import (empty_state, get_data, image_grid, live_job, models, ordinal, page_header, page_link,
                          sidebar_status, workspace)

LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
SHIFT_TARGETS = ["inverted", "rotated", "thick", "thin", "noisy"]
UI_MAX_TEST = 2000  # target test digits scored during a live run (the full split is optional)


# ------------------------------------------------------------------ cached loaders

@st.cache_resource(show_spinner="Loading the base model…", max_entries=16)
def _base(path: str, mtime: float, data_key: str, _calibration):
    """A core Checkpoint for a run or a shipped ONNX model (finetune() copies it before training)."""
    from core.insights import checkpoint_for

    return checkpoint_for(path, "cpu", calibration=_calibration)


def get_base(path: str, data):
    calib = data.train_images[:2048] if data is not None else None
    return _base(path, Path(path).stat().st_mtime, data.description if data is not None else "", calib)


@st.cache_data(show_spinner="Preparing the target data…", max_entries=16)
def _target(spec: str, shots: int, max_test: int | None, data_key: str, _data):
    from core.targets import build_target

    return build_target(spec, _data, shots=shots, max_test=max_test)


class RunState:
    """A fine-tune (or 0-4 pretraining) run as the page shows it: from the executor while this
    server runs it, from the workspace's files otherwise (after a reload or a restart)."""

    def __init__(self, rec):
        self.rec, self.name = rec, rec.name
        self.job = live_job(rec)
        self.status = self.job.status if self.job else rec.status
        self.events = self.job.events() if self.job else read_events(rec.dir)
        self.error = self.job.error if self.job else (rec.job or {}).get("error")
        self.config = (rec.job or {}).get("config") or rec.config

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")

    def last(self, event: str) -> dict | None:
        return next((e for e in reversed(self.events) if e.get("event") == event), None)

    def results(self) -> dict | None:
        """The before/after/scratch figures of a completed fine-tune."""
        done = self.last("done")
        if self.status != "done" or done is None or "target_acc_after" not in done:
            return None
        if str(done.get("target", "")).startswith("user:"):  # the drawings copied into the run folder
            done = {**done, "target": "drawings"}
        return {**done, "test_acc": done.get("mnist_test_acc"), "config": self.config,
                "label": public_error((self.last("start") or {}).get("target_description") or "")}


def current(kind: str, key: str) -> RunState | None:
    """The visitor's current run of this kind: the one they started last (view state), else their
    newest queued or running one, else (fine-tunes) their newest."""
    runs = [r for r in workspace().runs().values() if r.kind == kind]
    name = st.session_state.get(key)
    picked = next((r for r in runs if r.name == name), None)
    active = [r for r in runs if r.status in ("queued", "running")]
    rec = picked or (active[-1] if active else (runs[-1] if runs and kind == "finetune" else None))
    return RunState(rec) if rec else None


def submit(kind: str, requested: str, config: dict, **job) -> str:
    """Queue a job into a new run folder of this visitor's workspace; -> the run's name."""
    ws = workspace()
    name, run_dir = ws.new_run(requested)
    if job.get("target") == "drawings":
        # The job reads a copy of the drawings kept with the run: the run says what it learned from,
        # and drawings saved while it waits in the queue do not change it.
        from core.samples import SampleStore

        SampleStore(run_dir / "drawings").add_set(ws.samples.load())
        job["target"] = f"user:{run_dir / 'drawings'}"
    try:
        get_executor().submit(JobSpec(kind, name, str(run_dir), config, workspace=ws.id, **job))
    except Exception:
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return name


def queued_ui(state: RunState) -> None:
    job = state.job
    wait = job.eta_seconds if job else None
    c1, c2 = st.columns([4, 1], vertical_alignment="center")
    c1.info(f"Queued: **{ordinal((job.position if job else None) or 1)} in line**" +
            (f", about {wait:.0f} s before it starts" if wait else "") +
            ". Jobs take turns so that each one gets the whole machine.", icon=":material/hourglass_top:")
    if job and c2.button("Cancel", icon=":material/close:", key=f"ft_cancel_{state.name}", width="stretch"):
        job.stop()
        st.rerun()


def drawings_target(data, max_test: int | None):
    """The visitor's saved drawings (in their workspace) as a target."""
    from core.targets import build_target

    ws = workspace()
    target = build_target(f"user:{ws.samples_dir}", data, max_test=max_test)
    target.spec = "drawings"
    target.description = (f"your {len(ws.samples)} drawings ({len(target.train_labels)} to train on, "
                          f"{len(target.test_labels)} held out to test)")
    return target


def base_choices() -> dict[str, dict]:
    """path -> {"label", "name"}: the shipped fp32 models, then this visitor's runs."""
    return {str(m.path): {"name": m.name, "label": m.label()}
            for m in models(kinds=("shipped", "run"), variants=False)}


# ------------------------------------------------------------------ UI

def base_ui(data):
    choices = base_choices()
    if not choices:
        empty_state("**No runs yet** — train one on the Train page; it becomes a base to fine-tune.",
                    "app_pages/train.py", "Train a model")
        return None, None
    path = st.selectbox("Base model", list(choices), format_func=lambda p: choices[p]["label"], key="ft_base",
                        help="The trained model to start from. Shipped models are rebuilt in PyTorch from their "
                             "ONNX weights.")
    try:
        return path, get_base(path, data)
    except (ValueError, OSError) as e:
        st.error(f"Cannot fine-tune this model: {public_error(e)}")
        return None, None


def target_ui(data) -> tuple[str | None, int, str]:
    """-> (spec or None, shots, label). Spec "drawings" means the visitor's SampleSet."""
    from core.targets import DEFAULT_NOISE, DEFAULT_ROTATION, TARGETS

    samples = workspace().samples
    labels = {"drawings": f"Your drawings ({len(samples)} saved)",
              **{t: f"{t.capitalize()}: {TARGETS[t]}" for t in SHIFT_TARGETS},
              "new-classes": "New classes: a 0-4 model learns 5-9 from a few examples",
              "subset": "Subset: N plain MNIST digits"}
    kind = st.selectbox("Target", list(labels), format_func=labels.get, index=1, key="ft_target",
                        help="The data to adapt to. Built-in shifts train on a few MNIST training digits and test "
                             "on the shifted test split, so train and test never overlap.")
    shots = 10
    if kind == "drawings":
        counts = samples.counts()
        if sum(c >= 2 for c in counts) == 0:
            empty_state("**Not enough drawings yet** — save at least two drawings of a digit on the Draw page "
                        "(\"save as labeled sample\") to fine-tune on your own handwriting; a third of each digit "
                        "is held out to test.", "app_pages/draw.py", "Draw and save samples")
            return None, shots, labels[kind]
        st.caption("Drawings per digit: " + ", ".join(f"{d}: {c}" for d, c in enumerate(counts) if c))
        return "drawings", shots, labels[kind]
    c1, c2 = st.columns(2)
    spec = kind
    if kind == "rotated":
        deg = c2.slider("Rotation (degrees)", -180, 180, int(DEFAULT_ROTATION), 15, key="ft_deg",
                        help="Every digit is turned by this angle. Near 90° pretraining barely helps.")
        spec = f"rotated:{deg}"
    elif kind == "noisy":
        sigma = c2.slider("Noise level", 0.1, 2.0, float(DEFAULT_NOISE), 0.1, key="ft_sigma",
                          help="Standard deviation of the pixel noise, in units of full ink.")
        spec = f"noisy:{sigma:g}"
    if kind == "subset":
        n = c1.number_input("Training digits (N)", 10, len(data.train_labels), 500, 50, key="ft_subset",
                            help="How many plain MNIST training digits to fine-tune on.")
        spec = f"subset:{int(n)}"
    else:
        shots = c1.slider("Examples per class (K shots)", 1, 100, 10, key="ft_shots",
                          help="Few shots show what pretraining is worth; many shots let from-scratch catch up.")
    return spec, shots, labels[kind]


def apply_recipe(base, spec: str | None) -> None:
    """When the target (or the base's architecture) changes, preset freezing and learning
    rates to core.finetune.RECIPES, the settings that worked best for that kind of target."""
    from core.finetune import RECIPES, resolve_groups

    kind = (spec or "").partition(":")[0]
    names = list(base.model.groups)
    recipe_for = (kind, tuple(names))
    if st.session_state.get("ft_recipe_for") == recipe_for:
        return
    r = RECIPES.get(kind, {})
    st.session_state[f"ft_freeze_{'-'.join(names)}"] = resolve_groups(base.model, r.get("freeze", []))
    st.session_state["ft_reinit"] = bool(r.get("reinit_head", False))
    st.session_state["ft_lr"] = r.get("lr", 1e-3)
    st.session_state["ft_head_lr"] = r.get("head_lr") or "same"
    st.session_state["ft_recipe_for"] = recipe_for


def freeze_ui(base, spec: str | None) -> tuple[list[str], bool]:
    apply_recipe(base, spec)
    model = base.model
    groups = [(name, core.count_parameters(m)) for name, m in model.groups.items()]
    names = [g for g, _ in groups]
    frozen = st.multiselect("Freeze these layer groups", names, key=f"ft_freeze_{'-'.join(names)}",
                            help="Frozen groups keep their pretrained weights (and BatchNorm statistics) exactly; "
                                 "only the rest learn. Freezing all but the head is a linear probe.")
    reinit = st.checkbox("Re-initialize the head", key="ft_reinit",
                         help="Forget the old classifier and learn a fresh one on top of the features.")
    kind = (spec or "").partition(":")[0]
    if kind in ("inverted", "thick", "thin", "noisy"):
        st.caption("Preset for this target: the shift is in the pixels, so the lower layers retrain and the upper "
                   "ones (and the head) stay frozen. Change anything you like.")
    elif kind == "rotated":
        st.caption("Preset for this target: a rotation changes the shapes themselves, so every layer trains.")
    elif kind == "new-classes":
        st.caption("Preset for this target: frozen features and a fresh head with a higher learning rate "
                   "(a linear probe), the classic transfer-learning recipe.")
    total = sum(p for _, p in groups)
    trainable = sum(p for g, p in groups if g not in frozen)
    c1, c2 = st.columns([1, 2], vertical_alignment="center")
    c1.metric("Trainable parameters", f"{trainable:,}", f"{100 * trainable / total:.0f}% of {total:,}",
              delta_color="off", delta_arrow="off")
    c2.dataframe(pd.DataFrame([{"group": g, "parameters": p, "state": "frozen" if g in frozen else "trains"}
                               for g, p in groups]), hide_index=True, width="stretch")
    if len(frozen) == len(names):
        st.error("Every group is frozen: nothing would learn. Unfreeze at least one.")
    return frozen, reinit


def lr_ui() -> dict:
    c1, c2, c3 = st.columns(3)
    lr = c1.select_slider("Body learning rate", LRS, key="ft_lr", format_func=lambda v: f"{v:g}",
                          help="For the unfrozen groups below the head. Too high erases what pretraining learned.")
    head = c2.select_slider("Head learning rate", ["same"] + LRS, key="ft_head_lr",
                            format_func=lambda v: v if v == "same" else f"{v:g}",
                            help="The classifier on top often wants a higher rate than the features.")
    steps = c3.slider("Step budget", 10, 1000, 200, 10, key="ft_steps",
                      help="Training steps for the fine-tune, and the same budget for the from-scratch baseline.")
    with st.expander("More settings"):
        a1, a2, a3 = st.columns(3)
        optimizer = a1.selectbox("Optimizer", ["adam", "adamw", "sgd"], key="ft_opt",
                                 help="Adam adapts each weight's step size; SGD needs larger learning rates.")
        batch = a2.number_input("Batch size", 1, 1024, 100, key="ft_batch",
                                help="With 10 shots × 10 classes, 100 means every step sees all target digits.")
        scratch_lr = a3.select_slider("Scratch learning rate", LRS, value=3e-3, key="ft_scratch_lr",
                                      format_func=lambda v: f"{v:g}",
                                      help="The baseline's learning rate (a fresh model wants a larger one).")
        b1, b2, b3 = st.columns(3)
        augment = b1.checkbox("Augment", key="ft_augment", help="Random shifts/rotations of the target digits.")
        baseline = b2.checkbox("From-scratch baseline", value=True, key="ft_baseline",
                               help="Also train a fresh model with the same data and steps, to see what pretraining "
                                    "was worth.")
        full_test = b3.checkbox("Score on the full test split", key="ft_full_test",
                                help=f"Slower; otherwise {UI_MAX_TEST:,} target test digits are used.")
    return {"lr": lr, "head_lr": None if head == "same" else head, "max_steps": int(steps), "optimizer": optimizer,
            "batch_size": int(batch), "scratch_lr": scratch_lr, "augment": augment, "baseline": baseline,
            "max_test": None if full_test else UI_MAX_TEST}


def needs_0_4_base(spec: str | None, base) -> bool:
    from core.finetune import trained_classes
    from core.targets import BASE_CLASSES

    return spec == "new-classes" and base is not None and sorted(trained_classes(base)) != list(BASE_CLASSES)


def start_ui(data, base_path, base, spec, shots, frozen, reinit, hp) -> None:
    from core.finetune import FinetuneConfig

    cur = current("finetune", "ft_current")
    running = cur is not None and cur.active
    c1, c2, c3 = st.columns([2, 1, 1], vertical_alignment="bottom")
    default = f"ft-{(spec or 'run').split(':')[0]}"
    name = c1.text_input("Run name", placeholder=default, max_chars=48, key="ft_name",
                         help="Saved as one of your runs: evaluate it, export it, or fine-tune it again.")
    start = c2.button("Start fine-tuning", type="primary", icon=":material/play_arrow:", width="stretch",
                      disabled=running or spec is None or base is None or needs_0_4_base(spec, base)
                      or len(frozen) == len(base.model.groups))
    if c3.button("Stop", icon=":material/stop:", width="stretch", disabled=not (running and cur.job)):
        cur.job.stop()
        st.toast("Stopping after the current step…")
    if not start:
        return
    try:
        cfg = FinetuneConfig(target=spec, freeze=list(frozen), reinit_head=reinit, shots=int(shots),
                             device="auto", eval_every=max(1, hp["max_steps"] // 10), **hp).validate()
        if spec == "drawings":
            drawings_target(data, hp["max_test"])  # too few drawings is refused here, before anything is queued
        st.session_state["ft_current"] = submit(
            "finetune", name.strip() or default, cfg.to_dict(), base=str(base_path),
            target=spec, shots=int(shots), max_test=hp["max_test"])
    except ValueError as e:
        st.error(public_error(e))
        return
    st.rerun()


def new_classes_base_ui(data) -> None:
    """new-classes needs a base trained on 0-4 only: offer to make one, with live progress."""
    from core.targets import BASE_CLASSES

    st.warning("The new-classes target needs a base model that has only ever seen digits "
               f"{', '.join(map(str, BASE_CLASSES))}, so that 5-9 are really new to it. The chosen base knows "
               "other digits too.")
    ready = [n for n, r in workspace().runs().items() if r.metrics.get("classes") == list(BASE_CLASSES)]
    state = current("pretrain", "ft_base_job")

    @st.fragment(run_every=1.0 if state is not None and state.active else None)
    def _progress():
        s = current("pretrain", "ft_base_job")
        if s.status == "queued":
            queued_ui(s)
        elif s.status == "running":
            last = s.last("step")
            st.progress(last["step"] / last["total_steps"] if last else 0.0,
                        text="Pretraining the fast model on digits 0-4 only…")
        else:
            st.rerun(scope="app")

    if ready:
        st.success(f"Your 0-4 base is ready: pick **Your run · {ready[-1]}** as the base model above.")
    elif state is not None and state.active:
        _progress()
    elif st.button("Pretrain a 0-4 base (400 steps of the fast model)", icon=":material/school:"):
        # ~400 steps whatever the data: under 2 epochs of full MNIST, enough epochs of the offline sample
        cfg = core.TrainConfig.preset("fast", epochs=30, max_steps=400, augment=True)
        try:
            st.session_state["ft_base_job"] = submit("pretrain", "base-0-4", cfg.to_dict())
        except ValueError as e:
            st.error(public_error(e))
        else:
            st.rerun()
    if state is not None and state.status in ("failed", "interrupted"):
        st.error(f"Pretraining did not finish: {public_error(state.error or 'its server stopped')}")


def live_ui() -> None:
    first = current("finetune", "ft_current")
    if first is None:
        return

    @st.fragment(run_every=1.0 if first.active else None)
    def _live():
        j = current("finetune", "ft_current")
        if j is None:
            return
        events = j.events
        start = j.last("start")
        steps = [e for e in events if e.get("event") == "step"]
        evals = [e for e in events if e.get("event") == "eval"]
        if start:
            st.caption(f"**{j.name}**: {start['model']} on {start['device']} · "
                       f"{public_error(start['target_description'])} · "
                       f"{start['trainable_params']:,} trainable, {start['frozen_params']:,} frozen parameters.")
        if j.status == "queued":
            queued_ui(j)
        elif steps:
            last = steps[-1]
            baseline = j.config.get("baseline", True)
            phase_share = 0.5 if baseline else 1.0
            frac = last["step"] / max(1, last["total_steps"])
            done_frac = (phase_share * frac) + (0.5 if last["phase"] == "scratch" else 0.0)
            label = {"finetune": "Fine-tuning", "scratch": "Training from scratch (baseline)"}[last["phase"]]
            if j.status == "running":
                st.progress(min(1.0, done_frac),
                            text=f"{label}: step {last['step']}/{last['total_steps']} · loss {last['loss']:.3f} · "
                                 f"{last['images_per_sec']:,.0f} images/s")
            else:
                job = j.rec.job or {}
                took = (job.get("finished_at") or 0) - (job.get("started_at") or 0)
                st.progress(1.0 if j.status == "done" else min(1.0, done_frac),
                            text=f"{j.status.capitalize()}" + (f" after {took:.0f} s." if took > 0 else "."))
        elif j.status == "running":
            st.progress(0.0, text="Preparing (scoring the base model on the target)…")
        c1, c2 = st.columns(2)
        if evals:
            df = pd.DataFrame([{"step": e["step"], "accuracy": 100 * e["target_acc"],
                                "run": "fine-tune" if e["phase"] == "finetune" else "from scratch"} for e in evals])
            c1.altair_chart(alt.Chart(df).mark_line(point=True).encode(
                x=alt.X("step:Q", title="Step"), y=alt.Y("accuracy:Q", title="Target test accuracy (%)"),
                color=alt.Color("run:N", scale=alt.Scale(domain=["fine-tune", "from scratch"],
                                                         range=["#7C5CFF", "#999999"]), title=None),
                tooltip=["run", "step", alt.Tooltip("accuracy:Q", format=".2f")]).properties(
                height=260, title="Target accuracy"), width="stretch")
        if steps:
            stride = max(1, len(steps) // 400)  # keep the chart light on long runs
            df = pd.DataFrame([{"step": e["step"], "loss": e["loss"],
                                "run": "fine-tune" if e["phase"] == "finetune" else "from scratch"}
                               for e in steps[::stride]])
            c2.altair_chart(alt.Chart(df).mark_line().encode(
                x=alt.X("step:Q", title="Step"), y=alt.Y("loss:Q", title="Training loss", scale=alt.Scale(type="log")),
                color=alt.Color("run:N", scale=alt.Scale(domain=["fine-tune", "from scratch"],
                                                         range=["#7C5CFF", "#999999"]), title=None)).properties(
                height=260, title="Training loss"), width="stretch")
        if first.active and not j.active:
            st.rerun(scope="app")  # finished: show the results on the whole page

    _live()
    if first.status == "failed":
        st.error(f"Fine-tuning failed: {public_error(first.error or 'unknown error')}")
    elif first.status == "interrupted":
        st.warning("This fine-tune was queued or running when the server stopped, so it did not finish. "
                   "Start it again.")
    elif first.status == "stopped":
        st.warning("Stopped. A fine-tune is saved only when it completes, so nothing was kept from this one.")
    elif first.status == "cancelled":
        st.info("Cancelled while it waited in the queue: nothing was trained.")


def results_ui() -> None:
    cur = current("finetune", "ft_current")
    r = cur.results() if cur else None
    if r is None:
        return
    st.subheader("Before and after")
    pct = (lambda v: "—" if v is None else f"{100 * v:.2f}%")
    scratch = r.get("scratch_target_acc")
    table = pd.DataFrame([
        {"measure": f"Target test accuracy ({r['test_size']:,} digits)", "before": pct(r["target_acc_before"]),
         "after": pct(r["target_acc_after"]), "from scratch": pct(scratch)},
        {"measure": "Original task accuracy (forgetting)", "before": pct(r["original_acc_before"]),
         "after": pct(r["original_acc_after"]), "from scratch": "—"},
    ])
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "measure": st.column_config.TextColumn(""),
        "before": st.column_config.TextColumn("Base model"),
        "after": st.column_config.TextColumn("Fine-tuned"),
        "from scratch": st.column_config.TextColumn("From scratch, same data and steps",
                                                    help="The same architecture from a fresh start, trained on the "
                                                         "same target digits for the same number of steps.")})
    c = st.columns(3)
    c[0].metric("Gain on the target", f"{100 * (r['target_acc_after'] - r['target_acc_before']):+.1f} pts")
    if scratch is not None:
        c[1].metric("Pretraining was worth", f"{100 * r['gain_over_scratch']:+.1f} pts",
                    help="Fine-tuned minus from-scratch accuracy on the target test split.")
    c[2].metric("Forgetting", f"{100 * r['forgetting']:.1f} pts", delta_color="off",
                help="How much accuracy on the original task was lost.")
    explain_ui(r)
    page_link("app_pages/evaluate.py", f"Evaluate {cur.name} in depth")


def explain_ui(r: dict) -> None:
    """The honest reading of the numbers, including when transfer does not help."""
    gain = r.get("gain_over_scratch")
    target = str(r.get("target", ""))
    if gain is not None and gain < 0.02:
        why = ("rotating digits by a large angle changes which strokes go where, so the pretrained features "
               "fit poorly" if target.startswith("rotated") else
               "the classes to learn are new, and features learned on other digits only partly carry over"
               if target == "new-classes" else
               "with this much target data a fresh model learns the task on its own"
               if r.get("train_size", 0) >= 1000 else
               "the pretrained features do not match this target well")
        st.warning(f"**Pretraining did not help here** ({100 * r['target_acc_after']:.1f}% fine-tuned vs "
                   f"{100 * r['scratch_target_acc']:.1f}% from scratch): {why}. That is a real result, not a bug: "
                   "transfer helps when the new task reuses what the base learned. Try unfreezing more groups, "
                   "a higher learning rate, or fewer shots to see when it starts to pay.")
    elif gain is not None:
        st.success(f"Pretraining paid off: **{100 * gain:+.1f} points** over training the same model from scratch "
                   f"on the same {r['train_size']:,} digits for the same {r['steps']} steps.")
    if r["forgetting"] > 0.02 and target == "new-classes" and (r.get("config") or {}).get("reinit_head"):
        st.info(f"The old digits 0-4 are forgotten ({100 * r['forgetting']:.1f} points): the fresh head was trained "
                "on 5-9 only, so it never answers 0-4 any more. Keeping them needs examples of the old classes "
                "in the fine-tuning data (rehearsal), or a head that is not re-initialized.")
    elif r["forgetting"] > 0.02:
        st.info(f"The model forgot part of its original task ({100 * r['forgetting']:.1f} points). Freezing more "
                "groups or lowering the body learning rate keeps more of it.")


def history_ui() -> None:
    results = {n: r for n, rec in workspace().runs().items()
               if rec.kind == "finetune" and (r := RunState(rec).results()) is not None}
    if len(results) < 2:
        return
    st.subheader("Your fine-tunes")
    rows = [{"run": name, "target": r.get("target"), "frozen": ", ".join(r.get("frozen_groups") or []) or "none",
             "lr": r["config"].get("lr"), "steps": r.get("steps"), "before": 100 * r["target_acc_before"],
             "after": 100 * r["target_acc_after"],
             "scratch": None if r.get("scratch_target_acc") is None else 100 * r["scratch_target_acc"],
             "forgetting": 100 * r["forgetting"]} for name, r in results.items()]
    fmt = st.column_config.NumberColumn(format="%.2f%%")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                 column_config={"before": fmt, "after": fmt, "scratch": fmt,
                                "forgetting": st.column_config.NumberColumn(format="%.2f pts")})


def preview_ui(data, spec: str, shots: int) -> None:
    """Ten of the digits the model will be fine-tuned on."""
    if spec is None:
        return
    try:
        if spec == "drawings":
            x, y = workspace().samples.load().tensors()
        else:
            t = _target(spec, int(shots), UI_MAX_TEST, data.description, data)
            x, y = t.train_images, t.train_labels
    except ValueError as e:
        st.error(public_error(e))
        return
    step = max(1, math.ceil(len(y) / 10)) if spec.startswith("subset") or spec == "drawings" else max(1, shots)
    idx = list(range(0, len(y), step))[:10]
    image_grid(x[idx].numpy(), [f"label {int(y[i])}" for i in idx])


# ------------------------------------------------------------------ page

page_header("Fine-tune", "Adapt a trained model to new data with a few examples, choosing what to freeze, and see "
            "honestly whether pretraining helped: every run is compared with the same model trained from scratch.")
data = get_data()
sidebar_status(data)
if data is None:
    st.info("Fine-tuning needs MNIST: the built-in targets are made from it, and forgetting is measured on it "
            "(see above).")
else:
    with st.container(border=True):
        st.markdown("**1 · Start from and adapt to**")
        left, right = st.columns(2, gap="large")
        with left:
            base_path, base = base_ui(data)
        with right:
            spec, shots, _ = target_ui(data)
        preview_ui(data, spec, shots)
        if needs_0_4_base(spec, base):
            new_classes_base_ui(data)
    if base is not None:
        with st.container(border=True):
            st.markdown("**2 · What learns, and how fast**")
            frozen, reinit = freeze_ui(base, spec)
            hp = lr_ui()
        start_ui(data, base_path, base, spec, shots, frozen, reinit, hp)
    live_ui()
    results_ui()
    history_ui()
