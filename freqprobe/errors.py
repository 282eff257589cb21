"""Exception hierarchy. Only :mod:`freqprobe.cli` turns these into exit codes."""

from __future__ import annotations

import difflib
import signal
from typing import Iterable


class FreqprobeError(Exception):
    """Base class for every error freqprobe raises on purpose."""


class UserFacingError(FreqprobeError):
    """A problem with what the user asked for; the message is shown as is (exit code 2)."""


class PluginError(FreqprobeError):
    """A plugin is broken: a bad registration, a duplicate name, a failed import, or it failed at run time."""


class PluginWarning(UserWarning):
    """A plugin (or one of its classes) was skipped; warned once per plugin manager."""


def exception_line(exc: BaseException, limit: int = 200) -> str:
    """``ValueError: first line of the message`` (``it called sys.exit(3)`` for SystemExit): a user's code failing, in one line."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:limit]}".rstrip(": ")


class UnknownNameError(UserFacingError, KeyError):
    """A registry lookup for a name nobody registered."""

    def __init__(self, kind: str, name: str, available: Iterable[str]):
        self.kind, self.name = kind, name
        # a registry (freqprobe.registry.Entries) also knows names it refused, and why
        unavailable = getattr(available, "unavailable", None) or {}
        self.available = sorted(available)
        if name in unavailable:
            super().__init__(unavailable[name])
            return
        close = difflib.get_close_matches(name, self.available, n=3, cutoff=0.5)
        if not close:
            low = name.lower().replace("_", "-")
            close = [a for a in self.available if low in a or a in low][:3]
        msg = f"Unknown {kind} '{name}'."
        if close:
            msg += f" Did you mean: {', '.join(close)}?"
        if len(self.available) > 20:
            msg += f" Available ({len(self.available)}): {', '.join(self.available[:12])}, ..."
        else:
            msg += f" Available: {', '.join(self.available) or '(none)'}."
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class IncompatibleError(UserFacingError):
    """Two parts that cannot work together (a probe and a model of the wrong task, class counts...)."""


class NonFiniteOutputs(UserFacingError):
    """The model returned NaN/inf for some samples and the run does not allow it.

    ``counts``: per variant (as the message labels it), how many samples; ``n``: the samples seen. A
    caller that evaluates through the engine (a training tracker) can catch it and phrase its own advice.
    """

    def __init__(self, message: str, counts: dict | None = None, n: int = 0) -> None:
        super().__init__(message)
        self.counts, self.n = dict(counts or {}), n


class ModelError(UserFacingError):
    """The model raised while being evaluated (user code, out of memory...); the cause is chained."""


class StopRequested(FreqprobeError):
    """A SIGINT/SIGTERM asked the work to stop; it stopped at a batch boundary with a checkpoint."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)
