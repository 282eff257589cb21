"""Hook implementations of the attacks plugin: exactly the hooks a third-party plugin uses.

Imports neither torch nor numpy (``freqprobe --help`` stays fast): the implementation modules
are imported inside the hooks.
"""

from __future__ import annotations

from freqprobe import hookimpl


@hookimpl
def register_attacks():
    from .attacks import ATTACKS

    return list(ATTACKS)


@hookimpl
def register_probes():
    from .probe import RobustnessProbe

    return [RobustnessProbe]


@hookimpl
def register_commands(cli):
    from .table2 import table2_command

    cli.add_command(table2_command)


@hookimpl
def add_options(parser):
    """``--attack`` and ``--eps`` of ``freqprobe run``: options of the robustness probe (refused with any other)."""
    parser.add_option("--attack", dest="attacks", multiple=True, metavar="NAME[:K=V,...]", probe="robustness",
                      check=_check_attacks, help="Attack for --probe robustness (repeatable): {attacks}; e.g. fgsm, "
                           "pgd:steps=10,random_start=false (see `freqprobe list attacks`).")
    parser.add_option("--eps", dest="eps", probe="robustness", check=_check_eps,
                      help="Attack budgets for --probe robustness, comma-separated in [0,1] pixel units, "
                           "e.g. 0.03,0.06,0.09 or 8/255.")


def _check_attacks(value, pm):
    """Refuse an unknown attack or a bad option before anything is loaded (the core's plan stage)."""
    from .spec import parse_attacks

    parse_attacks([value] if isinstance(value, str) else list(value), pm)


def _check_eps(value, pm):
    from .spec import parse_eps

    parse_eps(value)


@hookimpl
def report_folder(folder, report):
    """A ``freqprobe table2`` folder (``table2.csv``): the table, then each row's run."""
    if not (folder / "table2.csv").is_file():
        return None
    from .table2 import report_section

    return report_section(folder, report)
