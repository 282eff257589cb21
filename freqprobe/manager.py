"""The plugin manager's vocabulary: which plugins are built in, what a load problem is, how hooks are validated.

A leaf of the import graph (only pluggy and the errors): the registry, the guard and
the plugin manager factory (:mod:`freqprobe.plugins`) all build on it.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import warnings

import pluggy

from .errors import PluginWarning

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


@dataclasses.dataclass(frozen=True)
class Provider:
    """Where a registered class came from (see :func:`provider_of`)."""

    plugin: str
    dist: str
    label: str  # "decomposer", "metric", ...
    name: str

    @property
    def builtin(self) -> bool:
        return is_builtin(self.plugin)

    def who(self) -> str:
        """``plugin 'boxplug' (boxplug 1.0)``; the distribution only for entry-point plugins."""
        dist = "" if self.dist in ("built-in", "registered at runtime", "runtime", "") else f" ({self.dist})"
        return f"plugin {self.plugin!r}{dist}"


PROVIDER_ATTR = "_freqprobe_provider"


def provider_of(obj) -> Provider | None:
    """The plugin that registered ``obj``'s class (or ``obj`` itself when it is a class); None if unknown."""
    cls = obj if inspect.isclass(obj) else type(obj)
    got = getattr(cls, PROVIDER_ATTR, None)
    return got if isinstance(got, Provider) else None


def warn_once(pm, err: LoadError) -> None:
    """Warn about ``err`` unless this manager already has."""
    warned = getattr(pm, "_warned", None)
    msg = err.message()
    if warned is not None:
        if msg in warned:
            return
        warned.add(msg)
    warnings.warn(msg, PluginWarning, stacklevel=3)


def validation_message(exc: pluggy.PluginValidationError) -> str:
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


