"""`freqprobe report`: one self-contained HTML page from real run folders; bad inputs; a headless browser."""

from __future__ import annotations

import base64
import csv
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from freqprobe.report import PAPER_URL


class _Page(HTMLParser):
    """Collects tags, headings, img srcs, link hrefs and script tags; any parser error fails the test."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.imgs, self.hrefs, self.srcs, self.scripts, self.headings = [], [], [], [], []
        self._in_h = None
        self.stack = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in ("img", "meta", "br", "hr", "link"):
            self.stack.append(tag)
        if tag == "img":
            self.imgs.append(a.get("src") or "")
        if a.get("src") is not None:
            self.srcs.append(a["src"])
        if a.get("href") is not None:
            self.hrefs.append(a["href"])
        if tag == "script":
            self.scripts.append(a)
        if re.fullmatch(r"h[1-6]", tag):
            self._in_h = tag
            self.headings.append("")

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()
        if tag == self._in_h:
            self._in_h = None

    def handle_data(self, data):
        if self._in_h:
            self.headings[-1] += data


def parse(text: str) -> _Page:
    p = _Page()
    p.feed(text)
    p.close()
    assert p.stack == [], p.stack
    return p


def png_of(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    data = base64.b64decode(src[len(prefix):], validate=True)
    with Image.open(io.BytesIO(data)) as im:
        im.verify()
    return data


@pytest.fixture
def two_runs(cli, tiny_model_file, tiny_npz, tmp_path):
    runs = []
    for name, extra in (("run-w8", []), ("run-w4", ["--model-arg", "width=4"])):
        out = tmp_path / name
        rc, _, err = cli("run", "--model", f"{tiny_model_file}:tinynet", *extra, "--data", f"npz:{tiny_npz}",
                         "--no-fit", "--radii", "2,4", "--out", out, "-q")
        assert rc == 0, err
        runs.append(out)
    return runs


def summary_values(run: Path) -> list[str]:
    with open(run / "summary.csv", newline="") as f:
        return [f"{float(r['value']):.4f}" for r in csv.DictReader(f) if r["variant"] != "hfc-reliance"]


def test_report_of_two_runs(cli, two_runs, tmp_path):
    html_path = tmp_path / "report.html"
    rc, out, err = cli("report", *two_runs, "--out", html_path, "--title", "Two <tiny> runs")
    assert rc == 0, err
    assert "wrote" in out
    text = html_path.read_text(encoding="utf-8")
    page = parse(text)
    assert "Two &lt;tiny&gt; runs" in text and "<tiny>" not in text  # the title is escaped
    for run in two_runs:
        assert any(h.startswith(run.name) and "tinynet" in h and "npz:" in h and "lfc-hfc" in h for h in page.headings), page.headings
        for v in summary_values(run):
            assert f"<td>{v}</td>" in text
    assert text.count("HFC-reliance (accuracy, r 2–4)") == 2
    assert text.count("<details>") == 2 and "&quot;hfc_reliance&quot;" in text  # the manifest, escaped
    # the overlay + each run's accuracy.png, all embedded PNGs
    assert len(page.imgs) >= 3
    for src in page.imgs:
        png_of(src)
    for url in page.srcs + page.hrefs:
        if url.startswith(("http://", "https://")):
            assert url == PAPER_URL, url
    assert all(s.get("src") is None for s in page.scripts)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.html")]  # no temp file left


def test_not_a_run_folder_is_one_line(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    rc, out, err = cli("report", empty, "--out", tmp_path / "r.html")
    assert rc == 2
    assert err.startswith("Error: ") and "not a freqprobe run folder" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r.html").exists()


def test_out_in_a_missing_folder_is_one_line(cli, two_runs, tmp_path):
    rc, out, err = cli("report", two_runs[0], "--out", tmp_path / "missing" / "r.html")
    assert rc == 2
    assert "does not exist" in err and len(err.strip().splitlines()) == 1, err
    rc, out, err = cli("report", two_runs[0], "--out", tmp_path / "r.txt")
    assert rc == 2 and ".html" in err and len(err.strip().splitlines()) == 1, err


def test_table2_and_grid_folders(cli, first_party_pm, two_runs, tmp_path):
    """Folder kinds the plugins declare (``report_folder``): a table2 folder (its run folders inside) and a training grid.

    The core knows only probe runs: without the plugins that wrote them these folders are refused in one line."""
    t2 = tmp_path / "t2"
    t2.mkdir()
    shutil.copytree(two_runs[0], t2 / "rho0")
    (t2 / "table2.csv").write_text("model,checkpoint,rho,clean\nm,,0,0.2500\n")
    (t2 / "table2.md").write_text("# Table 2: <accuracy>\n\n`freqprobe table2 ...`\n\n| model | checkpoint | rho | clean |\n"
                                  "|---|---|---|---|\n| m |  | 0 | 0.2500 |\n")
    grid = tmp_path / "grid"
    (grid / "a").mkdir(parents=True)
    head = "epoch,split,variant,param,metric,value,n\n"
    rows = "1,test,original,,accuracy,0.3,10\n2,test,original,,accuracy,0.5,10\n2,test,low,4,accuracy,0.4,10\n"
    (grid / "a" / "curves.csv").write_text(head + rows)
    (grid / "grid.csv").write_text("setting," + head + "".join(f"a,{r}\n" for r in rows.splitlines()))
    html_path = tmp_path / "r.html"
    first_party_pm()
    rc, _, err = cli("report", t2, "--out", html_path)
    assert rc == 2 and "no installed report section recognises it" in err and len(err.strip().splitlines()) == 1
    first_party_pm("attacks", "train")
    rc, _, err = cli("report", t2, grid, "--out", html_path)
    assert rc == 0, err
    text = html_path.read_text(encoding="utf-8")
    page = parse(text)
    assert "Table 2: &lt;accuracy&gt;" in text and "<th>clean</th>" in text
    assert any(h.startswith("rho0") for h in page.headings)
    assert "<td>0.5000</td>" in text and "<td>0.4000</td>" in text and "<td>0.3000</td>" not in text  # last epoch
    for src in page.imgs:
        png_of(src)


# ------------------------------------------------------------------ a real browser


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_headless_browser_renders_it(cli, two_runs, tmp_path):
    exe = _browser()
    if exe is None:
        pytest.skip("no chromium/chromium-browser/google-chrome on PATH")
    html_path = tmp_path / "report.html"
    rc, _, err = cli("report", *two_runs, "--out", html_path)
    assert rc == 0, err
    n_imgs = len(parse(html_path.read_text(encoding="utf-8")).imgs)
    base = [exe, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = parse(dom.stdout)
    for run in two_runs:
        assert any(h.startswith(run.name) for h in page.headings), page.headings
    assert len(page.imgs) == n_imgs >= 3
    shot = tmp_path / "shot.png"
    proc = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1200,2000", html_path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    with Image.open(shot) as im:
        assert im.size == (1200, 2000)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 50  # not a blank page
