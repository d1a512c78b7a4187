"""Shared fixtures. Real data only: the full MNIST in ../shared/mnist (or $MNIST_DIR)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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
