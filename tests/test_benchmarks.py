"""Each benchmark loader on a tiny fixture in its published layout (written here into tmp_path), and each
official aggregation on hand-made per-item results with hand-computed numbers.

Parquet layouts need pyarrow (skipped without it); hub ids are exercised with a stub `datasets` module.
"""

from __future__ import annotations

import base64
import io
import json
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from vision_opd.data.images import open_image
from vision_opd.data.records import Record, write_records
from vision_opd.eval.benchmarks import BENCHMARKS, aggregate, format_prompt, get_benchmark, load_benchmark
from vision_opd.eval.benchmarks.common import split_options
from vision_opd.data.files import DataFileError, iter_json_items
from vision_opd.eval.extraction import EXTRACTION_RULE

SUFFIX = "Answer with the option's letter from the given choices directly."


def img_bytes(color=(200, 30, 30), size=(40, 30), fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Tab-separated with quoted cells, as pandas `to_csv(sep='\\t')` writes them."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(header)
        w.writerows(rows)


def write_parquet(path: Path, rows: list[dict]) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def opens(path: str) -> tuple[int, int]:
    assert Path(path).is_file(), path
    return open_image(path).size


def result(correct: bool, **kw) -> dict:
    return {"correct": correct, **kw}


# ----------------------------------------------------------------------------- shared pieces


def test_registry_and_prompt():
    assert {
        "vstar",
        "hrbench_4k",
        "hrbench_8k",
        "mme_realworld",
        "mme_realworld_cn",
        "mme_realworld_lite",
        "zoombench",
        "treebench",
        "pope",
        "jsonl",
        "synthetic",
    } <= set(BENCHMARKS)
    assert get_benchmark("HR-Bench-4K".replace("HR-Bench", "hrbench")) is BENCHMARKS["hrbench_4k"]
    with pytest.raises(KeyError, match="known:"):
        get_benchmark("nope")
    rec = Record(id="1", image="x.jpg", question="What color?", options=["red", "blue"], answer="B")
    assert format_prompt(rec) == f"What color?\nA. red\nB. blue\n{SUFFIX}"
    assert BENCHMARKS["vstar"].format_prompt(rec) == format_prompt(rec)
    assert BENCHMARKS["vstar"].target(rec) == "B"
    yn = Record(id="2", image="x.jpg", question="Is there a dog?", answer="yes")
    assert format_prompt(yn) == "Is there a dog?\nAnswer the question using a single word or phrase."


def test_split_options_variants():
    assert split_options("Q?\n(A) rubber\n(B) cotton") == ("Q?", ["rubber", "cotton"])
    assert split_options(f"Q?\n(A) x\n(B) y\n{SUFFIX}") == ("Q?", ["x", "y"])  # suffix not inside option B
    assert split_options("Q? Select from the following choices.\nA. 0\nB. 2") == (
        "Q? Select from the following choices.",
        ["0", "2"],
    )
    assert split_options("问题\n（A）红\n（B）蓝") == ("问题", ["红", "蓝"])
    assert split_options("Is the cup on the left or right of the dog? (A) left (B) right") == (
        "Is the cup on the left or right of the dog?",
        ["left", "right"],
    )
    assert split_options("Pick (B) or (A)?") == ("Pick (B) or (A)?", None)
    assert split_options("How many?") == ("How many?", None)
    assert split_options("Q\n(B) x\n(C) y")[1] is None  # not lettered from A


def test_iter_json_items_streams_arrays_and_jsonl(tmp_path):
    items = [{"a": i, "s": "x" * (i * 5)} for i in range(6)]
    arr = tmp_path / "a.json"
    arr.write_text(json.dumps(items, indent=1))
    assert [o for _, o in iter_json_items(arr, chunk_chars=7)] == items  # tiny chunks force refills
    lines = tmp_path / "a.jsonl"
    lines.write_text("\n".join(json.dumps(o) for o in items))
    assert [o for _, o in iter_json_items(lines)] == items
    bad = tmp_path / "bad.json"
    bad.write_text('[{"a": 1}, {"a": ')
    with pytest.raises(DataFileError, match=r"bad.json: item 2"):
        list(iter_json_items(bad, chunk_chars=4))


def test_parquet_without_pyarrow_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "hr_bench_4k.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataFileError, match=r"hr_bench_4k.parquet: reading this needs the 'pyarrow' package"):
        load_benchmark("hrbench_4k", tmp_path)


# ----------------------------------------------------------------------------- V*


def make_vstar(root: Path, with_jsonl: bool = True) -> None:
    for cat, stem, ann in [
        (
            "direct_attributes",
            "sa_1",
            {
                "target_object": ["cup"],
                "bbox": [[2, 3, 4, 5]],
                "question": "What is the color of the cup?",
                "options": ["red", "blue"],
            },
        ),
        (
            "relative_position",
            "sa_2",
            {
                "target_object": ["cup", "dog"],
                "bbox": [[1, 1, 2, 2], [10, 5, 4, 6]],
                "question": "Is the cup on the left or right of the dog?",
                "options": ["left", "right"],
            },
        ),
    ]:
        (root / cat).mkdir(parents=True)
        (root / cat / f"{stem}.jpg").write_bytes(img_bytes(size=(40, 30)))
        (root / cat / f"{stem}.json").write_text(json.dumps(ann))
    if with_jsonl:
        lines = [
            {
                "question_id": 0,
                "image": "direct_attributes/sa_1.jpg",
                "category": "direct_attributes",
                "label": "B",
                "text": "What is the color of the cup?\n(A) blue\n(B) red",
            },
            {
                "question_id": "1",
                "image": "relative_position/sa_2.jpg",
                "category": "relative_position",
                "label": "A",
                "text": f"Is the cup on the left or right of the dog?\n(A) left\n(B) right\n{SUFFIX}",
            },
        ]
        (root / "test_questions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def test_vstar_craigwu_layout(tmp_path):
    make_vstar(tmp_path)
    recs = load_benchmark("vstar", tmp_path)
    assert [r.id for r in recs] == ["0", "1"]
    a, b = recs
    assert (a.question, a.options, a.answer, a.category) == (
        "What is the color of the cup?",
        ["blue", "red"],
        "B",
        "direct_attributes",
    )
    assert a.box == (2.0, 3.0, 6.0, 8.0)  # [x, y, w, h] -> [x1, y1, x2, y2]
    assert b.options == ["left", "right"]  # the suffix did not end up inside option B
    assert b.box == (1.0, 1.0, 14.0, 11.0) and b.meta["boxes"] == [[1, 1, 3, 3], [10, 5, 14, 11]]
    assert b.meta["target_object"] == ["cup", "dog"]
    assert opens(a.image) == (40, 30)
    assert load_benchmark("vstar", tmp_path / "test_questions.jsonl")[0].answer == "B"


def test_vstar_folders_only(tmp_path):
    make_vstar(tmp_path, with_jsonl=False)
    recs = load_benchmark("vstar", tmp_path)
    for r in recs:
        correct = {"direct_attributes/sa_1": "red", "relative_position/sa_2": "left"}[r.id]
        assert r.options["ABCD".index(r.answer)] == correct  # options[0] of the JSON is the answer
        assert r.box is not None
    assert load_benchmark("vstar", tmp_path, shuffle_seed=0)[0].options == recs[0].options  # deterministic
    assert {r.answer for r in load_benchmark("vstar", tmp_path, shuffle_seed=None)} == {"A"}


def test_vstar_errors(tmp_path):
    (tmp_path / "test_questions.jsonl").write_text(
        json.dumps(
            {"question_id": 0, "image": "direct_attributes/missing.jpg", "text": "Q\n(A) x\n(B) y", "label": "A"}
        )
        + "\n"
    )
    with pytest.raises(DataFileError, match=r"test_questions.jsonl: line 1.*not found"):
        load_benchmark("vstar", tmp_path)
    make_vstar(tmp_path / "v")
    path = tmp_path / "v" / "test_questions.jsonl"
    path.write_text(path.read_text().replace('"label": "B"', '"label": "C"'))
    with pytest.raises(DataFileError, match=r"line 1: answer 'C' is not one of the option letters A-B"):
        load_benchmark("vstar", path)


def test_vstar_lmms_parquet(tmp_path):
    rows = [
        {
            "image": {"bytes": img_bytes(), "path": None},
            "text": f"What is it?\n(A) rubber\n(B) cotton\n(C) kevlar\n(D) leather\n{SUFFIX}",
            "label": "A",
            "question_id": "0",
            "category": "direct_attributes",
        },
        {
            "image": {"bytes": img_bytes((0, 0, 255)), "path": None},
            "text": "Where?\n(A) left\n(B) right",
            "label": "B",
            "question_id": "1",
            "category": "relative_position",
        },
    ]
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", rows)
    recs = load_benchmark("vstar", tmp_path, cache_dir=tmp_path / "cache")
    assert [r.options for r in recs] == [["rubber", "cotton", "kevlar", "leather"], ["left", "right"]]
    assert [r.answer for r in recs] == ["A", "B"] and recs[0].box is None
    assert all(r.image.startswith(str(tmp_path / "cache")) for r in recs)
    assert opens(recs[1].image) == (40, 30)


def test_vstar_aggregate():
    res = [result(True, category="direct_attributes")] * 3 + [result(False, category="direct_attributes")]
    res += [result(True, category="relative_position"), result(False, category="relative_position")]
    out = aggregate("vstar", res)
    assert out["overall"] == pytest.approx(4 / 6)  # micro over items
    assert out["per_category"] == {"direct_attributes": 0.75, "relative_position": 0.5}
    assert out["overall_ci95"][0] <= 4 / 6 <= out["overall_ci95"][1]
    assert out["extraction_rule"] == EXTRACTION_RULE


# ----------------------------------------------------------------------------- HR-Bench

HR_HEADER = ["index", "question", "A", "B", "C", "D", "answer", "category", "cycle_category", "image"]


def hr_rows() -> list[list[str]]:
    red, blue = b64(img_bytes()), b64(img_bytes((0, 0, 255)))
    return [
        ["0", "What number is shown?", "27B", "37B", "27D", "27E", "A", "single", "cycle_0", red],
        ["1", "Which is larger?", "x", "y", "z", "w", "C", "cross", "cycle_0", blue],
        ["0", "What number is shown?", "37B", "27D", "27E", "27B", "D", "single", "cycle_1", "0"],  # image by index
        ["1", "Which is larger?", "y", "z", "w", "x", "B", "cross", "cycle_1", blue],
    ]


def test_hrbench_tsv(tmp_path):
    write_tsv(tmp_path / "hr_bench_4k.tsv", HR_HEADER, hr_rows())
    recs = load_benchmark("hrbench_4k", tmp_path, cache_dir=tmp_path / "c")
    assert len(recs) == 4
    assert [r.id for r in recs] == ["0/cycle_0", "1/cycle_0", "0/cycle_1", "1/cycle_1"]  # index repeats across cycles
    r = recs[2]
    assert (r.question, r.options, r.answer, r.category) == (
        "What number is shown?",
        ["37B", "27D", "27E", "27B"],
        "D",
        "single",
    )
    assert r.meta["cycle_category"] == "cycle_1"
    assert r.image == recs[0].image  # the image referenced by index, stored once
    assert recs[1].image == recs[3].image  # identical bytes, one file (content hash)
    assert opens(r.image) == (40, 30)
    with pytest.raises(DataFileError, match="hr_bench_8k"):
        load_benchmark("hrbench_8k", tmp_path)


def test_hrbench_bad_row(tmp_path):
    rows = hr_rows()
    rows[1][6] = "E"
    write_tsv(tmp_path / "hr_bench_4k.tsv", HR_HEADER, rows)
    with pytest.raises(DataFileError, match=r"hr_bench_4k.tsv: row 2 \(line 3\): answer 'E'"):
        load_benchmark("hrbench_4k", tmp_path / "hr_bench_4k.tsv", cache_dir=tmp_path / "c")


def test_hrbench_parquet(tmp_path):
    rows = [dict(zip(HR_HEADER, r, strict=True)) for r in hr_rows()]
    for n, r in enumerate(rows):
        r["index"] = n  # unique ints here
        r["image"] = rows[0]["image"] if r["image"] == "0" else r["image"]
    write_parquet(tmp_path / "hr_bench_8k.parquet", rows)
    recs = load_benchmark("hrbench_8k", tmp_path, cache_dir=tmp_path / "c")
    assert [r.id for r in recs] == ["0", "1", "2", "3"] and recs[3].answer == "B"
    assert recs[0].meta["benchmark"] == "hrbench_8k"


def test_hrbench_aggregate_averages_cycles():
    res = [
        result(True, category="single", meta={"cycle_category": "c1"}),
        result(True, category="single", meta={"cycle_category": "c1"}),
        result(False, category="cross", meta={"cycle_category": "c1"}),
        result(True, category="cross", meta={"cycle_category": "c2"}),
    ]
    out = aggregate("hrbench_4k", res)
    assert out["overall"] == pytest.approx((2 / 3 + 1) / 2)  # mean over cycles, not 3/4
    assert out["micro"] == pytest.approx(0.75)
    assert out["per_category"] == {"cross": pytest.approx(0.5), "single": pytest.approx(1.0)}
    assert out["per_cycle"]["c1"] == {"all": pytest.approx(2 / 3), "single": 1.0, "cross": 0.0}


# ----------------------------------------------------------------------------- MME-RealWorld

MME_CHOICES = ["(A) 458", "(B) 457", "(C) 459", "(D) 456", "(E) This image doesn't feature the data."]


def test_mme_realworld_raw_json(tmp_path):
    (tmp_path / "monitoring_images").mkdir()
    (tmp_path / "monitoring_images" / "x.jpg").write_bytes(img_bytes())
    items = [
        {
            "Question_id": "Perception/Monitoring/Vehicle/counting/0001",
            "Image": "monitoring_images/x.jpg",
            "Text": "How many cars?",
            "Question Type": "Multiple Choice",
            "Answer choices": MME_CHOICES,
            "Ground truth": "B",
            "Task": "Perception",
            "Subtask": "Monitoring",
            "Category": "Vehicle/counting",
        },
        {
            "Question_id": "Reasoning/Monitoring/0002",
            "Image": "monitoring_images/x.jpg",
            "Text": "Which way?",
            "Question type": "Multiple Choice",
            "Answer choices": MME_CHOICES,
            "Ground truth": "E",
            "Task": "Reasoning",
            "Subtask": "Monitoring",
            "Category": "Vehicle/attribute/orientation",
            "Dataset": "x",
        },
    ]
    (tmp_path / "MME_RealWorld.json").write_text(json.dumps(items))
    recs = load_benchmark("mme_realworld", tmp_path)
    r = recs[0]
    assert (r.id, r.question, r.answer, r.category) == (
        items[0]["Question_id"],
        "How many cars?",
        "B",
        "Perception/Monitoring",
    )
    assert r.options == ["458", "457", "459", "456", "This image doesn't feature the data."]
    assert r.meta["l2_category"] == "Vehicle/counting" and recs[1].answer == "E"
    assert opens(r.image) == (40, 30)
    items[1]["Image"] = "monitoring_images/missing.jpg"
    (tmp_path / "MME_RealWorld.json").write_text(json.dumps(items))
    with pytest.raises(DataFileError, match=r"MME_RealWorld.json: item 2.*missing.jpg.*not found"):
        load_benchmark("mme_realworld", tmp_path)


def test_mme_realworld_cn_base64_json(tmp_path):
    folder = tmp_path / "MME-RealWorld-CN"
    folder.mkdir()
    cn = ["（A）红色", "（B）蓝色", "（C）绿色", "（D）黑色", "（E）图像中没有"]
    for k in range(2):
        item = {
            "index": k,
            "image": b64(img_bytes((k, 0, 0))),
            "question": f"问题{k}",
            "multi-choice options": cn,
            "answer": "C",
            "category": "Perception/Monitoring",
            "l2-category": "Vehicle/color",
        }
        (folder / f"MME_RealWorld_CN_base64_{k}.json").write_text(json.dumps([item], ensure_ascii=False))
    recs = load_benchmark("mme_realworld_cn", tmp_path, cache_dir=tmp_path / "c")
    assert [r.id for r in recs] == ["0", "1"]
    assert recs[0].options == ["红色", "蓝色", "绿色", "黑色", "图像中没有"] and recs[0].answer == "C"
    assert recs[1].meta["task"] == "Perception" and recs[1].meta["subtask"] == "Monitoring"
    assert opens(recs[1].image) == (40, 30)


def test_mme_realworld_lite_tsv(tmp_path):
    header = ["index", "image", "question", "multi-choice options", "answer", "category", "l2-category"]
    rows = [
        ["7", b64(img_bytes()), "How many?", repr(MME_CHOICES), "D", "Reasoning/Autonomous_Driving", "Intention/ego"]
    ]
    write_tsv(tmp_path / "mme_realworld_lite.tsv", header, rows)
    (rec,) = load_benchmark("mme_realworld_lite", tmp_path)  # default cache: beside the data
    assert Path(rec.image).parent.parent == tmp_path / ".vision_opd_cache"
    assert (rec.id, rec.answer, rec.category, rec.options[3]) == ("7", "D", "Reasoning/Autonomous_Driving", "456")


def test_mme_realworld_lmms_parquet(tmp_path):
    rows = [
        {
            "bytes": b64(img_bytes()),
            "index": 3,
            "question": "How many?",
            "multi-choice options": MME_CHOICES,
            "answer": "A",
            "category": "Perception/Monitoring",
            "l2-category": "Vehicle/counting",
        }
    ]
    write_parquet(tmp_path / "data" / "train-00000-of-00001.parquet", rows)
    (rec,) = load_benchmark("mme_realworld", tmp_path, cache_dir=tmp_path / "c")
    assert (rec.id, rec.answer, rec.options[0], rec.category) == ("3", "A", "458", "Perception/Monitoring")
    assert opens(rec.image) == (40, 30)


def test_mme_realworld_aggregate():
    def r(ok, task, sub, l2):
        return result(ok, category=f"{task}/{sub}", meta={"task": task, "subtask": sub, "l2_category": l2})

    res = [
        r(True, "Perception", "Monitoring", "Vehicle/counting"),
        r(True, "Perception", "Monitoring", "Vehicle/attribute/color"),
        r(False, "Perception", "Monitoring", "Person/attribute/orientation"),
        r(True, "Perception", "OCR with Complex Context", "license"),
        r(False, "Reasoning", "Monitoring", "Vehicle/intention"),
        r(False, "Reasoning", "Monitoring", "Vehicle/intention"),
    ]
    out = aggregate("mme_realworld", res)
    assert out["overall"] == pytest.approx(0.5)
    assert out["per_task"] == {"Perception": 0.75, "Reasoning": 0.0}
    assert out["per_subtask"]["Perception/Monitoring"] == pytest.approx(2 / 3)
    assert out["avg_c"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert out["avg_c_per_task"]["Perception"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["per_fine_category"]["Perception/Monitoring/vehicle/attribute"] == 1.0  # attributes folded
    assert out["per_fine_category"]["Perception/Monitoring/person/attribute"] == 0.0


# ----------------------------------------------------------------------------- ZoomBench


def test_zoombench_parquet(tmp_path):
    rows = [
        {
            "id": 0,
            "query": "How many table lamps are in the image? Select from the following choices.\n(A) 0\n(B) 2",
            "response": "B",
            "image": {"bytes": img_bytes(), "path": None},
            "crop_image": {"bytes": img_bytes((0, 255, 0), (10, 8)), "path": None},
            "question_type": "mcq",
        },
        {
            "id": 1,
            "query": "How many cups are there?",
            "response": "4",
            "image": {"bytes": img_bytes(), "path": None},
            "crop_image": None,
            "question_type": "open",
        },
    ]
    write_parquet(tmp_path / "data" / "test.parquet", rows)
    a, b = load_benchmark("zoombench", tmp_path, cache_dir=tmp_path / "c")
    assert (a.question, a.options, a.answer) == (
        "How many table lamps are in the image? Select from the following choices.",
        ["0", "2"],
        "B",
    )
    assert opens(a.teacher_image) == (10, 8) and opens(a.image) == (40, 30)
    assert (b.options, b.answer, b.teacher_image, b.meta["question_type"]) == (None, "4", None, "open")


def test_zoombench_card_schema_jsonl(tmp_path):
    (tmp_path / "full.png").write_bytes(img_bytes(fmt="PNG"))
    rows = [
        {
            "id": "z1",
            "prompt": "What color is the sign?\n(A) red\n(B) blue\n(C) green",
            "answer": "(C)",
            "image": {"bytes": None, "path": "full.png"},
            "crop_image": b64(img_bytes(size=(6, 6))),
            "bbox": [1, 2, 11, 12],
            "dimension": "Color",
        }
    ]
    (tmp_path / "zoom.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (rec,) = load_benchmark("zoombench", tmp_path / "zoom.jsonl", cache_dir=tmp_path / "c")
    assert (rec.answer, rec.options, rec.box, rec.category) == (
        "C",
        ["red", "blue", "green"],
        (1.0, 2.0, 11.0, 12.0),
        "Color",
    )
    assert opens(rec.teacher_image) == (6, 6)


def test_zoombench_aggregate():
    res = [
        result(True, category="OCR", meta={"question_type": "mcq"}),
        result(False, category="OCR", meta={"question_type": "mcq"}),
        result(True, category="Counting", meta={"question_type": "open"}),
    ]
    out = aggregate("zoombench", res)
    assert out["overall"] == pytest.approx(2 / 3)
    assert out["per_category"] == {"Counting": 1.0, "OCR": 0.5}
    assert out["per_question_type"] == {"mcq": 0.5, "open": 1.0}


# ----------------------------------------------------------------------------- TreeBench


def test_treebench_tsv(tmp_path):
    header = [
        "index",
        "image",
        "question",
        "multi-choice options",
        "A",
        "B",
        "C",
        "D",
        "answer",
        "category",
        "target_instances",
    ]
    img = b64(img_bytes(size=(64, 48)))
    rows = [
        [
            "0",
            img,
            "What is written on the sign?",
            "A. x\nB. y",
            "x",
            "y",
            "",
            "",
            "B",
            "Perception/OCR",
            "[[1, 2, 5, 6]]",
        ],
        [
            "1",
            "0",
            "Which is closer?",
            "A. cup\nB. dog\nC. cat",
            "",
            "",
            "",
            "",
            "C",
            "Reasoning/Ordering",
            "[[1, 1, 4, 4], [10, 12, 20, 30]]",
        ],
    ]
    write_tsv(tmp_path / "TreeBench.tsv", header, rows)
    a, b = load_benchmark("treebench", tmp_path, cache_dir=tmp_path / "c")
    assert (a.question, a.options, a.answer, a.category, a.box) == (
        "What is written on the sign?",
        ["x", "y"],
        "B",
        "Perception/OCR",
        (1.0, 2.0, 5.0, 6.0),
    )
    assert b.options == ["cup", "dog", "cat"]  # from the options block, the letter columns being empty
    assert b.box == (1.0, 1.0, 20.0, 30.0) and b.meta["boxes"] == [[1, 1, 4, 4], [10, 12, 20, 30]]
    assert b.image == a.image and opens(b.image) == (64, 48)
    rows[1][10] = "[[5, 5, 2, 9]]"
    write_tsv(tmp_path / "TreeBench.tsv", header, rows)
    with pytest.raises(
        DataFileError, match=r"TreeBench.tsv: row 2 \(line \d+\): target_instances\[0\].*zero or negative"
    ):
        load_benchmark("treebench", tmp_path, cache_dir=tmp_path / "c")


def test_treebench_aggregate():
    res = [
        result(True, category="Perception/OCR"),
        result(False, category="Perception/Material"),
        result(True, category="Reasoning/Ordering"),
        result(True, category="Reasoning/Ordering"),
    ]
    out = aggregate("treebench", res)
    assert out["overall"] == 0.75
    assert out["per_dimension"] == {"Perception": 0.5, "Reasoning": 1.0}
    assert out["per_category"]["Reasoning/Ordering"] == 1.0


# ----------------------------------------------------------------------------- POPE


def pope_rows(category: str, start: int = 0) -> list[dict]:
    image = {"bytes": img_bytes(), "path": None}
    return [
        {
            "id": str(start + k),
            "question_id": str(start + k + 1),
            "question": f"Is there a {obj} in the image?",
            "answer": ans,
            "image_source": "COCO_val2014_000000391895",
            "image": image,
            "category": category,
        }
        for k, (obj, ans) in enumerate([("snowboard", "yes"), ("giraffe", "no")])
    ]


def test_pope_parquet_default_and_full(tmp_path):
    write_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", pope_rows("adversarial") + pope_rows("random", 2))
    write_parquet(
        tmp_path / "Full" / "adversarial-00000-of-00001.parquet",
        [{k: v for k, v in r.items() if k != "category"} for r in pope_rows("adversarial")],
    )
    recs = load_benchmark("pope", tmp_path, cache_dir=tmp_path / "c")
    assert len(recs) == 4 and [r.answer for r in recs] == ["yes", "no", "yes", "no"]
    assert recs[0].options is None and recs[2].category == "random"
    assert len({r.image for r in recs}) == 1 and opens(recs[0].image) == (40, 30)  # one COCO image, stored once
    full = load_benchmark("pope", tmp_path, subset="adversarial", cache_dir=tmp_path / "c")
    assert [r.category for r in full] == ["adversarial", "adversarial"]  # from the file name


def test_pope_hub_id_with_stub_datasets(tmp_path, monkeypatch):
    calls = {}

    def load_dataset(name, config=None, split=None, **kw):
        calls.update(name=name, config=config, split=split)
        return pope_rows("popular")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset, Image=None))
    recs = load_benchmark("pope", "lmms-lab/POPE", cache_dir=tmp_path / "c")
    assert calls == {"name": "lmms-lab/POPE", "config": None, "split": "test"}
    assert [r.id for r in recs] == ["0", "1"] and opens(recs[0].image) == (40, 30)


def test_pope_aggregate():
    gold = ["yes", "yes", "yes", "no", "no", "no"]
    pred = ["yes", "no", None, "yes", "no", "no"]
    res = [
        result(g == p, gold=g, extracted=p, unextracted=p is None, category="random")
        for g, p in zip(gold, pred, strict=True)
    ]
    out = aggregate("pope", res)
    tp, fp, fn = 1, 1, 2
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert out["accuracy"] == out["overall"] == pytest.approx(3 / 6)
    assert out["precision"] == pytest.approx(precision) and out["recall"] == pytest.approx(recall)
    assert out["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert out["yes_ratio"] == 0.5 and out["pred_yes_ratio"] == pytest.approx(2 / 6)
    assert out["unextracted"] == 1 and out["per_category_metrics"]["random"]["n"] == 6


# ----------------------------------------------------------------------------- Records JSONL / synthetic, scoring


def test_jsonl_and_synthetic(tmp_path):
    (tmp_path / "img.png").write_bytes(img_bytes(fmt="PNG"))
    recs = [
        Record(
            id="s1",
            image=str(tmp_path / "img.png"),
            question="Which shape is red?",
            options=["circle", "square"],
            answer="B",
            box=(1, 2, 3, 4),
            category="shape",
        )
    ]
    write_records(recs, tmp_path / "world.jsonl")
    for name in ("jsonl", "synthetic"):
        (r,) = load_benchmark(name, tmp_path)
        assert (r.id, r.answer, r.box, r.category) == ("s1", "B", (1.0, 2.0, 3.0, 4.0), "shape")
        assert opens(r.image) == (40, 30)
    out = aggregate("synthetic", [result(True, category="shape"), result(False, category="shape")])
    assert out["overall"] == 0.5 and out["benchmark"] == "synthetic"


def test_score_then_aggregate_end_to_end(tmp_path):
    make_vstar(tmp_path)
    bench = BENCHMARKS["vstar"]
    recs = bench(tmp_path)
    res = [bench.score(recs[0], "Option A is blue, option B is red, so the answer is B"), bench.score(recs[1], "A man")]
    assert res[0]["correct"] and res[0]["extraction_rule"] == EXTRACTION_RULE
    assert res[1]["unextracted"] and not res[1]["correct"]
    json.dumps(res)  # per-item results are JSON-serialisable
    assert aggregate("vstar", res)["per_category"] == {"direct_attributes": 1.0, "relative_position": 0.0}
    with pytest.raises(DataFileError, match="'correct' must be a bool"):
        aggregate("vstar", [{"category": "x"}])
