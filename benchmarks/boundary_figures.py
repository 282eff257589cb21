"""The plugin boundary in numbers, for a source tree (the closing note of the plugin-boundary issue).

    python benchmarks/boundary_figures.py [ROOT]      # default: this checkout

Prints: the largest function of ``freqprobe/`` (lines), the import circles among the modules of
``freqprobe/`` and ``plugins/`` (imports inside functions counted, ``if TYPE_CHECKING:`` not), and
the names the first-party plugins import from freqprobe outside its public API (``freqprobe.__all__``
and, where it exists, ``freqprobe.plugin.__all__``), read from the tree's own sources.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def py(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path, repo: Path, pkgs: list[Path]) -> str:
    base = next((pkg.parent for pkg in pkgs if path.is_relative_to(pkg)), repo)
    parts = list(path.relative_to(base).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, me: str) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` of every import that runs (inside functions too; not under ``if TYPE_CHECKING:``),
    relative ones resolved against ``me``, the importing module's name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for s in node.body for n in ast.walk(s)}
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                mod = ".".join([*base, mod] if mod else base)
            out.append((mod, [a.name for a in node.names], node.lineno))
    return out


def import_graph(repo: Path) -> dict[str, set[str]]:
    """Module -> the modules of ``freqprobe/`` and ``plugins/`` it imports (inside functions too)."""
    pkgs = sorted(repo.glob("plugins/freqprobe-*/freqprobe_*"))
    paths = py(repo / "freqprobe") + [p for pkg in pkgs for p in py(pkg)]
    mods = {module_name(p, repo, pkgs): p for p in paths}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for target, names, _ in imports(p, m):
            for cand in [f"{target}.{n}" for n in names] + [target]:
                if cand in mods and cand != m:
                    graph[m].add(cand)
                    break
    return graph


def sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan): the import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def public_names(repo: Path, module: str) -> set[str]:
    path = repo / "freqprobe" / ("__init__.py" if module == "freqprobe" else "plugin.py")
    if not path.is_file():
        return set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            try:
                return set(ast.literal_eval(node.value))
            except ValueError:  # __all__ = sorted(_NAMES)
                names = next(n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                             if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "_NAMES" for t in n.targets))
                return set(ast.literal_eval(names.value))
    return set()


def main(repo: Path) -> None:
    core = repo / "freqprobe"
    pkgs = sorted(repo.glob("plugins/freqprobe-*/freqprobe_*"))
    longest = max(((n.end_lineno - n.lineno + 1, f"{p.relative_to(repo)}:{n.lineno} {n.name}") for p in py(core)
                   for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))))
    print(f"largest function in freqprobe/: {longest[0]} lines ({longest[1]})")
    circles = sccs(import_graph(repo))
    print(f"import circles: {len(circles)}" + "".join(f"\n  {' <-> '.join(c)}" for c in circles))
    public = {"freqprobe": public_names(repo, "freqprobe"), "freqprobe.plugin": public_names(repo, "freqprobe.plugin")}
    bad: set[tuple[str, str]] = set()
    for pkg in pkgs:
        for p in py(pkg):
            for mod, names, _ in imports(p, module_name(p, repo, pkgs)):
                if mod != "freqprobe" and not mod.startswith("freqprobe."):
                    continue
                if mod == "freqprobe" and not names:  # ``import freqprobe``: its attributes are the public API
                    continue
                for n in names or ["*"]:
                    if mod not in public or n not in public[mod]:
                        bad.add((mod, n))
    subs = sorted({m for m, _ in bad})
    print(f"non-public names imported by the first-party plugins: {len(bad)} from {len(subs)} module(s)"
          + (f" ({', '.join(subs)})" if subs else ""))


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
