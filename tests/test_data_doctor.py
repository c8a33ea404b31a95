"""The data doctor: format mistakes that pass every record check and ruin the numbers are caught per file, in
`data validate` and in the pre-flight of train / eval / gap, before any model loads; conversions whose intent is
certain (`--box-format`, lettered options, answers naming an option's text) are made on read and said."""

from __future__ import annotations

import json

import pytest

from vision_opd.cli import main
from vision_opd.data.validate import read_records

NORMALISED = "the boxes look normalised (fractions of the image); multiply x by the width and y by the height, or pass " \
             "--box-format normalized (config: data.box_format=normalized)"
XYWH = "but every box fits as [x, y, width, height] (COCO): the boxes look like [x, y, w, h]; pass --box-format xywh"


def _rows(synth_dir):
    return [json.loads(x) for x in (synth_dir / "train.jsonl").read_text().splitlines()]


def _write(synth_dir, name, rows):
    p = synth_dir / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model starts loading: a refused file must stop the run before that."""
    import vision_opd.eval.hf_backend as hf
    import vision_opd.training.loop as loop

    def refuse(*a, **k):
        raise AssertionError("a model was loaded although the data was refused")

    monkeypatch.setattr(loop, "load_model", refuse)
    monkeypatch.setattr(hf, "load_hf_generator", refuse)


def _train(path, out):
    return main(["train", f"data.train_file={path}", f"train.out_dir={out}", "train.steps=1", "train.prompts_per_step=2",
                 "rollout.samples_per_prompt=2", "rollout.max_new_tokens=3", "train.progress=false",
                 "views.teacher_pixels=12544", "train.report=false"])


def _normalised(synth_dir):
    rows = _rows(synth_dir)
    return _write(synth_dir, "doctor_norm.jsonl", [dict(r, box=[v / 168 for v in r["box"]]) for r in rows]), rows


def _xywh(synth_dir):
    rows = _rows(synth_dir)
    xywh = [dict(r, box=[r["box"][0], r["box"][1], r["box"][2] - r["box"][0], r["box"][3] - r["box"][1]]) for r in rows]
    return _write(synth_dir, "doctor_xywh.jsonl", xywh), rows


def test_normalised_boxes_are_refused_by_validate_train_and_gap(synth_dir, tmp_path, capsys, no_model):
    path, rows = _normalised(synth_dir)
    assert main(["data", "validate", str(path)]) == 1
    assert NORMALISED in capsys.readouterr().out
    assert _train(path, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert NORMALISED in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "checkpoints").exists()
    args = ["--model", "tiny:qwen2_5_vl", "--benchmark", "jsonl", "--data", str(path), "--out", str(tmp_path / "g")]
    assert main(["gap", *args]) == 2 and NORMALISED in capsys.readouterr().err
    assert not (tmp_path / "g").exists()
    # --skip-bad does not skip a file-level problem
    assert main(["data", "validate", str(path), "--skip-bad"]) == 1
    # the option converts on read: the pixel boxes come back
    capsys.readouterr()
    assert main(["data", "validate", str(path), "--box-format", "normalized"]) == 0
    assert f"{len(rows)} box(es) converted from --box-format normalized" in capsys.readouterr().out
    got = read_records(path, box_format="normalized")
    assert [v for r in got for v in r.box] == pytest.approx([v for r in rows for v in r["box"]])
    # one small box among pixel boxes is no normalised file: odd, but pixels, and not for a heuristic to refuse
    rows[0]["box"] = [0.0, 0.0, 1.0, 1.0]
    assert main(["data", "validate", str(_write(synth_dir, "doctor_one_small.jsonl", rows))]) == 0
    assert "normalised" not in capsys.readouterr().out


def test_xywh_boxes_are_named_as_such_and_converted_on_request(synth_dir, tmp_path, capsys, no_model):
    path, rows = _xywh(synth_dir)
    assert main(["data", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{len(rows)} of {len(rows)} boxes are impossible as [x1, y1, x2, y2]" in out and XYWH in out
    assert _train(path, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert XYWH in err and err.count("\n") == 1  # one line, not one per record
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    assert main(["data", "validate", str(path), "--box-format", "xywh"]) == 0
    assert f"{len(rows)} box(es) converted from --box-format xywh to pixel [x1, y1, x2, y2]" in capsys.readouterr().out
    assert [list(r.box) for r in read_records(path, box_format="xywh")] == [r["box"] for r in rows]


def test_box_format_is_recorded_in_the_run(synth_dir, tmp_path, capsys):
    import yaml

    path, rows = _xywh(synth_dir)
    out = tmp_path / "run"
    assert main(["train", f"data.train_file={path}", f"train.out_dir={out}", "train.steps=1", "train.prompts_per_step=2",
                 "rollout.samples_per_prompt=2", "rollout.max_new_tokens=3", "train.progress=false",
                 "views.teacher_pixels=12544", "train.report=false", "data.box_format=xywh"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["box_format"] == "xywh"
    assert "box(es) converted from --box-format xywh" in capsys.readouterr().out


def test_options_that_carry_their_own_letter_are_stripped_and_said(synth_dir, capsys):
    rows = _rows(synth_dir)
    lettered = [dict(r, options=[f"{'ABCDEFGH'[i]}. {o}" for i, o in enumerate(r["options"])]) for r in rows]
    path = _write(synth_dir, "doctor_letters.jsonl", lettered)
    assert main(["data", "validate", str(path)]) == 0
    assert (f"the options of {len(rows)} record(s) carry their own letters (\"A. orange\"): stripped on read (the "
            "prompt adds the letters)") in capsys.readouterr().out
    assert [r.options for r in read_records(path)] == [r["options"] for r in rows]
    from vision_opd.eval.benchmarks.common import format_prompt

    assert "A. A." not in format_prompt(read_records(path)[0])
    # options that are not all lettered in order are left as written ("A4 paper" is no letter)
    mixed = [dict(rows[0], options=["A4 paper", "B. letter"])]
    mixed[0].pop("answer")
    assert read_records(_write(synth_dir, "doctor_mixed.jsonl", mixed))[0].options == ["A4 paper", "B. letter"]


def test_answers_naming_an_option_text_are_read_as_its_letter(synth_dir, capsys):
    rows = _rows(synth_dir)
    texts = [dict(r, answer=r["options"]["ABCDEFGH".index(r["answer"])].upper()) for r in rows]
    path = _write(synth_dir, "doctor_text.jsonl", texts)
    assert main(["data", "validate", str(path)]) == 0
    assert f"{len(rows)} answer(s) name an option's text" in capsys.readouterr().out
    assert [r.answer for r in read_records(path)] == [r["answer"] for r in rows]


@pytest.mark.parametrize("kind", ["array", "csv"])
def test_a_json_array_or_csv_is_one_line_not_one_per_row(synth_dir, tmp_path, capsys, no_model, kind):
    rows = _rows(synth_dir)
    path = synth_dir / f"doctor_{kind}.jsonl"
    if kind == "array":
        path.write_text(json.dumps(rows, indent=1))
        line = "is a JSON array, not JSON Lines (one JSON object per line)"
    else:
        path.write_text("id,image,question\n" + "".join(f"{r['id']},{r['image']},{r['question']}\n" for r in rows))
        line = "is not JSON Lines (line 1 reads 'id,image,question': a CSV file?)"
    assert main(["data", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert line in out and "invalid JSON" not in out
    assert main(["eval", "--model", "tiny:qwen2_5_vl", "--benchmark", "jsonl", "--data", str(path),
                 "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert line in err and err.count("\n") == 1 and not (tmp_path / "e").exists()
    assert _train(path, tmp_path / "run") == 2 and line in capsys.readouterr().err
