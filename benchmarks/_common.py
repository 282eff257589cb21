"""Helpers shared by the benchmark scripts: what machine this is, and device synchronisation (importing this
module imports no torch)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only where a device is synchronised: bench_startup.py times start-up without it
    import torch


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def finish(res: dict, env: dict, json_path, ok: bool) -> int:
    """The end of a benchmark: the load average now, the results as JSON (when asked), the exit code."""
    import json

    env["loadavg_end"] = loadavg()
    print(f"load average at the end: {env['loadavg_end']}")
    if json_path:
        Path(json_path).write_text(json.dumps(res, indent=2, default=str) + "\n")
        print(f"wrote {json_path}")
    return 0 if ok else 1
