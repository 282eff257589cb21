"""Built-in model sources: ``timm:``, ``torchvision:``, ``torchscript:`` and user code (``file.py:fn`` / ``pkg.mod:fn``)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlparse

from ..errors import UnknownNameError, UserFacingError
from ..hookspecs import hookimpl
from ..interfaces import BuiltModel, ModelSource

if TYPE_CHECKING:  # annotations only: torch is imported where it is used, so importing this plugin stays cheap
    import torch

log = logging.getLogger("freqprobe.models")


def _first_line(exc: BaseException) -> str:
    s = str(exc).strip()
    return s.splitlines()[0] if s else type(exc).__name__


@contextlib.contextmanager
def _hub_offline_if_unreachable():
    """Make huggingface_hub fail fast (instead of ~46 s of retries) when its endpoint cannot be reached."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - timm depends on it
        yield
        return
    old = constants.HF_HUB_OFFLINE
    if not old:
        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
        try:
            socket.create_connection((host, 443), timeout=1.5).close()
        except OSError:
            constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _fail_fast_if_unreachable(url: str, spec: str) -> None:
    """torch.hub retries nothing but prints a download banner first; fail before it when the file is not cached and the host is unreachable."""
    import torch

    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if cached.is_file():
        return
    host = urlparse(url).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=1.5).close()
    except OSError as exc:
        raise _no_weights_message(spec, exc) from None


def _no_weights_message(spec: str, exc: BaseException) -> UserFacingError:
    why = _first_line(exc).split(". ")[0].rstrip(".")
    if len(why) > 120:
        why = why[:119].rsplit(" ", 1)[0] + "…"
    return UserFacingError(
        f"could not get pretrained weights for {spec} ({type(exc).__name__}: {why}); "
        "offline? pass --checkpoint PATH with a local weights file instead of --pretrained"
    )


def module_data_config(module: torch.nn.Module) -> dict[str, Any]:
    """What a module says about its inputs through timm's ``pretrained_cfg`` (or ``default_cfg``):
    ``mean``, ``std``, ``input_size`` and ``fixed_input_size`` (None/False when it says nothing)."""
    cfg = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None) or {}
    if not isinstance(cfg, Mapping):
        cfg = {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        mean = std = None
    size = cfg.get("input_size")
    return {
        "mean": tuple(float(v) for v in mean) if mean is not None else None,
        "std": tuple(float(v) for v in std) if std is not None else None,
        "input_size": list(size) if size else None,
        "fixed_input_size": bool(cfg.get("fixed_input_size", False)) and bool(size),
    }


def has_fixed_input_size(model: torch.nn.Module) -> bool:
    """timm's flag, and what the model itself says (a ViT built with ``dynamic_img_size`` takes any size)."""
    if not module_data_config(model)["fixed_input_size"]:
        return False
    return not bool(getattr(model, "dynamic_img_size", False))


class TimmModelSource(ModelSource):
    """timm models by name, tag, ``hf-hub:`` or ``local-dir:`` (``timm:resnet18``); mean/std from timm's pretrained_cfg."""

    name = "timm"

    def build(self, target, *, pretrained=False, num_classes=None, model_args: Mapping[str, Any] = {}):
        import timm

        if not target:
            raise UserFacingError("empty timm model name: use timm:NAME, e.g. timm:resnet18")
        if not target.startswith(("hf-hub:", "hf_hub:", "local-dir:")) and not timm.is_model(target):
            raise UnknownNameError("timm model", target, timm.list_models())
        kwargs = dict(model_args)
        if num_classes is not None and not pretrained:
            kwargs.setdefault("num_classes", num_classes)
        try:
            if pretrained:
                with _hub_offline_if_unreachable():
                    model = timm.create_model(target, pretrained=True, **kwargs)
            else:
                model = timm.create_model(target, pretrained=False, **kwargs)
        except OSError as exc:
            raise _no_weights_message(f"timm:{target}", exc) from None
        except TypeError as exc:
            raise UserFacingError(f"timm:{target} rejected --model-arg: {_first_line(exc)}") from None
        except RuntimeError as exc:
            if "offline" in str(exc).lower() or "connect" in str(exc).lower():
                raise _no_weights_message(f"timm:{target}", exc) from None
            raise UserFacingError(f"timm could not build {target}: {_first_line(exc)}") from None
        cfg = timm.data.resolve_model_data_config(model)
        pcfg = getattr(model, "pretrained_cfg", {}) or {}
        return BuiltModel(
            model,
            mean=cfg.get("mean"),
            std=cfg.get("std"),
            input_size=cfg.get("input_size"),
            has_weights=pretrained,
            info={"timm_name": target, "pretrained_tag": pcfg.get("tag"), "architecture": pcfg.get("architecture"),
                  "fixed_input_size": has_fixed_input_size(model)},
        )


class TorchvisionModelSource(ModelSource):
    """torchvision classification and detection models (``torchvision:resnet18``, ``torchvision:retinanet_resnet50_fpn``)."""

    name = "torchvision"

    def build(self, target, *, pretrained=False, num_classes=None, model_args: Mapping[str, Any] = {}):
        import torchvision
        import torchvision.models.detection

        names = torchvision.models.list_models(module=torchvision.models)
        detection = torchvision.models.list_models(module=torchvision.models.detection)
        if target in detection:
            return self._build_detector(target, pretrained=pretrained, model_args=model_args)
        if target not in names:
            raise UnknownNameError("torchvision model", target, names + detection)
        kwargs = dict(model_args)
        if num_classes is not None and not pretrained:
            kwargs.setdefault("num_classes", num_classes)
        weights_enum = torchvision.models.get_model_weights(target)
        if pretrained:
            _fail_fast_if_unreachable(weights_enum.DEFAULT.url, f"torchvision:{target}")
        try:
            model = torchvision.models.get_model(target, weights="DEFAULT" if pretrained else None, **kwargs)
        except OSError as exc:  # URLError and friends
            raise _no_weights_message(f"torchvision:{target}", exc) from None
        except (TypeError, ValueError) as exc:
            raise UserFacingError(f"torchvision:{target} rejected its arguments: {_first_line(exc)}") from None
        mean = std = None
        with contextlib.suppress(Exception):
            t = weights_enum.DEFAULT.transforms()
            mean, std = list(t.mean), list(t.std)
        return BuiltModel(model, mean=mean, std=std, has_weights=pretrained, info={"torchvision_name": target})

    def _build_detector(self, target: str, *, pretrained: bool, model_args: Mapping[str, Any]) -> BuiltModel:
        """A torchvision detection model: it normalises and resizes inside (its ``transform``), takes a list of
        C×H×W images in [0, 1] and returns per image ``boxes`` (x1, y1, x2, y2 in that image's pixels),
        ``scores`` and ``labels`` (COCO category ids). Without ``--pretrained`` nothing is downloaded: the
        backbone's ImageNet weights are not fetched either (``weights_backbone=None``)."""
        import torchvision

        kwargs = dict(model_args)
        weights_enum = torchvision.models.get_model_weights(target)
        if pretrained:
            _fail_fast_if_unreachable(weights_enum.DEFAULT.url, f"torchvision:{target}")
        else:
            kwargs.setdefault("weights_backbone", None)
        try:
            model = torchvision.models.get_model(target, weights="DEFAULT" if pretrained else None, **kwargs)
        except OSError as exc:
            raise _no_weights_message(f"torchvision:{target}", exc) from None
        except (TypeError, ValueError) as exc:
            raise UserFacingError(f"torchvision:{target} rejected its arguments: {_first_line(exc)}") from None
        info: dict[str, Any] = {"torchvision_name": target, "task": "detection", "normalises_inside": True}
        t = getattr(model, "transform", None)
        if t is not None:
            info["resize"] = {"min_size": list(getattr(t, "min_size", ())), "max_size": getattr(t, "max_size", None)}
        return BuiltModel(model, has_weights=pretrained, info=info)


class TorchScriptModelSource(ModelSource):
    """A TorchScript file used as the model itself (``torchscript:model.pt``); no mean/std unless given."""

    name = "torchscript"
    usage = "torchscript:FILE"

    def build(self, target, *, pretrained=False, num_classes=None, model_args: Mapping[str, Any] = {}):
        import torch

        p = Path(target)
        if not p.is_file():
            raise UserFacingError(f"TorchScript file not found: {p}")
        try:
            module = torch.jit.load(str(p), map_location="cpu")
        except Exception as exc:
            raise UserFacingError(f"could not load TorchScript file {p}: {_first_line(exc)}") from None
        return BuiltModel(module, has_weights=True, info={"torchscript": str(p)})


def _load_user_module(where: str):
    if where.endswith(".py") or "/" in where or os.sep in where:
        path = Path(where)
        if not path.is_file():
            raise UserFacingError(f"model file not found: {path} (use path/to/file.py:callable)")
        modname = "freqprobe_user_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        if modname in sys.modules:
            return sys.modules[modname]
        spec = importlib.util.spec_from_file_location(modname, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            del sys.modules[modname]
            raise UserFacingError(f"error while importing {path}: {_describe_exc(exc)}") from None
        return module
    try:
        return importlib.import_module(where)
    except ImportError as exc:
        raise UserFacingError(f"cannot import module {where!r}: {_first_line(exc)} (use package.module:callable or path/to/file.py:callable)") from None
    except (Exception, SystemExit) as exc:
        raise UserFacingError(f"error while importing module {where!r}: {_describe_exc(exc)}") from None


def _describe_exc(exc: BaseException) -> str:
    """One line for an exception raised by the user's code (``sys.exit`` included)."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _callable_module_class() -> type:
    """``CallableModule``: a plain callable (no parameters) as a module, so the core can move, evaluate and
    describe it like any model. A ``torch.nn.Module`` subclass, so it is defined on first use (importing
    this plugin does not import torch); it is ``freqprobe.builtins.models.CallableModule`` all the same."""
    cls = globals().get("CallableModule")
    if cls is not None:
        return cls
    import torch

    class CallableModule(torch.nn.Module):
        """A plain callable (no parameters) as a module, so the core can move, evaluate and describe it like any model."""

        def __init__(self, fn: Any) -> None:
            super().__init__()
            self.fn = fn

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self.fn(*args, **kwargs)

        def extra_repr(self) -> str:
            return repr(self.fn)

    CallableModule.__qualname__ = "CallableModule"  # importable (and picklable) by its module-level name
    globals()["CallableModule"] = CallableModule
    return CallableModule


def __getattr__(name: str) -> Any:
    if name == "CallableModule":
        return _callable_module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class PythonModelSource(ModelSource):
    """Your own architecture: ``path/to/file.py:callable`` or ``package.module:callable`` (``--model-arg k=v`` passed on)."""

    name = "python"
    usage = "path/to/file.py:callable, package.module:callable"

    def build(self, target, *, pretrained=False, num_classes=None, model_args: Mapping[str, Any] = {}):
        import torch

        where, sep, attr = target.rpartition(":")
        if not sep or not where or not attr:
            raise UserFacingError(f"malformed model spec {target!r}: use path/to/file.py:callable or package.module:callable")
        module = _load_user_module(where)
        fn = getattr(module, attr, None)
        if fn is None or not callable(fn):
            public = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__]
            raise UnknownNameError(f"callable in {where}", attr, public)
        kwargs = dict(model_args)
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            sig = None
        if num_classes is not None and sig is not None and "num_classes" in sig.parameters:
            kwargs.setdefault("num_classes", num_classes)
        if sig is not None:
            try:
                sig.bind(**kwargs)
            except TypeError as exc:
                raise UserFacingError(f"{target} rejected --model-arg: {_first_line(exc)}") from None
        try:
            model = fn(**kwargs)
        except (Exception, SystemExit) as exc:  # the user's code: any failure is one line naming it
            if sig is None and isinstance(exc, TypeError):
                raise UserFacingError(f"{target} rejected --model-arg: {_first_line(exc)}") from None
            raise UserFacingError(f"{target} failed while building the model: {_describe_exc(exc)}") from None
        if not isinstance(model, torch.nn.Module):
            if not callable(model):
                raise UserFacingError(f"{target} returned {type(model).__name__}, neither a torch.nn.Module nor a callable")
            # a plain callable (e.g. an onnxruntime session wrapped in a function): the user's own thing, weights included
            return BuiltModel(_callable_module_class()(model), has_weights=True, info={"callable": target, "plain_callable": True})
        cfg = module_data_config(model)
        return BuiltModel(model, mean=cfg["mean"], std=cfg["std"], input_size=cfg["input_size"],
                          info={"callable": target, "fixed_input_size": has_fixed_input_size(model)})


@hookimpl
def register_model_sources():
    return [TimmModelSource, TorchvisionModelSource, TorchScriptModelSource, PythonModelSource]


@hookimpl
def register_adapters():
    from ..interfaces import ClassifierAdapter

    return [ClassifierAdapter]
