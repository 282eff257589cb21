"""The evaluator contract: reductions for numbers and tensors, and every registered evaluator split in two and merged.

Resume and the torchrun gather use only ``state_dict``/``load_state_dict``/``merge``, so an
evaluator that passes these checks resumes and merges. The generic tests run every registered
metric and every registered classification probe (its own evaluators: the Figure-2 gallery,
the robustness probe's perturbation spectrum and Corollary-1 witnesses...) on data split between
two shards, merge the shards' states, and compare with one pass: rows bit for bit.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import freqprobe
from freqprobe.engine import run_loop, summarize
from freqprobe.evaluators import EvalStep, Evaluator, StateError
from freqprobe.testing import check_evaluator, check_metric, make_classifier, make_images


class Sums(Evaluator):
    name = "sums"

    def __init__(self, reduce: str, default) -> None:
        super().__init__()
        self.add_state("s", default, reduce=reduce)

    def process(self, step: EvalStep) -> None:
        pass


@pytest.mark.parametrize("reduce,a,b,want", [
    ("sum", torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]), torch.tensor([4.0, 6.0])),
    ("sum", 3, 4, 7),
    ("cat", torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([1, 2, 3])),
    ("cat", torch.zeros(0, 2), torch.ones(2, 2), torch.ones(2, 2)),
    ("cat", [1, 2], [3], [1, 2, 3]),
    ("cat", [torch.tensor(1.0)], [torch.tensor(2.0)], [torch.tensor(1.0), torch.tensor(2.0)]),
    ("max", torch.tensor([1.0, 5.0]), torch.tensor([3.0, 4.0]), torch.tensor([3.0, 5.0])),
    ("min", torch.tensor([1.0, 5.0]), torch.tensor([3.0, 4.0]), torch.tensor([1.0, 4.0])),
    ("max", 2.0, 3.0, 3.0),
    ("mean", torch.tensor([2.0, 4.0]), torch.tensor([4.0, 8.0]), torch.tensor([3.0, 6.0])),
])
def test_reductions_work_for_numbers_and_tensors(reduce, a, b, want):
    x, y = Sums(reduce, a), Sums(reduce, b)
    x.merge(pickle.loads(pickle.dumps(y.state_dict())))  # the state dict as another process sends it
    got = x.s
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and got.shape == want.shape and torch.equal(got, want)
    elif isinstance(want, list) and want and isinstance(want[0], torch.Tensor):
        assert [float(t) for t in got] == [float(t) for t in want]
    else:
        assert got == want


def test_mean_is_weighted_by_the_instances_merged():
    a, b, c = Sums("mean", torch.tensor(1.0)), Sums("mean", torch.tensor(4.0)), Sums("mean", torch.tensor(7.0))
    a.merge(b)  # (1 + 4) / 2 = 2.5 over two instances
    a.merge(c.state_dict())  # (2.5 * 2 + 7) / 3 = 4
    assert float(a.s) == 4.0
    a.reset()
    assert float(a.s) == 1.0 and a.state_dict()["__merged__"] == 1


def test_a_reduce_that_does_not_exist_is_refused():
    with pytest.raises(ValueError, match="unknown reduce 'product'"):
        Sums("product", 0)


@pytest.mark.parametrize("name", ["rows", "extras", "merge", "variant", "ctx", "_hidden"])
def test_a_state_cannot_hide_the_contract(name):
    class Bad(freqprobe.Metric):
        def __init__(self, ctx=None):
            super().__init__(ctx)
            self.add_state(name, [])

        def update(self, outputs, targets):
            pass

        def compute(self):
            return 0.0

    with pytest.raises(ValueError, match=f"state name '{name}' of Bad would hide"):
        Bad()


def test_an_evaluator_without_declared_state_cannot_merge():
    class Plain(Evaluator):
        def __init__(self):
            super().__init__()
            self.seen = 0

        def process(self, step):
            self.seen += len(step)

    p = Plain()
    assert p.state_dict() == {"seen": 0}  # plain attributes still resume
    with pytest.raises(StateError, match="declares no state"):
        p.merge(Plain())
    p.thing = object()
    with pytest.raises(StateError, match="Plain.thing"):
        p.state_dict()


# ----------------------------------------------------------------------------- every registered evaluator
def _pm():
    import importlib

    pm = freqprobe.get_plugin_manager(autoload=False)
    for name in ("attacks", "smoothing", "coco", "train"):
        pm.register(importlib.import_module(f"freqprobe_{name}.hooks"), name)
    return pm


PM = _pm()
METRICS = sorted(n for n, e in freqprobe.collect("metrics", PM).items() if e.cls.task == "classification")
PROBES = sorted(n for n, e in freqprobe.collect("probes", PM).items() if e.cls.requires.get("task") == "classification")


def test_the_generic_tests_cover_the_first_party_evaluators():
    assert {"accuracy", "top5-accuracy"} <= set(METRICS)
    assert {"lfc-hfc", "robustness"} <= set(PROBES)


@pytest.mark.parametrize("name", METRICS)
def test_every_registered_metric_passes_the_kit(name):
    adapter = make_classifier()
    images = make_images(n=8)
    labels = torch.arange(8) % 10
    check_metric(freqprobe.get_class("metrics", name, PM), adapter.predict(images), labels)
    cls = freqprobe.get_class("metrics", name, PM)
    rows = check_evaluator(lambda ctx, src: freqprobe.Metric.build(cls, ctx, src[0].variants()[1]), adapter=adapter,
                           images=images, labels=labels, pm=PM)
    assert rows and all(r["variant"] == "low" for r in rows)


class _Data(freqprobe.DataSource):
    name = "test-images"

    def __init__(self, images, labels):
        super().__init__(None)
        self.images, self.labels, self.num_classes = images, labels, 10

    def __len__(self):
        return len(self.images)

    def load(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return freqprobe.Batch(self.images[idx], self.labels[idx], idx)


def _evaluate_probe(name, shards):
    """The probe over every batch (``shards=1``) or over ``shards`` shards merged: its summary and extras."""
    adapter = make_classifier()
    images = make_images(n=10, seed=3)
    labels = adapter.predict(images).argmax(-1)
    labels[::3] = (labels[::3] + 1) % 10  # some wrong, so galleries and witnesses have entries
    probe = freqprobe.get_class("probes", name, PM)()
    dec = freqprobe.get_decomposer("fft-radial", PM)
    states, ctxs = [], []
    for rank in range(shards):
        ctx = freqprobe.RunContext.create(
            adapter, _Data(images, labels), dec, probe.check_params(dec, [0, 4, 8, 12] if name == "bands" else [4, 8] if name != "fourier-heatmap" else None),
            freqprobe.get_class("rescale", "none", PM)(),
            metrics=[freqprobe.get_class("metrics", "accuracy", PM)], device=torch.device("cpu"), pm=PM, batch_size=3,
            options=probe.opts, **({"shard": (rank, shards)} if shards > 1 else {}), eps=(0.03,), attacks=("fgsm",))
        ctx = probe.configure(ctx)  # as Probe.run() does (the heat map sizes its batch)
        sources = probe.sources(ctx)
        states.append(run_loop(ctx, sources, evaluators=probe.evaluators(ctx), samples=probe.samples))
        ctxs.append((ctx, sources))
    for other in states[1:]:
        states[0].merge(other)
    ctx, sources = ctxs[0]
    result = summarize(ctx, states[0], sources, probe=name)
    probe.derive(result, ctx)
    return result


@pytest.mark.parametrize("name", PROBES)
def test_every_registered_probe_merges_to_one_pass(name):
    whole, merged = _evaluate_probe(name, 1), _evaluate_probe(name, 2)
    assert whole.summary == merged.summary  # bit for bit, every evaluator's rows included
    skip = {"timings", "engine"}
    for key in set(whole.extras) - skip:
        a, b = whole.extras[key], merged.extras[key]
        if key == "gallery":  # images kept per parameter, in data order
            assert {p: [e["index"] for e in v] for p, v in a.items()} == {p: [e["index"] for e in v] for p, v in b.items()}
        else:
            assert repr(a) == repr(b), key
    assert len(whole.summary) > 3
    assert np.all(np.isfinite([r["value"] for r in whole.summary if r["metric"] == "accuracy"]))
