"""Plugin manager factory. Built-ins and third-party plugins go through the same hooks.

Environment controls:

* ``FREQPROBE_DISABLE_PLUGIN_AUTOLOAD=1`` — load no third-party (entry-point) plugins;
* ``FREQPROBE_LOAD_PLUGINS=a,b`` — load only these entry-point plugins (empty: none);
* ``FREQPROBE_TRACE_PLUGINS=1`` — log every hook call (pluggy tracing) at DEBUG level.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import logging
import os
from typing import Any

import pluggy

from . import hookspecs

log = logging.getLogger("freqprobe.plugins")

ENTRY_POINT_GROUP = "freqprobe"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "freqprobe.builtins.decomposers",
    "freqprobe.builtins.rescale",
    "freqprobe.builtins.metrics",
    "freqprobe.builtins.models",
    "freqprobe.builtins.datasets",
    "freqprobe.builtins.probes",
    "freqprobe.builtins.report",
)


@dataclasses.dataclass
class LoadError:
    """A plugin that could not be loaded; shown by ``freqprobe plugins`` and warned about once."""

    name: str
    dist: str
    error: str

    def message(self) -> str:
        return f'Error importing plugin "{self.name}" ({self.dist}): {self.error}'


class FreqprobePluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers load errors and entry-point distributions."""

    def __init__(self) -> None:
        super().__init__("freqprobe")
        self.load_errors: list[LoadError] = []
        self.dists: dict[str, str] = {}  # plugin name -> "dist version"

    def register(self, plugin, name=None):
        self._freqprobe_registry_cache = {}
        return super().register(plugin, name)

    def unregister(self, plugin=None, name=None):
        self._freqprobe_registry_cache = {}
        return super().unregister(plugin, name)


def _autoload_disabled() -> bool:
    return os.environ.get("FREQPROBE_DISABLE_PLUGIN_AUTOLOAD", "").strip().lower() in {"1", "true", "yes", "on"}


def get_plugin_manager(autoload: bool | None = None) -> FreqprobePluginManager:
    """A fresh plugin manager with the built-ins and (unless disabled) entry-point plugins loaded.

    No module-level state is touched, so tests can build as many as they like.
    """
    pm = FreqprobePluginManager()
    pm.add_hookspecs(hookspecs)
    for modname in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(modname), modname)
    if autoload is None:
        autoload = not _autoload_disabled()
    if autoload:
        load_entry_points(pm)
    if os.environ.get("FREQPROBE_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: log.debug(msg.rstrip()))
        pm.enable_tracing()
    pm.check_pending()
    return pm


def load_entry_points(pm: FreqprobePluginManager) -> None:
    """Load ``freqprobe`` entry points; a failing plugin is recorded, never fatal."""
    only = os.environ.get("FREQPROBE_LOAD_PLUGINS")
    wanted = None if only is None else {s.strip() for s in only.split(",") if s.strip()}
    seen: set[str] = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in seen or (wanted is not None and ep.name not in wanted):
            continue
        seen.add(ep.name)
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "unknown distribution"
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except Exception as exc:  # a broken plugin must not take the tool down
            err = LoadError(ep.name, dist, f"{type(exc).__name__}: {exc}".splitlines()[0])
            pm.load_errors.append(err)
            log.warning(err.message())
            continue
        pm.dists[ep.name] = dist


def list_plugins(pm: FreqprobePluginManager, *, include_builtins: bool = False) -> list[dict[str, Any]]:
    """One dict per plugin: name, dist (or ``built-in``), hooks; sorted by name."""
    out = []
    for name, plugin in pm.list_name_plugin():
        builtin = name in DEFAULT_PLUGINS
        if builtin and not include_builtins:
            continue
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        out.append({"name": name, "dist": "built-in" if builtin else pm.dists.get(name, "registered at runtime"), "hooks": hooks})
    return sorted(out, key=lambda d: d["name"])


_default: FreqprobePluginManager | None = None


def default_plugin_manager() -> FreqprobePluginManager:
    """The process-wide manager used when no ``pm`` is passed (built on first use)."""
    global _default
    if _default is None:
        _default = get_plugin_manager()
    return _default
