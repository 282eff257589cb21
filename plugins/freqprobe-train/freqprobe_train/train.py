"""``freqprobe train``: the paper's training set-ups (§4-5) with per-epoch low/high-frequency tracking.

One run = one :class:`TrainSettings`. The run folder gets, after every epoch: the tracked rows in
``curves.csv``, the epoch's checkpoint ``checkpoints/<setting>_epoch<NNN>.pt``, ``model.pt`` (the latest
weights, the format ``freqprobe run`` writes: state_dict plus the normalisation it was trained with),
``train_state.pt`` (what ``--resume`` needs: weights, optimizer, epoch) and ``manifest.json``. A stopped
run resumes from its last finished epoch; ``--epochs`` larger than before trains more.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import freqprobe
from freqprobe.checkpoint import save_model
from freqprobe.errors import UnknownNameError, UserFacingError
from freqprobe.journal import StopRequested, check_stop

from .data import RelabelledSource, all_labels, first, holdout_split, shuffled_labels
from .tracker import DEFAULT_RADII, FrequencyTracker, default_track_samples, read_curves, write_curves

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad,
              "adadelta": torch.optim.Adadelta, "rmsprop": torch.optim.RMSprop}

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
    if s.optimizer not in OPTIMIZERS:
        raise UnknownNameError("optimizer", s.optimizer, list(OPTIMIZERS))
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
    freqprobe.registry.get_class("rescale", s.rescale, pm)
    if s.adversarial:
        from freqprobe.runner import parse_attacks

        parse_attacks([s.adversarial], pm)
    if s.bn is not None and not s.model.startswith("paper:"):
        raise UserFacingError(f"--bn/--no-bn switches BatchNorm in the paper's architectures (paper:NAME), not in {s.model}; "
                              "pick a model with or without BatchNorm instead")


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


# ----------------------------------------------------------------------------- data and model
def open_splits(s: TrainSettings, pm) -> tuple[Any, Any, dict]:
    """(train, test, description): the data's train/test splits, or a seeded --holdout split of its one split."""
    from freqprobe.runner import open_data

    base_test = open_data(s.data, root=s.data_root, split="test", seed=s.seed, pm=pm)
    if s.holdout is not None:
        train, test = holdout_split(base_test, s.holdout, s.seed)
    elif base_test.has_split("train"):
        train = open_data(s.data, root=s.data_root, split="train", seed=s.seed, pm=pm)
        test = open_data(s.test_data, root=s.data_root, split="test", seed=s.seed, pm=pm) if s.test_data else base_test
    elif s.test_data:  # one split (an .npz): it is the training set, --test-data the test set
        train = base_test
        test = open_data(s.test_data, root=s.data_root, split="test", seed=s.seed, pm=pm)
    else:
        raise UserFacingError(f"{s.data} has no train split; pass --holdout FRACTION to split it (e.g. --holdout 0.2) "
                              "or --test-data DATA to train on all of it")
    train = first(train, s.limit, "--limit")
    test = first(test, s.test_limit, "--test-limit")
    if s.labels == "shuffled":
        train = RelabelledSource(train, shuffled_labels(all_labels(train), s.seed), f"labels shuffled seed {s.seed}")
    return train, test, {"train": train.describe(), "test": test.describe()}


def build_model(s: TrainSettings, train, pm):
    """The model to train (fresh weights; Xavier initialisation unless --init default), unnormalised unless --mean/--std."""
    args = dict(s.model_args)
    x0 = next(iter(train.batches(1))).images
    if s.model.startswith("paper:"):
        args.setdefault("in_chans", int(x0.shape[1]))
        args.setdefault("image_size", int(x0.shape[-1]))
        if s.bn is not None:
            args["bn"] = bool(s.bn)
        if s.dropout:
            args["dropout"] = float(s.dropout)
    elif s.dropout:
        if not s.model.startswith("timm:"):
            raise UserFacingError(f"--dropout needs a model that takes it: paper:ARCH (dropout on its fully connected "
                                  f"layers) or a timm model (drop_rate); {s.model} takes neither; pass --model-arg instead")
        args["drop_rate"] = float(s.dropout)
    torch.manual_seed(s.seed)
    adapter = freqprobe.build_model(s.model, model_args=args, num_classes=train.num_classes, mean=s.mean, std=s.std, pm=pm)
    if adapter.info.get("has_weights"):
        raise UserFacingError(f"{s.model} came with weights; freqprobe train starts from fresh weights (drop --pretrained)")
    if s.mean is None:  # the vanilla set-up: pixels in [0, 1], no normalisation (whatever timm's pretrained_cfg says)
        adapter.mean = adapter.std = None
        adapter._norm_cache = None
    if s.init == "xavier":
        from .archs import xavier_init

        xavier_init(adapter.module)
    return adapter, args


# ----------------------------------------------------------------------------- the loop
def _mixup(x, y, alpha: float, gen: torch.Generator, rng: np.random.Generator):
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    return lam * x + (1 - lam) * x[perm], y[perm], lam


def train(
    s: TrainSettings,
    out: Path,
    *,
    pm=None,
    resume: bool = False,
    say: Callable[[str], None] = print,
    progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
    command: str | None = None,
) -> dict:
    """Train one setting into ``out`` (see the module docstring); returns the manifest."""
    from freqprobe.runner import check_out_dir, resolve_device

    pm = pm or freqprobe.plugins.default_plugin_manager()
    s = s.applied()
    check_settings(s, pm)
    out = Path(out)
    state_file = out / "train_state.pt"
    start_epoch = 0
    from freqprobe import distributed

    d, dev = distributed.setup(s.device)  # torchrun: DistributedDataParallel, each rank a slice of every batch
    main = d is None or d.is_main
    if d is not None:
        import warnings

        s = dataclasses.replace(s, device=dev)
        # a size-1 dimension (a 1-channel first conv) has two valid strides: DDP's performance note, not a problem
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        if not main:
            say, progress = (lambda m: None), None
    if resume:
        if not state_file.is_file():
            raise UserFacingError(f"nothing to resume in {out} (no train_state.pt); leave out --resume to start a run there")
    elif main:
        check_out_dir(out)
    device = resolve_device(s.device)
    train_data, test_data, data_desc = open_splits(s, pm)
    adapter, model_args = build_model(s, train_data, pm)
    adapter.to(device)
    module = adapter.module
    opt = OPTIMIZERS[s.optimizer](module.parameters(), lr=s.lr)
    forward = adapter.forward
    if d is not None:
        ddp = torch.nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
        forward = lambda x: ddp(adapter.normalize(x))  # noqa: E731
    rows: list[dict] = []
    history: list[dict] = []
    if resume:
        saved = torch.load(state_file, map_location="cpu", weights_only=True)
        if saved["fingerprint"] != s.fingerprint():
            diff = sorted(k for k in s.fingerprint() if saved["fingerprint"].get(k) != s.fingerprint().get(k))
            raise UserFacingError(f"cannot resume {out}: it was trained with other settings ({', '.join(diff)} differ); "
                                  "repeat the original options (only --epochs may grow), or train into a new --out")
        start_epoch = int(saved["epoch"])
        if s.epochs <= start_epoch:
            raise UserFacingError(f"{out} has already been trained for {start_epoch} epochs; pass --epochs N with N > {start_epoch} "
                                  "to train more")
        module.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])  # every rank loads the same state
        history = list(saved.get("history", []))
        rows = [r for r in read_curves(out / "curves.csv") if r["epoch"] <= start_epoch]
        say(f"resuming {out} after epoch {start_epoch} of {s.epochs}")
    comp_r = parse_train_on(s.train_on)
    rescale = freqprobe.registry.get_class("rescale", s.rescale, pm)()
    dec = freqprobe.get_decomposer("fft-radial", pm)
    track_n = s.track_samples if s.track_samples is not None else default_track_samples(len(train_data))
    tracker = FrequencyTracker({"train": train_data, "test": test_data}, radii=s.radii, rescale=s.rescale if comp_r else "none",
                               samples=track_n or None, seed=s.seed, device=device, batch_size=s.track_batch_size,
                               channels_last=False if d is not None else None, pm=pm)
    attack = None
    if s.adversarial:
        from freqprobe.runner import parse_attacks

        (acls, aopts), = parse_attacks([s.adversarial], pm)
        attack = acls(adapter, eps=s.eps, seed=s.seed, **aopts)
        attack.fold_batchnorm = False  # the weights change every step: differentiate the model itself
    name = s.name()
    manifest = {
        "versions": freqprobe.runner.versions(), "command": command or " ".join(sys.argv),
        "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "setting": name,
        "settings": {**dataclasses.asdict(s), "radii": [float(r) for r in s.radii]}, "model_args": model_args,
        "model": adapter.describe(), "data": data_desc, "train_n": len(train_data), "test_n": len(test_data),
        "tracking": {**tracker.describe(), "samples_per_split": track_n or "all"}, "device": str(device),
        "processes": d.world if d is not None else 1,
    }
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")  # divided by the whole batch's size (also under DDP)
    for epoch in range(start_epoch + 1, s.epochs + 1):
        t0 = time.perf_counter()
        torch.manual_seed(s.seed * 1000 + epoch)  # dropout; resume reproduces the uninterrupted run
        gen = torch.Generator().manual_seed(s.seed * 1000 + epoch)
        rng = np.random.default_rng([s.seed, epoch])
        module.train()
        loss_sum, correct, total = 0.0, 0, 0
        cb = progress(f"epoch {epoch}", len(train_data)) if progress else None
        for b, (x, y, idx) in enumerate(train_data.batches(s.batch_size, shuffle=True, seed=s.seed * 1000 + epoch)):
            try:
                check_stop(f"training (epoch {epoch})")
            except StopRequested as exc:
                kept = f"epochs 1-{epoch - 1} are kept in {out}" if epoch > 1 else f"no epoch had finished in {out}"
                raise StopRequested(f"{exc}; {kept}; continue with the same command and --resume"
                                    if epoch > 1 else f"{exc}; {kept}: run it again", exc.signum) from None
            x, y = x.to(device), y.to(device)
            if comp_r is not None:
                x = rescale.apply(freqprobe.guard.decompose(dec, x.contiguous(), comp_r[1])[comp_r[0]])
            if attack is not None:
                attack.seed = s.seed * 1_000_003 + epoch * 10_007 + b
                module.eval()  # the attack sees the model as it predicts (BatchNorm running statistics untouched)
                x = attack(x, y).detach()
                module.train()
            y2, lam = None, 1.0
            if s.mixup:
                x, y2, lam = _mixup(x, y, s.mixup, gen, rng)
            n_batch = len(y)
            if d is not None:  # this rank's slice of the batch every rank loaded (the same batches as one process)
                part = torch.tensor_split(torch.arange(n_batch, device=x.device), d.world)[d.rank]
                x, y = x[part], y[part]
                y2 = y2[part] if y2 is not None else None
            opt.zero_grad(set_to_none=True)
            logits = forward(x)
            loss = loss_fn(logits, y) if y2 is None else lam * loss_fn(logits, y) + (1 - lam) * loss_fn(logits, y2)
            # mean over the whole batch; DDP averages the ranks' gradients, so each rank scales by the world size
            (loss * (d.world if d is not None else 1) / n_batch).backward()
            opt.step()
            loss_sum += float(loss.detach())
            correct += int((logits.detach().argmax(1) == y).sum())
            total += len(y)
            if cb:
                cb(len(y))
        train_s = time.perf_counter() - t0
        if d is not None:
            import torch.distributed as tdist

            sums = torch.tensor([loss_sum, correct, total], dtype=torch.float64)
            tdist.all_reduce(sums, group=d.group)
            loss_sum, correct, total = float(sums[0]), int(sums[1]), int(sums[2])
            if not main:  # rank 0 tracks and writes; the others wait for it
                module.eval()
                tdist.barrier(group=d.group)
                continue
        t1 = time.perf_counter()
        module.eval()
        new = tracker.track(adapter, epoch)
        track_s = time.perf_counter() - t1
        rec = {"epoch": epoch, "loss": loss_sum / max(total, 1), "accuracy": correct / max(total, 1), "train_s": train_s,
               "track_s": track_s}
        history.append(rec)
        rows += new
        rows += [{"epoch": epoch, "split": "train", "variant": "fit", "param": None, "metric": m, "value": rec[k], "n": total}
                 for m, k in (("loss", "loss"), ("accuracy", "accuracy"))]
        _save_epoch(out, s, name, epoch, adapter, opt, rows, history, manifest)
        test_acc = next((r["value"] for r in new if r["split"] == "test" and r["variant"] == "original"), float("nan"))
        say(f"  epoch {epoch}/{s.epochs}: loss {rec['loss']:.4f}, train accuracy {rec['accuracy']:.4f} "
            f"(on what it was fed), test {test_acc:.4f}; {train_s:.1f} s training + {track_s:.1f} s tracking")
        if d is not None:
            import torch.distributed as tdist

            tdist.barrier(group=d.group)
    if not main:
        return {}
    return json.loads((out / "manifest.json").read_text())


def checkpoint_name(setting: str, epoch: int) -> str:
    return f"{setting}_epoch{epoch:03d}.pt"


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _save_epoch(out: Path, s: TrainSettings, name: str, epoch: int, adapter, opt, rows, history, manifest) -> None:
    """Everything of a finished epoch, ``train_state.pt`` last (what a resume trusts)."""
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)  # made at the first finished epoch: a run stopped before has left nothing
    module = adapter.module
    info = {"model": s.model, "setting": name, "epoch": epoch, "model_args": json.loads(json.dumps(manifest["model_args"],
                                                                                                 default=str))}
    _atomic(out / "checkpoints" / checkpoint_name(name, epoch),
            lambda p: save_model(p, module, mean=adapter.mean, std=adapter.std, **info))
    _atomic(out / "model.pt", lambda p: save_model(p, module, mean=adapter.mean, std=adapter.std, **info))
    _atomic(out / "curves.csv", lambda p: write_curves(p, rows))
    from .plots import plot_curves

    plot_curves(rows, out / "curves.png", title=f"{s.model} | {name}")
    man = {**manifest, "epochs_done": epoch, "history": history,
           "outputs": ["curves.csv", "curves.png", "model.pt", "checkpoints/", "train_state.pt", "manifest.json"]}
    _atomic(out / "manifest.json", lambda p: p.write_text(json.dumps(man, indent=2, default=str) + "\n"))
    _atomic(out / "train_state.pt", lambda p: torch.save(
        {"epoch": epoch, "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
         "optimizer": opt.state_dict(), "fingerprint": s.fingerprint(), "history": history}, p))
