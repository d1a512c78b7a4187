"""Temperature scaling: calibrated probabilities without changing a single answer.

    t = fit_temperature(val_logits, val_labels)   # one number, fitted on held-out digits
    calibrated = fold_temperature(model, t)       # computes model(x) / t

Why temperature scaling and not a richer method (vector/matrix scaling, isotonic
regression): dividing every logit by the same positive T never changes which
logit is largest, so accuracy, the confusion matrix and every answer the app
shows stay exactly as they were; only the confidence moves. One parameter also
cannot overfit 5,000 validation digits. `accurate` is trained with label
smoothing 0.1, which makes it systematically under-confident (ECE ~9%): a T < 1
sharpens its probabilities back to what its accuracy supports.

T is fitted on the validation split that training held out (core.data.split_validation
with the run's own val_size and seed), never on training digits (where the model is
over-confident) and never on test digits (where it is measured).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

T_BOUNDS = (0.05, 20.0)  # a temperature outside this means something else is broken


class CalibrationError(ValueError):
    """No digits to fit a temperature on, or a model without a linear head."""


def head_linear(model: nn.Module) -> nn.Linear:
    """The last nn.Linear of the model's head group: the layer that produces the logits."""
    head = model.groups["head"] if hasattr(model, "groups") and "head" in model.groups else model
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise CalibrationError("the model's head has no linear layer to fold a temperature into")
    return linears[-1]


@torch.no_grad()
def fold_temperature(model: nn.Module, temperature: float) -> nn.Module:
    """A copy of model whose logits are model(x) / temperature.

    The division is folded into the last linear layer (W/T, b/T), which computes exactly
    (Wx + b)/T. Folding instead of appending a Div node keeps the graph's parameter names
    and structure, so core.insights can still rebuild torch weights from the exported
    ONNX file (the Insights and Fine-tune pages start from shipped models that way), and
    the fp16/int8 variants, converted from this graph, inherit the temperature."""
    if not (T_BOUNDS[0] <= temperature <= T_BOUNDS[1]):
        raise CalibrationError(f"temperature {temperature:g} is outside {T_BOUNDS}")
    out = copy.deepcopy(model)
    lin = head_linear(out)
    lin.weight.div_(temperature)
    if lin.bias is not None:
        lin.bias.div_(temperature)
    return out


def fit_temperature(logits, labels) -> float:
    """The T minimising the mean NLL of softmax(logits / T) on (logits, labels).

    LBFGS on log T (so T stays positive), in float64 on the CPU; NLL is smooth and
    one-dimensional here, so this converges in a handful of steps."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(y) == 0:
        raise CalibrationError("no validation digits to fit a temperature on")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return float(min(max(t, T_BOUNDS[0]), T_BOUNDS[1]))


def nll(logits, labels) -> float:
    """Mean negative log-likelihood of the true labels under softmax(logits)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if len(z) == 0:
        return 0.0
    return float(F.cross_entropy(z, torch.as_tensor(np.asarray(labels), dtype=torch.long)))


def validation_split(data, train_config: dict | None = None):
    """The digits training held out: (images uint8 [N,28,28], labels [N]), from the run's own
    val_size and seed (TrainConfig's defaults for a model whose config is unknown, which is how
    the shipped models were trained)."""
    from .data import split_validation
    from .train import TrainConfig

    cfg = TrainConfig.from_dict(train_config or {})
    _, _, vx, vy = split_validation(data.train_images, data.train_labels, cfg.val_size, seed=cfg.seed)
    return vx, vy


def calibrate(model: nn.Module, data, train_config: dict | None = None) -> tuple[nn.Module, dict]:
    """Fit T on the run's validation split -> (calibrated copy of model, summary).

    summary: method, temperature, fitted_on, and the validation NLL before and after."""
    from .evaluate import TorchPredictor

    vx, vy = validation_split(data, train_config)
    if len(vy) == 0:
        raise CalibrationError("this run held out no validation digits, so there is nothing to fit a "
                               "temperature on without touching training or test digits; export with "
                               "--no-calibrate")
    logits = TorchPredictor(copy.deepcopy(model).to("cpu"), "cpu").logits(vx)
    labels = vy.numpy()
    t = fit_temperature(logits, labels)
    return fold_temperature(model, t), {
        "method": "temperature", "temperature": t, "fitted_on": f"validation ({len(labels):,} digits)",
        "val_nll_before": nll(logits, labels), "val_nll_after": nll(logits / t, labels)}
