"""``docs/cli-reference.md`` is generated from the click commands and must match them."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest

import freqprobe
import freqprobe.cli
import freqprobe_attacks.hooks
import freqprobe_coco.hooks
import freqprobe_smoothing.hooks
import freqprobe_train.hooks
from freqprobe.cli import build_cli
from freqprobe.docgen import cli_reference, first_party_plugins

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "cli-reference.md"
REGENERATE = "cd /work/main && env -u FREQPROBE_DISABLE_PLUGIN_AUTOLOAD .venv/bin/python -m freqprobe.docgen > docs/cli-reference.md"
PLUGIN_COMMANDS = {"table2": "attacks", "kernels": "smoothing", "train": "train"}


def first_party_pm():
    """Built-ins and the first-party plugins, registered the way the tests register them (autoload is off)."""
    pm = freqprobe.get_plugin_manager(autoload=False)
    pm.register(freqprobe_attacks.hooks, "attacks")
    pm.register(freqprobe_smoothing.hooks, "smoothing")
    pm.register(freqprobe_coco.hooks, "coco")
    pm.register(freqprobe_train.hooks, "train")
    return pm


@pytest.fixture(scope="module")
def reference() -> str:
    return cli_reference(first_party_pm())


def test_reference_is_current(reference):
    assert reference == REFERENCE.read_text(encoding="utf-8"), (
        f"docs/cli-reference.md is out of date with the click commands; regenerate it with:\n    {REGENERATE}")


def test_first_line_says_generated(reference):
    first = reference.splitlines()[0]
    assert "python -m freqprobe.docgen" in first and "do not edit by hand" in first


def test_every_command_and_every_run_option_appears(reference):
    core = {"run", "decompose", "list", "plugins", "report"}
    headings = [line[len("## freqprobe "):] for line in reference.splitlines() if line.startswith("## freqprobe ")]
    assert headings == sorted(core | set(PLUGIN_COMMANDS))
    for name, plugin in PLUGIN_COMMANDS.items():
        section = reference.split(f"## freqprobe {name}\n", 1)[1].split("\n## ", 1)[0]
        assert f"Added by the plugin `{plugin}`" in section
        assert f"```\nfreqprobe {name} [OPTIONS]" in section
    for name in core:
        section = reference.split(f"## freqprobe {name}\n", 1)[1].split("\n## ", 1)[0]
        assert "Added by" not in section
    run = build_cli(first_party_pm()).commands["run"]
    run_section = reference.split("## freqprobe run\n", 1)[1].split("\n## ", 1)[0]
    for param in run.params:
        for opt in (*param.opts, *param.secondary_opts):
            assert f"`{opt}`" in run_section, opt
        if param.help:
            assert " ".join(param.help.split()).replace("|", "\\|") in run_section, param.name
    assert "`--channels-last` / `--no-channels-last`" in run_section
    assert "| `--model` | `TEXT` (repeatable) |  | Model: " in run_section and "| `--models` | `FILE` |  |" in run_section
    assert "| `--precision` | `fp32` \\| `tf32` \\| `bf16` \\| `fp16` | `fp32` |" in run_section
    for opt in ("`--version`", "`-v`, `--verbose`", "`-p`"):  # the group's own options, at the top
        assert opt in reference.split("## Commands", 1)[0]


def test_the_plugin_manager_is_left_alone():
    pm = first_party_pm()
    before = sorted(name for name, _ in pm.list_name_plugin())
    cli_reference(pm)
    assert sorted(name for name, _ in pm.list_name_plugin()) == before


def test_third_party_plugins_do_not_change_it(reference):
    filters = pytest.importorskip("freqprobe_filters.hooks")  # the example plugin installed in the venv: no commands
    pm = first_party_pm()
    pm.register(filters, "filters")

    @click.command("hello")
    @click.option("--name", default="world", show_default=True, help="Whom to greet.")
    def hello(name):
        """Greet someone (a third-party command)."""

    class HelloPlugin:
        @freqprobe.hookimpl
        def register_commands(self, cli):
            cli.add_command(hello)

    pm.register(HelloPlugin(), "thirdparty")
    assert cli_reference(pm) == reference
    with_third = cli_reference(pm, third_party=True)
    assert "## freqprobe hello\n\nAdded by the plugin `thirdparty` (a third-party plugin)." in with_third
    assert "| `--name` | `TEXT` | `world` | Whom to greet. |" in with_third
    assert "hello" not in build_cli(first_party_pm()).commands


def test_a_plugin_cannot_replace_a_core_command(reference):
    @click.command("run")
    def fake_run():
        """Not the real run."""

    class Replacer:
        @freqprobe.hookimpl
        def register_commands(self, cli):
            cli.add_command(fake_run)

    pm = first_party_pm()
    pm.register(Replacer(), "replacer")
    with pytest.warns(freqprobe.PluginWarning, match="replaced the core command 'run'; the core command is kept"):
        assert cli_reference(pm, third_party=True) == reference
    assert build_cli(pm).commands["run"] is not fake_run


def test_independent_of_terminal_width(monkeypatch, reference):
    for columns in ("40", "300"):
        monkeypatch.setenv("COLUMNS", columns)
        assert cli_reference(first_party_pm()) == reference


def test_first_party_plugins_are_the_entry_points_of_pyproject():
    eps = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["entry-points"]["freqprobe"]
    assert first_party_plugins() == sorted(eps)


def test_the_module_prints_it_with_the_plugins_the_console_loads():
    env = {k: v for k, v in os.environ.items()
           if k not in {"FREQPROBE_DISABLE_PLUGIN_AUTOLOAD", "FREQPROBE_LOAD_PLUGINS", "FREQPROBE_DISABLE_PLUGINS", "COLUMNS"}}
    proc = subprocess.run([sys.executable, "-m", "freqprobe.docgen"], cwd=REPO, env=env, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode("utf-8") == REFERENCE.read_text(encoding="utf-8"), (
        f"`python -m freqprobe.docgen` differs from docs/cli-reference.md; regenerate it with:\n    {REGENERATE}")
    env["FREQPROBE_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # without the entry-point plugins: refuses (exit 1) and says why
    proc = subprocess.run([sys.executable, "-m", "freqprobe.docgen"], cwd=REPO, env=env, capture_output=True, timeout=300)
    assert proc.returncode == 1 and b"FREQPROBE_DISABLE_PLUGIN_AUTOLOAD" in proc.stderr
