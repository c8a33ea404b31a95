"""An LLM judge asked ONLY about the responses that the rules could not read (failure kind `unextractable`).

    vision-opd eval ... --judge-api-base http://127.0.0.1:8001/v1 --judge-model Qwen/Qwen2.5-7B-Instruct

The judge (any OpenAI-compatible endpoint, through the `openai` package; key from the environment variable
`--judge-api-key-env`, never written to outputs) sees the question, the options and the response's answer part
(after its reasoning) and must reply with one option letter or "none". Multiple-choice and yes/no items are judged
(yes/no as the options A. yes, B. no); open answers are not. Verdicts are cached per (id, view, response) in
`OUT/judge.jsonl`, appended as they come, so a rerun asks only what is missing; a request that failed is asked again.

A verdict's status: `answer` (a letter: the sample's method becomes "judge"), `none` (the judge found no answer),
`garbage` (the reply is neither a letter in range nor "none") or `failed` (the request failed after its retries).
Only `answer` changes a sample; everything else leaves it unextractable, so a failing or garbage judge leaves the
rule-only score intact. Both scores are in results.json (`accuracy` rule-only, `judged.accuracy`).
"""

from __future__ import annotations

import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, Sequence

from ..data.records import LETTERS, Record
from .extraction import prepare
from .openai_backend import check_server, client, describe, fatal_status
from .views import EvalError

JUDGE_FILE = "judge.jsonl"
JUDGE_PROMPT_VERSION = "vision_opd.judge-v1"
JUDGE_PROMPT = """You grade how a model answered a multiple-choice question. Read the question, the options and \
the model's response, and decide which option the response gives as its final answer.
Reply with exactly one option letter ({letters}), or with the word none if the response gives no option, gives \
several, or refuses. Reply with nothing else.

Question: {question}
Options:
{options}

Response:
{response}"""
_VERDICT = re.compile(r"^[\s\"'`*(\[]*([A-Za-z]|none)[\s\"'`*)\].]*$", re.I)


class Verdict(NamedTuple):
    status: str  # answer | none | garbage | failed
    answer: str | None  # the letter when status == "answer"
    reply: str  # the judge's raw reply (or the error)


def judge_options(record: Record) -> list[str] | None:
    """The options the judge chooses among: the record's, or yes / no for a yes/no item; None: not judged."""
    if record.options:
        return list(record.options)
    if record.answer is not None and record.answer.strip().lower() in ("yes", "no"):
        return ["yes", "no"]
    return None


def parse_verdict(reply: str, n_options: int) -> Verdict:
    m = _VERDICT.match(reply or "")
    if not m:
        return Verdict("garbage", None, reply)
    got = m.group(1)
    if got.lower() == "none":
        return Verdict("none", None, reply)
    letter = got.upper()
    return Verdict("answer", letter, reply) if letter in LETTERS[:n_options] else Verdict("garbage", None, reply)


class Judge:
    """ask(question, options, response) -> Verdict, temperature 0, a few tokens."""

    def __init__(self, api_base: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0,
                 retries: int = 3, max_tokens: int = 8, concurrency: int = 8, check: bool = True):
        self.client = client(api_base, api_key_env=api_key_env, timeout=timeout, retries=retries, what="--judge-api-base")
        self.api_base, self.model, self.api_key_env = api_base.rstrip("/"), model, api_key_env
        self.timeout, self.retries, self.max_tokens, self.concurrency = timeout, retries, max_tokens, max(1, concurrency)
        if check:  # an unreachable judge, a rejected key or an unknown model: one line before any item
            check_server(self.client, model, "--judge-api-base", api_key_env)

    def prompt(self, question: str, options: Sequence[str], response: str) -> str:
        lines = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
        return JUDGE_PROMPT.format(letters=", ".join(LETTERS[: len(options)]), question=question, options=lines,
                                   response=response)

    def ask(self, question: str, options: Sequence[str], response: str) -> Verdict:
        import openai

        try:
            reply = self.client.chat.completions.create(
                model=self.model, temperature=0, max_tokens=self.max_tokens, n=1,
                messages=[{"role": "user", "content": self.prompt(question, options, response)}])
            text = reply.choices[0].message.content or ""
        except openai.APIError as e:
            if fatal_status(e):
                raise EvalError(f"the judge at {self.api_base} refused the request ({describe(e)}); check "
                                f"--judge-model and the key in {self.api_key_env}") from None
            return Verdict("failed", None, describe(e))
        except (IndexError, AttributeError, TypeError) as e:
            return Verdict("failed", None, f"unexpected reply: {e}")
        return parse_verdict(text.strip(), len(options))

    def settings(self) -> dict[str, Any]:
        return {"api_base": self.api_base, "model": self.model, "prompt_version": JUDGE_PROMPT_VERSION,
                "prompt_sha256": hashlib.sha256(JUDGE_PROMPT.encode()).hexdigest(), "temperature": 0,
                "max_tokens": self.max_tokens, "timeout_s": self.timeout, "retries": self.retries,
                "api_key_env": self.api_key_env, "asked_about": "unextractable responses only"}


def _key(sample: dict[str, Any]) -> str:
    return hashlib.sha256(f"{sample['id']}\0{sample['view']}\0{sample['response']}".encode()).hexdigest()


def _read_cache(path: Path, fingerprint: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            v = json.loads(line)
        except json.JSONDecodeError:
            continue  # an interrupted write: that item is asked again
        if v.get("judge") == fingerprint and v.get("status") != "failed":
            out[v["key"]] = v
    return out


def undo_judged(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample as the rules left it (a judge decision from an earlier run removed)."""
    s = dict(sample)
    if s.pop("judge", None) is not None and s.get("method") == "judge":
        s.update(extracted=None, correct=False, method="none", failure="unextractable")
    return s


def apply_judge(judge: Judge | None, samples: Sequence[dict[str, Any]], records: Sequence[Record],
                cache_path: Path | None, progress: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(samples with the judge's verdicts applied, the judge's report); judge None: the rule-only samples."""
    samples = [undo_judged(s) for s in samples]
    if judge is None:
        return samples, None
    by_id = {r.id: r for r in records}
    fingerprint = f"{judge.model}|{JUDGE_PROMPT_VERSION}"
    cache = _read_cache(cache_path, fingerprint) if cache_path else {}
    asked = [i for i, s in enumerate(samples)
             if s.get("failure") == "unextractable" and s["id"] in by_id and judge_options(by_id[s["id"]])]
    todo = [i for i in asked if _key(samples[i]) not in cache]

    def one(i: int) -> dict[str, Any]:
        s, r = samples[i], by_id[samples[i]["id"]]
        v = judge.ask(r.question, judge_options(r), prepare(s["response"]) or s["response"])
        return {"key": _key(s), "id": s["id"], "view": s["view"], "judge": fingerprint, "status": v.status,
                "answer": v.answer, "reply": v.reply[:500]}

    fh = open(cache_path, "a", encoding="utf-8") if cache_path else None
    try:
        with ThreadPoolExecutor(max_workers=judge.concurrency) as pool:
            for v in pool.map(one, todo):
                cache[v["key"]] = v
                if fh:
                    fh.write(json.dumps(v, ensure_ascii=False) + "\n")
                    fh.flush()
    finally:
        if fh:
            fh.close()
    counts = {"asked": len(asked), "asked_this_run": len(todo), "answer": 0, "none": 0, "garbage": 0, "failed": 0,
              "made_correct": 0}
    for i in asked:
        s, r = samples[i], by_id[samples[i]["id"]]
        v = cache[_key(s)]
        counts[v["status"]] += 1
        s["judge"] = {"status": v["status"], "answer": v["answer"], "reply": v["reply"][:200]}
        if v["status"] == "answer":
            options = judge_options(r)
            extracted = v["answer"] if r.options else options[LETTERS.index(v["answer"])]
            gold = r.answer.strip() if r.options else r.answer.strip().lower()
            if r.options and gold not in LETTERS[: len(options)]:
                gold = LETTERS[list(options).index(gold)]
            s.update(extracted=extracted, correct=extracted == gold, method="judge", failure=None)
            counts["made_correct"] += int(s["correct"])
    return samples, {"settings": judge.settings(), **counts}
