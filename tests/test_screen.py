"""`vision-opd data screen`: the items of a gap folder where the crop and the full view part ways, written as a
Records file that training reads: crop right / full wrong (reads labels) or greedy answers that differ (label-free)."""

from __future__ import annotations

import json

from vision_opd.eval.screen import keep_ids


def _s(i, view, extracted, correct):
    return {"id": i, "view": view, "extracted": extracted, "correct": correct}


def test_keep_ids_on_constructed_samples():
    samples = [_s("a", "full", "A", False), _s("a", "crop", "B", True),    # crop right, full wrong: both filters
               _s("b", "full", "B", True), _s("b", "crop", "B", True),     # same answer: neither
               _s("c", "full", None, False), _s("c", "crop", "C", False),  # differ, but the crop is wrong too
               _s("d", "full", "A", True), _s("d", "crop", "C", False),    # crop wrong, full right: differ only
               _s("e", "crop", "A", True), _s("f", "redbox", "A", True)]   # no full answer: not compared
    assert keep_ids(samples, label_free=False) == (["a"], 4)
    assert keep_ids(samples, label_free=True) == (["a", "c", "d"], 4)


def test_screen_writes_training_records_with_counts(report_gap, tmp_path, capsys):
    from vision_opd.cli import main
    from vision_opd.config import load_config
    from vision_opd.data.sources import load_train_records

    samples = [json.loads(line) for line in (report_gap / "samples.jsonl").read_text().splitlines()]
    view = {(s["id"], s["view"]): s for s in samples}
    ids = sorted({s["id"] for s in samples})
    want = {"labels": [i for i in ids if view[i, "crop"]["correct"] and not view[i, "full"]["correct"]],
            "free": [i for i in ids if view[i, "crop"]["extracted"] != view[i, "full"]["extracted"]]}
    assert want["labels"] and want["free"] and len(want["labels"]) < len(ids)  # the filters keep some, not all
    for name, flag in (("labels", []), ("free", ["--label-free"])):
        out = tmp_path / f"{name}.jsonl"
        assert main(["data", "screen", str(report_gap), "--out", str(out), *flag]) == 0
        printed = capsys.readouterr().out
        assert f"{len(ids)} items with a crop and a full answer; kept {len(want[name])}" in printed
        assert ("reads the labels" in printed) == (name == "labels")
        assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == sorted(want[name])
        cfg = load_config(None, [f"data.train_file={out}", "data.allow_outside_root=true"])
        records, _ = load_train_records(cfg.data, cfg.views)
        assert sorted(r.id for r in records) == sorted(want[name]) and all(r.box is not None for r in records)


def test_screen_refuses_a_folder_that_is_not_a_gap_probe_in_one_line(tmp_path, capsys):
    from vision_opd.cli import main

    assert main(["data", "screen", str(tmp_path), "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a gap folder" in err[0]
