#!/usr/bin/env python
"""``torchrun --nproc_per_node N -m freqprobe run`` against one process on the same data: wall time and identical files.

Workload: ``lfc-hfc`` (radii 4, 8, 12, 16: 9 variants) of the akamaster ResNet-20 on the first ``--n``
images of the shared CIFAR-10 JPEG-q75 file, on the CPU. One process with ``--threads`` torch threads
against ``--nproc`` processes with ``threads / nproc`` threads each (the same cores), both started the
same way (``python -m freqprobe`` / ``python -m torch.distributed.run ... -m freqprobe``), wall time of
the whole command (start-up, loading, the probe, writing). The summary and per-sample files must be
byte-identical.

Usage: .venv/bin/python benchmarks/bench_torchrun.py [--n 2000] [--nproc 2] [--threads 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model, finish, loadavg  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--data-dir", type=Path, default=DATA)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    env0 = {"cpu": cpu_model(), "loadavg_start": loadavg()}
    common = ["run", "--model", f"{ROOT / 'tests' / 'fixtures' / 'cifar_resnet.py'}:resnet20",
              "--checkpoint", str(args.data_dir / "cifar10_resnet_akamaster" / "resnet20-12fca82f.th"),
              "--data", f"npz:{args.data_dir / 'cifar10_test' / 'cifar10_test_jpeg_q75.npz'}", "--limit", str(args.n),
              "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--radii", "4,8,12,16",
              "--batch-size", str(args.batch_size), "--device", "cpu", "-q"]
    res = {"env": env0, "n": args.n, "nproc": args.nproc, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def timed(cmd, threads):
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            t = time.perf_counter()
            got = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if got.returncode != 0:
                raise SystemExit(got.stderr[-2000:])
            return time.perf_counter() - t

        one = timed([sys.executable, "-m", "freqprobe", *common, "--out", str(tmp / "one")], args.threads)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        many = timed([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(args.nproc),
                      "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "freqprobe", *common,
                      "--out", str(tmp / "many")], max(1, args.threads // args.nproc))
        same = all((tmp / "one" / f).read_bytes() == (tmp / "many" / f).read_bytes() for f in ("summary.csv", "samples.csv"))
    res.update(one_process_s=one, torchrun_s=many, identical=same)
    print(f"ResNet-20 lfc-hfc on {args.n} CIFAR images, {env0['cpu']}")
    print(f"| run | wall s |\n| --- | ---: |\n| 1 process, {args.threads} threads | {one:.1f} |\n"
          f"| torchrun, {args.nproc} processes × {max(1, args.threads // args.nproc)} thread | {many:.1f} |")
    print(f"summary.csv and samples.csv identical: {'yes' if same else 'NO'}")
    return finish(res, env0, args.json, same)


if __name__ == "__main__":
    sys.exit(main())
