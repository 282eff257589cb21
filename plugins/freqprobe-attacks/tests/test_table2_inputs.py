"""``freqprobe table2``: --resume only in a folder a table2 made, every ρ checked on every model before the first row,
--allow-nonfinite (which its message suggests) as for `run`, a failing row names itself and what is kept, and
torchrun (every process runs every row; rank 0 writes the tables)."""

from __future__ import annotations

import csv

import pytest
import torch

NET = (
    "import torch\nfrom torch import nn\n"
    "def net(num_classes=4):\n    torch.manual_seed(0)\n"
    "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 16 * 16, num_classes))\n"
)
NAN_NET = NET + (
    "class NaN(torch.nn.Module):\n"
    "    def __init__(self):\n        super().__init__()\n        self.inner = net()\n"
    "    def forward(self, x):\n        return self.inner(x) * float('nan')\n"
    "def nan_net(num_classes=4):\n    return NaN()\n"
)


@pytest.fixture
def both(first_party_pm):
    return first_party_pm("attacks", "smoothing")


@pytest.fixture
def model(tmp_path):
    f = tmp_path / "net.py"
    f.write_text(NAN_NET)
    ns: dict = {}
    exec(NET, ns)
    torch.manual_seed(1)
    m = ns["net"]()
    for p in m.parameters():
        p.data.normal_(0, 0.1)
    torch.save(m.state_dict(), tmp_path / "w.pt")
    return f, tmp_path / "w.pt"


def cmd(model, tiny_npz, out, *extra, rho="0,0.5"):
    f, w = model
    return ["table2", "--model", f"{f}:net", "--checkpoint", w, "--data", f"npz:{tiny_npz}", "--rho", rho, "--attack", "fgsm",
            "--eps", "0.03", "--limit", "12", "--batch-size", "6", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
            "--device", "cpu", "-q", "--out", out, *extra]


def one_line(rc, err) -> str:
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_resume_refuses_a_folder_table2_did_not_make(cli, both, model, tiny_npz, tmp_path):
    """Before: --resume wrote its rows next to the user's files (`run` refuses the same folder)."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    err = one_line(*cli(*cmd(model, tiny_npz, out), "--resume")[::2])
    assert "already exists and is not empty" in err and "was not made by table2" in err and "notes.txt" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # its own folder (the mark table2.json) resumes; without --resume it is refused
    t2 = tmp_path / "t2"
    assert cli(*cmd(model, tiny_npz, t2))[0] == 0
    assert (t2 / "table2.json").is_file()
    err = one_line(*cli(*cmd(model, tiny_npz, t2))[::2])
    assert "already exists and is not empty" in err and "--resume" in err
    rc, _, err = cli(*[a for a in cmd(model, tiny_npz, t2) if a != "-q"], "--resume")
    assert rc == 0 and err.count("finished before") == 2, err
    # a folder of an earlier table2 (no mark): only its rows and tables
    (t2 / "table2.json").unlink()
    assert cli(*cmd(model, tiny_npz, t2), "--resume")[0] == 0


def test_a_bad_rho_is_refused_before_any_row(cli, both, model, tiny_npz, tmp_path):
    """Before: --rho 0,1e40 ran the ρ=0 row, then failed with "nothing was published", leaving 01-…-rho0/."""
    out = tmp_path / "t2"
    err = one_line(*cli(*cmd(model, tiny_npz, out, rho="0,1e40"))[::2])
    assert "1e+40" in err and "smaller" in err, err
    assert not out.exists()


def test_allow_nonfinite_is_an_option_of_table2(cli, both, model, tiny_npz, tmp_path):
    """The engine's non-finite message suggests --allow-nonfinite: table2 has it (before: "No such option")."""
    f, w = model
    args = [a if a != f"{f}:net" else f"{f}:nan_net" for a in cmd(model, tiny_npz, tmp_path / "a", rho="0")]
    args[args.index("--checkpoint"):args.index("--checkpoint") + 2] = ["--model-arg", "num_classes=4"]
    err = one_line(*cli(*args)[::2])
    assert "non-finite outputs" in err and "--allow-nonfinite" in err
    args[args.index("--out") + 1] = tmp_path / "b"
    rc, _, err = cli(*args, "--allow-nonfinite")
    assert rc == 0, err
    assert (tmp_path / "b" / "table2.csv").is_file()


def test_a_failing_row_names_itself_and_what_is_kept(cli, both, model, tiny_npz, tmp_path):
    f, w = model
    out = tmp_path / "t2"
    args = cmd(model, tiny_npz, out, rho="0")
    i = args.index("--checkpoint")
    args[i + 2:i + 2] = ["--model", f"{f}:net", "--checkpoint", tmp_path / "missing.pt"]
    err = one_line(*cli(*args)[::2])
    assert err.startswith("Error: row 02-net-rho0: checkpoint not found") and "the row before it is kept" in err, err
    assert "--resume reuses them" in err and (out / "01-net-rho0" / "summary.csv").is_file()


def test_table2_under_torchrun_writes_what_one_process_writes(freqprobe_processes, model, tiny_npz, tmp_path):
    """Before: rank 1 failed with a traceback (reading a summary rank 0 had not written), leaving rank-0-only rows."""
    args = cmd(model, tiny_npz, tmp_path / "x")[:-2]
    one = freqprobe_processes.one([*args, "--out", tmp_path / "one"], tmp_path)
    assert one.returncode == 0, one.stderr
    two = freqprobe_processes.two([*args, "--out", tmp_path / "two"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "Traceback" not in two.stderr
    assert two.stdout.count("wrote ") == 1  # rank 0 prints the table, once
    for name in ("table2.csv", "01-net-rho0/summary.csv", "01-net-rho0/samples.csv", "01-net-rho0.5/summary.csv"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    with open(tmp_path / "two" / "table2.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["rho"] for r in rows] == ["0", "0.5"] and all(r["clean"] for r in rows)
