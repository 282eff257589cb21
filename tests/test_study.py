"""Several models in one command (a study): one run folder per model under --out, resumable, and the comparison table
(``freqprobe report``, and printed at the end) that ranks them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import freqprobe
from freqprobe.report import comparison_rows


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def two_checkpoints(tmp_path, tiny_model_file) -> tuple[Path, Path]:
    """Two weights of the tiny model (the second: the first with its head scaled and shifted)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("study_tinynet", tiny_model_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a = mod.tinynet().state_dict()
    b = {k: (v * 3 + 0.1 if k.startswith("4.") else v) for k, v in a.items()}
    pa, pb = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(a, pa)
    torch.save(b, pb)
    return pa, pb


def test_a_study_writes_one_run_per_model_and_ranks_them(cli, tmp_path, tiny_model_file, tiny_npz, two_checkpoints):
    a, b = two_checkpoints
    models = tmp_path / "models.txt"
    models.write_text(f"# the study\n{tiny_model_file}:tinynet a.pt\n\n{tiny_model_file}:tinynet {b}  # absolute\n")
    out = tmp_path / "study"
    args = ["run", "--models", models, "--data", f"npz:{tiny_npz}", "--radii", "4,8", "--device", "cpu", "--out", out]
    rc, stdout, err = cli(*args)
    assert rc == 0, err
    subs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert subs == ["tinynet.py-tinynet--a", "tinynet.py-tinynet--b"]
    marker = json.loads((out / "study.json").read_text())
    assert [r["folder"] for r in marker["runs"]] == subs and marker["runs"][1]["checkpoint"] == str(b)
    for name, ck in zip(subs, (a, b)):
        man = json.loads((out / name / "manifest.json").read_text())
        assert man["model"]["checkpoint"] == str(ck.resolve()) and man["probe"]["name"] == "lfc-hfc"
    header, rows = comparison_rows([out])
    assert header[:4] == ["model", "data", "HFC-reliance", "original accuracy"]
    assert [r[0] for r in rows] == sorted((r[0] for r in rows), key=lambda m: -dict((x[0], x[2]) for x in rows)[m])
    assert len(rows) == 2 and {r[0].rsplit(" ", 1)[1] for r in rows} == {"(a.pt)", "(b.pt)"}
    for sub in subs:  # each row's numbers are its run's own
        summary = read_csv(out / sub / "summary.csv")
        score = next(float(r["value"]) for r in summary if r["variant"] == "hfc-reliance")
        assert any(abs(r[2] - score) < 1e-6 for r in rows)
    assert "the study, ranked" in stdout and "HFC-reliance" in stdout
    rc, _, err = cli("report", out, "--out", tmp_path / "study.html")
    assert rc == 0, err
    page = (tmp_path / "study.html").read_text()
    assert "Comparison across runs" in page and "(study)" in page and page.count("tinynet--a") >= 1

    # run again: refused before anything runs; with --resume the finished runs are skipped
    rc, _, err = cli(*args)
    assert rc == 2 and "already exists (a run of this study); pass --resume" in err
    rc, stdout, err = cli(*args, "--resume")
    assert rc == 0, err
    assert err.count("finished before") == 2 or stdout.count("finished before") == 2


def test_repeated_model_flags_are_a_study_too(cli, tmp_path, tiny_model_file, tiny_npz, tiny_weights):
    """--model twice (one --checkpoint for both); without --out a study is refused in one line."""
    other = tmp_path / "othernet.py"
    other.write_text(tiny_model_file.read_text())
    out = tmp_path / "two"
    rc, stdout, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--model", f"{other}:tinynet", "--checkpoint",
                          tiny_weights, "--data", f"npz:{tiny_npz}", "--radii", "4", "--out", out, "-q")
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["othernet.py-tinynet", "study.json", "tinynet.py-tinynet"]
    one, two = (read_csv(out / n / "summary.csv") for n in ("othernet.py-tinynet", "tinynet.py-tinynet"))
    assert one == two  # the same weights
    rc, _, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--model", f"{other}:tinynet", "--data", f"npz:{tiny_npz}",
                     "--radii", "4", "--no-fit", "-q")
    assert rc == 2 and "several models: pass --out FOLDER" in err


@pytest.mark.parametrize("text, needle", [
    ("a b c\n", "line 1: 'a b c' has 3 fields; write SPEC [CHECKPOINT]"),
    ("# nothing\n\n", "lists no model"),
    ("x.py:f\nx.py:f\n", "is listed twice in the study"),
])
def test_bad_models_files_are_one_line(cli, tmp_path, tiny_npz, text, needle):
    models = tmp_path / "m.txt"
    models.write_text(text)
    rc, _, err = cli("run", "--models", models, "--data", f"npz:{tiny_npz}", "--out", tmp_path / "s")
    lines = [s for s in err.splitlines() if s.startswith("Error:")]
    assert rc == 2 and len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "s").exists()


def test_the_python_api_takes_a_study_through_run_study(tmp_path, tiny_model_file, tiny_npz, two_checkpoints, pm):
    a, b = two_checkpoints
    with pytest.raises(freqprobe.UserFacingError, match="run_study"):
        freqprobe.run([f"{tiny_model_file}:tinynet"] * 2, data=f"npz:{tiny_npz}", pm=pm)
    with pytest.raises(freqprobe.UserFacingError, match="not both"):
        freqprobe.run_study([(f"{tiny_model_file}:tinynet", str(a))], out=tmp_path / "s", checkpoint=str(b), pm=pm)
    got = freqprobe.run_study([(f"{tiny_model_file}:tinynet", str(a)), (f"{tiny_model_file}:tinynet", str(b))],
                              out=tmp_path / "s", data=f"npz:{tiny_npz}", params="4", device="cpu", pm=pm)
    assert [Path(r.extras["out_dir"]).name for r in got] == ["tinynet.py-tinynet--a", "tinynet.py-tinynet--b"]
