"""``synth10``: the embedded default data set, generated procedurally (nothing is downloaded).

CIFAR-sized (3×32×32, uint8), 10 classes, 10,000 training and 1,000 test images, seeded and
deterministic (``make_synth10(split, n, seed)``; the train and test splits use independent
streams of the same seed). Each class is carried by two cues, built so that a model can show the
paper's Figure 2 phenomenon within a quick fit:

* a **low-frequency cue**: one object whose shape and colour name the class (red disk, orange
  square, ..., brown frame; see ``CLASS_NAMES``), with jittered position, size and colour, on a
  smooth random colour background with three small random distractor blobs. With probability
  ``CONFLICT_PROB`` (0.4) the object is drawn from a uniformly random class instead, so the
  shape alone predicts the label of about 64 % of the images;
* a faint **high-frequency cue**: a grey cosine grating at the class's own spatial frequency
  ``GRATING_FREQS`` (cycles per 32 pixels), random phase, amplitude 6–10 / 255. Every grating
  lies at radius 16.3–22.6 from the centre of the spectrum, outside the low part for r ≤ 16; at
  native size it reads as a barely visible fine hatching. It always names the true label.

Gaussian sensor noise (σ = 1.5 / 255) and 8-bit quantisation come last. A model fitted with the
quickstart recipe (timm resnet18, Adam lr 1e-3, batch 100, 5 epochs) is right on ~90 % of the
test images, far more than the shape allows, because it reads the grating: on the low-frequency
images its accuracy collapses and on the high-frequency ones it stays above chance. See
docs/datasets.md for the measured numbers.
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 32
NUM_CLASSES = 10
TRAIN_SIZE = 10000
TEST_SIZE = 1000
DEFAULT_EPOCHS = 5
DEFAULT_LR = 1e-3

# (name, shape, RGB colour in [0, 1], HF grating frequency (fy, fx) in cycles per 32 pixels)
_CLASSES = (
    ("red-disk", "disk", (0.85, 0.15, 0.15), (16, 3)),
    ("orange-square", "square", (0.95, 0.55, 0.10), (15, 8)),
    ("yellow-triangle", "triangle", (0.90, 0.85, 0.15), (12, 12)),
    ("green-ring", "ring", (0.15, 0.70, 0.20), (8, 15)),
    ("cyan-cross", "cross", (0.15, 0.80, 0.85), (3, 16)),
    ("blue-hbar", "hbar", (0.15, 0.25, 0.90), (15, -8)),
    ("purple-vbar", "vbar", (0.55, 0.20, 0.75), (12, -12)),
    ("magenta-diamond", "diamond", (0.90, 0.20, 0.70), (8, -15)),
    ("white-twin-blobs", "twin", (0.92, 0.92, 0.92), (16, 16)),
    ("brown-frame", "frame", (0.50, 0.30, 0.12), (16, 9)),
)
CLASS_NAMES = tuple(c[0] for c in _CLASSES)
GRATING_FREQS = tuple(c[3] for c in _CLASSES)

SPLITS = ("train", "test")

# construction parameters
OBJECT_RADIUS = 7.0  # nominal object half-size in pixels
SCALE_JITTER = (0.75, 1.25)
CENTRE_RANGE = (9.0, 23.0)
COLOUR_JITTER = 0.08
EDGE_WIDTH = 1.0  # soft edge (pixels) of objects and distractors
CONFLICT_PROB = 0.4  # probability that the object is drawn from a uniformly random class
N_DISTRACTORS = 3
GRATING_AMP = (6.0 / 255, 10.0 / 255)
NOISE_STD = 1.5 / 255


def _sdf(shape: str, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Approximate signed distance (pixels, <0 inside) of a shape centred at 0 with half-size r."""
    au, av = np.abs(u), np.abs(v)
    if shape == "disk":
        return np.hypot(u, v) - r
    if shape == "square":
        return np.maximum(au, av) - 0.8 * r
    if shape == "triangle":  # pointing up (v grows downwards)
        return np.maximum(0.866 * au + 0.5 * v, -v) - 0.5 * r
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.8 * r) - 0.25 * r
    if shape == "cross":
        w = 0.3 * r
        return np.minimum(np.maximum(au - r, av - w), np.maximum(au - w, av - r))
    if shape == "hbar":
        return np.maximum(au - 1.2 * r, av - 0.4 * r)
    if shape == "vbar":
        return np.maximum(av - 1.2 * r, au - 0.4 * r)
    if shape == "diamond":
        return (au + av) * 0.7071 - 0.8 * r
    if shape == "twin":
        return np.hypot(au - 0.6 * r, v) - 0.45 * r
    if shape == "frame":
        return np.abs(np.maximum(au, av) - 0.75 * r) - 0.2 * r
    raise ValueError(shape)


def _alpha(sdf: np.ndarray) -> np.ndarray:
    return np.clip(0.5 - sdf / EDGE_WIDTH, 0.0, 1.0)


def make_synth10(split: str = "test", n: int | None = None, seed: int = 0, *, with_object_class: bool = False):
    """Images (uint8 N×32×32×3) and labels (int64 N) of ``split`` (``train``/``test``); ``n`` defaults to the split size.

    With ``with_object_class`` a third array gives the class whose shape and colour the object
    was drawn from (it differs from the label on the conflicting images).
    """
    if split not in SPLITS:
        raise ValueError(f"synth10: unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    if n is None:
        n = TRAIN_SIZE if split == "train" else TEST_SIZE
    n = int(n)
    if n < 0:
        raise ValueError("synth10: n must be >= 0")
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(len(SPLITS))[SPLITS.index(split)])
    S = IMAGE_SIZE
    f32 = np.float32

    y = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)

    # 1. background: per-image base colour + smooth colour field (DCT basis, <= 1 cycle per image)
    i = np.arange(S, dtype=f32) + 0.5
    basis = np.cos(np.pi * np.outer(i, np.arange(3)) / S).astype(f32)  # (S, 3)
    coef = rng.normal(0.0, 0.12, (n, 3, 3, 3)).astype(f32)
    coef[:, 0, 0, :] = rng.uniform(0.2, 0.8, (n, 3))
    img = np.einsum("ik,nklc,jl->nijc", basis, coef, basis, optimize=True)

    yy, xx = np.meshgrid(np.arange(S, dtype=f32), np.arange(S, dtype=f32), indexing="ij")

    # 2. distractors: small soft blobs of random colour
    for _ in range(N_DISTRACTORS):
        c = rng.uniform(2.0, S - 2.0, (n, 2, 1, 1)).astype(f32)
        rad = rng.uniform(1.5, 3.5, (n, 1, 1)).astype(f32)
        col = rng.uniform(0.0, 1.0, (n, 1, 1, 3)).astype(f32)
        a = _alpha(np.hypot(yy - c[:, 0], xx - c[:, 1]) - rad)[..., None]
        img = img * (1 - a) + col * a

    # 3. the class object (LF cue); with prob CONFLICT_PROB it is drawn from a random class
    shape_cls = np.where(rng.random(n) < CONFLICT_PROB, rng.integers(0, NUM_CLASSES, n), y)
    centre = rng.uniform(*CENTRE_RANGE, (n, 2, 1, 1)).astype(f32)
    rad = (OBJECT_RADIUS * rng.uniform(*SCALE_JITTER, (n, 1, 1))).astype(f32)
    base_col = np.array([c[2] for c in _CLASSES], dtype=f32)[shape_cls]
    col = np.clip(base_col + rng.normal(0.0, COLOUR_JITTER, (n, 3)).astype(f32), 0.03, 0.97)[:, None, None, :]
    u = xx - centre[:, 1]
    v = yy - centre[:, 0]
    a = np.empty((n, S, S), dtype=f32)
    for k, (_, shape, _, _) in enumerate(_CLASSES):
        idx = np.flatnonzero(shape_cls == k)
        if idx.size:
            a[idx] = _alpha(_sdf(shape, u[idx], v[idx], rad[idx]))
    a = a[..., None]
    img = img * (1 - a) + col * a

    # 4. HF cue: faint grey grating at the class frequency, random phase and amplitude
    fr = np.array(GRATING_FREQS, dtype=f32)[y]
    phase = rng.uniform(0.0, 2 * np.pi, n).astype(f32)
    amp = rng.uniform(*GRATING_AMP, n).astype(f32)
    arg = (2 * np.pi / S) * (fr[:, 0, None, None] * yy + fr[:, 1, None, None] * xx) + phase[:, None, None]
    img = img + (amp[:, None, None] * np.cos(arg))[..., None]

    # 5. sensor noise and quantisation
    img = img + rng.normal(0.0, NOISE_STD, img.shape).astype(f32)
    x = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    if with_object_class:
        return x, y, shape_cls.astype(np.int64)
    return x, y
