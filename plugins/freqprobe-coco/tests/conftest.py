"""Fixtures of the COCO plugin's tests: the console entry with the plugin, the shared 79-image mini set."""

from __future__ import annotations

import pytest


@pytest.fixture
def cli(cli, coco_pm):
    """The root conftest's in-process console entry, with the COCO plugin registered."""
    return cli


@pytest.fixture
def coco_mini(shared_data) -> dict:
    d = shared_data / "coco_val2017_mini"
    if not (d / "instances_val2017_mini.json").is_file():
        pytest.skip(f"COCO mini set not found in {d} (../shared/data/coco_val2017_mini)")
    return {"images": d / "val2017", "ann": d / "instances_val2017_mini.json",
            "spec": f"coco:{d / 'val2017'}:{d / 'instances_val2017_mini.json'}"}
