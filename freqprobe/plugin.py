"""The plugin author's second namespace: what a plugin needs beyond ``from freqprobe import ...``.

``from freqprobe.plugin import NAME`` for every name in ``__all__`` below; what is neither here
nor in ``freqprobe.__all__`` is internal and may change (docs/plugins.md lists both). The four
first-party plugins use nothing else, and a test keeps it so.

- commands: :class:`CommandContext` / :func:`command_context` (plugin manager, ``say``,
  ``progress``, the command line, an output workspace with atomic writes, the manifest head,
  signal handling), :class:`Workspace`, :func:`write_json`, :func:`check_stop` (and :func:`request_stop` /
  :func:`clear_stop`: what the signal handlers do, for a plugin's tests), :class:`ListedOption` (a click
  option whose help lists the registry's names: ``help="...: {attacks}."``);
- options: :class:`Option`, :class:`OptionParser` (what the ``add_options`` hook receives),
  :func:`parse_kv`, :func:`parse_component` (``NAME[:K=V,...]``), :func:`parse_numbers`;
- the report: :class:`Report` (what the ``report_folder`` hook receives), :func:`is_probe_run`;
- checks and helpers the core's commands use too: :func:`check_seed`, :func:`check_out_dir`,
  :func:`resolve_device`, :func:`slug`, :func:`versions`, :func:`fmt_param`,
  :func:`exception_line`, :func:`check_declared_options`, :func:`read_image` (an image file as [0, 1] values
  whatever its mode), :func:`guarded` (a registered third-party class's
  exception as one line naming its plugin), :func:`decompose_with` (a decomposer
  instance's parts, checked), :func:`save_model` (a ``model.pt`` that carries its normalisation),
  :class:`SampleTable`, :func:`write_summary`;
- evaluators: :class:`StateError`, :data:`REDUCTIONS`; torchrun: :func:`torchrun_env`,
  :func:`join_torchrun`, :class:`Dist`;
- data: :func:`iter_batches` (a data source's batches, read in ``--workers`` worker processes, in data
  order: what ``run``, ``decompose`` and ``train`` read with), :func:`check_workers` (a ``--workers`` value).

Names are loaded on first use, so importing this module costs nothing until one is used.
"""

from __future__ import annotations

from typing import Any

#: name -> (module, attribute)
_NAMES = {
    "CommandContext": ("app", "CommandContext"),
    "command_context": ("app", "command_context"),
    "ListedOption": ("cli", "ListedOption"),
    "write_json": ("app", "write_json"),
    "Workspace": ("journal", "Workspace"),
    "check_stop": ("journal", "check_stop"),
    "request_stop": ("journal", "request_stop"),
    "clear_stop": ("journal", "clear_stop"),
    "Option": ("options", "Option"),
    "OptionParser": ("options", "OptionParser"),
    "parse_kv": ("options", "parse_kv"),
    "parse_component": ("options", "parse_component"),
    "parse_numbers": ("options", "parse_numbers"),
    "read_image": ("builtins.datasets", "read_image"),
    "Report": ("report", "Report"),
    "is_probe_run": ("report", "is_probe_run"),
    "check_seed": ("runner", "check_seed"),
    "check_out_dir": ("runner", "check_out_dir"),
    "resolve_device": ("runner", "resolve_device"),
    "slug": ("runner", "slug"),
    "versions": ("runner", "versions"),
    "fmt_param": ("tables", "fmt_param"),
    "SampleTable": ("tables", "SampleTable"),
    "write_summary": ("tables", "write_summary"),
    "exception_line": ("errors", "exception_line"),
    "check_declared_options": ("interfaces", "check_declared_options"),
    "decompose_with": ("guard", "decompose"),
    "guarded": ("guard", "guarded"),
    "save_model": ("checkpoint", "save_model"),
    "StateError": ("evaluators", "StateError"),
    "REDUCTIONS": ("evaluators", "REDUCTIONS"),
    "torchrun_env": ("distributed", "from_env"),
    "join_torchrun": ("distributed", "setup"),
    "Dist": ("distributed", "Dist"),
    "iter_batches": ("loading", "iter_batches"),
    "check_workers": ("loading", "check_workers"),
}


def __getattr__(name: str) -> Any:
    where = _NAMES.get(name)
    if where is None:
        raise AttributeError(f"module 'freqprobe.plugin' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"freqprobe.{where[0]}"), where[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))


__all__ = sorted(_NAMES)
