"""Robustness suite: every distortion really changes the drawing, the clean row is the plain canvas
path, the shipped model clears a sane bar, and the CLI prints the table (and --json the dict)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.inference import DEFAULT_MODEL, load_predictor, predict_canvas
from core.preprocess import digit_to_canvas, preprocess_canvas
from core.robustness import DISTORTIONS, RobustnessConfig, canvases, pick_digits, robustness

N = 200  # digits per row here: enough for a stable clean score, seconds per row


@pytest.fixture(scope="module")
def shipped():
    return load_predictor(DEFAULT_MODEL, prefer_gpu=False)


@pytest.fixture(scope="module")
def report(shipped, mnist):
    return robustness(shipped, mnist.test_images, mnist.test_labels, RobustnessConfig(digits=N, seed=0))


@pytest.mark.parametrize("name", [d for d in DISTORTIONS if d != "clean"])
def test_each_distortion_changes_the_drawing(name, mnist):
    digits = mnist.test_images[:20].numpy()
    clean = [digit_to_canvas(d) for d in digits]
    distorted = list(canvases(name, digits, seed=0))
    assert all(c.shape == (280, 280, 4) and c.dtype == np.uint8 for c in distorted)
    # not the identity: every canvas differs
    assert all(np.abs(a.astype(int) - b.astype(int)).sum() > 0 for a, b in zip(clean, distorted))
    if name in ("small", "off-centre"):
        # placement: the ink's box is much smaller, or its centre has moved far (the preprocessing
        # is meant to undo this, so the 28x28 input barely changes)
        for a, b in zip(clean, distorted):
            (t0, l0, b0, r0), (t1, l1, b1, r1) = preprocess_canvas(a).bbox, preprocess_canvas(b).bbox
            moved = max(abs((t0 + b0) - (t1 + b1)), abs((l0 + r0) - (l1 + r1))) / 2
            assert (b1 - t1) < 0.7 * (b0 - t0) or moved > 40, (name, (t0, l0, b0, r0), (t1, l1, b1, r1))
    else:  # the shape changes, so what the model is shown (the 28x28 input) changes for most digits
        seen = [np.abs(preprocess_canvas(a).image - preprocess_canvas(b).image).mean()
                for a, b in zip(clean, distorted)]
        assert np.mean([d > 0.005 for d in seen]) >= 0.8, (name, seen)
    # every digit still has ink: the row measures reading, not blank canvases
    assert all(not preprocess_canvas(c).blank for c in distorted)


def test_rows_are_reproducible(mnist):
    digits = mnist.test_images[:5].numpy()
    for name in ("elastic", "tremor", "off-centre"):
        a, b = list(canvases(name, digits, seed=3)), list(canvases(name, digits, seed=3))
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert not all(np.array_equal(x, y) for x, y in zip(a, canvases(name, digits, seed=4)))


def test_clean_row_is_the_plain_canvas_path(report, shipped, mnist):
    idx = pick_digits(len(mnist.test_labels), N, 0)
    labels = mnist.test_labels.numpy()[idx]
    right = sum(predict_canvas(shipped, digit_to_canvas(d))["digit"] == y
                for d, y in zip(mnist.test_images.numpy()[idx], labels))
    assert report["accuracy"]["clean"] == right / N
    assert [r["distortion"] for r in report["rows"]] == list(DISTORTIONS)
    assert all(r["n"] == N and 0 <= r["accuracy"] <= 1 for r in report["rows"])


def test_shipped_model_scores_a_sane_bar(report):
    acc = report["accuracy"]
    assert acc["clean"] >= 0.98
    assert acc["small"] >= 0.95 and acc["off-centre"] >= 0.95  # the preprocessing undoes placement
    assert min(acc.values()) >= 0.8, acc  # no distortion is catastrophic for the default model


def test_cli_table_and_json(mnist_dir, capsys):
    from core.cli import main

    args = ["evaluate", str(DEFAULT_MODEL), "--robustness", "--digits", "30", "--seed", "1", "--data", str(mnist_dir)]
    assert main(args + ["--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("distortion") and "accuracy" in line for line in lines)
    assert sum(line.split()[0] in DISTORTIONS for line in lines[:-1] if line.split()) == len(DISTORTIONS)
    out = json.loads(lines[-1])
    assert out["robustness"]["digits"] == 30 and out["robustness"]["seed"] == 1
    assert set(out["robustness"]["accuracy"]) == set(DISTORTIONS)
    assert main(["evaluate", str(DEFAULT_MODEL), "--digits", "30", "--data", str(mnist_dir)]) == 2
    assert main(args[:3] + ["--digits", "0", "--data", str(mnist_dir)]) == 1


def test_cli_records_the_rows_in_the_model_card(mnist_dir, tmp_path, capsys):
    """--card writes the measured rows into the .onnx's card (how the shipped cards get theirs),
    leaving the rest of the card as it was; a file without a card is refused before measuring."""
    import shutil

    from core.cli import main
    from core.inference import EXPORT_DIR, read_card

    onnx_path = tmp_path / "mnist-fast.onnx"
    shutil.copy(EXPORT_DIR / "mnist-fast.onnx", onnx_path)
    before = json.loads((EXPORT_DIR / "mnist-fast.json").read_text())
    before.pop("robustness", None)
    (tmp_path / "mnist-fast.json").write_text(json.dumps(before))
    args = ["evaluate", str(onnx_path), "--robustness", "--digits", "20", "--seed", "2", "--data", str(mnist_dir)]
    assert main(args + ["--card", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["robustness"]
    card = read_card(onnx_path)
    rob = card.pop("robustness")
    assert card == before  # nothing else changed
    assert rob["digits"] == 20 and rob["seed"] == 2 and rob["accuracy"] == report["accuracy"]
    assert set(rob["accuracy"]) == set(DISTORTIONS)

    (tmp_path / "mnist-fast.json").unlink()
    assert main(args + ["--card"]) == 2
    assert "no model card" in capsys.readouterr().err
    assert main(["evaluate", str(onnx_path), "--card", "--data", str(mnist_dir)]) == 2  # needs --robustness
