"""Interrupts and leftovers: streamed results, checkpoints, --resume after SIGINT/SIGTERM/SIGKILL,
stale state, concurrent runs, unwritable outputs, non-finite model outputs."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import freqprobe
from freqprobe.journal import StopRequested, partial_dir, request_stop

REPO = Path(__file__).resolve().parents[1]

# A user model that, when told by the environment, sends a signal to its own process in the
# forward pass of its k-th batch (one forward per batch with --forward-batch 64).
MODEL = textwrap.dedent("""
    import os, signal
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_classes=4):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.lin = nn.Linear(8, num_classes)
            self.calls = 0

        def forward(self, x):
            self.calls += len(x) == 20  # the forward passes of batches (4 images in 5 variants), not the core's checks
            at = int(os.environ.get("SIGNAL_AT_CALL", "0"))
            if at and self.calls == at and len(x) == 20:
                os.kill(os.getpid(), int(os.environ.get("SIGNAL_NUMBER", "9")))
            if os.environ.get("NAN_OUTPUT"):
                return torch.full((len(x), 4), float("nan"))
            return self.lin(torch.relu(self.conv(x)).mean((2, 3)))

    def net(num_classes=4):
        return Net(num_classes)
""")

ARGS = ["--radii", "4,8", "--batch-size", "4", "--forward-batch", "64", "--no-fit", "--device", "cpu", "-q",
        "--gallery-size", "2"]


@pytest.fixture
def model_file(tmp_path) -> Path:
    p = tmp_path / "signet.py"
    p.write_text(MODEL)
    return p


def run_args(model_file, npz, out):
    return ["run", "--model", f"{model_file}:net", "--data", f"npz:{npz}", *ARGS, "--out", str(out)]


def subprocess_run(args, env_extra, cwd):
    env = {**os.environ, "FREQPROBE_DISABLE_PLUGIN_AUTOLOAD": "1", "CUDA_VISIBLE_DEVICES": "", **env_extra}
    return subprocess.run([sys.executable, "-m", "freqprobe.cli", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)


def same_results(a: Path, b: Path) -> None:
    """summary.csv, samples.csv and figure2.csv byte-identical; the manifests equal except times and the command."""
    for name in ("summary.csv", "samples.csv", "figure2.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    for m in (ma, mb):
        for k in ("timings", "created", "command"):
            m.pop(k)
    assert ma == mb
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())


def test_sigkill_then_resume_matches_uninterrupted(cli, model_file, tiny_npz, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    rc, _, err = cli(*run_args(model_file, tiny_npz, ref))
    assert rc == 0, err
    got = subprocess_run(run_args(model_file, tiny_npz, out), {"SIGNAL_AT_CALL": "3", "SIGNAL_NUMBER": "9"}, tmp_path)
    assert got.returncode == -signal.SIGKILL
    part = partial_dir(out)
    assert not out.exists() and part.is_dir()
    rows = (part / "samples.csv").read_text().splitlines()
    assert len(rows) in (1 + 20, 1 + 40)  # header + the finished batches (4 samples in 5 variants), streamed
    rc, _, err = cli(*run_args(model_file, tiny_npz, out), "--resume")
    assert rc == 0, err
    same_results(ref, out)
    assert not part.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_at_a_batch_boundary_and_says_how_to_resume(cli, model_file, tiny_npz, tmp_path, signum):
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert cli(*run_args(model_file, tiny_npz, ref))[0] == 0
    got = subprocess_run(run_args(model_file, tiny_npz, out), {"SIGNAL_AT_CALL": "3", "SIGNAL_NUMBER": str(int(signum))},
                         tmp_path)
    assert got.returncode == 128 + signum, got.stderr
    assert f"{signum.name}: stopping after the current batch" in got.stderr
    assert "Traceback" not in got.stderr
    last = got.stderr.strip().splitlines()[-1]
    assert "stopped after 12 of 24 samples" in last  # the batch in flight was finished
    assert f"kept in {partial_dir(out)}" in last and "--resume" in last and f"--out {out}" in last
    assert not out.exists()
    rc, _, err = cli(*run_args(model_file, tiny_npz, out), "--resume")
    assert rc == 0, err
    same_results(ref, out)


def _stopping_metric(k):
    """A metric that asks for a stop (as a signal handler does) on its ``k``-th update."""
    from freqprobe import Metric

    class Stopping(Metric):
        name = "stopping"
        calls = {"n": 0}

        def __init__(self, ctx=None):
            super().__init__(ctx)
            self.add_state("seen", 0)

        def update(self, outputs, targets):
            self.seen += len(targets)
            type(self).calls["n"] += 1
            if type(self).calls["n"] == k:
                request_stop(signal.SIGINT)

        def compute(self):
            return float(self.seen)

    return Stopping


def test_stop_in_process_resume_with_sweep_and_api(model_file, tiny_npz, tmp_path, pm):
    """The Python API: a stop mid-run raises StopRequested; resume=True gives the same result object and files."""
    from freqprobe.journal import clear_stop

    metric = _stopping_metric(5 * 3 + 1)  # 5 variants per batch: stops in batch 4
    kw = dict(data=f"npz:{tiny_npz}", params="4,8", batch_size=4, forward_batch=64, fit=False, device="cpu",
              probe_options={"gallery_size": 2}, pm=pm)

    class P:
        @freqprobe.hookimpl
        def register_metrics(self):
            return [metric]

    pm.register(P(), "stopper")
    metric.calls["n"] = -10**6  # the reference run does not stop
    ref = freqprobe.run(f"{model_file}:net", out=tmp_path / "ref", metrics=("accuracy", "stopping"), **kw)
    clear_stop()
    metric.calls["n"] = 0
    with pytest.raises(StopRequested, match=r"stopped after 16 of 24 samples.*kept in .*resume=True"):
        freqprobe.run(f"{model_file}:net", out=tmp_path / "out", metrics=("accuracy", "stopping"), **kw)
    clear_stop()
    metric.calls["n"] = -10**6  # no second stop
    res = freqprobe.run(f"{model_file}:net", out=tmp_path / "out", metrics=("accuracy", "stopping"), resume=True, **kw)
    same_results(tmp_path / "ref", tmp_path / "out")
    assert [(r["variant"], r["param"], r["metric"], r["value"], r["n"]) for r in res.summary] == \
           [(r["variant"], r["param"], r["metric"], r["value"], r["n"]) for r in ref.summary]
    for col in ("index", "label", "pred"):
        np.testing.assert_array_equal(res.samples.column(col), ref.samples.column(col))
    np.testing.assert_allclose(res.samples.column("confidence", variant="low", param=4.0),
                               ref.samples.column("confidence", variant="low", param=4.0), atol=5e-7)
    assert len(res.extras["gallery"][4.0]) == len(ref.extras["gallery"][4.0])


def test_resume_refuses_other_settings_and_keeps_the_state(cli, model_file, tiny_npz, tmp_path):
    out = tmp_path / "out"
    got = subprocess_run(run_args(model_file, tiny_npz, out), {"SIGNAL_AT_CALL": "3", "SIGNAL_NUMBER": "9"}, tmp_path)
    assert got.returncode == -signal.SIGKILL
    args = run_args(model_file, tiny_npz, out)
    args[args.index("4,8")] = "4,8,12"
    rc, _, err = cli(*args, "--resume")
    assert rc == 2 and "Traceback" not in err
    assert "cannot resume" in err and "params" in err and "4,8" in err and "leave out --resume" in err
    assert partial_dir(out).is_dir() and not out.exists()
    rc, _, err = cli(*args)  # without --resume: the stale state goes, the run starts clean
    assert rc == 0, err
    assert not partial_dir(out).exists() and (out / "summary.csv").is_file()


def test_stale_partial_removed_and_legacy_folders_of_dead_processes(cli, model_file, tiny_npz, tmp_path):
    out = tmp_path / "out"
    part = partial_dir(out)
    part.mkdir()
    (part / "LOCK").write_text("999999\n")
    (part / "samples.csv").write_text("junk\n")
    legacy = tmp_path / ".out.partial-999999"  # what earlier versions left after SIGTERM
    legacy.mkdir()
    (legacy / "samples.csv").write_text("junk\n")
    args = run_args(model_file, tiny_npz, out)
    args.remove("-q")
    rc, _, err = cli(*args)
    assert rc == 0, err
    assert "removed the unfinished state of an earlier run" in err
    assert not part.exists() and not legacy.exists()
    assert (out / "samples.csv").read_text().startswith("index,label,variant")


def test_resume_with_nothing_to_resume_starts_clean_and_finished_run_refused(cli, model_file, tiny_npz, tmp_path):
    out = tmp_path / "out"
    args = run_args(model_file, tiny_npz, out)
    args.remove("-q")
    rc, _, err = cli(*args, "--resume")
    assert rc == 0 and "nothing to resume" in err
    rc, _, err = cli(*args, "--resume")
    assert rc == 2 and "already holds a finished run" in err


def test_concurrent_run_into_same_out_refused(cli, model_file, tiny_npz, tmp_path):
    out = tmp_path / "out"
    part = partial_dir(out)
    part.mkdir()
    fd = os.open(part / "LOCK", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live run holds it
        os.write(fd, b"4242\n")
        rc, _, err = cli(*run_args(model_file, tiny_npz, out))
        assert rc == 2 and "Traceback" not in err
        assert "another freqprobe process 4242 is writing to" in err and "choose another --out" in err
        assert part.is_dir()  # the other run's state is not touched
    finally:
        os.close(fd)


@pytest.mark.parametrize("case", ["file", "unwritable", "proc"])
def test_bad_out_refused_before_loading(cli, model_file, tmp_path, case):
    if case == "file":
        out = tmp_path / "taken"
        out.write_text("x")
        needle = "is an existing file"
    elif case == "unwritable":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "out"
        needle = "not writable"
    else:
        out = Path("/proc/freqprobe-test/out")
        needle = "cannot create the folder of --out /proc/freqprobe-test/out"
    # data that does not exist: the output is checked first, before anything is loaded
    rc, _, err = cli("run", "--model", f"{model_file}:net", "--data", "npz:/nonexistent/data.npz", "--out", out, "-q")
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert needle in err, err


def test_nonfinite_outputs_fail_unless_allowed(cli, model_file, tiny_npz, tmp_path, monkeypatch):
    monkeypatch.setenv("NAN_OUTPUT", "1")
    out = tmp_path / "out"
    rc, _, err = cli(*run_args(model_file, tiny_npz, out))
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "non-finite outputs (NaN or inf) for 4 of the first 4 samples" in err
    assert "original: 4" in err and "low r=4: 4" in err and "--allow-nonfinite" in err
    assert not out.exists() and not partial_dir(out).exists()
    rc, stdout, err = cli(*run_args(model_file, tiny_npz, out), "--allow-nonfinite")
    assert rc == 0, err
    rows = (out / "summary.csv").read_text().splitlines()
    bad = [r for r in rows if ",nonfinite-outputs," in r]
    assert len(bad) == 5 and all(r.endswith(",24.000000,24") for r in bad)


@pytest.mark.filterwarnings("ignore:the model gets")
def test_nonfinite_outputs_named_per_variant(tiny_npz, tmp_path, pm):
    """Only the variants whose outputs are non-finite are named (a model that fails on the high part only)."""

    class HighNaN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = torch.nn.Linear(3, 4)

        def forward(self, x):
            out = self.lin(x.mean((2, 3)))
            # high parts have mean ~0: make those rows NaN
            return torch.where((x.mean((1, 2, 3)) < 0.1)[:, None], torch.full_like(out, float("nan")), out)

    with pytest.raises(freqprobe.UserFacingError, match=r"high r=4: 4, high r=8: 4\)"):
        freqprobe.run(HighNaN(), data=f"npz:{tiny_npz}", params="4,8", batch_size=4, device="cpu", out=tmp_path / "o", pm=pm)


# ---------------------------------------------------------------- decompose
DECOMPOSE_KILLER = textwrap.dedent("""
    import os, signal, sys
    from freqprobe.builtins.decomposers import FFTRadialDecomposer
    from freqprobe.export import export_npz, export_png
    import freqprobe

    class Killer(FFTRadialDecomposer):
        calls = 0
        def decompose_all(self, x, params, *, out=None):
            type(self).calls += 1
            if type(self).calls == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            yield from super().decompose_all(x, params, out=out)

    data = freqprobe.open_data("npz:" + sys.argv[1])
    rescale = freqprobe.get_class("rescale", "minmax")()
    if sys.argv[3] == "npz":
        export_npz(data, Killer(), [4.0, 8.0], sys.argv[2], batch_size=5)
    else:
        export_png(data, Killer(), [4.0, 8.0], sys.argv[2], rescale=rescale, batch_size=5)
""")


@pytest.mark.parametrize("kind", ["npz", "png"])
def test_decompose_sigkill_then_resume_matches(cli, tiny_npz, tmp_path, kind):
    script = tmp_path / "killer.py"
    script.write_text(DECOMPOSE_KILLER)
    suffix = ".npz" if kind == "npz" else ""
    ref, out = tmp_path / f"ref{suffix}", tmp_path / f"out{suffix}"
    base = ["decompose", "--data", f"npz:{tiny_npz}", "--radii", "4,8", "--batch-size", "5", "--device", "cpu", "-q"]
    assert cli(*base, "--out", ref)[0] == 0
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    got = subprocess.run([sys.executable, str(script), str(tiny_npz), str(out), kind], env=env, capture_output=True, timeout=120)
    assert got.returncode == -signal.SIGKILL, got.stderr
    part = partial_dir(out)
    assert part.is_dir() and not out.exists()
    # two batches of 5 finished; the count is recorded (after an fsync) when that costs under ~5 %: after the first, maybe the second
    assert json.loads((part / "journal.json").read_text())["done"] in (5, 10)
    rc, _, err = cli(*base, "--out", out, "--resume")
    assert rc == 0, err
    assert not part.exists()
    if kind == "npz":
        assert ref.read_bytes() == out.read_bytes()  # same arrays, and a deterministic zip: the same bytes
    else:
        files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
        assert all((ref / f).read_bytes() == (out / f).read_bytes() for f in files)


def test_decompose_stop_in_process_says_how_to_resume(tiny_npz, tmp_path):
    from freqprobe.builtins.decomposers import FFTRadialDecomposer
    from freqprobe.export import export_npz
    from freqprobe.journal import clear_stop

    class Stopper(FFTRadialDecomposer):
        calls = 0

        def decompose_all(self, x, params, *, out=None):
            type(self).calls += 1
            if type(self).calls == 2:
                request_stop(signal.SIGTERM)
            yield from super().decompose_all(x, params, out=out)

    data = freqprobe.open_data(f"npz:{tiny_npz}")
    out = tmp_path / "o.npz"
    try:
        with pytest.raises(StopRequested, match=r"stopped by SIGTERM after 10 of 24 samples; the finished part is kept in") as ei:
            export_npz(data, Stopper(), [4.0], out, batch_size=5)
        assert ei.value.exit_code == 128 + signal.SIGTERM
    finally:
        clear_stop()
    export_npz(data, Stopper(), [4.0], out, batch_size=5, resume=True)
    ref = tmp_path / "r.npz"
    export_npz(data, FFTRadialDecomposer(), [4.0], ref, batch_size=5)
    assert ref.read_bytes() == out.read_bytes()


def test_decompose_round_trip_through_npz_data(cli, tiny_npz, tmp_path, model_file):
    """An export is probed again as it is: --data npz: reads its N×C×H×W layout."""
    exp = tmp_path / "exp.npz"
    assert cli("decompose", "--data", f"npz:{tiny_npz}", "--radii", "4", "--out", exp, "-q")[0] == 0
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(*run_args(model_file, tiny_npz, a))[0] == 0
    rc, _, err = cli(*run_args(model_file, exp, b))
    assert rc == 0, err
    assert (a / "samples.csv").read_bytes() == (b / "samples.csv").read_bytes()
    assert (a / "summary.csv").read_bytes() == (b / "summary.csv").read_bytes()


def test_stop_while_fitting_says_it_starts_again(tiny_npz, pm):
    """A stop asked for during fitting ends between two training batches; nothing to resume but the start."""
    from freqprobe.journal import clear_stop
    from freqprobe.training import fit

    adapter = freqprobe.build_model(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4)))
    data = freqprobe.open_data(f"npz:{tiny_npz}")
    request_stop(signal.SIGINT)
    try:
        with pytest.raises(StopRequested, match="fitting stopped by SIGINT"):
            fit(adapter, data, epochs=1)
    finally:
        clear_stop()
