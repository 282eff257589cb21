"""Plugins: listing, entry-point discovery, broken and duplicate plugins, the Python API, hook docs."""

from __future__ import annotations

import inspect
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import freqprobe
import freqprobe.plugins
from freqprobe import Decomposer, PluginError, hookimpl, hookspecs

REPO = Path(__file__).resolve().parents[1]

BOX_PLUGIN = '''
import torch.nn.functional as F
from freqprobe import Decomposer, hookimpl


class BoxDecomposer(Decomposer):
    """Box blur (low) and its residual (high); parameter k = half-width in pixels."""

    name = "{name}"
    components = ("low", "high")
    param_name = "k"
    param_type = int
    default_params = (1, 2)

    def decompose(self, x, param, *, out=None):
        low = F.avg_pool2d(x, 2 * param + 1, stride=1, padding=param, count_include_pad=False)
        return {{"low": low, "high": x - low}}


@hookimpl
def register_decomposers():
    return BoxDecomposer
'''




def freqprobe_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "freqprobe"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "freqprobe.cli"]


def make_dist(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A fake installed distribution: modules + ``DIST-1.0.dist-info`` with METADATA and entry_points.txt."""
    site.mkdir(parents=True, exist_ok=True)
    for mod, src in modules.items():
        (site / f"{mod}.py").write_text(src)
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[freqprobe]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))


#: the first-party plugins' entry points (plugins/*), installed with freqprobe
FIRST_PARTY = "attacks,smoothing,coco,train"
#: every plugin installed here (the first-party ones and the example of examples/freqprobe-filters, which the
#: README's test command installs): what tests about other third-party plugins switch off
INSTALLED = ",".join(sorted({ep.name for ep in importlib.metadata.entry_points(group="freqprobe")} | set(FIRST_PARTY.split(","))))


def run_sub(site: Path, *args, autoload=True, extra_env=None, cwd=None, first_party=False):
    """The console script with ``site``'s distributions importable; the first-party plugins
    switched off unless ``first_party`` (these tests are about third-party ones)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(site) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("FREQPROBE_DISABLE_PLUGIN_AUTOLOAD", None)
    env.pop("FREQPROBE_LOAD_PLUGINS", None)
    env.pop("FREQPROBE_DISABLE_PLUGINS", None)
    if not first_party:
        env["FREQPROBE_DISABLE_PLUGINS"] = INSTALLED
    if not autoload:
        env["FREQPROBE_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env.update(extra_env or {})
    return subprocess.run([*freqprobe_cmd(), *map(str, args)], env=env, capture_output=True, text=True, timeout=180, cwd=cwd)


def listed(stdout: str) -> dict[str, str]:
    """``name -> plugin`` from the lines of ``freqprobe list KIND``."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out[parts[0]] = parts[1]
    return out


@pytest.fixture
def good_site(tmp_path) -> Path:
    site = tmp_path / "site"
    make_dist(site, "myplug", {"myplug": "myplugmod"}, {"myplugmod": BOX_PLUGIN.format(name="myplug-box")})
    return site


@pytest.fixture
def use_pm(monkeypatch, pm):
    """Make the CLI (and run()) use the test's plugin manager."""
    monkeypatch.setattr(freqprobe.plugins, "_default", pm)
    return pm


# ------------------------------------------------------------------ listing the built-ins
def test_list_all_kinds(cli, use_pm):
    rc, out, err = cli("list")
    assert rc == 0, err
    for kind in ("decomposers:", "probes:", "models:", "datasets:", "rescale:", "metrics:", "attacks:", "transforms:"):
        assert kind in out.splitlines(), kind
    rows = listed(out)
    assert rows["fft-radial"] == "freqprobe.builtins.decomposers"
    assert rows["lfc-hfc"] == "freqprobe.builtins.probes"
    assert rows["timm"] == "freqprobe.builtins.models"
    assert rows["npz"] == "freqprobe.builtins.datasets"


def test_list_decomposers(cli, use_pm):
    rc, out, err = cli("list", "decomposers")
    assert rc == 0, err
    rows = listed(out)
    assert rows == {"fft-radial": "freqprobe.builtins.decomposers", "svd": "freqprobe.builtins.decomposers"}
    assert "Paper §3.1" in out  # the docstring's first line


def test_list_with_pattern(cli, use_pm):
    rc, out, err = cli("list", "models", "tim")
    assert rc == 0, err
    assert listed(out) == {"timm": "freqprobe.builtins.models"}
    rc, out, _ = cli("list", "models", "torch*")
    assert set(listed(out)) == {"torchscript", "torchvision"}
    rc, out, _ = cli("list", "models", "zzz")
    assert rc == 0 and "no models match 'zzz'" in out


def test_list_unknown_kind(cli, use_pm):
    rc, _, err = cli("list", "decomposer")
    assert rc == 2 and "Unknown kind 'decomposer'" in err and "decomposers" in err and "Traceback" not in err


def test_plugins_command_builtins(cli, use_pm):
    rc, out, _ = cli("plugins")
    assert rc == 0 and "no third-party plugins installed" in out
    rc, out, _ = cli("plugins", "--all", "--json")
    data = json.loads(out)
    names = {p["name"]: p for p in data["plugins"]}
    assert set(freqprobe.plugins.DEFAULT_PLUGINS) <= set(names)
    assert names["freqprobe.builtins.decomposers"]["dist"] == "built-in"
    assert "register_decomposers" in names["freqprobe.builtins.decomposers"]["hooks"]
    assert data["errors"] == []


# ------------------------------------------------------------------ the Python API
class _Gauss(Decomposer):
    """Runtime test decomposer."""

    name = "rt-gauss"
    default_params = (1,)

    def decompose(self, x, param, *, out=None):
        return {"low": x * 0, "high": x}


class _RuntimePlugin:
    @hookimpl
    def register_decomposers(self):
        return [_Gauss]


def test_register_at_runtime(cli, use_pm):
    use_pm.register(_RuntimePlugin(), name="rtplug")
    rc, out, err = cli("list", "decomposers")
    assert rc == 0, err
    assert listed(out)["rt-gauss"] == "rtplug"
    rc, out, _ = cli("plugins", "--json")
    [item] = json.loads(out)["plugins"]
    assert item == {"name": "rtplug", "dist": "registered at runtime", "hooks": ["register_decomposers"]}
    parts = freqprobe.decompose(torch.rand(1, 3, 8, 8), "rt-gauss", 1, pm=use_pm)
    assert set(parts) == {"low", "high"}
    # unregistering forgets it again
    use_pm.unregister(name="rtplug")
    rc, out, _ = cli("list", "decomposers")
    assert "rt-gauss" not in out


def _plugin_returning(obj, hook="register_decomposers"):
    ns = {}

    def impl():
        return obj

    impl.__name__ = hook
    ns[hook] = hookimpl(impl)
    return type("P", (), {hook: staticmethod(ns[hook])})


def _skipped(pm, kind, plugin):
    """The recorded problems of ``plugin`` (collecting ``kind`` warns about them once)."""
    with pytest.warns(freqprobe.errors.PluginWarning):
        freqprobe.collect(kind, pm)
    return [e for e in pm.load_errors if e.name == plugin]


@pytest.mark.parametrize("bad_name", ["Bad_Name", "", "-lead", "with space", None, 3])
def test_invalid_name_rejected(pm, bad_name):
    cls = type("Bad", (Decomposer,), {"name": bad_name, "decompose": lambda self, x, p, out=None: {}, "__doc__": "bad"})
    pm.register(_plugin_returning(cls), name="badplug")
    [err] = _skipped(pm, "decomposers", "badplug")
    assert err.stage == "register_decomposers" and "class is skipped" in err.error
    assert ("has no name" if bad_name is None else "names must match") in err.error
    assert set(freqprobe.collect("decomposers", pm)) == {"fft-radial", "svd"}  # the rest is there


def test_wrong_base_class_rejected(pm):
    class NotADecomposer:
        name = "not-one"

    pm.register(_plugin_returning(NotADecomposer), name="wrongbase")
    [err] = _skipped(pm, "decomposers", "wrongbase")
    assert "not a subclass of Decomposer" in err.error
    with pytest.raises(PluginError, match=r"decomposer 'not-one' from plugin 'wrongbase'.*is unavailable.*not a subclass"):
        freqprobe.get_class("decomposers", "not-one", pm)
    # an instance instead of a class is refused too
    pm.unregister(name="wrongbase")
    pm.register(_plugin_returning(_Gauss()), name="instanceplug")
    [err] = _skipped(pm, "decomposers", "instanceplug")
    assert "not a class" in err.error and "not an instance" in err.error


def test_wrong_kind_rejected(pm):
    """A decomposer registered through register_probes is not a Probe."""
    pm.register(_plugin_returning(_Gauss, "register_probes"), name="mixup")
    [err] = _skipped(pm, "probes", "mixup")
    assert re.search(r"as a probe.*not a subclass of Probe", err.error)
    assert "rt-gauss" not in freqprobe.collect("probes", pm) and "lfc-hfc" in freqprobe.collect("probes", pm)


def test_duplicate_name_in_process(cli, use_pm):
    """A third-party class taking a built-in's name is skipped; the built-in stays."""
    dup = type("Dup", (Decomposer,), {"name": "svd", "default_params": (1,), "decompose": lambda self, x, p, out=None: {}, "__doc__": "dup", "__module__": "dupmod"})
    use_pm.register(_plugin_returning(dup), name="dupplug")
    [err] = _skipped(use_pm, "decomposers", "dupplug")
    assert "decomposer name 'svd'" in err.error and "built-in is kept" in err.error
    assert "dupmod.Dup" in err.error and "freqprobe.builtins.decomposers.SVDDecomposer" in err.error
    assert freqprobe.collect("decomposers", use_pm)["svd"].plugin == "freqprobe.builtins.decomposers"
    rc, out, err = cli("list", "decomposers")
    assert rc == 0 and listed(out)["svd"] == "freqprobe.builtins.decomposers" and "Traceback" not in err


def test_plugin_failing_in_hook(cli, use_pm):
    class Boom:
        @hookimpl
        def register_metrics(self):
            raise RuntimeError("kaput")

    use_pm.register(Boom(), name="boomplug")
    rc, out, err = cli("list", "metrics")
    assert rc == 0, err
    assert "warning:" in err and "boomplug" in err and "register_metrics" in err and "kaput" in err
    assert "accuracy" in listed(out)  # the built-ins of that kind are still there
    rc, out, _ = cli("list", "decomposers")
    assert rc == 0 and "fft-radial" in out


def test_hook_docs_cover_every_hookspec():
    text = (REPO / "docs" / "plugin-hooks.md").read_text()
    specs = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "freqprobe_spec")]
    assert len(specs) >= 10
    headings = re.findall(r"^## (\w+)\((.*)\)\s*$", text, flags=re.M)
    documented = {name: args for name, args in headings}
    for name in specs:
        assert name in documented, f"docs/plugin-hooks.md lacks a '## {name}(' heading"
        params = list(inspect.signature(getattr(hookspecs, name)).parameters)
        assert [a.strip() for a in documented[name].split(",") if a.strip()] == params, name
    assert set(documented) <= set(specs), "docs describe hooks that do not exist"


# ------------------------------------------------------------------ entry-point plugins, in a real process
def test_entry_point_plugin_listed(good_site, tmp_path):
    p = run_sub(good_site, "list", "decomposers")
    assert p.returncode == 0, p.stderr
    rows = listed(p.stdout)
    assert rows["myplug-box"] == "myplug"
    assert rows["fft-radial"] == "freqprobe.builtins.decomposers"
    assert "Box blur (low)" in p.stdout

    p = run_sub(good_site, "plugins", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["plugins"] == [{"name": "myplug", "dist": "myplug 1.0", "hooks": ["register_decomposers"]}]
    assert data["errors"] == []


def test_entry_point_plugin_used_by_decompose(good_site, tiny_npz, tiny_model_file, tmp_path):
    exported = tmp_path / "parts.npz"
    p = run_sub(good_site, "decompose", "--data", f"npz:{tiny_npz}", "--decomposer", "myplug-box", "--radii", "1,2",
                "--out", exported, "--device", "cpu", "-q")
    assert p.returncode == 0, p.stderr
    d = np.load(exported)
    assert {"x", "y", "low_k1", "high_k1", "low_k2", "high_k2"} <= set(d.files)
    x = torch.from_numpy(d["x"])
    want = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    np.testing.assert_allclose(d["low_k1"], want.numpy(), atol=1e-5)
    np.testing.assert_allclose(d["low_k2"] + d["high_k2"], d["x"], atol=1e-5)



def test_entry_point_plugin_used_by_run_in_process(good_site, cli, monkeypatch, tiny_npz, tiny_model_file, tmp_path):
    """Entry points are discovered on sys.path at load time; the loaded plugin's decomposer drives a run."""
    monkeypatch.syspath_prepend(str(good_site))
    monkeypatch.delenv("FREQPROBE_LOAD_PLUGINS", raising=False)
    try:
        pm = freqprobe.plugins.get_plugin_manager(autoload=True, disable=INSTALLED.split(","))
        assert pm.dists == {"myplug": "myplug 1.0"}
        assert freqprobe.collect("decomposers", pm)["myplug-box"].plugin == "myplug"
        monkeypatch.setattr(freqprobe.plugins, "_default", pm)
        import importlib.util

        spec = importlib.util.spec_from_file_location("tinynet_plug", tiny_model_file)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        w = tmp_path / "w.pt"
        torch.save(mod.tinynet().state_dict(), w)
        out = tmp_path / "run"
        rc, _, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--data", f"npz:{tiny_npz}", "--checkpoint", w,
                         "--decomposer", "myplug-box", "--radii", "1", "--out", out, "--device", "cpu", "-q")
        assert rc == 0, err
        summary = (out / "summary.csv").read_text().splitlines()
        assert summary[0] == "probe,transform,decomposer,variant,param,metric,value,n"
        assert [",".join(r.split(",")[2:5]) for r in summary[1:]] == ["myplug-box,original,", "myplug-box,low,1", "myplug-box,high,1",
                                                                     "myplug-box,hfc-reliance,"]
        man = json.loads((out / "manifest.json").read_text())
        assert man["decomposer"]["name"] == "myplug-box" and man["decomposer"]["param_name"] == "k"

        # FREQPROBE_LOAD_PLUGINS limits which entry points load (empty: none)
        monkeypatch.setenv("FREQPROBE_LOAD_PLUGINS", "")
        assert "myplug" not in dict(freqprobe.plugins.get_plugin_manager(autoload=True, disable=INSTALLED.split(",")).list_name_plugin())
        monkeypatch.setenv("FREQPROBE_LOAD_PLUGINS", "other,myplug")
        assert "myplug" in dict(freqprobe.plugins.get_plugin_manager(autoload=True, disable=INSTALLED.split(",")).list_name_plugin())
    finally:
        sys.modules.pop("myplugmod", None)


def test_disable_env_var_prevents_loading(good_site):
    p = run_sub(good_site, "list", "decomposers", autoload=False)
    assert p.returncode == 0, p.stderr
    assert "myplug-box" not in p.stdout and "fft-radial" in p.stdout


def test_broken_plugin_reported_and_cli_keeps_working(tmp_path):
    site = tmp_path / "site"
    make_dist(site, "brokenplug", {"brokenplug": "brokenmod"}, {"brokenmod": "raise ImportError('needs libfoo 9.9')\n"})
    p = run_sub(site, "list")
    assert p.returncode == 0, p.stderr
    assert "fft-radial" in p.stdout and "lfc-hfc" in p.stdout
    assert 'Error importing plugin "brokenplug" (brokenplug 1.0): ImportError: needs libfoo 9.9' in p.stderr
    assert "Traceback" not in p.stderr



def test_broken_plugin_in_plugins_json(tmp_path, cli, monkeypatch):
    site = tmp_path / "site"
    make_dist(site, "brokenplug", {"brokenplug": "brokenmod"}, {"brokenmod": "raise ImportError('needs libfoo 9.9')\n"})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("FREQPROBE_LOAD_PLUGINS", raising=False)
    with pytest.warns(freqprobe.errors.PluginWarning, match="brokenplug"):
        pm = freqprobe.plugins.get_plugin_manager(autoload=True, disable=INSTALLED.split(","))
    monkeypatch.setattr(freqprobe.plugins, "_default", pm)
    rc, out, err = cli("plugins", "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["plugins"] == []
    assert data["errors"] == [{"name": "brokenplug", "dist": "brokenplug 1.0", "stage": "import", "error": "ImportError: needs libfoo 9.9",
                               "hint": "switch it off with FREQPROBE_DISABLE_PLUGINS=brokenplug or freqprobe -p no:brokenplug"}]
    rc, out, err = cli("plugins")
    assert rc == 0 and 'failed: Error importing plugin "brokenplug"' in err
    # with autoload off (the conftest sets FREQPROBE_DISABLE_PLUGIN_AUTOLOAD=1) it is not even tried
    assert freqprobe.plugins.get_plugin_manager().load_errors == []


def test_duplicate_entry_point_plugins_refused(tmp_path, tiny_npz):
    """Two third-party plugins claiming one name: the name is refused for both, naming both; the rest works."""
    site = tmp_path / "site"
    make_dist(site, "plugone", {"plugone": "plugonemod"}, {"plugonemod": BOX_PLUGIN.format(name="box")})
    make_dist(site, "plugtwo", {"plugtwo": "plugtwomod"}, {"plugtwomod": BOX_PLUGIN.format(name="box")})
    p = run_sub(site, "list", "decomposers")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    assert set(listed(p.stdout)) == {"fft-radial", "svd"}
    [warn] = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert warn.startswith("warning: ") and "duplicate decomposer name 'box'" in warn
    assert "'plugone' (plugone 1.0" in warn and "'plugtwo' (plugtwo 1.0" in warn
    assert "plugonemod.BoxDecomposer" in warn and "plugtwomod.BoxDecomposer" in warn
    # using the name: one line naming both
    p = run_sub(site, "decompose", "--data", f"npz:{tiny_npz}", "--decomposer", "box", "--out", tmp_path / "x.npz", "-q")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    err = p.stderr.strip().splitlines()[-1]
    assert err.startswith("Error: decomposer 'box' is provided by both plugin 'plugone'") and "'plugtwo'" in err
    assert "-p no:plugone" in err


def test_first_party_plugins_found_through_their_entry_points(tmp_path):
    """plugins/* are installed with freqprobe and found like any third-party plugin."""
    p = run_sub(tmp_path, "plugins", "--json", first_party=True)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    got = {it["name"]: it for it in data["plugins"]}
    assert {"attacks", "smoothing", "coco"} <= set(got) and data["errors"] == []
    assert "register_adapters" in got["coco"]["hooks"]
    assert got["attacks"]["dist"].startswith("freqprobe ") and "register_attacks" in got["attacks"]["hooks"]
    p = run_sub(tmp_path, "list", "attacks", first_party=True)
    assert listed(p.stdout) == {"fgsm": "attacks", "pgd": "attacks"}
    p = run_sub(tmp_path, "list", "adapters", first_party=True)
    assert listed(p.stdout) == {"classifier": "freqprobe.builtins.models", "detector": "coco"}
