"""Hook implementations of the training plugin: exactly the hooks a third-party plugin uses."""

from __future__ import annotations

from freqprobe import hookimpl


@hookimpl
def register_model_sources():
    from .source import PaperModelSource

    return [PaperModelSource]


@hookimpl
def register_commands(cli):
    from .command import train_command

    cli.add_command(train_command)


@hookimpl
def report_folder(folder, report):
    """``freqprobe report`` of a training run (``curves.csv``) or a grid of runs (``grid.csv``); None for other folders."""
    from .report import grid_section, is_grid, is_training_run, train_section

    if is_grid(folder):
        return grid_section(folder, report)
    if is_training_run(folder):
        return train_section(folder, report)
    return None
