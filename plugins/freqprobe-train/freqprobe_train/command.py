"""The ``freqprobe train`` command (added to the CLI through the ``register_commands`` hook)."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import click

from freqprobe import UnknownNameError, UserFacingError
from freqprobe.plugin import ListedOption

from .settings import PRESETS, TrainSettings, check_settings

#: the fields a --grid or a config file may set (the command-line names with - for _)
FIELDS = {f.name for f in dataclasses.fields(TrainSettings)} - {"out"}


def _value(key: str, raw: Any) -> Any:
    """A grid value or config value as the field's type."""
    if key == "radii":
        return tuple(float(v) for v in (raw.split(",") if isinstance(raw, str) else raw))
    if isinstance(raw, str):
        from freqprobe.plugin import parse_kv, parse_numbers

        if key == "eps":
            return parse_numbers(raw, "--eps")[0]
        return parse_kv([f"v={raw}"], f"value of {key}")["v"]
    return raw


def parse_grid(items: tuple[str, ...]) -> dict[str, list]:
    """``("preset=vanilla,mixup", "batch_size=50,500")`` -> ``{"preset": [...], "batch_size": [50, 500]}``."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, vals = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not vals:
            raise UserFacingError(f"malformed --grid {item!r}: use KEY=V1,V2 (e.g. preset=vanilla,mixup or batch_size=50,500)")
        if key not in FIELDS:
            raise UnknownNameError("--grid setting", key, sorted(FIELDS))
        if key == "train_on":
            values = [None if v in ("none", "original") else v for v in vals.split(",")]
        elif key == "radii":
            raise UserFacingError("--grid radii is not a setting to compare: the tracked radii are the same for every run")
        else:
            values = [_value(key, v) for v in vals.split(",")]
        if any(v == "" for v in vals.split(",")):
            raise UserFacingError(f"malformed --grid {item!r}: an empty value; use KEY=V1,V2 (e.g. batch_size=50,500)")
        if key == "preset":
            for v in values:
                if v not in PRESETS:
                    raise UnknownNameError("preset", v, list(PRESETS))
        grid[key] = values
    return grid


def load_config(path: str) -> tuple[dict, dict]:
    """A JSON or TOML config: settings, and a ``grid`` table of lists."""
    p = Path(path)
    if not p.is_file():
        raise UserFacingError(f"config file not found: {p}")
    try:
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(p.read_text())
        else:
            data = json.loads(p.read_text())
    except (ValueError, OSError) as exc:
        raise UserFacingError(f"could not read config {p}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserFacingError(f"config {p} must hold a table of settings (and an optional 'grid' table)")
    grid = data.pop("grid", {}) or {}
    if not isinstance(grid, dict):
        raise UserFacingError(f"'grid' in {p.name} must be a table of lists, e.g. grid = {{ preset = [\"vanilla\", \"mixup\"] }}")
    for key, vals in grid.items():
        if isinstance(vals, list) and not vals:
            raise UserFacingError(f"grid {key} in {p.name} is an empty list; give at least one value, or leave {key} out")
    for key in list(data) + list(grid):
        if key.replace("-", "_") not in FIELDS:
            raise UnknownNameError(f"setting in {p.name}", key, sorted(FIELDS))
    settings = {k.replace("-", "_"): _value(k.replace("-", "_"), v) for k, v in data.items()}
    grid = {k.replace("-", "_"): [_value(k.replace("-", "_"), v) if not isinstance(v, (int, float, bool)) else v for v in
                                  (vals if isinstance(vals, list) else [vals])] for k, vals in grid.items()}
    return settings, grid


@click.command("train")
@click.option("--model", cls=ListedOption, help="Model to train from fresh weights: {models} (paper: lenet, alexnet, vgg11, vgg16, "
              "resnet18, resnet20).")
@click.option("--data", cls=ListedOption, help="Training data: its train split ({datasets}; imagefolder: with train/); data "
              "with one split (npz:) with --holdout or --test-data.")
@click.option("--data-root", type=click.Path(file_okay=False))
@click.option("--test-data", help="Test data (default: the data's test split).")
@click.option("--holdout", type=float, help="Split the data's one split: this fraction (seeded by --seed) is the test set.")
@click.option("--limit", type=int, help="Train on the first N training samples.")
@click.option("--test-limit", type=int, help="Test on the first N test samples.")
@click.option("--epochs", type=int, help="Epochs (default 10; the paper: 100, 300 for shuffled labels). With --resume: train up to this many.")
@click.option("--optimizer", help="adam (default), sgd, adagrad, adadelta, rmsprop.")
@click.option("--lr", type=float, help="Learning rate (default 1e-4).")
@click.option("--batch-size", type=int, help="Batch size (default 100).")
@click.option("--init", help="xavier (default: the paper's) or default (the model's own initialisation).")
@click.option("--seed", type=int, help="Seed of data order, initialisation, holdout, shuffled labels, mixup, attacks (default 0).")
@click.option("--preset", help=f"A heuristic of §5.1: {', '.join(PRESETS)}.")
@click.option("--dropout", type=float, help="Dropout p on fully connected layers (paper: 0.5).")
@click.option("--mixup", type=float, help="Mixup alpha (paper: 0.5).")
@click.option("--bn/--no-bn", default=None, help="BatchNorm in the paper's architectures (default off).")
@click.option("--adversarial", metavar="ATTACK[:K=V]", cls=ListedOption,
              help="Adversarial training with a registered attack ({attacks}), e.g. pgd or pgd:steps=7.")
@click.option("--eps", help="Adversarial training budget (default 8/255).")
@click.option("--labels", help="natural (default) or shuffled (M_shuffle: labels permuted across samples with --seed).")
@click.option("--train-on", metavar="low:R|high:R", help="Train on the low or high part at radius R instead of the originals (Table 1).")
@click.option("--rescale", cls=ListedOption, help="How a component is fed when training on it ({rescale}; default minmax: the "
              "standard pixel scale).")
@click.option("--radii", help="Tracked radii (default 4,8,12,16).")
@click.option("--track-samples", type=int, help="Images tracked per split (default: 2.5 % of the training set, 100-1000; 0: all).")
@click.option("--track-batch-size", type=int, help="Batch size of the tracking evaluation (default 500).")
@click.option("--model-arg", multiple=True, metavar="KEY=VALUE", help="Keyword argument for the model constructor (repeatable).")
@click.option("--mean", help="Normalise with this mean (default: none, [0,1] pixels as in the paper).")
@click.option("--std", help="Normalise with this std.")
@click.option("--device", help="auto (default), cpu or cuda[:N].")
@click.option("--workers", metavar="N|auto", help="Worker processes that read and decode the training images (0: in this "
              "process; default auto). The run is the same for every N.")
@click.option("--grid", "grid", multiple=True, metavar="KEY=V1,V2", help="Compare settings: one run per combination, e.g. preset=vanilla,dropout,mixup,batchnorm,adversarial or labels=natural,shuffled or train_on=low:4,low:8.")
@click.option("--config", type=click.Path(dir_okay=False), help="A JSON/TOML file of settings and an optional 'grid' table.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder (a grid: one sub-folder per setting).")
@click.option("--resume", is_flag=True, help="Continue after the last finished epoch (also to train more: a larger --epochs).")
@click.option("-q", "--quiet", is_flag=True)
@click.pass_context
def train_command(ctx: click.Context, **kw: Any) -> None:
    """Train with the paper's set-ups and track accuracy on low/high-frequency images after every epoch (§4-5)."""
    from freqprobe.plugin import command_context, torchrun_env

    from freqprobe.plugin import check_workers

    base, grid = _settings_given(ctx, kw)
    workers = check_workers(kw["workers"])  # refused before anything is loaded
    app = command_context(quiet=kw["quiet"])
    settings, names = _runs(base, grid, app.pm)  # every setting of a grid checked, before anything is loaded
    from .train import train  # torch: only now

    out = Path(kw["out"])
    main = (torchrun_env() or (0, 1, 0))[0] == 0  # under torchrun only rank 0 writes and reports
    with app.stop_on_signals():
        if len(settings) == 1 and not grid:
            train(settings[0], out, pm=app.pm, resume=kw["resume"], say=app.say, progress=app.progress,
                  command=app.command_line, workers=workers)
            if main:
                click.echo(f"results in {out}/ (curves.csv, curves.png, model.pt, checkpoints/, manifest.json)")
            return
        if not _train_grid(app, settings, names, out, resume=kw["resume"], main=main, base=base, grid=grid, workers=workers):
            return
    click.echo(f"results in {out}/ (one folder per setting, grid.csv, comparison.png)")


#: the options a command line sets as they are (the others are converted or merged below)
PLAIN_OPTIONS = ("model", "data", "data_root", "test_data", "holdout", "limit", "test_limit", "epochs", "optimizer", "lr",
                 "batch_size", "init", "seed", "preset", "dropout", "mixup", "bn", "adversarial", "labels", "train_on",
                 "rescale", "track_samples", "track_batch_size", "mean", "std", "device")


def _settings_given(ctx: click.Context, kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list]]:
    """The base settings (``--config`` overridden by the command line) and the grid."""
    from freqprobe.plugin import parse_kv

    base: dict[str, Any] = {}
    grid: dict[str, list] = {}
    if kw["config"]:
        base, grid = load_config(kw["config"])
    src = click.core.ParameterSource.COMMANDLINE
    for key in PLAIN_OPTIONS:
        if ctx.get_parameter_source(key) == src and kw[key] is not None:
            base[key] = kw[key]
    if kw["eps"] is not None:
        base["eps"] = _value("eps", kw["eps"])
    if kw["radii"] is not None:
        base["radii"] = _value("radii", kw["radii"])
    if kw["model_arg"]:
        base["model_args"] = {**base.get("model_args", {}), **parse_kv(kw["model_arg"], "--model-arg")}
    grid.update(parse_grid(kw["grid"]))
    for need in ("model", "data"):
        if not base.get(need):
            raise UserFacingError(f"freqprobe train needs --{need} (or '{need}' in --config)")
    return base, grid


def _runs(base: dict[str, Any], grid: dict[str, list], pm: Any = None) -> tuple[list[TrainSettings], list[str]]:
    """One checked :class:`TrainSettings` per grid combination (one without a grid) and their folder names.

    A name says what differs from the vanilla set-up; where that does not tell two settings apart (a
    grid over the seed, the epochs...), the grid's own values are added (``vanilla-seed1``). Two
    settings that are the same run are refused.
    """
    combos = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())] if grid else [{}]
    settings = []
    for combo in combos:
        try:
            s = TrainSettings(**{**base, **combo}).applied()
        except TypeError as exc:  # a value of the wrong kind for a field (a list where a number goes ...)
            raise UserFacingError(f"a setting has a value of the wrong kind ({exc}); check --config and --grid") from None
        check_settings(s, pm)
        settings.append(s)
    from freqprobe.plugin import slug

    plain = [s.name() for s in settings]
    names = list(plain)
    for i, name in enumerate(plain):
        same = [j for j, other in enumerate(plain) if other == name]
        if len(same) > 1:  # the grid keys whose values tell these apart
            keys = [k for k in grid if len({_shown(combos[j][k]) for j in same}) > 1]
            names[i] = "-".join([name] + [slug(f"{k}{_shown(combos[i][k])}", 40) for k in keys])
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserFacingError(f"two grid settings are the same run ({dup}); drop the duplicate value")
    return settings, names


def _shown(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _train_grid(app: Any, settings: list[TrainSettings], names: list[str], out: Path, *, resume: bool, main: bool,
                base: dict[str, Any], grid: dict[str, list], workers: int | None = None) -> bool:
    """Every setting of a grid into its sub-folder, then ``grid.csv``, ``comparison.png``, ``grid.json`` (rank 0: True)."""
    import contextlib

    from freqprobe.plugin import check_out_dir

    with app.output_lock(out, kind="train grid") if main else contextlib.nullcontext():  # before anything is loaded
        if main and not resume:
            if (out / "grid.json").is_file():
                raise UserFacingError(f"{out} already holds a training grid; pass --resume to continue it, or choose another --out")
            check_out_dir(out)
        out.mkdir(parents=True, exist_ok=True)
        runs = _train_settings(app, settings, names, out, resume=resume, main=main, workers=workers)
    if not main:
        return False
    _write_grid_files(app, out, runs, names, base, grid)
    return True


def _train_settings(app: Any, settings: list[TrainSettings], names: list[str], out: Path, *, resume: bool,
                    main: bool, workers: int | None = None) -> dict[str, list]:
    """Each setting into its sub-folder (with --resume: finished ones read back, unfinished ones continued); their curves."""
    from .tracker import read_curves
    from .train import NoSpaceLeft, load_train_state, train

    runs = {}
    for s, name in zip(settings, names):
        sub = out / name
        app.say(f"{name}:")
        again = resume and (sub / "train_state.pt").is_file()
        if again:
            done = int(load_train_state(sub / "train_state.pt")["epoch"])
            if done >= s.epochs:
                app.say(f"  {name}: {done} epochs done already")
                runs[name] = read_curves(sub / "curves.csv")
                continue
        elif resume and sub.exists():
            import shutil

            shutil.rmtree(sub)  # started but no epoch finished: start it again
        try:
            train(s, sub, pm=app.pm, resume=again, say=app.say, progress=app.progress, command=app.command_line,
                  workers=workers)
        except NoSpaceLeft as exc:
            raise UserFacingError(f"{name}: " + exc.message("resume the grid with --resume after freeing space")) from None
        if main:
            runs[name] = read_curves(sub / "curves.csv")
    return runs


def _write_grid_files(app: Any, out: Path, runs: dict, names: list[str], base: dict[str, Any], grid: dict[str, list]) -> None:
    """``grid.csv``, ``comparison.png`` and ``grid.json`` (each atomically and durably)."""
    import io

    from freqprobe.plugin import write_json

    from .plots import plot_comparison

    app.write_file(out / "grid.csv", _grid_csv(runs))
    png = io.BytesIO()
    plot_comparison(runs, png, title=f"{base['model']} on {base['data']}")
    app.write_file(out / "comparison.png", png.getvalue())
    write_json(out / "grid.json", {"runs": names, "grid": {k: [str(v) for v in vs] for k, vs in grid.items()},
                                   "command": app.command_line})


def _grid_csv(runs: dict) -> str:
    """The text of ``grid.csv``: every setting's curves, one tidy table."""
    import csv
    import io

    from freqprobe.plugin import fmt_param

    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(["setting", "epoch", "split", "variant", "param", "metric", "value", "n"])
    for name, rows in runs.items():
        for r in rows:
            w.writerow([name, r["epoch"], r["split"], r["variant"], "" if r["param"] is None else fmt_param(r["param"]),
                        r["metric"], f"{r['value']:.6f}", r["n"]])
    return f.getvalue()

