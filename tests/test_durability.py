"""Nothing lost, nothing half-written: a full disk (ENOSPC) in `decompose` (npz, PNG folders, COCO images) and in `run`'s
checkpoints is one line, exit 2, with the partial state kept and resumable after freeing space; the journal is durable
(fsync of the checkpoint and its folder); a damaged `samples.csv` under `.partial` is one line; the output lock alone
(`CommandContext.output_lock`, for a command that writes into its output folder itself) and durable file writes.

Each disk-full case runs in-process with the write that fills the disk simulated (monkeypatched to raise
``OSError(ENOSPC)``), and, where this process may mount one (root), on a real 2 MiB tmpfs."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import freqprobe
from freqprobe.journal import partial_dir

MODEL = textwrap.dedent("""
    import torch
    from torch import nn

    def net(num_classes=4):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, num_classes))
""")

RUN = ["--radii", "4,8", "--batch-size", "4", "--no-fit", "--device", "cpu", "-q", "--gallery-size", "2"]
FULL = "no space left on device while writing"
AFTER = "resume with --resume after freeing space"


def enospc(path=None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([str(path)] if path is not None else []))


@pytest.fixture
def model_file(tmp_path) -> Path:
    p = tmp_path / "net.py"
    p.write_text(MODEL)
    return p


def run_args(model_file, npz, out):
    return ["run", "--model", f"{model_file}:net", "--data", f"npz:{npz}", *RUN, "--out", out]


def one_line(rc, err):
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def same_run(a: Path, b: Path) -> None:
    for name in ("summary.csv", "samples.csv", "figure2.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())


def no_temporaries(folder: Path) -> None:
    left = [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert not left, left


# ----------------------------------------------------------------------------- a real full disk (root only)
@pytest.fixture
def tmpfs(tmp_path):
    """A 2 MiB tmpfs at ``tmp_path/fs`` (``grow(mib)`` frees space by growing it); skipped unless it can be mounted."""
    fs = tmp_path / "fs"
    fs.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a real full disk) needs root; the simulated ENOSPC tests cover the logic")
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(fs)], capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {got.stderr.strip()}")

    try:
        yield fs
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)


def grow(fs: Path, mib: int) -> None:
    """Free space on the tmpfs ``fs``: make it ``mib`` MiB."""
    subprocess.run(["mount", "-o", f"remount,size={mib}m", str(fs)], check=True)


def freqprobe_subprocess(args, cwd):
    env = {**os.environ, "FREQPROBE_DISABLE_PLUGIN_AUTOLOAD": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "freqprobe", *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.fixture
def big_npz(tmp_path) -> Path:
    """200 random 3×32×32 images: an export of them does not fit in 2 MiB."""
    rng = np.random.default_rng(0)
    p = tmp_path / "big.npz"
    np.savez(p, x=rng.integers(0, 256, size=(200, 32, 32, 3), dtype=np.uint8), y=np.arange(200) % 4)
    return p


def test_decompose_npz_on_a_full_tmpfs_is_one_line_and_resumes(tmpfs, big_npz, tmp_path):
    """Before: SIGBUS (exit 135, no message) from the memory-mapped arrays, a 2 MB partial left."""
    args = ["decompose", "--data", f"npz:{big_npz}", "--radii", "4", "--limit", "40", "-q"]
    out = tmpfs / "o.npz"
    got = freqprobe_subprocess([*args, "--out", out], tmp_path)  # the arrays fit, their zip does not
    assert got.returncode == 2, (got.returncode, got.stderr[-2000:])
    err = one_line(2, got.stderr)
    assert FULL in err and "o.npz" in err and "40 of 40 samples finished" in err and AFTER in err
    assert not out.exists() and partial_dir(out).is_dir() and not (partial_dir(out) / "out.npz").exists()
    grow(tmpfs, 16)
    got = freqprobe_subprocess([*args, "--out", out, "--resume"], tmp_path)
    assert got.returncode == 0, got.stderr
    assert freqprobe_subprocess([*args, "--out", tmp_path / "ref.npz"], tmp_path).returncode == 0
    assert out.read_bytes() == (tmp_path / "ref.npz").read_bytes()
    # arrays that do not fit at all: refused when they are allocated, before the first batch
    got = freqprobe_subprocess(["decompose", "--data", f"npz:{big_npz}", "--radii", "4,8,12,16", "-q", "--out", tmpfs / "big.npz"],
                               tmp_path)
    err = one_line(got.returncode, got.stderr)
    assert FULL in err and "0 of 200 samples finished" in err


def test_run_on_a_full_tmpfs_is_one_line_and_resumes(tmpfs, model_file, big_npz, tmp_path):
    args = ["run", "--model", f"{model_file}:net", "--data", f"npz:{big_npz}", "--radii", "4,8", "--batch-size", "10",
            "--no-fit", "--device", "cpu", "-q"]
    filler = tmpfs / "filler"
    filler.write_bytes(b"\0" * (2048 - 40) * 1024)  # ~40 KiB left: the checkpoints and rows do not fit
    out = tmpfs / "run"
    got = freqprobe_subprocess([*args, "--out", out], tmp_path)
    err = one_line(got.returncode, got.stderr)
    assert FULL in err and "samples finished" in err and AFTER in err, err
    assert not out.exists() and (partial_dir(out) / "journal.json").is_file()
    no_temporaries(partial_dir(out))
    filler.unlink()  # free the space
    got = freqprobe_subprocess([*args, "--out", out, "--resume"], tmp_path)
    assert got.returncode == 0, got.stderr
    assert freqprobe_subprocess([*args, "--out", tmp_path / "ref"], tmp_path).returncode == 0
    for name in ("summary.csv", "samples.csv"):
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


# ----------------------------------------------------------------------------- a full disk, simulated
def test_decompose_npz_full_disk_simulated(cli, tiny_npz, tmp_path, monkeypatch):
    base = ["decompose", "--data", f"npz:{tiny_npz}", "--radii", "4,8", "--batch-size", "5", "--device", "cpu", "-q"]
    ref, out = tmp_path / "ref.npz", tmp_path / "out.npz"
    assert cli(*base, "--out", ref)[0] == 0

    def full(fd, offset, length):
        raise enospc()

    monkeypatch.setattr(os, "posix_fallocate", full)  # the arrays cannot be allocated
    err = one_line(*cli(*base, "--out", out)[::2])
    assert FULL in err and "x.npy" in err and "0 of 24 samples finished" in err and AFTER in err
    monkeypatch.undo()
    import freqprobe.export as export

    def zip_full(folder, keys, dest):
        Path(dest).write_bytes(b"partial zip")
        raise enospc()

    monkeypatch.setattr(export, "_zip", zip_full)  # the arrays fit, the .npz does not
    err = one_line(*cli(*base, "--out", out, "--resume")[::2])
    assert FULL in err and "out.npz" in err and "24 of 24 samples finished" in err
    assert not (partial_dir(out) / "out.npz").exists()  # the half-written zip gave its space back
    monkeypatch.undo()  # space freed
    rc, _, err = cli(*base, "--out", out, "--resume")
    assert rc == 0, err
    assert out.read_bytes() == ref.read_bytes() and not partial_dir(out).exists()


def test_decompose_png_folders_full_disk_simulated(cli, tiny_npz, tmp_path, monkeypatch):
    from PIL import Image

    base = ["decompose", "--data", f"npz:{tiny_npz}", "--radii", "4", "--batch-size", "4", "--device", "cpu", "-q"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert cli(*base, "--out", ref)[0] == 0
    save = Image.Image.save
    calls = {"n": 0}

    def filling(self, fp, *a, **k):
        calls["n"] += 1
        if calls["n"] > 30:  # 3 folders × 4 images per batch: the disk fills in the third batch
            Path(fp).write_bytes(b"\x89PNG half")
            raise enospc()
        return save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", filling)
    err = one_line(*cli(*base, "--out", out)[::2])
    assert FULL in err and ".png" in err and "of 24 samples finished" in err and AFTER in err
    done = json.loads((partial_dir(out) / "journal.json").read_text()).get("done", 0)
    assert done in (0, 4, 8)  # at most the two finished batches are recorded
    monkeypatch.undo()
    rc, _, err = cli(*base, "--out", out, "--resume")
    assert rc == 0, err
    files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert all((ref / f).read_bytes() == (out / f).read_bytes() for f in files)


def test_decompose_coco_images_full_disk_simulated(cli, coco_pm, shared_data, tmp_path, monkeypatch):
    """Before: a traceback (numpy's writer reports a full disk as 'N requested and M written', with no errno)."""
    import freqprobe.export as export

    root = shared_data / "coco_val2017_mini"
    if not (root / "instances_val2017_mini.json").is_file():
        pytest.skip(f"COCO mini not found in {root}")
    base = ["decompose", "--data", f"coco:{root / 'val2017'}:{root / 'instances_val2017_mini.json'}", "--radii", "128",
            "--limit", "4", "--batch-size", "2", "--device", "cpu", "-q"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert cli(*base, "--out", ref)[0] == 0
    save = export._save_npy
    calls = {"n": 0}

    def filling(path, t):
        calls["n"] += 1
        if calls["n"] == 6:  # two .npy per image: the disk fills at the third image (second batch)
            Path(path).write_bytes(b"\x93NUMPY half")
            raise enospc(path)
        return save(path, t)

    with monkeypatch.context() as m:  # (the plugin manager's patch stays)
        m.setattr(export, "_save_npy", filling)
        err = one_line(*cli(*base, "--out", out)[::2])
    assert FULL in err and ".npy" in err and "of 4 samples finished" in err and AFTER in err
    rc, _, err = cli(*base, "--out", out, "--resume")
    assert rc == 0, err
    files = sorted(p.relative_to(ref) for p in ref.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert all((ref / f).read_bytes() == (out / f).read_bytes() for f in files if f.name != "manifest.json")


def test_run_checkpoint_full_disk_simulated(cli, model_file, tiny_npz, tmp_path, monkeypatch):
    """Before: a traceback from torch.save (or the rows' stream); now one line, the last checkpoint kept, resumable."""
    from freqprobe import journal

    ref, out = tmp_path / "ref", tmp_path / "out"
    assert cli(*run_args(model_file, tiny_npz, ref))[0] == 0
    write = journal.write_durably
    calls = {"n": 0}

    def filling(path, data):
        if Path(path).name == "progress.pt":
            calls["n"] += 1
            if calls["n"] == 2:  # the first checkpoint is kept
                raise enospc()
        return write(path, data)

    monkeypatch.setattr(journal, "write_durably", filling)
    err = one_line(*cli(*run_args(model_file, tiny_npz, out))[::2])
    assert FULL in err and "progress.pt" in err and "samples finished" in err and AFTER in err, err
    assert not out.exists() and (partial_dir(out) / "progress.pt").is_file()
    no_temporaries(partial_dir(out))
    monkeypatch.undo()
    rc, _, err = cli(*run_args(model_file, tiny_npz, out), "--resume")
    assert rc == 0, err
    same_run(ref, out)


def test_run_rows_stream_full_disk_names_samples_csv(cli, model_file, tiny_npz, tmp_path, monkeypatch):
    from freqprobe import tables

    calls = {"n": 0}
    append = tables.SampleTable.append

    def filling(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 12 and self.sink is not None:
            class Full:
                name = self.sink.name

                def write(self, data):
                    raise enospc()

            real, self.sink = self.sink, Full()
            try:
                return append(self, *a, **k)
            finally:
                self.sink = real
        return append(self, *a, **k)

    monkeypatch.setattr(tables.SampleTable, "append", filling)
    err = one_line(*cli(*run_args(model_file, tiny_npz, tmp_path / "out"))[::2])
    assert FULL in err and "samples.csv" in err and AFTER in err


# ----------------------------------------------------------------------------- durable journal
def test_checkpoints_and_journal_are_fsynced_with_their_folder(model_file, tiny_npz, tmp_path, monkeypatch, pm):
    """The docs promise resume after a power loss: the checkpoint, the rows it counts and their folder reach the disk."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to name the synced files")
    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "out"
    freqprobe.run(f"{model_file}:net", data=f"npz:{tiny_npz}", params="4,8", batch_size=4, fit=False, device="cpu",
                  out=out, pm=pm)
    part = str(partial_dir(out))
    names = {Path(s).name for s in synced}
    assert {".progress.pt.tmp", ".journal.json.tmp", "samples.csv"} <= names, names
    assert part in synced  # the folder of the renamed checkpoint
    assert str(out.parent) in synced  # the rename that publishes the finished run
    assert (out / "summary.csv").is_file()


def test_write_file_is_atomic_and_names_the_file_on_a_full_disk(tmp_path, monkeypatch):
    from freqprobe.plugin import CommandContext

    target = tmp_path / "a.json"
    CommandContext.write_file(target, "old\n")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(enospc()))
    with pytest.raises(OSError) as ei:
        CommandContext.write_file(target, "new\n")
    assert ei.value.errno == errno.ENOSPC and ei.value.filename == str(target)
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


# ----------------------------------------------------------------------------- a damaged samples.csv under .partial
@pytest.fixture
def stopped_run(cli, model_file, tiny_npz, tmp_path, monkeypatch):
    """A run stopped (as by SIGINT) after three batches: its .partial folder with samples.csv and a checkpoint."""
    from test_resume import _stopping_metric  # the stopping metric of the resume tests

    Stopping = _stopping_metric(5 * 3)  # after three batches (5 variants each)

    out = tmp_path / "out"
    kw = dict(data=f"npz:{tiny_npz}", params="4,8", batch_size=4, fit=False, device="cpu", metrics=("accuracy", "stopping"))
    pm = freqprobe.get_plugin_manager(autoload=False)

    class P:
        @freqprobe.hookimpl
        def register_metrics(self):
            return [Stopping]

    pm.register(P(), "stopper")
    from freqprobe.journal import clear_stop

    try:
        with pytest.raises(freqprobe.StopRequested):
            freqprobe.run(f"{model_file}:net", out=out, pm=pm, **kw)
    finally:
        clear_stop()
    Stopping.calls["n"] = -10**6
    return out, (lambda **more: freqprobe.run(f"{model_file}:net", out=out, pm=pm, **{**kw, **more}))


def test_shortened_samples_csv_is_one_line(stopped_run):
    """Before: IndexError (or a NUL-padded file) from the cut rows."""
    out, again = stopped_run
    rows = partial_dir(out) / "samples.csv"
    lines = rows.read_text().splitlines(keepends=True)
    rows.write_text("".join(lines[: len(lines) // 2]))
    with pytest.raises(freqprobe.UserFacingError, match=r"cannot resume .*samples\.csv.* shorter than its checkpoint.*"
                                                          r"leave out --resume to start again"):
        again(resume=True)
    assert partial_dir(out).is_dir()  # kept: the user decides
    res = again()  # without --resume: starts again
    assert (out / "summary.csv").is_file() and res.summary


def test_damaged_samples_csv_rows_are_one_line(stopped_run):
    out, again = stopped_run
    rows = partial_dir(out) / "samples.csv"
    text = rows.read_text()
    head, _, body = text.partition("\n")
    rows.write_text(head + "\n" + body.replace(",", ";", 3))  # the same size, rows without their cells
    with pytest.raises(freqprobe.UserFacingError, match=r"does not hold the rows its checkpoint records.*leave out --resume"):
        again(resume=True)


# ----------------------------------------------------------------------------- the output lock alone
def test_output_lock_refuses_a_second_process_and_leaves_nothing(tmp_path, cli, model_file, tiny_npz):
    from freqprobe.plugin import CommandContext

    out = tmp_path / "deep" / "out"
    app = CommandContext(freqprobe.get_plugin_manager(autoload=False))
    with app.output_lock(out, kind="train"):
        assert (partial_dir(out) / "LOCK").read_text().strip() == str(os.getpid())
        rc, _, err = cli(*run_args(model_file, tiny_npz, out))  # `run` takes the same lock: refused
        assert rc == 2 and f"another freqprobe process {os.getpid()} is writing to {out}" in err, err
        got = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import freqprobe
            from freqprobe.plugin import CommandContext
            try:
                with CommandContext(freqprobe.get_plugin_manager(autoload=False)).output_lock({str(out)!r}, kind="train"):
                    print("taken")
            except freqprobe.UserFacingError as exc:
                print("refused:", exc)
        """)], capture_output=True, text=True, env={**os.environ, "FREQPROBE_DISABLE_PLUGIN_AUTOLOAD": "1"})
        assert got.stdout.startswith("refused: another freqprobe process"), got.stdout + got.stderr
    assert not (tmp_path / "deep").exists()  # nothing written: the lock and the folders made for it are gone
    with pytest.raises(freqprobe.UserFacingError, match="cannot write to --out /proc/x"):
        with app.output_lock("/proc/x", kind="train"):
            pass
