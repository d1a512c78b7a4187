"""core.insights on a really trained model and real MNIST digits."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from core import insights as I
from core.models import build_model


@pytest.fixture(scope="module")
def trained(trained_model):
    """The session's trained_run model: `fast` after 150 steps on real MNIST (about 98% test accuracy).
    The faithfulness bars below were measured on a model trained exactly so."""
    return trained_model


def test_first_layer_filters_are_the_first_weights():
    for name, shape in (("fast", (16, 3, 3)), ("classic", (32, 3, 3)), ("mlp", (128, 28, 28))):
        model = build_model(name)
        filters = I.first_layer_filters(model)
        assert filters.shape == shape
        w = I.first_layer(model).weight.detach().numpy()
        np.testing.assert_array_equal(filters.reshape(len(filters), -1), w.reshape(len(w), -1))
    shown = I.to_unit(filters, symmetric=True)
    assert shown.min() >= 0 and shown.max() <= 1
    # 0 stays mid-grey and the strongest weight of each filter reaches 0 or 1
    assert np.allclose(I.to_unit(np.zeros((1, 3, 3)), symmetric=True), 0.5)
    assert np.allclose(np.abs(shown - 0.5).reshape(len(shown), -1).max(1), 0.5)


def test_activations_have_each_groups_maps_and_end_in_the_logits(trained, mnist):
    image = mnist.test_images[0]
    acts = I.activations(trained, image)
    assert {k: v.shape for k, v in acts.items()} == {
        "block1": (16, 14, 14), "block2": (32, 7, 7), "block3": (64, 3, 3), "head": (10,)}
    with torch.no_grad():
        logits = trained(image[None, None].float() / 255)[0].numpy()
    np.testing.assert_allclose(acts["head"], logits, rtol=1e-5, atol=1e-5)
    assert acts["block1"].min() >= 0  # after ReLU
    top = I.top_channels(acts["block2"], 5)
    means = acts["block2"].mean((1, 2))
    assert list(top) == list(np.argsort(-means)[:5])
    # classic's conv2 group ends in Flatten: its maps are still shown as maps
    classic = {k: v.shape for k, v in I.activations(build_model("classic"), image).items()}
    assert classic == {"conv1": (32, 26, 26), "conv2": (64, 12, 12), "fc1": (128,), "head": (10,)}


def _deletion_drop(model, images, labels, maps, frac=0.15, seed=0):
    """Mean drop of the true-class logit after erasing the `frac` ink pixels the maps rank
    highest, and after erasing the same number of random ink pixels."""
    rng = np.random.default_rng(seed)
    x = images.float().div(255).numpy()  # [N,28,28]
    by_map, by_chance = x.copy(), x.copy()
    for i in range(len(x)):
        ink = np.flatnonzero(x[i].ravel() > 0.3)
        k = max(1, int(frac * len(ink)))
        by_map[i].ravel()[ink[np.argsort(-maps[i].ravel()[ink])[:k]]] = 0
        by_chance[i].ravel()[rng.choice(ink, k, replace=False)] = 0

    def logit(a):
        with torch.no_grad():
            out = model(torch.from_numpy(a)[:, None])
        return out[torch.arange(len(labels)), labels].numpy()

    base = logit(x)
    return float((base - logit(by_map)).mean()), float((base - logit(by_chance)).mean())


def test_saliency_and_gradcam_point_at_the_strokes_that_matter(trained, mnist):
    images, labels = mnist.test_images[:48], mnist.test_labels[:48]
    sal, cam = [], []
    for img, y in zip(images, labels):
        s, t = I.saliency(trained, img, target=int(y))
        c, t2, group = I.grad_cam(trained, img, target=int(y))
        assert s.shape == c.shape == (28, 28) and t == t2 == int(y)
        assert 0 <= s.min() and s.max() <= 1 and 0 <= c.min() and c.max() <= 1
        sal.append(s)
        cam.append(c)
    assert group == "block2"  # the last conv group with maps of at least 7x7
    # Faithfulness: erasing the pixels a map ranks highest hurts the prediction
    # more than erasing as many random ink pixels. Grad-CAM's 7x7 maps are
    # coarser than pixel gradients, hence its lower bar (measured: 2.5x and 1.8x).
    for maps, bar in ((np.stack(sal), 1.5), (np.stack(cam), 1.2)):
        ranked, random = _deletion_drop(trained, images, labels, maps)
        assert ranked > bar * random > 0


def test_attribution_targets_and_errors(trained, mnist):
    img = mnist.test_images[1]
    pred = int(trained(img[None, None].float() / 255).argmax())
    assert I.saliency(trained, img)[1] == pred
    assert I.grad_cam(trained, img)[1] == pred
    other = I.grad_cam(trained, img, target=(pred + 1) % 10, group="block3")
    assert other[1] == (pred + 1) % 10 and other[2] == "block3"
    with pytest.raises(ValueError, match="target class"):
        I.saliency(trained, img, target=10)
    with pytest.raises(ValueError, match="no feature maps"):
        I.grad_cam(trained, img, group="head")
    with pytest.raises(ValueError, match="saliency"):
        I.grad_cam(build_model("mlp"), img)
    rgb = I.overlay(img, I.grad_cam(trained, img)[0])
    assert rgb.shape == (28, 28, 3) and rgb.dtype == np.uint8
    assert I.upscale(rgb, 4).shape == (112, 112, 3)


def test_colorize_ramp_is_monotonic_in_brightness():
    rgb = I.colorize(np.linspace(0, 1, 50)[None]).astype(float)[0]
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(luma) >= -1.0)
    assert tuple(I.colorize(np.array([[np.nan, 2.0]]))[0, 1]) == (252, 255, 164)


def test_confusion_views_agree_with_evaluate(trained, mnist):
    from core.evaluate import evaluate

    report = evaluate(trained, mnist.test_images[:2000], mnist.test_labels[:2000])
    labels, probs = mnist.test_labels[:2000].numpy(), report["probs"]
    cm = np.array(report["confusion"])
    rows = I.confusion_rows(cm)
    assert len(rows) == 100 and sum(r["count"] for r in rows) == 2000
    for r in rows:
        idx = I.confusion_cell(labels, probs, r["true"], r["pred"], limit=10_000)
        assert len(idx) == r["count"] == cm[r["true"], r["pred"]]
        assert np.all(np.diff(probs[idx, r["pred"]]) <= 0)  # most confident first
    t, p = max(((r["true"], r["pred"]) for r in rows if r["true"] != r["pred"]), key=lambda tp: cm[tp])
    top = I.confusion_cell(labels, probs, t, p, limit=3)
    assert [m["index"] for m in report["mistakes"] if m["label"] == t and m["pred"] == p][:3] == list(top)


def test_torch_weights_rebuilt_from_an_onnx_export_match_onnxruntime(trained, mnist, tmp_path):
    import onnxruntime as ort

    path = tmp_path / "m.onnx"
    # A contiguous copy, as core.export.to_onnx exports: torch.export cannot trace fast's channels_last
    # conv -> max-pool with a batch-1 example and a dynamic batch ("Invalid ranges [2:1]").
    plain = copy.deepcopy(trained).cpu().to(memory_format=torch.contiguous_format).eval()
    torch.onnx.export(plain, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=True,
                      input_names=["image"], output_names=["logits"], opset_version=18,
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False)
    rebuilt = I.torch_model_for(path)  # no .safetensors beside it: from the initializers
    assert rebuilt is not trained and type(rebuilt).__name__ == "Fast"
    x = mnist.test_images[:256].float().div(255)[:, None]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        got = rebuilt(x).numpy()
    assert np.abs(ref - got).max() < 1e-4
    assert (ref.argmax(1) == got.argmax(1)).all()
    # and the maps drawn from it are those of the original model
    np.testing.assert_allclose(I.grad_cam(rebuilt, x[0])[0], I.grad_cam(trained, x[0])[0], atol=1e-4)

    # As a fine-tuning base: the exporter folded BatchNorm into the convs; calibrated on
    # real training digits, the rebuilt BNs also behave in train mode (batch statistics)
    # like the original ones, and eval mode is unchanged.
    ckpt = I.checkpoint_for(path, calibration=mnist.train_images[:2048])
    assert ckpt.model_config.name == "fast" and ckpt.path == path
    with torch.no_grad():
        assert np.abs(ckpt.model.eval()(x).numpy() - ref).max() < 1e-4
        want = copy.deepcopy(trained).train()(x).argmax(1)  # train mode updates BN buffers: use a copy
        got_train = ckpt.model.train()(x).argmax(1)
    assert (got_train == want).float().mean() > 0.99


def test_onnx_files_that_are_not_ours_are_refused(tmp_path):
    bad = tmp_path / "junk.onnx"
    bad.write_bytes(b"this is not a protobuf")
    with pytest.raises(I.InsightError, match="not a readable ONNX"):
        I.torch_model_for(bad)
    with pytest.raises(I.InsightError, match="no such"):
        I.torch_model_for(tmp_path / "missing.onnx")
    # a valid ONNX graph whose weights fit none of the architectures
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((10, 784), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["W"], ["Wt"]), helper.make_node("Flatten", ["image"], ["f"]),
         helper.make_node("MatMul", ["f", "Wt"], ["logits"])], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])], [w])
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(other))
    with pytest.raises(I.InsightError, match="fit none"):
        I.torch_model_for(other)
