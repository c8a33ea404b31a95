"""The OpenAI-compatible paths against a local stub server (127.0.0.1, no network): failure kinds end to end, a rerun
that retries only failed requests, the LLM judge (only for rule failures; garbage and failing judges), the API key
kept out of every output, provenance, thinking responses, and one-line errors.

    python -m pytest tests/test_eval_server.py
"""

from __future__ import annotations

import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from vision_opd.cli import main
from vision_opd.data.records import Record, write_records
from vision_opd.eval.extraction import EXTRACTION_RULE
from vision_opd.eval.judge import parse_verdict

OPTIONS = ["cat", "dog", "bird", "fish"]


class Stub:
    """A chat-completions server whose reply to each request is `reply(body) -> (status, message dict, finish)`."""

    def __init__(self, reply, model="stub"):
        self.reply, self.model, self.bodies, self.auth = reply, model, [], []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                self._send(200, {"object": "list", "data": [{"id": stub.model, "object": "model"}]})

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.bodies.append(body)
                stub.auth.append(self.headers.get("Authorization"))
                status, message, finish = stub.reply(body)
                if status != 200:
                    return self._send(status, {"error": {"message": "stub failure", "type": "server_error"}})
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": stub.model,
                                 "choices": [{"index": 0, "message": {"role": "assistant", **message},
                                              "finish_reason": finish}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def stubs():
    made = []

    def make(reply, model="stub"):
        made.append(Stub(reply, model))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _text(body) -> str:
    return body["messages"][0]["content"][-1]["text"] if isinstance(body["messages"][0]["content"], list) \
        else body["messages"][0]["content"]


def _records(tmp_path, questions, answers):
    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "im.png")
    recs = [Record(id=f"q{i}", image=str(tmp_path / "im.png"), question=q, options=OPTIONS, answer=a, category="animal")
            for i, (q, a) in enumerate(zip(questions, answers, strict=True))]
    path = tmp_path / "records.jsonl"
    write_records(recs, path)
    return path


def _eval(stub, data, out, *extra):
    return main(["eval", "--backend", "openai", "--api-base", stub.url, "--model", "stub", "--benchmark", "jsonl",
                 "--data", str(data), "--out", str(out), "--retries", "0", "--no-progress", *extra])


def _samples(out):
    return {s["id"]: s for s in map(json.loads, (out / "samples.jsonl").read_text(encoding="utf-8").splitlines())}


BACKEND = {  # question -> the server's reply: (status, message, finish_reason)
    "Which animal? (answer)": (200, {"content": "The answer is B."}, "stop"),
    "Which animal? (empty)": (200, {"content": ""}, "stop"),
    "Which animal? (fails)": (500, {}, "stop"),
    "Which animal? (long)": (200, {"content": "Looking at the picture, the first thing"}, "length"),
    "Which animal? (refuses)": (200, {"content": "I cannot determine that from the image."}, "stop"),
    "Which animal? (vague)": (200, {"content": "Probably the second one."}, "stop"),
    "Which animal? (thinks)": (200, {"content": "", "reasoning_content": "Let me look at option A"}, "length"),
}


def _backend(body):
    return BACKEND[_text(body).split("\n", 1)[0]]


def test_failure_kinds_through_the_server_and_a_rerun_retries_only_failed_requests(tmp_path, stubs):
    data = _records(tmp_path, list(BACKEND), ["B"] * len(BACKEND))
    server = stubs(_backend)
    out = tmp_path / "run"
    assert _eval(server, data, out) == 0
    s = _samples(out)
    kinds = {sid: (x["failure"], x["extracted"], x["correct"], x["method"]) for sid, x in s.items()}
    assert kinds == {"q0": (None, "B", True, "rule"), "q1": ("empty", None, False, "none"),
                     "q2": ("request_failed", None, False, "none"), "q3": ("truncated", None, False, "none"),
                     "q4": ("refused", None, False, "none"), "q5": ("unextractable", None, False, "none"),
                     "q6": ("truncated", None, False, "none")}
    assert "500" in s["q2"]["error"] and s["q2"]["response"] == ""
    assert s["q6"]["response"].startswith("<think>") and "</think>" not in s["q6"]["response"]  # the thought was cut
    r = json.loads((out / "results.json").read_text())
    assert r["failures"] == {"empty": 1, "request_failed": 1, "truncated": 2, "refused": 1, "unextractable": 1}
    assert r["accuracy"] == pytest.approx(1 / 7) and r["answered_share"] == pytest.approx(1 / 7)
    assert r["accuracy_on_answered"] == 1.0 and r["thinking"]["unfinished_rate"] == pytest.approx(1 / 7)
    # the server recovers: a rerun asks for the one failed request only
    BACKEND["Which animal? (fails)"] = (200, {"content": "Answer: B"}, "stop")
    try:
        before = len(server.bodies)
        assert _eval(server, data, out) == 0
        assert [_text(b).split("\n", 1)[0] for b in server.bodies[before:]] == ["Which animal? (fails)"]
    finally:
        BACKEND["Which animal? (fails)"] = (500, {}, "stop")
    s = _samples(out)
    assert len(s) == 7 and s["q2"]["failure"] is None and s["q2"]["correct"]
    r = json.loads((out / "results.json").read_text())
    assert r["failures"]["request_failed"] == 0 and r["accuracy"] == pytest.approx(2 / 7)


def test_the_client_retries_a_failing_request_with_backoff_and_stops_at_a_rejected_key(tmp_path, stubs, capsys):
    data = _records(tmp_path, ["Which animal?"], ["B"])
    fails = {"left": 2}

    def flaky(body):  # two 503s, then an answer
        if fails["left"]:
            fails["left"] -= 1
            return 503, {}, "stop"
        return 200, {"content": "Answer: B"}, "stop"

    server = stubs(flaky)
    out = tmp_path / "retried"
    assert main(["eval", "--backend", "openai", "--api-base", server.url, "--model", "stub", "--benchmark", "jsonl",
                 "--data", str(data), "--out", str(out), "--retries", "2", "--no-progress"]) == 0
    assert len(server.bodies) == 3 and _samples(out)["q0"]["failure"] is None and _samples(out)["q0"]["correct"]
    assert json.loads((out / "results.json").read_text())["settings"]["run"]["client"]["retries"] == 2
    # one retry fewer: the request fails for good and is recorded, not scored as an answer
    fails["left"], out = 2, tmp_path / "one_retry"
    assert main(["eval", "--backend", "openai", "--api-base", server.url, "--model", "stub", "--benchmark", "jsonl",
                 "--data", str(data), "--out", str(out), "--retries", "1", "--no-progress"]) == 0
    s = _samples(out)["q0"]
    assert (s["failure"], s["extracted"], s["correct"]) == ("request_failed", None, False) and "503" in s["error"]
    # a rejected key is not retried item by item: one line, no traceback
    denied = stubs(lambda b: (401, {}, "stop"))
    capsys.readouterr()
    assert _eval(denied, data, tmp_path / "denied") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused the request" in err[0] and "Traceback" not in err[0] and len(denied.bodies) == 1


JUDGE_ANSWERS = {"Probably the second one.": "B", "Maybe the third one.": "C", "It could be the first one.": "none"}


def _judge(body):
    prompt = body["messages"][0]["content"]
    response = prompt.rsplit("Response:\n", 1)[1]
    return 200, {"content": JUDGE_ANSWERS.get(response, "I would say B or C")}, "stop"


def test_the_judge_is_asked_only_about_rule_failures_and_both_scores_are_reported(tmp_path, stubs, monkeypatch):
    secret = "sk-test-0123456789-do-not-write"
    monkeypatch.setenv("VISION_OPD_TEST_KEY", secret)
    replies = {"q0": "The answer is B.", "q1": "Probably the second one.", "q2": "Maybe the third one.",
               "q3": "", "q4": "I cannot determine that.", "q5": "It could be the first one."}
    questions = [f"Which animal {i}?" for i in range(6)]
    data = _records(tmp_path, questions, ["B", "B", "D", "B", "B", "A"])
    backend = stubs(lambda b: (200, {"content": replies[f"q{_text(b).split()[2].rstrip('?')}"]}, "stop"))
    judge = stubs(_judge, model="judge-llm")
    out = tmp_path / "judged"
    extra = ["--judge-api-base", judge.url, "--judge-model", "judge-llm", "--judge-api-key-env", "VISION_OPD_TEST_KEY",
             "--api-key-env", "VISION_OPD_TEST_KEY"]
    assert _eval(backend, data, out, *extra) == 0
    asked = [b["messages"][0]["content"].rsplit("Response:\n", 1)[1] for b in judge.bodies]
    assert sorted(asked) == sorted(["Probably the second one.", "Maybe the third one.", "It could be the first one."])
    p = judge.bodies[0]["messages"][0]["content"]
    assert "A. cat\nB. dog\nC. bird\nD. fish" in p and "Which animal" in p and judge.bodies[0]["temperature"] == 0
    s = _samples(out)
    assert (s["q1"]["method"], s["q1"]["extracted"], s["q1"]["correct"]) == ("judge", "B", True)
    assert (s["q2"]["method"], s["q2"]["extracted"], s["q2"]["correct"]) == ("judge", "C", False)
    assert s["q5"]["method"] == "none" and s["q5"]["judge"]["status"] == "none"
    assert s["q0"]["method"] == "rule" and "judge" not in s["q0"] and "judge" not in s["q3"]
    r = json.loads((out / "results.json").read_text())
    assert r["accuracy"] == pytest.approx(1 / 6)  # rule-only: q0
    assert r["judged"]["accuracy"] == pytest.approx(2 / 6)  # + q1 by the judge
    assert r["judge"]["answer"] == 2 and r["judge"]["none"] == 1 and r["judge"]["asked"] == 3
    assert r["settings"]["judge"]["model"] == "judge-llm" and r["settings"]["judge"]["api_key_env"] == "VISION_OPD_TEST_KEY"
    # the key went to both servers and into no file
    assert set(backend.auth) == {f"Bearer {secret}"} and set(judge.auth) == {f"Bearer {secret}"}
    for f in out.iterdir():
        assert secret not in f.read_text(encoding="utf-8", errors="replace"), f.name
    # resumable: a rerun asks the judge nothing; without the judge, the rule-only samples come back
    n_judge = len(judge.bodies)
    assert _eval(backend, data, out, *extra) == 0
    assert len(judge.bodies) == n_judge and json.loads((out / "results.json").read_text())["judged"]["accuracy"] == pytest.approx(2 / 6)
    assert _eval(backend, data, out) == 0
    s = _samples(out)
    assert s["q1"]["method"] == "none" and s["q1"]["failure"] == "unextractable" and "judge" not in s["q1"]
    assert "judged" not in json.loads((out / "results.json").read_text())


def test_a_garbage_or_failing_judge_leaves_the_rule_only_score_and_is_reported(tmp_path, stubs):
    replies = {"0": "Answer: A", "1": "Probably the second one.", "2": "Something vague."}
    data = _records(tmp_path, [f"Which one {i}?" for i in range(3)], ["A", "B", "B"])
    backend = stubs(lambda b: (200, {"content": replies[_text(b).split()[2].rstrip("?")]}, "stop"))
    failing = {"on": True}

    def judge_reply(body):
        if "Something vague." in body["messages"][0]["content"]:
            return (500, {}, "stop") if failing["on"] else (200, {"content": "B"}, "stop")
        return 200, {"content": "Sure! The answer is probably B, or maybe C."}, "stop"

    judge = stubs(judge_reply, model="j")
    out = tmp_path / "bad_judge"
    assert _eval(backend, data, out, "--judge-api-base", judge.url, "--judge-model", "j") == 0
    r = json.loads((out / "results.json").read_text())
    assert r["accuracy"] == pytest.approx(1 / 3) and r["judged"]["accuracy"] == pytest.approx(1 / 3)
    assert (r["judge"]["garbage"], r["judge"]["failed"], r["judge"]["answer"]) == (1, 1, 0)
    s = _samples(out)
    assert s["q1"]["judge"]["status"] == "garbage" and s["q1"]["failure"] == "unextractable"
    assert s["q2"]["judge"]["status"] == "failed" and s["q2"]["extracted"] is None
    failing["on"] = False  # a rerun asks again only what failed (the garbage verdict is cached)
    n = len(judge.bodies)
    assert _eval(backend, data, out, "--judge-api-base", judge.url, "--judge-model", "j") == 0
    assert [("Something vague." in b["messages"][0]["content"]) for b in judge.bodies[n:]] == [True]
    r = json.loads((out / "results.json").read_text())
    assert r["accuracy"] == pytest.approx(1 / 3) and r["judged"]["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("reply,expected", [
    ("B", ("answer", "B")), (" (c). ", ("answer", "C")), ("none", ("none", None)), ("None.", ("none", None)),
    ("E", ("garbage", None)), ("B or C", ("garbage", None)), ("The answer is B", ("garbage", None)), ("", ("garbage", None)),
])
def test_parse_verdict(reply, expected):
    v = parse_verdict(reply, 4)
    assert (v.status, v.answer) == expected


def test_provenance_and_settings_in_results(tmp_path, stubs):
    data = _records(tmp_path, ["Which animal?"], ["B"])
    server = stubs(lambda b: (200, {"content": "B"}, "stop"))
    out = tmp_path / "prov"
    assert _eval(server, data, out, "--max-pixels", "50176", "--thinking") == 0
    r = json.loads((out / "results.json").read_text())
    p, s = r["provenance"], r["settings"]
    assert {"vision-opd", "python", "torch", "transformers", "openai"} <= set(p["versions"])
    assert p["versions"]["vision-opd"] and p["versions"]["torch"]
    assert p["git"] is None or re.fullmatch(r"[0-9a-f]{40}", p["git"]["commit"])
    assert p["command_line"][:2] == ["vision-opd", "eval"] and str(data) in p["command_line"]
    assert s["dataset"]["sha256"] and s["extraction_rule"] == EXTRACTION_RULE
    assert "template" in s["prompt_template"] and s["model"]["pixel_budget"]["max_pixels"] == 50176
    assert s["model"]["decoding"]["max_new_tokens"] == 8192 and s["model"]["decoding"]["temperature"] == 0
    assert s["response_budget"] == {"mode": "thinking", "max_new_tokens": 8192, "source": "default for thinking mode"}
    assert server.bodies[0]["max_tokens"] == 8192 and server.bodies[0]["chat_template_kwargs"] == {"enable_thinking": True}
    assert s["run"]["client"]["package"] == "openai"


def test_the_request_spells_out_greedy_decoding_and_results_record_it(tmp_path, stubs):
    """A default `vllm serve` fills every sampling setting a request leaves out from the checkpoint's
    generation_config (repetition_penalty 1.05, top_k, top_p): only temperature 0 used to be sent."""
    data = _records(tmp_path, ["Which animal?"], ["B"])
    server = stubs(lambda b: (200, {"content": "B"}, "stop"))
    out = tmp_path / "greedy"
    assert _eval(server, data, out) == 0
    body = server.bodies[0]  # the request as the server received it (extra_body merged into it)
    sent = {k: body.get(k) for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                                     "presence_penalty", "frequency_penalty")}
    assert sent == {"temperature": 0, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0,
                    "presence_penalty": 0.0, "frequency_penalty": 0.0}
    recorded = json.loads((out / "results.json").read_text())["settings"]["model"]["decoding"]
    assert {k: recorded[k] for k in sent} == sent and recorded["greedy"] is True


def test_one_line_errors_before_any_item(tmp_path, stubs, capsys, monkeypatch):
    data = _records(tmp_path, ["Which animal?"], ["B"])
    rc = main(["eval", "--backend", "openai", "--api-base", "http://127.0.0.1:9/v1", "--model", "m", "--benchmark",
               "jsonl", "--data", str(data), "--out", str(tmp_path / "a"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot reach" in err and "--api-base" in err and "Traceback" not in err
    server = stubs(lambda b: (200, {"content": "B"}, "stop"), model="served-model")
    assert _eval(server, data, tmp_path / "b") == 2
    assert "does not serve the model 'stub'" in capsys.readouterr().err and not server.bodies
    monkeypatch.setitem(sys.modules, "openai", None)  # the package not installed
    assert _eval(server, data, tmp_path / "c") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'vision-opd[serve]'" in err[0]


class _FakeJudge:
    model, concurrency = "fake", 2

    def __init__(self, verdicts):
        self.verdicts, self.asked = verdicts, []

    def ask(self, question, options, response):
        from vision_opd.eval.judge import Verdict

        self.asked.append((question, tuple(options), response))
        status, answer = self.verdicts[response]
        return Verdict(status, answer, answer or status)

    def settings(self):
        return {"model": self.model}


def test_the_judge_reads_yes_no_items_as_two_options_and_an_earlier_verdict_can_be_undone(tmp_path):
    from vision_opd.eval.judge import apply_judge, undo_judged

    recs = [Record(id="y", image="im.png", question="Is there a dog?", answer="yes"),
            Record(id="o", image="im.png", question="How many dogs?", answer="3")]  # open: never judged
    samples = [{"id": "y", "view": "full", "response": "<think>hmm</think>Dogs, definitely dogs.", "extracted": None,
                "correct": False, "method": "none", "failure": "unextractable"},
               {"id": "o", "view": "full", "response": "a few", "extracted": None, "correct": False, "method": "none",
                "failure": "unextractable"}]
    judge = _FakeJudge({"Dogs, definitely dogs.": ("answer", "A")})
    out, report = apply_judge(judge, samples, recs, tmp_path / "judge.jsonl")
    assert judge.asked == [("Is there a dog?", ("yes", "no"), "Dogs, definitely dogs.")]  # the thought left out
    assert (out[0]["extracted"], out[0]["correct"], out[0]["method"], out[0]["failure"]) == ("yes", True, "judge", None)
    assert "judge" not in out[1] and report["asked"] == 1 and report["made_correct"] == 1
    back = undo_judged(out[0])
    assert (back["extracted"], back["correct"], back["method"], back["failure"]) == (None, False, "none", "unextractable")
    again, _ = apply_judge(_FakeJudge({}), samples, recs, tmp_path / "judge.jsonl")  # cached: nothing asked
    assert again[0]["method"] == "judge"


def test_the_gap_probe_with_a_judge_reports_rule_only_and_judged_differences(tmp_path, stubs):
    import base64
    import io

    Image.new("RGB", (64, 64), (20, 120, 20)).save(tmp_path / "im.png")
    recs = [Record(id=f"q{i}", image=str(tmp_path / "im.png"), question=f"Which animal {i}?", options=OPTIONS,
                   answer="B", box=(4.0, 4.0, 24.0, 24.0)) for i in range(4)]
    write_records(recs, tmp_path / "records.jsonl")

    def backend(body):
        url = body["messages"][0]["content"][0]["image_url"]["url"]
        size = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size
        return 200, {"content": "Probably the second one." if size == (64, 64) else "B"}, "stop"

    server, judge = stubs(backend), stubs(lambda b: (200, {"content": "B"}, "stop"), model="j")
    out = tmp_path / "gap"
    assert main(["gap", "--backend", "openai", "--api-base", server.url, "--model", "stub", "--benchmark", "jsonl",
                 "--data", str(tmp_path / "records.jsonl"), "--out", str(out), "--views", "full,crop", "--retries", "0",
                 "--judge-api-base", judge.url, "--judge-model", "j", "--no-progress"]) == 0
    r = json.loads((out / "results.json").read_text())
    d = r["differences"]["crop-full"]
    assert d["difference"] == pytest.approx(1.0) and d["judged"]["difference"] == pytest.approx(0.0)
    assert r["views"]["full"]["accuracy"] == 0.0 and r["views"]["full"]["judged"]["accuracy"] == 1.0
    assert r["judge"]["asked"] == 4 and len(judge.bodies) == 4  # only the full view's unreadable replies
