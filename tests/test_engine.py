"""The evaluation loop: variants and their composition, task contracts, metrics that merge, shards,
precision, probe options, manifest sections from plugins. Real models and real files throughout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import freqprobe
import reference
from freqprobe import Metric, ModelAdapter, Probe, Variant, VariantSource, hookimpl
from freqprobe.engine import DecomposerSource, OriginalSource, evaluate, run_loop, summarize
from freqprobe.interfaces import ClassifierAdapter
from freqprobe.errors import PluginError, UserFacingError
from freqprobe.interfaces import Batch, DataSource, batch_indices
from freqprobe.probing import RunContext

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


# ------------------------------------------------------------------ a small real setup
def tiny_net(seed: int = 0, classes: int = 4) -> nn.Module:
    """A small CNN whose predictions spread over the classes on this test's images and depend on edges."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))
    x = torch.from_numpy(np.random.default_rng(3).random((64, 3, 16, 16))).float()
    with torch.no_grad():  # zero-sum kernels (edge detectors); standardised features -> spread-out logits
        net[0].weight.sub_(net[0].weight.mean((2, 3), keepdim=True))
        f = net[:6]((x - torch.tensor(MEAN).view(1, -1, 1, 1)) / torch.tensor(STD).view(1, -1, 1, 1))
        net[6].weight.copy_(net[6].weight * 3 / (f.std(0) + 1e-8))
        net[6].bias.copy_(-(net[6].weight @ f.mean(0)))
    return net.eval()


@pytest.fixture
def npz_data(tmp_path):
    rng = np.random.default_rng(3)
    p = tmp_path / "d.npz"
    np.savez(p, x=rng.integers(0, 256, size=(37, 16, 16, 3), dtype=np.uint8), y=rng.integers(0, 4, size=37))
    return p


def context(pm, data_path, *, model=None, params=(2.0, 5.0), batch_size=8, metrics=("accuracy",), **kw) -> RunContext:
    data = freqprobe.open_data(f"npz:{data_path}", pm=pm)
    data.num_classes = 4
    adapter = model if isinstance(model, ModelAdapter) else ModelAdapter(model or tiny_net(), mean=MEAN, std=STD, spec="tiny")
    return RunContext.create(adapter=adapter, data=data, decomposer=freqprobe.get_decomposer("fft-radial", pm), params=list(params),
                      rescale=freqprobe.collect("rescale", pm)["none"].cls(),
                      metrics=[freqprobe.get_class("metrics", m, pm) for m in metrics],
                      device=torch.device("cpu"), batch_size=batch_size, pm=pm, **kw)


def direct_logits(net: nn.Module, x: np.ndarray) -> torch.Tensor:
    """The model on float64-decomposed images, normalised by hand: the reference for the loop."""
    t = torch.from_numpy(x).float()
    t = (t - torch.tensor(MEAN).view(1, -1, 1, 1)) / torch.tensor(STD).view(1, -1, 1, 1)
    with torch.no_grad():
        return net(t)


def images_of(path) -> tuple[np.ndarray, np.ndarray]:
    d = np.load(path)
    return d["x"].astype(np.float64).transpose(0, 3, 1, 2) / 255.0, d["y"]


class MirrorSource(VariantSource):
    """A variant source of a plugin's kind: the mirrored images, with an extra column of their own."""

    def __init__(self, axes=(-1,)):
        self.axes = axes
        self.vs = [Variant("mirrored", extra=(("flip", "lr" if a == -1 else "ud"),)) for a in axes]

    def variants(self):
        return list(self.vs)

    def produce(self, images, targets, ctx, out=None):
        for v, a in zip(self.vs, self.axes):
            if out is not None:
                out[v].copy_(torch.flip(images, dims=(a,)))
                yield v, out[v]
            else:
                yield v, torch.flip(images, dims=(a,))


# ------------------------------------------------------------------ variants
def test_default_sources_are_original_then_components_per_param(pm, npz_data):
    ctx = context(pm, npz_data)
    src = DecomposerSource(ctx.decomposer, ctx.params)
    assert [(v.name, v.param, v.component) for v in src.variants()] == [
        ("original", None, False), ("low", 2.0, True), ("high", 2.0, True), ("low", 5.0, True), ("high", 5.0, True)]
    result = evaluate(ctx, [src], probe="t")
    net = ctx.adapter.module
    x, y = images_of(npz_data)
    for v in src.variants():
        imgs = x if v.name == "original" else dict(zip(("low", "high"), reference.fft_radial(x, v.param)))[v.name]
        logits = direct_logits(net, imgs)
        got = result.samples.where(variant=v.name, param=v.param)
        np.testing.assert_array_equal(got["index"], np.arange(37))
        np.testing.assert_array_equal(got["label"], y)
        prob = torch.softmax(logits.double(), -1)
        np.testing.assert_allclose(got["confidence"], prob.max(-1).values.numpy(), atol=1e-4)
        top2 = prob.topk(2, -1).values
        sure = (top2[:, 0] - top2[:, 1]).numpy() > 1e-3
        np.testing.assert_array_equal(got["pred"][sure], logits.argmax(-1).numpy()[sure])
        row = next(r for r in result.summary if r["variant"] == v.name and r["param"] == v.param)
        assert row["value"] == pytest.approx(float((got["pred"] == y).mean()))
        assert row["n"] == 37
    assert len({tuple(result.samples.column("pred", variant="low", param=2.0))} |
               {tuple(result.samples.column("pred", variant="original"))}) == 2  # the variants differ: not vacuous


def test_composition_low_part_of_another_sources_images(pm, npz_data):
    """A decomposer over a plugin's source: the low part of mirrored images, with the source's extra column kept."""
    ctx = context(pm, npz_data, params=(3.0,))
    mirror = MirrorSource((-1, -2))
    sources = [OriginalSource(), DecomposerSource(ctx.decomposer, [3.0], base=mirror)]
    result = evaluate(ctx, sources, probe="t")
    keys = [(r["variant"], r["param"], r.get("flip")) for r in result.summary]
    assert keys == [("original", None, None), ("mirrored", None, "lr"), ("low", 3.0, "lr"), ("high", 3.0, "lr"),
                    ("mirrored", None, "ud"), ("low", 3.0, "ud"), ("high", 3.0, "ud")]
    assert result.extras["extra_columns"] == ["flip"]
    assert result.samples.columns == ["index", "label", "variant", "param", "flip", "pred", "confidence"]
    x, y = images_of(npz_data)
    low_ud = reference.fft_radial(x[:, :, ::-1, :].copy(), 3.0)[0]
    got = result.samples.where(variant="low", param=3.0, flip="ud")
    want = direct_logits(ctx.adapter.module, low_ud).argmax(-1).numpy()
    assert np.mean(got["pred"] == want) >= 0.95  # float32 vs float64 decomposition: ties may flip


def test_summary_and_samples_csv_carry_extra_columns(pm, npz_data, tmp_path):
    from freqprobe.builtins.report import write_samples, write_summary

    ctx = context(pm, npz_data, params=(3.0,))
    result = evaluate(ctx, [DecomposerSource(ctx.decomposer, [3.0], base=MirrorSource())], probe="t")
    write_summary(result, tmp_path / "summary.csv")
    write_samples(result, tmp_path / "samples.csv")
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert lines[0] == "probe,transform,decomposer,variant,param,flip,metric,value,n"
    assert lines[1].startswith("t,,fft-radial,mirrored,,lr,accuracy,")
    assert lines[2].startswith("t,,fft-radial,low,3,lr,accuracy,")
    rows = (tmp_path / "samples.csv").read_text().splitlines()
    assert rows[0] == "index,label,variant,param,flip,pred,confidence"
    assert len(rows) == 1 + 37 * 3


def test_undeclared_or_missing_variants_are_plugin_errors(pm, npz_data):
    class Liar(MirrorSource):
        def produce(self, images, targets, ctx, out=None):
            yield Variant("surprise"), images

    class Lazy(MirrorSource):
        def produce(self, images, targets, ctx, out=None):
            return iter(())

    ctx = context(pm, npz_data)
    with pytest.raises(PluginError, match="did not declare"):
        evaluate(ctx, [Liar()], probe="t")
    with pytest.raises(PluginError, match="did not produce"):
        evaluate(ctx, [Lazy()], probe="t")
    with pytest.raises(PluginError, match="same variant"):
        evaluate(ctx, [OriginalSource(), OriginalSource()], probe="t")


@pytest.mark.parametrize("setting", [dict(forward_batch=1000), dict(forward_batch=3), dict(channels_last=False),
                                     dict(batch_size=1), dict(batch_size=37)])
def test_batching_and_memory_format_do_not_change_results(pm, npz_data, setting):
    base = evaluate(context(pm, npz_data), [DecomposerSource(freqprobe.get_decomposer("fft-radial", pm), [2.0, 5.0])], probe="t")
    kw = dict(setting)
    bs = kw.pop("batch_size", 8)
    ctx = context(pm, npz_data, batch_size=bs, **kw)
    got = evaluate(ctx, [DecomposerSource(ctx.decomposer, [2.0, 5.0])], probe="t")
    assert [r["value"] for r in got.summary] == [r["value"] for r in base.summary]
    for v in ("original", "low", "high"):
        for p in ([None] if v == "original" else [2.0, 5.0]):
            a, b = got.samples.where(variant=v, param=p), base.samples.where(variant=v, param=p)
            ia, ib = np.argsort(a["index"]), np.argsort(b["index"])
            np.testing.assert_array_equal(a["index"][ia], np.arange(37))
            np.testing.assert_array_equal(a["pred"][ia], b["pred"][ib])
            np.testing.assert_allclose(a["confidence"][ia], b["confidence"][ib], atol=1e-5)


def test_adapter_that_cannot_stack_variants_gets_one_forward_per_variant(pm, npz_data):
    calls = []

    class OneAtATime(ClassifierAdapter):
        stackable = False

        def predict(self, images01):
            calls.append(len(images01))
            return super().predict(images01)

    net = tiny_net()
    base = evaluate(context(pm, npz_data, model=net), [DecomposerSource(freqprobe.get_decomposer("fft-radial", pm), [2.0])], probe="t")
    ctx = context(pm, npz_data, model=OneAtATime(net, mean=MEAN, std=STD, spec="one"))
    got = evaluate(ctx, [DecomposerSource(ctx.decomposer, [2.0])], probe="t")
    assert calls[:3] == [8, 8, 8] and max(calls) == 8 and len(calls) == 3 * 5  # 3 variants x 5 batches of <= 8
    np.testing.assert_array_equal(got.samples.column("pred"), base.samples.column("pred"))


# ------------------------------------------------------------------ images of different sizes (the detection shape)
class SizesData(DataSource):
    """Images of different sizes, as lists (what a COCO source yields)."""

    name = "sizes"
    num_classes = 4

    def __init__(self):
        rng = np.random.default_rng(5)
        self.imgs = [torch.from_numpy(rng.random((3, 10 + i, 13 + 2 * i))).float() for i in range(7)]
        self.labels = torch.tensor([i % 4 for i in range(7)])

    def __len__(self):
        return len(self.imgs)

    def load(self, indices):
        return Batch([self.imgs[i] for i in indices], self.labels[torch.from_numpy(indices)], torch.from_numpy(indices))


class ListAdapter(ClassifierAdapter):
    """A classifier over a list of differently sized images (global pooling)."""

    stackable = False

    def predict(self, images01):
        with torch.inference_mode():
            return torch.cat([self.module(self.normalize(img[None])) for img in images01])


def test_lists_of_differently_sized_images(pm):
    net = tiny_net(1)
    data = SizesData()
    ctx = RunContext.create(adapter=ListAdapter(net, mean=MEAN, std=STD, spec="list"), data=data,
                     decomposer=freqprobe.get_decomposer("fft-radial", pm), params=[3.0], rescale=freqprobe.collect("rescale", pm)["none"].cls(),
                     metrics=[freqprobe.get_class("metrics", "accuracy", pm)], device=torch.device("cpu"), batch_size=3, pm=pm)
    result = evaluate(ctx, [DecomposerSource(ctx.decomposer, [3.0])], probe="t")
    got = result.samples.where(variant="low", param=3.0)
    want = [int(direct_logits(net, reference.fft_radial(img[None].double().numpy(), 3.0)[0]).argmax()) for img in data.imgs]
    assert got["pred"].tolist() == want
    assert [r["n"] for r in result.summary] == [7, 7, 7]


# ------------------------------------------------------------------ metrics
class MeanLogit(Metric):
    """Old-style metric: no context argument, state set up in reset(), several numbers."""

    name = "mean-logit"

    def __init__(self):
        pass  # state only exists after reset(): the core must call it

    def reset(self):
        self.s, self.n = 0.0, 0

    def update(self, outputs, targets):
        self.s += float(outputs.sum())
        self.n += outputs.numel()

    def compute(self):
        return {"mean-logit": self.s / self.n, "logits-seen": self.n}


class MeanLogitPlugin:
    @hookimpl
    def register_metrics(self):
        return [MeanLogit]


def test_metric_life_cycle_and_several_numbers(pm, npz_data):
    pm.register(MeanLogitPlugin(), "meanlogit")
    ctx = context(pm, npz_data, metrics=("accuracy", "mean-logit"))
    result = evaluate(ctx, [OriginalSource()], probe="t")
    assert [r["metric"] for r in result.summary] == ["accuracy", "mean-logit", "logits-seen"]
    assert result.summary[2]["value"] == 37 * 4
    logits = direct_logits(ctx.adapter.module, images_of(npz_data)[0])
    assert result.summary[1]["value"] == pytest.approx(float(logits.mean()), abs=1e-5)


def test_accuracy_states_merge(pm, npz_data):
    acc = freqprobe.get_class("metrics", "accuracy", pm)
    a, b, whole = acc(None), acc(None), acc(None)
    for m in (a, b, whole):
        m.reset()
    out = torch.randn(10, 4)
    y = torch.arange(10) % 4
    a.update(out[:6], y[:6])
    b.update(out[6:], y[6:])
    whole.update(out, y)
    a.merge(b.state())
    assert a.compute() == whole.compute()
    with pytest.raises(NotImplementedError, match="declares no state"):
        MeanLogit().merge(MeanLogit())


def test_shards_merge_to_the_single_process_result(pm, npz_data):
    ctx = context(pm, npz_data, batch_size=5)
    src = [DecomposerSource(ctx.decomposer, ctx.params)]
    whole = summarize(ctx, run_loop(ctx, src), src, probe="t")
    states = []
    for rank in range(3):
        c = context(pm, npz_data, batch_size=5, shard=(rank, 3))
        states.append(run_loop(c, [DecomposerSource(c.decomposer, c.params)]))
    merged = states[0]
    for s in states[1:]:
        merged.merge(s)
    got = summarize(ctx, merged, src, probe="t")
    assert [(r["variant"], r["param"], r["value"], r["n"]) for r in got.summary] == \
           [(r["variant"], r["param"], r["value"], r["n"]) for r in whole.summary]
    assert len(got.samples) == len(whole.samples) == 37 * 5
    for v in src[0].variants():
        a, b = got.samples.where(variant=v.name, param=v.param), whole.samples.where(variant=v.name, param=v.param)
        ia = np.argsort(a["index"])
        np.testing.assert_array_equal(a["index"][ia], b["index"])
        np.testing.assert_array_equal(a["pred"][ia], b["pred"])


def test_batch_indices_shards_by_whole_batches():
    whole = list(batch_indices(23, 5))
    assert [len(b) for b in whole] == [5, 5, 5, 5, 3]
    shards = [list(batch_indices(23, 5, shard=(r, 2))) for r in range(2)]
    assert [b.tolist() for b in shards[0]] == [whole[0].tolist(), whole[2].tolist(), whole[4].tolist()]
    assert [b.tolist() for b in shards[1]] == [whole[1].tolist(), whole[3].tolist()]
    assert list(batch_indices(3, 5, shard=(1, 2))) == []  # smaller than one batch: rank 1 gets nothing
    assert [b.tolist() for b in batch_indices(10, 4, limit=6)] == [[0, 1, 2, 3], [4, 5]]
    with pytest.raises(UserFacingError, match="bad shard"):
        list(batch_indices(10, 4, shard=(2, 2)))


# ------------------------------------------------------------------ precision
def test_bf16_on_cpu_runs_and_mostly_agrees(pm, npz_data):
    fp32 = evaluate(context(pm, npz_data), [OriginalSource()], probe="t")
    bf16 = evaluate(context(pm, npz_data, precision="bf16"), [OriginalSource()], probe="t")
    assert bf16.extras["engine"]["precision"] == "bf16"
    agree = np.mean(fp32.samples.column("pred") == bf16.samples.column("pred"))
    assert agree >= 0.8
    assert not np.array_equal(fp32.samples.column("confidence"), bf16.samples.column("confidence"))  # it did run in bf16


def test_precision_errors(cli, tiny_model_file, tiny_npz, tmp_path):
    rc, _, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--data", f"npz:{tiny_npz}", "--no-fit",
                     "--precision", "tf32", "--device", "cpu", "--out", tmp_path / "o", "-q")
    assert rc == 2 and "tf32 is a CUDA setting" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    rc, _, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--data", f"npz:{tiny_npz}", "--no-fit",
                     "--precision", "fp8", "--device", "cpu", "--out", tmp_path / "o", "-q")
    assert rc == 2 and "fp8" in err and "fp32" in err


# ------------------------------------------------------------------ probe options, manifest sections
def test_probe_options(cli, tiny_model_file, tiny_npz, tmp_path):
    base = ["run", "--model", f"{tiny_model_file}:tinynet", "--data", f"npz:{tiny_npz}", "--no-fit", "--radii", "4",
            "--device", "cpu", "-q"]
    rc, _, err = cli(*base, "--probe-opt", "galery_size=2", "--out", tmp_path / "a")
    assert rc == 2 and "galery_size" in err and "Did you mean: gallery_size" in err and len(err.strip().splitlines()) == 1
    rc, _, err = cli(*base, "--probe-opt", "gallery_size=many", "--out", tmp_path / "b")
    assert rc == 2 and "gallery_size='many' must be a int" in err
    rc, _, err = cli(*base, "--probe-opt", "gallery_size=2", "--out", tmp_path / "c")
    assert rc == 0, err
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["probe"]["options"] == {"gallery_size": 2}
    rc, _, err = cli(*base, "--gallery-size", "0", "--out", tmp_path / "d")
    assert rc == 0, err
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["probe"]["options"] == {"gallery_size": 0}
    assert not (tmp_path / "d" / "figure2.csv").exists() or (tmp_path / "d" / "figure2.csv").read_text().count("\n") == 1


def test_probe_declaring_its_own_variants(pm, monkeypatch, cli, tiny_model_file, tiny_npz, tmp_path):
    """A plugin probe is a declaration: a source of its own composed with the run's decomposer."""

    class MirrorProbe(Probe):
        """Accuracy on mirrored images and their frequency parts."""

        name = "mirror"
        options = {"axis": "lr"}

        def sources(self, ctx):
            axes = {"lr": (-1,), "ud": (-2,), "both": (-1, -2)}[self.opts["axis"]]
            return [OriginalSource(), DecomposerSource(ctx.decomposer, ctx.params, base=MirrorSource(axes))]

    class Plug:
        @hookimpl
        def register_probes(self):
            return [MirrorProbe]

        @hookimpl
        def manifest_entries(self, context, result):
            return {"mirror": {"variants": len(result.variants)}}

    pm.register(Plug(), "mirrorplug")
    monkeypatch.setattr(freqprobe.plugins, "_default", pm)
    out = tmp_path / "m"
    rc, stdout, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--no-fit", "--data", f"npz:{tiny_npz}",
                          "--probe", "mirror", "--probe-opt", "axis=both", "--radii", "4", "--out", out, "--device", "cpu", "-q")
    assert rc == 0, err
    assert "mirrored flip=lr" in stdout and "low flip=ud" in stdout
    header = (out / "summary.csv").read_text().splitlines()[0]
    assert header == "probe,transform,decomposer,variant,param,flip,metric,value,n"
    man = json.loads((out / "manifest.json").read_text())
    assert man["mirror"] == {"variants": 7}
    assert man["probe"]["options"] == {"axis": "both"}
    assert [s["source"] for s in man["variant_sources"]] == ["original", "decomposer"]


def test_manifest_section_clash_is_named_and_skipped(pm, monkeypatch, cli, tiny_model_file, tiny_npz, tmp_path):
    """A plugin section the core writes is skipped with a warning; the core's section and the run stand (issue 17)."""
    class Clash:
        @hookimpl
        def manifest_entries(self, context, result):
            return {"model": "mine", "clash": {"kept": True}}

    pm.register(Clash(), "clashplug")
    monkeypatch.setattr(freqprobe.plugins, "_default", pm)
    out = tmp_path / "o"
    rc, _, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--data", f"npz:{tiny_npz}", "--no-fit", "--radii", "4",
                     "--out", out, "--device", "cpu", "-q")
    assert rc == 0 and "Traceback" not in err, err
    assert "warning: plugin 'clashplug' (registered at runtime) failed in manifest_entries(): returned section 'model', " \
           "which the core writes" in err
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"]["spec"] == f"{tiny_model_file}:tinynet" and man["clash"] == {"kept": True}
    assert [(s["plugin"], s["hook"]) for s in man["skipped_writers"]] == [("clashplug", "manifest_entries")]


def test_decomposer_without_default_params_refused_at_registration(pm):
    from freqprobe import Decomposer

    class NoDefaults(Decomposer):
        """No defaults."""

        name = "no-defaults"

        def decompose(self, x, param, *, out=None):
            return {"low": x, "high": x * 0}

    class P:
        @hookimpl
        def register_decomposers(self):
            return [NoDefaults]

    pm.register(P(), "nodefaults")
    # the class is skipped (recorded, warned); asking for it says why
    with pytest.warns(freqprobe.errors.PluginWarning, match="no-defaults.*declares no default_params"):
        assert "no-defaults" not in freqprobe.collect("decomposers", pm)
    with pytest.raises(PluginError, match="no-defaults.*declares no default_params"):
        freqprobe.get_class("decomposers", "no-defaults", pm)


# ------------------------------------------------------------------ the GPU path (skipped without one)
@pytest.mark.cuda
def test_cuda_decomposition_equals_cpu():
    for shape, radii in (((64, 3, 32, 32), [4.0, 8.0, 12.0, 16.0, 2 ** 0.5]), ((4, 3, 224, 224), [4.0, 16.0, 128.0]),
                         ((3, 1, 70, 65), [5.0, 30.0])):
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        for rule in ("exclusive", "inclusive"):
            cpu = {r: {k: v.clone() for k, v in p.items()} for r, p in freqprobe.get_decomposer("fft-radial", rule=rule).decompose_all(x, radii)}
            gpu = {r: {k: v.cpu() for k, v in p.items()} for r, p in freqprobe.get_decomposer("fft-radial", rule=rule).decompose_all(x.cuda(), radii)}
            for r in radii:
                for k in ("low", "high"):
                    torch.testing.assert_close(gpu[r][k], cpu[r][k], atol=1e-5, rtol=0)


@pytest.mark.cuda
def test_cuda_probe_predicts_as_cpu(cli, shared_data, tmp_path):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    preds = {}
    for dev in ("cpu", "cuda"):
        out = tmp_path / dev
        rc, _, err = cli("run", "--model", f"{repo / 'tests' / 'fixtures' / 'cifar_resnet.py'}:resnet20",
                         "--checkpoint", shared_data / "cifar10_resnet_akamaster" / "resnet20-12fca82f.th",
                         "--data", f"npz:{shared_data / 'cifar10_test' / 'cifar10_test_first100_lossless.npz'}",
                         "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--radii", "4,8,12,16",
                         "--device", dev, "--out", out, "-q")
        assert rc == 0, err
        preds[dev] = [line.split(",")[4] for line in (out / "samples.csv").read_text().splitlines()[1:]]
    assert preds["cuda"] == preds["cpu"]


# ------------------------------------------------------------------ a sweep over a model transform
class ScaleFirstConv(freqprobe.Transform):
    """Multiplies the first conv's weights in place (a stand-in for first-layer kernel smoothing)."""

    name = "scale-first-conv"
    options = {"k": 1.0}

    def apply(self, adapter):
        with torch.no_grad():
            next(m for m in adapter.module.modules() if isinstance(m, nn.Conv2d)).weight.mul_(float(self.opts["k"]))
        return adapter


def test_probe_declaring_a_model_sweep(pm, npz_data):
    class SweepProbe(Probe):
        name = "sweep"

        def model_sweep(self, ctx):
            return [ScaleFirstConv(k=k) for k in (1.0, 0.5, 2.0)]

    ctx = context(pm, npz_data, params=(4.0,), transform="")
    before = {k: v.clone() for k, v in ctx.adapter.module.state_dict().items()}
    result = SweepProbe().run(ctx)
    assert all(torch.equal(before[k], v) for k, v in ctx.adapter.module.state_dict().items())  # each ρ got a copy
    labels = ["scale-first-conv:k=1", "scale-first-conv:k=0.5", "scale-first-conv:k=2"]
    assert [r["transform"] for r in result.summary] == [lab for lab in labels for _ in range(3)]
    assert result.samples.columns == ["index", "label", "variant", "param", "transform", "pred", "confidence"]
    assert len(result.samples) == 37 * 3 * 3
    # each transform's rows equal a plain evaluation of the transformed model
    for k, lab in zip((1.0, 0.5, 2.0), labels):
        net = tiny_net()
        with torch.no_grad():
            net[0].weight.mul_(k)
        plain = evaluate(context(pm, npz_data, model=net, params=(4.0,)), [DecomposerSource(ctx.decomposer, [4.0])], probe="p")
        assert [r["value"] for r in result.summary if r["transform"] == lab] == [r["value"] for r in plain.summary]
        np.testing.assert_array_equal(result.samples.column("pred", transform=lab), plain.samples.column("pred"))
    assert [s["transform"] for s in result.extras["sweep"]] == labels
    assert len({tuple(r["value"] for r in result.summary if r["transform"] == lab) for lab in labels}) > 1


def test_cpu_forwards_stay_below_the_mmap_threshold_for_large_images():
    """On the CPU the engine cuts a stack of 224-px images into forwards of at most 24 MiB of input (their
    temporaries then reuse heap memory); CIFAR-sized images still go a batch to a forward; --forward-batch wins."""
    from freqprobe.engine import CPU_FORWARD_BYTES, EngineSettings, _forward

    class Recorder:
        def __init__(self):
            self.sizes = []

        def predict(self, x):
            self.sizes.append(len(x))
            return torch.zeros(len(x), 2)

    def sizes(x, **kw):
        rec = Recorder()
        s = EngineSettings(device=torch.device("cpu"), **kw)
        assert _forward(rec, x, s).shape == (len(x), 2)
        return rec.sizes

    big = torch.zeros(3 * 128, 3, 224, 224)
    got = sizes(big, forward_batch=128, forward_bytes=CPU_FORWARD_BYTES)
    per = CPU_FORWARD_BYTES // (3 * 224 * 224 * 4)  # 41 images
    assert sum(got) == len(big) and max(got) <= per and len(got) == -(-len(big) // per)
    assert sizes(big, forward_batch=128) == [128, 128, 128]  # a user's --forward-batch: no byte cap
    small = torch.zeros(3 * 128, 3, 32, 32)
    assert sizes(small, forward_batch=128, forward_bytes=CPU_FORWARD_BYTES) == [128, 128, 128]
