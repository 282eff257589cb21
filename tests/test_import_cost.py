"""Help stays cheap: the public base classes, the built-in plugin modules and every first-party hook module
import without torch, numpy, PIL, matplotlib, timm or torchvision (those are imported inside the methods
that use them), and building the plugin manager imports no torch.

Each check runs in a fresh interpreter with a clean environment (this process has torch already: the
conftest imports it). A spy on ``sys.meta_path`` records, for a heavy package that does get imported,
the module and line that imported it first, so a failure names the culprit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from freqprobe.plugins import DEFAULT_PLUGINS

REPO = Path(__file__).resolve().parents[1]

HEAVY = ("torch", "numpy", "PIL", "matplotlib", "timm", "torchvision")

#: the first-party plugins' hook modules (their entry points)
FIRST_PARTY_HOOKS = ("freqprobe_attacks.hooks", "freqprobe_smoothing.hooks", "freqprobe_coco.hooks", "freqprobe_train.hooks")

# Run in the child: install the spy, run the body, print {heavy package: who imported it} as JSON.
_CHILD = r'''
import json
import sys

HEAVY = {heavy!r}


class _Spy:
    """A meta-path finder that finds nothing: it only notes who first imports a heavy package."""

    def __init__(self):
        self.first = {{}}

    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in HEAVY and top not in self.first and top not in sys.modules:
            self.first[top] = self._importer()
        return None

    @staticmethod
    def _importer():
        chain, frame = [], sys._getframe(2)  # past find_spec: the import machinery, then the importer
        while frame is not None:
            code = frame.f_code
            if not code.co_filename.startswith("<frozen"):  # importlib's own frames
                mod = frame.f_globals.get("__name__", "?")
                where = f"{{mod}} ({{code.co_filename}}:{{frame.f_lineno}})"
                if not chain or mod.startswith("freqprobe"):
                    chain.append(where)
            frame = frame.f_back
        return " <- ".join(chain) or "?"


spy = _Spy()
sys.meta_path.insert(0, spy)
{body}
print(json.dumps({{h: spy.first.get(h, "?") for h in HEAVY if h in sys.modules}}))
'''


def _clean_env() -> dict[str, str]:
    """Only what an interpreter needs to start: no PYTHONPATH, no FREQPROBE_* switches, no CUDA settings."""
    return {k: os.environ[k] for k in ("PATH", "HOME", "SYSTEMROOT", "TMPDIR", "TEMP", "TMP") if k in os.environ}


def _heavy_imports(body: str, heavy: tuple[str, ...] = HEAVY) -> dict[str, str]:
    """Run ``body`` in a fresh interpreter; ``{package: who imported it first}`` for the ``heavy`` ones it left in sys.modules."""
    script = _CHILD.format(heavy=heavy, body=body)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"the import check failed to run:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _explain(found: dict[str, str]) -> str:
    return "; ".join(f"{pkg} imported by {who}" for pkg, who in found.items())


def test_plugin_modules_import_without_heavy_dependencies():
    modules = ["freqprobe", "freqprobe.plugin", "freqprobe.hookspecs", *DEFAULT_PLUGINS, *FIRST_PARTY_HOOKS]
    body = "import importlib\nfor _name in {!r}:\n    importlib.import_module(_name)".format(modules)
    found = _heavy_imports(body)
    assert not found, f"importing {', '.join(modules)} must not import {', '.join(found)}: {_explain(found)}"


def test_get_plugin_manager_imports_no_torch():
    body = "import freqprobe\nfreqprobe.get_plugin_manager(autoload=False)"
    found = _heavy_imports(body, ("torch",))
    assert not found, f"freqprobe.get_plugin_manager(autoload=False) must not import torch: {_explain(found)}"
