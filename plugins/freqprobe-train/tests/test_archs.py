"""The paper's architectures (freqprobe_train.archs): shapes at 28 and 32 px, the BatchNorm and
dropout switches, Xavier initialisation, a real training step and the ``paper:`` model source."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

if importlib.util.find_spec("freqprobe_train") is None:
    # the plugin is not installed into the venv yet: import it from its source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import freqprobe
from freqprobe import UnknownNameError, UserFacingError
from freqprobe_train.archs import ARCHITECTURES, xavier_init
from freqprobe_train.source import PaperModelSource

SHAPES = [(1, 28), (3, 32)]
K = 7  # not 10, so a head that ignores num_classes shows


def _batch(arch: str) -> int:
    return 2 if arch == "resnet18" else 4


def _has_bn(m: nn.Module) -> bool:
    return any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())


@pytest.mark.parametrize("bn", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("chans,size", SHAPES, ids=["1x28", "3x32"])
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_shape_bn_switch_and_eval_determinism(arch, chans, size, bn):
    torch.manual_seed(0)
    m = xavier_init(ARCHITECTURES[arch](num_classes=K, in_chans=chans, image_size=size, bn=bn))
    assert _has_bn(m) is bn
    if not bn:  # plain nets: every conv carries its own bias
        assert all(c.bias is not None for c in m.modules() if isinstance(c, nn.Conv2d))
    assert not any(isinstance(x, nn.Dropout) for x in m.modules())
    x = torch.rand(_batch(arch), chans, size, size)
    m.train()
    out = m(x)  # a training-mode forward (BatchNorm's batch statistics) works too
    assert out.shape == (x.shape[0], K)
    m.eval()
    with torch.no_grad():
        a, b = m(x), m(x)
    assert a.shape == (x.shape[0], K)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_dropout_switch(arch):
    size = 28
    m = ARCHITECTURES[arch](in_chans=1, image_size=size, dropout=0.5)
    drops = [x for x in m.modules() if isinstance(x, nn.Dropout)]
    assert drops and all(d.p == 0.5 for d in drops)
    # LeNet/AlexNet/VGG: before each FC layer that follows another FC layer (2 of 3); ResNets: before the final FC
    assert len(drops) == (1 if arch.startswith("resnet") else 2)
    assert not any(isinstance(x, nn.Dropout) for x in ARCHITECTURES[arch](in_chans=1, image_size=size).modules())
    if arch != "resnet18":
        x = torch.rand(4, 1, size, size)
        m.eval()
        with torch.no_grad():
            assert torch.equal(m(x), m(x))  # dropout is off in eval mode


def test_dropout_sits_before_fc_layers():
    seq = list(ARCHITECTURES["lenet"](dropout=0.5).classifier)
    kinds = [type(x).__name__ for x in seq]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    r = ARCHITECTURES["resnet20"](dropout=0.3)
    assert isinstance(r.dropout, nn.Dropout) and r.dropout.p == 0.3


def test_flatten_sized_models_refuse_another_size():
    m = ARCHITECTURES["lenet"](in_chans=1, image_size=28)
    with pytest.raises(ValueError, match="built for 28×28.*image_size"):
        m(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="too small"):
        ARCHITECTURES["vgg11"](image_size=8)


def test_xavier_init_glorot_std_and_zero_biases():
    torch.manual_seed(0)
    lin = nn.Linear(300, 200)
    xavier_init(lin)
    want = math.sqrt(2.0 / (300 + 200))
    assert abs(lin.weight.std().item() - want) / want < 0.10
    bound = math.sqrt(6.0 / (300 + 200))
    assert lin.weight.abs().max().item() <= bound + 1e-6
    assert torch.count_nonzero(lin.bias) == 0
    conv = nn.Conv2d(16, 32, 3)
    bn = nn.BatchNorm2d(32)
    with torch.no_grad():
        bn.weight.fill_(3.0)
        bn.bias.fill_(2.0)
        bn.running_mean.fill_(5.0)
    net = xavier_init(nn.Sequential(conv, bn))
    assert isinstance(net, nn.Sequential)
    want = math.sqrt(2.0 / (16 * 9 + 32 * 9))
    assert abs(conv.weight.std().item() - want) / want < 0.10
    assert torch.count_nonzero(conv.bias) == 0
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0) and torch.all(bn.running_mean == 0)


def test_xavier_init_on_third_party_model_and_determinism():
    torchvision = pytest.importorskip("torchvision")
    m = xavier_init(torchvision.models.resnet18(num_classes=5))
    assert torch.count_nonzero(m.fc.bias) == 0
    torch.manual_seed(3)
    a = xavier_init(ARCHITECTURES["lenet"]())
    torch.manual_seed(3)
    b = xavier_init(ARCHITECTURES["lenet"]())
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_one_sgd_step_reduces_lenet_loss():
    torch.manual_seed(0)
    m = xavier_init(ARCHITECTURES["lenet"](num_classes=10, in_chans=1, image_size=28))
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    m.train()
    before = F.cross_entropy(m(x), y)
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = F.cross_entropy(m(x), y)
    assert after.item() < before.item()


# -- the ``paper:`` model source ---------------------------------------------------------------

def test_source_builds_with_hint_and_args():
    src = PaperModelSource()
    torch.manual_seed(1)
    built = src.build("vgg11", num_classes=4, model_args={"in_chans": 1, "image_size": 28, "bn": True, "dropout": 0.5})
    assert built.has_weights is False and built.mean is None and built.std is None and built.input_size is None
    assert built.info["paper_arch"] == "vgg11" and built.info["bn"] is True and built.info["dropout"] == 0.5
    assert built.module(torch.rand(2, 1, 28, 28)).shape == (2, 4)
    # model_args' num_classes wins over the hint; defaults are 3 channels, 32 px, no BN, no dropout
    built = src.build("lenet", num_classes=4, model_args={"num_classes": 6})
    assert built.module(torch.rand(2, 3, 32, 32)).shape == (2, 6)
    assert built.info["bn"] is False and built.info["dropout"] == 0.0
    assert not _has_bn(built.module)
    # a fresh build is Xavier initialised and deterministic under torch.manual_seed
    torch.manual_seed(2)
    a = src.build("lenet").module
    torch.manual_seed(2)
    b = src.build("lenet").module
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert torch.count_nonzero(a.classifier[-1].bias) == 0


def test_source_errors():
    src = PaperModelSource()
    with pytest.raises(UnknownNameError, match="Did you mean: vgg16"):
        src.build("vgg61")
    with pytest.raises(UserFacingError) as exc:
        src.build("lenet", pretrained=True)
    assert "\n" not in str(exc.value) and "freqprobe train" in str(exc.value)
    with pytest.raises(UserFacingError) as exc:
        src.build("lenet", model_args={"depth": 3})
    msg = str(exc.value)
    assert "\n" not in msg and "depth" in msg
    assert all(k in msg for k in ("bn", "dropout", "image_size", "in_chans", "num_classes"))
    with pytest.raises(UserFacingError, match="dropout"):
        src.build("lenet", model_args={"dropout": 1.5})
    with pytest.raises(UserFacingError, match="bn"):
        src.build("lenet", model_args={"bn": "maybe"})
    with pytest.raises(UserFacingError, match="too small"):
        src.build("vgg16", model_args={"image_size": 8})


class _TrainHooks:
    """A stand-in for the plugin's hook module: registers only the ``paper:`` model source."""

    @freqprobe.hookimpl
    def register_model_sources(self):
        return [PaperModelSource]


def test_build_model_through_a_plugin_manager():
    pm = freqprobe.get_plugin_manager(autoload=False)
    pm.register(_TrainHooks(), "train")
    adapter = freqprobe.build_model("paper:lenet", model_args={"in_chans": 1, "image_size": 28}, pm=pm)
    assert adapter.info["paper_arch"] == "lenet" and adapter.info["has_weights"] is False
    assert adapter.predict(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    adapter = freqprobe.build_model("paper:resnet20", model_args={"bn": True}, num_classes=5, pm=pm)
    assert adapter.predict(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(UnknownNameError, match="Did you mean"):
        freqprobe.build_model("paper:lenett", pm=pm)
