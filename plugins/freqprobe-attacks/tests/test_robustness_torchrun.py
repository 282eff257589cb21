"""``torchrun --nproc_per_node 2 -m freqprobe run ... --probe robustness`` (gloo, CPU) writes exactly the files one
process writes: the evaluators' per-batch float sums are merged and added up in batch order."""

from __future__ import annotations

NET = (
    "import torch\nfrom torch import nn\n"
    "def net(num_classes=4):\n    torch.manual_seed(0)\n"
    "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 16 * 16, num_classes))\n"
)


def test_robustness_two_processes_write_what_one_writes(freqprobe_processes, tmp_path, tiny_npz):
    (tmp_path / "net.py").write_text(NET)
    args = ["run", "--model", f"{tmp_path / 'net.py'}:net", "--data", f"npz:{tiny_npz}", "--probe", "robustness", "--no-fit",
            "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--radii", "4", "--attack", "fgsm", "--attack", "pgd:steps=2",
            "--eps", "0.05", "--batch-size", "5", "--device", "cpu", "-q"]
    one = freqprobe_processes.one([*args, "--out", tmp_path / "one"], tmp_path)
    assert one.returncode == 0, one.stderr
    two = freqprobe_processes.two([*args, "--out", tmp_path / "two"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    for name in ("summary.csv", "samples.csv", "corollary1.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert len((tmp_path / "one" / "corollary1.csv").read_text().splitlines()) > 1  # some witnesses to compare
    assert "perturbation-low-fraction" in (tmp_path / "one" / "summary.csv").read_text()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
