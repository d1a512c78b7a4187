"""Training configuration: the dataclass saved next to the weights, its presets and limits.

No torch here: the web server builds and validates configs (the Train page's form, the executor's
submit) without importing torch; the training itself happens in worker processes (core.train).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from .data import validation_size

# The model registry's names and one-line descriptions, in menu order (core.models.MODELS has
# the classes and takes its descriptions from here).
MODEL_INFO: dict[str, str] = {
    "mlp": "A fully connected net, 784-128-10 (the classic MNIST baseline).",
    "classic": "pytorch/examples' MNIST CNN: conv32, conv64, max-pool, dropout, fc128 (1.2M params).",
    "fast": "Small BatchNorm CNN tuned for the shortest time to 99% on a CPU (default for live demos).",
    "accurate": "Deeper BatchNorm CNN (two convs per stage), trained with augmentation for the best accuracy.",
}


# Per-model recipes. "classic" is pytorch/examples' MNIST recipe (Adam 1e-3, batch 64, flat lr).
PRESETS: dict[str, dict] = {
    "mlp": dict(optimizer="adam", lr=2e-3, batch_size=128, schedule="onecycle"),
    "classic": dict(optimizer="adam", lr=1e-3, batch_size=64, schedule="constant"),
    "fast": dict(optimizer="sgd", lr=0.2, batch_size=128, schedule="onecycle"),
    "accurate": dict(optimizer="sgd", lr=0.1, batch_size=128, schedule="onecycle", weight_decay=5e-4,
                     label_smoothing=0.1, augment=True, epochs=20),
}

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
MIN_DEFAULT_STEPS = 200  # a default run on a small dataset gets at least this many steps

LIMITS = {  # allowed ranges, checked before any work starts
    # epochs reaches 100,000 because a few-shot fine-tune of 10 digits runs one step per epoch.
    "epochs": (1, 100_000), "batch_size": (1, 8192), "lr": (1e-6, 10.0), "head_lr": (1e-6, 10.0),
    "weight_decay": (0.0, 1.0), "label_smoothing": (0.0, 0.5), "momentum": (0.0, 0.999),
    "warmup": (0.0, 0.5), "max_steps": (1, 10_000_000), "val_size": (0, 59_000), "log_every": (1, 100_000),
}


@dataclass
class TrainConfig:
    model: str = "fast"
    epochs: int = 1
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd (nesterov) | adam | adamw
    lr: float = 0.2
    head_lr: float | None = None  # a different lr for the "head" group (fine-tuning)
    schedule: str = "onecycle"  # onecycle | cosine | constant
    warmup: float = 0.2  # fraction of steps spent warming up (onecycle)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    augment: bool = False
    # With augment: also the distortions of drawn digits (elastic, blur/low-res, marker and hairline
    # strokes, more rotation; core.augment.AugmentConfig.drawing), which core.robustness measures.
    drawing_augment: bool = False
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    max_steps: int | None = None  # cap for smoke tests and live demos
    val_size: int = 5000
    log_every: int = 1  # step events every N steps (each one syncs a GPU)
    channels_last: bool = True

    @classmethod
    def preset(cls, model: str = "fast", **overrides) -> "TrainConfig":
        """The model's recipe, then overrides (None values are ignored)."""
        base = dict(PRESETS.get(model, {}))
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(model=model, **base)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self) -> "TrainConfig":
        """Refuse bad hyperparameters up front, naming the allowed range."""
        if self.model not in MODEL_INFO:
            raise ValueError(f"model must be one of {', '.join(MODEL_INFO)}, got {self.model!r}")
        check_limits(self, LIMITS, optional=("max_steps", "head_lr"),
                     whole=("epochs", "batch_size", "max_steps", "val_size", "log_every"))
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be one of auto, cpu, cuda, got {self.device!r}")
        return self


def check_limits(cfg, limits: dict, optional: tuple = (), whole: tuple = ()) -> None:
    """Every field of cfg named in limits inside its [lo, hi] (None allowed for `optional`), the
    `whole` ones whole numbers, and cfg.optimizer / cfg.schedule known. Shared by TrainConfig
    and FinetuneConfig, so the two cannot drift apart."""
    for name, (lo, hi) in limits.items():
        v = getattr(cfg, name)
        if v is None and name in optional:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"{name} must be in [{lo:g}, {hi:g}], got {v!r}")
        if name in whole and not isinstance(v, int):
            raise ValueError(f"{name} must be a whole number, got {v!r}")
    for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}")


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """The ragged last batch is dropped (BatchNorm dislikes tiny ones); at least one step."""
    return max(1, n_train // min(batch_size, max(1, n_train)))


def total_steps(cfg: "TrainConfig", n_train: int) -> int:
    """How many steps fit() will run for cfg on n_train digits."""
    total = cfg.epochs * steps_per_epoch(n_train, cfg.batch_size)
    return min(total, cfg.max_steps) if cfg.max_steps else total


def default_epochs(model: str, n_images: int) -> int:
    """The preset's epochs for n_images training digits (before the validation split), raised so
    a run on a small dataset still gets MIN_DEFAULT_STEPS steps. On the offline 4,000-digit sample
    one epoch of `fast` is 28 steps and scored 67%; 6 epochs scored 97.9%, 8 about 98%."""
    p = TrainConfig.preset(model)
    n_train = n_images - validation_size(n_images, p.val_size)
    return max(p.epochs, math.ceil(MIN_DEFAULT_STEPS / steps_per_epoch(n_train, p.batch_size)))


# ------------------------------------------------------------------ fine-tuning targets
# (core.targets builds them with torch; these names and specs are plain data)

DEFAULT_ROTATION = 45.0  # degrees: far enough that a normal model fails on many digits
DEFAULT_NOISE = 0.5  # std of Gaussian pixel noise, in units of full ink (1.0 = 255)
BASE_CLASSES = (0, 1, 2, 3, 4)  # new-classes: what the base model is pretrained on
NEW_CLASSES = (5, 6, 7, 8, 9)  # ... and what it then learns from K shots each

# Shown by the CLI --help and the Fine-tune page.
TARGETS: dict[str, str] = {
    "inverted": "black ink on white paper",
    "rotated": f"every digit rotated by a fixed angle (rotated:DEG, default {DEFAULT_ROTATION:g} degrees)",
    "thick": "strokes thickened by a 3x3 dilation",
    "thin": "strokes thinned by a cross-shaped erosion",
    "noisy": f"Gaussian pixel noise (noisy:SIGMA, default {DEFAULT_NOISE:g} of full ink)",
    "new-classes": "a base that knows only digits 0-4 learns 5-9 from K shots each",
    "subset:N": "N plain MNIST training digits (no shift)",
    "user:DIR": "people's drawings saved as labeled samples (core.samples folder format)",
}


def parse_spec(spec: str) -> tuple[str, str | None]:
    """"rotated:90" -> ("rotated", "90"); "inverted" -> ("inverted", None)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("target is empty; choose one of " + ", ".join(TARGETS))
    kind, _, arg = spec.strip().partition(":")
    return kind, (arg if arg else None)


SHIFTS = {"rotated", "inverted", "thick", "thin", "noisy"}
KINDS = SHIFTS | {"new-classes", "subset", "user"}
