"""The settings of a ``freqprobe train`` run and their checks: what the command needs before anything is loaded.

:class:`TrainSettings`, the presets of §5.1 and :func:`check_settings` (every name and number, one line each)
import neither torch nor numpy, so ``freqprobe train --help`` and the checks of a grid answer at once;
:mod:`freqprobe_train.train`, which trains, imports them from here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import freqprobe
from freqprobe import UnknownNameError, UserFacingError, get_class
from freqprobe.plugin import parse_component

#: the radii tracked by default (r in frequency bins, the paper's Figures 3-6)
DEFAULT_RADII = (4, 8, 12, 16)

#: ``--optimizer`` names and the names of their ``torch.optim`` classes (``freqprobe_train.train.OPTIMIZERS``: the classes)
OPTIMIZER_CLASSES = {"sgd": "SGD", "adam": "Adam", "adagrad": "Adagrad", "adadelta": "Adadelta", "rmsprop": "RMSprop"}

#: the paper's heuristics (§5.1), each one change to the vanilla set-up
PRESETS: dict[str, dict[str, Any]] = {
    "vanilla": {},
    "dropout": {"dropout": 0.5},
    "mixup": {"mixup": 0.5},
    "batchnorm": {"bn": True},
    "adversarial": {"adversarial": "pgd"},
}


@dataclasses.dataclass
class TrainSettings:
    """One training run (the vanilla set-up of §4.2 by default: Adam, lr 1e-4, batch 100, Xavier, [0,1] pixels)."""

    model: str
    data: str
    out: str | None = None
    data_root: str | None = None
    test_data: str | None = None
    holdout: float | None = None
    limit: int | None = None
    test_limit: int | None = None
    epochs: int = 10
    optimizer: str = "adam"
    lr: float = 1e-4
    batch_size: int = 100
    init: str = "xavier"
    seed: int = 0
    #: dropout p on fully connected layers (paper: 0.5); paper: models take ``dropout``, timm models ``drop_rate``
    dropout: float | None = None
    #: mixup alpha (paper: 0.5)
    mixup: float | None = None
    #: BatchNorm on/off for the paper's architectures (None: the architecture's default, off)
    bn: bool | None = None
    #: adversarial training: an attack spec of the attacks plugin (``pgd``, ``pgd:steps=7``), budget ``eps``
    adversarial: str | None = None
    eps: float = 8 / 255
    #: ``natural`` or ``shuffled`` (M_shuffle: labels permuted across the training samples with ``seed``)
    labels: str = "natural"
    #: train on a component instead of the originals: ``low:8``, ``high:4`` (Table 1)
    train_on: str | None = None
    #: how a component image is fed when training on it (Table 1: "normalized to the standard pixel scale")
    rescale: str = "minmax"
    radii: tuple = DEFAULT_RADII
    #: images tracked per split (None: the default, :func:`default_track_samples`; 0: all)
    track_samples: int | None = None
    track_batch_size: int = 500
    model_args: dict = dataclasses.field(default_factory=dict)
    mean: str | None = None
    std: str | None = None
    device: str = "auto"
    preset: str | None = None

    def applied(self) -> "TrainSettings":
        """The settings with the preset's changes applied (explicit values win)."""
        if not self.preset:
            return self
        if self.preset not in PRESETS:
            raise UnknownNameError("preset", self.preset, list(PRESETS))
        changes = {k: v for k, v in PRESETS[self.preset].items() if getattr(self, k) in (None, False)}
        return dataclasses.replace(self, **changes)

    def name(self) -> str:
        """The setting's short name: what differs from the vanilla set-up (``vanilla``, ``mixup0.5-bs500``...)."""
        parts = []
        if self.train_on:
            parts.append(self.train_on.replace(":", "-r"))
        if self.labels != "natural":
            parts.append(self.labels)
        if self.dropout:
            parts.append(f"dropout{self.dropout:g}")
        if self.mixup:
            parts.append(f"mixup{self.mixup:g}")
        if self.bn:
            parts.append("bn")
        if self.adversarial:
            parts.append("adv-" + self.adversarial.replace(":", "-").replace("=", "").replace(",", "-"))
        if self.optimizer != "adam":
            parts.append(self.optimizer)
        if self.lr != 1e-4:
            parts.append(f"lr{self.lr:g}")
        if self.batch_size != 100:
            parts.append(f"bs{self.batch_size}")
        if self.init != "xavier":
            parts.append(f"init-{self.init}")
        return "-".join(parts) or "vanilla"

    def fingerprint(self) -> dict:
        """What must match for ``--resume`` (everything but the epoch count, the output and the device)."""
        d = dataclasses.asdict(self)
        for k in ("epochs", "out", "device", "preset"):
            d.pop(k)
        d["radii"] = [float(r) for r in d["radii"]]
        return json.loads(json.dumps(d, default=str))


def check_settings(s: TrainSettings, pm) -> None:
    """Every name and number, before anything is loaded (one line each)."""
    for what, v in (("--epochs", s.epochs), ("--batch-size", s.batch_size), ("--track-batch-size", s.track_batch_size)):
        if not isinstance(v, int) or v < 1:
            raise UserFacingError(f"{what} must be a whole number of at least 1, got {v!r}")
    for what, v in (("--limit", s.limit), ("--test-limit", s.test_limit)):
        if v is not None and v < 1:
            raise UserFacingError(f"{what} must be at least 1, got {v}")
    if s.track_samples is not None and s.track_samples < 0:
        raise UserFacingError(f"--track-samples must be 0 (all) or more, got {s.track_samples}")
    if s.optimizer not in OPTIMIZER_CLASSES:
        raise UnknownNameError("optimizer", s.optimizer, list(OPTIMIZER_CLASSES))
    if not (math.isfinite(s.lr) and s.lr > 0):
        raise UserFacingError(f"--lr must be a positive number, got {s.lr!r}")
    if s.init not in ("xavier", "default"):
        raise UserFacingError(f"--init must be xavier (the paper's) or default (the model's own), got {s.init!r}")
    if s.labels not in ("natural", "shuffled"):
        raise UserFacingError(f"--labels must be natural or shuffled, got {s.labels!r}")
    if s.dropout is not None and not 0.0 <= s.dropout < 1.0:
        raise UserFacingError(f"--dropout must be in [0, 1), got {s.dropout!r}")
    if s.mixup is not None and not s.mixup > 0:
        raise UserFacingError(f"--mixup (alpha) must be positive, got {s.mixup!r}")
    if s.holdout is not None and s.test_data is not None:
        raise UserFacingError("pass either --holdout (split the data) or --test-data, not both")
    if not (math.isfinite(s.eps) and s.eps > 0):
        raise UserFacingError(f"--eps must be a positive number, got {s.eps!r}")
    parse_train_on(s.train_on)
    get_class("rescale", s.rescale, pm)
    if s.adversarial:
        attack_class(s.adversarial, pm)
    if s.bn is not None and not s.model.startswith("paper:"):
        raise UserFacingError(f"--bn/--no-bn switches BatchNorm in the paper's architectures (paper:NAME), not in {s.model}; "
                              "pick a model with or without BatchNorm instead")


def attack_class(spec: str, pm) -> tuple[type, dict[str, Any]]:
    """``pgd:steps=7`` -> (the attack class some plugin registers, its checked options); an unknown one is one line."""
    name, given = parse_component(spec, "--adversarial")
    try:
        cls = get_class("attacks", name, pm)
    except UnknownNameError as exc:
        if freqprobe.collect("attacks", pm):
            raise
        raise UserFacingError(f"{exc} --adversarial takes its attacks from a plugin, e.g. freqprobe-attacks, which is "
                              "not installed or is switched off") from None
    return cls, cls.check_options(given)


def parse_train_on(text: str | None) -> tuple[str, float] | None:
    """``low:8`` -> ("low", 8.0)."""
    if not text:
        return None
    comp, sep, r = text.partition(":")
    try:
        radius = float(r)
    except ValueError:
        radius = float("nan")
    if comp not in ("low", "high") or not sep or not (radius > 0 and math.isfinite(radius)):
        raise UserFacingError(f"--train-on must be low:R or high:R with a positive radius (e.g. low:8), got {text!r}")
    return comp, radius
