"""Training data around any freqprobe data source: a seeded holdout split, shuffled labels, fixed tracking subsets."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from freqprobe import Batch, DataSource, UserFacingError


class SubsetSource(DataSource):
    """The samples of ``base`` at ``positions`` (in that order), as a data source of its own."""

    def __init__(self, base: DataSource, positions: np.ndarray, label: str) -> None:
        self.base = base
        self.positions = np.asarray(positions, dtype=np.int64)
        self.name = f"{base.name}[{label}]"
        self.argument, self.root, self.split = getattr(base, "argument", None), getattr(base, "root", None), base.split
        self.task = getattr(base, "task", "classification")
        self.num_classes = base.num_classes
        self.class_names = base.class_names
        self.fixed_num_classes = getattr(base, "fixed_num_classes", True)
        self.in_memory = getattr(base, "in_memory", False)
        self.label = label

    def has_split(self, split: str) -> bool:
        return split == self.split

    def __len__(self) -> int:
        return len(self.positions)

    def load(self, indices: np.ndarray) -> Batch:
        idx = np.asarray(indices, dtype=np.int64)
        b = self.base.load(self.positions[idx])
        return Batch(b.images, b.targets, torch.from_numpy(idx))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "of": self.base.describe(), "subset": self.label, "n": len(self)}


class RelabelledSource(DataSource):
    """``base`` with other labels (``M_shuffle``: the training labels permuted across samples)."""

    def __init__(self, base: DataSource, labels: np.ndarray, label: str) -> None:
        self.base, self.labels = base, np.asarray(labels, dtype=np.int64)
        self.name = f"{base.name}[{label}]"
        self.argument, self.root, self.split = getattr(base, "argument", None), getattr(base, "root", None), base.split
        self.num_classes, self.class_names = base.num_classes, base.class_names
        self.in_memory = getattr(base, "in_memory", False)
        self.label = label

    def has_split(self, split: str) -> bool:
        return split == self.split

    def __len__(self) -> int:
        return len(self.base)

    def load(self, indices: np.ndarray) -> Batch:
        idx = np.asarray(indices, dtype=np.int64)
        b = self.base.load(idx)
        return Batch(b.images, torch.from_numpy(self.labels[idx]), b.indices)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "of": self.base.describe(), "labels": self.label, "n": len(self)}


def all_labels(data: DataSource) -> np.ndarray:
    """Every label of ``data`` in order (from its arrays when it has them, else by reading it once)."""
    y = getattr(data, "y", None)
    if isinstance(y, np.ndarray) and len(y) == len(data):
        return y.astype(np.int64)
    out = [np.asarray(b.targets) for b in data.batches(1000)]
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def holdout_split(data: DataSource, fraction: float, seed: int) -> tuple[SubsetSource, SubsetSource]:
    """A seeded split of one split: (train part, held-out test part), each in the source's order."""
    if not 0.0 < fraction < 1.0:
        raise UserFacingError(f"--holdout must be a fraction between 0 and 1 (e.g. 0.2), got {fraction!r}")
    n = len(data)
    n_test = int(round(fraction * n))
    if n_test < 1 or n - n_test < 1:
        raise UserFacingError(f"--holdout {fraction:g} of {n} samples leaves an empty part; choose another fraction")
    perm = np.random.default_rng(seed).permutation(n)
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return SubsetSource(data, train, f"holdout-train {1 - fraction:g} seed {seed}"), SubsetSource(
        data, test, f"holdout-test {fraction:g} seed {seed}")


def first(data: DataSource, n: int | None, what: str) -> DataSource:
    """The first ``n`` samples of ``data`` (all when None)."""
    if n is None or n >= len(data):
        return data
    if n < 1:
        raise UserFacingError(f"{what} must be at least 1, got {n}")
    return SubsetSource(data, np.arange(n), f"first {n}")


def shuffled_labels(labels: np.ndarray, seed: int) -> np.ndarray:
    """The labels permuted across samples with ``seed`` (the class frequencies stay; the image-label link goes)."""
    return np.random.default_rng(seed).permutation(np.asarray(labels, dtype=np.int64))


def fixed_sample(data: DataSource, n: int | None, seed: int, label: str) -> DataSource:
    """A fixed, seeded sample of ``n`` samples of ``data`` in data order (all when None or n >= len)."""
    if n is None or n >= len(data):
        return data
    pos = np.sort(np.random.default_rng(seed).choice(len(data), size=n, replace=False))
    return SubsetSource(data, pos, f"{label} {n} seed {seed}")
