"""freqprobe's own checkpoints (``model.pt`` of a fitted or trained model) carry the normalisation they were trained with."""

from __future__ import annotations

import torch

import freqprobe
from freqprobe.checkpoint import checkpoint_meta, read_checkpoint, save_model


def test_checkpoint_carries_normalisation(tmp_path, pm):
    torch.manual_seed(0)
    net = freqprobe.build_model("timm:resnet10t", model_args={"num_classes": 4}, pm=pm)
    assert net.mean is not None  # timm's pretrained_cfg: ImageNet statistics
    raw, stats = tmp_path / "raw.pt", tmp_path / "stats.pt"
    save_model(raw, net.module, mean=None, std=None, model="timm:resnet10t")  # trained on [0, 1] pixels
    save_model(stats, net.module, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    assert checkpoint_meta(raw) == {"format": 1, "mean": None, "std": None, "model": "timm:resnet10t"}
    sd, kind = read_checkpoint(raw)  # any reader that looks for a nested state_dict finds the weights
    assert kind == "state_dict" and set(sd) == set(net.module.state_dict())

    a = freqprobe.build_model("timm:resnet10t", checkpoint=raw, model_args={"num_classes": 4}, pm=pm)
    assert a.mean is None and a.std is None and a.info["normalisation_from"] == "checkpoint"
    b = freqprobe.build_model("timm:resnet10t", checkpoint=stats, model_args={"num_classes": 4}, pm=pm)
    assert b.mean == (0.4, 0.5, 0.6) and b.std == (0.2, 0.25, 0.3)
    c = freqprobe.build_model("timm:resnet10t", checkpoint=raw, model_args={"num_classes": 4}, mean="0.1,0.1,0.1",
                              std="0.5,0.5,0.5", pm=pm)  # --mean/--std still win
    assert c.mean == (0.1, 0.1, 0.1) and c.info["normalisation_from"] == "override"
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(a.predict(x), net.module.eval()(x), rtol=0, atol=0)  # raw pixels, as trained


def test_plain_state_dict_has_no_meta(tmp_path):
    p = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(2)}, p)
    assert checkpoint_meta(p) is None
    assert checkpoint_meta(tmp_path / "missing.pt") is None
