"""``freqprobe decompose``: export a decomposed data set as .npz or as PNG folders, streamed batch by batch."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .interfaces import DataSource, Decomposer, RescalePolicy
from .tables import fmt_param


def component_key(comp: str, param_name: str, p: Any) -> str:
    return f"{comp}_{param_name}{fmt_param(p)}"


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
) -> list[str]:
    """Write ``x``, ``y`` and one float32 N×C×H×W array per component and parameter into ``path`` (.npz).

    Arrays are streamed into on-disk ``.npy`` memmaps and zipped at the end, so memory stays
    bounded by one batch; the file appears only when complete.
    """
    n = len(data) if limit is None else min(limit, len(data))
    first_x, _, _ = next(data.batches(1))
    shape = (n, *first_x.shape[1:])
    keys = ["x"] + [component_key(c, dec.param_name, p) for p in params for c in dec.components]
    work = path.with_name(f".{path.name}.partial-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=False)
    try:
        arrays = {k: np.lib.format.open_memmap(work / f"{k}.npy", mode="w+", dtype=np.float32, shape=shape) for k in keys}
        ys = np.lib.format.open_memmap(work / "y.npy", mode="w+", dtype=np.int64, shape=(n,))
        out = None
        pos = 0
        for x, y, _ in data.batches(batch_size, limit=n):
            b = len(x)
            x = x.to(device)
            arrays["x"][pos : pos + b] = x.cpu().numpy()
            ys[pos : pos + b] = y.numpy()
            if out is None or out[dec.components[0]].shape != x.shape:
                out = {c: torch.empty_like(x) for c in dec.components}
            for p, parts in dec.decompose_all(x, list(params), out=out):
                for c in dec.components:
                    t = parts[c] if rescale is None else rescale.apply(parts[c])
                    arrays[component_key(c, dec.param_name, p)][pos : pos + b] = t.cpu().numpy()
            pos += b
            if progress:
                progress(b)
        for a in list(arrays.values()) + [ys]:
            a.flush()
        del arrays, ys
        tmp_zip = work / "out.npz"
        with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for k in keys + ["y"]:
                zf.write(work / f"{k}.npy", arcname=f"{k}.npy")
        os.replace(tmp_zip, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return keys + ["y"]


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
) -> list[str]:
    """One sub-folder per component and parameter (plus ``original``), one PNG per sample: ``00042_label3.png``."""
    from PIL import Image

    n = len(data) if limit is None else min(limit, len(data))
    work = path.with_name(f".{path.name}.partial-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=False)
    folders = ["original"] + [component_key(c, dec.param_name, p) for p in params for c in dec.components]
    try:
        for f in folders:
            (work / f).mkdir()

        def save(folder: str, imgs: torch.Tensor, idx, ys) -> None:
            arr = (imgs.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for a, i, lab in zip(arr, idx.tolist(), ys.tolist()):
                Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(work / folder / f"{i:05d}_label{lab}.png")

        out = None
        for x, y, idx in data.batches(batch_size, limit=n):
            x = x.to(device)
            save("original", x, idx, y)
            if out is None or out[dec.components[0]].shape != x.shape:
                out = {c: torch.empty_like(x) for c in dec.components}
            for p, parts in dec.decompose_all(x, list(params), out=out):
                for c in dec.components:
                    save(component_key(c, dec.param_name, p), rescale.apply(parts[c]), idx, y)
            if progress:
                progress(len(x))
        (work / "manifest.json").write_text(
            json.dumps({"decomposer": dec.name, "options": dec.options(), "params": list(params), "rescale": rescale.name, "n": n}, indent=2) + "\n"
        )
        if path.exists():
            path.rmdir()
        os.replace(work, path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return folders
