"""``freqprobe train``: the paper's training set-ups (§4-5) with per-epoch low/high-frequency tracking.

One run = one :class:`TrainSettings`. The run folder gets, after every epoch: the tracked rows in
``curves.csv``, the epoch's checkpoint ``checkpoints/<setting>_epoch<NNN>.pt``, ``model.pt`` (the latest
weights, the format ``freqprobe run`` writes: state_dict plus the normalisation it was trained with),
``train_state.pt`` (what ``--resume`` needs: weights, optimizer, epoch) and ``manifest.json``. A stopped
run resumes from its last finished epoch; ``--epochs`` larger than before trains more.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import freqprobe
from freqprobe import StopRequested, UserFacingError, get_class
from freqprobe.plugin import check_stop, decompose_with, iter_batches, save_model

from .data import RelabelledSource, all_labels, first, holdout_split, shuffled_labels
from .settings import OPTIMIZER_CLASSES, TrainSettings, attack_class, check_settings, parse_train_on
from .settings import DEFAULT_RADII, PRESETS  # noqa: F401  (where they were: freqprobe_train.train.PRESETS ...)
from .tracker import FrequencyTracker, default_track_samples, read_curves

OPTIMIZERS = {name: getattr(torch.optim, cls) for name, cls in OPTIMIZER_CLASSES.items()}


# ----------------------------------------------------------------------------- data and model
def open_splits(s: TrainSettings, pm) -> tuple[Any, Any, dict]:
    """(train, test, description): the data's train/test splits, or a seeded --holdout split of its one split."""
    from freqprobe import open_data

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
        adapter.set_normalization(None, None)
    if s.init == "xavier":
        from .archs import xavier_init

        xavier_init(adapter.module)
    return adapter, args


# ----------------------------------------------------------------------------- the loop
def _mixup(x, y, alpha: float, gen: torch.Generator, rng: np.random.Generator):
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    return lam * x + (1 - lam) * x[perm], y[perm], lam


@dataclasses.dataclass
class _Run:
    """What one training run works with, from its set-up to its last epoch."""

    s: TrainSettings
    out: Path
    name: str
    device: torch.device
    dist: Any  # the torchrun group (freqprobe.plugin.Dist) or None
    train_data: Any
    adapter: Any
    opt: torch.optim.Optimizer
    forward: Callable
    tracker: FrequencyTracker
    manifest: dict
    comp_r: tuple[str, float] | None = None
    rescale: Any = None
    dec: Any = None
    attack: Any = None
    #: worker processes reading the training data (``--workers``; None: auto)
    workers: Any = None
    start_epoch: int = 0
    rows: list = dataclasses.field(default_factory=list)
    history: list = dataclasses.field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.dist is None or self.dist.is_main

    @property
    def world(self) -> int:
        return self.dist.world if self.dist is not None else 1


def train(
    s: TrainSettings,
    out: Path,
    *,
    pm=None,
    resume: bool = False,
    say: Callable[[str], None] = print,
    progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
    command: str | None = None,
    workers: int | None = None,
) -> dict:
    """Train one setting into ``out`` (see the module docstring); returns the manifest.

    ``workers``: worker processes that read the training images (freqprobe.plugin.iter_batches; None:
    auto); the run is the same for every count.

    ``out`` is locked as ``freqprobe run`` locks its output (before anything is loaded): a second
    process into it is refused in one line while this one lives.
    """
    import contextlib

    from freqprobe.plugin import CommandContext, check_workers, command_context

    pm = pm or command_context().pm
    s = s.applied()
    check_settings(s, pm)
    out = Path(out)
    d, s = _join_torchrun(s)  # torchrun: DistributedDataParallel, each rank a slice of every batch
    if d is not None and not d.is_main:
        say, progress = (lambda m: None), None
    main = d is None or d.is_main  # under torchrun rank 0 writes, so it holds the lock
    with CommandContext(pm).output_lock(out, kind="train") if main else contextlib.nullcontext():
        check_out(out, resume=resume, main=main)
        run = _set_up(s, out, pm, d, command=command)
        run.workers = check_workers(workers)
        if resume:
            _restore(run)
            say(f"resuming {out} after epoch {run.start_epoch} of {s.epochs}")
        _epochs(run, progress, say, resume=resume)
    if not run.main:
        return {}
    return json.loads((out / "manifest.json").read_text())


def check_out(out: Path, *, resume: bool, main: bool = True) -> None:
    """``out`` of a new run must be new or empty (a finished or running run is not overwritten); a resumed one needs its state."""
    from freqprobe.plugin import check_out_dir

    state = out / "train_state.pt"
    if resume:
        if not state.is_file():
            raise UserFacingError(f"nothing to resume in {out} (no train_state.pt); leave out --resume to start a run there")
        return
    if not main:
        return
    if state.is_file():
        raise UserFacingError(f"{out} already holds a training run; pass --resume to continue it (a larger --epochs trains "
                              "more), or choose another --out")
    check_out_dir(out)


class NoSpaceLeft(UserFacingError):
    """The disk filled up while an epoch's files were written; the epochs before it stay (``train_state.pt``)."""

    def __init__(self, where: Any, done: int, total: int, out: Path) -> None:
        self.where, self.done, self.total, self.out = where, done, total, out
        super().__init__(self.message("resume with --resume after freeing space" if done else
                                      "run it again after freeing space"))

    def message(self, then: str) -> str:
        kept = f"kept in {self.out}" if self.done else "nothing kept"
        return f"no space left on device while writing {self.where}; {self.done} of {self.total} epochs finished ({kept}), {then}"


def _epochs(run: "_Run", progress, say: Callable[[str], None], *, resume: bool) -> None:
    """Train, track and save epoch after epoch (rank 0 tracks and writes; the others wait for it)."""
    import errno
    import shutil

    s, d = run.s, run.dist
    for epoch in range(run.start_epoch + 1, s.epochs + 1):
        fit = _train_epoch(run, epoch, progress)
        _check_diverged(run, epoch, fit)
        if run.main:
            try:
                _finish_epoch(run, epoch, fit, say)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                    raise
                if not resume and not (run.out / "train_state.pt").is_file():
                    shutil.rmtree(run.out, ignore_errors=True)  # new or empty before: only this run's first files
                raise NoSpaceLeft(exc.filename or run.out, epoch - 1, s.epochs, run.out) from None
        else:
            run.adapter.module.eval()
        if d is not None:
            import torch.distributed as tdist

            tdist.barrier(group=d.group)


def _check_diverged(run: "_Run", epoch: int, fit: dict) -> None:
    """A NaN/inf loss (the same on every rank: it is summed over them) ends the run with what to change."""
    if math.isfinite(fit["loss"]):
        return
    s = run.s
    kept = f"epochs 1-{epoch - 1} are kept in {run.out}; " if epoch > 1 else ""
    raise UserFacingError(f"training diverged in epoch {epoch}: the loss is {fit['loss']} (the model's outputs or weights "
                          f"are no longer finite); {kept}lower --lr (now {s.lr:g}), or check the data")


def _join_torchrun(s: TrainSettings) -> tuple[Any, TrainSettings]:
    """The torchrun group (None outside torchrun) and the settings with this rank's device."""
    from freqprobe.plugin import join_torchrun

    d, dev = join_torchrun(s.device)
    if d is None:
        return None, s
    import warnings

    # a size-1 dimension (a 1-channel first conv) has two valid strides: DDP's performance note, not a problem
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return d, dataclasses.replace(s, device=dev)


def _set_up(s: TrainSettings, out: Path, pm, d, *, command: str | None) -> _Run:
    """Data, model, optimizer, tracker, attack and the manifest of a run (the weights as initialised)."""
    from freqprobe.plugin import resolve_device

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
    comp_r = parse_train_on(s.train_on)
    track_n = s.track_samples if s.track_samples is not None else default_track_samples(len(train_data))
    tracker = FrequencyTracker({"train": train_data, "test": test_data}, radii=s.radii, rescale=s.rescale if comp_r else "none",
                               samples=track_n or None, seed=s.seed, device=device, batch_size=s.track_batch_size,
                               channels_last=False if d is not None else None, pm=pm)
    run = _Run(s=s, out=out, name=s.name(), device=device, dist=d, train_data=train_data, adapter=adapter, opt=opt,
               forward=forward, tracker=tracker, manifest={}, comp_r=comp_r,
               rescale=get_class("rescale", s.rescale, pm)(), dec=freqprobe.get_decomposer("fft-radial", pm))
    if s.adversarial:
        acls, aopts = attack_class(s.adversarial, pm)
        run.attack = acls(adapter, eps=s.eps, seed=s.seed, **aopts)
        run.attack.fold_batchnorm = False  # the weights change every step: differentiate the model itself
    run.manifest = _manifest(run, pm, command=command, model_args=model_args, data_desc=data_desc, test_n=len(test_data),
                             track_n=track_n)
    return run


def _manifest(run: _Run, pm, *, command: str | None, model_args: dict, data_desc: dict, test_n: int, track_n: int) -> dict:
    from freqprobe.plugin import CommandContext

    s = run.s
    return CommandContext(pm).manifest(
        command=command or " ".join(sys.argv), setting=run.name, settings={**dataclasses.asdict(s), "radii": [float(r) for r in s.radii]}, model_args=model_args,
        model=run.adapter.describe(), data=data_desc, train_n=len(run.train_data), test_n=test_n,
        tracking={**run.tracker.describe(), "samples_per_split": track_n or "all"}, device=str(run.device),
        processes=run.world)


def _restore(run: _Run) -> None:
    """A resumed run: the weights, optimizer, history and curves of its last finished epoch."""
    s, out = run.s, run.out
    saved = load_train_state(out / "train_state.pt")
    if saved["fingerprint"] != s.fingerprint():
        diff = sorted(k for k in s.fingerprint() if saved["fingerprint"].get(k) != s.fingerprint().get(k))
        raise UserFacingError(f"cannot resume {out}: it was trained with other settings ({', '.join(diff)} differ); "
                              "repeat the original options (only --epochs may grow), or train into a new --out")
    run.start_epoch = int(saved["epoch"])
    if s.epochs <= run.start_epoch:
        raise UserFacingError(f"{out} has already been trained for {run.start_epoch} epochs; pass --epochs N with "
                              f"N > {run.start_epoch} to train more")
    try:
        run.adapter.module.load_state_dict(saved["model"])
        run.opt.load_state_dict(saved["optimizer"])  # every rank loads the same state
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise _damaged(out / "train_state.pt", f"its weights do not fit the model: {str(exc).splitlines()[0][:120]}") from None
    run.history = list(saved.get("history") or [])
    try:
        run.rows = [r for r in read_curves(out / "curves.csv") if r["epoch"] <= run.start_epoch]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _damaged(out / "curves.csv", type(exc).__name__) from None


def _damaged(path: Path, why: str) -> UserFacingError:
    return UserFacingError(f"cannot resume {path.parent}: its {path.name} is damaged or unreadable ({why}); "
                           f"train into a new --out, or remove {path.parent} and start again without --resume")


#: what ``train_state.pt`` holds, and the type of each
STATE_KEYS = {"epoch": int, "model": dict, "optimizer": dict, "fingerprint": dict}


def load_train_state(path: Path) -> dict:
    """``train_state.pt`` read safely (tensors and plain data only) and checked; anything else is one line naming it."""
    import pickle

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        low = str(exc).lower()
        # "Unsupported operand": the safe unpickler meeting bytes that are no pickle at all
        pickled = ("weights only" in low or "weights_only" in low) and "unsupported operand" not in low
        why = ("it holds pickled Python objects, which freqprobe train never writes; not loaded, as that could run code"
               if pickled else "not a torch file")
        raise _damaged(path, why) from None
    except (EOFError, OSError) as exc:
        raise _damaged(path, "empty or cut short" if isinstance(exc, EOFError) else type(exc).__name__) from None
    except Exception as exc:  # RuntimeError('PytorchStreamReader failed ...'), ...
        raise _damaged(path, f"not a torch file: {str(exc).splitlines()[0][:80]}" if str(exc) else type(exc).__name__) from None
    missing = [k for k, t in STATE_KEYS.items() if not isinstance(saved, dict) or not isinstance(saved.get(k), t)]
    if missing:
        raise _damaged(path, f"no valid {', '.join(missing)}")
    return saved


def _train_epoch(run: _Run, epoch: int, progress) -> dict:
    """One epoch of training; its loss, accuracy (on what the model was fed), sample count and seconds (all ranks')."""
    s = run.s
    t0 = time.perf_counter()
    torch.manual_seed(s.seed * 1000 + epoch)  # dropout; resume reproduces the uninterrupted run
    gen = torch.Generator().manual_seed(s.seed * 1000 + epoch)
    rng = np.random.default_rng([s.seed, epoch])
    run.adapter.module.train()
    loss_sum, correct, total = 0.0, 0, 0
    cb = progress(f"epoch {epoch}", len(run.train_data)) if progress else None
    batches = iter_batches(run.train_data, s.batch_size, shuffle=True, seed=s.seed * 1000 + epoch, workers=run.workers)
    for b, (x, y, _) in enumerate(batches):
        _check_stop(run.out, epoch)
        loss, n_correct, n = _step(run, x, y, epoch, b, gen, rng)
        loss_sum += loss
        correct += n_correct
        total += n
        if cb:
            cb(n)
    train_s = time.perf_counter() - t0
    if run.dist is not None:
        import torch.distributed as tdist

        sums = torch.tensor([loss_sum, correct, total], dtype=torch.float64)
        tdist.all_reduce(sums, group=run.dist.group)
        loss_sum, correct, total = float(sums[0]), int(sums[1]), int(sums[2])
    return {"loss": loss_sum / max(total, 1), "accuracy": correct / max(total, 1), "n": total, "train_s": train_s}


def _check_stop(out: Path, epoch: int) -> None:
    try:
        check_stop(f"training (epoch {epoch})")
    except StopRequested as exc:
        kept = f"epochs 1-{epoch - 1} are kept in {out}" if epoch > 1 else f"no epoch had finished in {out}"
        raise StopRequested(f"{exc}; {kept}; continue with the same command and --resume"
                            if epoch > 1 else f"{exc}; {kept}: run it again", exc.signum) from None


def _step(run: _Run, x, y, epoch: int, b: int, gen: torch.Generator, rng: np.random.Generator) -> tuple[float, int, int]:
    """One optimizer step on batch ``b`` (this rank's slice under torchrun): its summed loss, correct count and size."""
    s, d, module = run.s, run.dist, run.adapter.module
    x, y = x.to(run.device), y.to(run.device)
    if run.comp_r is not None:
        x = run.rescale.apply(decompose_with(run.dec, x.contiguous(), run.comp_r[1])[run.comp_r[0]])
    if run.attack is not None:
        run.attack.seed = s.seed * 1_000_003 + epoch * 10_007 + b
        module.eval()  # the attack sees the model as it predicts (BatchNorm running statistics untouched)
        x = run.attack(x, y).detach()
        module.train()
    y2, lam = None, 1.0
    if s.mixup:
        x, y2, lam = _mixup(x, y, s.mixup, gen, rng)
    n_batch = len(y)
    if d is not None:  # this rank's slice of the batch every rank loaded (the same batches as one process)
        part = torch.tensor_split(torch.arange(n_batch, device=x.device), d.world)[d.rank]
        x, y = x[part], y[part]
        y2 = y2[part] if y2 is not None else None
    run.opt.zero_grad(set_to_none=True)
    logits = run.forward(x)
    loss = _LOSS(logits, y) if y2 is None else lam * _LOSS(logits, y) + (1 - lam) * _LOSS(logits, y2)
    # mean over the whole batch; DDP averages the ranks' gradients, so each rank scales by the world size
    (loss * run.world / n_batch).backward()
    run.opt.step()
    return float(loss.detach()), int((logits.detach().argmax(1) == y).sum()), len(y)


#: summed, then divided by the whole batch's size (also under DDP)
_LOSS = torch.nn.CrossEntropyLoss(reduction="sum")


def _finish_epoch(run: _Run, epoch: int, fit: dict, say: Callable[[str], None]) -> None:
    """Track the epoch's model, save everything of the epoch, and say how it went."""
    s = run.s
    t1 = time.perf_counter()
    run.adapter.module.eval()
    new = run.tracker.track(run.adapter, epoch)
    track_s = time.perf_counter() - t1
    rec = {"epoch": epoch, "loss": fit["loss"], "accuracy": fit["accuracy"], "train_s": fit["train_s"], "track_s": track_s}
    run.history.append(rec)
    run.rows += new
    run.rows += [{"epoch": epoch, "split": "train", "variant": "fit", "param": None, "metric": m, "value": rec[k],
                  "n": fit["n"]} for m, k in (("loss", "loss"), ("accuracy", "accuracy"))]
    _save_epoch(run.out, s, run.name, epoch, run.adapter, run.opt, run.rows, run.history, run.manifest)
    test_acc = next((r["value"] for r in new if r["split"] == "test" and r["variant"] == "original"), float("nan"))
    say(f"  epoch {epoch}/{s.epochs}: loss {rec['loss']:.4f}, train accuracy {rec['accuracy']:.4f} "
        f"(on what it was fed), test {test_acc:.4f}; {fit['train_s']:.1f} s training + {track_s:.1f} s tracking")


def checkpoint_name(setting: str, epoch: int) -> str:
    return f"{setting}_epoch{epoch:03d}.pt"


def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _save_epoch(out: Path, s: TrainSettings, name: str, epoch: int, adapter, opt, rows, history, manifest) -> None:
    """Everything of a finished epoch, ``train_state.pt`` last (what a resume trusts); each file atomically and durably
    (a full disk is an ``ENOSPC`` naming the file, no temporary file left)."""
    from freqprobe.plugin import CommandContext

    from .plots import plot_curves
    from .tracker import curves_text

    write = CommandContext.write_file
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)  # made at the first finished epoch: a run stopped before has left nothing
    module = adapter.module
    info = {"model": s.model, "setting": name, "epoch": epoch, "model_args": json.loads(json.dumps(manifest["model_args"],
                                                                                                 default=str))}
    weights = io.BytesIO()
    save_model(weights, module, mean=adapter.mean, std=adapter.std, **info)
    write(out / "checkpoints" / checkpoint_name(name, epoch), weights.getvalue())
    write(out / "model.pt", weights.getvalue())
    write(out / "curves.csv", curves_text(rows))
    png = io.BytesIO()
    plot_curves(rows, png, title=f"{s.model} | {name}")
    write(out / "curves.png", png.getvalue())
    man = {**manifest, "epochs_done": epoch, "history": history,
           "outputs": ["curves.csv", "curves.png", "model.pt", "checkpoints/", "train_state.pt", "manifest.json"]}
    write(out / "manifest.json", json.dumps(man, indent=2, default=str) + "\n")
    write(out / "train_state.pt", _torch_bytes(
        {"epoch": epoch, "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
         "optimizer": opt.state_dict(), "fingerprint": s.fingerprint(), "history": history}))
