"""The per-token dump: every response token of a step with both views' view of it (`tokens.jsonl`).

    vision-opd train ... train.dump_tokens_every=10     # writes RUN/tokens.jsonl beside samples.jsonl
    vision-opd inspect RUN                              # where the divergence concentrates (token_analysis.py)

One JSON line per response that the loss read (the main process's share of the step), with per-token lists of
equal length:

    {"step": 10, "id": "item0_00003", "source": "student" | "teacher", "response": "red<|im_end|>",
     "tokens": ["r", "ed", "<|im_end|>"], "token_ids": [81, 64, 3],
     "student_logprob": [...], "teacher_logprob": [...],   # log-prob of the token under each view (rollout temperature)
     "divergence": [...],                                   # the loss value of the token (loss.kind at loss.alpha)
     "reverse_kl": [...],                                   # KL(S||T) over the vocabulary at that position
     "student_entropy": [...], "teacher_entropy": [...],    # -sum p log p of each view's next-token distribution (nats)
     "in_answer": [false, true, false]}                     # inside the final answer's span (`answer_span`)

With a negative teacher view (`views.negative`) each row also has "negative_logprob" (l-_t, the token's log-prob under
the same teacher on the negative view) and "weight" (the token's weight under `loss.weighting`; 1 with none).

The final answer is read as evaluation reads it (`eval.choice.extract_choice` for multiple choice,
`extract_open` otherwise); its span is the last place in the response that names it (the option's text or its
letter); a token is in the answer when its characters overlap that span. Responses with no readable answer
have no answer tokens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..data.writes import writing

VALUES = ("student_logprob", "teacher_logprob", "divergence", "reverse_kl", "student_entropy", "teacher_entropy")
OPTIONAL = ("negative_logprob", "weight")  # only with a negative teacher view (training/negatives.py)


def answer_span(text: str, options: list[str] | None) -> tuple[int, int] | None:
    """Character span [start, end) of the final answer in `text`, or None when no answer can be read."""
    from ..eval.choice import extract_choice
    from ..eval.extraction import LETTERS, extract_open

    if options:
        letter = extract_choice(text, options)
        if letter is None:
            return None
        needles = [re.escape(options[LETTERS.index(letter)]), rf"(?<![A-Za-z]){letter}(?![A-Za-z])"]
    else:
        answer = extract_open(text)
        if answer is None:
            return None
        needles = [re.escape(answer)]
    hits = [m.span() for pattern in needles for m in re.finditer(pattern, text, flags=re.I if options is None else 0)]
    if options and not hits:  # the option's text in another case ("Red")
        hits = [m.span() for m in re.finditer(needles[0], text, flags=re.I)]
    return max(hits) if hits else None


def in_answer_flags(pieces: list[str], span: tuple[int, int] | None) -> list[bool]:
    """Per token: do its characters (`pieces`, concatenated = the text) overlap the span?"""
    out, pos = [], 0
    for piece in pieces:
        start, pos = pos, pos + len(piece)
        out.append(span is not None and piece != "" and start < span[1] and pos > span[0])
    return out


def token_rows(processor, records, rollout, token_values: dict[str, list], from_teacher_B) -> list[dict]:
    """The dump's rows for one step: the responses whose tokens the loss read (`token_values` has their values)."""
    tok = processor.tokenizer
    rows = []
    for b in range(rollout.response_ids_B_T.shape[0]):
        values = {name: token_values[name][b] for name in VALUES + OPTIONAL if name in token_values}
        n = len(values["divergence"])
        if n == 0:  # left out of the loss (unanswered or degenerate): nothing was scored
            continue
        ids = rollout.response_ids_B_T[b, :n].tolist()
        record = records[int(rollout.prompt_index_B[b])]
        plain = [tok.decode([t], skip_special_tokens=True) for t in ids]  # special tokens read as ""
        text = "".join(plain)
        rows.append({"id": record.id, "source": "teacher" if bool(from_teacher_B[b]) else "student",
                     "response": tok.decode(ids, skip_special_tokens=False),
                     "tokens": [tok.decode([t], skip_special_tokens=False) for t in ids], "token_ids": ids,
                     **{name: [round(float(x), 6) for x in v] for name, v in values.items()},
                     "in_answer": in_answer_flags(plain, answer_span(text, record.options))})
    return rows


def write_token_rows(path: str | Path, step: int, rows: list[dict]) -> None:
    """Append the rows of one step to `path` (tokens.jsonl), one JSON line each."""
    with writing(Path(path).name, path), open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps({"step": step, **row}, ensure_ascii=False) + "\n" for row in rows))


def read_token_rows(path: str | Path) -> list[dict]:
    """The rows of a tokens.jsonl (a torn last line, from a run killed while writing, is skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i + 1 < len(lines):
                raise ValueError(f"{path}, line {i + 1}: not JSON; is this a tokens.jsonl written by train?") from None
    return rows
