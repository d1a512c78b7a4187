"""`python -m core` as a user runs it: exit codes, one-line errors, the JSON last line."""
import json
import subprocess
import sys

import pytest

from helpers import ROOT


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def trained(mnist_dir, tmp_path_factory):
    """`python -m core train` itself, as a user runs it: what test_train_json_last_line checks."""
    out = tmp_path_factory.mktemp("cli") / "run"
    r = cli("train", "--model", "fast", "--max-steps", "60", "--lr", "0.05", "--data", mnist_dir,
            "--out", out, "--json", "--device", "cpu")
    return r, out


def test_train_json_last_line(trained):
    r, out = trained
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("data: --data: MNIST IDX files")
    res = json.loads(lines[-1])
    assert {"test_acc", "train_seconds", "device", "checkpoint"} <= set(res)
    assert 80.0 < res["test_acc"] <= 100.0  # percent, from a real 60-step run
    assert res["device"].startswith("cpu") and res["train_seconds"] > 0
    assert res["checkpoint"] == str(out / "model.safetensors") and (out / "run.json").exists()
    assert "Traceback" not in r.stderr


def test_evaluate_json(trained_run, mnist_dir):
    r = cli("evaluate", trained_run, "--data", mnist_dir, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    train_acc = json.loads((trained_run / "run.json").read_text())["metrics"]["test_acc"]  # a fraction
    assert res["n"] == 10000 and res["test_acc"] == pytest.approx(100 * train_acc, abs=0.02)  # percent
    assert len(res["per_class"]) == 10 and len(res["confusion"]) == 10


@pytest.mark.parametrize("args,code,msg", [
    (["train", "--model", "resnet"], 2, "invalid choice: 'resnet'"),
    (["train", "--epochs", "two"], 2, "invalid int value"),
    (["frobnicate"], 2, "invalid choice"),
    (["train", "--lr", "0"], 1, "lr must be in [1e-06, 10]"),
    (["train", "--batch-size", "1000000"], 1, "batch_size must be in [1, 8192]"),
    (["train", "--data", "/nonexistent/mnist"], 1, "not a directory"),
    (["evaluate", "/nonexistent/run"], 1, "no such checkpoint"),
])
def test_bad_arguments_one_line_error(args, code, msg):
    r = cli(*args)
    assert r.returncode == code
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and msg in err[0], r.stderr
    assert "Traceback" not in r.stderr


def test_cuda_requested_without_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = cli("train", "--device", "cuda", "--max-steps", "1")
    assert r.returncode == 1 and "no GPU is available" in r.stderr
