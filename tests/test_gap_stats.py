"""The gap probe's numbers: the sign and width of paired intervals on hand-made samples, the interval of the official
statistic (HR-Bench's cycles), the proposed view on every item, the gap by evidence size on known boxes, and the CLI's
results recomputed from its own samples.jsonl.

    python -m pytest tests/test_gap_stats.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vision_opd.cli import main
from vision_opd.data.records import Record
from vision_opd.data.validate import read_records
from vision_opd.demo.world import write_synthetic
from vision_opd.eval.evidence_size import bin_labels, evidence_share, gap_by_size, parse_edges, plot_gap_by_size
from vision_opd.eval.summary import paired_difference, summarise

DEMO_MODEL = str(Path(__file__).resolve().parents[1] / "src" / "vision_opd" / "assets" / "demo_model")


def _s(i, correct, view="full", category="c"):
    return {"id": f"i{i}", "view": view, "correct": bool(correct), "method": "rule" if correct else "none",
            "failure": None if correct else "unextractable", "extracted": "A" if correct else None, "category": category,
            "response": "", "response_tokens": 1, "truncated": False, "seconds": 0.0}


def test_the_gap_has_the_sign_of_crop_minus_full_on_a_hand_made_case():
    crop = [_s(i, c, "crop") for i, c in enumerate([1, 1, 1, 0])]
    full = [_s(i, c) for i, c in enumerate([0, 1, 0, 0])]
    d = paired_difference(crop, full)
    assert d["difference"] == pytest.approx(0.5) and (d["a"], d["b"]) == (0.75, 0.25) and d["n"] == 4
    assert paired_difference(full, crop)["difference"] == pytest.approx(-0.5)
    lo, hi = d["ci95"]
    assert -1 <= lo <= 0.5 <= hi <= 1


def test_the_paired_interval_is_a_95_percent_interval():
    """400 pairs, the crop right on 100 items where full is wrong: d has mean 0.25 and sd sqrt(0.1875), so the 95%
    interval is about 2 x 1.96 x sqrt(0.1875 / 400) = 0.0849 wide (a 99.95% one would be 0.151)."""
    crop = [_s(i, 1, "crop") for i in range(400)]
    full = [_s(i, i >= 100) for i in range(400)]
    d = paired_difference(crop, full, n_boot=4000)
    assert d["difference"] == pytest.approx(0.25)
    width = d["ci95"][1] - d["ci95"][0]
    expected = 2 * 1.96 * math.sqrt(0.25 * 0.75 / 400)
    assert 0.85 * expected < width < 1.15 * expected, (width, expected)
    assert d["ci95"][0] < 0.25 < d["ci95"][1]


def _hr_records(n_questions, cycles):
    return [Record(id=f"{q}/{c}", image=f"img{q}.png", question=f"question {q}", options=["a", "b", "c", "d"],
                   answer="A", category="single", meta={"cycle_category": c})
            for c in cycles for q in range(n_questions)]


def test_the_interval_is_of_the_official_statistic_with_hr_bench_cycles():
    """Cycles of unequal size (as in a --limit run): official = mean over cycles (0.5) != micro (0.25). The interval
    must be of the number it is printed beside."""
    recs = [r for r in _hr_records(30, ["c1", "c2"]) if not (r.meta["cycle_category"] == "c1" and int(r.id.split("/")[0]) >= 10)]
    samples = [_s(i, r.meta["cycle_category"] == "c1") | {"id": r.id} for i, r in enumerate(recs)]
    s = summarise(samples, recs, "hrbench_4k")
    assert s["accuracy"] == pytest.approx(0.5) and s["micro_accuracy"] == pytest.approx(0.25)
    lo, hi = s["accuracy_ci95"]
    assert lo <= s["accuracy"] <= hi and s["accuracy_ci95_of"].startswith("official")
    assert s["micro_accuracy_ci95"][0] <= 0.25 <= s["micro_accuracy_ci95"][1]


def test_hr_bench_resamples_questions_not_rows():
    """Four rotations of a question share its correctness: resampling questions (clusters) gives an interval about
    sqrt(4) = 2 times as wide as resampling the 800 rows as if they were independent."""
    recs = _hr_records(200, ["c1", "c2", "c3", "c4"])
    right = np.random.default_rng(0).random(200) < 0.6
    samples = [_s(i, right[int(r.id.split("/")[0])]) | {"id": r.id} for i, r in enumerate(recs)]
    s = summarise(samples, recs, "hrbench_4k")
    w_cluster = s["accuracy_ci95"][1] - s["accuracy_ci95"][0]
    w_rows = s["micro_accuracy_ci95"][1] - s["micro_accuracy_ci95"][0]
    assert 1.6 < w_cluster / w_rows < 2.5, (w_cluster, w_rows)
    assert s["accuracy"] == pytest.approx(right.mean())


def _sized_records(tmp_path) -> list[Record]:
    """200x200 images with boxes of 0.3%, 0.8%, 1.5%, 3% and 10% of the area (two items each), one with no box."""
    Image.new("RGB", (200, 200), (240, 240, 240)).save(tmp_path / "im.png")
    sides = [(10, 12), (16, 20), (20, 30), (30, 40), (50, 80)]
    recs = [Record(id=f"i{2 * k + j}", image=str(tmp_path / "im.png"), question="q", options=["a", "b"], answer="A",
                   box=(5.0, 5.0, 5.0 + w, 5.0 + h)) for k, (w, h) in enumerate(sides) for j in range(2)]
    recs.append(Record(id="i10", image=str(tmp_path / "im.png"), question="q", options=["a", "b"], answer="A",
                       teacher_image=str(tmp_path / "im.png")))
    return recs


def test_size_bins_and_their_paired_differences_on_known_boxes(tmp_path):
    recs = _sized_records(tmp_path)
    shares = {r.id: evidence_share(r) for r in recs}
    assert [round(shares[f"i{k}"], 4) for k in (0, 2, 4, 6, 8)] == [0.003, 0.008, 0.015, 0.03, 0.1]
    assert shares["i10"] is None
    full = [_s(i, i in (3, 6, 7, 8, 9)) for i in range(11)]  # full: right only on large evidence (and i3)
    crop = [_s(i, i != 9, "crop") for i in range(11)]
    table = gap_by_size({"full": full, "crop": crop}, shares, recs)
    assert [b["label"] for b in table["bins"]] == ["<0.5%", "0.5-1%", "1-2%", "2-5%", ">=5%"] and table["unknown"] == 1
    assert [b["n"] for b in table["bins"]] == [2, 2, 2, 2, 2]
    got = [b["differences"]["crop-full"]["difference"] for b in table["bins"]]
    assert got == pytest.approx([1.0, 0.5, 1.0, 0.0, -0.5])  # crop - full per bin, by hand
    assert table["bins"][0]["accuracy"] == {"full": 0.0, "crop": 1.0}
    # the intervals by hand: a bin of two pairs has per-pair differences d; a bootstrap resample's mean is
    # d1, (d1 + d2) / 2 or d2 with chances 1/4, 1/2, 1/4, so the 2.5% and 97.5% percentiles are min(d) and max(d)
    ci = [b["differences"]["crop-full"]["ci95"] for b in table["bins"]]
    assert ci == [[1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [-1.0, 0.0]]  # d: (1,1) (1,0) (1,1) (0,0) (0,-1)
    png = plot_gap_by_size(table, tmp_path / "gap_by_size.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bin_labels(parse_edges("0.01,0.1")) == ["<1%", "1-10%", ">=10%"]
    with pytest.raises(ValueError, match="--size-bins"):
        parse_edges("0.05,0.01")


def test_a_box_covering_the_whole_image_counts_in_the_last_bin(tmp_path):
    """share 1 (the whole image) and above (a box reaching past the image's edge) used to fall out of every bin."""
    Image.new("RGB", (10, 10)).save(tmp_path / "im.png")
    boxes = {"whole": (0, 0, 10, 10), "past": (-1, 0, 10, 11), "half": (0, 0, 10, 5), "tiny": (0, 0, 1, 1)}
    recs = [Record(id=i, image=str(tmp_path / "im.png"), question="q", options=["a", "b"], box=b) for i, b in boxes.items()]
    shares = {r.id: evidence_share(r) for r in recs}
    assert (shares["whole"], shares["half"]) == (1.0, 0.5) and shares["past"] > 1.0
    by_view = {"full": [_s(i, False) | {"id": i} for i in boxes], "crop": [_s(i, True, "crop") | {"id": i} for i in boxes]}
    table = gap_by_size(by_view, shares, recs, edges=(0.05, 0.5))
    assert [(b["label"], b["n"]) for b in table["bins"]] == [("<5%", 1), ("5-50%", 0), (">=50%", 3)]
    assert sum(b["n"] for b in table["bins"]) + table["unknown"] == len(recs)  # every item in one bin or unknown
    assert table["bins"][-1]["differences"]["crop-full"]["n"] == 3


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("demo12"), 12, seed=3)


def _read(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]


def test_the_gap_cli_results_recomputed_from_samples_jsonl(tmp_path, demo_data):
    out = tmp_path / "gap"
    rc = main(["gap", "--model", DEMO_MODEL, "--benchmark", "synthetic", "--data", str(demo_data), "--out", str(out),
               "--views", "full,crop", "--max-new-tokens", "4", "--no-progress", "--size-bins", "0.02,0.03"])
    assert rc == 0
    r = json.loads((out / "results.json").read_text())
    records = {x.id: x for x in read_records(demo_data)}
    by_view: dict[str, dict[str, dict]] = {}
    for s in _read(out):
        assert s["correct"] == (s["extracted"] == records[s["id"]].answer)  # correct is the extracted letter's
        assert (s["failure"] is None) == (s["extracted"] is not None)
        by_view.setdefault(s["view"], {})[s["id"]] = s
    for v, ss in by_view.items():
        acc = np.mean([s["correct"] for s in ss.values()])
        assert r["views"][v]["accuracy"] == pytest.approx(acc) and r["views"][v]["n"] == len(ss) == 12
        assert r["common"]["accuracy"][v] == pytest.approx(acc)
    d = r["differences"]["crop-full"]
    diff = np.mean([by_view["crop"][i]["correct"] - by_view["full"][i]["correct"] for i in by_view["full"]])
    assert d["difference"] == pytest.approx(diff) and d["n"] == 12 and d["ci95"][0] <= diff <= d["ci95"][1]
    assert diff > 0, "the shipped demo model answers better from the crop"
    for cat, dc in d["per_category"].items():
        ids = [i for i in by_view["full"] if records[i].category == cat]
        assert dc["difference"] == pytest.approx(np.mean([by_view["crop"][i]["correct"] - by_view["full"][i]["correct"]
                                                          for i in ids]))
    sizes = r["by_evidence_size"]
    assert sum(b["n"] for b in sizes["bins"]) == 12 and sizes["edges"] == [0.02, 0.03]
    for b in sizes["bins"]:
        ids = [i for i, sh in sizes["share_by_id"].items() if b["lo"] <= sh < b["hi"]]
        if ids:
            assert b["differences"]["crop-full"]["difference"] == pytest.approx(
                np.mean([by_view["crop"][i]["correct"] - by_view["full"][i]["correct"] for i in ids]))
    assert (out / "gap.png").exists() and (out / "gap_by_size.png").exists()


def test_the_eval_cli_results_recomputed_from_samples_jsonl(tmp_path, demo_data):
    out = tmp_path / "eval"
    assert main(["eval", "--model", DEMO_MODEL, "--benchmark", "synthetic", "--data", str(demo_data), "--out", str(out),
                 "--max-new-tokens", "4", "--no-progress"]) == 0
    r = json.loads((out / "results.json").read_text())
    samples = _read(out)
    assert r["accuracy"] == pytest.approx(np.mean([s["correct"] for s in samples]))
    assert r["answered_share"] == pytest.approx(np.mean([s["failure"] is None for s in samples]))
    assert sum(r["failures"].values()) == sum(s["failure"] is not None for s in samples)
    for cat, acc in r["per_category"].items():
        assert acc == pytest.approx(np.mean([s["correct"] for s in samples if s["category"] == cat]))


def test_the_proposed_view_is_scored_on_every_item(tmp_path, monkeypatch):
    """A proposal that falls back gives the full image as its proposed view, so `proposed` covers the same items as
    `full` (it used to leave fallbacks out and be shown beside full-view accuracy over all items)."""
    from vision_opd import proposers
    from vision_opd.proposers.window import Proposal

    data = write_synthetic(tmp_path, 4, seed=5)
    recs = read_records(data)

    def fake(model, processor, records, name, views=None, cache_path=None, progress=True):
        return {r.id: Proposal(list(r.box) if i else [0, 0, 168, 168], 0.9 if i else 0.0, 1, fallback=not i)
                for i, r in enumerate(records)}

    monkeypatch.setattr(proposers, "propose_with", fake)
    out = tmp_path / "gap"
    assert main(["gap", "--model", DEMO_MODEL, "--benchmark", "synthetic", "--data", str(data), "--out", str(out),
                 "--views", "full,crop", "--proposer", "rarity", "--max-new-tokens", "4", "--no-progress"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["proposals"]["fallback_rate"] == 0.25
    assert r["views"]["proposed"]["n"] == r["views"]["full"]["n"] == 4 and r["common"]["n"] == 4
    assert r["differences"]["proposed-full"]["n"] == 4 and r["skipped"]["per_view"]["proposed"] == 0
    s = {(x["id"], x["view"]): x for x in _read(out)}
    first = recs[0].id  # fell back: the full image, hence the full view's answer
    assert s[(first, "proposed")]["response"] == s[(first, "full")]["response"]
