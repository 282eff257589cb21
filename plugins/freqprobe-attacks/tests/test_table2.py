"""``freqprobe table2``: models × ρ × attacks × ε, one run folder per row, table2.csv/md, --resume."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch

import freqprobe_smoothing.hooks

NET = (
    "import torch\nfrom torch import nn\n"
    "def net(num_classes=4):\n    torch.manual_seed(0)\n"
    "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 16 * 16, num_classes))\n"
)


@pytest.fixture
def both(first_party_pm):
    return first_party_pm("attacks", "smoothing")


@pytest.fixture
def two_models(tmp_path):
    f = tmp_path / "net.py"
    f.write_text(NET)
    ns: dict = {}
    exec(NET, ns)
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        m = ns["net"]()
        for p in m.parameters():
            p.data.normal_(0, 0.1)
        paths.append(tmp_path / f"w{seed}.pt")
        torch.save(m.state_dict(), paths[-1])
    return f, paths


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cmd(f, paths, tiny_npz, out, *extra):
    return ["table2", "--model", f"{f}:net", "--checkpoint", paths[0], "--model", f"{f}:net", "--checkpoint", paths[1],
            "--data", f"npz:{tiny_npz}", "--rho", "0,0.5", "--attack", "fgsm", "--attack", "pgd:steps=2", "--eps", "0.03,0.1",
            "--limit", "12", "--batch-size", "6", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--device", "cpu", "-q", "--out", out, *extra]


def test_table2_rows_are_runs(cli, both, two_models, tiny_npz, tmp_path):
    f, paths = two_models
    out = tmp_path / "t2"
    rc, stdout, err = cli(*cmd(f, paths, tiny_npz, out))
    assert rc == 0, err
    table = read(out / "table2.csv")
    assert list(table[0]) == ["model", "checkpoint", "rho", "clean", "fgsm@0.03", "fgsm@0.1", "pgd:steps=2@0.03", "pgd:steps=2@0.1"]
    assert [(r["checkpoint"].endswith(p), r["rho"]) for r, p in zip(table, ["w1.pt", "w1.pt", "w2.pt", "w2.pt"])] == \
           [(True, "0"), (True, "0.5"), (True, "0"), (True, "0.5")]
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == ["01-net-rho0", "01-net-rho0.5", "02-net-rho0", "02-net-rho0.5"]
    for row, folder in zip(table, folders):
        summary = read(out / folder / "summary.csv")
        assert {r["transform"] for r in summary} == {f"smooth:rho={row['rho']}"}
        clean = next(float(r["value"]) for r in summary if r["variant"] == "original" and r["metric"] == "accuracy")
        assert float(row["clean"]) == pytest.approx(clean, abs=1e-4)
        pgd = next(float(r["value"]) for r in summary if r["attack"] == "pgd:steps=2" and r["eps"] == "0.1")
        assert float(row["pgd:steps=2@0.1"]) == pytest.approx(pgd, abs=1e-4)
        assert {r["variant"] for r in summary} == {"original", "adversarial"}  # the frequency view is off by default
    md = (out / "table2.md").read_text()
    assert "| model | checkpoint | rho | clean |" in md and "freqprobe table2" in md
    assert "clean" in stdout
    # smoothing changes the model: the ρ=0.5 row differs from the ρ=0 row somewhere
    a, b = (read(out / d / "samples.csv") for d in ("01-net-rho0", "01-net-rho0.5"))
    assert [r["confidence"] for r in a] != [r["confidence"] for r in b]
    # freqprobe report: the plugin's section (report_folder hook) with the table and each row's run
    rc, _, err = cli("report", out, "--out", tmp_path / "report.html")
    assert rc == 0, err
    html = (tmp_path / "report.html").read_text()
    assert "<h2>t2 — Table 2</h2>" in html and "<th" in html and "fgsm@0.03" in html
    assert html.count('<section class="run sub">') == 4 and "01-net-rho0.5" in html


def test_table2_resume_reuses_finished_rows(cli, both, two_models, tiny_npz, tmp_path):
    f, paths = two_models
    out = tmp_path / "t2"
    assert cli(*cmd(f, paths, tiny_npz, out))[0] == 0
    before = (out / "table2.csv").read_text()
    shutil.rmtree(out / "02-net-rho0.5")
    (out / "table2.csv").unlink()
    rc, _, err = cli(*[a for a in cmd(f, paths, tiny_npz, out) if a != "-q"], "--resume")
    assert rc == 0, err
    assert err.count("finished before") == 3
    assert (out / "table2.csv").read_text() == before
    rc, _, err = cli(*cmd(f, paths, tiny_npz, out))
    assert rc == 2 and "already exists and is not empty" in err and "--resume" in err


@pytest.mark.parametrize("extra,needle", [
    (("--rho", "-1"), "--rho values must be distinct, finite and >= 0"),
    (("--rho", "a"), "--rho must be comma-separated numbers"),
    (("--attack", "fgsx"), "Did you mean: fgsm?"),
    (("--eps", "0"), "--eps values must be positive"),
])
def test_table2_bad_inputs(cli, both, two_models, tiny_npz, tmp_path, extra, needle):
    f, paths = two_models
    out = tmp_path / "t2"
    rc, _, err = cli(*cmd(f, paths, tiny_npz, out), *extra)
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert needle in err and not out.exists()


def test_table2_needs_pairs_and_the_smoothing_plugin(cli, first_party_pm, two_models, tiny_npz, tmp_path):
    f, paths = two_models
    pm = first_party_pm("attacks")
    rc, _, err = cli(*cmd(f, paths, tiny_npz, tmp_path / "a"))
    assert rc == 2 and "Unknown transform 'smooth'" in err
    pm.register(freqprobe_smoothing.hooks, "smoothing")
    rc, _, err = cli("table2", "--model", f"{f}:net", "--model", f"{f}:net", "--checkpoint", paths[0], "--data",
                     f"npz:{tiny_npz}", "--out", tmp_path / "b")
    assert rc == 2 and "2 --model but 1 --checkpoint" in err
