"""`freqprobe train`: nothing lost, nothing half-written, no misleading message.

The output lock (the one `run` takes) before any data is loaded; a finished run is not trained over without
--resume; every grid value checked before the first setting trains; a full disk while an epoch is saved (simulated,
and on a real tmpfs as root) is one line and resumable; a damaged train_state.pt is one line; a diverging run says so
(no --allow-nonfinite, which train does not have)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from freqprobe.journal import partial_dir




#: data that cannot be loaded: a check that comes first answers before it is read
NO_DATA = ["--data", "npz:/nonexistent/data.npz", "--test-data", "npz:/nonexistent/test.npz"]
SMALL = ["--model", "paper:lenet", "--limit", "100", "--test-limit", "40", "--track-samples", "20", "-q"]


def one_line(rc, err) -> str:
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def enospc(path=None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([str(path)] if path is not None else []))


# ----------------------------------------------------------------------------- the lock, before anything is loaded
def test_train_takes_the_run_lock_before_loading_data(cli, tmp_path, train_pm):
    from freqprobe.plugin import CommandContext

    out = tmp_path / "out"
    with CommandContext(train_pm).output_lock(out, kind="run"):  # another process at work in out
        err = one_line(*cli("train", *SMALL, *NO_DATA, "--epochs", "1", "--out", out)[::2])
        assert f"another freqprobe process {os.getpid()} is writing to {out}" in err and "choose another --out" in err
        err = one_line(*cli("train", *SMALL, *NO_DATA, "--grid", "lr=1e-3,1e-4", "--out", out)[::2])
        assert "another freqprobe process" in err
    err = one_line(*cli("train", *SMALL, *NO_DATA, "--epochs", "1", "--out", "/proc/x")[::2])
    assert "cannot write to --out /proc/x" in err  # the output first, not the data
    err = one_line(*cli("train", *SMALL, *NO_DATA, "--epochs", "1", "--out", tmp_path / "new")[::2])
    assert "nonexistent" in err and not (tmp_path / "new").exists() and not partial_dir(tmp_path / "new").exists()


def test_two_trains_into_one_out_the_second_is_refused_while_the_first_lives(cli, mnist, tmp_path):
    out = tmp_path / "out"
    args = ["train", "--model", "paper:lenet", *mnist, "--limit", "2000", "--test-limit", "50", "--epochs", "2",
            "--track-samples", "20", "-q", "--out", str(out)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    env.pop("FREQPROBE_DISABLE_PLUGIN_AUTOLOAD", None)
    first = subprocess.Popen([sys.executable, "-m", "freqprobe", *args], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (partial_dir(out) / "LOCK").is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        err = one_line(*cli(*args)[::2])  # before: both trained into out, mixing their checkpoints
        assert f"another freqprobe process {first.pid} is writing to {out}" in err, err
    finally:
        _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    man = json.loads((out / "manifest.json").read_text())
    assert man["epochs_done"] == 2 and sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "vanilla_epoch001.pt", "vanilla_epoch002.pt"]
    assert not partial_dir(out).exists()  # the lock goes with the run
    err = one_line(*cli(*args)[::2])  # finished: not trained over without --resume
    assert "already holds a training run" in err and "--resume" in err


# ----------------------------------------------------------------------------- settings checked before training
@pytest.mark.parametrize("grid, needle", [
    ("lr=0.1,-1", "--lr must be a positive number, got -1"),
    ("train_on=low:4,low:abc", "--train-on must be low:R or high:R"),
    ("batch_size=10,x", "--batch-size must be a whole number of at least 1, got 'x'"),
    ("epochs=0,1", "--epochs must be a whole number of at least 1, got 0"),
    ("lr=0.1,", "an empty value"),
])
def test_every_grid_value_is_checked_before_training(cli, tmp_path, grid, needle):
    out = tmp_path / "g"
    err = one_line(*cli("train", *SMALL, *NO_DATA, "--epochs", "1", "--grid", grid, "--out", out)[::2])
    assert needle in err, err
    assert not out.exists() and not partial_dir(out).exists()


def test_config_grid_with_an_empty_list_is_one_line(cli, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": "paper:lenet", "data": "npz:/nonexistent/d.npz", "grid": {"lr": []}}))
    err = one_line(*cli("train", "--config", cfg, "--out", tmp_path / "g")[::2])  # before: ZeroDivisionError
    assert "grid lr in c.json is an empty list" in err


def test_grid_settings_that_share_a_name_get_the_grid_values():
    from freqprobe_train.command import _runs

    base = {"model": "paper:lenet", "data": "npz:/x.npz"}
    _, names = _runs(base, {"epochs": [1, 2], "lr": [1e-4, 1e-3]})  # before: "two grid settings are the same run"
    assert names == ["vanilla-epochs1", "lr0.001-epochs1", "vanilla-epochs2", "lr0.001-epochs2"]
    _, names = _runs(base, {"seed": [0, 1]})
    assert names == ["vanilla-seed0", "vanilla-seed1"]


# ----------------------------------------------------------------------------- a full disk
def test_full_disk_while_saving_an_epoch_is_one_line_and_resumes(cli, mnist, tmp_path, monkeypatch):
    """Before: torch's 'enforce fail at inline_container.cc' and a half-written temporary file."""
    from freqprobe.plugin import CommandContext

    args = ["train", *SMALL, *mnist, "--epochs", "3"]
    assert cli(*args, "--out", tmp_path / "ref")[0] == 0
    write = CommandContext.write_file
    saved = []

    def filling(path, data):
        path = Path(path)
        if path.name == "train_state.pt":
            saved.append(path)
            if len(saved) == 2:  # epoch 2's state does not fit
                tmp = path.with_name(f".{path.name}.tmp")
                tmp.write_bytes(b"half")
                tmp.unlink()  # (write_file removes its temporary file: tested in the core)
                raise enospc(path)
        return write(path, data)

    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(CommandContext, "write_file", staticmethod(filling))
        err = one_line(*cli(*args, "--out", out)[::2])
    assert f"no space left on device while writing {out / 'train_state.pt'}; 1 of 3 epochs finished" in err, err
    assert "resume with --resume after freeing space" in err
    assert not partial_dir(out).exists() and not [p for p in out.rglob("*") if ".tmp" in p.name]
    rc, _, err = cli(*args, "--out", out, "--resume")
    assert rc == 0, err
    assert (out / "curves.csv").read_bytes() == (tmp_path / "ref" / "curves.csv").read_bytes()
    a, b = (torch.load(d / "model.pt", weights_only=True)["state_dict"] for d in (out, tmp_path / "ref"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_full_disk_in_the_first_epoch_keeps_nothing(cli, mnist, tmp_path, monkeypatch):
    from freqprobe.plugin import CommandContext

    def full(path, data):
        raise enospc(path)

    out = tmp_path / "out"
    monkeypatch.setattr(CommandContext, "write_file", staticmethod(full))
    err = one_line(*cli("train", *SMALL, *mnist, "--epochs", "2", "--out", out)[::2])
    assert "0 of 2 epochs finished (nothing kept), run it again after freeing space" in err, err
    assert not out.exists() and not partial_dir(out).exists()  # a run again without --resume is not blocked


def test_full_tmpfs_while_training_is_one_line_and_resumes(cli, mnist, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a real full disk) needs root; the simulated ENOSPC tests cover the logic")
    fs = tmp_path / "fs"
    fs.mkdir()
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(fs)], capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {got.stderr.strip()}")
    try:
        args = ["train", *SMALL, *mnist, "--epochs", "5"]
        err = one_line(*cli(*args, "--out", fs / "out")[::2])  # lenet: ~1.3 MB per epoch
        assert "no space left on device while writing" in err and "epochs finished" in err, err
        assert not [p for p in fs.rglob("*") if ".tmp" in p.name]
        subprocess.run(["mount", "-o", "remount,size=32m", str(fs)], check=True)
        rc, _, err = cli(*args, "--out", fs / "out", *(["--resume"] if (fs / "out").exists() else []))
        assert rc == 0, err
        assert cli(*args, "--out", tmp_path / "ref")[0] == 0
        assert (fs / "out" / "curves.csv").read_bytes() == (tmp_path / "ref" / "curves.csv").read_bytes()
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)


# ----------------------------------------------------------------------------- messages
@pytest.fixture
def trained(cli, mnist, tmp_path):
    args = ["train", *SMALL, *mnist, "--epochs", "1", "--out", tmp_path / "r"]
    assert cli(*args)[0] == 0
    return tmp_path / "r", [a if a != "1" else "2" for a in args]


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("damage, why", [
    ("no-fingerprint", "no valid fingerprint"),  # before: KeyError: 'fingerprint'
    ("empty", "empty or cut short"),  # before: "Aborted." with exit 130
    ("pickle", "pickled Python objects"),  # before: torch's advice to set weights_only=False
    ("garbage", "not a torch file"),
])
def test_damaged_train_state_is_one_line(cli, trained, tmp_path, monkeypatch, damage, why):
    out, args = trained
    state = out / "train_state.pt"
    if damage == "no-fingerprint":
        s = torch.load(state, weights_only=True)
        del s["fingerprint"]
        torch.save(s, state)
    elif damage == "empty":
        state.write_bytes(b"")
    elif damage == "pickle":
        torch.save({"epoch": 1, "x": Evil()}, state)
    else:
        state.write_bytes(b"\x00garbage" * 20)
    monkeypatch.chdir(tmp_path)
    err = one_line(*cli(*args, "--resume")[::2])
    assert f"cannot resume {out}: its train_state.pt is damaged or unreadable (" in err and why in err, err
    assert "weights_only" not in err and "start again without --resume" in err
    assert not (tmp_path / "pwned").exists()  # nothing of the file ran


def test_a_diverging_run_says_so_without_allow_nonfinite(cli, mnist, tmp_path):
    """Before: the engine's non-finite message, which suggests --allow-nonfinite (train has no such option)."""
    rc, _, err = cli("train", *SMALL, *mnist, "--epochs", "2", "--optimizer", "sgd", "--lr", "1e30", "--out", tmp_path / "d")
    err = one_line(rc, err)
    assert "--allow-nonfinite" not in err and "lower" in err and ("diverged" in err), err


def test_tracker_names_non_finite_outputs_without_allow_nonfinite(mnist, train_pm, shared_data):
    import freqprobe
    from freqprobe import UserFacingError
    from freqprobe_train.data import first
    from freqprobe_train.tracker import FrequencyTracker

    data = first(freqprobe.open_data("mnist", root=shared_data / "mnist_test", pm=train_pm), 20, "first")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    with torch.no_grad():
        model[1].bias.fill_(float("nan"))
    tracker = FrequencyTracker({"test": data}, radii=(4,), pm=train_pm)
    with pytest.raises(UserFacingError) as ei:
        tracker.track(model, 3)
    msg = str(ei.value)
    assert "non-finite outputs" in msg and "after epoch 3" in msg and "--allow-nonfinite" not in msg
    model[1].bias.data.zero_()
    rows = tracker.track(model, 4)
    assert rows and all(r["metric"] == "accuracy" for r in rows)  # the engine's count rows stay out of curves.csv

