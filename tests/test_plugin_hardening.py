"""A bad plugin is reported and skipped; a plugin failing at run time is named; switching plugins off.

Most cases run in-process on a fresh plugin manager with plugins registered at runtime; only what
needs real installed distributions (the distribution in the message, ``-p no:NAME`` before
loading, an import error printed once) starts a process.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

import freqprobe
import freqprobe.plugins
from freqprobe import Decomposer, Metric, PluginError, Probe, hookimpl
from freqprobe.errors import PluginWarning

from test_plugins import BOX_PLUGIN, INSTALLED, listed, make_dist, run_sub

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def use_pm(monkeypatch, pm):
    monkeypatch.setattr(freqprobe.plugins, "_default", pm)
    return pm


def _cls(name="x-dec", base=Decomposer, **attrs):
    body = {"name": name, "default_params": (1,), "__doc__": "test class", "__module__": "badmod",
            "decompose": lambda self, x, p, out=None: {"low": x * 0, "high": x}}
    body.update(attrs)
    if name is ...:
        del body["name"]
    return type("Bad", (base,), body)


def _returning(hook, obj):
    def impl(self):
        if isinstance(obj, Exception):
            raise obj
        return obj

    impl.__name__ = hook
    return type("P", (), {hook: hookimpl(impl)})()


class _Misspelled:
    @hookimpl
    def register_decomposer(self):  # noqa: D401 - the mistake under test
        return [_cls("typo-dec")]


class _BadArgs:
    @hookimpl
    def register_decomposers(self, cli):  # the spec takes no arguments
        return []


class _NamedLikeTheBuiltin(Decomposer):
    """Takes a built-in's name."""

    name = "fft-radial"
    default_params = (1,)

    def decompose(self, x, param, *, out=None):
        raise AssertionError("never used")


BAD_PLUGINS = {
    # id: (plugin, stage, what the reason says)
    "builtin-duplicate": (lambda: _returning("register_decomposers", _NamedLikeTheBuiltin), "register_decomposers", "built-in is kept"),
    "no-name": (lambda: _returning("register_decomposers", _cls(...)), "register_decomposers", "has no name"),
    "bad-name": (lambda: _returning("register_decomposers", _cls("Bad_Name")), "register_decomposers", "names must match"),
    "wrong-base": (lambda: _returning("register_decomposers", _cls("x-dec", base=object)), "register_decomposers", "not a subclass of Decomposer"),
    "instance": (lambda: _returning("register_decomposers", _cls()()), "register_decomposers", "not an instance"),
    "no-default-params": (lambda: _returning("register_decomposers", _cls(default_params=())), "register_decomposers", "declares no default_params"),
    "hook-raises": (lambda: _returning("register_decomposers", RuntimeError("kaput")), "register_decomposers", "raised RuntimeError: kaput"),
    "wrong-kind": (lambda: _returning("register_metrics", _cls()), "register_metrics", "not a subclass of Metric"),
    "misspelled-hook": (lambda: _Misspelled(), "hooks", "register_decomposer() (did you mean register_decomposers?)"),
    "hook-bad-args": (lambda: _BadArgs(), "hooks", "can not be found in the hookspec"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLUGINS))
def test_bad_plugin_is_skipped_and_reported(case, cli, use_pm, tiny_npz, tmp_path):
    make, stage, reason = BAD_PLUGINS[case]
    with pytest.warns(PluginWarning, match=re.escape(reason)):
        use_pm.register(make(), name="badplug")
        freqprobe.registry.check_all(use_pm)
    # the tool keeps working: list, decompose, the Python API
    rc, out, err = cli("list", "decomposers")
    assert rc == 0 and listed(out)["fft-radial"] == "freqprobe.builtins.decomposers" and "Traceback" not in err
    rc, out, err = cli("decompose", "--data", f"npz:{tiny_npz}", "--radii", "4", "--out", tmp_path / "d.npz", "-q")
    assert rc == 0, err
    parts = freqprobe.decompose(torch.rand(2, 3, 16, 16), "fft-radial", 8)
    assert set(parts) == {"low", "high"}
    # and the problem is listed, with the plugin, its distribution, the reason and how to switch it off
    rc, out, err = cli("plugins", "--json")
    assert rc == 0, err
    [e] = [e for e in json.loads(out)["errors"] if e["name"] == "badplug"]
    assert e["dist"] == "registered at runtime" and e["stage"] == stage and reason in e["error"]
    assert e["hint"] == "switch it off with FREQPROBE_DISABLE_PLUGINS=badplug or freqprobe -p no:badplug"
    rc, out, err = cli("plugins")
    assert rc == 0 and 'failed: Plugin "badplug"' in err and "-p no:badplug" in err


def test_check_pending_never_crashes(monkeypatch):
    """A misspelled hook found at load time is refused; the manager (and pluggy's check_pending) survive."""
    pm = freqprobe.plugins.FreqprobePluginManager()
    pm.add_hookspecs(freqprobe.hookspecs)
    pm.register(_Misspelled(), "typo")
    with pytest.warns(PluginWarning, match="did you mean register_decomposers"):
        freqprobe.plugins.check_pending(pm)
    assert pm.get_plugin("typo") is None
    pm.check_pending()  # nothing pending any more


def test_two_third_party_plugins_claiming_one_name(cli, use_pm):
    box = type("Box", (Decomposer,), {"name": "box", "default_params": (1,), "__module__": "onemod",
                                      "decompose": lambda self, x, p, out=None: {"low": x, "high": x * 0}})
    box2 = type("Box", (Decomposer,), dict(vars(box), __module__="twomod"))
    use_pm.register(_returning("register_decomposers", box), name="one")
    use_pm.register(_returning("register_decomposers", box2), name="two")
    with pytest.warns(PluginWarning, match=r"duplicate decomposer name 'box'.*'one'.*'two'"):
        entries = freqprobe.collect("decomposers", use_pm)
    assert "box" not in entries and "svd" in entries
    with pytest.raises(PluginError, match=r"decomposer 'box' is provided by both plugin 'one'.*and plugin 'two'.*neither is used"):
        freqprobe.decompose(torch.rand(1, 3, 8, 8), "box", 1)
    rc, _, err = cli("decompose", "--decomposer", "box", "--out", "x.npz")
    assert rc == 2 and err.count("\n") == 1 and "provided by both" in err and "-p no:one" in err


def test_runtime_registration_validated_at_once(use_pm):
    with pytest.warns(PluginWarning, match="did you mean register_decomposers"):
        assert use_pm.register(_Misspelled(), "typo") is None
    assert use_pm.get_plugin("typo") is None
    [e] = [e for e in use_pm.load_errors if e.name == "typo"]
    assert e.stage == "hooks"


# ------------------------------------------------------------------ switching plugins off
def test_disable_in_process(cli, use_pm):
    use_pm.register(_returning("register_decomposers", _cls("rt-dec")), name="rtplug")
    rc, out, _ = cli("list", "decomposers")
    assert "rt-dec" in out
    rc, out, err = cli("-p", "no:rtplug", "list", "decomposers")
    assert rc == 0 and "rt-dec" not in out, err
    rc, out, _ = cli("plugins", "--json")
    assert json.loads(out)["disabled"] == ["rtplug"]
    rc, _, err = cli("-p", "no:freqprobe.builtins.decomposers", "list")
    assert rc == 2 and "built-in plugin 'freqprobe.builtins.decomposers' cannot be switched off" in err
    rc, _, err = cli("-p", "rtplug", "list")
    assert rc == 2 and "use -p no:NAME" in err


def test_disable_by_name_before_loading(tmp_path):
    """``-p no:NAME`` and FREQPROBE_DISABLE_PLUGINS keep a plugin from even being imported."""
    site = tmp_path / "site"
    make_dist(site, "myplug", {"myplug": "myplugmod"}, {"myplugmod": BOX_PLUGIN.format(name="myplug-box")})
    make_dist(site, "brokenplug", {"brokenplug": "brokenmod"}, {"brokenmod": "raise ImportError('needs libfoo 9.9')\n"})
    p = run_sub(site, "-p", "no:brokenplug", "list", "decomposers")
    assert p.returncode == 0, p.stderr
    assert p.stderr == "" and listed(p.stdout)["myplug-box"] == "myplug"
    p = run_sub(site, "plugins", "--json", extra_env={"FREQPROBE_DISABLE_PLUGINS": "myplug, brokenplug, " + INSTALLED})
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"plugins": [], "errors": [], "disabled": sorted({"brokenplug", "myplug", *INSTALLED.split(",")})}


def test_bad_distributions_reported_once_with_their_dist(tmp_path):
    """Real distributions: the message names the distribution; an import error is printed once."""
    site = tmp_path / "site"
    make_dist(site, "brokenplug", {"brokenplug": "brokenmod"}, {"brokenmod": "raise ImportError('needs libfoo 9.9')\n"})
    make_dist(site, "typoplug", {"typoplug": "typomod"},
              {"typomod": "from freqprobe import hookimpl\n\n@hookimpl\ndef register_decomposer():\n    return []\n"})
    make_dist(site, "badnameplug", {"badnameplug": "badnamemod"}, {"badnamemod": BOX_PLUGIN.format(name="Bad_Box")})
    p = run_sub(site, "list", "decomposers")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert set(listed(p.stdout)) == {"fft-radial", "svd"}
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 3 and all(ln.startswith("warning: ") for ln in lines), p.stderr
    assert sum('Error importing plugin "brokenplug" (brokenplug 1.0): ImportError: needs libfoo 9.9' in ln for ln in lines) == 1
    assert any('Plugin "typoplug" (typoplug 1.0): implements unknown hook register_decomposer() (did you mean register_decomposers?)' in ln
               for ln in lines)
    assert any('Plugin "badnameplug" (badnameplug 1.0): decomposer class badnamemod.BoxDecomposer has name' in ln
               and "FREQPROBE_DISABLE_PLUGINS=badnameplug or freqprobe -p no:badnameplug" in ln for ln in lines)
    p = run_sub(site, "plugins", "--json")
    data = json.loads(p.stdout)
    assert p.stderr == ""  # `plugins` lists the problems instead of warning about them
    assert {(e["name"], e["dist"], e["stage"]) for e in data["errors"]} == {
        ("brokenplug", "brokenplug 1.0", "import"), ("typoplug", "typoplug 1.0", "hooks"),
        ("badnameplug", "badnameplug 1.0", "register_decomposers")}
    assert [p_["name"] for p_ in data["plugins"]] == ["badnameplug"]  # loaded; only its bad class is skipped


# ------------------------------------------------------------------ failures at run time
@pytest.fixture
def run_args(tiny_npz, tiny_model_file, tiny_weights, tmp_path):
    w = tiny_weights

    def args(*extra, out="run"):
        return ["run", "--model", f"{tiny_model_file}:tinynet", "--checkpoint", w, "--data", f"npz:{tiny_npz}",
                "--radii", "4", "--device", "cpu", "-q", "--out", tmp_path / out, *extra]

    return args


class _RaisingDecomposer(Decomposer):
    """Raises."""

    name = "raising"
    default_params = (1,)

    def decompose(self, x, param, *, out=None):
        raise ValueError("cannot split this")


class _RaisingUpdate(Metric):
    """Raises in update."""

    name = "raising-update"

    def update(self, outputs, targets):
        raise KeyError("no such logit")

    def compute(self):
        return 0.0


class _RaisingCompute(Metric):
    """Raises in compute."""

    name = "raising-compute"

    def update(self, outputs, targets):
        pass

    def compute(self):
        return 1 / 0


class _RaisingProbe(Probe):
    """Raises in sources."""

    name = "raising-probe"

    def sources(self, ctx):
        raise RuntimeError("probe bug")


class _RaisingObserver:
    def on_batch(self, batch, images, values, targets):
        raise IndexError("gallery full")


class _ObservingProbe(Probe):
    """Its observer raises."""

    name = "observing-probe"

    def observers(self, ctx):
        return [_RaisingObserver()]


class _RaisingWriter:
    @hookimpl
    def report_result(self, result, context):
        raise OSError("disk on fire")


class _Plug:
    @hookimpl
    def register_decomposers(self):
        return [_RaisingDecomposer]

    @hookimpl
    def register_metrics(self):
        return [_RaisingUpdate, _RaisingCompute]

    @hookimpl
    def register_probes(self):
        return [_RaisingProbe, _ObservingProbe]


RUNTIME_FAILURES = {
    "decompose": (("--decomposer", "raising"), "failed in _RaisingDecomposer.decompose() of decomposer 'raising': ValueError: cannot split this"),
    "metric-update": (("--metric", "raising-update"), "failed in _RaisingUpdate.update() of metric 'raising-update': KeyError: 'no such logit'"),
    "metric-compute": (("--metric", "raising-compute"), "failed in _RaisingCompute.compute() of metric 'raising-compute': ZeroDivisionError"),
    "probe": (("--probe", "raising-probe"), "failed in _RaisingProbe.sources() of probe 'raising-probe': RuntimeError: probe bug"),
    "observer": (("--probe", "observing-probe"), "failed in _RaisingObserver.on_batch() of probe 'observing-probe': IndexError: gallery full"),
}


@pytest.mark.parametrize("case", sorted(RUNTIME_FAILURES))
def test_plugin_failure_at_run_time_is_named(case, cli, use_pm, run_args, tmp_path):
    use_pm.register(_Plug(), name="failplug")
    extra, msg = RUNTIME_FAILURES[case]
    rc, out, err = cli(*run_args(*extra))
    assert rc == 2, err
    assert "\nError: plugin 'failplug' " in "\n" + err and msg in err and "Traceback" not in err + out
    assert not (tmp_path / "run").exists()


def test_writer_failure_is_named_and_skipped(cli, use_pm, run_args, tmp_path):
    """A third-party writer that fails is named in a warning and skipped; the run and its own files stand (issue 17)."""
    use_pm.register(_RaisingWriter(), name="writerplug")
    rc, out, err = cli(*run_args())
    assert rc == 0 and "warning: plugin 'writerplug' (registered at runtime) failed in report_result(): OSError: disk on fire" in err
    assert "Traceback" not in err + out and (tmp_path / "run" / "summary.csv").is_file()
    man = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert man["skipped_writers"] == [{"plugin": "writerplug", "distribution": "registered at runtime", "hook": "report_result",
                                       "error": "OSError: disk on fire"}]


def test_decompose_command_names_the_plugin(cli, use_pm, tiny_npz, tmp_path):
    use_pm.register(_Plug(), name="failplug")
    rc, _, err = cli("decompose", "--data", f"npz:{tiny_npz}", "--decomposer", "raising", "--out", tmp_path / "d.npz", "-q")
    assert rc == 2 and "plugin 'failplug' failed in _RaisingDecomposer.decompose()" in err and "Traceback" not in err
    with pytest.raises(PluginError, match="plugin 'failplug' failed in") as ei:
        freqprobe.decompose(torch.rand(1, 3, 8, 8), "raising", 1)
    assert isinstance(ei.value.__cause__, ValueError)  # the original stays chained for Python users


def test_interrupt_passes_through(use_pm):
    class Interrupting(_RaisingDecomposer):
        name = "interrupting"

        def decompose(self, x, param, *, out=None):
            raise KeyboardInterrupt

    use_pm.register(_returning("register_decomposers", Interrupting), name="intplug")
    with pytest.raises(KeyboardInterrupt):
        freqprobe.decompose(torch.rand(1, 3, 8, 8), "interrupting", 1)


# ------------------------------------------------------------------ what a decomposer returns
def _dec(name, fn, components=("low", "high")):
    return type("D", (Decomposer,), {"name": name, "default_params": (1,), "components": components, "__module__": "decmod",
                                     "decompose": lambda self, x, p, out=None: fn(x)})


BAD_OUTPUTS = {
    "wrong-keys": (lambda x: {"lo": x, "hi": x}, r"declares components \('low', 'high'\) but decompose\(\) returned \('lo', 'hi'\)"),
    "missing-key": (lambda x: {"low": x}, r"returned \('low',\)"),
    "wrong-shape": (lambda x: {"low": x[:, :, :4], "high": x}, r"component 'low' of shape \(2, 3, 4, 8\) for input of shape \(2, 3, 8, 8\)"),
    "not-a-dict": (lambda x: [x, x], r"must return a dict \{component: tensor\}, got list"),
    "not-a-tensor": (lambda x: {"low": x.numpy(), "high": x}, r"component 'low' as a ndarray, not a torch.Tensor"),
    "integer": (lambda x: {"low": x.long(), "high": x}, r"component 'low' of dtype torch.int64"),
}


@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
def test_decomposer_output_checked(case, pm):
    fn, msg = BAD_OUTPUTS[case]
    pm.register(_returning("register_decomposers", _dec("bad-out", fn)), name="outplug")
    with pytest.raises(PluginError, match=r"decomposer 'bad-out' from plugin 'outplug'.*" + msg):
        freqprobe.decompose(torch.rand(2, 3, 8, 8), "bad-out", 1, pm=pm)


def test_decomposer_output_checked_in_a_run(cli, use_pm, run_args, tmp_path):
    use_pm.register(_returning("register_decomposers", _dec("bad-out", lambda x: {"lo": x, "hi": x})), name="outplug")
    rc, _, err = cli(*run_args("--decomposer", "bad-out", "--radii", "1"))
    assert rc == 2 and "decomposer 'bad-out' from plugin 'outplug' declares components ('low', 'high')" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


# ------------------------------------------------------------------ metric life cycle
class ResetInitialised(Metric):
    """Accuracy whose state exists only once reset() ran; no super().__init__()."""

    name = "reset-acc"

    def __init__(self, ctx):
        self.ctx = ctx  # the documented attribute (kept out of run checkpoints)

    def reset(self):
        self.right, self.n = 0, 0

    def update(self, outputs, targets):
        self.right += int((outputs.argmax(-1) == targets).sum())
        self.n += len(targets)

    def compute(self):
        return self.right / self.n


class NoContext(Metric):
    """A metric whose constructor takes no context."""

    name = "no-ctx"

    def __init__(self):
        super().__init__()
        self.add_state("n", 0)

    def update(self, outputs, targets):
        self.n += len(targets)

    def compute(self):
        return {"samples": self.n}


def test_metric_initialised_in_reset_end_to_end(cli, use_pm, run_args, tmp_path):
    use_pm.register(_returning("register_metrics", [ResetInitialised, NoContext]), name="metricplug")
    rc, _, err = cli(*run_args("--metric", "accuracy", "--metric", "reset-acc", "--metric", "no-ctx"))
    assert rc == 0, err
    rows = (tmp_path / "run" / "summary.csv").read_text().splitlines()[1:]
    by = {}
    for r in rows:
        cells = r.split(",")
        by[(cells[3], cells[4], cells[5])] = float(cells[6])
    for variant in (("original", ""), ("low", "4"), ("high", "4")):
        assert by[(*variant, "reset-acc")] == by[(*variant, "accuracy")]
        assert by[(*variant, "samples")] == 24


# ------------------------------------------------------------------ the worked examples of docs/plugins.md
def _examples():
    path = REPO / "examples" / "plugin_examples.py"
    spec = importlib.util.spec_from_file_location("plugin_examples", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return path.read_text(), mod


def test_docs_show_the_tested_examples():
    text, _ = _examples()
    docs = (REPO / "docs" / "plugins.md").read_text()
    for part, page in (("metric", docs), ("probe", docs), ("error-rate", (REPO / "docs" / "engine.md").read_text())):
        code = re.search(rf"# --8<-- \[start:{part}\]\n(.*?)# --8<-- \[end:{part}\]\n", text, re.S).group(1)
        assert f"```python\n{code}```" in page, f"the docs do not show examples/plugin_examples.py's {part} block verbatim"


def test_the_docs_metrics_pass_the_conformance_kit():
    from freqprobe.testing import check_metric

    _, mod = _examples()
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(40, 5, generator=g), torch.randint(0, 5, (40,), generator=g)
    got = check_metric(mod.ErrorRate, logits, labels)
    assert got["error-rate"] == pytest.approx(float((logits.argmax(-1) != labels).float().mean()))
    check_metric(mod.ExpectedCalibrationError, logits, labels)


def test_worked_ece_metric():
    _, mod = _examples()
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(200, 5, generator=g) * 3, torch.randint(0, 5, (200,), generator=g)
    whole = mod.ExpectedCalibrationError()
    whole.reset()
    whole.update(logits, labels)
    conf, pred = logits.softmax(-1).max(-1)
    bins = (conf * 15).long().clamp(max=14)
    want = sum(abs(conf[bins == b].sum() - (pred == labels)[bins == b].sum()).item() for b in range(15)) / 200
    assert whole.compute() == pytest.approx(want, abs=1e-6)
    a, b = mod.ExpectedCalibrationError(), mod.ExpectedCalibrationError()
    a.update(logits[:70], labels[:70])
    b.update(logits[70:], labels[70:])
    a.merge(b)  # what sharded runs do
    assert a.compute() == pytest.approx(whole.compute(), abs=1e-9)


def test_worked_examples_in_a_run(cli, use_pm, run_args, tmp_path):
    _, mod = _examples()
    use_pm.register(mod, "examples")
    rc, out, err = cli(*run_args("--probe", "low-only", "--metric", "accuracy", "--metric", "ece", "--radii", "4,8"))
    assert rc == 0, err
    rows = [r.split(",") for r in (tmp_path / "run" / "summary.csv").read_text().splitlines()[1:]]
    assert {(r[3], r[4], r[5]) for r in rows} == {(v, p, m) for v, p in (("original", ""), ("low", "4"), ("low", "8"))
                                                  for m in ("accuracy", "ece")}
    assert all(0 <= float(r[6]) <= 1 for r in rows)
    rc, out, err = cli(*run_args("--probe", "low-only", "--probe-opt", "with_original=False", out="run2"))
    assert rc == 0, err
    variants = {r.split(",")[3] for r in (tmp_path / "run2" / "summary.csv").read_text().splitlines()[1:]}
    assert variants == {"low"}
    sys.modules.pop("plugin_examples", None)
