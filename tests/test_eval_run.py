"""Evaluation runs: the eval/gap commands on the tiny model, resume, left-padding parity, the OpenAI backend.

    python -m pytest tests/test_eval_run.py
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from vision_opd.cli import main
from vision_opd.data.records import write_records
from vision_opd.data.validate import read_records
from vision_opd.demo.world import QUESTION_TYPES, write_synthetic
from vision_opd.eval.benchmarks.common import format_prompt
from vision_opd.eval.hf_backend import HFGenerator
from vision_opd.eval.options import EvalOptions
from vision_opd.eval.run import evaluate, evaluate_records
from vision_opd.eval.samples import read_samples
from vision_opd.eval.views import EvalError, view_of
from vision_opd.eval.extraction import EXTRACTION_RULE


@pytest.fixture(scope="module")
def tiny():
    from vision_opd.models.tiny import build_tiny

    return build_tiny("qwen2_5_vl")


@pytest.fixture(scope="module")
def data6(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("synth6"), 6, seed=3)


class Counting:
    """A generator wrapper that records the size of every batch it is asked for."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def __call__(self, views):
        self.batches.append(len(views))
        return self.inner(views)

    def settings(self):
        return self.inner.settings()


def _lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_eval_cli_writes_samples_and_results(tmp_path, data6):
    out = tmp_path / "eval"
    rc = main(["eval", "--model", "tiny:qwen2_5_vl", "--benchmark", "synthetic", "--data", str(data6), "--out", str(out),
               "--batch-size", "6", "--max-new-tokens", "4", "--no-progress"])
    assert rc == 0
    samples = [json.loads(line) for line in _lines(out / "samples.jsonl")]
    assert len(samples) == 6
    assert set(samples[0]) >= {"id", "view", "prompt", "response", "extracted", "gold", "correct", "category",
                               "response_tokens", "seconds"}
    r = json.loads((out / "results.json").read_text())
    assert 0.0 <= r["accuracy"] <= 1.0 and r["n"] == 6
    assert set(r["per_category"]) == set(QUESTION_TYPES)
    lo, hi = r["accuracy_ci95"]
    assert lo <= r["accuracy"] <= hi
    assert set(r["response_tokens"]) >= {"mean", "p95", "truncation_rate"}
    assert r["response_tokens"]["mean"] <= 4
    s = r["settings"]
    assert s["model"]["model"] == "tiny:qwen2_5_vl" and s["model"]["decoding"]["max_new_tokens"] == 4
    assert s["model"]["pixel_budget"]["max_pixels"] == 112 * 112
    assert s["extraction_rule"] == EXTRACTION_RULE
    assert s["dataset"]["sha256"] == hashlib.sha256(data6.read_bytes()).hexdigest()
    assert "mc_suffix" in s["prompt_template"]


def test_gap_cli_views_pairs_and_skips(tmp_path):
    records = read_records(write_synthetic(tmp_path, 6, seed=3))
    records[0].box = None  # neither box nor teacher image: skipped and counted
    crop = view_of(records[1], "crop").images[0]
    crop.save(tmp_path / "given_crop.png")
    records[1].box, records[1].teacher_image = None, str(tmp_path / "given_crop.png")  # crop given, no red box
    data = tmp_path / "gapdata.jsonl"
    write_records(records, data)
    out = tmp_path / "gap"
    rc = main(["gap", "--model", "tiny:qwen2_5_vl", "--benchmark", "synthetic", "--data", str(data), "--out", str(out),
               "--views", "full,crop,redbox,full+crop", "--max-new-tokens", "3", "--no-progress"])
    assert rc == 0
    r = json.loads((out / "results.json").read_text())
    assert r["skipped"]["no_evidence"] == 1 and r["n_items"] == 5
    assert r["skipped"]["per_view"] == {"full": 0, "crop": 0, "redbox": 1, "full+crop": 0}
    assert set(r["differences"]) == {"crop-full", "redbox-full", "full+crop-full"}
    d = r["differences"]["crop-full"]
    assert d["n"] == 5 and d["ci95"][0] <= d["difference"] <= d["ci95"][1]
    assert r["differences"]["redbox-full"]["n"] == 4
    assert set(d["per_category"]) <= set(QUESTION_TYPES) and d["per_category"]
    assert not r["view_errors"]
    png = (out / "gap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    ids_views = [(s["id"], s["view"]) for s in map(json.loads, _lines(out / "samples.jsonl"))]
    assert len(ids_views) == len(set(ids_views)) == 5 + 5 + 4 + 5


def test_gap_cli_with_a_proposer_needs_no_boxes(tmp_path):
    records = read_records(write_synthetic(tmp_path, 4, seed=5))
    records[0].box = None  # no box: usable for full and proposed, not for crop
    data = tmp_path / "gapdata.jsonl"
    write_records(records, data)
    out = tmp_path / "gap"
    rc = main(["gap", "--model", "tiny:qwen2_vl", "--benchmark", "synthetic", "--data", str(data), "--out", str(out),
               "--views", "full,crop", "--proposer", "confidence", "--max-new-tokens", "3", "--no-progress"])
    assert rc == 0
    r = json.loads((out / "results.json").read_text())
    assert r["n_items"] == 4 and r["skipped"]["no_evidence"] == 1
    p = r["proposals"]
    assert p["proposer"] == "confidence" and p["n"] == 4 and p["n_with_box"] == 3 and 0 <= p["recall@0.5"] <= 1
    assert p["mean_forward_passes"] == 147  # 146 windows + the full image
    # the proposed view covers every item (a fallback's proposed view is the full image)
    assert r["skipped"]["per_view"] == {"full": 0, "crop": 1, "proposed": 0}
    assert r["differences"]["proposed-full"]["n"] == 4 and r["common"]["n"] == 3
    assert (out / "proposals_confidence.jsonl").exists()
    ids_views = [(s["id"], s["view"]) for s in map(json.loads, _lines(out / "samples.jsonl"))]
    assert len(ids_views) == len(set(ids_views)) == 4 + 3 + 4


def test_resume_skips_done_items_and_drops_a_half_line(tmp_path, data6, tiny):
    model, processor = tiny
    out = tmp_path / "run"
    first = Counting(HFGenerator(model, processor, max_new_tokens=4, name="tiny"))
    evaluate(first, "synthetic", data6, out, EvalOptions(batch_size=2, progress=False))
    lines = _lines(out / "samples.jsonl")
    assert len(lines) == 6 and first.batches == [2, 2, 2]
    # an interrupted run: 3 complete lines and half of the fourth
    (out / "samples.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2], encoding="utf-8")
    second = Counting(HFGenerator(model, processor, max_new_tokens=4, name="tiny"))
    r = evaluate(second, "synthetic", data6, out, EvalOptions(batch_size=2, progress=False))
    assert sum(second.batches) == 3, "only the 3 items not complete on disk are generated again"
    final = _lines(out / "samples.jsonl")
    keys = [(s["id"], s["view"]) for s in map(json.loads, final)]
    assert len(final) == 6 and len(set(keys)) == 6
    assert final[:3] == lines[:3]
    assert r["n"] == 6
    # a third run has nothing left to do
    third = Counting(HFGenerator(model, processor, max_new_tokens=4, name="tiny"))
    evaluate(third, "synthetic", data6, out, EvalOptions(batch_size=2, progress=False))
    assert third.batches == [] and len(_lines(out / "samples.jsonl")) == 6


def test_resume_refuses_other_settings(tmp_path, data6, tiny):
    model, processor = tiny
    out = tmp_path / "run"
    evaluate(HFGenerator(model, processor, max_new_tokens=2, name="tiny"), "synthetic", data6, out, EvalOptions(limit=2, batch_size=2, progress=False))
    with pytest.raises(EvalError, match="different settings"):
        evaluate(HFGenerator(model, processor, max_new_tokens=3, name="tiny"), "synthetic", data6, out, EvalOptions(limit=2, batch_size=2, progress=False))


def test_resume_keys_on_the_weights_not_the_path(tmp_path, data6, capsys):
    """A checkpoint retrained at the same path, evaluated into the same --out, used to reuse every old sample."""
    import shutil

    from vision_opd.models.tiny import save_tiny

    ckpt, out = save_tiny(tmp_path / "ckpt", seed=0), tmp_path / "eval"
    args = ["--benchmark", "synthetic", "--data", str(data6), "--out", str(out), "--limit", "3", "--batch-size", "3",
            "--max-new-tokens", "2", "--no-progress"]
    assert main(["eval", "--model", str(ckpt), *args]) == 0
    first = _lines(out / "samples.jsonl")
    moved = shutil.copytree(ckpt, tmp_path / "moved")
    save_tiny(ckpt, seed=1)  # retrained in place: same path, same file names and sizes, other weights
    capsys.readouterr()
    assert main(["eval", "--model", str(ckpt), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different settings (weights) (other weights than those" in err
    assert _lines(out / "samples.jsonl") == first  # nothing reused, nothing appended
    # the first weights at another path: the same fingerprint, so the samples are theirs and are reused
    assert main(["eval", "--model", str(moved), *args]) == 0 and _lines(out / "samples.jsonl") == first


def test_read_samples_rejects_a_broken_middle_line(tmp_path):
    p = tmp_path / "samples.jsonl"
    p.write_text('{"id": "a", "view": "full"}\n{"id": \n{"id": "b", "view": "full"}\n', encoding="utf-8")
    with pytest.raises(EvalError, match="line 2"):
        read_samples(p)
    p.write_text('{"id": "a", "view": "full"}\n{"id": "a", "view": "full"}\n{"id": "b", "vi', encoding="utf-8")
    assert [s["id"] for s in read_samples(p)] == ["a"]
    assert p.read_text(encoding="utf-8").endswith("}\n")


def test_batched_generation_equals_one_at_a_time(data6, tiny):
    """Left padding: prompts of different lengths (texts, one or two images) give the same greedy tokens."""
    model, processor = tiny
    gen = HFGenerator(model, processor, max_new_tokens=6)
    records = read_records(data6)
    views = [view_of(records[0], "full"), view_of(records[1], "crop"), view_of(records[2], "full+crop"),
             view_of(records[3], "redbox"), view_of(records[4], "full")]
    lengths = gen.encode(views)["attention_mask"].sum(-1).tolist()
    assert len(set(lengths)) > 1, "the test needs prompts of different lengths"
    batched = gen(views)
    single = [gen([v])[0] for v in views]
    assert [g.text for g in batched] == [g.text for g in single]
    assert [g.tokens for g in batched] == [g.tokens for g in single]


def test_evaluate_records_writes_no_files(tmp_path, monkeypatch, synth_records, tiny):
    model, processor = tiny
    monkeypatch.chdir(tmp_path)
    model.train()
    r = evaluate_records(model, processor, synth_records[:4], views=("full", "crop"), batch_size=4, max_new_tokens=3)
    assert model.training, "the training mode is restored"
    model.eval()
    assert r["full"]["n"] == 4 and r["crop"]["n"] == 4
    assert 0.0 <= r["full"]["accuracy"] <= 1.0
    assert r["gap"]["crop-full"] == pytest.approx(r["crop"]["accuracy"] - r["full"]["accuracy"])
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the OpenAI-compatible backend


class _Stub(BaseHTTPRequestHandler):
    """POST /v1/chat/completions -> the canned letter "B"; at most MAX requests, then 503."""

    MAX = 40
    bodies: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions" or len(type(self).bodies) >= self.MAX:
            self.send_response(404 if self.path != "/v1/chat/completions" else 503)
            self.end_headers()
            return
        type(self).bodies.append(body)
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": "B"}, "finish_reason": "stop"}],
                            "usage": {"completion_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def do_GET(self):  # noqa: N802 - the model list
        reply = json.dumps({"object": "list", "data": [{"id": "stub-vlm", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def stub_server():
    _Stub.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", _Stub.bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_openai_backend_against_a_stub_server(tmp_path, data6, stub_server):
    api_base, bodies = stub_server
    out = tmp_path / "api"
    rc = main(["eval", "--backend", "openai", "--api-base", api_base, "--api-model", "stub-vlm", "--model", "stub-vlm",
               "--benchmark", "synthetic", "--data", str(data6), "--out", str(out), "--batch-size", "3",
               "--max-new-tokens", "5", "--max-pixels", "50176", "--no-thinking", "--no-progress"])
    assert rc == 0
    records = read_records(data6)
    assert len(bodies) == 6
    by_text = {}
    for b in bodies:
        assert b["model"] == "stub-vlm" and b["temperature"] == 0 and b["max_tokens"] == 5
        assert "extra_body" not in b  # the openai client merges extra_body into the request body
        assert b["mm_processor_kwargs"] == {"max_pixels": 50176}
        assert b["chat_template_kwargs"] == {"enable_thinking": False}
        image, text = b["messages"][0]["content"]
        url = image["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        by_text[text["text"]] = img.size
    for r in records:
        assert by_text[format_prompt(r)] == Image.open(r.image).size
    res = json.loads((out / "results.json").read_text())
    expected = sum(r.answer == "B" for r in records) / len(records)
    assert res["accuracy"] == pytest.approx(expected)
    assert res["unextracted_rate"] == 0.0 and res["response_tokens"]["mean"] == 2
    assert res["settings"]["model"]["backend"] == "openai"
    samples = [json.loads(line) for line in _lines(out / "samples.jsonl")]
    assert all(s["response"] == "B" and s["extracted"] == "B" for s in samples)
