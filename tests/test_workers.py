"""--workers: images read and decoded in worker processes give the same results as one process.

Real JPEG folders on disk, real worker processes (torch's DataLoader), a real SIGKILL and SIGINT
mid-run, torchrun with workers, and a third-party data source that only implements ``load``.
"""

from __future__ import annotations

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
from freqprobe.errors import UserFacingError
from freqprobe.journal import partial_dir
from freqprobe.loading import iter_batches, resolve_workers

from test_resume import MODEL, subprocess_run  # the signalling model of the resume tests

ARGS = ["--radii", "4,8", "--batch-size", "4", "--forward-batch", "64", "--no-fit", "--device", "cpu", "-q",
        "--gallery-size", "2", "--image-size", "16"]


@pytest.fixture
def model_file(tmp_path) -> Path:
    p = tmp_path / "signet.py"
    p.write_text(MODEL)
    return p


@pytest.fixture
def jpegs(tmp_path) -> Path:
    """A real image folder: 4 class folders of 6 JPEGs each (40×30, seeded noise)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "jpegs"
    for i in range(24):
        d = root / f"class{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)).save(d / f"{i:03d}.jpg", quality=90)
    return root


def run_args(model_file, folder, out, workers):
    return ["run", "--model", f"{model_file}:net", "--data", f"imagefolder:{folder}", *ARGS, "--out", str(out),
            "--workers", str(workers)]


def same_tables(a: Path, b: Path) -> None:
    for name in ("summary.csv", "samples.csv", "figure2.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_every_worker_count_gives_the_same_files(cli, model_file, jpegs, tmp_path):
    outs = {}
    for w in (0, 1, 3):
        outs[w] = tmp_path / f"w{w}"
        rc, _, err = cli(*run_args(model_file, jpegs, outs[w], w))
        assert rc == 0, err
    for w in (1, 3):
        same_tables(outs[0], outs[w])
    for w, out in outs.items():
        m = json.loads((out / "manifest.json").read_text())
        assert m["engine"]["workers"] == w
        assert m["timings"]["data_s"] >= 0  # the time the loop waited for data is recorded
    # the values themselves: the first batch as one process decodes it
    data = freqprobe.open_data(f"imagefolder:{jpegs}", image_size=16)
    first = next(iter_batches(data, 4, workers=0))
    again = next(iter_batches(data, 4, workers=2))
    assert torch.equal(first.images, again.images) and torch.equal(first.targets, again.targets)
    assert torch.equal(first.indices, again.indices)


def test_killed_run_with_workers_resumes_to_the_same_files(cli, model_file, jpegs, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert cli(*run_args(model_file, jpegs, ref, 0))[0] == 0
    got = subprocess_run(run_args(model_file, jpegs, out, 2), {"SIGNAL_AT_CALL": "3", "SIGNAL_NUMBER": "9"}, tmp_path)
    assert got.returncode == -signal.SIGKILL, got.stderr
    assert partial_dir(out).is_dir() and not out.exists()
    rc, _, err = cli(*run_args(model_file, jpegs, out, 1), "--resume")  # another worker count: the same run
    assert rc == 0, err
    same_tables(ref, out)


# A command line whose data set (a third-party source) sends SIGINT/SIGTERM to the whole process group -
# as Ctrl-C in a terminal does - from a worker, in the middle of reading batch 3, while the main process
# waits for it: the workers leave the stop to the main process, which finishes batch 3 and stops there.
GROUP_SIGNAL = textwrap.dedent("""
    import os, signal, sys, time
    import numpy as np, torch
    import freqprobe, freqprobe.plugins
    from freqprobe.cli import main

    class Slow(freqprobe.DataSource):
        name = "slow"
        num_classes = 2
        def __len__(self):
            return 24
        def load(self, indices):
            idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
            if int(idx[0]) == 8 and os.getpid() != PARENT and not os.path.exists(DONE):
                open(DONE, "w").close()
                time.sleep(1.0)  # the main process has finished batches 1 and 2 and waits for this one
                os.killpg(os.getpgrp(), SIGNUM)
                time.sleep(0.5)  # still reading when the signal arrives
            x = torch.stack([torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(int(i))) for i in idx])
            return freqprobe.Batch(x, idx % 2, idx)

    class P:
        @freqprobe.hookimpl
        def register_datasets(self):
            return [Slow]

    PARENT, SIGNUM, DONE = os.getpid(), int(sys.argv[1]), sys.argv[2]
    pm = freqprobe.get_plugin_manager(autoload=False)
    pm.register(P(), "slowdata")
    freqprobe.plugins._default = pm
    sys.exit(main(sys.argv[3:]))
""")


def _group_run(tmp_path, signum, out, *extra):
    script = tmp_path / "group.py"
    script.write_text(GROUP_SIGNAL)
    (tmp_path / "net.py").write_text("import torch\ndef net(num_classes=2):\n    torch.manual_seed(0)\n"
                                     "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, num_classes))\n")
    args = ["run", "--model", f"{tmp_path / 'net.py'}:net", "--data", "slow", "--radii", "2", "--batch-size", "4",
            "--no-fit", "--device", "cpu", "-q", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--out", str(out), *extra]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(script), str(int(signum)), str(tmp_path / f"sent{out.name}"), *args],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, start_new_session=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's job has it


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_stops_at_a_batch_boundary(tmp_path, signum):
    got = _group_run(tmp_path, signum, tmp_path / "out", "--workers", "1")
    assert got.returncode == 128 + signum, got.stderr
    assert "Traceback" not in got.stderr and "DataLoader" not in got.stderr and "Interrupted" not in got.stderr
    assert "stopped after 12 of 24 samples" in got.stderr.strip().splitlines()[-1], got.stderr
    ref = _group_run(tmp_path, signum, tmp_path / "ref", "--workers", "0")  # no worker: nothing is sent
    assert ref.returncode == 0, ref.stderr
    again = _group_run(tmp_path, signum, tmp_path / "out", "--workers", "2", "--resume")
    assert again.returncode == 0, again.stderr
    for name in ("summary.csv", "samples.csv"):
        assert (tmp_path / "ref" / name).read_bytes() == (tmp_path / "out" / name).read_bytes()


def test_a_corrupt_image_is_the_same_one_line_error_in_a_worker(cli, model_file, jpegs, tmp_path):
    (jpegs / "class2" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    errs = []
    for w in (0, 2):
        rc, _, err = cli(*run_args(model_file, jpegs, tmp_path / f"w{w}", w))
        assert rc == 2
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        errs.append(err)
    assert errs[0] == errs[1]
    assert "could not read image" in errs[0] and "broken.jpg" in errs[0] and "remove or replace it" in errs[0]
    assert not (tmp_path / "w2").exists()


@pytest.mark.parametrize("bad", ["-1", "two", "1.5"])
def test_a_bad_worker_count_is_refused_in_one_line(cli, model_file, jpegs, tmp_path, bad):
    rc, _, err = cli(*run_args(model_file, jpegs, tmp_path / "o", 0)[:-1], bad)
    assert rc == 2 and "--workers must be a number of worker processes" in err and bad in err
    assert len(err.strip().splitlines()) == 1


def test_decompose_with_workers_writes_the_same_bytes(cli, jpegs, tmp_path):
    outs = []
    for w in (0, 2):
        out = tmp_path / f"parts{w}.npz"
        rc, _, err = cli("decompose", "--data", f"imagefolder:{jpegs}", "--image-size", "16", "--radii", "4",
                         "--batch-size", "5", "--workers", str(w), "--out", str(out), "--device", "cpu")
        assert rc == 0, err
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


# ----------------------------------------------------------------------------- a third-party data source
PIDS = "FREQPROBE_TEST_PIDS"


class PidData(freqprobe.DataSource):
    """Twelve seeded 3×8×8 images; every load() appends its process id to the file named by $FREQPROBE_TEST_PIDS."""

    name = "pids"
    num_classes = 2

    def __len__(self):
        return 12

    def load(self, indices):
        with open(os.environ[PIDS], "a") as f:
            f.write(f"{os.getpid()}\n")
        if os.environ.get("FREQPROBE_TEST_DIE") and os.getpid() != int(os.environ["FREQPROBE_TEST_PARENT"]):
            os.kill(os.getpid(), signal.SIGKILL)
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        g = [torch.Generator().manual_seed(int(i)) for i in idx]
        x = torch.stack([torch.rand(3, 8, 8, generator=gi) for gi in g])
        return freqprobe.Batch(x, idx % 2, idx)


class OwnBatches(PidData):
    """The same images, but the source cuts its own batches (it overrides batches())."""

    name = "ownbatches"

    def batches(self, batch_size, *, limit=None, shuffle=False, seed=0, shard=None):
        from freqprobe.interfaces import batch_indices

        for idx in batch_indices(len(self), batch_size, limit=limit, shuffle=shuffle, seed=seed, shard=shard):
            yield self.load(idx)


class PidPlugin:
    @freqprobe.hookimpl
    def register_datasets(self):
        return [PidData, OwnBatches]


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))


def test_a_third_party_source_gets_workers_without_doing_anything(pm, tmp_path, monkeypatch):
    pm.register(PidPlugin(), "thirdparty")
    pids = tmp_path / "pids.txt"
    monkeypatch.setenv(PIDS, str(pids))
    kw = dict(params="2", batch_size=3, device="cpu", pm=pm, fit=False, mean="0.5,0.5,0.5", std="0.5,0.5,0.5")
    ref = freqprobe.run(_net(), data="pids", out=tmp_path / "w0", workers=0, **kw)
    assert set(pids.read_text().split()) == {str(os.getpid())}
    pids.unlink()
    got = freqprobe.run(_net(), data="pids", out=tmp_path / "w2", workers=2, **kw)
    seen = pids.read_text().split()
    assert len(seen) >= 4 and str(os.getpid()) not in seen[-4:]  # the four batches were read in the workers
    assert len(set(seen[-4:])) == 2
    same_tables_or_summary(ref, got, tmp_path)
    # a source that cuts its own batches is read here, whatever --workers says
    pids.unlink()
    own = freqprobe.run(_net(), data="ownbatches", out=tmp_path / "own", workers=2, **kw)
    assert set(pids.read_text().split()) == {str(os.getpid())}
    assert [r["value"] for r in own.summary] == [r["value"] for r in ref.summary]


def same_tables_or_summary(ref, got, tmp_path):
    assert [(r["variant"], r["param"], r["metric"], r["value"]) for r in got.summary] == \
           [(r["variant"], r["param"], r["metric"], r["value"]) for r in ref.summary]
    assert (tmp_path / "w0" / "samples.csv").read_bytes() == (tmp_path / "w2" / "samples.csv").read_bytes()


def test_a_worker_that_dies_is_one_line(pm, tmp_path, monkeypatch):
    pm.register(PidPlugin(), "thirdparty")
    monkeypatch.setenv(PIDS, str(tmp_path / "pids.txt"))
    monkeypatch.setenv("FREQPROBE_TEST_DIE", "1")
    monkeypatch.setenv("FREQPROBE_TEST_PARENT", str(os.getpid()))
    with pytest.raises(UserFacingError, match=r"a data worker process died while reading 'pids' .*--workers 0"):
        freqprobe.run(_net(), data="pids", params="2", batch_size=3, device="cpu", pm=pm, fit=False,
                      out=tmp_path / "o", workers=2, mean="0.5,0.5,0.5", std="0.5,0.5,0.5")
    assert not (tmp_path / "o").exists()


def test_a_third_party_load_failure_names_its_plugin_from_a_worker(pm, tmp_path):
    class Failing(PidData):
        name = "failing"

        def load(self, indices):
            raise ValueError("bad shard file")

    class P:
        @freqprobe.hookimpl
        def register_datasets(self):
            return [Failing]

    pm.register(P(), "thirdparty")
    data = freqprobe.open_data("failing", pm=pm)
    msgs = []
    for w in (0, 2):
        with pytest.raises(freqprobe.PluginError) as got:
            list(iter_batches(data, 4, workers=w))
        msgs.append(str(got.value))
    assert msgs[0] == msgs[1]
    assert "thirdparty" in msgs[0] and "load()" in msgs[0] and "ValueError: bad shard file" in msgs[0]


def test_auto_reads_in_memory_data_here_and_files_in_workers(tmp_path, jpegs, tiny_npz, monkeypatch):
    import freqprobe.loading as loading

    files = freqprobe.open_data(f"imagefolder:{jpegs}")
    arrays = freqprobe.open_data(f"npz:{tiny_npz}")
    monkeypatch.setattr(loading, "available_cores", lambda: 8)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolve_workers(None, files) == 7 and resolve_workers("auto", files) == 7
    assert resolve_workers(None, arrays) == 0 and resolve_workers(3, arrays) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun: the cores shared among the local ranks
    assert resolve_workers(None, files) == 3
    monkeypatch.setattr(loading, "available_cores", lambda: 64)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert resolve_workers(None, files) == loading.MAX_AUTO_WORKERS
    for few in (1, 2, 3):  # the main loop needs the other cores: read ahead in a thread instead
        monkeypatch.setattr(loading, "available_cores", lambda few=few: few)
        assert resolve_workers(None, files) == 0 and resolve_workers(2, files) == 2


def test_torchrun_with_workers_gives_one_process_results(freqprobe_processes, jpegs, tmp_path):
    model = tmp_path / "signet.py"
    model.write_text(MODEL)
    one = freqprobe_processes.one(run_args(model, jpegs, tmp_path / "one", 0), tmp_path)
    assert one.returncode == 0, one.stderr
    two = freqprobe_processes.two(run_args(model, jpegs, tmp_path / "two", 1), tmp_path)
    assert two.returncode == 0, two.stderr
    same_tables(tmp_path / "one", tmp_path / "two")

