"""``freqprobe table2``: the paper's Table 2 — models × ρ (first-layer kernel smoothing) × attacks × ε.

Each row (a model and a ρ) is one ordinary ``freqprobe run --probe robustness --transform
smooth:rho=ρ`` into its own folder under ``--out``; ``table2.csv`` and ``table2.md`` collect the
clean and robust accuracies. With ``--resume`` finished rows are read back instead of run again
and an interrupted row continues from its checkpoint; ``--resume`` continues only a folder a
``table2`` made (``table2.json``), never a folder of other files.

Every ρ is checked on every model before the first row runs (a ρ that the smoothing refuses, or
whose smoothed kernels are no longer finite, is one line and nothing is written). Under torchrun
every process runs every row's ``freqprobe.run`` (each evaluates its share of the batches); only
rank 0 writes the tables and prints.
"""

from __future__ import annotations

import csv
from pathlib import Path

import click

from freqprobe.plugin import ListedOption

DEFAULT_RHO = "0,0.1,0.25,0.5,1.0"


def _read_summary(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _fmt(v: float) -> str:
    return f"{v:g}"


def table_rows(runs: list[dict], attacks: list[str], eps: list[float]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of Table 2 from the runs' summaries (accuracy on original and per attack/ε)."""
    header = ["model", "checkpoint", "rho", "clean"] + [f"{a}@{_fmt(e)}" for a in attacks for e in eps]
    rows = []
    for run in runs:
        acc = {}
        for r in _read_summary(run["dir"] / "summary.csv"):
            if r["metric"] != "accuracy" or r.get("param"):
                continue
            if r["variant"] == "original":
                acc["clean"] = float(r["value"])
            elif r["variant"] == "adversarial":
                acc[f"{r['attack']}@{_fmt(float(r['eps']))}"] = float(r["value"])
        rows.append([run["model"], run["checkpoint"] or "", _fmt(run["rho"])]
                    + [f"{acc[c]:.4f}" if c in acc else "" for c in header[3:]])
    return header, rows


def write_tables(out: Path, header: list[str], rows: list[list[str]], command: str) -> None:
    """``table2.csv`` and ``table2.md``, each atomically and durably (never half-written)."""
    import io

    from freqprobe.plugin import CommandContext

    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
    CommandContext.write_file(out / "table2.csv", f.getvalue())
    md = ["# Table 2: accuracy under attack, with first-layer kernel smoothing (ρ)", "", f"`{command}`", "",
          "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    CommandContext.write_file(out / "table2.md", "\n".join(md) + "\n")


@click.command("table2")
@click.option("--model", "models", multiple=True, required=True, help="Model spec (repeatable; paired with --checkpoint in order).")
@click.option("--checkpoint", "checkpoints", multiple=True, help="Weights for each --model, in the same order.")
@click.option("--data", required=True, cls=ListedOption, help="Data spec, as for `run`: {datasets}.")
@click.option("--data-root", type=click.Path(file_okay=False))
@click.option("--rho", default=DEFAULT_RHO, show_default=True, help="Kernel-smoothing strengths (0: no smoothing).")
@click.option("--attack", "attacks", multiple=True, metavar="NAME[:K=V,...]", cls=ListedOption,
              help="Attacks (repeatable; default fgsm and pgd): {attacks}.")
@click.option("--eps", default="0.03,0.06,0.09", show_default=True, help="Attack budgets in [0,1] pixel units.")
@click.option("--mean", help="Normalisation mean for every model (default: what each model source knows).")
@click.option("--std", help="Normalisation std for every model.")
@click.option("--model-arg", multiple=True, metavar="KEY=VALUE")
@click.option("--trust-checkpoint", is_flag=True)
@click.option("--limit", type=int, help="Only the first N samples.")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "tf32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--frequency", is_flag=True, help="Also the frequency view per row (low/high parts, perturbation spectrum); slower.")
@click.option("--allow-nonfinite", is_flag=True, help="As for `run`: finish a row whose model returns NaN/inf for some "
              "samples and count them in its summary (nonfinite-outputs) instead of failing.")
@click.option("--resume", is_flag=True, help="Reuse finished rows and continue an interrupted one (only in a folder a table2 made).")
@click.option("--out", required=True, type=click.Path(), help="Output folder: one run folder per row, table2.csv, table2.md.")
@click.option("-q", "--quiet", is_flag=True)
def table2_command(**kw) -> None:
    """The paper's Table 2: clean and robust accuracy for models × ρ (first-layer smoothing) × attacks × ε."""
    import contextlib

    from freqprobe import UserFacingError, get_class
    from freqprobe.plugin import check_seed, command_context, torchrun_env, write_json

    from .spec import parse_attacks, parse_eps

    models, ckpts = list(kw["models"]), list(kw["checkpoints"])
    if ckpts and len(ckpts) != len(models):
        raise UserFacingError(f"{len(models)} --model but {len(ckpts)} --checkpoint: give one checkpoint per model, in order")
    rhos = _parse_rhos(kw["rho"])
    check_seed(kw["seed"])
    app = command_context(quiet=kw["quiet"])
    smooth = get_class("transforms", "smooth", app.pm)  # the smoothing plugin must be there (one line if not)
    attack_specs = list(kw["attacks"]) or ["fgsm", "pgd"]
    labels = [cls.label(opts) for cls, opts in parse_attacks(attack_specs, app.pm)]
    eps = parse_eps(kw["eps"])
    out = Path(kw["out"])
    rank = (torchrun_env() or (0, 1, 0))[0]
    if rank:  # another torchrun process: the same rows, its share of each; rank 0 checks, writes and prints
        app = app.for_command(quiet=True)
    runs: list[dict] = []
    with app.output_lock(out, kind="table2") if not rank else contextlib.nullcontext():
        if not rank:
            _check_out(out, resume=kw["resume"])
        _check_rhos(smooth, rhos, models, ckpts, kw, app.pm)  # before any row: a bad ρ leaves nothing behind
        if not rank:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / MARKER, {"kind": "table2", "command": app.command_line, "models": models,
                                      "checkpoints": ckpts, "rho": rhos})
        with app.stop_on_signals():
            _run_rows(kw, models, ckpts, rhos, attack_specs, eps, out, runs, app, torchrun=torchrun_env() is not None)
    if rank:
        return
    header, rows = table_rows(runs, labels, eps)
    write_tables(out, header, rows, app.command_line)
    widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(header)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    click.echo(f"\nwrote {out / 'table2.csv'} and {out / 'table2.md'} ({len(rows)} rows; one run folder each)")


#: what a ``table2`` writes first into its ``--out``: the mark that ``--resume`` may continue it
MARKER = "table2.json"


def _check_out(out: Path, *, resume: bool) -> None:
    """A new or empty ``--out``; with --resume also one a table2 made (never a folder of other files, as ``run``)."""
    from freqprobe import UserFacingError

    if out.exists() and not out.is_dir():
        raise UserFacingError(f"--out {out} is an existing file; pass the path of a new folder")
    if not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    ours = (out / MARKER).is_file() or _looks_like_table2(out, entries)
    if resume and ours:
        return
    if ours:
        raise UserFacingError(f"output folder {out} already exists and is not empty (a Table 2); pass another --out, "
                              "or --resume to continue it")
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise UserFacingError(f"output folder {out} already exists and is not empty, and was not made by table2 ({shown}); "
                          "pass another --out or remove it" + ("" if resume else " (--resume continues only a table2's folder)"))


def _looks_like_table2(out: Path, entries: list[str]) -> bool:
    """A folder of an earlier table2 that wrote no mark: only table2 files and row folders (``01-net-rho0``, a run's)."""
    import re

    row = re.compile(r"^\.?\d{2,}-.+-rho[^/]+?(\.partial)?$")
    names = {"table2.csv", "table2.md", ".table2.csv.tmp", ".table2.md.tmp"}
    return all(e in names or row.match(e) for e in entries) and any(row.match(e) for e in entries)


def _check_rhos(smooth: type, rhos: list[float], models: list[str], ckpts: list[str], kw: dict, pm) -> None:
    """Every ρ as the smoothing takes it, and on every model: kernels smoothed with it must stay finite."""
    import freqprobe
    from freqprobe import UserFacingError
    from freqprobe.plugin import parse_kv

    transforms = {rho: smooth(rho=rho) for rho in rhos}  # the smoothing's own check of each value
    if all(rho <= 1e6 for rho in rhos):  # float32 kernels overflow only far beyond the paper's 0-1
        return
    for i, model in enumerate(models):
        try:
            adapter = freqprobe.build_model(model, checkpoint=ckpts[i] if ckpts else None, model_args=parse_kv(
                kw["model_arg"], "--model-arg"), trust_checkpoint=kw["trust_checkpoint"], pm=pm)
        except Exception:  # the row says what is wrong with the model, before any row is published
            continue
        for rho, t in transforms.items():
            smoothed = t.apply(adapter)
            if not all(bool(p.isfinite().all()) for p in smoothed.module.parameters()):
                raise UserFacingError(f"--rho {_fmt(rho)}: the kernels of {model} smoothed with it are no longer finite "
                                      "(float32 overflow); pass smaller values (the paper's: 0 to 1)")


def _parse_rhos(text: str) -> list[float]:
    from freqprobe import UserFacingError

    try:
        rhos = [float(r) for r in text.split(",")]
    except ValueError:
        raise UserFacingError(f"--rho must be comma-separated numbers like {DEFAULT_RHO}, got {text!r}") from None
    if any(not (r >= 0 and r < float("inf")) for r in rhos) or len(set(rhos)) != len(rhos):
        raise UserFacingError(f"--rho values must be distinct, finite and >= 0, got {text!r}")
    return rhos


def _run_rows(kw, models, ckpts, rhos, attack_specs, eps, out, runs, app, *, torchrun: bool = False) -> None:
    import freqprobe
    from freqprobe import UserFacingError
    from freqprobe.plugin import parse_kv, slug

    done = 0
    for i, model in enumerate(models):
        ckpt = ckpts[i] if ckpts else None
        for rho in rhos:
            name = f"{i + 1:02d}-{slug(model.rpartition(':')[2] or model, 48) or 'model'}-rho{_fmt(rho)}"
            run_dir = out / name
            runs.append({"model": model, "checkpoint": ckpt, "rho": rho, "dir": run_dir})
            if kw["resume"] and (run_dir / "manifest.json").is_file():
                app.say(f"[{name}] finished before: reading its summary")
                done += 1
                continue
            app.say(f"[{name}] {model} {ckpt or ''} rho={_fmt(rho)}")
            try:
                freqprobe.run(
                    model, checkpoint=ckpt, data=kw["data"], data_root=kw["data_root"], probe="robustness",
                    probe_options={"frequency": kw["frequency"]}, transforms=[f"smooth:rho={rho}"], attacks=attack_specs,
                    eps=eps, mean=kw["mean"], std=kw["std"], model_args=parse_kv(kw["model_arg"], "--model-arg"),
                    trust_checkpoint=kw["trust_checkpoint"], limit=kw["limit"], batch_size=kw["batch_size"],
                    device=kw["device"], precision=kw["precision"], seed=kw["seed"], fit=False, out=run_dir,
                    allow_nonfinite=kw["allow_nonfinite"],
                    resume=kw["resume"] and not torchrun,  # under torchrun an interrupted row starts again
                    command=app.command_line, pm=app.pm, announce=app.say, progress=app.progress,
                )
            except UserFacingError as exc:
                if not done:
                    raise
                rows = f"the {done} rows before it are" if done > 1 else "the row before it is"
                raise UserFacingError(f"row {name}: {exc} ({rows} kept in {out}: --resume reuses them)") from exc
            done += 1


def report_section(folder: Path, report) -> str:
    """The ``freqprobe report`` section of a Table-2 folder: its table (``table2.md``, else ``table2.csv``), then each row's run."""
    h = f"h{report.level}"
    parts = [f"<{h}>{report.escape(folder.name)} — Table 2</{h}>"]
    md = folder / "table2.md"
    if md.is_file():
        parts.append(report.markdown(md.read_text(encoding="utf-8", errors="replace")))
    else:
        header, rows = report.read_table(folder / "table2.csv", ("model", "rho"))
        parts.append(report.table(header, [[r.get(c, "") for c in header] for r in rows], left=3))
    parts.append(report.subfolders(folder, report.level + 1))
    return "".join(parts)
