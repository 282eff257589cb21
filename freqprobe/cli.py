"""The ``freqprobe`` command line. Only this module turns freqprobe errors into exit codes.

The command group is built for each invocation from the plugin manager: the options of ``run``
and ``decompose`` from their declarations (the core's and each plugin's ``add_options``), the
lists in help texts from the registry, then every plugin's ``register_commands``. A plugin
switched off (``-p no:NAME``) contributes nothing: its options are gone from ``--help``.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from . import registry
from .app import CommandContext
from .errors import FreqprobeError, StopRequested
from .options import Option, OptionSet, RunConfig
from .plugins import collect_options, default_plugin_manager, list_plugins

log = logging.getLogger("freqprobe")

#: the commands the core itself defines (a plugin's ``register_commands`` cannot replace them)
CORE_COMMANDS = ("run", "decompose", "list", "plugins", "report")


# ----------------------------------------------------------------------------- declared options as click options
class _Lists(dict):
    """Registry names for help texts, computed when a help text asks for them."""

    def __init__(self, pm: Any) -> None:
        super().__init__()
        self.pm = pm

    def __missing__(self, kind: str) -> str:
        entries = registry.collect(kind, self.pm) if kind in registry.KINDS else None
        if entries is None:
            return "{" + kind + "}"
        names = [_usage(kind, n, e.cls) for n, e in sorted(entries.items())]
        self[kind] = ", ".join(names) or "(none installed)"
        return self[kind]


def _usage(kind: str, name: str, cls: type) -> str:
    """How a registered name is written on the command line: ``npz:PATH``, ``timm:NAME``, ``fft-radial``."""
    if kind == "datasets" and getattr(cls, "takes_argument", False):
        return f"{name}:{cls.argument_metavar}"
    if kind == "models":
        return getattr(cls, "usage", None) or f"{name}:NAME"
    return name


class ListedOption(click.Option):
    """A click option whose help may name registry lists: ``{models}``, ``{datasets}``, ``{decomposers}``, ``{probes}``,
    ``{metrics}``, ``{attacks}``, ``{transforms}``, ``{rescale}`` are filled in when the help is shown, from the plugin
    manager of the running command (``@click.option("--model", cls=ListedOption, help="...: {models}.")``)."""

    _pm: Any = None

    @property
    def help(self) -> str | None:
        text = self._help
        if text and "{" in text:
            pm = self._pm if self._pm is not None else _current_pm()
            try:
                return text.format_map(_Lists(pm))
            except (ValueError, IndexError):  # a brace that is no placeholder: shown as written
                return text
        return text

    @help.setter
    def help(self, value: str | None) -> None:
        self._help = value


def _current_pm() -> Any:
    ctx = click.get_current_context(silent=True)
    app = ctx.find_object(CommandContext) if ctx is not None else None
    return app.pm if app is not None else default_plugin_manager()


class DeclaredOption(ListedOption):
    """A declared :class:`~freqprobe.options.Option` as a click option (its help lists registry names)."""

    def __init__(self, opt: Option, pm: Any) -> None:
        self.declared, self._pm = opt, pm
        decls = [f"{opt.flags[0]}/{opt.secondary}" if opt.secondary else opt.flags[0], *opt.flags[1:], opt.dest]
        kw: dict[str, Any] = {"help": opt.help, "metavar": opt.metavar, "required": opt.required, "show_default": opt.show_default}
        if opt.flag:
            kw.update(is_flag=True, default=None if opt.secondary else False)
        else:
            kw.update(type=_click_type(opt.type), multiple=opt.multiple)
            if opt.multiple or opt.default is not None:  # click: an explicit None default would satisfy `required`
                kw["default"] = () if opt.multiple else opt.default
        super().__init__(decls, **kw)


def _click_type(t: Any) -> Any:
    if isinstance(t, (tuple, list)):
        return click.Choice(list(t))
    return {"path": click.Path(), "dir": click.Path(file_okay=False), "file": click.Path(dir_okay=False)}.get(t, t)


def _values(opts: OptionSet, kw: dict[str, Any]) -> dict[str, Any]:
    """The command line's values as the configuration's (each option's ``from_cli``)."""
    out = {}
    for dest, v in kw.items():
        o = opts.get(dest)
        if o is not None and o.from_cli is not None:
            v = o.from_cli(v)
        out[dest] = v
    return out


def _quiet() -> click.Option:
    return click.Option(["-q", "--quiet"], is_flag=True, help="No progress bars or status lines.")


# ----------------------------------------------------------------------------- run
def _run_command(pm: Any) -> click.Command:
    opts = collect_options(pm, "run")

    @click.pass_obj
    def callback(app: CommandContext, quiet: bool, **kw: Any) -> None:
        from .runner import run as run_probe

        from .errors import UserFacingError
        from .runner import read_models_file, run_study

        app = app.for_command(quiet=quiet)
        values = _values(opts, kw)
        model, models_file = values.pop("model"), values.pop("models")
        entries = [(m, None) for m in ((model,) if isinstance(model, str) else (model or ()))]
        entries += read_models_file(models_file) if models_file else []
        if not entries:
            raise UserFacingError("pass --model SPEC (several: repeat it, or --models FILE)")
        with warnings.catch_warnings(), app.stop_on_signals():
            warnings.simplefilter("always")
            warnings.showwarning = lambda m, c, f, l, file=None, line=None: click.echo(f"warning: {m}", err=True)  # noqa: E741
            if len(entries) > 1 or models_file:
                results = run_study(entries, pm=app.pm, command=app.command_line, progress=app.progress, announce=app.say,
                                    **values)
            else:
                results = [run_probe(entries[0][0], pm=app.pm, command=app.command_line, progress=app.progress,
                                     announce=app.say, **values)]
        for result in results:
            _print_result(result)
        if len(entries) > 1 or models_file:
            _print_comparison(Path(values["out"]))

    def _print_result(result) -> None:
        if result.extras.get("rank"):  # torchrun: only rank 0 reports
            return
        man = result.extras["manifest"]
        click.echo(
            f"\n{man['probe']['name']} on {man['model']['spec']} | data {man['data']['spec']} | "
            f"{man['decomposer']['name']} {man['decomposer']['options'] or ''} | rescale {man['rescale']['policy']}".replace(" {}", "")
        )
        click.echo(format_table(result))
        out = Path(result.extras["out_dir"])
        names = sorted(p.name for p in out.iterdir() if p.is_file()) if out.is_dir() else []
        shown = ", ".join(names[:6]) + (f", ... ({len(names)} files)" if len(names) > 6 else "")
        click.echo(f"\nresults in {out}/ ({shown or 'no files'})")

    def _print_comparison(root: Path) -> None:
        from .report import comparison_rows

        header, rows = comparison_rows([root])
        if rows:
            click.echo(f"\nthe study, ranked ({root}/; freqprobe report {root} --out study.html for the page):")
            click.echo(format_rows(header, rows))

    params = [DeclaredOption(o, pm) for o in opts.values()] + [_quiet()]
    return click.Command("run", callback=callback, params=params,
                         help="Run a probe (default lfc-hfc) and write summary.csv, samples.csv, plots and manifest.json.")


# ----------------------------------------------------------------------------- decompose
def _decompose_command(pm: Any) -> click.Command:
    opts = collect_options(pm, "decompose")

    @click.pass_obj
    def callback(app: CommandContext, quiet: bool, **kw: Any) -> None:
        _decompose(app.for_command(quiet=quiet), RunConfig(_values(opts, kw), opts))

    params = [DeclaredOption(o, pm) for o in opts.values()] + [_quiet()]
    return click.Command("decompose", callback=callback, params=params, help=(
        "Export a decomposed data set: FILE.npz (x, y, low_r8, high_r8, ...) or a folder of PNGs per component.\n\n"
        "Data whose images differ in size (e.g. a detection data set) is exported to a folder: one float32 .npy\n"
        "per image and component (npy/low_r128/STEM.npy), PNGs for viewing (png-minmax/...) and original/STEM.png."))


def _decompose(app: CommandContext, c: RunConfig) -> None:
    from .errors import UserFacingError
    from .export import NPZ_NEEDS_ONE_SIZE, export_images, export_npz, export_png, yields_image_lists
    from .runner import check_image_size, check_out_dir, check_seed, get_decomposer, open_data, parse_params, resolve_device

    pm = app.pm
    if c.batch_size is not None and c.batch_size < 1:
        raise UserFacingError("--batch-size must be at least 1")
    if c.limit is not None and c.limit < 1:
        raise UserFacingError("--limit must be at least 1")
    check_image_size(c.image_size)
    check_seed(c.seed)
    device = resolve_device(c.device)  # an unavailable --device is refused before anything is read
    from .runner import data_name

    c.check_applicable(decomposer=c.decomposer, dataset=data_name(c.data))
    c.check_values(pm)
    dec = get_decomposer(c.decomposer, pm, **{**dict(c.decomposer_options or {}), **c.routed("decomposer", c.decomposer)})
    with app.warnings_as_lines():  # e.g. duplicate radii dropped
        params = dec.check_params(parse_params(c.params))
    out = Path(c.out)
    as_npz = out.suffix == ".npz"
    if as_npz and out.exists():
        raise UserFacingError(f"{out} already exists{' (a finished export: nothing to resume)' if c.resume else ''}; "
                              "pass another --out or remove it")
    if not as_npz:
        check_out_dir(out)
    if not out.parent.exists():
        raise UserFacingError(f"folder {out.parent} does not exist; create it or choose another --out")
    rescale_name = c.rescale or ("none" if as_npz else "minmax")
    rescale = registry.get_class("rescale", rescale_name, pm)()
    with app.warnings_as_lines():
        data = open_data(c.data, root=c.data_root, split=c.split, image_size=c.image_size, seed=c.seed, class_map=c.class_map,
                         options=c.routed("dataset", data_name(c.data)), pm=pm)
    per_image = yields_image_lists(data)
    if per_image and as_npz:
        raise UserFacingError(f"cannot write {out.name}: {data.name} data: {NPZ_NEEDS_ONE_SIZE}")
    batch_size = c.batch_size or getattr(data, "default_batch_size", None) or 256
    n = len(data) if c.limit is None else min(c.limit, len(data))
    common = dict(limit=n, batch_size=batch_size, device=device, progress=app.progress("decompose", n), resume=c.resume,
                  announce=app.say, resume_hint=app.resume_hint(), workers=c.workers)
    with app.warnings_as_lines(), app.stop_on_signals():
        if as_npz:
            keys = export_npz(data, dec, params, out, rescale=None if rescale_name == "none" else rescale, **common)
        elif per_image:
            keys = export_images(data, dec, params, out, rescale=rescale, **common)
        else:
            keys = export_png(data, dec, params, out, rescale=rescale, **common)
    click.echo(f"wrote {out} ({n} samples; {', '.join(keys)})")


# ----------------------------------------------------------------------------- list, plugins, report
@click.command("list")
@click.argument("kind", required=False)
@click.argument("pattern", required=False, default="*")
@click.pass_obj
def list_cmd(app: CommandContext, kind: str | None, pattern: str) -> None:
    """List registered components: decomposers, probes, models, adapters, datasets, rescale, metrics, attacks, transforms."""
    from .errors import UnknownNameError

    pm = app.pm
    registry.check_all(pm)  # skipped plugins and classes are warned about (once per process)
    kinds = list(registry.KINDS)
    if kind is not None and kind not in registry.KINDS:
        alias = {"model-sources": "models", "data": "datasets", "rescale-policies": "rescale"}.get(kind)
        if alias is None:
            raise UnknownNameError("kind", kind, kinds)
        kind = alias
    for k in [kind] if kind else kinds:
        entries = registry.list_entries(k, pattern, pm)
        if not kind:
            click.echo(f"{k}:")
        if not entries:
            click.echo("  (none)" if not kind else f"no {k} match {pattern!r}")
            continue
        w = max(len(e.name) for e in entries)
        wp = max(len(e.plugin) for e in entries)
        for e in entries:
            click.echo(f"{'  ' if not kind else ''}{e.name.ljust(w)}  {e.plugin.ljust(wp)}  {e.summary}")


@click.command()
@click.option("--all", "show_all", is_flag=True, help="Include the built-in plugins.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def plugins(app: CommandContext, show_all: bool, as_json: bool) -> None:
    """Show installed plugins, their distributions and hooks (and any that failed to load)."""
    pm = app.pm
    for command in ("run", "decompose"):  # declared options are part of what a plugin can get wrong
        collect_options(pm, command)
    items = list_plugins(pm, include_builtins=show_all)
    load_errors = pm.load_errors
    disabled = sorted(getattr(pm, "disabled", ()))
    if as_json:
        errors = [e.as_dict() for e in load_errors]
        click.echo(json.dumps({"plugins": items, "errors": errors, "disabled": disabled}, indent=2))
        return
    if not items:
        click.echo("no third-party plugins installed" + ("" if show_all else " (use --all to show built-ins)"))
    for it in items:
        click.echo(f"{it['name']}  ({it['dist']})\n    hooks: {', '.join(it['hooks'])}")
    if disabled:
        click.echo(f"switched off: {', '.join(disabled)}")
    for e in load_errors:
        click.echo(f"failed: {e.message()}", err=True)


@click.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .html file to write (one self-contained page).")
@click.option("--title", help="The page title (default: freqprobe report).")
@click.pass_obj
def report(app: CommandContext, run_dirs: tuple[str, ...], out: str, title: str | None) -> None:
    """One self-contained HTML page summarising run folders (probe runs, and the folders plugins write)."""
    from .report import write_report

    path = write_report(run_dirs, out, title=title, pm=app.pm)
    click.echo(f"wrote {path} ({len(run_dirs)} folder{'s' if len(run_dirs) != 1 else ''})")


# ----------------------------------------------------------------------------- the group
def _root(pm: Any) -> click.Group:
    @click.pass_context
    def callback(ctx: click.Context, verbose: int, plugin_switches: tuple[str, ...]) -> None:
        logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2), format="%(levelname)s %(name)s: %(message)s")
        if ctx.obj is None:
            ctx.obj = CommandContext(pm)

    params = [
        click.Option(["-v", "--verbose"], count=True,
                     help="More log output (-vv for debug, and the traceback behind a plugin's failure)."),
        click.Option(["-p", "plugin_switches"], multiple=True, metavar="no:NAME",
                     help="Switch off the plugin NAME before plugins load (repeatable), like FREQPROBE_DISABLE_PLUGINS=NAME."),
    ]
    group = click.Group("freqprobe", callback=callback, params=params, context_settings={"help_option_names": ["-h", "--help"]},
                        help="Measure how image models rely on low- and high-frequency components (Wang et al., CVPR 2020).")
    click.version_option(package_name="freqprobe")(group)
    return group


def build_cli(pm: Any = None, *, plugin_commands: bool = True) -> click.Group:
    """The ``freqprobe`` group for the plugin manager ``pm``: the core commands, then the plugins' (``register_commands``)."""
    pm = pm if pm is not None else default_plugin_manager()
    group = _root(pm)
    for cmd in (_run_command(pm), _decompose_command(pm), list_cmd, plugins, report):
        group.add_command(cmd)
    if plugin_commands:
        add_plugin_commands(group, pm)
    return group


def add_plugin_commands(group: click.Group, pm: Any, *, only=None) -> dict[str, str]:
    """Each plugin's ``register_commands`` on its own: one that raises, or replaces a core command, is recorded and skipped.

    ``only(plugin_name)`` may choose which plugins are asked. Returns the plugin each new command came from.
    """
    from .manager import contained, failure_line
    from .plugins import LoadError, is_builtin

    core = {name: cmd for name, cmd in group.commands.items() if name in CORE_COMMANDS}
    origin: dict[str, str] = {}
    for impl in reversed(pm.hook.register_commands.get_hookimpls()):
        name = pm.get_name(impl.plugin)
        if only is not None and not only(name):
            continue
        before = dict(group.commands)
        with contained() as call:  # a plugin's command registration must not break the CLI (sys.exit included)
            impl.function(**({"cli": group} if "cli" in impl.argnames else {}))
        if call.error is not None:
            if is_builtin(name):
                raise call.error
            pm.record_error(LoadError(name, pm.dist_of(name), f"register_commands() raised {failure_line(call.error)}; "
                                      "its commands may be missing", "register_commands"))
        for cname, cmd in core.items():
            if group.commands.get(cname) is not cmd:
                group.add_command(cmd, cname)
                pm.record_error(LoadError(name, pm.dist_of(name), f"register_commands() replaced the core command "
                                          f"'{cname}'; the core command is kept", "register_commands"))
        for cname, cmd in group.commands.items():
            if cname not in core and before.get(cname) is not cmd:
                origin[cname] = name
    return origin



def format_table(result) -> str:
    """The summary as aligned text: one row per variant (and extra columns such as attack/eps), one column per parameter.

    Score rows (``hfc-reliance``, no parameter) are not table cells: each is a line under the table,
    ``HFC-reliance (accuracy, r 4–16): 0.733``, with the radius range it was computed over.
    """
    from .scores import VARIANT as SCORE_VARIANT

    rows = [r for r in result.summary if r.get("variant") != SCORE_VARIANT]
    table = _format_rows(result, rows) if rows else ""
    return "\n\n".join(t for t in (table, "\n".join(score_lines(result))) if t) or "(no results)"


def format_rows(header: list[str], rows: list[list[Any]]) -> str:
    """A plain table: text cells as they are, numbers with four decimals, empty cells blank; columns aligned."""
    cells = [[str(h) for h in header]] + [["" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in r]
                                          for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in cells)


def score_lines(result) -> list[str]:
    """One line per HFC-reliance score of ``result`` (from ``extras["hfc_reliance"]``, else its summary rows)."""
    from .scores import VARIANT as SCORE_VARIANT, format_score

    pn = result.param_name or "param"
    scores = result.extras.get("hfc_reliance")
    if scores is not None:
        return [format_score(s, pn) for s in scores]
    lines = []
    for r in result.summary:  # no details kept: the score without its range
        if r.get("variant") == SCORE_VARIANT:
            t = f", transform {r['transform']}" if r.get("transform") else ""
            lines.append(f"HFC-reliance ({r['metric']}{t}): {float(r['value']):.3f}")
    return lines


def _format_rows(result, rows) -> str:
    from .tables import fmt_param

    extra = list(result.extras.get("extra_columns") or [])
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    metrics.sort(key=lambda m: m != "accuracy")
    params = list(dict.fromkeys(r["param"] for r in rows if r.get("param") is not None))
    pn = result.param_name or "param"
    lines = []
    if len(metrics) > 4:  # many numbers per variant (a detection metric's twelve): one row per variant, one column per metric
        cells: dict = {}
        for r in rows:
            label = " ".join([r["variant"]] + ([f"{pn}={fmt_param(r['param'])}"] if r.get("param") is not None else [])
                             + [f"{c}={fmt_param(r.get(c))}" for c in extra if r.get(c) is not None])
            cells.setdefault(label, {})[r["metric"]] = r["value"]
        table = [[f"(n={rows[0]['n']})", *metrics]]
        table += [[label, *(f"{vals[m]:.4f}" if m in vals else "" for m in metrics)] for label, vals in cells.items()]
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        return "\n".join("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)).rstrip()
                         for row in table)
    for metric in metrics:
        mrows = [r for r in rows if r["metric"] == metric]
        header = [f"{metric} (n={mrows[0]['n']})"] + ([f"{pn}={fmt_param(p)}" for p in params] or [""])
        table = [header]
        labels: dict = {}
        for r in mrows:
            key = (r["variant"], *(r.get(c) for c in extra))
            label = " ".join([r["variant"]] + [f"{c}={fmt_param(r.get(c))}" for c in extra if r.get(c) is not None])
            cells = labels.setdefault(key, [label] + [""] * max(1, len(params)))
            col = 1 + (params.index(r["param"]) if r.get("param") is not None else 0)
            cells[col] = f"{r['value']:.4f}"
        table += list(labels.values())
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            lines.append("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)).rstrip())
        lines.append("")
    return "\n".join(lines).rstrip()


def _plugin_switches(args: list[str]) -> tuple[list[str], str | None]:
    """``freqprobe [-v] [-p no:NAME]... COMMAND ...``: the NAMEs switched off, and the command (read before click parses)."""
    names: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--" or not a.startswith("-"):
            return names, (a if a != "--" else None)
        if a == "-p" or (a.startswith("-p") and not a.startswith("--")):
            value = a[2:] if a != "-p" else (args[i + 1] if i + 1 < len(args) else "")
            i += 1 if a != "-p" else 2
            if not value.startswith("no:") or not value[3:]:
                raise click.UsageError(f"-p {value!r}: use -p no:NAME to switch the plugin NAME off")
            names.append(value[3:])
            continue
        i += 1
    return names, None


def _show_plugin_warnings(quiet: bool):
    """Plugin warnings as ``warning: ...`` lines on stderr (the plugin manager warns about each problem once)."""
    from .errors import PluginWarning

    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, PluginWarning):
            if not quiet:
                click.echo(f"warning: {message}", err=True)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def switched_off_option(pm: Any, flag: str, command: str) -> str | None:
    """The plugin, switched off in ``pm``, that declares ``flag`` for ``command`` (asked without registering it), or None."""
    import importlib.metadata

    from .manager import contained
    from .options import OptionParser

    for ep in importlib.metadata.entry_points(group="freqprobe"):
        if ep.name not in getattr(pm, "disabled", ()):
            continue
        parser = OptionParser(ep.name)
        with contained() as call:  # a plugin that is off because it is broken (even one that exits): no name to give
            hook = getattr(ep.load(), "add_options", None)
            if hook is not None:
                hook(parser=parser)
        if call.error is not None:
            continue
        if any(flag in o.flags or flag == o.secondary for o in parser.options if command in o.commands):
            return ep.name
    return None


def _no_such_option(exc: click.NoSuchOption, pm: Any) -> str:
    command = exc.ctx.info_name if exc.ctx is not None else ""
    plugin = switched_off_option(pm, exc.option_name, command) if pm is not None else None
    if plugin is None:
        return exc.format_message()
    return (f"{exc.option_name} is an option of the plugin {plugin!r}, which is switched off (-p no:{plugin} or "
            f"FREQPROBE_DISABLE_PLUGINS); switch it back on to use {exc.option_name}")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: freqprobe errors (and a plugin's exceptions) become one-line messages with exit code 2."""
    from .errors import PluginWarning

    args = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    try:
        command = _plugin_switches(args)[1]
    except click.UsageError:
        command = None
    with warnings.catch_warnings():
        warnings.simplefilter("always", PluginWarning)  # the plugin manager itself warns once per problem
        warnings.showwarning = _show_plugin_warnings(quiet=command == "plugins")  # `plugins` lists them itself
        return _main(args)


def _main(args: list[str]) -> int:
    pm = None
    try:
        names, _ = _plugin_switches(args)
        pm = default_plugin_manager(disable=names)
        group = build_cli(pm)
        group.main(args=args, prog_name="freqprobe", standalone_mode=False, obj=CommandContext(pm, args))
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.NoSuchOption as exc:
        if exc.ctx is not None:
            click.echo(exc.ctx.get_usage(), err=True)
            click.echo(f"Try '{exc.ctx.command_path} {exc.ctx.help_option_names[0]}' for help.\n", err=True)
        click.echo(f"Error: {_no_such_option(exc, pm)}", err=True)
        return 2
    except click.UsageError as exc:
        exc.show()
        return 2
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except StopRequested as exc:  # SIGINT/SIGTERM: stopped at a batch boundary, state kept for --resume
        click.echo(f"Stopped: {exc}", err=True)
        return exc.exit_code
    except FreqprobeError as exc:
        click.echo(f"Error: {exc}", err=True)
        if exc.__cause__ is not None:  # a plugin's or the model's own exception: its traceback with -vv
            log.debug("the traceback behind it:", exc_info=exc.__cause__)
        return 2
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    except Exception as exc:  # a third-party plugin's exception outside the guarded calls: name the plugin
        from .plugins import attribute

        err = attribute(exc, pm)
        if err is None:
            raise
        click.echo(f"Error: {err}", err=True)
        log.debug("the plugin's traceback:", exc_info=exc)
        return 2


def entry() -> None:  # pragma: no cover - thin wrapper for the console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
