"""``torchrun --nproc_per_node 2 -m freqprobe run ...`` (gloo, CPU) writes exactly the files one process writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
COCO_FIX = REPO / "plugins" / "freqprobe-coco" / "tests" / "fixtures"


def same_files(a: Path, b: Path, names) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def one_and_two(processes, args: list, tmp_path: Path, names=()) -> None:
    """``freqprobe ARGS`` in one process into ``one/`` and under torchrun (two) into ``two/``: both succeed, ``names`` equal."""
    one = processes.one([*args, "--out", tmp_path / "one"], tmp_path)
    assert one.returncode == 0, one.stderr
    two = processes.two([*args, "--out", tmp_path / "two"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    same_files(tmp_path / "one", tmp_path / "two", names)


@pytest.mark.parametrize("batch, limit", [(5, 24), (5, 3)])  # five batches over two ranks; one batch (rank 1 gets nothing)
def test_lfc_hfc_two_processes_write_what_one_writes(freqprobe_processes, tmp_path, tiny_npz, tiny_model_file, batch, limit):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tinynet_mod", tiny_model_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.save(mod.tinynet().state_dict(), tmp_path / "w.pt")
    args = ["run", "--model", f"{tiny_model_file}:tinynet", "--checkpoint", tmp_path / "w.pt", "--data", f"npz:{tiny_npz}",
            "--radii", "2,4,8", "--batch-size", batch, "--limit", limit, "--gallery-size", 3, "--device", "cpu", "-q"]
    one_and_two(freqprobe_processes, args, tmp_path, ["summary.csv", "samples.csv"])
    if (tmp_path / "one" / "figure2.csv").exists():
        same_files(tmp_path / "one", tmp_path / "two", ["figure2.csv"])
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_coco_map_two_processes_write_what_one_writes(freqprobe_processes, tmp_path, shared_data):
    pytest.importorskip("onnxruntime")
    d = shared_data / "coco_val2017_mini"
    if not (shared_data / "coco_detector_fastestdet" / "FastestDet.onnx").is_file():
        pytest.skip("FastestDet.onnx not found")
    args = ["run", "--model", f"{COCO_FIX / 'fastestdet.py'}:fastestdet", "--probe", "coco-map",
            "--data", f"coco:{d / 'val2017'}:{d / 'instances_val2017_mini.json'}", "--limit", 6, "--batch-size", 2,
            "--probe-opt", "panels=0", "--device", "cpu", "-q"]
    one_and_two(freqprobe_processes, args, tmp_path, ["summary.csv", "samples.csv", "detections_original.json",
                                                    "detections_low_r128.json", "figure8_low_worse_r128.csv"])


def test_resume_refused_under_torchrun(freqprobe_processes, tmp_path, tiny_npz, tiny_model_file):
    got = freqprobe_processes.two(["run", "--model", f"{tiny_model_file}:tinynet", "--data", f"npz:{tiny_npz}", "--no-fit",
                         "--out", tmp_path / "r", "--resume", "-q"], tmp_path)
    assert got.returncode != 0 and "--resume is not available under torchrun" in got.stderr


def test_detectron2_two_processes_write_what_one_writes(freqprobe_processes, tmp_path, shared_data, detectron2_ready):
    """A detectron2 RetinaNet (random weights drawn from the seed in each process) sharded over two processes."""
    d = shared_data / "coco_val2017_mini"
    args = ["run", "--model", "detectron2:COCO-Detection/retinanet_R_50_FPN_3x.yaml", "--model-arg", "INPUT.MIN_SIZE_TEST=128",
            "--model-arg", "MODEL.RETINANET.SCORE_THRESH_TEST=0.0", "--model-arg", "TEST.DETECTIONS_PER_IMAGE=10",
            "--model-arg", "MODEL.RESNETS.NORM=GN", "--model-arg", "MODEL.FPN.NORM=GN", "--probe", "coco-map",
            "--data", f"coco:{d / 'val2017'}:{d / 'instances_val2017_mini.json'}", "--limit", 2, "--batch-size", 1,
            "--probe-opt", "panels=0", "--device", "cpu", "-q"]
    one_and_two(freqprobe_processes, args, tmp_path, ["summary.csv", "samples.csv", "detections_original.json",
                                                    "detections_low_r128.json", "detections_high_r128.json"])
    assert len(json.loads((tmp_path / "one" / "detections_original.json").read_text())) == 2 * 10
