"""freqprobe from Python: decompose images, then probe a model, on the embedded synth10 data.

Run: .venv/bin/python examples/quickstart.py
"""

import torch

import freqprobe

# 1. decomposition: N×C×H×W float in [0, 1] -> {"low", "high"}, on the images' device
data = freqprobe.open_data("synth10", split="test")
x, y, _ = next(data.batches(8))
parts = freqprobe.decompose(x, "fft-radial", 8)
print("low + high == x:", torch.allclose(parts["low"] + parts["high"], x, atol=1e-5))
print("high part range:", float(parts["high"].min()), float(parts["high"].max()))

# 2. a probe: fit timm's resnet18 on synth10's training split (no weights given), then measure
result = freqprobe.run("timm:resnet18", data="synth10", params="4,8,12,16", fit_epochs=1, limit=500)
for row in result.summary:  # param is None for the original images
    print(f"{row['variant']:>8} {'' if row['param'] is None else format(row['param'], 'g'):>3} {row['metric']} {row['value']:.3f}")
print("files in", result.extras["out_dir"])
