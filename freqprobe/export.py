"""``freqprobe decompose``: export a decomposed data set as .npz or as PNG folders, streamed batch by batch.

Both exports work in ``.NAME.partial`` beside the output (:mod:`freqprobe.journal`), record after
every batch how many samples are finished, and move the output into place when complete: a
SIGINT/SIGTERM stops at a batch boundary, and ``resume=True`` continues from the last finished
batch after any stop (SIGKILL included), with arrays identical to an uninterrupted export's.

Layout of the ``.npz``: ``x`` and every component (``low_r8``, ``high_r8``, ...) are float32
**N×C×H×W** (PyTorch's layout); ``y`` is int64 (N,); ``layout`` holds the string ``"NCHW"``, which
``--data npz:`` reads, so an export can be probed again as it is.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import guard as _guard
from .engine import _batches
from .interfaces import DataSource, Decomposer, RescalePolicy
from .journal import StopRequested, check_stop, workspace
from .tables import fmt_param

#: the layout of the image arrays an npz export writes (stored as the array ``layout``)
NPZ_LAYOUT = "NCHW"


def component_key(comp: str, param_name: str, p: Any) -> str:
    return f"{comp}_{param_name}{fmt_param(p)}"


def _fingerprint(data: DataSource, dec: Decomposer, params, rescale, n: int, batch_size: int, device, extra=None) -> dict:
    return json.loads(json.dumps({
        "data": data.describe(), "n": n, "decomposer": dec.name, "options": dec.options(), "params": list(params),
        "rescale": getattr(rescale, "name", None), "batch_size": batch_size, "device": str(device), **(extra or {}),
    }, default=str))


def _stopped(exc: StopRequested, done: int, n: int, ws, resume_hint: str | None) -> StopRequested:
    hint = f" Resume with: {resume_hint}" if resume_hint else " Run it again with --resume to continue."
    return StopRequested(f"{exc} after {done} of {n} samples; the finished part is kept in {ws.dir}.{hint}", exc.signum)


def export_npz(
    data: DataSource,
    dec: Decomposer,
    params: Sequence,
    path: Path,
    *,
    rescale: RescalePolicy | None = None,
    limit: int | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
    resume: bool = False,
    announce: Callable[[str], None] | None = None,
    resume_hint: str | None = None,
) -> list[str]:
    """Write ``x``, ``y``, ``layout`` and one float32 N×C×H×W array per component and parameter into ``path`` (.npz).

    Arrays are streamed into on-disk ``.npy`` memmaps in the partial folder and zipped at the end
    (stored, with fixed timestamps: the same data gives the same bytes), so memory stays bounded
    by one batch and the file appears only when complete.
    """
    path = Path(path)
    n = len(data) if limit is None else min(limit, len(data))
    first_x, _, _ = next(data.batches(1))
    shape = (n, *first_x.shape[1:])
    keys = ["x"] + [component_key(c, dec.param_name, p) for p in params for c in dec.components]
    with workspace(path, kind="decompose-npz", resume=resume, announce=announce) as ws:
        ws.bind(_fingerprint(data, dec, params, rescale, n, batch_size, device, {"shape": list(shape)}))
        done = int(ws.journal.get("done", 0)) if ws.resumed else 0
        mode = "r+" if done and all((ws.dir / f"{k}.npy").is_file() for k in keys + ["y"]) else "w+"
        if mode == "w+":
            done = 0
        arrays = {k: np.lib.format.open_memmap(ws.dir / f"{k}.npy", mode=mode, dtype=np.float32, shape=shape) for k in keys}
        ys = np.lib.format.open_memmap(ws.dir / "y.npy", mode=mode, dtype=np.int64, shape=(n,))
        if progress and done:
            progress(done)
        out = None
        pos = done
        try:
            for x, y, _ in _batches(data, batch_size, limit=n, shard=None, start=done // batch_size):
                check_stop("the export")
                b = len(x)
                x = x.to(device)
                arrays["x"][pos : pos + b] = x.cpu().numpy()
                ys[pos : pos + b] = y.numpy()
                if out is None or out[dec.components[0]].shape != x.shape:
                    out = {c: torch.empty_like(x) for c in dec.components}
                for p, parts in _guard.decompose_all(dec, x, list(params), out=out):
                    for c in dec.components:
                        t = parts[c] if rescale is None else rescale.apply(parts[c])
                        arrays[component_key(c, dec.param_name, p)][pos : pos + b] = t.cpu().numpy()
                pos += b
                ws.note("done", pos)  # after the arrays: a resumed export never skips an unwritten batch
                if progress:
                    progress(b)
        except StopRequested as exc:
            raise _stopped(exc, pos, n, ws, resume_hint) from None
        for a in list(arrays.values()) + [ys]:
            a.flush()
        del arrays, ys
        np.save(ws.dir / "layout.npy", np.array(NPZ_LAYOUT))
        tmp_zip = ws.dir / "out.npz"
        with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for k in keys + ["y", "layout"]:
                info = zipfile.ZipInfo(f"{k}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with open(ws.dir / f"{k}.npy", "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                    while chunk := src.read(1 << 24):
                        dst.write(chunk)
        ws.commit(payload=tmp_zip)
    return keys + ["y", "layout"]


def export_png(
    data: DataSource,
    dec: Decomposer,
    params: Sequence,
    path: Path,
    *,
    rescale: RescalePolicy,
    limit: int | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
    resume: bool = False,
    announce: Callable[[str], None] | None = None,
    resume_hint: str | None = None,
) -> list[str]:
    """One sub-folder per component and parameter (plus ``original``), one PNG per sample: ``00042_label3.png``."""
    from PIL import Image

    path = Path(path)
    n = len(data) if limit is None else min(limit, len(data))
    folders = ["original"] + [component_key(c, dec.param_name, p) for p in params for c in dec.components]
    with workspace(path, kind="decompose-png", resume=resume, announce=announce) as ws:
        ws.bind(_fingerprint(data, dec, params, rescale, n, batch_size, device))
        done = int(ws.journal.get("done", 0)) if ws.resumed else 0
        for f in folders:
            (ws.dir / f).mkdir(exist_ok=True)

        def save(folder: str, imgs: torch.Tensor, idx, ys) -> None:
            arr = (imgs.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for a, i, lab in zip(arr, idx.tolist(), ys.tolist()):
                Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(ws.dir / folder / f"{i:05d}_label{lab}.png")

        if progress and done:
            progress(done)
        out = None
        pos = done
        try:
            for x, y, idx in _batches(data, batch_size, limit=n, shard=None, start=done // batch_size):
                check_stop("the export")
                x = x.to(device)
                save("original", x, idx, y)
                if out is None or out[dec.components[0]].shape != x.shape:
                    out = {c: torch.empty_like(x) for c in dec.components}
                for p, parts in _guard.decompose_all(dec, x, list(params), out=out):
                    for c in dec.components:
                        save(component_key(c, dec.param_name, p), rescale.apply(parts[c]), idx, y)
                pos += len(x)
                ws.note("done", pos)
                if progress:
                    progress(len(x))
        except StopRequested as exc:
            raise _stopped(exc, pos, n, ws, resume_hint) from None
        (ws.dir / "manifest.json").write_text(
            json.dumps({"decomposer": dec.name, "options": dec.options(), "params": list(params), "rescale": rescale.name, "n": n}, indent=2) + "\n"
        )
        ws.commit()
    return folders
