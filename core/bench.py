"""Benchmarks. Each one measures a reference in the same run and prints ratios,
because the machines are shared and absolute seconds drift.

`emit` is a callable for human lines (print in the CLI); each function returns
a JSON-able dict.
"""
from __future__ import annotations

import gzip
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def _torchvision_layout(data_dir, tmp: Path) -> Path:
    """Unpack IDX files to tmp/MNIST/raw, where torchvision.datasets.MNIST looks."""
    from .data import DEFAULT_DATA_DIR, SPLIT_FILES, _find_file, idx_folder

    import os

    root = Path(data_dir or os.environ.get("MNIST_DIR") or DEFAULT_DATA_DIR)
    folder = idx_folder(root)
    if folder is None:
        raise FileNotFoundError(f"bench train needs the full MNIST IDX files; none in {root} (use --data DIR)")
    raw = tmp / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stems in SPLIT_FILES.values():
        for stem in stems:
            src = _find_file(folder, stem)
            opener = gzip.open if src.read_bytes()[:2] == b"\x1f\x8b" else open
            with opener(src, "rb") as f, open(raw / stem, "wb") as g:
                shutil.copyfileobj(f, g)
    return tmp


def seeds_recipe(root: Path, emit=lambda *_: None) -> dict:
    """The seeds' recipe as written: torchvision MNIST, PIL transforms, DataLoader(batch 64,
    2 workers), the classic CNN, Adam 1e-3, one epoch over all 60,000 digits."""
    from torchvision import datasets, transforms

    from .device import configure_cpu
    from .evaluate import TorchPredictor
    from .models import build_model

    configure_cpu()
    torch.manual_seed(1)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_set = datasets.MNIST(str(root), train=True, download=False, transform=tf)
    test_set = datasets.MNIST(str(root), train=False, download=False, transform=tf)
    loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True, num_workers=2)
    model = build_model("classic")
    # Our models normalise inside; the recipe normalises in the transform, so skip ours.
    model.mean.fill_(0.0)
    model.std.fill_(1.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 200 == 0:
            emit(f"  seeds' recipe: step {i}/{len(loader)} loss {loss.item():.3f}")
    seconds = time.perf_counter() - t0
    x_test = torch.stack([test_set[i][0] for i in range(len(test_set))])
    y_test = torch.tensor(test_set.targets)
    probs = TorchPredictor(model, "cpu").predict(x_test)
    acc = float((probs.argmax(1) == y_test.numpy()).mean())
    return {"train_seconds": seconds, "test_acc": acc}


def bench_train(data_dir=None, emit=print, fast_epochs: int = 1) -> dict:
    """seeds' recipe vs `train --model fast --epochs 1`, same machine, same run."""
    from .data import load_mnist
    from .train import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        root = _torchvision_layout(data_dir, Path(tmp))
        emit("1/2 seeds' recipe (classic, Adam 1e-3, DataLoader batch 64 x 2 workers, 1 epoch)...")
        ref = seeds_recipe(root, emit)
    emit(f"    {ref['train_seconds']:.1f}s, test accuracy {100 * ref['test_acc']:.2f}%")
    emit(f"2/2 core fast model, {fast_epochs} epoch...")
    data = load_mnist(data_dir)
    done = {}
    for ev in train(TrainConfig.preset("fast", epochs=fast_epochs), data):
        if ev["event"] == "done":
            done = ev
    ratio = ref["train_seconds"] / done["train_seconds"]
    emit(f"    {done['train_seconds']:.1f}s, test accuracy {100 * done['test_acc']:.2f}% on {done['device']}")
    emit(f"speed-up: {ratio:.1f}x (bar: >= 6x at >= 99.0% test accuracy) -> "
         f"{'PASS' if ratio >= 6 and done['test_acc'] >= 0.99 else 'FAIL'}")
    return {"reference_seconds": ref["train_seconds"], "reference_test_acc": 100 * ref["test_acc"],
            "fast_seconds": done["train_seconds"], "fast_test_acc": 100 * done["test_acc"],
            "speedup": ratio, "device": done["device"]}
