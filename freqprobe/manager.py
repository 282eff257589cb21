"""The plugin manager's vocabulary: which plugins are built in, what a load problem is, how hooks are validated.

A leaf of the import graph (only pluggy and the errors): the registry, the guard and
the plugin manager factory (:mod:`freqprobe.plugins`) all build on it.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import signal
import threading
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
    "freqprobe.builtins.heatmap",
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


def failure_line(exc: BaseException) -> str:
    """A plugin's exception in one line: ``ValueError: first line``; ``sys.exit(3) called`` for a SystemExit."""
    if isinstance(exc, SystemExit):
        return f"SystemExit: sys.exit({exc.code!r}) called"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt raised by the plugin itself (not a Ctrl-C)"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


class contained:
    """``with contained() as c: <plugin code>``: whatever the plugin code raises is kept in ``c.error``, not raised.

    Every exception is caught, and so are ``SystemExit`` and any other ``BaseException`` — among
    them a ``KeyboardInterrupt`` the plugin raises itself — because a plugin must never end the
    tool. A real interrupt is not: while the code runs (main thread), SIGINT goes through a
    handler that notes it and then calls the one that was installed, so a ``KeyboardInterrupt``
    that a Ctrl-C (or ``_thread.interrupt_main``) caused still propagates (and so does a
    ``SystemExit`` the plugin turns it into, as a ``KeyboardInterrupt``). ``passthrough``:
    exception types that propagate unchanged (e.g. a deliberate ``StopRequested``).
    """

    def __init__(self, passthrough: tuple[type[BaseException], ...] = ()) -> None:
        self.passthrough = passthrough
        self.error: BaseException | None = None
        self.interrupted = False
        self._previous = self._handler = None

    def __enter__(self) -> "contained":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only: any KeyboardInterrupt here is the plugin's own
        previous = signal.getsignal(signal.SIGINT)
        if not callable(previous):  # SIG_IGN / SIG_DFL: a Ctrl-C cannot become a KeyboardInterrupt
            return self

        def note(signum, frame):
            self.interrupted = True
            previous(signum, frame)

        try:
            signal.signal(signal.SIGINT, note)
        except (ValueError, OSError):  # pragma: no cover - e.g. an embedded interpreter
            return self
        self._previous, self._handler = previous, note
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._handler is not None and signal.getsignal(signal.SIGINT) is self._handler:
            signal.signal(signal.SIGINT, self._previous)  # a handler the plugin installed itself stays
        if exc is None or isinstance(exc, self.passthrough):
            return False
        if self.interrupted and not isinstance(exc, Exception):  # a Ctrl-C, or what the plugin made of it (sys.exit)
            if isinstance(exc, KeyboardInterrupt):
                return False
            raise KeyboardInterrupt from exc
        self.error = exc
        return True


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


