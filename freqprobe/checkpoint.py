"""Reading weights from disk: state_dict files, safetensors, TorchScript, (trusted) pickled modules."""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import UserFacingError

NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net", "module")
STRIP_PREFIXES = ("module.", "_orig_mod.")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.split("/", 1)[-1].startswith("code/") for n in zf.namelist())
    except zipfile.BadZipFile:
        return False


def read_checkpoint(path: str | Path, *, trust: bool = False) -> tuple[Any, str]:
    """Return ``(obj, kind)``: kind is ``state_dict``, ``safetensors``, ``torchscript`` or ``pickled-module``.

    ``obj`` is a flat ``{key: tensor}`` mapping, except for ``torchscript`` (the scripted module).
    """
    obj, kind, _ = read_checkpoint_with_meta(path, trust=trust)
    return obj, kind


def read_checkpoint_with_meta(path: str | Path, *, trust: bool = False) -> tuple[Any, str, dict | None]:
    """:func:`read_checkpoint` and, from the same single read, the ``freqprobe`` section of a :func:`save_model`
    checkpoint (None for any other file).
    """
    p = Path(path)
    if not p.is_file():
        raise UserFacingError(f"checkpoint not found: {p} (pass --checkpoint with an existing file)")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file

            return load_file(str(p), device="cpu"), "safetensors", None
        except Exception as exc:
            raise UserFacingError(f"could not read safetensors checkpoint {p}: {str(exc).splitlines()[0]}") from None
    if _is_raw_pickle(p):  # pickle.dump's output: torch.load cannot read it (and nothing of it is unpickled here)
        raise UserFacingError(f"checkpoint {p} is a plain Python pickle, not a torch file: save the weights with "
                              "torch.save(model.state_dict(), PATH) (or use a model source that reads this format)")
    if _is_torchscript(p):
        try:
            return torch.jit.load(str(p), map_location="cpu"), "torchscript", None
        except Exception as exc:
            raise UserFacingError(f"could not read TorchScript checkpoint {p}: {str(exc).splitlines()[0]}") from None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
        kind = "state_dict"
    except pickle.UnpicklingError as exc:
        _refuse_untrusted(p, exc, trust)
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise UserFacingError(f"could not read checkpoint {p}: {str(exc2).splitlines()[0]}") from None
        kind = "pickled-module" if isinstance(obj, torch.nn.Module) else "state_dict"
    except Exception as exc:  # EOFError, RuntimeError('PytorchStreamReader failed...'), ...
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserFacingError(f"could not read checkpoint {p}: {msg} (corrupt or not a torch file?)") from None
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict(), kind, None
    return extract_state_dict(obj, p), kind, _meta_of(obj)


def _refuse_untrusted(p: Path, exc: pickle.UnpicklingError, trust: bool) -> None:
    """What the weights-only unpickler's refusal of ``p`` means: a corrupt file, or (without ``trust``) pickled objects."""
    low = str(exc).lower()
    # "Unsupported operand" is the weights-only unpickler meeting bytes that are not pickle opcodes: a corrupt file
    if ("weights only" not in low and "weights_only" not in low) or "unsupported operand" in low:
        lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
        detail = next((s for s in lines if s.lower().startswith("unsupported operand")), lines[0] if lines else type(exc).__name__)
        raise UserFacingError(f"could not read checkpoint {p}: {detail} (corrupt or not a torch file?)") from None
    if not trust:
        raise UserFacingError(
            f"checkpoint {p} holds pickled Python objects, not just tensors; loading it can run arbitrary code: "
            "pass --trust-checkpoint if you trust its source, or save model.state_dict() instead"
        ) from None


def _is_raw_pickle(p: Path) -> bool:
    """True when the file is exactly one pickle (``pickle.dump``'s output), read opcode by opcode: nothing is executed.

    torch's legacy format also starts with a pickle (its magic number) but goes on after it: False for it."""
    import pickletools

    if zipfile.is_zipfile(p):
        return False
    try:
        with open(p, "rb") as f:
            if f.read(1) != b"\x80":  # PROTO: every pickle of protocol 2 or later starts with it
                return False
            f.seek(0)
            for _ in pickletools.genops(f):
                pass
            return f.tell() == p.stat().st_size
    except Exception:  # not a pickle stream
        return False


def check_checkpoint_trust(path: str | Path, *, trust: bool = False) -> str:
    """Check a checkpoint that a model source reads itself (``ModelSource.reads_checkpoints``) without unpickling anything.

    Returns ``safetensors``, ``torchscript``, ``tensors`` (readable by torch's weights-only unpickler) or
    ``pickle`` (Python objects: only with ``trust``, else a one-line :class:`UserFacingError` naming
    ``--trust-checkpoint``; model zoos publish such ``.pkl`` files). A missing file is refused too.
    """
    p = Path(path)
    if not p.is_file():
        raise UserFacingError(f"checkpoint not found: {p} (pass --checkpoint with an existing file)")
    if p.suffix == ".safetensors":
        return "safetensors"
    if _is_torchscript(p):
        return "torchscript"
    if _is_raw_pickle(p):  # one pickle, the whole file (torch's weights-only unpickler reads no protocol-4 frames)
        if not trust:
            raise UserFacingError(
                f"checkpoint {p} is a Python pickle; unpickling it can run arbitrary code: "
                "pass --trust-checkpoint if you trust its source (e.g. a model zoo's published model_final_*.pkl)")
        return "pickle"
    try:
        torch.load(str(p), map_location="cpu", weights_only=True)  # the weights-only unpickler runs no code
    except pickle.UnpicklingError as exc:
        _refuse_untrusted(p, exc, trust)
        return "pickle"
    except Exception as exc:  # EOFError, RuntimeError('PytorchStreamReader failed...'), ...
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserFacingError(f"could not read checkpoint {p}: {msg} (corrupt or not a torch file?)") from None
    return "tensors"


#: the key under which a freqprobe checkpoint (``model.pt`` of a fitted or trained model) keeps what it knows
META_KEY = "freqprobe"


def save_model(path: str | Path | Any, module: torch.nn.Module, *, mean=None, std=None, **info: Any) -> None:
    """Save ``module``'s weights as freqprobe's ``model.pt``: ``{"state_dict": ..., "freqprobe": {...}}``.

    The ``freqprobe`` section records the normalisation the model was trained with (``mean``/``std``,
    None for raw [0, 1] pixels) and plain facts (``info``: the model spec, settings), so ``--checkpoint``
    gives the model back exactly as trained. Loadable with ``torch.load(weights_only=True)``; any tool
    that looks for a nested ``state_dict`` finds the weights. ``path`` may be a writable binary file
    object (``io.BytesIO``: the bytes to write durably, so a full disk is a plain ``ENOSPC``).
    """
    meta = {"format": 1, "mean": None if mean is None else [float(v) for v in mean],
            "std": None if std is None else [float(v) for v in std], **info}
    obj = {"state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()}, META_KEY: meta}
    torch.save(obj, path if hasattr(path, "write") else str(path))


def checkpoint_meta(path: str | Path) -> dict | None:
    """The ``freqprobe`` section of a checkpoint written by :func:`save_model` (None for any other file)."""
    p = Path(path)
    if p.suffix == ".safetensors" or not p.is_file() or _is_torchscript(p):
        return None
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception:
        return None
    return _meta_of(obj)


def _meta_of(obj: Any) -> dict | None:
    meta = obj.get(META_KEY) if isinstance(obj, Mapping) else None
    return dict(meta) if isinstance(meta, Mapping) else None


def extract_state_dict(obj: Any, path: Path | str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the tensors: the mapping itself, or one nested under ``state_dict``/``model``/...; strip ``module.``."""
    for _ in range(3):
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        if isinstance(obj, Mapping):
            nested = next((obj[k] for k in NESTED_KEYS if k in obj and isinstance(obj[k], (Mapping, torch.nn.Module))), None)
            if nested is not None:
                obj = nested
                continue
        keys = ", ".join(list(map(str, obj.keys()))[:8]) if isinstance(obj, Mapping) else type(obj).__name__
        raise UserFacingError(f"{path} holds no state_dict (found: {keys}); save model.state_dict() or nest it under 'state_dict'")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in STRIP_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_state_dict_checked(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], *, strict: bool = True, source: str = "checkpoint") -> dict:
    """Load ``sd`` into ``module``; on mismatch raise one short, readable error."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape]

    def few(items: list[str]) -> str:
        return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

    if shapes or (strict and (missing or unexpected)):
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {few(unexpected)}")
        if shapes:
            parts.append(f"shape conflicts ({len(shapes)}): {few(shapes)}")
        fix = "check --model (and --model-arg, e.g. num_classes=...)"
        if not shapes:
            fix += " or pass --non-strict to ignore missing/unexpected keys"
        raise UserFacingError(f"{source} does not fit the model architecture: {'; '.join(parts)}; {fix}")
    module.load_state_dict(dict(sd), strict=False)
    return {"missing": missing, "unexpected": unexpected}


def classifier_key(module: torch.nn.Module) -> str | None:
    """The state_dict key of a classifier's output weight: timm's ``pretrained_cfg["classifier"]``, else the
    last weight with two or more dimensions (``fc.weight``, ``classifier.6.weight``, ``head.weight``...)."""
    own = module.state_dict()
    cfg = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None) or {}
    head = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    for name in ([head] if isinstance(head, str) else list(head or ())):
        key = f"{name}.weight"
        if key in own and own[key].dim() >= 2:
            return key
    last = None
    for key, value in own.items():
        if key.endswith("weight") and value.dim() >= 2 and value.is_floating_point():
            last = key
    return last


def checkpoint_head_size(module: torch.nn.Module, sd: Mapping[str, torch.Tensor]) -> int | None:
    """The checkpoint's class count when its classifier weight differs from ``module``'s only in the
    number of outputs (so the model should be built with ``num_classes`` = that); else None."""
    key = classifier_key(module)
    if key is None or key not in sd:
        return None
    mine, theirs = module.state_dict()[key], sd[key]
    if not isinstance(theirs, torch.Tensor) or theirs.dim() != mine.dim() or theirs.shape[1:] != mine.shape[1:]:
        return None
    return int(theirs.shape[0]) if theirs.shape[0] != mine.shape[0] else None
