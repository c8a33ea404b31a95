"""tokens.jsonl (train.dump_tokens_every) holds what the model computes, and `vision-opd inspect` reads it."""

from __future__ import annotations

import json

import pytest
import torch

from vision_opd.cli import main
from vision_opd.training.token_dump import answer_span, in_answer_flags


@pytest.fixture(scope="module")
def dumped(tmp_path_factory, synth_dir):
    run = tmp_path_factory.mktemp("dump") / "run"
    args = ["train", f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={run}", "train.steps=2",
            "train.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4", "train.progress=false",
            "train.dump_tokens_every=1", "teacher.mode=frozen", "views.teacher_pixels=12544", "train.sample_every=0"]
    assert main(args) == 0
    return run


def test_dump_values_equal_recomputed_log_probs(dumped, synth_dir):
    """Step 1's rows against an independent forward of the initial weights (the dump is written before the update):
    log_softmax of the logits at the response positions, both views, their entropies and the JSD by hand."""
    from vision_opd.config import load_config
    from vision_opd.data.validate import read_records
    from vision_opd.data.views import encode_views, student_view, teacher_view
    from vision_opd.models.loading import load_model

    rows = [json.loads(x) for x in (dumped / "tokens.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows}) == [1, 2] and len(rows) == 8
    cfg = load_config(dumped / "config.yaml")
    model, proc = load_model(cfg.model, seed=cfg.train.seed, device=torch.device("cpu"))
    model.eval()
    records = {r.id: r for r in read_records(synth_dir / "train.jsonl")}
    for row in (r for r in rows if r["step"] == 1):
        n = len(row["token_ids"])
        assert n == len(row["tokens"]) == len(row["in_answer"]) and all(len(row[k]) == n for k in
                                                                        ("student_logprob", "teacher_logprob", "divergence",
                                                                         "student_entropy", "teacher_entropy"))
        ids = torch.tensor([row["token_ids"]])
        logp = {}
        for side, view in (("student", student_view), ("teacher", teacher_view)):
            enc = encode_views(proc, [view(records[row["id"]], cfg.views)])
            L = enc["input_ids"].shape[1]
            full = {**enc, "input_ids": torch.cat([enc["input_ids"], ids], 1), "attention_mask": torch.ones(1, L + n, dtype=torch.long)}
            if "mm_token_type_ids" in enc:
                full["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(ids)], 1)
            with torch.no_grad():
                logp[side] = torch.log_softmax(model(**full).logits[0, L - 1:L - 1 + n].float(), -1)
            got = torch.tensor(row[f"{side}_logprob"])
            torch.testing.assert_close(got, logp[side].gather(-1, ids[0, :, None]).squeeze(-1), rtol=1e-4, atol=1e-4)
            entropy = -(logp[side].exp() * logp[side]).sum(-1)
            torch.testing.assert_close(torch.tensor(row[f"{side}_entropy"]), entropy, rtol=1e-4, atol=1e-4)
        s, t = logp["student"].exp(), logp["teacher"].exp()
        m = 0.5 * (s + t)
        jsd = 0.5 * (s * (s / m).log()).sum(-1) + 0.5 * (t * (t / m).log()).sum(-1)
        torch.testing.assert_close(torch.tensor(row["divergence"]), jsd, rtol=1e-3, atol=1e-5)
        assert row["source"] == "student" and row["tokens"] == [proc.tokenizer.decode([i]) for i in row["token_ids"]]


def test_answer_span_on_constructed_responses():
    opts = ["red", "blue", "green", "4"]
    text = "red object, blue dot. Answer: blue"
    assert text[slice(*answer_span(text, opts))] == "blue" and answer_span(text, opts)[0] == len(text) - 4
    assert answer_span("The answer is (C).", opts) == (15, 16)
    assert "".join(["Answer: ", "Blue"])[slice(*answer_span("Answer: Blue", ["red", "blue"]))] == "Blue"  # any case
    assert answer_span("no idea", opts) is None
    assert answer_span("It is 42.", None) is not None
    pieces = ["red", " object", ".", " Answer", ":", " bl", "ue", ""]
    span = answer_span("".join(pieces), opts)
    assert in_answer_flags(pieces, span) == [False, False, False, False, False, True, True, False]
    assert in_answer_flags(pieces, None) == [False] * len(pieces)


def test_inspect_prints_tables_and_writes_a_plot(dumped, capsys):
    assert main(["inspect", str(dumped), "--steps", "2:2"]) == 0
    out = capsys.readouterr().out
    assert "by position in the response" in out and "by the student's probability of the token" in out
    assert "answer tokens vs the others" in out and "steps 2-2 (1 dumps)" in out
    res = json.loads((dumped / "inspect.json").read_text())[str(dumped)]
    assert res["tokens"] == sum(r["tokens"] for r in res["by_position"]) == sum(r["tokens"] for r in res["by_student_prob"])
    assert abs(sum(r["value_share"] for r in res["by_position"]) - 1.0) < 1e-6
    assert (dumped / "inspect.png").stat().st_size > 0


def test_inspect_without_a_dump_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match="train with train.dump_tokens_every=N"):
        main(["inspect", str(tmp_path)])
    with pytest.raises(SystemExit, match="--steps 'x': expected FROM:TO"):
        main(["inspect", str(tmp_path), "--steps", "x"])


def test_overwrite_removes_and_resume_cuts_back_tokens_jsonl(tmp_path, synth_dir, capsys):
    """A 4-step run overwritten by a 2-step one used to keep the old dumps (`inspect` said "steps 1-4"), and a
    resumed run appended its steps after the ones it redid."""
    import shutil

    from vision_opd.training.checkpoint import complete_checkpoints

    run = tmp_path / "run"
    args = ["train", f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={run}", "train.prompts_per_step=1",
            "rollout.samples_per_prompt=1", "rollout.max_new_tokens=2", "train.progress=false", "train.dump_tokens_every=1",
            "teacher.mode=frozen", "views.teacher_pixels=12544", "train.sample_every=0", "train.report=false"]

    def dumped_steps():
        return [json.loads(x)["step"] for x in (run / "tokens.jsonl").read_text().splitlines()]

    assert main([*args, "train.steps=4"]) == 0 and dumped_steps() == [1, 2, 3, 4]
    assert main([*args, "train.steps=2", "--overwrite"]) == 0
    assert dumped_steps() == [1, 2]
    capsys.readouterr()
    assert main(["inspect", str(run)]) == 0 and "steps 1-2 (2 dumps)" in capsys.readouterr().out
    assert main([*args, "train.steps=3", "train.save_every=2", "--overwrite"]) == 0
    shutil.rmtree(complete_checkpoints(run)[-1])  # as if the run died after step 3's dump, before its save
    assert main([*args, "train.steps=3", "train.save_every=2", "--resume"]) == 0  # from step 2: redoes step 3
    assert dumped_steps() == [1, 2, 3]
