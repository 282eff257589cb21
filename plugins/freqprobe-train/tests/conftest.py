"""Fixtures of the training plugin's tests: its plugin manager, the console entry with it, the shared MNIST files."""

from __future__ import annotations

import pytest


@pytest.fixture
def train_pm(first_party_pm):
    """The CLI's default plugin manager with the train and attacks plugins."""
    return first_party_pm("train", "attacks")


@pytest.fixture
def cli(cli, train_pm):
    return cli


@pytest.fixture
def mnist(shared_data) -> list[str]:
    root = shared_data / "mnist_test"
    if not (root / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST test files not found in {root}")
    return ["--data", "mnist", "--data-root", str(root), "--holdout", "0.2"]
