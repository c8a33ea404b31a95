"""Data sources (Records JSONL, Vision-OPD-6K, parquet) and the metrics logger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vision_opd.data.crops import draw_red_box
from vision_opd.data.records import Record, RecordError, write_records
from vision_opd.data.sources import detect_format, load_source, load_source_checked, split_problem
from vision_opd.training.run_log import MetricsLogger

HINT = "Only focus on the objects inside the red bounding box in the image to answer this question."
INSTRUCTION = "Answer with the option's letter from the given choices."
QUESTIONS = [  # (question, options, answer, bbox)
    ("What colour is the mug on the table?", ["red", "blue", "green", "white"], "B", [10, 12, 30, 28]),
    ("How many birds sit on the wire?", ["1", "2", "3", "4"], "D", [40, 5, 70, 20]),
    ("Which word is written on the sign?", ["STOP", "EXIT", "OPEN", "SALE"], "A", [2, 40, 50, 58]),
]


def _problem(question: str, options: list[str]) -> str:
    opts = "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(options))
    return f"<image>{question}\n\n{HINT}\n\n{opts}\n\n{INSTRUCTION}"


def _sixk_rows(root):
    """The exact Vision-OPD-6K layout: train.jsonl (7 keys) + images/, teacher_images/, original_images/."""
    for sub in ("images", "teacher_images", "original_images"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (q, opts, ans, box) in enumerate(QUESTIONS):
        h = f"{i:02d}e1ee5de37b9cc685b1b0af4eaaa0ef"
        original = Image.new("RGB", (80, 60), (200, 200, 200 - 40 * i))
        original.save(root / "original_images" / f"{h}.png")
        draw_red_box(original, box, expand_ratio=0.05).save(root / "images" / f"{h}.png")
        original.crop(tuple(box)).resize((2 * (box[2] - box[0]), 2 * (box[3] - box[1]))).save(
            root / "teacher_images" / f"{i:06d}_{h}.png")
        clean = f"{q}\n" + "\n".join(f"{'ABCD'[j]}. {o}" for j, o in enumerate(opts))
        rows.append({"images": [f"images/{h}.png"], "teacher_images": [f"teacher_images/{i:06d}_{h}.png"],
                     "original_images": [f"original_images/{h}.png"], "bbox": box, "problem": _problem(q, opts),
                     "answer": ans, "extra_info": {"question": clean, "answer": ans}})
    del rows[2]["extra_info"]["question"]  # the question then comes from cleaning `problem`
    return rows


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def sixk(tmp_path):
    root = tmp_path / "Vision-OPD-6K"
    return _write_jsonl(root / "train.jsonl", _sixk_rows(root))


def test_split_problem_drops_image_hint_options_and_instruction():
    q, opts = split_problem(_problem("What is it?", ["a cat", "a dog"]))
    assert q == "What is it?" and opts == ["a cat", "a dog"]
    assert split_problem("<image> Describe the scene.") == ("Describe the scene.", None)


def test_sixk_layout_loads_into_records(sixk):
    records = load_source(sixk, check_images=True)
    assert [r.id for r in records] == ["row1", "row2", "row3"]
    root = sixk.parent.resolve()
    for r, (q, opts, ans, box) in zip(records, QUESTIONS, strict=True):
        assert r.question == q  # no <image>, no hint, no options, no instruction
        assert r.options == opts and r.answer == ans and r.box == tuple(float(v) for v in box)
        assert r.image.startswith(str(root / "images")) and r.teacher_image.startswith(str(root / "teacher_images"))
        assert r.meta["red_box_drawn"] is True and r.meta["format"] == "vision_opd_6k"
    assert Image.open(records[0].image).getpixel((8, 10)) == (255, 0, 0)  # the drawn box, as published
    # the folder works as well as the file
    assert [r.id for r in load_source(sixk.parent)] == ["row1", "row2", "row3"]


def test_sixk_original_student_image(sixk):
    records = load_source(sixk, student_image="original")
    assert all("/original_images/" in r.image and r.meta["red_box_drawn"] is False for r in records)
    assert records[0].teacher_image.endswith("000000_00e1ee5de37b9cc685b1b0af4eaaa0ef.png")
    with pytest.raises(ValueError, match="student_image"):
        load_source(sixk, student_image="clean")


def test_proposers_never_see_the_drawn_answer_box(sixk):
    """Vision-OPD-6K `images/` have the evidence box drawn in red: a "label-free" proposer run on them would read
    the answer's box from its pixels. Proposals (and the teacher's crops) use the clean original image; without
    one, proposing refuses before any work, naming the record and the fix."""
    import shutil

    from vision_opd.data.views import ViewConfig, teacher_view
    from vision_opd.proposers import Proposal, propose_records

    records = load_source(sixk)  # student_image=images (the default): the red box is drawn
    assert all(r.meta["red_box_drawn"] for r in records)
    seen = []

    def spy(model, processor, image, question):
        seen.append(image)
        return Proposal((0.0, 0.0, float(image.width), float(image.height)), 0.0, 0, fallback=True)

    propose_records(None, None, records, spy, progress=False)
    root = sixk.parent
    for r, img in zip(records, seen, strict=True):
        clean = Image.open(root / "original_images" / Path(r.image).name).convert("RGB")
        assert img.tobytes() == clean.tobytes(), f"{r.id}: the proposer saw the image with the red box"
    r = records[0]
    r.meta["proposed_box"] = list(r.box)
    crop = teacher_view(r, ViewConfig(teacher_source="proposer", expand_ratio=0.5, teacher_upscale=1.0)).images[0]
    assert (255, 0, 0) not in set(crop.getdata()), "the teacher's crop comes from the clean image too"
    shutil.rmtree(root / "original_images")  # the official preparation does not extract original_images
    bare = load_source(sixk)
    seen.clear()
    with pytest.raises(ValueError, match=r"row1.*red box.*data\.student_image=original"):
        propose_records(None, None, bare, spy, progress=False)
    assert not seen, "refused before any proposal was computed"


def test_train_with_a_proposer_on_drawn_boxes_refuses_before_the_model_loads(sixk, tmp_path, capsys, monkeypatch):
    """`vision-opd train views.teacher_source=proposer` on Vision-OPD-6K images/ without original_images/: one line
    naming the record and the fix, exit 2, and no model loaded."""
    import shutil

    import vision_opd.training.loop as T
    from vision_opd.cli import main

    shutil.rmtree(sixk.parent / "original_images")
    loads = []
    monkeypatch.setattr(T, "load_model", lambda *a, **k: loads.append(1) or (_ for _ in ()).throw(AssertionError))
    rc = main(["train", f"data.train_file={sixk}", f"train.out_dir={tmp_path / 'run'}", "views.teacher_source=proposer",
               "train.progress=false"])
    err = capsys.readouterr().err
    assert rc == 2 and "row1" in err and "data.student_image=original" in err and "Traceback" not in err
    assert not loads, "refused before the model was loaded"


@pytest.mark.parametrize("line, change, message", [
    (2, lambda r: r.update(bbox=[1, 2, 3]), "bbox"),
    (3, lambda r: r.pop("teacher_images"), "teacher_images"),
    (1, lambda r: r.update(answer="E"), "answer 'E'"),
    (2, lambda r: r.update(images=["images/missing.png"]), "not found"),
    (2, lambda r: r.update(bbox=[True, 5, 30, 20]), "box must contain numbers"),  # degenerate: a boolean is no coordinate
    (1, lambda r: r.update(problem=_problem("What colour?", ["red"]), extra_info={"question": "What colour?\nA. red"},
                           answer="A"), "at least 2 options"),
])
def test_sixk_bad_row_names_file_line_and_problem(sixk, line, change, message):
    rows = [json.loads(x) for x in sixk.read_text().splitlines()]
    change(rows[line - 1])
    _write_jsonl(sixk, rows)
    with pytest.raises(RecordError, match=message) as e:
        load_source(sixk)
    assert f"{sixk}:{line}:" in str(e.value)
    records, report = load_source_checked(sixk, skip_bad=True)  # skipped and counted instead
    assert len(records) == 2 and [p.line for p in report.problems] == [line]


def test_sixk_box_outside_image_caught_when_images_are_checked(sixk):
    rows = [json.loads(x) for x in sixk.read_text().splitlines()]
    rows[0]["bbox"] = [100, 100, 120, 120]
    _write_jsonl(sixk, rows)
    assert len(load_source(sixk)) == 3  # not decoded: not checked
    with pytest.raises(RecordError, match=f"{sixk}:1: box"):
        load_source(sixk, check_images=True)


def test_auto_detection_and_records_jsonl(tmp_path, sixk):
    img = tmp_path / "im.png"
    Image.new("RGB", (40, 30)).save(img)
    path = tmp_path / "records.jsonl"
    write_records([Record(id="a", image=str(img), question="Q?", options=["x", "y"], answer="B", box=(1, 2, 9, 9))], path)
    assert detect_format(path) == "records" and detect_format(sixk) == "vision_opd_6k"
    assert detect_format(sixk.parent) == "vision_opd_6k"
    assert detect_format("owner/some-dataset") == "hub"
    (r,) = load_source(path)
    assert (r.id, r.image, r.answer, r.box) == ("a", str(img.resolve()), "B", (1.0, 2.0, 9.0, 9.0))
    with pytest.raises(RecordError, match="missing 'id'"):
        load_source(sixk, fmt="records")  # the wrong reader says what it misses
    with pytest.raises(ValueError, match="unknown data format"):
        load_source(path, fmt="csv")
    with pytest.raises(RecordError, match="not found"):
        load_source(tmp_path / "nope.jsonl")


def test_parquet_rows_in_both_schemas(tmp_path, sixk):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [json.loads(x) for x in sixk.read_text().splitlines()]
    root = sixk.parent
    for r in rows:  # embed the images as HF image structs, the way `datasets` publishes them
        for k in ("images", "teacher_images", "original_images"):
            r[k] = [{"bytes": (root / r[k][0]).read_bytes(), "path": None}]
    out = tmp_path / "pq" / "data"
    out.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1]), out / "test-00000-of-00001.parquet")
    cache = tmp_path / "cache"
    assert detect_format(tmp_path / "pq") == "parquet"
    records = load_source(tmp_path / "pq", cache_dir=cache, check_images=True)
    assert [r.id for r in records] == ["row1", "row2", "row3"]  # the train split only
    assert records[0].question == QUESTIONS[0][0] and records[1].answer == "D"
    assert records[0].image.startswith(str(cache)) and records[0].teacher_image.startswith(str(cache))
    assert Image.open(records[0].image).size == (80, 60)
    n_files = sum(1 for p in cache.rglob("*") if p.is_file())
    load_source(tmp_path / "pq", cache_dir=cache)
    assert sum(1 for p in cache.rglob("*") if p.is_file()) == n_files  # materialised once
    # the Records schema, image bytes embedded, no id column
    flat = [{"image": {"bytes": p.read_bytes(), "path": None}, "question": "Q?", "options": ["x", "y"], "answer": "A"}
            for p in sorted((root / "images").iterdir())[:2]]
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "flat.parquet")
    got = load_source(tmp_path / "flat.parquet", cache_dir=cache)
    assert [r.id for r in got] == ["row1", "row2"] and got[0].image.startswith(str(cache))


# ----------------------------------------------------------------------------- MetricsLogger


def test_metrics_logger_writes_and_flushes_jsonl(tmp_path):
    log = MetricsLogger(tmp_path / "run", tensorboard=False)
    log.log(1, {"loss": 0.5, "kl": 1, "skipped": False, "collapse": None, "note": "x"})
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()  # flushed: readable before close
    assert json.loads(lines[0]) == {"step": 1, "loss": 0.5, "kl": 1, "skipped": False, "collapse": None, "note": "x"}
    log.log_samples(1, [{"id": "a", "response": "B"}, {"id": "b", "response": "C"}])
    samples = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples == [{"step": 1, "id": "a", "response": "B"}, {"step": 1, "id": "b", "response": "C"}]
    log.close()
    log.close()
    with MetricsLogger(tmp_path / "run", tensorboard=False) as log2:  # appends
        log2.log(2, {"loss": 0.25})
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_metrics_logger_disabled_writes_nothing(tmp_path):
    with MetricsLogger(tmp_path / "run", tensorboard=True, wandb=True, enabled=False) as log:
        log.log(1, {"loss": 1.0})
        log.log_samples(1, [{"id": "a"}])
    assert not (tmp_path / "run").exists()


def test_metrics_logger_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    with MetricsLogger(tmp_path, tensorboard="auto", config={"a": 1}) as log:
        assert log.tensorboard
        log.log(1, {"loss": 0.5, "collapse": "kl", "skipped": True})
        log.log_samples(1, [{"id": "a", "response": "B"}])
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"loss", "skipped"}  # the string went to jsonl only
    assert acc.Scalars("loss")[0].value == pytest.approx(0.5)


def test_metrics_logger_optional_backends_missing(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_extras(name, *a, **kw):
        if name.split(".")[0] in ("wandb", "tensorboard"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_extras)
    with pytest.raises(ImportError, match="pip install wandb"):
        MetricsLogger(tmp_path / "w", wandb=True, tensorboard=False)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        MetricsLogger(tmp_path / "t", tensorboard=True)
    with MetricsLogger(tmp_path / "a", tensorboard="auto") as log:  # auto: silently off
        assert not log.tensorboard
        log.log(1, {"loss": 1.0})
    with pytest.raises(ValueError, match="tensorboard="):
        MetricsLogger(tmp_path / "b", tensorboard="maybe")


def test_missing_optional_readers_say_what_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_extras(name, *a, **kw):
        if name.split(".")[0] in ("datasets", "pyarrow"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_extras)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(RecordError, match="pip install pyarrow"):
        load_source(tmp_path / "x.parquet", cache_dir=tmp_path / "c")
    with pytest.raises(RecordError, match="'datasets' package"):
        load_source("owner/name", cache_dir=tmp_path / "c")
