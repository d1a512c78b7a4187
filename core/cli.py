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


def default_run_dir(model: str) -> Path:
    from .data import PROJECT_ROOT

    return PROJECT_ROOT / "runs" / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_train(args) -> dict:
    from .data import load_mnist
    from .train import TrainConfig, train

    cfg = TrainConfig.preset(args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             seed=args.seed, device=args.device, max_steps=args.max_steps,
                             augment=args.augment, optimizer=args.optimizer)
    cfg.validate()
    data = load_mnist(args.data)
    out = Path(args.out) if args.out else default_run_dir(args.model)
    print(f"data: {data.description}", flush=True)
    bar, result = None, {}
    for ev in train(cfg, data, run_dir=out):
        kind = ev["event"]
        if kind == "start":
            print(f"training {ev['model']} ({ev['params']:,} params) on {ev['device']}: "
                  f"{ev['train_size']:,} train / {ev['val_size']:,} validation digits", flush=True)
            bar = _progress(cfg.epochs * max(1, ev["train_size"] // min(cfg.batch_size, ev["train_size"]))
                            if not cfg.max_steps else cfg.max_steps, "train")
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
    print(f"test accuracy {100 * result['test_acc']:.2f}% in {result['train_seconds']:.1f}s of training "
          f"on {result['device']}; checkpoint {result['checkpoint']}")
    return {"test_acc": 100 * result["test_acc"], "test_loss": result["test_loss"],
            "val_acc": 100 * result.get("val_acc", float("nan")), "train_seconds": result["train_seconds"],
            "device": result["device"], "checkpoint": result["checkpoint"], "model": args.model,
            "steps": result.get("step"), "data_source": data.source}


def cmd_evaluate(args) -> dict:
    from .checkpoint import load_checkpoint
    from .data import load_mnist
    from .device import resolve_device
    from .evaluate import evaluate

    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, device)
    data = load_mnist(args.data)
    print(f"data: {data.description}", flush=True)
    rep = evaluate(ckpt.model, data.test_images, data.test_labels, device)
    print(f"{ckpt.model_config.name}: test accuracy {100 * rep['accuracy']:.2f}% on {rep['n']:,} digits, "
          f"ECE {rep['ece']:.4f}, {len(rep['mistakes'])} most-confident mistakes listed")
    print("digit precision recall  f1     support")
    for r in rep["per_class"]:
        print(f"{r['digit']:>5} {r['precision']:.4f}    {r['recall']:.4f} {r['f1']:.4f} {r['support']:>7}")
    return {"model": ckpt.model_config.name, "test_acc": 100 * rep["accuracy"], "n": rep["n"],
            "ece": rep["ece"], "nll": rep["nll"], "per_class": rep["per_class"], "confusion": rep["confusion"],
            "data_source": data.source}


def cmd_bench(args) -> dict:
    from . import bench

    fn = {"train": bench.bench_train}.get(args.what)
    if fn is None:
        raise CLIError(f"unknown benchmark {args.what!r}")
    return fn(data_dir=args.data, emit=print)


def build_parser() -> argparse.ArgumentParser:
    from .models import MODELS

    p = Parser(prog="python -m core", description="MNIST Lab engine: train, evaluate, export, predict, bench.")
    sub = p.add_subparsers(dest="command", parser_class=Parser, required=True)

    t = sub.add_parser("train", help="train a model and write a checkpoint")
    t.add_argument("--model", choices=list(MODELS), default="fast")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    t.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--seed", type=int)
    t.add_argument("--max-steps", type=int, help="stop after this many steps (smoke tests, demos)")
    t.add_argument("--out", help="run folder (default runs/MODEL-TIMESTAMP)")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("evaluate", help="test-set report for a checkpoint")
    e.add_argument("checkpoint", help="run folder or model.safetensors")
    e.set_defaults(fn=cmd_evaluate)

    b = sub.add_parser("bench", help="benchmarks that print ratios against a same-run reference")
    b.add_argument("what", choices=["train"])
    b.set_defaults(fn=cmd_bench)

    for sp in (t, e, b):
        sp.add_argument("--data", help="folder with the MNIST IDX files (else $MNIST_DIR, data/, download, sample)")
        sp.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    for sp in (t, e):
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .data import DataError
    from .device import DeviceError
    from .train import TrainingDiverged

    try:
        args = build_parser().parse_args(argv)
        result = args.fn(args)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (DataError, CheckpointError, DeviceError, TrainingDiverged, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("error: interrupted; the last completed checkpoint is kept", file=sys.stderr)
        return 130
    if getattr(args, "json", False):
        print(json.dumps(_jsonable(result)))
    return 0
