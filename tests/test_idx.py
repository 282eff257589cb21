"""MNIST's raw IDX files read directly from --data-root (the shared test-only copy), against a struct-level reading."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

import freqprobe
from freqprobe.errors import UserFacingError


def test_mnist_idx_files_in_data_root(shared_data, pm):
    root = shared_data / "mnist_test"
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "rb") as f:
        magic, n = struct.unpack(">II", f.read(8))
        labels = np.frombuffer(f.read(), dtype=np.uint8)
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "rb") as f:
        _, n_img, rows, cols = struct.unpack(">IIII", f.read(16))
        first = np.frombuffer(f.read(rows * cols * 3), dtype=np.uint8).reshape(3, rows, cols)
    assert magic == 2049 and n == n_img == 10000
    data = freqprobe.open_data("mnist", root=root, pm=pm)
    assert len(data) == 10000 and data.has_split("test") and not data.has_split("train")
    x, y, idx = next(iter(data.batches(3)))
    assert x.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(y.numpy(), labels[:3])
    np.testing.assert_array_equal((x[:, 0] * 255).round().numpy().astype(np.uint8), first)
    with pytest.raises(UserFacingError, match="only the test .* no train split; use --split test"):
        freqprobe.open_data("mnist", root=root, split="train", pm=pm)
