#!/usr/bin/env python
"""Start-up time of the command line, side by side with ``python -c "import torch"``.

Times, in fresh processes, ``python -c "import torch"``, ``python -c pass`` (the interpreter alone) and
``freqprobe --help``, ``--version``, ``run --help`` and ``plugins``: one round runs every command once, in
turn, so a load on the machine (another process on the CPUs) falls on all of them alike; the table gives
each command's median (and fastest) wall time over the rounds and its ratio to ``import torch``. Every
installed plugin loads (``FREQPROBE_*`` switches are removed from the children's environment). A last,
untimed run of each command with ``PYTHONPROFILEIMPORTTIME`` says whether it imported torch.

Usage: .venv/bin/python benchmarks/bench_startup.py [--rounds 7] [--warmup 1] [--max-ratio 0.3] [--json FILE]

Exit code 1 when a freqprobe command's median is not below ``--max-ratio`` times ``import torch``'s, or
when one of them imports torch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, loadavg  # noqa: E402  (imports no torch)


def freqprobe_command() -> tuple[list[str], str]:
    """The console script beside this interpreter, else ``python -m freqprobe``."""
    script = Path(sys.executable).parent / "freqprobe"
    if script.is_file():
        return [str(script)], "freqprobe"
    found = shutil.which("freqprobe")
    if found:
        return [found], "freqprobe"
    return [sys.executable, "-m", "freqprobe"], "python -m freqprobe"


def commands() -> list[tuple[str, list[str]]]:
    fp, _ = freqprobe_command()
    py = sys.executable
    return [
        ('python -c "import torch"', [py, "-c", "import torch"]),
        ("python -c pass", [py, "-c", "pass"]),
        ("freqprobe --help", [*fp, "--help"]),
        ("freqprobe --version", [*fp, "--version"]),
        ("freqprobe run --help", [*fp, "run", "--help"]),
        ("freqprobe plugins", [*fp, "plugins"]),
    ]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FREQPROBE_") and k != "PYTHONPROFILEIMPORTTIME"}
    env.update(extra)
    return env


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"failed (exit {p.returncode}): {' '.join(cmd)}\n{p.stderr.decode(errors='replace')[-2000:]}")
    return dt


def imports_torch(cmd: list[str]) -> bool:
    """Whether ``cmd`` imports torch (``-X importtime`` through the environment, so the console script is audited too)."""
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                       env=child_env(PYTHONPROFILEIMPORTTIME="1"))
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in p.stderr.splitlines() if line.startswith("import time:"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (each runs every command once); default 7")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (file caches); default 1")
    ap.add_argument("--max-ratio", type=float, default=0.3, help="a freqprobe command's median must stay below this "
                    "times import torch's (default 0.3)")
    ap.add_argument("--json", type=Path, help="write the results to this file")
    args = ap.parse_args()

    cmds = commands()
    env = child_env()
    _, fp_how = freqprobe_command()
    info = {"python": platform.python_version(), "cpu": cpu_model(), "cpus": os.cpu_count(), "freqprobe_as": fp_how,
            "rounds": args.rounds, "warmup": args.warmup, "loadavg_start": loadavg()}
    try:
        import importlib.metadata as md

        info["torch"] = md.version("torch")
        info["plugins"] = sorted(ep.name for ep in md.entry_points(group="freqprobe"))
    except Exception:  # pragma: no cover - informational only
        pass
    print(f"python {info['python']}, torch {info.get('torch', '?')}, {info['cpus']} CPUs ({info['cpu']}), "
          f"plugins: {', '.join(info.get('plugins', [])) or '(none)'}; load average {info['loadavg_start']}")
    for _ in range(args.warmup):
        for _, cmd in cmds:
            timed(cmd, env)
    times: dict[str, list[float]] = {label: [] for label, _ in cmds}
    for r in range(args.rounds):
        for label, cmd in cmds:
            times[label].append(timed(cmd, env))
        print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr)

    torch_label = cmds[0][0]
    base = statistics.median(times[torch_label])
    rows = []
    ok = True
    for label, cmd in cmds:
        med = statistics.median(times[label])
        row = {"command": label, "median_s": round(med, 4), "min_s": round(min(times[label]), 4),
               "max_s": round(max(times[label]), 4), "ratio_to_import_torch": round(med / base, 3),
               "times_s": [round(t, 4) for t in times[label]]}
        if label.startswith("freqprobe"):
            row["imports_torch"] = imports_torch(cmd)
            ok = ok and row["ratio_to_import_torch"] < args.max_ratio and not row["imports_torch"]
        rows.append(row)

    w = max(len(r["command"]) for r in rows)
    print(f"\n{'command'.ljust(w)}  median s  fastest s  × import torch  imports torch")
    for r in rows:
        torch_col = {True: "yes", False: "no"}.get(r.get("imports_torch"), "")
        print(f"{r['command'].ljust(w)}  {r['median_s']:8.3f}  {r['min_s']:9.3f}  {r['ratio_to_import_torch']:13.3f}  {torch_col}")
    info["loadavg_end"] = loadavg()
    print(f"\nmedian of {args.rounds} rounds (fresh processes, commands interleaved); load average at the end: "
          f"{info['loadavg_end']}; target: each freqprobe command below {args.max_ratio}× import torch, no torch: "
          f"{'met' if ok else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps({"env": info, "max_ratio": args.max_ratio, "ok": ok, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
