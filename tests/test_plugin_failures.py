"""A plugin never takes the tool down (issue 17): an entry point that exits at import, an output hook that fails,
and the manifest's record of who provided every class a run used.

Entry-point cases use real distributions on disk (``make_dist``), loaded in-process through
``importlib.metadata`` like the console script does; one case runs the console script itself.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import torch

import freqprobe
import freqprobe.plugins
from freqprobe import Decomposer, Metric, hookimpl
from freqprobe.errors import PluginWarning

from test_plugins import BOX_PLUGIN, INSTALLED, listed, make_dist, run_sub

VERSION = f"freqprobe {freqprobe.__version__}"


@pytest.fixture
def use_pm(monkeypatch, pm):
    monkeypatch.setattr(freqprobe.plugins, "_default", pm)
    return pm


@pytest.fixture
def load_site(monkeypatch):
    """``load_site(site)``: a plugin manager that loads the entry points of ``site``'s distributions (the installed
    plugins switched off), made the default one; the site's modules are forgotten afterwards."""
    added: list[str] = []

    def load(site: Path, *, default: bool = True):
        monkeypatch.syspath_prepend(str(site))
        monkeypatch.delenv("FREQPROBE_LOAD_PLUGINS", raising=False)
        added.extend(p.stem for p in site.glob("*.py"))
        pm = freqprobe.plugins.get_plugin_manager(autoload=True, disable=INSTALLED.split(","))
        if default:
            monkeypatch.setattr(freqprobe.plugins, "_default", pm)
        return pm

    yield load
    for mod in added:
        sys.modules.pop(mod, None)


@pytest.fixture
def weights(tiny_model_file, tmp_path) -> Path:
    import importlib.util

    spec = importlib.util.spec_from_file_location("tinynet_failures", tiny_model_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    w = tmp_path / "w.pt"
    torch.save(mod.tinynet().state_dict(), w)
    return w


def run_args(tiny_model_file, weights, tiny_npz, out, *extra):
    return ("run", "--model", f"{tiny_model_file}:tinynet", "--checkpoint", weights, "--data", f"npz:{tiny_npz}",
            "--limit", "8", "--out", out, "--device", "cpu", "-q", *(extra or ("--radii", "4")))


# ------------------------------------------------------------------ 1. an entry point that ends the process at import
class Fatal(BaseException):
    """Neither an Exception nor an interrupt."""


EXITING = {
    "sys-exit-3": ("import sys\nsys.exit(3)\n", "SystemExit: sys.exit(3) called"),
    "sys-exit-message": ("raise SystemExit('cannot run here')\n", "SystemExit: sys.exit('cannot run here') called"),
    "keyboard-interrupt": ("raise KeyboardInterrupt\n", "KeyboardInterrupt raised by the plugin itself (not a Ctrl-C)"),
    "base-exception": ("class Fatal(BaseException):\n    pass\nraise Fatal('gone')\n", "Fatal: gone"),
}


@pytest.mark.parametrize("case", sorted(EXITING))
def test_entry_point_ending_the_process_at_import_is_skipped(case, load_site, cli, tmp_path):
    src, error = EXITING[case]
    mod = f"exitmod_{case.replace('-', '_')}"
    site = tmp_path / "site"
    make_dist(site, "exitplug", {"exitplug": mod}, {mod: src})
    make_dist(site, "myplug", {"myplug": "myplugmod_exit"}, {"myplugmod_exit": BOX_PLUGIN.format(name="myplug-box")})
    with pytest.warns(PluginWarning, match='Error importing plugin "exitplug" \\(exitplug 1.0\\)') as got:
        pm = load_site(site)
    assert [str(w.message) for w in got if "exitplug" in str(w.message)] == [
        f'Error importing plugin "exitplug" (exitplug 1.0): {error}; skipped '
        f"(switch it off with FREQPROBE_DISABLE_PLUGINS=exitplug or freqprobe -p no:exitplug)"]
    # the other plugin and the built-ins load; the bad one is not registered
    assert pm.get_plugin("exitplug") is None and pm.dists == {"myplug": "myplug 1.0"}
    assert [e.as_dict() for e in pm.load_errors] == [{
        "name": "exitplug", "dist": "exitplug 1.0", "stage": "import", "error": error,
        "hint": "switch it off with FREQPROBE_DISABLE_PLUGINS=exitplug or freqprobe -p no:exitplug"}]
    rc, out, err = cli("--help")
    assert rc == 0 and "run" in out, err
    rc, out, err = cli("list", "decomposers")
    assert rc == 0 and listed(out)["myplug-box"] == "myplug" and "fft-radial" in out, err
    rc, out, err = cli("plugins", "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert [p["name"] for p in data["plugins"]] == ["myplug"] and [e["name"] for e in data["errors"]] == ["exitplug"]


def test_console_script_survives_a_plugin_calling_sys_exit(tmp_path):
    """The console script: ``--help``, ``list`` and ``plugins`` work, the plugin is named once per command."""
    site = tmp_path / "site"
    make_dist(site, "exitplug", {"exitplug": "exitmod_console"}, {"exitmod_console": "import sys\nsys.exit(3)\n"})
    line = 'Error importing plugin "exitplug" (exitplug 1.0): SystemExit: sys.exit(3) called; skipped'
    for args in (["--help"], ["list", "decomposers"]):
        p = run_sub(site, *args)
        assert p.returncode == 0, p.stderr
        assert p.stderr.count(line) == 1 and p.stderr.startswith("warning: ") and "Traceback" not in p.stderr
    p = run_sub(site, "plugins")
    assert p.returncode == 0, p.stderr
    assert f"failed: {line}" in p.stderr and "Traceback" not in p.stderr


def test_a_real_interrupt_while_a_plugin_imports_still_interrupts(load_site, tmp_path):
    """A Ctrl-C (here: ``_thread.interrupt_main``, which is delivered like SIGINT) during an import is the user's."""
    src = "import _thread, time\n_thread.interrupt_main()\nfor _ in range(500):\n    time.sleep(0.01)\n"
    site = tmp_path / "site"
    make_dist(site, "slowplug", {"slowplug": "slowmod_interrupt"}, {"slowmod_interrupt": src})
    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job inherits SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt):
            load_site(site, default=False)
    finally:
        signal.signal(signal.SIGINT, old)


def test_hooks_that_exit_while_loading_are_skipped(use_pm, cli):
    """``register_*`` and ``add_options`` hooks that call sys.exit lose their part, not the tool."""

    class Exits:
        @hookimpl
        def register_metrics(self):
            sys.exit(4)

        @hookimpl
        def add_options(self, parser):
            raise SystemExit(5)

    use_pm.register(Exits(), name="exiter")
    with pytest.warns(PluginWarning, match="exiter"):
        errors = {e.stage: e.error for e in use_pm.load_errors}
        freqprobe.plugins.collect_options(use_pm, "run")
    assert errors["register_metrics"] == "register_metrics() raised SystemExit: sys.exit(4) called; its metrics are skipped"
    rc, out, err = cli("run", "--help")
    assert rc == 0 and "--decomposer" in out, err
    assert any(e.stage == "add_options" and "sys.exit(5)" in e.error for e in use_pm.load_errors)


# ------------------------------------------------------------------ 2. output hooks that fail
BAD_WRITER = '''
import sys
from freqprobe import hookimpl


@hookimpl
def report_result(result, context):
    (context.out_dir / "half.csv").write_text("a,b\\n1,")
    raise RuntimeError("disk says no")


@hookimpl
def manifest_entries(context, result):
    raise ValueError("cannot describe")
'''


def test_failing_output_hooks_are_skipped_the_run_stands(load_site, cli, tiny_model_file, weights, tiny_npz, tmp_path):
    site = tmp_path / "site"
    make_dist(site, "badwriter", {"badwriter": "badwritermod"}, {"badwritermod": BAD_WRITER})
    load_site(site)
    out = tmp_path / "run"
    rc, stdout, err = cli(*run_args(tiny_model_file, weights, tiny_npz, out))
    assert rc == 0, err
    warns = [ln for ln in err.splitlines() if "badwriter" in ln]
    assert warns == [
        "warning: plugin 'badwriter' (badwriter 1.0) failed in report_result(): RuntimeError: disk says no; its output is "
        "skipped, the run's own files stand; its unfinished files were removed (half.csv) "
        "(switch it off with FREQPROBE_DISABLE_PLUGINS=badwriter or freqprobe -p no:badwriter)",
        "warning: plugin 'badwriter' (badwriter 1.0) failed in manifest_entries(): ValueError: cannot describe; its output "
        "is skipped, the run's own files stand (switch it off with FREQPROBE_DISABLE_PLUGINS=badwriter or freqprobe -p no:badwriter)",
    ]
    assert {"summary.csv", "samples.csv", "manifest.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "half.csv").exists()
    man = json.loads((out / "manifest.json").read_text())
    assert man["skipped_writers"] == [
        {"plugin": "badwriter", "distribution": "badwriter 1.0", "hook": "report_result",
         "error": "RuntimeError: disk says no", "removed": ["half.csv"]},
        {"plugin": "badwriter", "distribution": "badwriter 1.0", "hook": "manifest_entries", "error": "ValueError: cannot describe"},
    ]
    assert set(man["outputs"]) == {p.name for p in out.iterdir()}
    assert len((out / "summary.csv").read_text().splitlines()) == 5  # original, low, high, hfc-reliance


class _Writers:
    """Output hooks that go wrong in every way, plus one good section."""

    def __init__(self, mode):
        self.mode = mode

    @hookimpl
    def report_result(self, result, context):
        if self.mode == "exit":
            sys.exit(7)
        if self.mode == "interrupt":
            raise KeyboardInterrupt

    @hookimpl
    def manifest_entries(self, context, result):
        return {"list": [1, 2], "core": {"seed": 999, "mine": {"ok": True}},
                "json": {"mine": {"ok": True}, "bad": {(1, 2): "tuple key"}}}.get(self.mode)


MANIFEST_CASES = {
    # mode: (skipped records' error texts, sections the plugin adds)
    "list": (["returned a list, not a dict of sections"], {}),
    "core": (["returned section 'seed', which the core writes; use a name of its own; the section is skipped"], {"mine": {"ok": True}}),
    "json": (["returned section 'bad', which cannot be written as JSON (TypeError: keys must be str, int, float, bool or None, "
              "not tuple); the section is skipped"], {"mine": {"ok": True}}),
    "exit": (["SystemExit: sys.exit(7) called"], {}),
    "interrupt": (["KeyboardInterrupt raised by the plugin itself (not a Ctrl-C)"], {}),
}


@pytest.mark.parametrize("mode", sorted(MANIFEST_CASES))
def test_bad_output_hook_results_are_named_and_skipped(mode, use_pm, tiny_model_file, weights, tiny_npz, tmp_path):
    errors, sections = MANIFEST_CASES[mode]
    use_pm.register(_Writers(mode), name="oddwriter")
    with pytest.warns(PluginWarning, match="plugin 'oddwriter' \\(registered at runtime\\) failed in"):
        result = freqprobe.run(f"{tiny_model_file}:tinynet", checkpoint=weights, data=f"npz:{tiny_npz}", params="4", limit=8,
                               device="cpu", out=tmp_path / "run")
    man = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [s["error"] for s in man["skipped_writers"]] == errors
    assert all(s["plugin"] == "oddwriter" and s["distribution"] == "registered at runtime" for s in man["skipped_writers"])
    assert man["seed"] == 0 and result.extras["manifest"] == man
    for key, value in sections.items():
        assert man[key] == value
    assert "bad" not in man and (tmp_path / "run" / "summary.csv").is_file()


def test_a_failing_builtin_writer_is_a_bug_and_raises(use_pm, monkeypatch, tiny_model_file, weights, tiny_npz, tmp_path):
    import freqprobe.builtins.report as report

    def broken(*a, **k):
        raise RuntimeError("built-in bug")

    monkeypatch.setattr(report, "write_summary", broken)
    with pytest.raises(RuntimeError, match="built-in bug"):
        freqprobe.run(f"{tiny_model_file}:tinynet", checkpoint=weights, data=f"npz:{tiny_npz}", params="4", limit=8,
                      device="cpu", out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_two_plugins_claiming_one_section_keep_the_first(use_pm, tiny_model_file, weights, tiny_npz, tmp_path):
    class Section:
        def __init__(self, value):
            self.value = value

        @hookimpl
        def manifest_entries(self, context):
            return {"shared": self.value}

    use_pm.register(Section(1), name="first")
    use_pm.register(Section(2), name="second")  # called first (pluggy: last registered first)
    with pytest.warns(PluginWarning, match="which plugin 'second' already wrote"):
        freqprobe.run(f"{tiny_model_file}:tinynet", checkpoint=weights, data=f"npz:{tiny_npz}", params="4", limit=8,
                      device="cpu", out=tmp_path / "run")
    man = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert man["shared"] == 2 and [s["plugin"] for s in man["skipped_writers"]] == ["first"]


def test_table2_stands_with_a_failing_writer(first_party_pm, tiny_model_file, weights, tiny_npz, tmp_path, cli):
    pm = first_party_pm("attacks", "smoothing")
    pm.register(_Writers("exit"), name="oddwriter")
    out = tmp_path / "t2"
    rc, stdout, err = cli("table2", "--model", f"{tiny_model_file}:tinynet", "--checkpoint", weights, "--data",
                          f"npz:{tiny_npz}", "--rho", "0", "--attack", "fgsm", "--eps", "0.03", "--limit", "4", "--device",
                          "cpu", "-q", "--out", out)
    assert rc == 0, err
    assert "warning: plugin 'oddwriter' (registered at runtime) failed in report_result(): SystemExit: sys.exit(7) called" in err
    assert (out / "table2.csv").is_file()
    [row] = [p for p in out.iterdir() if p.is_dir()]
    man = json.loads((row / "manifest.json").read_text())
    assert man["skipped_writers"][0]["hook"] == "report_result"
    assert {(p["kind"], p["name"]) for p in man["provenance"]} >= {("attack", "fgsm"), ("transform", "smooth")}


# ------------------------------------------------------------------ 3. provenance: who provided every class a run used
class _RuntimeMetric(Metric):
    """Counts samples (registered at run time)."""

    name = "seen"

    def __init__(self, ctx=None, **options):
        super().__init__(ctx, **options)
        self.add_state("n", 0)

    def update(self, outputs, targets):
        self.n += int(targets.shape[0])

    def compute(self):
        return float(self.n)


class _MetricPlugin:
    @hookimpl
    def register_metrics(self):
        return _RuntimeMetric


def test_manifest_records_the_distribution_of_every_class(load_site, cli, tiny_model_file, weights, tiny_npz, tmp_path):
    site = tmp_path / "site"
    make_dist(site, "myplug", {"myplug": "myplugmod_prov"}, {"myplugmod_prov": BOX_PLUGIN.format(name="myplug-box")})
    pm = load_site(site)
    pm.register(_MetricPlugin(), name="runtime-metrics")
    out = tmp_path / "run"
    rc, _, err = cli(*run_args(tiny_model_file, weights, tiny_npz, out, "--decomposer", "myplug-box", "--radii", "1",
                               "--metric", "accuracy", "--metric", "seen"))
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    got = {(p["kind"], p["name"]): p for p in man["provenance"]}
    assert got[("decomposer", "myplug-box")] == {"kind": "decomposer", "name": "myplug-box", "class": "myplugmod_prov.BoxDecomposer",
                                                 "plugin": "myplug", "distribution": "myplug 1.0"}
    assert got[("metric", "seen")]["plugin"] == "runtime-metrics" and got[("metric", "seen")]["distribution"] == "registered at runtime"
    builtin = {("probe", "lfc-hfc"): "freqprobe.builtins.probes", ("rescale policy", "none"): "freqprobe.builtins.rescale",
               ("metric", "accuracy"): "freqprobe.builtins.metrics", ("model source", "python"): "freqprobe.builtins.models",
               ("model adapter", "classifier"): "freqprobe.builtins.models", ("dataset", "npz"): "freqprobe.builtins.datasets"}
    for key, plugin in builtin.items():
        assert got[key]["plugin"] == plugin and got[key]["distribution"] == VERSION, key
    assert set(got) == set(builtin) | {("decomposer", "myplug-box"), ("metric", "seen")}
    assert man["skipped_writers"] == []


def test_provenance_of_transforms_attacks_and_python_objects(first_party_pm, tiny_model_file, weights, tiny_npz, tmp_path):
    first_party_pm("attacks", "smoothing")
    import importlib.util

    spec = importlib.util.spec_from_file_location("tinynet_obj", tiny_model_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.tinynet()
    net.load_state_dict(torch.load(weights))
    freqprobe.run(net, data=f"npz:{tiny_npz}", probe="robustness", attacks=["fgsm"], eps="0.03", params="4", limit=4,
                  transforms=["smooth:rho=0.5"], device="cpu", out=tmp_path / "run")
    man = json.loads((tmp_path / "run" / "manifest.json").read_text())
    got = {(p["kind"], p["name"]): (p["plugin"], p["distribution"]) for p in man["provenance"]}
    runtime = "registered at runtime"  # first_party_pm registers them with pm.register, not through entry points
    assert got[("probe", "robustness")] == ("attacks", runtime)
    assert got[("attack", "fgsm")] == ("attacks", runtime)
    assert got[("transform", "smooth")] == ("smoothing", runtime)
    assert got[("model adapter", "classifier")] == ("freqprobe.builtins.models", VERSION)
    assert not any(kind == "model source" for kind, _ in got)  # an nn.Module given in Python has no registered source


def test_provenance_of_an_unregistered_object(pm):
    class Mine(Decomposer):
        name = "mine"
        default_params = (1,)

        def decompose(self, x, param, *, out=None):
            return {"low": x, "high": x * 0}

    rec = freqprobe.registry.provenance(pm, "decomposers", Mine())
    assert rec == {"kind": "decomposer", "name": "mine", "class": f"{__name__}.{Mine.__qualname__}", "plugin": None,
                   "distribution": None}
    assert freqprobe.registry.provenance(pm, "decomposers", name="fft-radial")["distribution"] == VERSION


def test_attack_names_come_from_the_options_or_the_variants():
    """Attacks the probe chose itself (no ``attacks`` option) are found in the variants' ``attack`` column."""
    from freqprobe.interfaces import ProbeResult, Variant
    from freqprobe.runner import _attack_names

    variants = [Variant("original"), Variant("adversarial", extra=(("attack", "pgd:steps=2"), ("eps", 0.03))),
                Variant("adversarial", extra=(("attack", "fgsm"), ("eps", 0.03)))]
    result = ProbeResult("robustness", [], variants=variants)
    assert _attack_names({}, result) == ["pgd", "fgsm"]
    assert _attack_names({"attacks": ["fgsm:x=1"]}, ProbeResult("robustness", [])) == ["fgsm"]
