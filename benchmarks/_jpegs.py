"""An ImageNet-style JPEG folder made on the spot (the end-to-end benchmark and the GPU suite read it).

``make_jpeg_folder(out, n)`` writes ``n`` JPEGs (quality 90, about ImageNet-val's mean size, 500×375
by default) into ``classes`` class folders: seeded crops of the shared COCO val2017 images when a
data folder is given (real photographs: what decoding costs on real data), else seeded smooth
noise. The same arguments give the same files; a folder that already holds them is reused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: ImageNet-val's typical image (its mean is about 500×400; 500×375 is the most common size)
IMAGENET_SIZE = (500, 375)


def coco_images(data_dir: str | Path | None) -> list[Path]:
    """The shared COCO val2017 mini images under ``data_dir`` (none when it or they are absent)."""
    if not data_dir:
        return []
    d = Path(data_dir) / "coco_val2017_mini" / "val2017"
    return sorted(d.glob("*.jpg")) if d.is_dir() else []


def make_jpeg_folder(out: str | Path, n: int, *, data_dir: str | Path | None = None, size: tuple[int, int] = IMAGENET_SIZE,
                     classes: int = 10, quality: int = 90, seed: int = 0) -> Path:
    """``out`` holding ``n`` JPEGs of ``size`` (w, h) in ``classes`` folders ``c000``... (see the module docstring)."""
    from PIL import Image

    out = Path(out)
    sources = coco_images(data_dir)
    spec = {"n": n, "size": list(size), "classes": classes, "quality": quality, "seed": seed,
            "from": "coco_val2017_mini crops" if sources else "smooth noise"}
    stamp = out / "made.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    opened = [Image.open(p).convert("RGB") for p in sources]
    w, h = size
    for i in range(n):
        folder = out / f"c{i % classes:03d}"
        folder.mkdir(exist_ok=True)
        if opened:
            im = opened[i % len(opened)]
            scale = rng.uniform(0.5, 1.0)
            cw, ch = max(16, int(im.width * scale)), max(16, int(im.height * scale))
            x0, y0 = int(rng.integers(0, im.width - cw + 1)), int(rng.integers(0, im.height - ch + 1))
            tile = im.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BILINEAR)
            if rng.random() < 0.5:
                tile = tile.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            small = rng.integers(0, 256, size=(max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
            tile = Image.fromarray(small).resize((w, h), Image.BICUBIC)
        tile.save(folder / f"img{i:06d}.jpg", quality=quality)
    stamp.write_text(json.dumps(spec))
    return out
