"""Hook implementations of the smoothing plugin (the same hooks a third-party plugin uses)."""

from __future__ import annotations

from freqprobe import hookimpl


@hookimpl
def register_transforms():
    from .smooth import SmoothTransform

    return [SmoothTransform]


@hookimpl
def register_commands(cli):
    from .kernels import kernels_command

    cli.add_command(kernels_command)
