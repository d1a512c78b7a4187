"""`python -m core ...`: the command-line face of the engine.

Every subcommand prints human lines; with --json the last line printed is one
JSON object. Bad arguments and bad files end in a one-line error and a
non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

EXIT_USAGE, EXIT_FAILURE = 2, 1


class CLIError(Exception):
    """A user-facing error: printed as one line."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's default prints the whole usage block
        raise CLIError(f"{self.prog}: {message} (see --help)")


def _jsonable(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool, list, dict, type(None)))}


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _progress(total: int, desc: str):
    """A tqdm bar on an interactive terminal, nothing otherwise (logs stay clean)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)


def default_run_dir(name: str) -> Path:
    """runs/NAME-TIMESTAMP, made safe, with a -2, -3... suffix if a run started in the same second."""
    from .data import PROJECT_ROOT
    from .names import safe_name, unique_name

    runs = PROJECT_ROOT / "runs"
    taken = {p.name for p in runs.iterdir()} if runs.is_dir() else set()
    return runs / unique_name(safe_name(f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"), taken)


def cmd_train(args) -> dict:
    from .data import load_mnist
    from .train import TrainConfig, default_epochs, total_steps, train

    cfg = TrainConfig.preset(args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             seed=args.seed, device=args.device, max_steps=args.max_steps,
                             augment=args.augment, optimizer=args.optimizer,
                             drawing_augment=True if args.drawing_augment else None)
    cfg.validate()
    data = load_mnist(args.data)
    if args.epochs is None:  # the preset, or more on a small dataset (the offline sample)
        cfg.epochs = default_epochs(args.model, len(data.train_labels))
    out = Path(args.out) if args.out else default_run_dir(args.model)
    print(f"data: {data.description}", flush=True)
    bar, result = None, {}
    for ev in train(cfg, data, run_dir=out):
        kind = ev["event"]
        if kind == "start":
            print(f"training {ev['model']} ({ev['params']:,} params) on {ev['device']}: "
                  f"{ev['train_size']:,} train / {ev['val_size']:,} validation digits", flush=True)
            bar = _progress(total_steps(cfg, ev["train_size"]), "train")
        elif kind == "step" and bar is not None:
            bar.n = ev["step"]
            bar.set_postfix(loss=f"{ev['loss']:.3f}", img_s=f"{ev['images_per_sec']:.0f}", refresh=True)
        elif kind == "epoch":
            print("epoch " + "  ".join(f"{k}={_fmt(ev[k])}" for k in
                                       ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "elapsed")
                                       if k in ev), flush=True)
        elif kind == "done":
            result = ev
    if bar is not None:
        bar.close()
    warm = result.get("warmup_seconds") or 0.0
    print(f"test accuracy {100 * result['test_acc']:.2f}% in {result['train_seconds']:.1f}s of training "
          f"on {result['device']}" + (f" (+{warm:.1f}s one-time GPU start-up)" if warm >= 0.05 else "")
          + f"; checkpoint {result['checkpoint']}")
    return {"test_acc": 100 * result["test_acc"], "test_loss": result["test_loss"],
            "val_acc": 100 * result.get("val_acc", float("nan")), "train_seconds": result["train_seconds"],
            "warmup_seconds": result.get("warmup_seconds", 0.0), "device": result["device"], "checkpoint": result["checkpoint"], "model": args.model,
            "steps": result.get("step"), "data_source": data.source}


def _evaluation_model(path: str, device_choice: str):
    """(predictor, name) for a run folder / model.safetensors (PyTorch) or an .onnx (onnxruntime)."""
    if Path(path).suffix == ".onnx":
        from .inference import load_predictor

        pred = load_predictor(path, prefer_gpu=device_choice != "cpu")
        return pred, pred.name
    from .checkpoint import load_checkpoint
    from .device import resolve_device
    from .evaluate import TorchPredictor

    device = resolve_device(device_choice)
    ckpt = load_checkpoint(path, device)
    return TorchPredictor(ckpt.model, device), ckpt.model_config.name


def cmd_evaluate(args) -> dict:
    from .data import load_mnist
    from .evaluate import evaluate

    if args.digits is not None and not args.robustness:
        raise CLIError("--digits only applies with --robustness")
    if args.card:
        from .inference import read_card

        if not (args.robustness and str(args.checkpoint).endswith(".onnx")):
            raise CLIError("--card records --robustness rows in an exported .onnx's model card")
        if read_card(args.checkpoint) is None:  # before minutes of measuring, not after
            raise CLIError(f"{Path(args.checkpoint).name} has no model card (.json beside it) to record in")
    model, name = _evaluation_model(args.checkpoint, args.device)
    data = load_mnist(args.data)
    print(f"data: {data.description}", flush=True)
    if args.robustness:
        return _robustness(model, name, data, args)
    rep = evaluate(model, data.test_images, data.test_labels)
    print(f"{name}: test accuracy {100 * rep['accuracy']:.2f}% on {rep['n']:,} digits, "
          f"ECE {rep['ece']:.4f}, {len(rep['mistakes'])} most-confident mistakes listed")
    print("digit precision recall  f1     support")
    for r in rep["per_class"]:
        print(f"{r['digit']:>5} {r['precision']:.4f}    {r['recall']:.4f} {r['f1']:.4f} {r['support']:>7}")
    return {"model": name, "test_acc": 100 * rep["accuracy"], "n": rep["n"],
            "ece": rep["ece"], "nll": rep["nll"], "per_class": rep["per_class"], "confusion": rep["confusion"],
            "data_source": data.source}


def _robustness(model, name: str, data, args) -> dict:
    from .robustness import RobustnessConfig, robustness

    cfg = RobustnessConfig(digits=1000 if args.digits is None else args.digits, seed=args.seed)
    print(f"{name}: robustness on {min(cfg.digits, len(data.test_labels)):,} test digits (seed {cfg.seed}), "
          "each drawn on a 280x280 canvas and read through the Draw page's preprocessing", flush=True)
    rep = robustness(model, data.test_images, data.test_labels, cfg)
    clean = rep["accuracy"].get("clean")
    print(f"{'distortion':<13}{'accuracy':>9}{'vs clean':>10}{'blank':>7}  what")
    for r in rep["rows"]:
        gap = "" if clean is None or r["distortion"] == "clean" else f"{100 * (r['accuracy'] - clean):+.1f}"
        print(f"{r['distortion']:<13}{100 * r['accuracy']:>8.1f}%{gap:>10}{r['blank']:>7}  {r['description']}")
    if args.card:
        from .robustness import write_to_card

        try:
            print(f"recorded in {write_to_card(args.checkpoint, rep)}")
        except ValueError as e:
            raise CLIError(str(e)) from None
    return {"model": name, "robustness": rep, "data_source": data.source}


def cmd_bench(args) -> dict:
    from . import bench

    fn = {"train": bench.bench_train, "infer": bench.bench_infer, "load": bench.bench_load}.get(args.what)
    if fn is None:
        raise CLIError(f"unknown benchmark {args.what!r}")
    return fn(data_dir=args.data, emit=print)


def cmd_export(args) -> dict:
    from .export import export_onnx, load_source
    from .inference import EXPORT_DIR

    ckpt = load_source(args.checkpoint)
    # Default name comes from the run folder, so exporting a run never replaces a shipped model.
    run_name = ckpt.model_config.name if ckpt.path is None else \
        ckpt.path.stem if ckpt.path.suffix == ".onnx" else ckpt.path.parent.name
    out = Path(args.out) if args.out else EXPORT_DIR / f"{run_name}.onnx"
    print(f"exporting {ckpt.model_config.name} from {ckpt.path} ...", flush=True)
    card = export_onnx(ckpt, out, data=args.data, fp16=args.fp16, int8=args.int8, calibrate=args.calibrate)
    p, lat = card["parity"], card["latency"]
    print(f"data: {card['data']['description']}")
    c = card.get("calibration")
    if c:
        print(f"calibration: temperature {c['temperature']:.4f} fitted on {c['fitted_on']}; test ECE "
              f"{100 * c['ece_before']:.2f}% -> {100 * c['ece_after']:.2f}%, NLL {c['nll_before']:.4f} -> "
              f"{c['nll_after']:.4f} (answers unchanged)")
    else:
        print(f"calibration: off (--no-calibrate); test ECE {100 * card['ece']:.2f}%, NLL {card['nll']:.4f}")
    print(f"parity vs torch on {p['n']:,} test digits: max |dlogit| {p['max_abs_dlogit']:.2e} "
          f"(bar <= {p['tolerance']:g}), argmax identical on {p['argmax_agree']:,}/{p['n']:,} -> PASS")
    print(f"test accuracy through onnxruntime: {100 * card['accuracy']:.2f}% on {card['data']['test_size']:,} digits")
    print(f"{card['file']}: {card['size_bytes'] / 1024:.0f} KB, opset {card['opset']}, single-image p50 "
          f"{lat['single_p50_ms']:.3f} ms on {lat['provider']}")
    for v in card["variants"]:
        print(f"  {v['variant']}: {v['file']} {v['size_bytes'] / 1024:.0f} KB, accuracy {100 * v['accuracy']:.2f}%, "
              f"ECE {100 * v['ece']:.2f}%, "
              f"p50 {v['latency']['single_p50_ms']:.3f} ms ({v['speedup_vs_fp32']:.2f}x fp32), "
              f"argmax agrees with fp32 on {v['vs_fp32']['argmax_agree']:,}/{v['vs_fp32']['n']:,}")
    print(f"wrote {out} and {out.with_suffix('.json')}")
    if args.triton:
        from .export import write_triton

        card = {**card, "triton": []}
        for path in [out] + [out.with_name(v["file"]) for v in card["variants"]]:
            folder = write_triton(path, args.triton)
            card["triton"].append(str(folder))
            print(f"triton: {folder / 'config.pbtxt'} and {folder / '1' / 'model.onnx'}")
    return card


def cmd_predict(args) -> dict:
    from .inference import load_predictor, predict_image

    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise CLIError(f"no such image: {', '.join(missing)}")
    pred = load_predictor(args.model, prefer_gpu=not args.cpu)
    print(f"model: {pred.name} ({pred.provider})")
    results = []
    for path in args.images:
        r = predict_image(pred, path)
        if r["blank"]:
            print(f"{path}: {r['reason']}")
        else:
            print(f"{path}: " + "   ".join(f"{d} ({100 * p:.1f}%)" for d, p in r["top3"])
                  + f"   [{r['latency_ms']:.2f} ms]")
        results.append({"image": path, "blank": r["blank"], "reason": r["reason"], "digit": r["digit"],
                        "top3": [{"digit": d, "prob": p} for d, p in r["top3"]], "latency_ms": r["latency_ms"]})
    return {"model": str(args.model), "provider": pred.provider, "results": results}


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def cmd_finetune(args) -> dict:
    from .data import load_mnist
    from .finetune import FinetuneConfig, finetune
    from .config import KINDS, TARGETS, parse_spec

    freeze = None if args.freeze is None else [g.strip() for g in args.freeze.split(",") if g.strip()]
    overrides = {"freeze": freeze, "lr": args.lr,
                 "head_lr": args.head_lr, "epochs": args.epochs, "max_steps": args.max_steps, "shots": args.shots,
                 "batch_size": args.batch_size, "optimizer": args.optimizer, "seed": args.seed,
                 "device": args.device, "augment": args.augment, "scratch_lr": args.scratch_lr,
                 "reinit_head": args.reinit_head or None, "baseline": False if args.no_baseline else None}
    cfg = FinetuneConfig.recommended(args.target, **overrides)  # the target's recipe, then the flags
    if args.epochs is not None and args.max_steps is None:
        cfg.max_steps = None  # --epochs alone sets the budget
    cfg.validate()
    if parse_spec(args.target)[0] not in KINDS:  # before the slow part: loading MNIST
        raise CLIError(f"--target: unknown target {args.target!r}; choose one of " + ", ".join(TARGETS))
    data = load_mnist(args.data)
    out = Path(args.out) if args.out else default_run_dir(f"ft-{args.target.split('/')[-1]}")
    print(f"data: {data.description}", flush=True)
    bar, result = None, {}
    for ev in finetune(cfg, args.checkpoint, data, run_dir=out):
        kind = ev["event"]
        if kind == "start":
            print(f"fine-tuning {ev['model']} from {ev['base_checkpoint']} on {ev['device']}\n"
                  f"target {ev['target']}: {ev['target_description']} "
                  f"({ev['train_size']:,} train / {ev['test_size']:,} test digits)\n"
                  f"parameters: {ev['trainable_params']:,} trainable, {ev['frozen_params']:,} frozen "
                  f"(of {ev['params']:,})", flush=True)
            for g in ev["groups"]:
                print(f"  {g['group']:<8} {g['params']:>9,}  " + ("frozen" if g["frozen"] else f"lr {g['lr']:g}"))
        elif kind == "phase":
            if bar is not None:
                bar.close()
            bar = _progress(ev["total_steps"], ev["phase"])
        elif kind == "step" and bar is not None:
            bar.n = ev["step"]
            bar.set_postfix(loss=f"{ev['loss']:.3f}", refresh=True)
        elif kind == "eval":
            print(f"{ev['phase']:>8} step {ev['step']:>5}: target test accuracy {_pct(ev['target_acc'])}", flush=True)
        elif kind == "done":
            result = ev
    if bar is not None:
        bar.close()
    r = result
    print(f"\n{'':<26}{'before':>8}{'after':>8}{'scratch':>9}")
    print(f"{'target test (' + r['target'][:11] + ')':<26}{_pct(r['target_acc_before']):>8}"
          f"{_pct(r['target_acc_after']):>8}{_pct(r['scratch_target_acc']):>9}")
    print(f"{'original test (forgetting)':<26}{_pct(r['original_acc_before']):>8}{_pct(r['original_acc_after']):>8}"
          f"{'-':>9}")
    if r["gain_over_scratch"] is not None:
        print(f"pretraining was worth {100 * r['gain_over_scratch']:+.1f} points over training from scratch "
              f"({r['steps']} steps each); forgetting {100 * r['forgetting']:.1f} points")
    print(f"checkpoint {r['checkpoint']}")
    pct = {k: (None if r[k] is None else round(100 * r[k], 2)) for k in
           ("target_acc_before", "target_acc_after", "scratch_target_acc", "original_acc_before",
            "original_acc_after", "forgetting", "gain_over_scratch", "mnist_test_acc")}
    return {**pct, **{k: r[k] for k in ("target", "model", "train_size", "test_size", "steps", "trainable_params",
                                        "frozen_params", "frozen_groups", "finetune_seconds", "scratch_seconds",
                                        "checkpoint", "device")}, "data_source": data.source}


def cmd_finetune_base(args) -> dict:
    from .data import load_mnist
    from .finetune import pretrain_base
    from .train import TrainConfig

    try:
        lo, _, hi = args.classes.partition("-")
        classes = list(range(int(lo), int(hi or lo) + 1)) if "," not in args.classes else \
            [int(c) for c in args.classes.split(",")]
    except ValueError:
        raise CLIError(f"--classes: expected a range like 0-4 or a list like 0,2,4, got {args.classes!r}") from None
    cfg = TrainConfig.preset(args.model, augment=True, epochs=args.epochs, device=args.device, seed=args.seed,
                             max_steps=args.max_steps)
    data = load_mnist(args.data)
    out = Path(args.out) if args.out else default_run_dir(f"base-{args.model}")
    print(f"data: {data.description}; pretraining {args.model} on digits {classes} only", flush=True)
    result = {}
    for ev in pretrain_base(data, classes, run_dir=out, cfg=cfg):
        if ev["event"] == "epoch":
            print(f"epoch {ev['epoch']} train_acc={ev['train_acc']:.4f} val_acc={ev.get('val_acc', float('nan')):.4f}",
                  flush=True)
        elif ev["event"] == "done":
            result = ev
    print(f"test accuracy on digits {classes}: {100 * result['test_acc']:.2f}%; checkpoint {result['checkpoint']}")
    return {"test_acc": 100 * result["test_acc"], "classes": classes, "checkpoint": result["checkpoint"],
            "model": args.model}


def cmd_samples(args) -> dict:
    from .samples import SampleStore, import_samples, load_folder

    if args.action == "import":
        if not args.src:
            raise CLIError("samples import: give a folder or .zip to import")
        r = import_samples(args.src, args.out)
        print(f"read {r['read']} drawings from {args.src}; {r['new']} new, {r['total']} now in {r['out']}")
        print("per digit: " + "  ".join(f"{d}:{n}" for d, n in enumerate(r["per_class"])))
        return r
    src = args.src or SampleStore().root
    if args.action == "export":
        s = load_folder(src)
        out = Path(args.out or "samples.zip")
        from .files import atomic_write

        data = s.to_zip()
        atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))
        print(f"wrote {len(s)} drawings to {out} ({len(data) / 1024:.0f} KB)")
        return {"count": len(s), "out": str(out), "per_class": s.counts()}
    s = load_folder(src)
    print(f"{len(s)} drawings; per digit: " + "  ".join(f"{d}:{n}" for d, n in enumerate(s.counts())))
    return {"count": len(s), "per_class": s.counts()}

def build_parser() -> argparse.ArgumentParser:
    # torch-free: a typo or --help answers at once instead of after importing torch (2-3 s)
    from .config import MODEL_INFO as MODELS, TARGETS

    p = Parser(prog="python -m core", description="MNIST Lab engine: train, evaluate, export, predict, bench.")
    sub = p.add_subparsers(dest="command", parser_class=Parser, required=True)

    t = sub.add_parser("train", help="train a model and write a checkpoint")
    t.add_argument("--model", choices=list(MODELS), default="fast")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--drawing-augment", action="store_true",
                   help="with augmentation, also elastic warps, blur/low resolution and marker/hairline strokes "
                        "(the distortions `evaluate --robustness` measures)")
    t.add_argument("--seed", type=int)
    t.add_argument("--max-steps", type=int, help="stop after this many steps (smoke tests, demos)")
    t.add_argument("--out", help="run folder (default runs/MODEL-TIMESTAMP)")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("evaluate", help="test-set report for a checkpoint")
    e.add_argument("checkpoint", help="run folder, model.safetensors or .onnx")
    e.add_argument("--robustness", action="store_true",
                   help="accuracy per distortion (elastic, rotation, tremor, stroke width, blur, placement), "
                        "each digit drawn on a canvas and read through the Draw page's path")
    e.add_argument("--digits", type=int, help="test digits per distortion with --robustness (default 1000)")
    e.add_argument("--seed", type=int, default=0, help="seed of the digits and distortions (default 0)")
    e.add_argument("--card", action="store_true",
                   help="with --robustness on an exported .onnx: record the rows in its model card")
    e.set_defaults(fn=cmd_evaluate)

    b = sub.add_parser("bench", help="benchmarks that print ratios against a same-run reference")
    b.add_argument("what", choices=["train", "infer", "load"])
    b.set_defaults(fn=cmd_bench)

    x = sub.add_parser("export", help="export a checkpoint to ONNX, parity-checked, with a model card")
    x.add_argument("checkpoint", help="run folder or model.safetensors, or an .onnx this project exported "
                                      "(its weights are rebuilt from the file and its card)")
    x.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                   help="fit a temperature on the run's validation split and fold it into the graph, so "
                        "probabilities are calibrated (default: on; answers never change)")
    x.add_argument("--out", help="output .onnx (default exported/mnist-MODEL.onnx); the card goes next to it")
    x.add_argument("--fp16", action="store_true", help="also write NAME-fp16.onnx")
    x.add_argument("--int8", action="store_true", help="also write NAME-int8.onnx (static quantization)")
    x.add_argument("--triton", metavar="DIR", help="also add the model(s) to the Triton model repository DIR: "
                                                   "DIR/NAME/config.pbtxt and DIR/NAME/1/model.onnx")
    x.add_argument("--data", help="folder with the MNIST IDX files (else $MNIST_DIR, data/, download, sample)")
    x.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    x.set_defaults(fn=cmd_export)

    pr = sub.add_parser("predict", help="top-3 digits for PNG/JPEG images (drawings or photos)")
    pr.add_argument("model", help="an exported .onnx model")
    pr.add_argument("images", nargs="+", help="PNG or JPEG files")
    pr.add_argument("--cpu", action="store_true", help="use the CPU even when a GPU is present")
    pr.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    pr.set_defaults(fn=cmd_predict)

    ft = sub.add_parser("finetune", help="adapt a checkpoint to a target; compares with training from scratch",
                        description="targets: " + "; ".join(f"{k}: {v}" for k, v in TARGETS.items()))
    ft.add_argument("checkpoint", help="base run folder or model.safetensors")
    ft.add_argument("--target", required=True, help="inverted, rotated[:DEG], thick, thin, noisy[:SIGMA], "
                                                    "new-classes, subset:N or user:DIR")
    ft.add_argument("--freeze", help="comma-separated layer groups to freeze (e.g. block1,block2); 'features' = "
                                     "all but head, 'upper' = last feature group + head, 'none' (default: "
                                     "the target's recipe)")
    ft.add_argument("--reinit-head", action="store_true", help="start the head from fresh weights")
    ft.add_argument("--lr", type=float, help="learning rate of the unfrozen body groups (default: the recipe's)")
    ft.add_argument("--head-lr", type=float, help="learning rate of the head (default: --lr)")
    ft.add_argument("--scratch-lr", type=float, help="learning rate of the from-scratch baseline")
    ft.add_argument("--epochs", type=int)
    ft.add_argument("--max-steps", type=int, help="step budget for fine-tune and baseline alike (default 200)")
    ft.add_argument("--shots", type=int, help="K examples per class (default 10)")
    ft.add_argument("--batch-size", type=int)
    ft.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    ft.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    ft.add_argument("--seed", type=int)
    ft.add_argument("--no-baseline", action="store_true", help="skip the from-scratch comparison")
    ft.add_argument("--out", help="run folder for the fine-tuned checkpoint (default runs/ft-TARGET-TIMESTAMP)")
    ft.set_defaults(fn=cmd_finetune)

    fb = sub.add_parser("finetune-base", help="pretrain a base on some digits only (for --target new-classes)")
    fb.add_argument("--model", choices=list(MODELS), default="fast")
    fb.add_argument("--classes", default="0-4", help="digits to learn, e.g. 0-4 (default) or 0,2,4")
    fb.add_argument("--epochs", type=int, default=2)
    fb.add_argument("--max-steps", type=int)
    fb.add_argument("--seed", type=int)
    fb.add_argument("--out", help="run folder (default runs/base-MODEL-TIMESTAMP)")
    fb.set_defaults(fn=cmd_finetune_base)
    for sp in (ft, fb):
        sp.add_argument("--data", help="folder with the MNIST IDX files (else $MNIST_DIR, data/, download, sample)")
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        sp.add_argument("--json", action="store_true", help="end with one JSON object on the last line")

    sa = sub.add_parser("samples", help="labeled drawings: import PNGs/zips into a store, export a zip, count")
    sa.add_argument("action", choices=["import", "export", "stats"])
    sa.add_argument("src", nargs="?", help="import: folder or .zip (<label>/*.png or labels.csv); "
                                           "export/stats: a samples folder (default data/samples)")
    sa.add_argument("--out", help="import: store folder (default data/samples); export: zip file")
    sa.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    sa.set_defaults(fn=cmd_samples)

    for sp in (t, e, b):
        sp.add_argument("--data", help="folder with the MNIST IDX files (else $MNIST_DIR, data/, download, sample)")
        sp.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    for sp in (t, e):
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from .checkpoint import CheckpointError  # torch, only once the arguments are known to be good
    from .data import DataError
    from .device import DeviceError
    from .train import TrainingDiverged, TrainingOutOfMemory

    try:
        result = args.fn(args)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (DataError, CheckpointError, DeviceError, TrainingDiverged, TrainingOutOfMemory, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("error: interrupted; the last completed checkpoint is kept", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps(_jsonable(result)))
    return 0
