"""A CLI that answers at once: ``freqprobe --help``, ``--version``, every command's ``--help`` and ``freqprobe plugins``
import no torch (nor numpy, timm, torchvision, PIL, matplotlib), with every installed plugin loaded.

Each invocation runs as ``python -m freqprobe ARGS`` (through :func:`runpy.run_module`, what ``-m`` does) in a fresh
interpreter with a clean environment: no ``FREQPROBE_*`` switches, so every installed entry-point plugin loads (the
first-party ones, and the example ``filters`` plugin where it is installed). A spy on ``sys.meta_path`` notes, for a heavy
package that does get imported, the modules and lines that imported it first, so a failure names the culprit.

The help lists still come from the plugin registry: ``run --help`` names the plugins' probes, data sets, model sources,
transforms and attacks, and they are gone when their plugin is switched off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: must not be imported by help and listing commands (torch above all)
HEAVY = ("torch", "numpy", "PIL", "matplotlib", "timm", "torchvision", "pycocotools", "faster_coco_eval", "safetensors")

MARK = "@@freqprobe-import-audit@@"

# The child: a spy on the import system, then ``python -m freqprobe ARGS`` (or, with --list-commands, the names of the
# commands of the CLI that ``freqprobe`` builds); the last line of stdout is the audit as JSON.
_CHILD = r'''
import json
import runpy
import sys

HEAVY = set(sys.argv[1].split(","))
MARK = sys.argv[2]
PRELUDE = sys.argv[3]
ARGS = sys.argv[4:]


class _Spy:
    """A meta-path finder that finds nothing: it notes who first imports a heavy package."""

    def __init__(self):
        self.first = {}

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in HEAVY and top not in self.first and top not in sys.modules:
            chain, frame = [], sys._getframe(1)
            while frame is not None:
                code = frame.f_code
                if not code.co_filename.startswith("<frozen"):  # importlib's own frames
                    mod = frame.f_globals.get("__name__", "?")
                    if not chain or not mod.startswith(("runpy", "__main__")):
                        chain.append(f"{mod} ({code.co_filename}:{frame.f_lineno})")
                frame = frame.f_back
            self.first[top] = " <- ".join(chain[:8]) or "?"
        return None


spy = _Spy()
sys.meta_path.insert(0, spy)
exec(PRELUDE)  # the harness's own check: code that imports a heavy package, as a plugin module would
code, extra = 0, None
if ARGS[:1] == ["--list-commands"]:
    from freqprobe.cli import build_cli

    extra = sorted(build_cli().commands)
else:
    sys.argv = ["freqprobe", *ARGS]
    try:
        runpy.run_module("freqprobe", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
sys.stdout.flush()
heavy = {h: spy.first.get(h, "?") for h in sorted(HEAVY) if h in sys.modules}
print("\n" + MARK + json.dumps({"code": code, "heavy": heavy, "extra": extra}))
'''


def _clean_env(**extra: str) -> dict[str, str]:
    """What an interpreter needs to start, nothing else: no FREQPROBE_* switches (every installed plugin loads)."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "SYSTEMROOT", "TMPDIR", "TEMP", "TMP", "LANG", "LC_ALL") if k in os.environ}
    env["COLUMNS"] = "200"  # help texts wrapped wide: names are not split across lines
    env.update(extra)
    return env


def audited(args: list[str], *, heavy: tuple[str, ...] = HEAVY, prelude: str = "", **env: str) -> tuple[dict, str, str]:
    """Run ``python -m freqprobe ARGS`` audited in a fresh interpreter: (audit, stdout without the audit, stderr).

    ``prelude`` is Python run once the spy is in place, before freqprobe (the harness's own check that it can fail).
    """
    proc = subprocess.run([sys.executable, "-c", _CHILD, ",".join(heavy), MARK, prelude, *args], cwd=REPO,
                          env=_clean_env(**env), capture_output=True, text=True, timeout=300)
    out, sep, tail = proc.stdout.rpartition(MARK)
    assert sep and proc.returncode == 0, f"the audited run of {args} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(tail.strip()), out, proc.stderr


def _explain(heavy: dict[str, str]) -> str:
    return "; ".join(f"{pkg} imported by {who}" for pkg, who in heavy.items())


# ----------------------------------------------------------------------------- no torch
@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--version"], ["run", "--help"], ["plugins"], ["plugins", "--all"],
                                  ["plugins", "--json"], ["list"]], ids=" ".join)
def test_help_version_and_plugins_import_no_torch(args):
    audit, out, err = audited(args)
    assert audit["code"] == 0, f"freqprobe {' '.join(args)} exited {audit['code']}:\n{err[-2000:]}"
    assert out.strip(), f"freqprobe {' '.join(args)} printed nothing"
    assert not audit["heavy"], f"freqprobe {' '.join(args)} must not import {', '.join(audit['heavy'])}: {_explain(audit['heavy'])}"


def test_every_commands_help_imports_no_torch():
    """Every command of the CLI, the plugins' (table2, kernels, train...) included: ``freqprobe COMMAND --help``."""
    audit, _, _ = audited(["--list-commands"])
    commands = audit["extra"]
    assert not audit["heavy"], f"building the CLI must not import {', '.join(audit['heavy'])}: {_explain(audit['heavy'])}"
    assert {"run", "decompose", "list", "plugins", "report"} <= set(commands)
    bad = []
    for command in commands:
        got, out, err = audited([command, "--help"])
        if got["code"] != 0 or f"freqprobe {command}" not in out:
            bad.append(f"freqprobe {command} --help exited {got['code']}: {err.strip()[-500:]}")
        elif got["heavy"]:
            bad.append(f"freqprobe {command} --help imports {', '.join(got['heavy'])}: {_explain(got['heavy'])}")
    assert not bad, "\n".join(bad)


def test_the_first_party_plugins_commands_are_checked():
    """The first-party plugins are installed with freqprobe: their commands are among those checked above."""
    audit, _, _ = audited(["--list-commands"])
    assert {"table2", "kernels", "train"} <= set(audit["extra"])


def test_the_audit_finds_torch():
    """The check can fail: a module that imports torch at import time (as a heavy plugin's would) is caught, and named."""
    prelude = ("import types\nmod = types.ModuleType('heavy_plugin')\n"
               "exec(compile('import torch', 'heavy_plugin.py', 'exec'), mod.__dict__)\n")
    audit, out, _ = audited(["--version"], prelude=prelude)
    assert audit["code"] == 0 and out.strip()
    assert "torch" in audit["heavy"] and "heavy_plugin" in audit["heavy"]["torch"], audit


# ----------------------------------------------------------------------------- the lists still come from the registry
def _run_help(**env: str) -> str:
    """``run --help`` with all white space removed (click wraps help texts at 78 columns, also after a hyphen)."""
    audit, out, err = audited(["run", "--help"], **env)
    assert audit["code"] == 0, err
    assert not audit["heavy"], _explain(audit["heavy"])
    return "".join(out.split())


def _listed(name: str, text: str) -> bool:
    return "".join(name.split()) in text


def test_run_help_lists_what_the_plugins_register():
    text = _run_help()
    # built-ins
    for name in ("fft-radial", "lfc-hfc", "timm:NAME", "npz:PATH", "minmax", "accuracy"):
        assert _listed(name, text), f"{name} missing from run --help"
    # the first-party plugins': a probe and attacks (attacks), a data set, model source and probe (coco),
    # a transform (smoothing), a model source (train)
    for name in ("robustness", "fgsm, pgd", "coco:IMAGES:ANN.json", "detectron2:CONFIG", "coco-map", "smooth", "paper:NAME",
                 "--attack", "--coco-lenient"):
        assert _listed(name, text), f"{name} (from a plugin) missing from run --help"


def test_run_help_lists_follow_the_plugins_switched_on():
    """Switching a plugin off removes its names from the lists: they are read from the registry, not written down."""
    text = _run_help(FREQPROBE_DISABLE_PLUGINS="attacks,coco")
    for name in ("robustness", "fgsm", "coco:IMAGES:ANN.json", "coco-map", "--attack", "--coco-lenient"):
        assert not _listed(name, text), f"{name} listed in run --help with its plugin switched off"
    assert _listed("smooth", text) and _listed("paper:NAME", text)


def test_the_example_plugin_listed_without_torch():
    """The example third-party plugin (examples/freqprobe-filters), where it is installed: its decomposers are listed."""
    pytest.importorskip("freqprobe_filters")
    import importlib.metadata

    if not any(ep.name == "filters" for ep in importlib.metadata.entry_points(group="freqprobe")):
        pytest.skip("freqprobe-filters is importable but not installed (no entry point)")
    text = _run_help()
    assert _listed("gaussian", text) and _listed("butterworth", text)
