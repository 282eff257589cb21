"""``freqprobe decompose``: export a decomposed data set as .npz or as PNG folders, streamed batch by batch.

Both exports work in ``.NAME.partial`` beside the output (:mod:`freqprobe.journal`), record how
many samples are finished (after the batch's files are on the disk: fsync-ed, at most ~5 % of the
time, :class:`_Done`), and move the output into place when complete: a SIGINT/SIGTERM stops at a
batch boundary, and ``resume=True`` continues from the last recorded batch after any stop (SIGKILL
and power loss included), with arrays identical to an uninterrupted export's. The arrays of an
``.npz`` are allocated on the disk before the first batch, so a full disk is one line
(:class:`freqprobe.journal.NoSpaceError`) with the state kept, never a SIGBUS.

Layout of the ``.npz``: ``x`` and every component (``low_r8``, ``high_r8``, ...) are float32
**N×C×H×W** (PyTorch's layout); ``y`` is int64 (N,); ``layout`` holds the string ``"NCHW"``, which
``--data npz:`` reads, so an export can be probed again as it is.

Data whose images differ in size (a source whose batches yield *lists* of C×H×W tensors, such as
a detection data set) cannot share one array: :func:`export_images` writes a folder instead, one lossless
float32 ``.npy`` per image and component (``npy/low_r128/000000000139.npy``), PNGs for viewing under
a named rescale (``png-minmax/high_r128/000000000139.png``) and the 8-bit source as PNG
(``original/000000000139.png``); never JPEG, whose compression would remove the very
high-frequency part being exported.
"""

from __future__ import annotations

import errno
import io
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import guard as _guard
from .errors import UserFacingError
from .interfaces import DataSource, Decomposer, RescalePolicy
from .errors import StopRequested
from .journal import NO_SPACE, check_stop, stop_signal, sync_files, workspace
from .tables import fmt_param

#: the layout of the image arrays an npz export writes (stored as the array ``layout``)
NPZ_LAYOUT = "NCHW"
#: the layout of each ``.npy`` a per-image export writes (one image: no batch axis)
IMAGE_LAYOUT = "CHW"
#: zlib level of the per-image PNGs: lossless at any level; 1 writes a 640×480 image in ~40 % less time than
#: PIL's default 6 for ~15 % more bytes (the float32 .npy files beside them are several times larger anyway)
PNG_LEVEL = 1
#: why data whose images differ in size cannot be exported to one .npz (the CLI's and export_npz's refusal)
NPZ_NEEDS_ONE_SIZE = ("images of different sizes cannot share one array; pass a folder as --out "
                      "(one float32 .npy per image and component, plus PNGs)")


def component_key(comp: str, param_name: str, p: Any) -> str:
    return f"{comp}_{param_name}{fmt_param(p)}"


def _fingerprint(data: DataSource, dec: Decomposer, params, rescale, n: int, batch_size: int, device, extra=None) -> dict:
    return json.loads(json.dumps({
        "data": data.describe(), "n": n, "decomposer": dec.name, "options": dec.options(), "params": list(params),
        "rescale": getattr(rescale, "name", None), "batch_size": batch_size, "device": str(device), **(extra or {}),
    }, default=str))


class _Done:
    """How many samples an export has finished, in its journal: after the files of those samples are on the disk.

    A record costs an fsync of what was written since the last one; it is made when a stop is asked
    for, at the end, and otherwise when the time since the last one is 20 times what that one cost
    (about 5 % of the export at most). A resumed export redoes the batches after the last record.
    """

    def __init__(self, ws, done: int, n: int, flush=None) -> None:
        self.ws, self.pos, self.n, self.flush = ws, done, n, flush
        self.files: list[Path] = []
        self.cost = 0.0
        self.last = time.perf_counter()
        ws.count(done, n)

    def batch(self, pos: int, files: Sequence[Path] = ()) -> None:
        """A batch is written (``files``, if any, are its files); record it when due."""
        self.pos = pos
        self.files.extend(files)
        if stop_signal() is not None or time.perf_counter() - self.last >= 20 * self.cost:
            self.record()

    def record(self) -> None:
        t = time.perf_counter()
        if self.flush is not None:
            self.flush()
        sync_files(self.files, self.ws.dir)
        self.files.clear()
        self.ws.note("done", self.pos)
        self.ws.count(self.pos, self.n)
        self.cost = time.perf_counter() - t
        self.last = time.perf_counter()


def _reserve(path: Path) -> None:
    """Allocate a memmap file's blocks now: a full disk is an ENOSPC here, not a SIGBUS when a page is written."""
    if not hasattr(os, "posix_fallocate"):  # pragma: no cover - macOS, Windows
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno in NO_SPACE:
                raise OSError(exc.errno, exc.strerror, str(path)) from None
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


def _rest(data: DataSource, done: int, batch_size: int, n: int, workers: int | None = 0):
    """The batches after the first ``done`` samples (none when all ``n`` are done: only the end is left to write),
    read with ``workers`` worker processes (freqprobe.loading)."""
    from .loading import iter_batches

    return iter_batches(data, batch_size, start=done // batch_size, limit=n, workers=workers) if done < n else iter(())


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
    workers: int | None = 0,
) -> list[str]:
    """Write ``x``, ``y``, ``layout`` and one float32 N×C×H×W array per component and parameter into ``path`` (.npz).

    Arrays are streamed into on-disk ``.npy`` memmaps in the partial folder and zipped at the end
    (stored, with fixed timestamps: the same data gives the same bytes), so memory stays bounded
    by one batch and the file appears only when complete.
    """
    path = Path(path)
    n = len(data) if limit is None else min(limit, len(data))
    first_x, _, _ = next(data.batches(1))
    if isinstance(first_x, (list, tuple)):
        raise UserFacingError(f"cannot write {path.name}: {data.name} data: {NPZ_NEEDS_ONE_SIZE}")
    shape = (n, *first_x.shape[1:])
    keys = ["x"] + [component_key(c, dec.param_name, p) for p in params for c in dec.components]
    with workspace(path, kind="decompose-npz", resume=resume, announce=announce) as ws:
        ws.bind(_fingerprint(data, dec, params, rescale, n, batch_size, device, {"shape": list(shape)}))
        done = int(ws.journal.get("done", 0)) if ws.resumed else 0
        mode = "r+" if done and all((ws.dir / f"{k}.npy").is_file() for k in keys + ["y"]) else "w+"
        if mode == "w+":
            done = 0
        ws.count(done, n)
        arrays = {k: _memmap(ws.dir / f"{k}.npy", mode, np.float32, shape) for k in keys}
        ys = _memmap(ws.dir / "y.npy", mode, np.int64, (n,))
        if progress and done:
            progress(done)
        out = None
        mapped = [*arrays.values(), ys]
        rec = _Done(ws, done, n, flush=lambda m=mapped: [a.flush() for a in m])
        pos = done
        try:
            for x, y, _ in _rest(data, done, batch_size, n, workers):
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
                rec.batch(pos)  # after the arrays: a resumed export never skips an unwritten batch
                if progress:
                    progress(b)
        except StopRequested as exc:
            rec.record()
            raise _stopped(exc, rec.pos, n, ws, resume_hint) from None
        rec.record()
        del arrays, ys, mapped, rec  # unmapped before they are zipped
        np.save(ws.dir / "layout.npy", np.array(NPZ_LAYOUT))
        tmp_zip = ws.dir / "out.npz"
        with ws.writing(path):
            try:
                _zip(ws.dir, keys + ["y", "layout"], tmp_zip)
            except BaseException:
                tmp_zip.unlink(missing_ok=True)  # the space it took goes back
                raise
        ws.commit(payload=tmp_zip)
    return keys + ["y", "layout"]


def _memmap(path: Path, mode: str, dtype, shape) -> np.memmap:
    """An on-disk ``.npy`` array (``w+``: created, ``r+``: the one an interrupted export left), its blocks allocated."""
    try:
        a = np.lib.format.open_memmap(path, mode=mode, dtype=dtype, shape=shape)
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    _reserve(path)
    return a


def _zip(folder: Path, keys: Sequence[str], dest: Path) -> None:
    """The ``.npy`` files ``keys`` of ``folder`` as one stored zip (fixed timestamps: the same arrays, the same bytes)."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for k in keys:
            info = zipfile.ZipInfo(f"{k}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with open(folder / f"{k}.npy", "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                while chunk := src.read(1 << 24):
                    dst.write(chunk)


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
    workers: int | None = 0,
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

        written: list[Path] = []

        def save(folder: str, imgs: torch.Tensor, idx, ys) -> None:
            for img, i, lab in zip(imgs, idx.tolist(), ys.tolist()):
                written.append(ws.dir / folder / f"{i:05d}_label{lab}.png")
                with ws.writing(written[-1]):
                    Image.fromarray(_to_uint8_hwc(img)).save(written[-1])

        if progress and done:
            progress(done)
        out = None
        rec = _Done(ws, done, n)
        pos = done
        try:
            for x, y, idx in _rest(data, done, batch_size, n, workers):
                check_stop("the export")
                x = x.to(device)
                save("original", x, idx, y)
                if out is None or out[dec.components[0]].shape != x.shape:
                    out = {c: torch.empty_like(x) for c in dec.components}
                for p, parts in _guard.decompose_all(dec, x, list(params), out=out):
                    for c in dec.components:
                        save(component_key(c, dec.param_name, p), rescale.apply(parts[c]), idx, y)
                pos += len(x)
                rec.batch(pos, written)
                written.clear()
                if progress:
                    progress(len(x))
        except StopRequested as exc:
            rec.record()
            raise _stopped(exc, rec.pos, n, ws, resume_hint) from None
        rec.record()
        ws.write_json("manifest.json", {"decomposer": dec.name, "options": dec.options(), "params": list(params),
                                        "rescale": rescale.name, "n": n})
        ws.commit()
    return folders


# ----------------------------------------------------------------------------- images of different sizes
def yields_image_lists(data: DataSource) -> bool:
    """Whether the data's batches hold a list of C×H×W images (of different sizes) rather than one N×C×H×W tensor.

    Reads the first image (what :func:`export_npz` reads to size its arrays).
    """
    images = next(iter(data.batches(1)))[0]
    return isinstance(images, (list, tuple))


def sample_stems(data: DataSource, n: int) -> list[str]:
    """The file stem of each of the first ``n`` samples: the data's ``sample_name(i)`` or the zero-padded index ``00042``.

    Refuses names that are empty, contain a path separator or repeat (two images would write one file).
    """
    namer = getattr(data, "sample_name", None)
    if namer is None:
        return [f"{i:05d}" for i in range(n)]
    stems = [str(namer(i)) for i in range(n)]
    seen: dict[str, int] = {}
    for i, s in enumerate(stems):
        if not s or s in (".", "..") or "/" in s or "\\" in s or "\0" in s:
            raise UserFacingError(f"{data.name} data names sample {i} {s!r}, which cannot be a file name")
        if s in seen:
            raise UserFacingError(f"{data.name} data names samples {seen[s]} and {i} both {s!r}; their files would collide")
        seen[s] = i
    return stems


def _to_uint8_hwc(img: torch.Tensor) -> np.ndarray:
    """A C×H×W image in [0, 1] (clamped) as uint8 H×W×C (H×W for one channel), for PIL."""
    a = (img.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return a[:, :, 0] if a.shape[2] == 1 else a


def export_images(
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
    workers: int | None = 0,
) -> list[str]:
    """A folder for data whose images differ in size: each image decomposed on its own, at its own size.

    Layout (``KEY`` = component and parameter, ``low_r128``; ``STEM`` = the data's ``sample_name(i)``,
    e.g. an image file's stem, or the zero-padded index ``00042``):

    * ``npy/KEY/STEM.npy`` — float32 C×H×W, exactly the decomposer's output (no rescale: the high
      part keeps its negative pixels; low + high = the original to float32 rounding);
    * ``png-RESCALE/KEY/STEM.png`` — the same images for viewing, after ``rescale`` (named in the
      folder so they are not taken for the data), 8-bit;
    * ``original/STEM.png`` — the source image as 8-bit PNG (lossless for 8-bit sources such as JPEG files);
    * ``manifest.json`` — decomposer, options, parameters, rescale, n, layout ``"CHW"``, the data's
      ``describe()`` and the list of folders.

    Streams batch by batch in ``.NAME.partial`` and resumes like :func:`export_npz`. Returns the folders.
    """
    path = Path(path)
    n = len(data) if limit is None else min(limit, len(data))
    stems = sample_stems(data, n)
    keys = [component_key(c, dec.param_name, p) for p in params for c in dec.components]
    png_root = f"png-{rescale.name}"
    folders = ["original"] + [f"npy/{k}" for k in keys] + [f"{png_root}/{k}" for k in keys]
    with workspace(path, kind="decompose-images", resume=resume, announce=announce) as ws:
        ws.bind(_fingerprint(data, dec, params, rescale, n, batch_size, device, {"layout": IMAGE_LAYOUT}))
        done = int(ws.journal.get("done", 0)) if ws.resumed else 0
        for f in folders:
            (ws.dir / f).mkdir(parents=True, exist_ok=True)
        if progress and done:
            progress(done)
        rec = _Done(ws, done, n)
        pos = done
        try:
            for images, _, idx in _rest(data, done, batch_size, n, workers):
                check_stop("the export")
                if isinstance(images, torch.Tensor):
                    images = list(images.unbind(0))
                written: list[Path] = []
                for img, i in zip(images, idx.tolist()):
                    written += _export_one(ws, img.to(device)[None].contiguous(), stems[i], dec, params, rescale, png_root)
                pos += len(images)
                rec.batch(pos, written)  # after the files: a resumed export rewrites any file of an unfinished batch
                if progress:
                    progress(len(images))
        except StopRequested as exc:
            rec.record()
            raise _stopped(exc, rec.pos, n, ws, resume_hint) from None
        rec.record()
        manifest = {
            "decomposer": dec.name, "options": dec.options(), "param_name": dec.param_name, "params": list(params),
            "components": list(dec.components), "rescale": rescale.name, "n": n, "layout": IMAGE_LAYOUT, "dtype": "float32",
            "names": "sample_name" if getattr(data, "sample_name", None) is not None else "index",
            "data": data.describe(), "folders": folders,
        }
        ws.write_json("manifest.json", manifest)
        ws.commit()
    return folders


def _save_npy(path: Path, t: torch.Tensor) -> None:
    """One float32 ``.npy`` (through bytes: numpy's own writer reports a full disk without saying so)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32))
    with open(path, "wb") as f:
        f.write(buf.getbuffer())


def _export_one(ws, x: torch.Tensor, stem: str, dec: Decomposer, params: Sequence, rescale: RescalePolicy,
                png_root: str) -> list[Path]:
    """One image (1×C×H×W on its device): its original PNG, and per component and parameter its .npy and PNG."""
    from PIL import Image

    files = [ws.dir / "original" / f"{stem}.png"]
    with ws.writing(files[-1]):
        Image.fromarray(_to_uint8_hwc(x[0])).save(files[-1], compress_level=PNG_LEVEL)
    for p, parts in _guard.decompose_all(dec, x, list(params)):
        for c in dec.components:
            key = component_key(c, dec.param_name, p)
            part = parts[c]
            files.append(ws.dir / "npy" / key / f"{stem}.npy")
            with ws.writing(files[-1]):
                _save_npy(files[-1], part[0])
            files.append(ws.dir / png_root / key / f"{stem}.png")
            with ws.writing(files[-1]):
                Image.fromarray(_to_uint8_hwc(rescale.apply(part)[0])).save(files[-1], compress_level=PNG_LEVEL)
    return files
