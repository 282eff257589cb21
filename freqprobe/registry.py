"""Name -> class registries collected from the plugin hooks, with provenance."""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import re
from typing import Mapping

from . import interfaces as I
from .errors import PluginError, UnknownNameError

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
        Kind("probes", "register_probes", I.Probe, "probe"),
        Kind("models", "register_model_sources", I.ModelSource, "model source"),
        Kind("datasets", "register_datasets", I.DataSource, "dataset"),
        Kind("rescale", "register_rescale_policies", I.RescalePolicy, "rescale policy"),
        Kind("metrics", "register_metrics", I.Metric, "metric"),
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


def _pm(pm):
    if pm is None:
        from .plugins import default_plugin_manager

        pm = default_plugin_manager()
    return pm


def collect(kind: str, pm=None) -> dict[str, Entry]:
    """Call each plugin's hook for ``kind`` separately, so every name knows its provider."""
    pm = _pm(pm)
    k = KINDS[kind]
    cache = getattr(pm, "_freqprobe_registry_cache", None)
    if cache is None:
        cache = pm._freqprobe_registry_cache = {}
    if kind in cache:
        return cache[kind]
    entries: dict[str, Entry] = {}
    for impl in reversed(getattr(pm.hook, k.hook).get_hookimpls()):
        plugin = pm.get_name(impl.plugin) or repr(impl.plugin)
        dist = getattr(pm, "dists", {}).get(plugin, "built-in" if plugin.startswith("freqprobe.") else "runtime")
        try:
            got = impl.function()
        except Exception as exc:
            raise PluginError(f"plugin {plugin!r} failed in {k.hook}(): {type(exc).__name__}: {exc}") from exc
        if got is None:
            continue
        for cls in got if isinstance(got, (list, tuple)) else [got]:
            name = getattr(cls, "name", None)
            if not (inspect.isclass(cls) and issubclass(cls, k.base)):
                raise PluginError(f"plugin {plugin!r} registered {cls!r} as a {k.label}, but it is not a subclass of {k.base.__name__}")
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise PluginError(
                    f"plugin {plugin!r}: {k.label} class {cls.__qualname__} has name {name!r}; names must match {NAME_RE.pattern}"
                )
            if name in entries:
                prev = entries[name]
                raise PluginError(
                    f"duplicate {k.label} name '{name}': {cls.__module__}.{cls.__qualname__} from plugin {plugin!r} "
                    f"and {prev.cls.__module__}.{prev.cls.__qualname__} from plugin {prev.plugin!r}"
                )
            problem = _class_problem(kind, cls)
            if problem:
                raise PluginError(f"plugin {plugin!r}: {k.label} '{name}' ({cls.__module__}.{cls.__qualname__}) {problem}")
            entries[name] = Entry(name, cls, plugin, dist)
    cache[kind] = entries
    return entries


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
        raise UnknownNameError(KINDS[kind].label, name, entries)
    return entries[name]


def get_class(kind: str, name: str, pm=None) -> type:
    return get_entry(kind, name, pm).cls


def list_entries(kind: str, pattern: str = "*", pm=None) -> list[Entry]:
    """Entries whose name matches ``pattern``: a glob (``fft-*``), or a substring when it has no wildcard (``tim``)."""
    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    return [e for n, e in sorted(collect(kind, pm).items()) if fnmatch.fnmatch(n, pattern)]
