"""What a model looks at: first-layer filters, activation maps, saliency and Grad-CAM.

Every function takes a torch MNISTModel and one digit (float [28,28] in [0,1],
uint8 [28,28], or float [1,1,28,28]) and returns numpy arrays ready to draw.
The shipped models are ONNX files; `torch_model_for` gets torch weights for
them (a sibling .safetensors checkpoint, else the ONNX initializers, checked
against onnxruntime before they are trusted).

Also here: small views of an evaluation that the Evaluate page draws (the
digits behind one confusion-matrix cell), so pages hold no array maths.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .evaluate import as_float_batch
from .files import check_model_file
from .inference import read_card
from .models import MODELS, MNISTModel, ModelConfig, build_model


class InsightError(ValueError):
    """No torch weights can be found or trusted for a model file."""


def as_input(image) -> torch.Tensor:
    """One digit -> float32 [1,1,28,28] in [0,1]."""
    x = as_float_batch(image)
    if len(x) != 1:
        raise ValueError(f"expected one digit, got a batch of {len(x)}")
    return x.float()


# ------------------------------------------------------------------ layers

def _leaves(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if not list(m.children())]


def first_layer(model: MNISTModel) -> nn.Module:
    """The first Conv2d or Linear the input meets."""
    for _, m in _leaves(model.groups):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return m
    raise ValueError("model has no Conv2d or Linear layer")


def first_layer_filters(model: MNISTModel) -> np.ndarray:
    """First-layer weights as images: conv -> [C,kh,kw] (one per input channel 0);
    a Linear on the flattened 28x28 input (the MLP) -> [units,28,28]."""
    layer = first_layer(model)
    w = layer.weight.detach().float().cpu()
    if isinstance(layer, nn.Conv2d):
        return w[:, 0].numpy()
    if w.shape[1] == 28 * 28:
        return w.reshape(-1, 28, 28).numpy()
    raise ValueError(f"first Linear layer takes {w.shape[1]} inputs, not a 28x28 image")


@torch.no_grad()
def first_layer_responses(model: MNISTModel, image) -> np.ndarray | None:
    """What each first-layer filter makes of one digit: the first conv's output
    [C,H,W] (before BatchNorm and ReLU), or None for a model that starts with a Linear."""
    layer = first_layer(model)
    if not isinstance(layer, nn.Conv2d):
        return None
    out: list[torch.Tensor] = []
    h = layer.register_forward_hook(lambda m, i, o: out.append(o.detach().float().cpu().clone()))
    try:
        model.eval()
        model(as_input(image).to(_device(model)))
    finally:
        h.remove()
    return out[0][0].numpy()


def to_unit(maps: np.ndarray, symmetric: bool = False) -> np.ndarray:
    """Scale each map (leading axis) into [0,1] for display.

    symmetric: 0 maps to 0.5, so positive and negative weights read as
    brighter and darker than grey (filters); otherwise min-max (activations)."""
    maps = np.asarray(maps, dtype=np.float32)
    flat = maps.reshape(len(maps), -1)
    if symmetric:
        scale = np.abs(flat).max(1)
        scale[scale == 0] = 1.0
        out = 0.5 + 0.5 * flat / scale[:, None]
    else:
        lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
        out = (flat - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
    return out.reshape(maps.shape).astype(np.float32)


def _feature_modules(model: MNISTModel) -> "OrderedDict[str, tuple[str, tuple]]":
    """group name -> (qualified name, output shape) of the last leaf in it whose
    output is a 4-D feature map (so a group that ends in Flatten still shows its maps)."""
    shapes: dict[str, tuple] = {}
    hooks = []
    for gname, group in model.groups.items():
        for lname, leaf in _leaves(group):
            key = f"{gname}.{lname}" if lname else gname
            hooks.append(leaf.register_forward_hook(
                lambda m, i, o, key=key: shapes.__setitem__(key, tuple(o.shape))))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 1, 28, 28, device=_device(model)))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    out: OrderedDict[str, tuple[str, tuple]] = OrderedDict()
    for key, shape in shapes.items():  # dicts keep execution order
        if len(shape) == 4:
            out[key.split(".", 1)[0]] = (key, shape[1:])
    return out


def _module(model: MNISTModel, key: str) -> nn.Module:
    group, _, rest = key.partition(".")
    m = model.groups[group]
    return m.get_submodule(rest) if rest else m


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def conv_groups(model: MNISTModel) -> "OrderedDict[str, tuple]":
    """Layer groups that produce 2-D feature maps (what Grad-CAM can look at) -> map shape [C,H,W]."""
    return OrderedDict((g, shape) for g, (_, shape) in _feature_modules(model).items())


def default_cam_group(model: MNISTModel) -> str | None:
    """The last conv group whose maps are at least 7x7: the deepest one is the most
    semantic, but at 3x3 its heat map is too coarse to point at a stroke."""
    groups = conv_groups(model)
    fine = [g for g, shape in groups.items() if min(shape[1:]) >= 7]
    return (fine or list(groups) or [None])[-1]


@torch.no_grad()
def activations(model: MNISTModel, image) -> "OrderedDict[str, np.ndarray]":
    """group name -> its output for one digit: feature maps [C,H,W] for conv
    groups, a vector [D] for the rest (the head's is the logits [10])."""
    feature = _feature_modules(model)
    model.eval()
    caught: dict[str, torch.Tensor] = {}
    hooks = []
    for gname, group in model.groups.items():
        target = _module(model, feature[gname][0]) if gname in feature else group
        # clone: a later in-place ReLU must not change what we stored
        hooks.append(target.register_forward_hook(
            lambda m, i, o, g=gname: caught.__setitem__(g, o.detach().float().cpu().clone())))
    try:
        model(as_input(image).to(_device(model)))
    finally:
        for h in hooks:
            h.remove()
    return OrderedDict((g, caught[g][0].numpy()) for g in model.groups if g in caught)


def top_channels(maps: np.ndarray, k: int = 16) -> np.ndarray:
    """Indices of the k channels of [C,H,W] maps with the largest mean activation, strongest first."""
    score = np.asarray(maps).reshape(len(maps), -1).mean(1)
    return np.argsort(-score, kind="stable")[:k]


# ------------------------------------------------------------------ attribution

def _target_class(logits: torch.Tensor, target: int | None) -> int:
    if target is None:
        return int(logits.argmax(1).item())
    if not 0 <= int(target) < logits.shape[1]:
        raise ValueError(f"target class must be in [0, {logits.shape[1] - 1}], got {target}")
    return int(target)


def saliency(model: MNISTModel, image, target: int | None = None, samples: int = 16,
             noise: float = 0.1, seed: int = 0) -> tuple[np.ndarray, int]:
    """SmoothGrad: |d logit[target] / d pixel| averaged over `samples` noisy copies
    (plain gradients are speckled). Returns (map [28,28] in [0,1], target class)."""
    model.eval()
    x = as_input(image).to(_device(model))
    with torch.no_grad():
        target = _target_class(model(x), target)
    g = torch.Generator().manual_seed(seed)
    n = max(1, samples)
    eps = torch.randn((n, 1, 28, 28), generator=g).to(x.device) * noise
    eps[0] = 0  # always include the clean image
    xs = (x + eps).requires_grad_(True)  # [n,1,28,28]
    with torch.enable_grad():
        logits = model(xs)
        grad, = torch.autograd.grad(logits[:, target].sum(), xs)
    sal = grad.abs().mean(0)[0].cpu().numpy()  # [28,28]
    return to_unit(sal[None])[0], target


def grad_cam(model: MNISTModel, image, target: int | None = None,
             group: str | None = None) -> tuple[np.ndarray, int, str]:
    """Grad-CAM on a conv group's feature maps A [C,h,w]: weights = mean gradient
    of logit[target] over each map, cam = ReLU(sum_c w_c A_c), upsampled to 28x28.

    group: defaults to default_cam_group(model). Returns
    (cam [28,28] in [0,1], target class, group used)."""
    feature = _feature_modules(model)
    if not feature:
        raise ValueError("Grad-CAM needs convolutional feature maps; this model has none (use saliency)")
    group = group or default_cam_group(model)
    if group not in feature:
        raise ValueError(f"no feature maps in group {group!r}; choose one of {', '.join(feature)}")
    model.eval()
    store: dict[str, torch.Tensor] = {}

    def hook(m, i, o):
        store["a"] = o
        return o.clone()  # downstream in-place ops touch the clone, not what we differentiate

    h = _module(model, feature[group][0]).register_forward_hook(hook)
    x = as_input(image).to(_device(model)).requires_grad_(True)  # makes A part of the graph
    try:
        with torch.enable_grad():
            logits = model(x)
            target = _target_class(logits.detach(), target)
            a = store["a"]
            grad, = torch.autograd.grad(logits[0, target], a)
    finally:
        h.remove()
    weights = grad[0].mean(dim=(1, 2))  # [C]
    cam = F.relu((weights[:, None, None] * a[0].detach()).sum(0))  # [h,w]
    cam = F.interpolate(cam[None, None], size=(28, 28), mode="bilinear", align_corners=False)[0, 0]
    cam = cam.cpu().numpy()
    return (cam / cam.max() if cam.max() > 0 else cam).astype(np.float32), target, group


# A perceptual dark-to-bright ramp (black, purple, orange, yellow), like "inferno".
_RAMP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                  [245, 125, 21], [250, 193, 39], [252, 255, 164]], np.float32)


def colorize(values: np.ndarray) -> np.ndarray:
    """[H,W] in [0,1] -> RGB uint8 [H,W,3] on the ramp above."""
    v = np.clip(np.nan_to_num(np.asarray(values, np.float32)), 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int)
    hi = np.minimum(lo + 1, len(_RAMP) - 1)
    t = (v - lo)[..., None]
    return np.rint(_RAMP[lo] * (1 - t) + _RAMP[hi] * t).astype(np.uint8)


def overlay(image, heat: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The digit in grey with a heat map blended on top: RGB uint8 [28,28,3]."""
    gray = as_input(image)[0, 0].cpu().numpy()  # [28,28] in [0,1]
    base = np.repeat(gray[..., None] * 255.0, 3, axis=2)
    return np.rint((1 - alpha) * base + alpha * colorize(heat)).clip(0, 255).astype(np.uint8)


def upscale(image: np.ndarray, factor: int = 8) -> np.ndarray:
    """Nearest-neighbour enlarge [H,W] or [H,W,3] so browsers show crisp pixels, not blur."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def mosaic(maps: np.ndarray, columns: int = 8, factor: int = 6, symmetric: bool = False,
           color: bool = False, gap: int | None = None) -> np.ndarray:
    """Tile maps [N,H,W] (each scaled by to_unit) into one RGB image with dark gaps,
    upscaled by `factor`: one st.image instead of N. -> uint8 [H',W',3]."""
    gap = max(2, min(6, factor // 3)) if gap is None else gap
    maps = to_unit(np.asarray(maps, np.float32), symmetric)
    n, h, w = maps.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    H, W = h * factor, w * factor
    out = np.full((rows * (H + gap) - gap, columns * (W + gap) - gap, 3), 24, np.uint8)
    for i, m in enumerate(maps):
        tile = colorize(m) if color else np.repeat(np.rint(m * 255).astype(np.uint8)[..., None], 3, 2)
        r, c = divmod(i, columns)
        out[r * (H + gap):r * (H + gap) + H, c * (W + gap):c * (W + gap) + W] = upscale(tile, factor)
    return out


# ------------------------------------------------------------------ evaluation views

def confusion_cell(labels, probs: np.ndarray, true: int, pred: int, limit: int = 40) -> np.ndarray:
    """Indices of the digits labelled `true` and predicted `pred`, most confident first."""
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs)
    idx = np.flatnonzero((labels == true) & (probs.argmax(1) == pred))
    return idx[np.argsort(-probs[idx, pred], kind="stable")][:limit]


def confusion_rows(confusion) -> list[dict]:
    """cm[true][pred] -> long-form rows (true, pred, count, share of the true class) for a heatmap."""
    cm = np.asarray(confusion, dtype=np.int64)
    totals = np.maximum(cm.sum(1), 1)
    return [{"true": t, "pred": p, "count": int(cm[t, p]), "share": float(cm[t, p] / totals[t])}
            for t in range(cm.shape[0]) for p in range(cm.shape[1])]


# ------------------------------------------------------------------ weights for ONNX models

def _onnx_initializers(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    from .inference import MAX_MODEL_BYTES

    check_model_file(path, MAX_MODEL_BYTES, InsightError, "model file")  # before onnx parses it
    try:
        # External data (a .onnx.data file beside it) is read from the model's own folder only.
        proto = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - any parse failure means "not a usable ONNX file"
        raise InsightError(f"{path.name}: not a readable ONNX model ({e.__class__.__name__})") from None
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def _state_from_onnx(model: MNISTModel, init: dict[str, np.ndarray]):
    """(state_dict for `model` from ONNX initializers, names of folded BatchNorms), or None if they do not fit.

    The exporter keeps parameter names. Its optimizer may fold each BatchNorm
    into the conv before it (weight W', bias "<conv>.weight_bias"); such a BN is
    then set to pass x + b' through (mean 0, var 1-eps, scale 1, shift b'), so
    conv + BN computes W'x + b' exactly, as the ONNX graph does."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    done, folded = set(), []
    prev: tuple[str, nn.Module] | None = None
    for name, m in model.named_modules():
        if list(m.children()):
            continue
        if isinstance(m, nn.BatchNorm2d) and prev is not None and isinstance(prev[1], nn.Conv2d) \
                and f"{name}.weight" not in init and f"{prev[0]}.weight_bias" in init:
            bias = init[f"{prev[0]}.weight_bias"]
            if bias.shape != tuple(state[f"{name}.bias"].shape):
                return None
            state[f"{name}.running_mean"].zero_()
            state[f"{name}.running_var"].fill_(1.0 - m.eps)
            state[f"{name}.weight"].fill_(1.0)
            state[f"{name}.bias"] = torch.from_numpy(bias.astype(np.float32).copy())
            done.update(f"{name}.{k}" for k in ("running_mean", "running_var", "weight", "bias",
                                                 "num_batches_tracked"))
            folded.append(name)
        prev = (name, m)
    for key, value in state.items():
        if key in done or key.endswith("num_batches_tracked"):
            continue
        if key not in init or tuple(init[key].shape) != tuple(value.shape):
            return None
        state[key] = torch.from_numpy(init[key].astype(np.float32).copy())
    return state, folded


@torch.no_grad()
def _calibrate_folded(model: MNISTModel, folded: list[str], images) -> None:
    """Give each folded BatchNorm (x + b') real statistics without changing what it computes.

    With the mean m and variance v of its input over real digits, scale
    sqrt(v+eps) and shift m+b' give the same output in eval mode, and in train
    mode (fine-tuning an unfrozen group) the batch statistics then normalise
    to about the same thing instead of rescaling every channel to unit variance."""
    if not folded:
        return
    mods = dict(model.named_modules())
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [mods[n].register_forward_hook(
        lambda m, i, o, n=n: stats.__setitem__(n, (i[0].mean((0, 2, 3)), i[0].var((0, 2, 3), unbiased=False))))
        for n in folded]
    try:
        model.eval()
        model(as_float_batch(images).float().to(_device(model)))
    finally:
        for h in hooks:
            h.remove()
    for n in folded:
        bn, (mean, var) = mods[n], stats[n]
        bn.bias.add_(mean)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)


def model_from_onnx(path: str | Path, check: bool = True, calibration=None) -> MNISTModel:
    """Rebuild a torch model from an ONNX file exported by this project.

    The architecture is found by trying each registered model against the
    initializers; with check=True the result must match onnxruntime's logits
    on a few probe images, or InsightError is raised (weights we cannot verify
    are never shown as if they were the model). calibration: real digits
    (uint8 [N,28,28]) to give folded BatchNorms statistics for fine-tuning."""
    path = Path(path)
    init = _onnx_initializers(path)
    for name in MODELS:
        model = build_model(ModelConfig(name=name))
        fitted = _state_from_onnx(model, init)
        if fitted is None:
            continue
        state, folded = fitted
        model.load_state_dict(state, strict=True)
        model.eval()
        if calibration is not None:
            _calibrate_folded(model, folded, calibration)
        if check:
            _check_against_onnx(model, path)
        return model
    raise InsightError(f"{path.name}: its weights fit none of the models ({', '.join(MODELS)})")


def _check_against_onnx(model: MNISTModel, path: Path, tol: float = 1e-3) -> None:
    import onnxruntime as ort

    g = torch.Generator().manual_seed(0)
    x = torch.rand((4, 1, 28, 28), generator=g)
    x[0] = 0  # a blank canvas, and a centred bar
    x[1] = 0
    x[1, 0, 4:24, 12:16] = 1
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        got = model(x).numpy()
    err = float(np.abs(ref - got).max())
    if not np.isfinite(err) or err > tol:
        raise InsightError(f"{path.name}: torch weights rebuilt from the ONNX file disagree with "
                           f"onnxruntime (max |Δ logit| {err:.3g})")


def checkpoint_for(path: str | Path, device: torch.device | str = "cpu", calibration=None):
    """A core.checkpoint.Checkpoint for a model file: a checkpoint (.safetensors or
    run folder) loads directly; an .onnx file uses the .safetensors beside it if
    there is one, else its own initializers (verified against onnxruntime), with
    the test accuracy from its model card as the metrics."""
    from .checkpoint import Checkpoint, CheckpointError, load_checkpoint

    path = Path(path)
    if path.suffix == ".onnx":
        sibling = path.with_suffix(".safetensors")
        if sibling.is_file():
            try:
                return load_checkpoint(sibling, device)
            except CheckpointError:
                pass  # fall back to the ONNX file's own weights
        if not path.is_file():
            raise InsightError(f"{path.name}: no such model file")
        model = model_from_onnx(path, calibration=calibration).to(device)
        arch = next(n for n, cls in MODELS.items() if type(model) is cls)
        metrics = {}
        card = read_card(path) or {}
        if isinstance(card.get("accuracy"), (int, float)):
            metrics["test_acc"] = float(card["accuracy"])
        return Checkpoint(model, ModelConfig(name=arch), {}, metrics, path)
    try:
        return load_checkpoint(path, device)
    except CheckpointError as e:
        raise InsightError(str(e)) from None


def torch_model_for(path: str | Path, device: torch.device | str = "cpu") -> MNISTModel:
    """checkpoint_for(path).model: torch weights for a run, checkpoint or .onnx file."""
    return checkpoint_for(path, device).model
