"""Name -> class registries collected from the plugin hooks, with provenance."""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import re
from typing import Mapping

from . import evaluators as E
from . import interfaces as I
from . import probing as P
from .errors import PluginError, UnknownNameError
from .manager import PROVIDER_ATTR, LoadError, Provider, contained, disable_hint, failure_line, is_builtin, warn_once
from .manager import provider_of  # noqa: F401  (where it was: freqprobe.registry.provider_of)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclasses.dataclass(frozen=True)
class Kind:
    key: str  # plural used on the CLI: decomposers, probes, ...
    hook: str
    base: type
    label: str  # singular used in messages


KINDS: dict[str, Kind] = {
    k.key: k
    for k in [
        Kind("decomposers", "register_decomposers", I.Decomposer, "decomposer"),
        Kind("probes", "register_probes", P.Probe, "probe"),
        Kind("models", "register_model_sources", I.ModelSource, "model source"),
        Kind("adapters", "register_adapters", I.ModelAdapter, "model adapter"),
        Kind("datasets", "register_datasets", I.DataSource, "dataset"),
        Kind("rescale", "register_rescale_policies", I.RescalePolicy, "rescale policy"),
        Kind("metrics", "register_metrics", E.Metric, "metric"),
        Kind("attacks", "register_attacks", I.Attack, "attack"),
        Kind("transforms", "register_transforms", I.Transform, "transform"),
    ]
}


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    cls: type
    plugin: str
    dist: str

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.cls)
        return doc.strip().splitlines()[0].replace("``", "") if doc else "Undocumented"


class Entries(dict):
    """``name -> Entry`` for one kind, plus what was refused.

    ``unavailable`` maps a name that was registered but refused (a bad class, or a name two
    third-party plugins both claim) to the reason; ``errors`` are the recorded problems
    (:class:`freqprobe.plugins.LoadError`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.unavailable: dict[str, str] = {}
        self.errors: list = []
        self.refused: dict[str, list[Entry]] = {}


def _pm(pm):
    if pm is None:  # the process-wide default lives one layer up: freqprobe.plugins.collect / get_class / list_entries
        raise TypeError("freqprobe.registry needs a plugin manager; use freqprobe.collect / get_class / list_entries, "
                        "which default to the process-wide one")
    return pm


def _qual(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}" if inspect.isclass(cls) else repr(cls)


def collect(kind: str, pm=None) -> Entries:
    """Call each plugin's hook for ``kind`` separately, so every name knows its provider.

    A bad class (no or a bad ``name``, the wrong base class, missing declarations) is skipped and
    recorded; so is a plugin whose hook raises. A name a built-in has is kept for the built-in; a
    name two third-party plugins claim is refused for both. Nothing here raises for a plugin's
    mistake: the problems are in the result's ``errors`` (and ``pm.load_errors``), warned once.
    """
    pm = _pm(pm)
    k = KINDS[kind]
    cache = getattr(pm, "_freqprobe_registry_cache", None)
    if cache is None:
        cache = pm._freqprobe_registry_cache = {}
    if kind in cache:
        return cache[kind]
    entries = Entries()
    dists = getattr(pm, "dists", {})

    def problem(plugin: str, dist: str, text: str, stage: str = k.hook) -> None:
        err = LoadError(plugin, dist, text, stage)
        if err not in entries.errors:
            entries.errors.append(err)
            warn_once(pm, err)

    impls = list(reversed(getattr(pm.hook, k.hook).get_hookimpls()))
    impls.sort(key=lambda impl: not is_builtin(pm.get_name(impl.plugin)))  # built-ins first (stable)
    for impl in impls:
        plugin = pm.get_name(impl.plugin) or repr(impl.plugin)
        builtin = is_builtin(plugin)
        dist = "built-in" if builtin else dists.get(plugin, "registered at runtime")
        with contained() as call:  # a hook that raises, or calls sys.exit, loses its classes, not the tool
            got = impl.function()
        if call.error is not None:
            problem(plugin, dist, f"{k.hook}() raised {failure_line(call.error)}; its {k.key} are skipped")
            continue
        if got is None:
            continue
        for cls in got if isinstance(got, (list, tuple)) else [got]:
            name = getattr(cls, "name", None)
            why = _problem(kind, k, cls)
            good_name = isinstance(name, str) and bool(NAME_RE.match(name))
            if why:
                if builtin:
                    raise PluginError(f"freqprobe bug: built-in {k.label} {_qual(cls)} {why}")
                problem(plugin, dist, f"{why}; the class is skipped")
                if good_name and name not in entries:
                    entries.unavailable.setdefault(
                        name, f"{k.label} '{name}' from plugin {plugin!r} ({dist}) is unavailable: {why}")
                continue
            entry = Entry(name, cls, plugin, dist)
            if name in entries.refused:
                entries.refused[name].append(entry)
                _refuse(entries, k, name, problem)
                continue
            if name in entries:
                prev = entries[name]
                if prev.cls is cls:
                    continue
                if is_builtin(prev.plugin) and builtin:
                    raise PluginError(f"freqprobe bug: two built-in {k.label}s named '{name}': {_qual(prev.cls)} and {_qual(cls)}")
                if is_builtin(prev.plugin):
                    problem(plugin, dist, f"{k.label} name '{name}' of {_qual(cls)} is already taken by built-in "
                                          f"{_qual(prev.cls)} ({prev.plugin}); the built-in is kept and this class is skipped")
                    continue
                del entries[name]
                entries.refused[name] = [prev, entry]
                _refuse(entries, k, name, problem)
                continue
            entries.unavailable.pop(name, None)
            try:
                setattr(cls, PROVIDER_ATTR, Provider(plugin, dist, k.label, name))
            except (AttributeError, TypeError):  # pragma: no cover - a class that refuses attributes
                pass
            entries[name] = entry
    cache[kind] = entries
    return entries


def _refuse(entries: Entries, k: Kind, name: str, problem) -> None:
    claims = sorted(entries.refused[name], key=lambda e: e.plugin)
    who = " and ".join(f"plugin {e.plugin!r} ({e.dist}: {_qual(e.cls)})" for e in claims)
    entries.unavailable[name] = (
        f"{k.label} '{name}' is provided by both {who}, so neither is used; "
        f"switch one off with {disable_hint(claims[0].plugin)} (or {claims[-1].plugin})")
    last = entries.refused[name][-1]
    problem(last.plugin, last.dist, f"duplicate {k.label} name '{name}': {who} both claim it; "
                                    f"the name is refused for both")


def _problem(kind: str, k: Kind, cls) -> str | None:
    """Why a registered object cannot be used as a ``kind`` class, or None."""
    name = getattr(cls, "name", None)
    if not inspect.isclass(cls):
        return (f"registered {cls!r} as a {k.label}, which is not a class; return the class "
                f"(a subclass of {k.base.__name__}), not an instance")
    if not issubclass(cls, k.base):
        return f"registered {_qual(cls)} as a {k.label}, but it is not a subclass of {k.base.__name__}"
    if name is None:
        return f"{k.label} class {_qual(cls)} has no name; set name = \"my-{k.label.replace(' ', '-')}\" on the class"
    if not isinstance(name, str) or not NAME_RE.match(name):
        return f"{k.label} class {_qual(cls)} has name {name!r}; names must match {NAME_RE.pattern}"
    extra = _class_problem(kind, cls)
    return f"{k.label} '{name}' ({_qual(cls)}) {extra}" if extra else None


def check_all(pm=None) -> list:
    """Collect every kind (cached); the problems found, in order."""
    pm = _pm(pm)
    out: list = []
    for kind in KINDS:
        for err in collect(kind, pm).errors:
            if err not in out:
                out.append(err)
    return out


def _class_problem(kind: str, cls: type) -> str | None:
    """What is wrong with a registered class beyond its name and base, or None."""
    if kind == "decomposers":
        params = getattr(cls, "default_params", ())
        if not isinstance(params, (tuple, list)) or len(params) == 0:
            return ("declares no default_params, so a run without --radii/--params would evaluate no parameter; "
                    "set default_params = (...) to the values used when the user gives none")
        comps = getattr(cls, "components", ())
        if not isinstance(comps, (tuple, list)) or len(comps) < 1 or not all(isinstance(c, str) and c for c in comps):
            return "declares no components; set components = ('low', 'high') or the names of its parts"
    if kind == "probes" and not isinstance(getattr(cls, "options", {}), Mapping):
        return "declares options that are not a dict of defaults"
    return None


def invalidate(pm) -> None:
    """Forget cached registries (call after registering a plugin at runtime)."""
    if hasattr(pm, "_freqprobe_registry_cache"):
        pm._freqprobe_registry_cache = {}


def get_entry(kind: str, name: str, pm=None) -> Entry:
    entries = collect(kind, pm)
    if name not in entries:
        if name in entries.unavailable:
            raise PluginError(entries.unavailable[name])
        raise UnknownNameError(KINDS[kind].label, name, entries)
    return entries[name]


def get_class(kind: str, name: str, pm=None) -> type:
    return get_entry(kind, name, pm).cls


def list_entries(kind: str, pattern: str = "*", pm=None) -> list[Entry]:
    """Entries whose name matches ``pattern``: a glob (``fft-*``), or a substring when it has no wildcard (``tim``)."""
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    return [e for n, e in sorted(collect(kind, pm).items()) if fnmatch.fnmatch(n, pattern)]


# ---------------------------------------------------------------- provenance: who provided what a run used
def distribution(pm, plugin: str | None) -> str:
    """The distribution (``name version``) that provided the plugin ``plugin``.

    A built-in: ``freqprobe VERSION``; an entry-point plugin: the distribution of its entry point;
    a plugin registered with ``pm.register`` at run time: ``registered at runtime``.
    """
    if is_builtin(plugin):
        from .version import __version__

        return f"freqprobe {__version__}"
    return getattr(pm, "dists", {}).get(plugin or "") or "registered at runtime"


def provenance(pm, kind: str, obj=None, name: str | None = None) -> dict:
    """Where the ``kind`` class of ``obj`` (an instance or a class; else the class registered as ``name``) came from.

    ``{"kind": "decomposer", "name": "fft-radial", "class": "module.Class", "plugin": ..., "distribution": ...}``.
    The registered class is found by identity, else by ``name`` (``obj``'s class may subclass it);
    an object that is no registered class (a module or data source passed in from Python) has
    ``plugin`` and ``distribution`` null.
    """
    entries = collect(kind, _pm(pm))
    cls = None if obj is None else (obj if inspect.isclass(obj) else type(obj))
    entry = next((e for e in entries.values() if e.cls is cls), None) if cls is not None else None
    if entry is None and isinstance(name, str) and name in entries:
        if cls is None or (inspect.isclass(entries[name].cls) and issubclass(cls, entries[name].cls)):
            entry = entries[name]
    if entry is not None:
        name = entry.name
    elif name is None:
        name = getattr(cls, "name", None)
    shown = cls if cls is not None else (entry.cls if entry is not None else None)
    return {"kind": KINDS[kind].label, "name": name if isinstance(name, str) else None,
            "class": _qual(shown) if shown is not None else None,
            "plugin": entry.plugin if entry is not None else None,
            "distribution": distribution(pm, entry.plugin) if entry is not None else None}
