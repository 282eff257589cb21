"""Figure 7 as a command: first-layer kernels before and after smoothing, as a picture and as numbers.

``freqprobe kernels --model SPEC --checkpoint A [--checkpoint B] [--rho 0,1] --out DIR`` writes
``kernels.png`` (a grid: one row per ρ and checkpoint), ``kernels.csv`` (one row per ρ and
checkpoint: the mean high-frequency energy share and total variation of the kernels) and
``manifest.json``. Both numbers are defined per ``[kh, kw]`` slice of the ``[out, in, kh, kw]``
weight (see docs/smoothing.md):

- ``hf_energy_share`` = 1 - |F(0,0)|² / Σ|F(u,v)|², F the slice's 2-D DFT: the share of its
  energy at non-zero spatial frequencies (by Parseval = 1 - (Σw)² / (kh·kw·Σw²));
- ``total_variation`` = (Σ|w[i,j+1]-w[i,j]| + Σ|w[i+1,j]-w[i,j]|) / Σ|w|.

Each is averaged over the slices that are not all zero. Both are scale-free, so Eq. 3's growth of
the weights (up to a factor 1 + 8ρ) does not count as a change.

numpy and torch are imported inside the functions that use them: ``freqprobe kernels --help`` (and
``freqprobe --help``, which registers the command) loads neither.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import click

from freqprobe.plugin import ListedOption

if TYPE_CHECKING:  # annotations only
    import numpy as np
    import torch

CSV_COLUMNS = ("model", "checkpoint", "rho", "layer", "kernel", "n_kernels", "n_slices", "hf_energy_share", "total_variation")


# ----------------------------------------------------------------------------- the two numbers
#: a slice whose largest |weight| has a binary exponent beyond this is rescaled before squaring or summing
_EXPONENT_RANGE = 400


def _tame(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``a`` with each sub-array over ``axes`` whose largest magnitude is beyond 2^±400 multiplied by a power of two
    that brings it near 1. Exact (a power of two changes no digit), and both numbers and the drawing are
    scale-free, so the results are those of the weights as they are, without the overflow of their squares and
    sums (a kernel smoothed with rho = 1e200 has weights near 1e200, its energy near 1e400). Others are untouched."""
    import numpy as np

    if a.size == 0:
        return a
    peak = np.abs(a).max(axis=axes, keepdims=True)
    _, e = np.frexp(peak)
    wild = np.isfinite(peak) & (peak > 0) & (np.abs(e) > _EXPONENT_RANGE)
    return np.ldexp(a, -np.where(wild, e, 0)) if wild.any() else a


def _slices(weight: torch.Tensor | np.ndarray) -> np.ndarray:
    import numpy as np
    import torch

    w = weight.detach().cpu().double().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight, dtype=np.float64)
    if w.ndim < 2:
        raise ValueError(f"expected a [..., kh, kw] kernel array, got shape {w.shape}")
    return _tame(w.reshape(-1, w.shape[-2], w.shape[-1]), (-2, -1))


def hf_energy_shares(weight: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per ``[kh, kw]`` slice: the share of its 2-D DFT energy at non-zero frequencies (NaN for an all-zero slice)."""
    import numpy as np

    s = _slices(weight)
    with np.errstate(all="ignore"):  # NaN/inf weights give NaN, without numpy's warnings
        energy = np.abs(np.fft.fft2(s, axes=(-2, -1))) ** 2
        total = energy.sum(axis=(-2, -1))
        return np.where(total > 0, 1.0 - energy[:, 0, 0] / np.where(total > 0, total, 1.0), np.nan)


def total_variations(weight: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per ``[kh, kw]`` slice: Σ of |differences| of horizontally and vertically adjacent weights over Σ|w| (NaN for all-zero)."""
    import numpy as np

    s = _slices(weight)
    with np.errstate(all="ignore"):
        tv = np.abs(np.diff(s, axis=-1)).sum(axis=(-2, -1)) + np.abs(np.diff(s, axis=-2)).sum(axis=(-2, -1))
        l1 = np.abs(s).sum(axis=(-2, -1))
        return np.where(l1 > 0, tv / np.where(l1 > 0, l1, 1.0), np.nan)


def kernel_stats(weight: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """``{"n_slices", "hf_energy_share", "total_variation"}``: the means over the slices that are not all zero."""
    import numpy as np

    hf, tv = hf_energy_shares(weight), total_variations(weight)
    used = ~np.isnan(hf)
    n = int(used.sum())
    return {
        "n_slices": n,
        "hf_energy_share": float(hf[used].mean()) if n else float("nan"),
        "total_variation": float(tv[used].mean()) if n else float("nan"),
    }


# ----------------------------------------------------------------------------- the picture
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _unit(a: np.ndarray) -> np.ndarray:
    import numpy as np

    a = _tame(a, tuple(range(a.ndim)))
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.full_like(a, 0.5)


def draw_grid(rows: Sequence[dict], path: Path, *, n_kernels: int, title: str) -> None:
    """One row per entry of ``rows`` (``label``, ``weight`` [out, in, kh, kw]): its first ``n_kernels`` kernels.

    A 3-channel kernel is drawn as a colour image, any other as grey (its first input
    channel); each kernel is scaled to [0, 1] on its own.
    """
    plt = _plt()
    ncols = max(1, min(n_kernels, max(r["weight"].shape[0] for r in rows)))
    height = 0.2 + 0.6 * len(rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.2 + 0.5 * ncols, height), squeeze=False)
    fig.subplots_adjust(top=1 - 0.05 / height, bottom=0.05 / height, hspace=0.15)
    for r, row in enumerate(rows):
        w = row["weight"]
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= w.shape[0]:
                ax.axis("off")
                continue
            k = w[c]
            if k.shape[0] == 3:
                ax.imshow(_unit(k.transpose(1, 2, 0)), interpolation="nearest")
            else:
                ax.imshow(_unit(k[0]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[r][0].set_ylabel(row["label"], rotation=0, ha="right", va="center", fontsize=6)
    fig.suptitle(title, fontsize=7, y=1 + 0.05 / height, va="bottom")  # above the grid (bbox_inches="tight" keeps it)
    fig.savefig(path, dpi=130, bbox_inches="tight", format="png")
    plt.close(fig)


# ----------------------------------------------------------------------------- the command
def parse_rhos(text: str) -> list[float]:
    from freqprobe import UserFacingError

    from .smooth import check_rho

    items = [t.strip() for t in str(text).split(",")]
    if not text or not all(items):
        raise UserFacingError(f"--rho must be comma-separated numbers >= 0 like 0,0.5,1, got {text!r}")
    out: list[float] = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise UserFacingError(f"--rho must be comma-separated numbers >= 0 like 0,0.5,1, got {item!r}") from None
        rho = check_rho(value, what="--rho")
        if rho in out:
            raise UserFacingError(f"--rho {item} is given twice; pass each value once")
        out.append(rho)
    return out


def _labels(checkpoints: Sequence[str]) -> list[str]:
    names = [Path(c).name for c in checkpoints]
    return names if len(set(names)) == len(names) else [str(c) for c in checkpoints]


def measure(adapters: Sequence[Any], labels: Sequence[str], rhos: Sequence[float], *, layer: str | None,
            specs: Sequence[str]) -> list[dict]:
    """One row per ρ and model (ρ outer, as in Figure 7): the smoothed first-layer weight and its numbers."""
    from .smooth import checked_smooth, first_conv

    convs = []
    for adapter, spec in zip(adapters, specs):
        name, conv = first_conv(adapter.module, layer, model=spec)
        convs.append((spec, name, conv.weight.detach().cpu().double()))
    rows = []
    for rho in rhos:
        for label, (spec, name, weight) in zip(labels, convs):
            w = checked_smooth(weight, rho, what="--rho",
                               where=f"layer '{name or '(the model itself)'}' of {spec} ({label})")
            o, i, kh, kw = w.shape
            rows.append({"label": label, "model": spec, "rho": rho, "layer": name, "kernel": f"{kh}x{kw}", "n_kernels": o,
                         "weight": w.numpy(), "in_channels": i, **kernel_stats(w)})
    return rows


def _fmt(v: float) -> str:
    return "nan" if v != v else f"{v:.6f}"


def table_text(rows: Sequence[dict]) -> str:
    head = ["checkpoint", "rho", "layer", "kernel", "hf_energy_share", "total_variation"]
    body = [[r["label"], f"{r['rho']:g}", r["layer"] or "(model)", r["kernel"], f"{r['hf_energy_share']:.4f}",
             f"{r['total_variation']:.4f}"] for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(widths[i]) if i < 4 else c.rjust(widths[i]) for i, c in enumerate(line)).rstrip()
                     for line in [head, *body])


@click.command("kernels")
@click.option("--model", "models", required=True, multiple=True, cls=ListedOption,
              help="Model spec, as for `run` ({models}); once for all checkpoints, or once per --checkpoint in order.")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(dir_okay=False),
              help="Weights (repeatable): e.g. a natural and an adversarially trained model, drawn side by side.")
@click.option("--pretrained", is_flag=True, help="Use the model source's pretrained weights (instead of --checkpoint).")
@click.option("--trust-checkpoint", is_flag=True, help="Allow checkpoints holding pickled Python objects (can run code).")
@click.option("--non-strict", is_flag=True, help="Ignore missing/unexpected checkpoint keys.")
@click.option("--model-arg", multiple=True, metavar="KEY=VALUE", help="Keyword argument for the model constructor (repeatable).")
@click.option("--rho", "rho", default="0,1", show_default=True, help="Comma-separated smoothing strengths ρ of Eq. 3 (0: the kernels as they are).")
@click.option("--layer", help="The conv layer to show and smooth (default: the first Conv2d).")
@click.option("--n-kernels", type=int, default=16, show_default=True, help="Kernels (output channels) drawn per row.")
@click.option("--out", required=True, type=click.Path(), help="A new (or empty) folder for kernels.png, kernels.csv, manifest.json.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors and the final line.")
def kernels_command(**kw: Any) -> None:
    """Figure 7: first-layer kernels before/after smoothing (kernels.png) and their high-frequency share (kernels.csv)."""
    from freqprobe.plugin import check_out_dir, command_context, parse_kv

    rhos, checkpoints = _check_options(kw)
    out = Path(kw["out"])
    check_out_dir(out)
    model_args = parse_kv(kw["model_arg"], "--model-arg")
    app = command_context(quiet=kw["quiet"])
    specs = _model_specs(list(kw["models"]), checkpoints)
    with app.warnings_as_lines():
        adapters = [_build(app.pm, model, ckpt, kw, model_args) for model, ckpt in zip(specs, checkpoints or [None])]
    labels = _labels(checkpoints) if checkpoints else ["pretrained" if kw["pretrained"] else "as built"]
    rows = measure(adapters, labels, rhos, layer=kw["layer"], specs=specs)
    for r in rows:
        r["picture_label"] = f"{r['label']}  ρ={r['rho']:g}\nHF {r['hf_energy_share']:.3f}  TV {r['total_variation']:.3f}"
    manifest = app.manifest(**_manifest_sections(rows, specs, model_args, checkpoints, adapters, rhos, kw))
    with app.workspace(out, kind="kernels") as ws:
        with ws.atomic("kernels.csv") as tmp:
            write_csv(tmp, rows, [c for _ in rhos for c in (checkpoints or [""])])
        with ws.atomic("kernels.png") as tmp:
            draw_grid([{"label": r["picture_label"], "weight": r["weight"]} for r in rows], tmp,
                      n_kernels=kw["n_kernels"], title=_title(rows, " | ".join(dict.fromkeys(kw["models"])), kw["n_kernels"]))
        ws.write_json("manifest.json", manifest)
        ws.commit()
    if not kw["quiet"]:
        click.echo(table_text(rows))
    click.echo(f"{'' if kw['quiet'] else chr(10)}results in {out}/ (kernels.png, kernels.csv, manifest.json)")


def _check_options(kw: dict[str, Any]) -> tuple[list[float], list[str]]:
    """The ρ values and the checkpoints, every option checked before anything is loaded (one line each)."""
    from freqprobe import UserFacingError

    rhos = parse_rhos(kw["rho"])
    if kw["n_kernels"] < 1:
        raise UserFacingError(f"--n-kernels must be at least 1, got {kw['n_kernels']}")
    layer = kw["layer"]
    if layer is not None and not layer.strip():
        raise UserFacingError("--layer needs a module name, e.g. --layer conv1")
    checkpoints = list(kw["checkpoints"])
    if len({str(Path(c).resolve()) for c in checkpoints}) != len(checkpoints):
        raise UserFacingError("a --checkpoint is given twice; pass each file once")
    if kw["pretrained"] and checkpoints:
        raise UserFacingError("pass either --pretrained or --checkpoint, not both")
    return rhos, checkpoints


def _model_specs(models: list[str], checkpoints: list[str]) -> list[str]:
    """The model spec of each checkpoint: one --model for all, or one per --checkpoint."""
    from freqprobe import UserFacingError

    if len(models) > 1 and len(models) != len(checkpoints):
        raise UserFacingError(f"--model is given {len(models)} times for {len(checkpoints)} --checkpoint; "
                              "pass one --model for all checkpoints, or one per --checkpoint in the same order")
    return models * len(checkpoints or [None]) if len(models) == 1 else models


def _build(pm: Any, model: str, checkpoint: str | None, kw: dict[str, Any], model_args: dict[str, Any]) -> Any:
    from freqprobe import build_model

    return build_model(model, checkpoint=checkpoint, pretrained=kw["pretrained"], trust_checkpoint=kw["trust_checkpoint"],
                       strict=not kw["non_strict"], model_args=model_args, pm=pm)


def _title(rows: Sequence[dict], spec: str, n_kernels: int) -> str:
    shown = dict.fromkeys(f"{r['layer'] or '(model)'} ({r['kernel']}"
                          + ("" if r["in_channels"] in (1, 3) else f", input channel 0 of {r['in_channels']}") + ")" for r in rows)
    return (f"{spec}\nlayer {', '.join(shown)}, first {min(n_kernels, max(r['n_kernels'] for r in rows))} "
            f"kernels, each scaled to [0, 1]; HF = hf_energy_share, TV = total_variation")


def _manifest_sections(rows: Sequence[dict], specs: Sequence[str], model_args: dict, checkpoints: Sequence[str],
                       adapters: Sequence[Any], rhos: Sequence[float], kw: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": specs[0] if len(set(specs)) == 1 else list(specs),
        "model_args": model_args,
        "checkpoints": [{"path": str(Path(c).resolve()), "sha256": a.info.get("checkpoint_sha256")}
                        for c, a in zip(checkpoints, adapters)],
        "pretrained": kw["pretrained"],
        "layer": rows[0]["layer"] if len({r["layer"] for r in rows}) == 1 else [r["layer"] for r in rows[:len(adapters)]],
        "rho": list(rhos),
        "n_kernels_drawn": kw["n_kernels"],
        "definitions": {
            "hf_energy_share": "mean over non-zero [kh,kw] slices of 1 - |F(0,0)|^2 / sum |F(u,v)|^2 (F: the slice's 2-D DFT)",
            "total_variation": "mean over non-zero [kh,kw] slices of (sum |w[i,j+1]-w[i,j]| + sum |w[i+1,j]-w[i,j]|) / sum |w|",
        },
        "rows": [{k: r[k] for k in ("label", "rho", "layer", "kernel", "n_kernels", "n_slices", "hf_energy_share",
                                    "total_variation")} for r in rows],
        "outputs": ["kernels.csv", "kernels.png", "manifest.json"],
    }


def write_csv(path: Path, rows: Sequence[dict], checkpoints: Sequence[str]) -> None:
    """``kernels.csv``: one row per ρ and checkpoint (``checkpoints``: the checkpoint of each row, as given)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r, ckpt in zip(rows, checkpoints):
            w.writerow([r["model"], ckpt, f"{r['rho']:g}", r["layer"], r["kernel"], r["n_kernels"], r["n_slices"],
                        _fmt(r["hf_energy_share"]), _fmt(r["total_variation"])])
