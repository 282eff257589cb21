"""Building the parts of a run from specs, validating them, and running a probe.

Everything is validated before any output is created; outputs are written to a temporary
sibling folder and renamed into place at the end, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from . import registry
from .checkpoint import load_state_dict_checked, read_checkpoint, sha256_file
from .errors import IncompatibleError, UnknownNameError, UserFacingError
from .interfaces import DataSource, Decomposer, ModelAdapter, ProbeResult, RunContext

log = logging.getLogger("freqprobe")

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


# ---------------------------------------------------------------- parsing helpers
def parse_params(text: str | Sequence | None) -> list | None:
    """``"4,8,12,16"`` -> ``["4", "8", "12", "16"]`` (validated later by the decomposer)."""
    if text is None:
        return None
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    if not items or any(s == "" for s in items):
        raise UserFacingError(f"malformed parameter list {text!r}: use comma-separated positive numbers like 4,8,12,16")
    return items


def parse_floats(text: str | Sequence[float] | None, what: str) -> list[float] | None:
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        return [float(s) for s in items]
    except ValueError:
        raise UserFacingError(f"{what} must be comma-separated numbers, got {text!r}") from None


def parse_kv(pairs: Iterable[str], what: str) -> dict[str, Any]:
    """``["depth=20", "pretrained=False"]`` -> ``{"depth": 20, "pretrained": False}`` (Python literals, else strings)."""
    import ast

    out: dict[str, Any] = {}
    for item in pairs or ():
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserFacingError(f"malformed {what} {item!r}: use KEY=VALUE")
        try:
            out[key] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            out[key] = val
    return out


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserFacingError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserFacingError(f"unknown device {device!r}: use auto, cpu or cuda") from None


# ---------------------------------------------------------------- components
def get_decomposer(name: str, pm=None, **options: Any) -> Decomposer:
    cls = registry.get_class("decomposers", name, pm)
    try:
        return cls(**options)
    except TypeError as exc:
        raise UserFacingError(f"decomposer '{name}' rejected its options {options}: {exc}") from None


def decompose(images: torch.Tensor, name: str = "fft-radial", param: Any = 8, *, pm=None, **options: Any) -> dict[str, torch.Tensor]:
    """Split an N×C×H×W float tensor in [0,1] into named components, on the images' device.

    float32 and float64 images are decomposed in their own precision; float16/bfloat16 in float32
    and returned in the input dtype.

    >>> parts = decompose(x, "fft-radial", 8)          # {"low": ..., "high": ...}
    >>> parts = decompose(x, "fft-radial", 8, rule="inclusive")
    >>> parts = decompose(x, "svd", 4)                 # {"dominant": ..., "trailing": ...}
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise UserFacingError(f"decompose expects an N×C×H×W tensor, got {shape}; add a batch axis with x[None]")
    if not images.is_floating_point():
        raise UserFacingError(f"decompose expects float images in [0,1], got {images.dtype}; use x.float() / 255")
    dec = get_decomposer(name, pm, **options)
    exact = images.dtype in (torch.float32, torch.float64)  # float16/bfloat16 are computed in float32
    x = images if exact else images.float()
    parts = dec.decompose(x.contiguous(), dec.check_param(param))
    return {k: v if exact else v.to(images.dtype) for k, v in parts.items()}


def parse_model_spec(spec: str, pm=None) -> tuple[str, str]:
    """``timm:resnet18`` -> ("timm", "resnet18"); ``net.py:make`` / ``pkg.mod:make`` -> ("python", spec)."""
    sources = registry.collect("models", pm)
    prefix, sep, rest = spec.partition(":")
    if not sep or not prefix:
        raise UserFacingError(
            f"malformed model spec {spec!r}: use SOURCE:NAME ({', '.join(sorted(sources))}), path/to/file.py:callable or package.module:callable"
        )
    if prefix in sources:
        return prefix, rest
    if prefix.endswith(".py") or "/" in prefix or os.sep in prefix:
        return "python", spec
    if _IDENT.match(prefix) and rest.isidentifier() and "." in prefix:
        return "python", spec
    if _IDENT.match(prefix) and rest.isidentifier() and prefix not in sources:
        # a bare module name such as "mymodels:resnet" — only when importable, else a typo of a source
        import importlib.util

        if importlib.util.find_spec(prefix) is not None:
            return "python", spec
    raise UnknownNameError("model source", prefix, sources)


def build_model(
    spec: str | torch.nn.Module | ModelAdapter,
    *,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    trust_checkpoint: bool = False,
    strict: bool = True,
    model_args: Mapping[str, Any] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_classes: int | None = None,
    pm=None,
) -> ModelAdapter:
    """A :class:`ModelAdapter` from a spec (``timm:resnet18``...), an ``nn.Module`` or an adapter.

    ``info["has_weights"]`` says whether it carries weights (pretrained, checkpoint or TorchScript).
    """
    if isinstance(spec, ModelAdapter):
        adapter = spec
        if mean is not None:
            adapter.mean = tuple(mean)
        if std is not None:
            adapter.std = tuple(std)
        adapter.info.setdefault("has_weights", True)
        return adapter
    if isinstance(spec, torch.nn.Module):
        return ModelAdapter(spec, mean=mean, std=std, spec=type(spec).__name__, info={"has_weights": True, "source": "module"})
    if pretrained and checkpoint:
        raise UserFacingError("pass either --pretrained or --checkpoint, not both")
    source_name, target = parse_model_spec(spec, pm)
    entry = registry.get_entry("models", source_name, pm)
    source = entry.cls()
    built = source.build(target, pretrained=pretrained, num_classes=num_classes, model_args=dict(model_args or {}))
    info: dict[str, Any] = {"source": source_name, "provided_by": entry.plugin, "pretrained": pretrained, **built.info}
    has_weights = built.has_weights
    if checkpoint:
        obj, kind = read_checkpoint(checkpoint, trust=trust_checkpoint)
        sd = obj.state_dict() if kind == "torchscript" else obj
        sd = {k: v for k, v in sd.items()}
        loaded = load_state_dict_checked(built.module, sd, strict=strict, source=f"checkpoint {checkpoint}")
        info.update(
            checkpoint=str(Path(checkpoint).resolve()),
            checkpoint_sha256=sha256_file(checkpoint),
            checkpoint_kind=kind,
            checkpoint_strict=strict,
            checkpoint_missing=loaded["missing"],
            checkpoint_unexpected=loaded["unexpected"],
        )
        has_weights = True
    mean_src = "override" if mean is not None else (source_name if built.mean is not None else "none")
    info["normalisation_from"] = mean_src if std is None else "override"
    info["has_weights"] = has_weights
    info["input_size"] = list(built.input_size) if built.input_size else None
    return source.adapter_class(
        built.module,
        mean=mean if mean is not None else built.mean,
        std=std if std is not None else built.std,
        spec=spec,
        info=info,
    )


def open_data(
    spec: str | DataSource,
    *,
    root: str | os.PathLike | None = None,
    split: str = "test",
    image_size: int | None = None,
    seed: int = 0,
    pm=None,
) -> DataSource:
    """A :class:`DataSource` from a spec: ``synth10``, ``cifar10``, ``npz:PATH``, ``imagefolder:PATH``..."""
    if isinstance(spec, DataSource):
        return spec
    name, sep, arg = spec.partition(":")
    entries = registry.collect("datasets", pm)
    if name not in entries:
        raise UnknownNameError("dataset", name, entries)
    cls = entries[name].cls
    if sep and not cls.takes_argument:
        raise UserFacingError(f"dataset '{name}' takes no argument after ':' (got {spec!r})")
    if cls.takes_argument and not arg:
        raise UserFacingError(f"dataset '{name}' needs an argument: {name}:PATH")
    opts: dict[str, Any] = {}
    if image_size:
        opts["image_size"] = image_size
    if name == "synth10":
        opts["seed"] = seed
    return cls(arg or None, root=Path(root) if root else None, split=split, **opts)


def _check_outputs(adapter: ModelAdapter, data: DataSource, device: torch.device) -> int:
    x, y, _ = next(data.batches(2))
    try:
        k = adapter.num_outputs(x.to(device))
    except RuntimeError as exc:
        raise IncompatibleError(
            f"the model cannot take this data's {tuple(x.shape[1:])} images: {str(exc).splitlines()[0][:200]}"
        ) from None
    if k < data.num_classes or (data.fixed_num_classes and k != data.num_classes):
        raise IncompatibleError(
            f"class-count mismatch: the model outputs {k} classes but the data has {data.num_classes}; "
            f"pass --model-arg num_classes={data.num_classes} or a checkpoint trained on this data"
        )
    return k


def _default_out(model: str, probe: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(model)).strip("-")[:40]
    base = Path("runs") / f"{stamp}-{slug}-{probe}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def versions() -> dict[str, str]:
    from . import __version__

    out = {"freqprobe": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for mod in ("timm", "torchvision", "numpy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover
            out[mod] = "unavailable"
    return out


class Stopwatch:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.stages: dict[str, float] = {}
        self._last = self.t0

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = self.stages.get(name, 0.0) + now - self._last
        self._last = now

    def total(self) -> float:
        return time.perf_counter() - self.t0


def run(
    model: str | torch.nn.Module | ModelAdapter,
    *,
    probe: str = "lfc-hfc",
    data: str | DataSource = "synth10",
    decomposer: str = "fft-radial",
    params: str | Sequence | None = None,
    decomposer_options: Mapping[str, Any] | None = None,
    rescale: str = "none",
    metrics: Sequence[str] = ("accuracy",),
    transforms: Sequence[str] = (),
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    trust_checkpoint: bool = False,
    strict: bool = True,
    model_args: Mapping[str, Any] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    data_root: str | os.PathLike | None = None,
    image_size: int | None = None,
    limit: int | None = None,
    device: str = "auto",
    batch_size: int = 128,
    seed: int = 0,
    fit_epochs: int | None = None,
    fit_lr: float | None = None,
    fit: bool | None = None,
    out: str | os.PathLike | None = None,
    probe_options: Mapping[str, Any] | None = None,
    command: str | None = None,
    pm=None,
    progress: Callable[[str, int], Callable[[int], None] | None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> ProbeResult:
    """Run ``probe`` on ``model`` over ``data``; write results to ``out`` (None: a new dated folder under ``runs/``).

    With no weights (no ``checkpoint``/``pretrained``, and a spec that builds a fresh model) the model is
    first fitted on the data's training split (Adam, batch 100) — or pass ``fit=False`` to probe it as is.
    ``progress(stage, total)`` may return a callback that receives counts of processed samples.
    Returns the :class:`ProbeResult`; ``result.extras["out_dir"]`` is where the files are.
    """
    from .plugins import default_plugin_manager

    pm = pm or default_plugin_manager()
    say = announce or (lambda msg: log.info(msg))
    sw = Stopwatch()
    torch.manual_seed(seed)

    # ---- validate everything cheap first
    if batch_size < 1:
        raise UserFacingError(f"--batch-size must be at least 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise UserFacingError(f"--limit must be at least 1, got {limit}")
    if fit_epochs is not None and fit_epochs < 1:
        raise UserFacingError(f"--fit-epochs must be at least 1, got {fit_epochs}")
    dev = resolve_device(device)
    probe_entry = registry.get_entry("probes", probe, pm)
    try:
        probe_obj = probe_entry.cls(**dict(probe_options or {}))
    except TypeError as exc:
        raise UserFacingError(f"probe '{probe}' rejected its options: {exc}") from None
    dec = get_decomposer(decomposer, pm, **dict(decomposer_options or {}))
    raw_params = parse_params(params)
    if raw_params is None:
        raw_params = list(getattr(dec, "default_params", (4, 8, 12, 16)))
    plist = []
    for p in raw_params:
        v = dec.check_param(p)
        if v not in plist:
            plist.append(v)
    rescale_obj = registry.get_class("rescale", rescale, pm)()
    metric_classes = [registry.get_class("metrics", m, pm) for m in metrics]
    transform_objs = []
    for t in transforms:
        tname, _, targs = t.partition(":")
        tcls = registry.get_class("transforms", tname, pm)
        transform_objs.append(tcls(**parse_kv([a for a in targs.split(",") if a], f"option of transform {tname}")))
    out_dir = Path(out) if out is not None else _default_out(model if isinstance(model, str) else type(model).__name__, probe)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserFacingError(f"output folder {out_dir} already exists and is not empty; pass another --out or remove it")

    # ---- data and model
    test_data = open_data(data, root=data_root, split="test", image_size=image_size, seed=seed, pm=pm)
    adapter = build_model(
        model,
        checkpoint=checkpoint,
        pretrained=pretrained,
        trust_checkpoint=trust_checkpoint,
        strict=strict,
        model_args=model_args,
        mean=parse_floats(mean, "--mean") if isinstance(mean, str) else mean,
        std=parse_floats(std, "--std") if isinstance(std, str) else std,
        num_classes=test_data.num_classes,
        pm=pm,
    )
    task = probe_obj.requires.get("task")
    if task and adapter.task != task:
        raise IncompatibleError(f"probe '{probe}' needs a {task} model, but {adapter.spec} is a {adapter.task} model")
    adapter.to(dev)
    do_fit = (not adapter.info.get("has_weights")) if fit is None else fit
    fit_record = None
    train_data = None
    if do_fit:
        data_name = data if isinstance(data, str) else test_data.name
        if not test_data.has_split("train"):
            raise UserFacingError(
                f"{adapter.spec} has no weights and {data_name} has no training split to fit it on; "
                "pass --checkpoint PATH (or --pretrained)"
            )
    _check_outputs(adapter, test_data, dev)
    sw.lap("load_s")

    # ---- fit when there are no weights
    if do_fit:
        train_data = open_data(data, root=data_root, split="train", image_size=image_size, seed=seed, pm=pm)
        epochs = fit_epochs or getattr(train_data, "default_fit_epochs", 1)
        lr = fit_lr or getattr(train_data, "default_fit_lr", 1e-4)
        say(
            f"No weights given (--checkpoint/--pretrained): fitting {adapter.spec} on {train_data.name} train split "
            f"({len(train_data)} images, {epochs} epoch{'s' if epochs != 1 else ''}, Adam lr {lr:g}, batch 100) before probing."
        )
        from .training import fit as _fit

        cb = progress("fitting", len(train_data) * epochs) if progress else None
        fit_record = _fit(
            adapter, train_data, epochs=epochs, lr=lr, batch_size=100, seed=seed, device=dev, progress=cb,
            on_epoch=lambda e, r: say(f"  epoch {e}/{epochs}: loss {r['loss']:.3f}, train accuracy {r['train_accuracy']:.3f}"),
        )
        sw.lap("fit_s")

    # ---- probe into a temporary folder
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        label = ",".join(o.label() for o in transform_objs)
        for t in transform_objs:
            adapter = t.apply(adapter)
        n_eval = len(test_data) if limit is None else min(limit, len(test_data))
        ctx = RunContext(
            adapter=adapter,
            data=test_data,
            decomposer=dec,
            params=plist,
            rescale=rescale_obj,
            metrics=metric_classes,
            device=dev,
            batch_size=batch_size,
            limit=limit,
            seed=seed,
            transform=label,
            out_dir=tmp,
            progress=progress("probing", n_eval) if progress else None,
            options=dict(probe_options or {}),
            pm=pm,
        )
        result = probe_obj.run(ctx)
        sw.lap("probe_s")
        if fit_record is not None:
            torch.save(adapter.module.state_dict(), tmp / "model.pt")
        pm.hook.report_result(result=result, context=ctx)
        sw.lap("write_s")
        timings = {**sw.stages, **result.extras.get("timings", {}), "total_s": sw.total()}
        manifest = {
            "versions": versions(),
            "command": command or " ".join(sys.argv),
            "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "seed": seed,
            "device": str(dev),
            "probe": {"name": probe, "provided_by": probe_entry.plugin, "options": probe_obj.opts},
            "model": {**adapter.describe(), "fitted": fit_record},
            "data": {**test_data.describe(), "spec": data if isinstance(data, str) else test_data.name, "n_evaluated": n_eval, "limit": limit,
                     "num_classes": test_data.num_classes, "class_names": list(test_data.class_names) if test_data.class_names else None},
            "decomposer": {"name": dec.name, "options": dec.options(), "param_name": dec.param_name, "params": plist, "components": list(dec.components)},
            "rescale": {"policy": rescale_obj.name, "applies_to_original": rescale_obj.applies_to_original},
            "metrics": [m.name for m in metric_classes],
            "transform": label,
            "batch_size": batch_size,
            "timings": timings,
            "outputs": sorted(p.name for p in tmp.iterdir()) + ["manifest.json"],
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=_json_default) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.extras["out_dir"] = out_dir
    result.extras["manifest"] = manifest
    return result


def _json_default(o: Any):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.device):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    return repr(o)
