"""What a command works with: :class:`CommandContext` (the core's commands and every plugin's use it alike).

A plugin command gets it with :func:`command_context` — the plugin manager, ``say`` for status
lines, ``progress`` bars, the command line as typed (what manifests record and resume hints
repeat), an output :meth:`~CommandContext.workspace` (hidden ``.NAME.partial`` folder, lock,
atomic writes, commit), the same lock alone for a command that writes into its output folder itself
(:meth:`~CommandContext.output_lock`), durable file writes (:meth:`~CommandContext.write_file`), a
:meth:`~CommandContext.manifest` head, signal handling that stops at a batch boundary, and warnings
as ``warning: ...`` lines.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import click

from .journal import Workspace, graceful_stop, output_lock, workspace, write_durably


class CommandContext:
    """The services of one ``freqprobe`` invocation, handed to every command (``click``'s ``ctx.obj``).

    ``quiet`` silences :meth:`say` and :meth:`progress` (a command's ``-q``); :meth:`for_command`
    returns a copy with the command's own ``quiet``.
    """

    def __init__(self, pm: Any = None, argv: list[str] | None = None, *, quiet: bool = False) -> None:
        if pm is None:
            from .plugins import default_plugin_manager

            pm = default_plugin_manager()
        self.pm = pm
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.quiet = quiet

    def for_command(self, *, quiet: bool = False) -> "CommandContext":
        return CommandContext(self.pm, self.argv, quiet=quiet)

    @property
    def command_line(self) -> str:
        """The command being run, as a shell line (``freqprobe run ...``)."""
        return "freqprobe " + " ".join(shlex.quote(a) for a in self.argv)

    def resume_hint(self) -> str:
        """The command line with ``--resume`` (how to continue an interrupted command)."""
        cmd = self.command_line
        return cmd if " --resume" in f" {cmd}" else cmd + " --resume"

    # -- talking to the user
    def say(self, msg: str) -> None:
        """A status line on stderr (nothing when quiet)."""
        if not self.quiet:
            click.echo(msg, err=True)

    def progress(self, stage: str, total: int) -> Callable[[int], None] | None:
        """A progress bar on stderr for ``total`` items; returns ``update(n)`` (None when quiet or empty)."""
        if self.quiet or total <= 0:
            return None
        bar = click.progressbar(length=total, label=f"{stage:>8}", file=sys.stderr, show_eta=True, show_pos=True)
        bar.__enter__()
        state = {"done": 0}

        def update(n: int) -> None:
            bar.update(n)
            state["done"] += n
            if state["done"] >= total:
                bar.__exit__(None, None, None)

        return update

    @contextlib.contextmanager
    def warnings_as_lines(self) -> Iterator[None]:
        """Inside: every warning is one ``warning: ...`` line on stderr."""
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda m, c, f, l, file=None, line=None: click.echo(f"warning: {m}", err=True)  # noqa: E741
            yield

    @contextlib.contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """Inside: SIGINT/SIGTERM stop the work at its next batch boundary (a second one aborts at once).

        What the signal did is said on stderr even with ``-q``: it answers the user's own keystroke."""
        with graceful_stop(lambda m: click.echo(m, err=True)):
            yield

    # -- writing results
    def workspace(self, out: str | os.PathLike, *, kind: str, resume: bool = False, flag: str = "--out"
                  ) -> "contextlib.AbstractContextManager[Workspace]":
        """The output's hidden ``.NAME.partial`` folder (locked; resumable); ``ws.commit()`` moves it into place.

        Write files with ``ws.write_text`` / ``ws.write_json`` / ``ws.atomic`` (all atomic). On an
        error a fresh workspace is removed; after a stop it stays for ``--resume``.
        """
        return workspace(Path(out), kind=kind, resume=resume, flag=flag, announce=self.say)

    def output_lock(self, out: str | os.PathLike, *, kind: str, flag: str = "--out"
                    ) -> "contextlib.AbstractContextManager[Workspace]":
        """Hold the lock a :meth:`workspace` takes for ``out`` while the command writes into ``out`` itself.

        For a command whose output folder is its state (a training command: finished epochs stay where
        they are): a second process into the same output — this command or any other, ``run`` included —
        is refused in one line while this one lives. Take it before loading anything: the output is
        checked first (``/proc/x``, a read-only folder: one line). Nothing else is touched; the lock goes
        when the block ends.
        """
        return output_lock(Path(out), kind=kind, flag=flag, announce=self.say)

    @staticmethod
    def write_file(path: str | os.PathLike, data: bytes | str) -> Path:
        """``data`` into ``path`` atomically and durably (a temporary file beside it, fsync, rename, fsync of the
        folder): after a crash or power loss the file is the old one or the new one, never a torn one. A full disk
        is an :class:`OSError` (``errno.ENOSPC``) naming ``path``, with no temporary file left behind."""
        path = Path(path)
        try:
            write_durably(path, data.encode() if isinstance(data, str) else bytes(data))
        except OSError as exc:
            if exc.filename is None:
                raise OSError(exc.errno, exc.strerror, str(path)) from None
            raise
        return path

    def manifest(self, *, command: str | None = None, **sections: Any) -> dict[str, Any]:
        """A manifest's head (versions, the command line — or ``command`` —, when) followed by ``sections``."""
        from .runner import versions

        return {"versions": versions(), "command": command or self.command_line,
                "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), **sections}


def write_json(path: str | os.PathLike, obj: Mapping[str, Any] | list) -> None:
    """``obj`` as indented JSON, atomically and durably (:meth:`CommandContext.write_file`)."""
    CommandContext.write_file(path, json.dumps(obj, indent=2, default=str) + "\n")


def command_context(quiet: bool = False) -> CommandContext:
    """The :class:`CommandContext` of the running ``freqprobe`` command (a default one outside it), with ``quiet``."""
    ctx = click.get_current_context(silent=True)
    app = ctx.find_object(CommandContext) if ctx is not None else None
    if app is None:
        app = CommandContext()
    return app.for_command(quiet=quiet)


__all__ = ["CommandContext", "command_context", "write_json"]
