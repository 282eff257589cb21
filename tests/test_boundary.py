"""The plugin boundary, checked over the sources rather than by review.

- the first-party plugins import from freqprobe only what the public API exports (``freqprobe.__all__``
  and ``freqprobe.plugin.__all__``), never an underscore name, never a private attribute of a core object;
- the core names none of them (their packages, distributions, files or switches);
- no import circle among the modules of ``freqprobe/`` and ``plugins/`` (imports inside functions count);
- no function of ``freqprobe/`` is longer than 80 lines;
- every hookspec is typed, the package ships ``py.typed``, and ruff passes (configured in pyproject.toml).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import freqprobe
import freqprobe.plugin

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "freqprobe"
PLUGIN_PACKAGES = sorted(REPO.glob("plugins/freqprobe-*/freqprobe_*"))
FIRST_PARTY = ("attacks", "smoothing", "coco", "train")


def _figures():
    """``benchmarks/boundary_figures.py``: the same source reading the closing figures come from."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("boundary_figures", REPO / "benchmarks" / "boundary_figures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


FIG = _figures()
_py = FIG.py


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    return FIG.imports(path, FIG.module_name(path, REPO, PLUGIN_PACKAGES))


# ----------------------------------------------------------------------------- the public API
def test_the_public_namespaces_export_no_underscore_names_and_all_resolve():
    for ns in (freqprobe, freqprobe.plugin):
        assert ns.__all__ and not [n for n in ns.__all__ if n.startswith("_") and n != "__version__"]
        for name in ns.__all__:
            assert getattr(ns, name) is not None, f"{ns.__name__}.{name}"


def _core_private_attributes() -> set[str]:
    """``_name`` attributes the core sets on its objects (``self._norm_cache = ...``)."""
    names = set()
    for path in _py(CORE):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                names.add(node.attr)
    return names


@pytest.mark.parametrize("package", PLUGIN_PACKAGES, ids=lambda p: p.name)
def test_first_party_plugins_use_only_the_public_api(package):
    public = {"freqprobe": set(freqprobe.__all__), "freqprobe.plugin": set(freqprobe.plugin.__all__)}
    private = _core_private_attributes()
    bad = []
    for path in _py(package):
        rel = path.relative_to(REPO)
        text = path.read_text(encoding="utf-8")
        for mod, names, line in _imports(path):
            if mod != "freqprobe" and not mod.startswith("freqprobe."):
                continue
            if mod not in public:
                bad.append(f"{rel}:{line}: imports {mod}")
            elif not names and mod != "freqprobe":
                bad.append(f"{rel}:{line}: import {mod}")
            else:
                bad += [f"{rel}:{line}: {mod}.{n} is not public" for n in names if n not in public[mod]]
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "freqprobe" \
                    and node.attr not in public["freqprobe"]:
                bad.append(f"{rel}:{node.lineno}: freqprobe.{node.attr} is not public")
            if isinstance(node, ast.Attribute) and node.attr in private and not (
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                bad.append(f"{rel}:{node.lineno}: touches the core's private attribute .{node.attr}")
        for m in re.finditer(r"(import_module|__import__|getattr)\(\s*(freqprobe\b|[\"']freqprobe\b)", text):
            bad.append(f"{rel}: reaches freqprobe through {m.group(1)}()")
    assert not bad, "non-public uses of freqprobe:\n" + "\n".join(bad)


# ----------------------------------------------------------------------------- the core knows no plugin
FORBIDDEN = ["table2", "grid.csv", "curves.csv", "curves.png", "comparison.png", "takes_attacks", "corollary1", "coco-map",
             "robustness", "--attack", "kernels.csv", "smooth:", "freqprobe train",
             *(f"freqprobe-{p}" for p in FIRST_PARTY), *(f"freqprobe_{p}" for p in FIRST_PARTY)]


def test_the_core_names_no_first_party_plugin():
    bad = []
    for path in _py(CORE):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            bad += [f"{path.relative_to(REPO)}:{i}: {word}" for word in FORBIDDEN if word in line]
    assert not bad, "the core mentions a first-party plugin:\n" + "\n".join(bad)


# ----------------------------------------------------------------------------- the import graph
_cycles = FIG.sccs


def test_no_import_circle():
    graph = FIG.import_graph(REPO)
    assert "freqprobe.engine" in graph and "freqprobe_attacks.probe" in graph  # the graph covers both trees
    assert "freqprobe.interfaces" in graph["freqprobe.registry"]  # and sees imports
    assert not _cycles(graph), f"import circles: {_cycles(graph)}"


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# ----------------------------------------------------------------------------- size, types, lint
def test_no_function_of_the_core_is_over_80_lines():
    long = []
    for path in _py(CORE):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_every_hookspec_is_typed():
    import inspect

    from freqprobe import hookspecs

    specs = [f for name, f in vars(hookspecs).items() if callable(f) and hasattr(f, "freqprobe_spec")]
    assert len(specs) >= 13
    for f in specs:
        sig = inspect.signature(f)
        assert sig.return_annotation is not inspect.Signature.empty, f.__name__
        assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()), f.__name__


def test_the_package_is_typed():
    assert (CORE / "py.typed").is_file()
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "py.typed" in cfg["tool"]["setuptools"]["package-data"]["freqprobe"]


def test_ruff_passes():
    pytest.importorskip("ruff", reason="ruff is in the test extra: pip install -e '.[test]'")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
