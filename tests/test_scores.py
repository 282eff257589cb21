"""The HFC-reliance score (freqprobe/scores.py): the formula against hand-computed numbers, and a run's own row."""

from __future__ import annotations

import csv
import json
import math

import pytest

from freqprobe.scores import VARIANT, format_score, hfc_reliance, reliance_value


def rows(original, low, *, metric="accuracy", transform="", high=None, comp="low", decomposer="fft-radial", n=100):
    """Summary rows as a run writes them: original, then low/high per radius in the order given."""
    out = [{"probe": "lfc-hfc", "transform": transform, "decomposer": decomposer, "variant": "original", "param": None,
            "metric": metric, "value": original, "n": n}]
    for r, v in low.items():
        out.append({"probe": "lfc-hfc", "transform": transform, "decomposer": decomposer, "variant": comp, "param": r,
                    "metric": metric, "value": v, "n": n})
        out.append({"probe": "lfc-hfc", "transform": transform, "decomposer": decomposer, "variant": "high", "param": r,
                    "metric": metric, "value": (high or {}).get(r, 0.1), "n": n})
    return out


def one(summary, **kw):
    got = hfc_reliance(summary, **kw)
    assert len(got) == 1, got
    return got[0]


# ------------------------------------------------------------------ the formula, by hand
def test_several_radii():
    # d = max(0, a_o - a_l) = 0.6, 0.4, 0.2, 0.0 at r = 4, 8, 12, 16
    # trapezoid: 4·(0.6+0.4)/2 + 4·(0.4+0.2)/2 + 4·(0.2+0.0)/2 = 2.0 + 1.2 + 0.4 = 3.6; /(16-4) = 0.3; /a_o = 0.375
    s = one(rows(0.8, {4.0: 0.2, 8.0: 0.4, 12.0: 0.6, 16.0: 0.8}))
    assert s["value"] == pytest.approx(0.375)
    assert s["radii"] == [4.0, 8.0, 12.0, 16.0] and s["low"] == [0.2, 0.4, 0.6, 0.8]
    assert s["original"] == 0.8 and s["component"] == "low" and s["metric"] == "accuracy" and s["n"] == 100


def test_uneven_spacing_weights_by_radius():
    # r = 2, 4, 8; d = 0.4, 0.2, 0.0: 2·0.3 + 4·0.1 = 1.0; /(8-2) = 1/6; /0.5 = 1/3
    assert one(rows(0.5, {2: 0.1, 4: 0.3, 8: 0.5}))["value"] == pytest.approx(1 / 3)


def test_single_radius():
    assert one(rows(0.8, {8: 0.2}))["value"] == pytest.approx(0.75)  # (0.8 - 0.2) / 0.8
    assert one(rows(0.8, {8: 0.9}))["value"] == 0.0  # clipped


def test_low_part_above_original_is_clipped_to_zero():
    # d = max(0, 0.5-0.7) = 0 at r=4, 0.2 at r=8: 4·(0+0.2)/2 = 0.4; /4 = 0.1; /0.5 = 0.2 (unclipped it would be 0)
    assert one(rows(0.5, {4: 0.7, 8: 0.3}))["value"] == pytest.approx(0.2)


def test_bounds():
    assert one(rows(0.6, {4: 0.6, 8: 0.7}))["value"] == 0.0  # low parts as good as the originals
    assert one(rows(0.6, {4: 0.0, 8: 0.0, 16: 0.0}))["value"] == pytest.approx(1.0)  # never right


def test_zero_original_accuracy_is_nan():
    s = one(rows(0.0, {4: 0.1, 8: 0.2}))
    assert math.isnan(s["value"]) and s["original"] == 0.0
    assert "undefined" in format_score(s)
    assert math.isnan(reliance_value(0.0, [4, 8], [0.0, 0.0]))


def test_no_low_rows_is_nan():
    summary = rows(0.7, {4: 0.3})
    s = one(summary, component="dominant")  # no such component in these rows
    assert math.isnan(s["value"]) and s["radii"] == []
    assert math.isnan(reliance_value(0.7, [], []))


def test_unsorted_radii_in_the_rows():
    assert one(rows(0.8, {16.0: 0.8, 4.0: 0.2, 12.0: 0.6, 8.0: 0.4}))["value"] == pytest.approx(0.375)


def test_rows_read_back_from_csv_strings(tmp_path):
    """summary.csv read with DictReader: every cell a string, empty for none; the score's own row is ignored."""
    summary = rows(0.8, {4: 0.2, 8: 0.4, 12: 0.6, 16: 0.8}) + [
        {"probe": "lfc-hfc", "transform": "", "decomposer": "fft-radial", "variant": VARIANT, "param": None,
         "metric": "accuracy", "value": 0.999, "n": 100}]
    from freqprobe.tables import write_summary

    write_summary(summary, tmp_path / "s.csv")
    with open(tmp_path / "s.csv", newline="") as f:
        back = list(csv.DictReader(f))
    assert one(back)["value"] == pytest.approx(0.375)


def test_groups_per_transform_and_metric_and_skips_attacked_rows():
    summary = (rows(0.8, {4: 0.2, 8: 0.4}) + rows(0.5, {4: 0.5, 8: 0.5}, transform="smooth:rho=1")
               + rows(0.9, {4: 0.45, 8: 0.9}, metric="top5-accuracy"))
    summary.append({"probe": "lfc-hfc", "transform": "", "decomposer": "fft-radial", "variant": "low", "param": 12,
                    "attack": "pgd", "eps": 0.03, "metric": "accuracy", "value": 0.0, "n": 100})
    got = {(s["transform"], s["metric"]): s["value"] for s in hfc_reliance(summary, metric=None)}
    # (0.6+0.4)/2·4 / 4 / 0.8 = 0.625; a_l = a_o: 0; top-5: d = 0.45, 0 -> 0.225 / 0.9 = 0.25
    assert got == {("", "accuracy"): pytest.approx(0.625), ("smooth:rho=1", "accuracy"): 0.0,
                   ("", "top5-accuracy"): pytest.approx(0.25)}
    assert [s["metric"] for s in hfc_reliance(summary)] == ["accuracy", "accuracy"]  # default: accuracy only


def test_svd_first_component_and_formatting():
    s = one(rows(0.8, {1: 0.2, 2: 0.4}, comp="dominant", decomposer="svd"))
    assert s["component"] == "dominant" and s["value"] == pytest.approx(((0.6 + 0.4) / 2) / 0.8)
    assert format_score(s, "k") == "HFC-reliance (accuracy, k 1–2): 0.625"
    assert format_score(one(rows(0.8, {8: 0.2})), "r") == "HFC-reliance (accuracy, r 8): 0.750"


# ------------------------------------------------------------------ a run's own row
def _edge_model_and_labels(tiny_model_file, tiny_npz, tmp_path):
    """tinynet with zero-sum (edge-detector) kernels, and the data labelled with its own predictions.

    The originals are then (nearly) all right and the low parts, which lose the edges, mostly not:
    a score well above 0.
    """
    import importlib.util

    import numpy as np
    import torch

    spec = importlib.util.spec_from_file_location("tinynet_for_scores", tiny_model_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = mod.tinynet()
    d = np.load(tiny_npz)
    x = torch.from_numpy(d["x"].astype(np.float32).transpose(0, 3, 1, 2) / 255.0)
    with torch.no_grad():
        m[0].weight.sub_(m[0].weight.mean((2, 3), keepdim=True))
        f = m[:4](x)
        m[4].weight.copy_(m[4].weight * 3 / (f.std(0) + 1e-8))
        m[4].bias.copy_(-(m[4].weight @ f.mean(0)))
        pred = m(x).argmax(-1).numpy()
    weights, data = tmp_path / "edge.pt", tmp_path / "self_labelled.npz"
    torch.save(m.state_dict(), weights)
    np.savez(data, x=d["x"], y=pred)
    return weights, data


def test_lfc_hfc_run_writes_the_score(cli, tiny_model_file, tiny_npz, tmp_path):
    weights, data = _edge_model_and_labels(tiny_model_file, tiny_npz, tmp_path)
    out = tmp_path / "out"
    rc, stdout, err = cli("run", "--model", f"{tiny_model_file}:tinynet", "--checkpoint", weights, "--data", f"npz:{data}",
                          "--no-fit", "--radii", "2,4,8", "--out", out, "--device", "cpu")
    assert rc == 0, err
    with open(out / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    score_rows = [r for r in summary if r["variant"] == VARIANT]
    assert len(score_rows) == 1
    row = score_rows[0]
    assert (row["probe"], row["transform"], row["decomposer"], row["param"], row["metric"], row["n"]) == \
        ("lfc-hfc", "", "fft-radial", "", "accuracy", "24")
    assert summary[-1] is row  # after the table's rows

    # the formula applied to this run's own accuracy rows
    a_o = float(next(r["value"] for r in summary if r["variant"] == "original"))
    low = sorted((float(r["param"]), float(r["value"])) for r in summary if r["variant"] == "low")
    assert [r for r, _ in low] == [2.0, 4.0, 8.0]
    d = [max(0.0, a_o - v) for _, v in low]
    expect = ((d[0] + d[1]) / 2 * 2 + (d[1] + d[2]) / 2 * 4) / 6 / a_o if a_o > 0 else float("nan")
    assert a_o > 0.9 and 0.1 < expect <= 1.0, (a_o, low)  # a non-trivial score
    assert float(row["value"]) == pytest.approx(expect, abs=2e-6)  # the CSV's six decimals

    # the terminal: the score as its own line under the table, not a table row
    lines = stdout.splitlines()
    assert f"HFC-reliance (accuracy, r 2–8): {float(row['value']):.3f}" in lines
    assert lines.index(next(ln for ln in lines if ln.startswith("HFC-reliance"))) > lines.index(
        next(ln for ln in lines if ln.startswith("high")))
    assert not any(ln.startswith(VARIANT) for ln in stdout.splitlines())

    man = json.loads((out / "manifest.json").read_text())
    sec = man["hfc_reliance"]
    assert len(sec) == 1 and sec[0]["range"] == [2.0, 8.0] and sec[0]["radii"] == [2.0, 4.0, 8.0]
    assert sec[0]["original"] == pytest.approx(a_o, abs=1e-6) and sec[0]["component"] == "low"
    assert (out / "accuracy.png").exists()
