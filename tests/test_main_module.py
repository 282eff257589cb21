"""``python -m freqprobe`` is the console script."""

from __future__ import annotations

import subprocess
import sys


def test_python_dash_m_freqprobe(tmp_path):
    got = subprocess.run([sys.executable, "-m", "freqprobe", "list", "decomposers"], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    assert "fft-radial" in got.stdout and "svd" in got.stdout
    bad = subprocess.run([sys.executable, "-m", "freqprobe", "run", "--model", "timm:resnet18", "--radii", "-1",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("Error: ") and "Traceback" not in bad.stderr
