"""The Multi-Level Existence Bench on fixtures in its published layout: data.jsonl + images/ (the hub's image
folder) and the hub's parquet conversion (image structs; skipped without pyarrow); the macro mean over sizes."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from vision_opd.cli import main
from vision_opd.data.files import DataFileError
from vision_opd.eval.benchmarks import get_benchmark, load_benchmark
from vision_opd.eval.summary import summarise

ROWS = [  # question, choices, answer (text), sub_task
    ("Which of the following appears in this image?", ["curtain", "television", "cabinet", "mirror"], "cabinet",
     "existence_0-30"),
    ("Which of the following appears in this image?", ["dog", "boat", "lamp", "tree"], "lamp", "existence_0-30"),
    ("Which of the following appears in this image?", ["sky", "road", "sand", "snow"], "road", "existence_30-60"),
    ("Which of the following appears in this image?", ["car", "bus", "bike", "train"], "train", "existence_60-100"),
]


def _folder(tmp_path):
    (tmp_path / "images").mkdir(parents=True)
    with open(tmp_path / "data.jsonl", "w", encoding="utf-8") as f:
        for n, (q, choices, answer, sub) in enumerate(ROWS):
            Image.new("RGB", (40 + n, 30), (10 * n, 80, 120)).save(tmp_path / "images" / f"{n:04d}.jpg")
            f.write(json.dumps({"file_name": f"images/{n:04d}.jpg", "question": q, "choices": choices,
                                "answer": answer, "answer_text": answer, "sub_task": sub}) + "\n")
    return tmp_path


def test_mle_bench_from_its_image_folder(tmp_path):
    records = load_benchmark("mle_bench", _folder(tmp_path))
    assert [r.answer for r in records] == ["C", "C", "B", "D"]  # the answer text's position
    assert [r.category for r in records] == ["small", "small", "medium", "large"]
    assert records[0].options == ["curtain", "television", "cabinet", "mirror"] and records[0].meta["sub_task"] == "existence_0-30"
    assert open(records[1].image, "rb").read(2) == b"\xff\xd8" and Image.open(records[1].image).size == (41, 30)
    assert get_benchmark("Multi-Level-Existence-Bench").name == "mle_bench"
    assert len(load_benchmark("mle_bench", tmp_path, limit=2)) == 2


def test_mle_bench_parquet_conversion(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = []
    for n, (q, choices, answer, sub) in enumerate(ROWS):
        buf = io.BytesIO()
        Image.new("RGB", (20, 20 + n)).save(buf, format="PNG")
        rows.append({"image": {"bytes": buf.getvalue(), "path": f"{n}.png"}, "question": q, "choices": choices,
                     "answer": answer, "answer_text": answer, "sub_task": sub})
    path = tmp_path / "default" / "train" / "0000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    records = load_benchmark("mle_bench", tmp_path, cache_dir=tmp_path / "cache")
    assert [r.answer for r in records] == ["C", "C", "B", "D"] and Image.open(records[3].image).size == (20, 23)


def test_mle_bench_bad_rows_name_the_row(tmp_path):
    _folder(tmp_path)
    lines = (tmp_path / "data.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    row["answer"] = "zebra"
    lines[1] = json.dumps(row)
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFileError, match=r"data.jsonl: line 2.*zebra"):
        load_benchmark("mle_bench", tmp_path)


def test_mle_bench_score_is_the_mean_over_sizes_with_its_interval(tmp_path):
    records = load_benchmark("mle_bench", _folder(tmp_path))
    correct = [True, True, False, True]  # small 2/2, medium 0/1, large 1/1
    samples = [{"id": r.id, "view": "full", "correct": c, "extracted": r.answer if c else "A", "method": "rule",
                "failure": None, "category": r.category, "response": "", "response_tokens": 1, "truncated": False,
                "seconds": 0.0} for r, c in zip(records, correct, strict=True)]
    s = summarise(samples, records, "mle_bench")
    assert s["accuracy"] == pytest.approx((1 + 0 + 1) / 3) and s["micro_accuracy"] == pytest.approx(0.75)
    assert s["per_category"] == {"large": 1.0, "medium": 0.0, "small": 1.0}
    assert s["accuracy_ci95_of"].startswith("official") and s["accuracy_ci95"] == pytest.approx([2 / 3, 2 / 3])


def test_mle_bench_eval_cli(tmp_path):
    data = _folder(tmp_path / "mle")
    out = tmp_path / "out"
    assert main(["eval", "--model", "tiny:qwen2_vl", "--benchmark", "mle_bench", "--data", str(data), "--out", str(out),
                 "--max-new-tokens", "2", "--no-progress"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["n"] == 4 and set(r["per_category"]) <= {"small", "medium", "large"}
