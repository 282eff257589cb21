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

import dataclasses
import difflib
import importlib
import importlib.metadata
import logging
import os
import warnings
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .errors import PluginWarning, UserFacingError

log = logging.getLogger("freqprobe.plugins")

ENTRY_POINT_GROUP = "freqprobe"
DISABLE_ENV = "FREQPROBE_DISABLE_PLUGINS"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "freqprobe.builtins.decomposers",
    "freqprobe.builtins.rescale",
    "freqprobe.builtins.metrics",
    "freqprobe.builtins.models",
    "freqprobe.builtins.datasets",
    "freqprobe.builtins.probes",
    "freqprobe.builtins.report",
)


def is_builtin(name: str | None) -> bool:
    """Whether ``name`` is one of the built-in plugin modules (which cannot be switched off)."""
    return name in DEFAULT_PLUGINS


def disable_hint(name: str) -> str:
    """How to switch the plugin ``name`` off."""
    return f"{DISABLE_ENV}={name} or freqprobe -p no:{name}"


@dataclasses.dataclass(frozen=True)
class LoadError:
    """A plugin (or one of its classes) that was skipped; shown by ``freqprobe plugins``, warned about once.

    ``stage`` says where: ``import`` (the entry point failed to import), ``hooks`` (it implements
    a hook wrongly), a register hook (``register_decomposers``...) or ``register_commands``.
    """

    name: str
    dist: str
    error: str
    stage: str = "import"

    @property
    def hint(self) -> str:
        return "" if is_builtin(self.name) else f"switch it off with {disable_hint(self.name)}"

    def message(self) -> str:
        hint = f" ({self.hint})" if self.hint else ""
        if self.stage == "import":
            return f'Error importing plugin "{self.name}" ({self.dist}): {self.error}; skipped{hint}'
        return f'Plugin "{self.name}" ({self.dist}): {self.error}{hint}'

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "dist": self.dist, "stage": self.stage, "error": self.error, "hint": self.hint}


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
        from . import registry

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
        try:
            got = super().register(plugin, name)
        except pluggy.PluginValidationError as exc:
            pname = name or self.get_canonical_name(plugin)
            if self.get_plugin(pname) is not None:
                super().unregister(name=pname)
            self.record_error(LoadError(pname, self.dist_of(pname), _validation_message(exc) + "; the plugin is skipped", "hooks"))
            return None
        if got is not None and self._validate_on_register and not is_builtin(got):
            if not validate_hooks(self, got):
                return None
        return got

    def unregister(self, plugin=None, name=None):
        self._freqprobe_registry_cache = {}
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


def warn_once(pm, err: LoadError) -> None:
    """Warn about ``err`` unless this manager already has."""
    warned = getattr(pm, "_warned", None)
    msg = err.message()
    if warned is not None:
        if msg in warned:
            return
        warned.add(msg)
    warnings.warn(msg, PluginWarning, stacklevel=3)


def _validation_message(exc: pluggy.PluginValidationError) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return "; ".join(lines)


def _spec_names(pm) -> list[str]:
    return sorted(n for n, hc in vars(pm.hook).items() if isinstance(hc, pluggy.HookCaller) and hc.has_spec())


def unknown_hooks(pm, plugin) -> list[str]:
    """Names of hooks ``plugin`` implements that no hookspec declares (pluggy's ``optionalhook`` excepted)."""
    bad = []
    for hc in pm.get_hookcallers(plugin) or []:
        if hc.has_spec():
            continue
        for impl in hc.get_hookimpls():
            if impl.plugin is plugin and not impl.optionalhook:
                bad.append(hc.name)
    return sorted(set(bad))


def validate_hooks(pm, name: str) -> bool:
    """Refuse (unregister and record) the plugin ``name`` if it implements a hook that does not exist."""
    plugin = pm.get_plugin(name)
    if plugin is None:
        return False
    bad = unknown_hooks(pm, plugin)
    if not bad:
        return True
    specs = _spec_names(pm)
    parts = []
    for hook in bad:
        close = difflib.get_close_matches(hook, specs, n=1, cutoff=0.6)
        parts.append(f"{hook}()" + (f" (did you mean {close[0]}?)" if close else ""))
    pm.unregister(name=name)
    # the unknown hook's caller stays behind without implementations; nothing calls it
    err = LoadError(name, pm.dist_of(name) if hasattr(pm, "dist_of") else "registered at runtime",
                    f"implements unknown hook {', '.join(parts)}; the plugin is skipped "
                    f"(mark hooks of your own with @hookimpl(optionalhook=True))", "hooks")
    if hasattr(pm, "record_error"):
        pm.record_error(err)
    return False


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
    from . import registry

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
        log.error("freqprobe bug: %s", _validation_message(exc))


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
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not take the tool down
            del pm.dists[ep.name]
            pm.record_error(LoadError(ep.name, dist, _first_line(exc)))
            continue
        try:
            if pm.register(plugin, name=ep.name) is None:
                del pm.dists[ep.name]
        except Exception as exc:  # e.g. the same module under two entry-point names
            pm.dists.pop(ep.name, None)
            pm.record_error(LoadError(ep.name, dist, f"could not be registered: {_first_line(exc)}", "hooks"))
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


__all__ = [
    "DEFAULT_PLUGINS", "DISABLE_ENV", "ENTRY_POINT_GROUP", "FreqprobePluginManager", "LoadError", "default_plugin_manager",
    "disable_hint", "get_plugin_manager", "is_builtin", "list_plugins", "load_entry_points",
]
