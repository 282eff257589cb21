"""The ``freqprobe`` command line. Only this module turns freqprobe errors into exit codes."""

from __future__ import annotations

import json
import logging
import shlex
import sys
import warnings
from pathlib import Path

import click

from . import registry
from .errors import FreqprobeError
from .journal import StopRequested
from .plugins import default_plugin_manager, list_plugins

log = logging.getLogger("freqprobe")


def _pm():
    return default_plugin_manager()


def _progress_factory(quiet: bool):
    def factory(stage: str, total: int):
        if quiet or total <= 0:
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

    return factory


def _warning_lines():
    """Warnings as ``warning: ...`` lines on stderr (a context manager)."""
    cm = warnings.catch_warnings()

    class _Ctx:
        def __enter__(self):
            cm.__enter__()
            warnings.simplefilter("always")
            warnings.showwarning = lambda m, c, f, l, file=None, line=None: click.echo(f"warning: {m}", err=True)

        def __exit__(self, *exc):
            return cm.__exit__(*exc)

    return _Ctx()


_ARGS: list[str] | None = None


def command_line() -> str:
    """The command being run, as a shell line (``freqprobe run ...``): what manifests record and resume hints repeat."""
    args = _ARGS if _ARGS is not None else sys.argv[1:]
    return "freqprobe " + " ".join(shlex.quote(a) for a in args)


def _say(quiet: bool):
    def say(msg: str) -> None:
        if not quiet:
            click.echo(msg, err=True)

    return say


def format_table(result) -> str:
    """The summary as aligned text: one row per variant (and extra columns such as attack/eps), one column per parameter.

    Score rows (``hfc-reliance``, no parameter) are not table cells: each is a line under the table,
    ``HFC-reliance (accuracy, r 4–16): 0.733``, with the radius range it was computed over.
    """
    from .scores import VARIANT as SCORE_VARIANT

    rows = [r for r in result.summary if r.get("variant") != SCORE_VARIANT]
    table = _format_rows(result, rows) if rows else ""
    return "\n\n".join(t for t in (table, "\n".join(score_lines(result))) if t) or "(no results)"


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
    if len(metrics) > 4:  # many numbers per variant (coco-map's twelve): one row per variant, one column per metric
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="freqprobe")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug, and the traceback behind a plugin's failure).")
@click.option("-p", "plugin_switches", multiple=True, metavar="no:NAME",
              help="Switch off the plugin NAME before plugins load (repeatable), like FREQPROBE_DISABLE_PLUGINS=NAME.")
def cli(verbose: int, plugin_switches: tuple[str, ...]) -> None:
    """Measure how image models rely on low- and high-frequency components (Wang et al., CVPR 2020)."""
    logging.basicConfig(level=logging.WARNING - 10 * min(verbose, 2), format="%(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--model", "model", required=True, help="timm:NAME, torchvision:NAME, torchscript:FILE, path/to/file.py:callable or package.module:callable.")
@click.option("--probe", default="lfc-hfc", show_default=True, help="Probe to run (see `freqprobe list probes`).")
@click.option("--data", default="synth10", show_default=True, help="synth10 (embedded), cifar10, cifar100, mnist, fashion-mnist, npz:PATH, imagefolder:PATH.")
@click.option("--data-root", type=click.Path(file_okay=False), help="Where torchvision data sets are (or get downloaded).")
@click.option("--image-size", type=int, help="Resize+centre-crop imagefolder images to this size.")
@click.option("--class-map", metavar="FILE|imagenet", help="imagefolder: class folder -> label index: FILE.json {folder: index}, a text file of folder names (line i = index i), or 'imagenet' (WordNet-id folders -> ImageNet-1k indices).")
@click.option("--limit", type=int, help="Use only the first N samples.")
@click.option("--decomposer", default="fft-radial", show_default=True, help="fft-radial or svd (see `freqprobe list decomposers`).")
@click.option("--radii", "--params", "params", help="Comma-separated radii (fft-radial) or ranks (svd); default 4,8,12,16 / 1,2,4,8.")
@click.option("--rule", type=click.Choice(["exclusive", "inclusive"]), help="fft-radial boundary: distance < r (exclusive, default; the authors' code) or <= r (the paper's text).")
@click.option("--decomposer-opt", multiple=True, metavar="KEY=VALUE", help="Extra decomposer option (repeatable).")
@click.option("--rescale", default="none", show_default=True, help="How out-of-range component images are fed: none, clip, minmax, paper.")
@click.option("--metric", "metrics", multiple=True, help="Metric(s) to compute (default: accuracy).")
@click.option("--transform", "transforms", multiple=True, metavar="NAME[:K=V,...]", help="Model transform(s) applied before probing.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Weights: state_dict (.pt/.pth/.th/.bin), .safetensors or TorchScript.")
@click.option("--pretrained", is_flag=True, help="Ask the model source (timm/torchvision) for pretrained weights (needs network or a cache).")
@click.option("--trust-checkpoint", is_flag=True, help="Allow checkpoints holding pickled Python objects (can run code).")
@click.option("--non-strict", is_flag=True, help="Ignore missing/unexpected checkpoint keys (shape conflicts still fail).")
@click.option("--model-arg", multiple=True, metavar="KEY=VALUE", help="Keyword argument for the model constructor (repeatable).")
@click.option("--mean", help="Override normalisation mean, e.g. 0.485,0.456,0.406.")
@click.option("--std", help="Override normalisation std, e.g. 0.229,0.224,0.225.")
@click.option("--fit-epochs", type=int, help="Epochs when fitting a model that has no weights (default: the data set's).")
@click.option("--fit-lr", type=float, help="Adam learning rate when fitting (default: the data set's).")
@click.option("--no-fit", is_flag=True, help="Probe a model without weights as is, instead of fitting it first.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--batch-size", type=int, help="Images read per batch (each batch is evaluated in every variant); default 128, 8 for COCO data.")
@click.option("--forward-batch", type=int, help="Images per forward pass; the variants of a batch are concatenated and cut into equal chunks of at most this (default: the batch size on CPU; on CUDA all variants of a batch at once, up to 256 MiB of images).")
@click.option("--precision", type=click.Choice(["fp32", "tf32", "bf16", "fp16"]), default="fp32", show_default=True,
              help="Model arithmetic: exact float32 (TF32 off), TF32 (CUDA), or bf16/fp16 autocast.")
@click.option("--channels-last/--no-channels-last", default=None, help="Feed images in channels_last memory format (default: on).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--probe-opt", multiple=True, metavar="KEY=VALUE", help="Option of the probe (repeatable), e.g. gallery_size=4; an unknown key lists the probe's options.")
@click.option("--gallery-size", type=int, help="Shorthand for --probe-opt gallery_size=N (Figure-2 examples kept per parameter; lfc-hfc default 8).")
@click.option("--out", type=click.Path(), help="Output folder (default: a new dated folder under runs/).")
@click.option("--attack", "attacks", multiple=True, metavar="NAME[:K=V,...]",
              help="Attack for --probe robustness (repeatable), e.g. fgsm, pgd:steps=10,random_start=false (see `freqprobe list attacks`).")
@click.option("--eps", help="Attack budgets for --probe robustness, comma-separated in [0,1] pixel units, e.g. 0.03,0.06,0.09 or 8/255.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run at --out from its last checkpoint (same options).")
@click.option("--allow-nonfinite", is_flag=True, help="Finish even when the model returns NaN/inf, counting such samples in the summary (default: fail).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or status lines.")
def run(**kw) -> None:
    """Run a probe (default lfc-hfc) and write summary.csv, samples.csv, plots and manifest.json."""
    from .runner import parse_kv, run as run_probe

    dopts = parse_kv(kw["decomposer_opt"], "--decomposer-opt")
    if kw["rule"]:
        dopts["rule"] = kw["rule"]
    popts = parse_kv(kw["probe_opt"], "--probe-opt")
    if kw["gallery_size"] is not None:
        popts["gallery_size"] = kw["gallery_size"]
    quiet = kw["quiet"]
    from .journal import graceful_stop

    with warnings.catch_warnings(), graceful_stop(lambda m: click.echo(m, err=True)):
        warnings.simplefilter("always")
        warnings.showwarning = lambda m, c, f, l, file=None, line=None: click.echo(f"warning: {m}", err=True)
        result = run_probe(
            kw["model"],
            probe=kw["probe"],
            data=kw["data"],
            decomposer=kw["decomposer"],
            params=kw["params"],
            decomposer_options=dopts,
            rescale=kw["rescale"],
            metrics=kw["metrics"] or None,
            transforms=kw["transforms"],
            checkpoint=kw["checkpoint"],
            pretrained=kw["pretrained"],
            trust_checkpoint=kw["trust_checkpoint"],
            strict=not kw["non_strict"],
            model_args=parse_kv(kw["model_arg"], "--model-arg"),
            mean=kw["mean"],
            std=kw["std"],
            data_root=kw["data_root"],
            image_size=kw["image_size"],
            class_map=kw["class_map"],
            limit=kw["limit"],
            device=kw["device"],
            batch_size=kw["batch_size"],
            forward_batch=kw["forward_batch"],
            precision=kw["precision"],
            channels_last=kw["channels_last"],
            seed=kw["seed"],
            fit_epochs=kw["fit_epochs"],
            fit_lr=kw["fit_lr"],
            fit=False if kw["no_fit"] else None,
            out=kw["out"],
            resume=kw["resume"],
            allow_nonfinite=kw["allow_nonfinite"],
            attacks=kw["attacks"],
            eps=kw["eps"],
            probe_options=popts,
            command=command_line(),
            progress=_progress_factory(quiet),
            announce=_say(quiet),
        )
    if result.extras.get("rank"):  # torchrun: only rank 0 reports
        return
    man = result.extras["manifest"]
    click.echo(
        f"\n{man['probe']['name']} on {man['model']['spec']} | data {man['data']['spec']} | "
        f"{man['decomposer']['name']} {man['decomposer']['options'] or ''} | rescale {man['rescale']['policy']}".replace(" {}", "")
    )
    click.echo(format_table(result))
    click.echo(f"\nresults in {result.extras['out_dir']}/ (summary.csv, samples.csv, manifest.json, plots)")


@cli.command()
@click.option("--data", default="synth10", show_default=True, help="Data spec, as for `run`.")
@click.option("--data-root", type=click.Path(file_okay=False))
@click.option("--image-size", type=int)
@click.option("--class-map", metavar="FILE|imagenet", help="imagefolder: class folder -> label index (as for `run`).")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option("--limit", type=int, help="Only the first N samples.")
@click.option("--decomposer", default="fft-radial", show_default=True)
@click.option("--radii", "--params", "params", help="Comma-separated radii / ranks.")
@click.option("--rule", type=click.Choice(["exclusive", "inclusive"]))
@click.option("--decomposer-opt", multiple=True, metavar="KEY=VALUE")
@click.option("--rescale", default=None, help="Rescale policy for the components (npz default: none; PNG default: minmax). "
              "For images of different sizes it applies to the PNGs only (folder png-NAME); the .npy arrays are never rescaled.")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=int, help="Images read per batch; default the data's own (8 for COCO data), else 256.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(), help="FILE.npz for arrays, or a folder for PNG images "
              "(images of different sizes, e.g. COCO: a folder only, with npy/, png-RESCALE/ and original/).")
@click.option("--resume", is_flag=True, help="Continue the interrupted export to --out from its last finished batch (same options).")
@click.option("-q", "--quiet", is_flag=True)
def decompose(**kw) -> None:
    """Export a decomposed data set: FILE.npz (x, y, low_r8, high_r8, ...) or a folder of PNGs per component.

    Data whose images differ in size (coco:IMAGES:ANN.json) is exported to a folder: one float32 .npy
    per image and component (npy/low_r128/STEM.npy), PNGs for viewing (png-minmax/...) and original/STEM.png.
    """
    from .errors import UserFacingError
    from .export import NPZ_NEEDS_ONE_SIZE, export_images, export_npz, export_png, yields_image_lists
    from .runner import check_image_size, check_seed, get_decomposer, open_data, parse_kv, parse_params, resolve_device

    pm = _pm()
    if kw["batch_size"] is not None and kw["batch_size"] < 1:
        raise UserFacingError("--batch-size must be at least 1")
    if kw["limit"] is not None and kw["limit"] < 1:
        raise UserFacingError("--limit must be at least 1")
    check_image_size(kw["image_size"])
    check_seed(kw["seed"])
    resolve_device(kw["device"])  # an unavailable --device is refused before anything is read
    dopts = parse_kv(kw["decomposer_opt"], "--decomposer-opt")
    if kw["rule"]:
        dopts["rule"] = kw["rule"]
    dec = get_decomposer(kw["decomposer"], pm, **dopts)
    with _warning_lines():  # e.g. duplicate radii dropped
        params = dec.check_params(parse_params(kw["params"]))
    out = Path(kw["out"])
    as_npz = out.suffix == ".npz"
    if as_npz and out.exists():
        raise UserFacingError(f"{out} already exists{' (a finished export: nothing to resume)' if kw['resume'] else ''}; "
                              "pass another --out or remove it")
    if not as_npz:
        from .runner import check_out_dir

        check_out_dir(out)
    if not out.parent.exists():
        raise UserFacingError(f"folder {out.parent} does not exist; create it or choose another --out")
    rescale_name = kw["rescale"] or ("none" if as_npz else "minmax")
    rescale = registry.get_class("rescale", rescale_name, pm)()
    device = resolve_device(kw["device"])
    with _warning_lines():
        data = open_data(kw["data"], root=kw["data_root"], split=kw["split"], image_size=kw["image_size"], seed=kw["seed"],
                         class_map=kw["class_map"], pm=pm)
    per_image = yields_image_lists(data)
    if per_image and as_npz:
        raise UserFacingError(f"cannot write {out.name}: {data.name} data: {NPZ_NEEDS_ONE_SIZE}")
    batch_size = kw["batch_size"] or getattr(data, "default_batch_size", None) or 256
    n = len(data) if kw["limit"] is None else min(kw["limit"], len(data))
    prog = _progress_factory(kw["quiet"])("decompose", n)
    from .journal import graceful_stop

    cmd = command_line()
    common = dict(limit=n, batch_size=batch_size, device=device, progress=prog, resume=kw["resume"],
                  announce=_say(kw["quiet"]), resume_hint=cmd if "--resume" in cmd else cmd + " --resume")
    with warnings.catch_warnings(), graceful_stop(lambda m: click.echo(m, err=True)):
        warnings.simplefilter("always")
        warnings.showwarning = lambda m, c, f, l, file=None, line=None: click.echo(f"warning: {m}", err=True)
        if as_npz:
            keys = export_npz(data, dec, params, out, rescale=None if rescale_name == "none" else rescale, **common)
        elif per_image:
            keys = export_images(data, dec, params, out, rescale=rescale, **common)
        else:
            keys = export_png(data, dec, params, out, rescale=rescale, **common)
    click.echo(f"wrote {out} ({n} samples; {', '.join(keys)})")


@cli.command("list")
@click.argument("kind", required=False)
@click.argument("pattern", required=False, default="*")
def list_cmd(kind: str | None, pattern: str) -> None:
    """List registered components: decomposers, probes, models, adapters, datasets, rescale, metrics, attacks, transforms."""
    from .errors import UnknownNameError

    pm = _pm()
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


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Include the built-in plugins.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(show_all: bool, as_json: bool) -> None:
    """Show installed plugins, their distributions and hooks (and any that failed to load)."""
    pm = _pm()
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


@cli.command("report")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .html file to write (one self-contained page).")
@click.option("--title", help="The page title (default: freqprobe report).")
def report(run_dirs: tuple[str, ...], out: str, title: str | None) -> None:
    """One self-contained HTML page summarising run folders (probe runs, training runs, grids, table2)."""
    from .report import write_report

    path = write_report(run_dirs, out, title=title)
    click.echo(f"wrote {path} ({len(run_dirs)} folder{'s' if len(run_dirs) != 1 else ''})")


def _add_plugin_commands() -> None:
    """Each plugin's ``register_commands`` on its own: one that raises, or replaces a core command, is recorded and skipped."""
    from .plugins import LoadError, is_builtin

    pm = _pm()
    core = {name: cmd for name, cmd in cli.commands.items() if name in _CORE_COMMANDS}
    for impl in reversed(pm.hook.register_commands.get_hookimpls()):
        name = pm.get_name(impl.plugin)
        try:
            impl.function(**({"cli": cli} if "cli" in impl.argnames else {}))
        except Exception as exc:  # a plugin's command registration must not break the CLI
            if is_builtin(name):
                raise
            text = str(exc).strip().splitlines()
            pm.record_error(LoadError(name, pm.dist_of(name), f"register_commands() raised {type(exc).__name__}"
                                      f"{': ' + text[0] if text else ''}; its commands may be missing", "register_commands"))
        for cname, cmd in core.items():
            if cli.commands.get(cname) is not cmd:
                cli.add_command(cmd, cname)
                pm.record_error(LoadError(name, pm.dist_of(name), f"register_commands() replaced the core command "
                                          f"'{cname}'; the core command is kept", "register_commands"))


_CORE_COMMANDS = ("run", "decompose", "list", "plugins", "report")


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


def _load_plugins(args: list[str]) -> None:
    """Build the plugin manager (without the plugins ``-p no:NAME`` switches off) and add plugin commands."""
    names, _ = _plugin_switches(args)
    default_plugin_manager(disable=names)
    _add_plugin_commands()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: freqprobe errors (and a plugin's exceptions) become one-line messages with exit code 2."""
    from .errors import PluginWarning

    global _ARGS
    args = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    _ARGS = args
    try:
        command = _plugin_switches(args)[1]
    except click.UsageError:
        command = None
    with warnings.catch_warnings():
        warnings.simplefilter("always", PluginWarning)  # the plugin manager itself warns once per problem
        warnings.showwarning = _show_plugin_warnings(quiet=command == "plugins")  # `plugins` lists them itself
        return _main(args)


def _main(args: list[str]) -> int:
    try:
        _load_plugins(args)
        cli.main(args=args, prog_name="freqprobe", standalone_mode=False)
        return 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
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
        from . import plugins as _plugins
        from .guard import attribute

        err = attribute(exc, _plugins._default)
        if err is None:
            raise
        click.echo(f"Error: {err}", err=True)
        log.debug("the plugin's traceback:", exc_info=exc)
        return 2


def entry() -> None:  # pragma: no cover - thin wrapper for the console script
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
