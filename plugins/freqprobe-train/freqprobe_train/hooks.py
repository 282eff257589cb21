"""Hook implementations of the training plugin: exactly the hooks a third-party plugin uses."""

from __future__ import annotations

from freqprobe import hookimpl


@hookimpl
def register_model_sources():
    from .archs import PaperModelSource

    return [PaperModelSource]


@hookimpl
def register_commands(cli):
    from .command import train_command

    cli.add_command(train_command)
