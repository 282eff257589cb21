"""Model sources beyond the CLI tests: timm's local-dir: form, importable package.module:callable specs."""

from __future__ import annotations

import json
import sys
import time

import pytest
import torch

import freqprobe
from freqprobe.errors import UnknownNameError, UserFacingError


def test_timm_local_dir_loads_its_weights_and_pretrained_cfg(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(1)
    ref = timm.create_model("resnet18", num_classes=10)
    d = tmp_path / "ft"
    d.mkdir()
    save_file(ref.state_dict(), str(d / "model.safetensors"))
    cfg = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "input_size": [3, 32, 32], "num_classes": 10}
    (d / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 10, "pretrained_cfg": cfg}))

    adapter = freqprobe.build_model(f"timm:local-dir:{d}", pretrained=True, num_classes=10)
    assert adapter.info["has_weights"] is True
    assert tuple(adapter.mean) == pytest.approx(cfg["mean"]) and tuple(adapter.std) == pytest.approx(cfg["std"])
    got = adapter.module.state_dict()
    for k, v in ref.state_dict().items():
        assert torch.equal(got[k], v), k
    # the adapter normalises with that mean/std: same logits as the raw module on normalised input
    x = torch.rand(2, 3, 32, 32)
    ref.eval()
    adapter.module.eval()
    with torch.no_grad():
        want = ref((x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1))
        torch.testing.assert_close(adapter.predict(x), want)


def test_importable_module_callable_spec(tmp_path, monkeypatch):
    pkg = tmp_path / "mynets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "small.py").write_text(
        "from torch import nn\n\n"
        "def make(num_classes=10, width=4):\n"
        "    return nn.Sequential(nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    adapter = freqprobe.build_model("mynets.small:make", model_args={"width": 6}, num_classes=7)
    assert adapter.module[0].out_channels == 6 and adapter.module[-1].out_features == 7
    assert adapter.info["has_weights"] is False
    # a bare importable module name works too; a non-importable one is an unknown source with a suggestion
    (tmp_path / "flatnet.py").write_text((pkg / "small.py").read_text())
    assert freqprobe.build_model("flatnet:make", num_classes=3).module[-1].out_features == 3
    with pytest.raises(UnknownNameError, match="Did you mean.*timm"):
        freqprobe.build_model("tim:resnet18")
    with pytest.raises(UserFacingError, match="nope"):
        freqprobe.build_model("mynets.small:nope")
    sys.modules.pop("flatnet", None)


def test_timm_hf_hub_offline_is_a_fast_one_line_error():
    import timm

    t0 = time.perf_counter()
    timm.create_model("resnet18")
    budget = 15 + 10 * (time.perf_counter() - t0)  # a busy machine gets longer; hub retries take minutes
    t0 = time.perf_counter()
    with pytest.raises(UserFacingError) as ei:
        freqprobe.build_model("timm:hf-hub:timm/resnet18.a1_in1k", pretrained=True)
    assert time.perf_counter() - t0 < budget
    msg = str(ei.value)
    assert "\n" not in msg and "--checkpoint" in msg
