"""``freqprobe report`` on folders whose files are damaged (issue 17): a summary.csv / curves.csv / grid.csv that is
garbage, empty, without its columns or with non-numbers, a manifest.json that is not an object or not JSON. Each is
refused in one line naming the file and what is wrong (exit 2, no page written), never an empty or nonsense table;
the HFC-reliance line comes only from a score the summary holds (docs/results.md).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

TINY = ("import torch\nfrom torch import nn\n\n"
        "def tinynet(num_classes=4):\n"
        "    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), "
        "nn.Linear(8, num_classes))\n")


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory) -> Path:
    """One real ``freqprobe run`` folder (tiny CNN, 24 random images), made once for the module; tests copy it."""
    import freqprobe

    d = tmp_path_factory.mktemp("probe-run")
    (d / "tinynet.py").write_text(TINY)
    rng = np.random.default_rng(0)
    np.savez(d / "tiny.npz", x=rng.integers(0, 256, size=(24, 16, 16, 3), dtype=np.uint8), y=np.arange(24) % 4)
    out = d / "run"
    freqprobe.run(f"{d / 'tinynet.py'}:tinynet", data=f"npz:{d / 'tiny.npz'}", fit=False, params=[2, 4], out=str(out),
                  device="cpu")
    return out


@pytest.fixture
def run_copy(probe_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(probe_run, dst)
    return dst


def report(cli, folder: Path, tmp_path: Path) -> tuple[int, str, str, Path]:
    html = tmp_path / "r.html"
    rc, out, err = cli("report", folder, "--out", html)
    return rc, out, err, html


def refused(cli, folder: Path, tmp_path: Path, *needles: str) -> str:
    rc, _, err, html = report(cli, folder, tmp_path)
    assert rc == 2 and err.startswith("Error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    assert not html.exists()
    return err


def test_the_intact_run_reports(cli, run_copy, tmp_path):
    rc, _, err, html = report(cli, run_copy, tmp_path)
    assert rc == 0, err
    assert "HFC-reliance (accuracy, r 2–4)" in html.read_text(encoding="utf-8")


SUMMARY_CASES = {
    "binary garbage": (b"\x89\xff\x00\xfe garbage \x00\x01", "is not a CSV text file (not UTF-8"),
    "plain text": (b"this is not a table\nat all\n", "no column variant, param, metric, value"),
    "empty": (b"", "is empty (no header line)"),
    "only a header": (b"probe,transform,decomposer,variant,param,metric,value,n\n", "holds no rows (only its header)"),
    "missing value column": (b"probe,variant,param,metric,n\nlfc-hfc,original,,accuracy,24\n", "no column value"),
    "non-numeric value": (b"probe,transform,decomposer,variant,param,metric,value,n\n"
                          b"lfc-hfc,,fft-radial,original,,accuracy,abc,24\n", "line 2: value is 'abc', not a number"),
    "empty value": (b"probe,transform,decomposer,variant,param,metric,value,n\n"
                    b"lfc-hfc,,fft-radial,original,,accuracy,,24\n", "line 2: value is '', not a number"),
    "bad count": (b"probe,transform,decomposer,variant,param,metric,value,n\n"
                  b"lfc-hfc,,fft-radial,original,,accuracy,0.5,many\n", "line 2: n is 'many'"),
    "short row": (b"probe,transform,decomposer,variant,param,metric,value,n\nlfc-hfc,,fft-radial,original\n",
                  "line 2: 4 fields where the header has 8"),
    "NUL bytes": (b"\x00\x00\x00\x00\n\x00\n", "is not the table it should be: no column variant"),
}


@pytest.mark.parametrize("case", list(SUMMARY_CASES))
def test_damaged_summary_is_refused_naming_the_file(cli, run_copy, tmp_path, case):
    content, needle = SUMMARY_CASES[case]
    (run_copy / "summary.csv").write_bytes(content)
    refused(cli, run_copy, tmp_path, str(run_copy / "summary.csv"), needle)


def test_nan_values_written_by_allow_nonfinite_still_report(cli, run_copy, tmp_path):
    p = run_copy / "summary.csv"
    rows = list(csv.DictReader(p.open(newline="")))
    header = list(rows[0])
    rows[1]["value"] = "nan"
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, header)
        w.writeheader()
        w.writerows(rows)
    rc, _, err, html = report(cli, run_copy, tmp_path)
    assert rc == 0, err
    assert "<td>nan</td>" in html.read_text(encoding="utf-8")


@pytest.mark.parametrize("content, needle", [
    ("[1, 2]", "holds an array, not a JSON object"),
    ('"a run"', "holds a string, not a JSON object"),
    ("null", "holds null, not a JSON object"),
    ("{not json", "cannot read"),
])
def test_manifest_not_an_object_is_refused(cli, run_copy, tmp_path, content, needle):
    (run_copy / "manifest.json").write_text(content)
    refused(cli, run_copy, tmp_path, str(run_copy / "manifest.json"), needle)


def test_manifest_fields_of_the_wrong_type_do_not_break_the_section(cli, run_copy, tmp_path):
    m = json.loads((run_copy / "manifest.json").read_text())
    m.update(decomposer="fft-radial", probe=5, hfc_reliance="high")
    (run_copy / "manifest.json").write_text(json.dumps(m))
    rc, _, err, html = report(cli, run_copy, tmp_path)
    assert rc == 0, err
    assert "HFC-reliance (accuracy): " in html.read_text(encoding="utf-8")  # from the summary's row


def _rewrite_summary(run: Path, keep) -> None:
    p = run / "summary.csv"
    with open(p, newline="") as f:
        r = csv.DictReader(f)
        header, rows = r.fieldnames, [row for row in r if keep(row)]
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, header)
        w.writeheader()
        w.writerows(rows)


def test_no_score_line_the_summary_does_not_back(cli, run_copy, tmp_path):
    """The manifest holds an HFC-reliance score, the summary (the published numbers) does not: no score line."""
    assert json.loads((run_copy / "manifest.json").read_text())["hfc_reliance"]
    _rewrite_summary(run_copy, lambda row: row["variant"] != "hfc-reliance")
    rc, _, err, html = report(cli, run_copy, tmp_path)
    assert rc == 0, err
    assert "HFC-reliance" not in html.read_text(encoding="utf-8").split("<details>")[0]  # (the manifest block may name it)


def test_score_line_shows_the_summary_value_when_the_manifest_disagrees(cli, run_copy, tmp_path):
    m = json.loads((run_copy / "manifest.json").read_text())
    m["hfc_reliance"][0]["value"] = 0.123456
    (run_copy / "manifest.json").write_text(json.dumps(m))
    with open(run_copy / "summary.csv", newline="") as f:
        score = next(r for r in csv.DictReader(f) if r["variant"] == "hfc-reliance")
    rc, _, err, html = report(cli, run_copy, tmp_path)
    assert rc == 0, err
    text = html.read_text(encoding="utf-8").split("<details>")[0]
    assert f"HFC-reliance (accuracy): {float(score['value']):.4f}" in text and "0.123" not in text


# ------------------------------------------------------------------ the train plugin's folders
HEAD = "epoch,split,variant,param,metric,value,n\n"
ROWS = "1,test,original,,accuracy,0.3,10\n2,test,original,,accuracy,0.5,10\n2,test,low,4,accuracy,0.4,10\n"


def train_folders(tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "train-run"
    run.mkdir()
    (run / "curves.csv").write_text(HEAD + ROWS)
    (run / "manifest.json").write_text(json.dumps({"setting": "lr0.1", "model": "m"}))
    grid = tmp_path / "grid"
    (grid / "a").mkdir(parents=True)
    (grid / "a" / "curves.csv").write_text(HEAD + ROWS)
    (grid / "grid.csv").write_text("setting," + HEAD + "".join(f"a,{r}\n" for r in ROWS.splitlines()))
    return run, grid


def test_intact_training_folders_report(cli, first_party_pm, tmp_path):
    first_party_pm("train")
    run, grid = train_folders(tmp_path)
    rc, _, err = cli("report", run, grid, "--out", tmp_path / "r.html")
    assert rc == 0, err


CURVE_CASES = {
    "garbage": ("\x00\x01binary\n", "is not the table it should be"),
    "plain text": ("lorem ipsum\ndolor\n", "no column epoch, split, variant, param, metric, value, n"),
    "empty": ("", "is empty"),
    "only a header": (HEAD, "holds no rows"),
    "non-numeric value": (HEAD + "1,test,original,,accuracy,high,10\n", "line 2: value is 'high', not a number"),
    "non-integer epoch": (HEAD + "one,test,original,,accuracy,0.5,10\n", "line 2: epoch is 'one', not a whole number"),
}


@pytest.mark.parametrize("case", list(CURVE_CASES))
@pytest.mark.parametrize("where", ["run", "grid run", "grid.csv"])
def test_damaged_training_tables_are_refused(cli, first_party_pm, tmp_path, case, where):
    first_party_pm("train")
    run, grid = train_folders(tmp_path)
    content, needle = CURVE_CASES[case]
    target = {"run": run / "curves.csv", "grid run": grid / "a" / "curves.csv", "grid.csv": grid / "grid.csv"}[where]
    if where == "grid.csv" and case == "plain text":
        needle = "no column setting, epoch"
    target.write_text("setting," + content if where == "grid.csv" and content.startswith("epoch") else content)
    if where == "grid.csv" and case == "non-numeric value":
        target.write_text("setting," + HEAD + "a,1,test,original,,accuracy,high,10\n")
    if where == "grid.csv" and case == "non-integer epoch":
        target.write_text("setting," + HEAD + "a,one,test,original,,accuracy,0.5,10\n")
    refused(cli, grid if where != "run" else run, tmp_path, str(target), needle)


def test_training_manifest_not_an_object_is_refused(cli, first_party_pm, tmp_path):
    first_party_pm("train")
    run, _ = train_folders(tmp_path)
    (run / "manifest.json").write_text("[1, 2]")
    refused(cli, run, tmp_path, "holds an array, not a JSON object")
