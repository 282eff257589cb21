"""Plugin manager factory. Built-ins and third-party plugins go through the same hooks.

A bad plugin never takes the tool down: a plugin that fails to import, implements a hook that
does not exist, registers a bad class or a name someone else took is skipped (only the bad part
of it), recorded in ``pm.load_errors`` (shown by ``freqprobe plugins``) and warned about once
(:class:`freqprobe.errors.PluginWarning`).

Environment controls:

* ``FREQPROBE_DISABLE_PLUGIN_AUTOLOAD=1`` — load no third-party (entry-point) plugins;
* ``FREQPROBE_LOAD_PLUGINS=a,b`` — load only these entry-point plugins (empty: none);
* ``FREQPROBE_DISABLE_PLUGINS=a,b`` — never load these plugins (also ``freqprobe -p no:NAME``);
* ``FREQPROBE_TRACE_PLUGINS=1`` — log every hook call (pluggy tracing) at DEBUG level.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import types
import warnings
from typing import Any, Iterable

import pluggy

from . import hookspecs, registry
from .errors import FreqprobeError, PluginError, PluginWarning, UserFacingError
from .options import CORE_DECOMPOSE_OPTIONS, CORE_RUN_OPTIONS, Option, OptionParser, OptionSet
from .manager import (DEFAULT_PLUGINS, DISABLE_ENV, ENTRY_POINT_GROUP, LoadError, contained, disable_hint, failure_line,
                      is_builtin, unknown_hooks, validate_hooks, warn_once, validation_message)

log = logging.getLogger("freqprobe.plugins")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class FreqprobePluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers load errors, entry-point distributions and disabled plugins.

    After :func:`get_plugin_manager` has loaded everything, every :meth:`register` is validated at
    once: a plugin implementing a hook that does not exist is refused (unregistered and recorded),
    not left for :meth:`check_pending` to fail on.
    """

    def __init__(self) -> None:
        super().__init__("freqprobe")
        self._errors: list[LoadError] = []
        self._warned: set[str] = set()
        self.dists: dict[str, str] = {}  # plugin name -> "dist version"
        self.disabled: set[str] = set()
        self._validate_on_register = False

    # -- errors ---------------------------------------------------------------------------------
    @property
    def load_errors(self) -> list[LoadError]:
        """Every recorded problem: failed imports and registrations, and skipped classes of every kind."""
        out = list(self._errors)
        for err in registry.check_all(self):
            if err not in out:
                out.append(err)
        return out

    def record_error(self, err: LoadError) -> None:
        """Remember a load problem and warn about it (once)."""
        if err not in self._errors:
            self._errors.append(err)
        warn_once(self, err)

    def dist_of(self, name: str | None) -> str:
        if is_builtin(name):
            return "built-in"
        return self.dists.get(name or "", "registered at runtime")

    # -- registration ---------------------------------------------------------------------------
    def register(self, plugin, name=None):
        self._freqprobe_registry_cache = {}
        self._freqprobe_options_cache = None
        try:
            got = super().register(plugin, name)
        except pluggy.PluginValidationError as exc:
            pname = name or self.get_canonical_name(plugin)
            if self.get_plugin(pname) is not None:
                super().unregister(name=pname)
            self.record_error(LoadError(pname, self.dist_of(pname), validation_message(exc) + "; the plugin is skipped", "hooks"))
            return None
        if got is not None and self._validate_on_register and not is_builtin(got):
            if not validate_hooks(self, got):
                return None
        return got

    def unregister(self, plugin=None, name=None):
        self._freqprobe_registry_cache = {}
        self._freqprobe_options_cache = None
        return super().unregister(plugin, name)

    def disable(self, name: str) -> None:
        """Switch the plugin ``name`` off in this manager (unregister and block it; built-ins refuse)."""
        if is_builtin(name):
            raise UserFacingError(f"the built-in plugin {name!r} cannot be switched off")
        self.disabled.add(name)
        if self.get_plugin(name) is not None:
            self.unregister(name=name)
        if not self.is_blocked(name):
            self.set_blocked(name)
        self._errors = [e for e in self._errors if e.name != name]
        self._freqprobe_registry_cache = {}
        self._freqprobe_options_cache = None


def _autoload_disabled() -> bool:
    return os.environ.get("FREQPROBE_DISABLE_PLUGIN_AUTOLOAD", "").strip().lower() in {"1", "true", "yes", "on"}


def _names(text: str | None) -> set[str]:
    return {s.strip() for s in (text or "").split(",") if s.strip()}


def disabled_names(extra: Iterable[str] = ()) -> set[str]:
    """Plugins switched off by ``FREQPROBE_DISABLE_PLUGINS`` and ``extra`` (``-p no:NAME``); built-ins refuse."""
    names = _names(os.environ.get(DISABLE_ENV)) | {n for n in extra if n}
    builtin = sorted(n for n in names if is_builtin(n))
    if builtin:
        raise UserFacingError(f"the built-in plugin {builtin[0]!r} cannot be switched off ({DISABLE_ENV} / -p no:NAME)")
    return names


def get_plugin_manager(autoload: bool | None = None, *, disable: Iterable[str] = ()) -> FreqprobePluginManager:
    """A fresh plugin manager with the built-ins and (unless disabled) entry-point plugins loaded.

    ``disable`` names plugins not to load, on top of ``FREQPROBE_DISABLE_PLUGINS``. No
    module-level state is touched, so tests can build as many as they like.
    """
    pm = FreqprobePluginManager()
    pm.add_hookspecs(hookspecs)
    pm.disabled = disabled_names(disable)
    for name in pm.disabled:
        pm.set_blocked(name)
    for modname in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(modname), modname)
    if autoload is None:
        autoload = not _autoload_disabled()
    if autoload:
        load_entry_points(pm)
    check_pending(pm)
    pm._validate_on_register = True
    if os.environ.get("FREQPROBE_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: log.debug(msg.rstrip()))
        pm.enable_tracing()
    registry.check_all(pm)  # bad classes are reported now, once, not when a command first needs them
    return pm


def check_pending(pm) -> None:
    """pluggy's ``check_pending`` without the crash: a plugin with an unknown hook is refused, the rest keeps working."""
    for name, plugin in list(pm.list_name_plugin()):
        if plugin is not None and not is_builtin(name) and unknown_hooks(pm, plugin):
            validate_hooks(pm, name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:  # a built-in's mistake: a bug in freqprobe, but say so in one line
        log.error("freqprobe bug: %s", validation_message(exc))


def load_entry_points(pm: FreqprobePluginManager) -> None:
    """Load ``freqprobe`` entry points; a failing plugin is recorded and warned about, never fatal."""
    only = os.environ.get("FREQPROBE_LOAD_PLUGINS")
    wanted = None if only is None else _names(only)
    seen: set[str] = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in seen or (wanted is not None and ep.name not in wanted):
            continue
        seen.add(ep.name)
        if ep.name in pm.disabled or pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "unknown distribution"
        pm.dists[ep.name] = dist
        with contained() as load:  # anything, sys.exit and a self-raised KeyboardInterrupt too; not a real Ctrl-C
            plugin = ep.load()
        if load.error is not None:  # a broken plugin must not take the tool down
            del pm.dists[ep.name]
            pm.record_error(LoadError(ep.name, dist, failure_line(load.error)))
            continue
        with contained() as reg:
            if pm.register(plugin, name=ep.name) is None:
                del pm.dists[ep.name]
        if reg.error is not None:  # e.g. the same module under two entry-point names
            pm.dists.pop(ep.name, None)
            if pm.get_plugin(ep.name) is plugin:
                pm.unregister(name=ep.name)
            pm.record_error(LoadError(ep.name, dist, f"could not be registered: {failure_line(reg.error)}", "hooks"))
    unknown = sorted(pm.disabled - seen) if wanted is None else []
    if unknown:
        installed = sorted(seen) or ["(no third-party plugins)"]
        warnings.warn(f"{DISABLE_ENV} / -p no:NAME names {', '.join(repr(u) for u in unknown)}, which is not an installed "
                      f"plugin; installed: {', '.join(installed)}", PluginWarning, stacklevel=2)


def list_plugins(pm: FreqprobePluginManager, *, include_builtins: bool = False) -> list[dict[str, Any]]:
    """One dict per plugin: name, dist (or ``built-in``), hooks; sorted by name."""
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        builtin = is_builtin(name)
        if builtin and not include_builtins:
            continue
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        out.append({"name": name, "dist": "built-in" if builtin else pm.dists.get(name, "registered at runtime"), "hooks": hooks})
    return sorted(out, key=lambda d: d["name"])


_default: FreqprobePluginManager | None = None


def default_plugin_manager(disable: Iterable[str] = ()) -> FreqprobePluginManager:
    """The process-wide manager used when no ``pm`` is passed (built on first use).

    ``disable`` (``freqprobe -p no:NAME``) keeps those plugins from loading; on a manager that
    already exists they are unregistered.
    """
    global _default
    disable = [n for n in disable if n]
    if _default is None:
        _default = get_plugin_manager(disable=disable)
    else:
        disabled_names(disable)  # built-ins refuse
        for name in disable:
            _default.disable(name)
    return _default


# ---------------------------------------------------------------- a third-party plugin's exception, after the fact
def _plugin_modules(pm) -> dict[str, str]:
    """Module name -> plugin name, for the third-party plugins of ``pm`` and the classes they registered."""
    mods: dict[str, str] = {}
    for name, plugin in pm.list_name_plugin():
        if plugin is None or is_builtin(name):
            continue
        mod = plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__module__
        mods.setdefault(mod, name)
    for kind in registry.KINDS:
        try:
            entries = registry.collect(kind, pm)
        except Exception:  # pragma: no cover - attribution must never fail itself
            continue
        for e in entries.values():
            if not is_builtin(e.plugin):
                mods.setdefault(e.cls.__module__, e.plugin)
    return {m: n for m, n in mods.items() if m and not m.startswith("freqprobe.") and m != "freqprobe" and m != "builtins"}


def attribute(exc: BaseException, pm) -> PluginError | None:
    """A PluginError naming the third-party plugin whose code raised ``exc`` (from its traceback), or None."""
    if pm is None or isinstance(exc, FreqprobeError) or not isinstance(exc, Exception):
        return None
    try:
        mods = _plugin_modules(pm)
    except Exception:  # pragma: no cover
        return None
    if not mods:
        return None
    packages = {m.split(".")[0]: n for m, n in mods.items() if "." in m}
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        mod = frame.f_globals.get("__name__", "")
        name = mods.get(mod) or packages.get(mod.split(".")[0])
        if name is not None:
            code = frame.f_code
            fn = getattr(code, "co_qualname", code.co_name)
            dist = getattr(pm, "dists", {}).get(name)
            return PluginError(f"plugin {name!r}{f' ({dist})' if dist else ''} failed in {fn}(): {_first_line(exc)}")
        tb = tb.tb_next
    return None


# ---------------------------------------------------------------- declared options (the add_options hook)
def collect_options(pm=None, command: str = "run") -> OptionSet:
    """The declared options of ``command``: the core's, then each plugin's ``add_options`` (called on its own, like the registry).

    A plugin option whose flag or name the core (or a built-in) has is skipped and recorded; one
    that two third-party plugins both declare is refused for both, like a duplicate class name.
    """
    pm = pm if pm is not None else default_plugin_manager()
    cache = getattr(pm, "_freqprobe_options_cache", None)
    if cache is None:
        cache = pm._freqprobe_options_cache = _collect_all_options(pm)
    return cache[command]


def _collect_all_options(pm) -> dict[str, OptionSet]:
    core = {"run": CORE_RUN_OPTIONS, "decompose": CORE_DECOMPOSE_OPTIONS}
    taken = {k for opts in core.values() for o in opts for k in _option_keys(o)}
    declared: list[Option] = []
    impls = sorted(reversed(pm.hook.add_options.get_hookimpls()), key=lambda i: not is_builtin(pm.get_name(i.plugin)))
    for impl in impls:
        name = pm.get_name(impl.plugin) or repr(impl.plugin)
        parser = OptionParser(name)
        if is_builtin(name):
            impl.function(parser=parser)
        else:
            with contained() as call:
                impl.function(parser=parser)
            if call.error is not None:
                pm.record_error(LoadError(name, pm.dist_of(name), f"add_options() raised {failure_line(call.error)}; "
                                          "its options are skipped", "add_options"))
                continue
        declared += parser.options
    kept = _refuse_duplicate_options(pm, declared, taken)
    return {cmd: OptionSet([*opts, *(o for o in kept if cmd in o.commands)]) for cmd, opts in core.items()}


def _option_keys(o: Option) -> list[str]:
    names = [f"dest:{o.dest}", *(f"flag:{f}" for f in (*o.flags, *([o.secondary] if o.secondary else [])))]
    return [f"{cmd}|{n}" for cmd in o.commands for n in names]


def _refuse_duplicate_options(pm, declared: list[Option], taken: set[str]) -> list[Option]:
    """The declared options that may be used: none that the core has, none that two third-party plugins both claim."""
    claims: dict[str, set[str]] = {}
    for o in declared:
        for key in _option_keys(o):
            claims.setdefault(key, set()).add(o.plugin)
    kept = []
    for o in declared:
        rivals = sorted({p for k in _option_keys(o) for p in claims[k]} - {o.plugin})
        why = None
        if any(k in taken for k in _option_keys(o)):
            why = f"option {o.flag_name} is the core's; the plugin's option is skipped"
        elif rivals and not is_builtin(o.plugin):
            builtin = [r for r in rivals if is_builtin(r)]
            who = " and ".join(f"plugin {r!r}" for r in [o.plugin, *rivals])
            why = (f"option {o.flag_name} is already built-in {builtin[0]}'s; the plugin's option is skipped" if builtin
                   else f"duplicate option {o.flag_name}: {who} both declare it; the option is refused for both")
        if why is None:
            kept.append(o)
        elif is_builtin(o.plugin):
            raise PluginError(f"freqprobe bug: built-in {o.plugin}: {why}")
        else:
            pm.record_error(LoadError(o.plugin, pm.dist_of(o.plugin), why, "add_options"))
    return kept


# ---------------------------------------------------------------- the registry, defaulting to the process-wide manager
def collect(kind: str, pm=None) -> registry.Entries:
    """``name -> Entry`` of one kind (``decomposers``, ``probes``...), each with the plugin that provided it."""
    return registry.collect(kind, pm if pm is not None else default_plugin_manager())


def get_entry(kind: str, name: str, pm=None) -> registry.Entry:
    """The registered entry ``name`` of ``kind``; an unknown name answers "Did you mean ...?" (UnknownNameError)."""
    return registry.get_entry(kind, name, pm if pm is not None else default_plugin_manager())


def get_class(kind: str, name: str, pm=None) -> type:
    """The class registered as ``name`` of ``kind`` (see :func:`get_entry`)."""
    return get_entry(kind, name, pm).cls


def list_entries(kind: str, pattern: str = "*", pm=None) -> list[registry.Entry]:
    """Entries of ``kind`` whose name matches ``pattern`` (a glob, or a substring without wildcards)."""
    return registry.list_entries(kind, pattern, pm if pm is not None else default_plugin_manager())


__all__ = [
    "DEFAULT_PLUGINS", "DISABLE_ENV", "ENTRY_POINT_GROUP", "FreqprobePluginManager", "LoadError", "default_plugin_manager",
    "disable_hint", "get_plugin_manager", "is_builtin", "list_plugins", "load_entry_points", "collect", "get_entry",
    "get_class", "list_entries", "attribute", "collect_options",
]
