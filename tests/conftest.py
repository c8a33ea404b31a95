"""Shared fixtures: tiny models built in code (cached per session), synthetic records in tmp folders."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    from vision_opd.demo.world import write_synthetic

    d = tmp_path_factory.mktemp("synth")
    write_synthetic(d, 12, seed=0, name="train.jsonl")
    return d


@pytest.fixture(scope="session")
def synth_records(synth_dir):
    from vision_opd.data.validate import read_records

    return read_records(synth_dir / "train.jsonl")


def _forward_logprobs(model, inputs, ro, temperature: float, banned, top_p: float = 1.0, *, whole: bool = False):
    """log softmax(logits / T) of an HF forward at a Rollout's sampled tokens, the `banned` ids excluded and, with
    top_p < 1, only the nucleus kept (the most likely tokens, most likely first, while the mass before a token is
    below top_p) and renormalised: -inf for a token outside it. The reference that the engines' recorded log-probs
    are checked against (written out here, not the engines' code). whole=True: the [B, T, V] log-probs."""
    import torch

    from vision_opd.scoring.forward import response_logits, select_prompts

    with torch.no_grad():
        z = response_logits(model, select_prompts(inputs, ro.prompt_index_B, model.config.vision_start_token_id),
                            ro.response_ids_B_T, ro.response_mask_B_T).float() / temperature
    z[..., list(banned)] = float("-inf")
    if top_p < 1.0:
        p, order = torch.softmax(z, -1).sort(-1, descending=True)
        outside = p.cumsum(-1) - p >= top_p  # the mass of the more likely tokens already reaches top_p
        z = z.scatter(-1, order, z.gather(-1, order).masked_fill(outside, float("-inf")))
    lp = torch.log_softmax(z, -1)
    return lp if whole else lp.gather(-1, ro.response_ids_B_T[..., None]).squeeze(-1)


@pytest.fixture(scope="session")
def forward_logprobs():
    """`_forward_logprobs(model, inputs, ro, temperature, banned, top_p=1.0)`: an HF forward's log-probs of the
    sampled tokens under the distribution they should have been drawn from."""
    return _forward_logprobs


# ----------------------------------------------------------------------------- output folders for the report tests
# Each is made as a user makes it, through the command line: a tiny training run, an eval and a gap folder of the
# shipped demo model on the synthetic records, and a shortened demo.


@pytest.fixture(scope="session")
def report_run(tmp_path_factory, synth_dir):
    from vision_opd.cli import main

    out = tmp_path_factory.mktemp("report") / "run"
    assert main(["train", f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={out}", "train.steps=3",
                 "train.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4",
                 "train.micro_batch_size=4", "train.sample_every=1", "train.progress=false", "views.teacher_pixels=12544",
                 f"data.eval_file={synth_dir / 'train.jsonl'}", "train.eval_every=2", "train.eval_max_new_tokens=2",
                 "train.threads=1"]) == 0
    return out


def _eval_cli(command: str, out, synth_dir) -> None:
    from vision_opd.cli import main
    from vision_opd.demo.run import ASSET_MODEL

    assert main([command, "--model", str(ASSET_MODEL), "--benchmark", "synthetic", "--data", str(synth_dir / "train.jsonl"),
                 "--out", str(out), "--no-progress", "--max-new-tokens", "8"]) == 0


@pytest.fixture(scope="session")
def report_eval(tmp_path_factory, synth_dir):
    out = tmp_path_factory.mktemp("report") / "eval"
    _eval_cli("eval", out, synth_dir)
    return out


@pytest.fixture(scope="session")
def report_gap(tmp_path_factory, synth_dir):
    out = tmp_path_factory.mktemp("report") / "gap"
    _eval_cli("gap", out, synth_dir)
    return out


@pytest.fixture(scope="session")
def report_demo(tmp_path_factory):
    from vision_opd.cli import main

    out = tmp_path_factory.mktemp("report") / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2", "--eval-every", "1", "--n-eval", "8", "--n-opd", "8",
                 "--no-progress"]) == 0
    return out


# ----------------------------------------------------------------------------- the command line, in this process


@pytest.fixture
def cli(capfd, monkeypatch):
    """`cli(*args, rc=0, cwd=None) -> output`: the `vision-opd` command in this process (`vision_opd.cli.main`), its
    exit code asserted, its stdout + stderr returned (captured at the file descriptors, as a terminal would show
    them). No traceback may reach the output; an exception main() lets through fails the test as it is. A
    SystemExit with a message prints it to stderr and counts as exit code 1, as the interpreter does."""
    import sys

    from vision_opd.cli import main

    def run(*args, rc: int = 0, cwd=None) -> str:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capfd.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = 0 if e.code is None else e.code
            if isinstance(code, str):
                print(code, file=sys.stderr)
                code = 1
        captured = capfd.readouterr()
        out = captured.out + captured.err
        assert "Traceback" not in out, out
        assert code == rc, f"exit code {code}, not {rc}:\n{out}"
        return out

    return run


# ----------------------------------------------------------------------------- the vLLM tests (`make test-vllm`)
# Marked `vllm`; where vLLM is not installed they skip with the reason. With VISION_OPD_REQUIRE_VLLM=1 (set by
# `make test-vllm`) a skipped vLLM test fails, and so does a run that collected none.
REQUIRE_VLLM = os.environ.get("VISION_OPD_REQUIRE_VLLM") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    xfailed = hasattr(report, "wasxfail")  # an expected failure (xfail) is reported as skipped: not a skip
    if REQUIRE_VLLM and report.skipped and not xfailed and item.get_closest_marker("vllm") is not None:
        report.outcome = "failed"
        report.longrepr = f"VISION_OPD_REQUIRE_VLLM=1 but this vLLM test was skipped: {report.longrepr}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_VLLM and report.skipped:  # a module-level skip (vLLM not importable) is a collection error here
        report.outcome = "failed"
        report.longrepr = f"VISION_OPD_REQUIRE_VLLM=1 but {collector.nodeid} was skipped: {report.longrepr}"


def pytest_sessionfinish(session, exitstatus):
    if REQUIRE_VLLM:
        n = sum(1 for item in session.items if item.get_closest_marker("vllm") is not None)
        if n == 0:
            print("\nVISION_OPD_REQUIRE_VLLM=1 but no vLLM test was collected")
            session.exitstatus = 1


@pytest.fixture(scope="session")
def tied_model_dir(tmp_path_factory):
    """A tiny Qwen2.5-VL with tied input/output embeddings (as Qwen2.5-VL-3B and Qwen3-VL-4B have), saved as a folder."""
    import torch
    from transformers import AutoModelForImageTextToText

    from vision_opd.models.tiny import build_processor, tiny_config

    proc = build_processor("qwen2_5_vl")
    config = tiny_config("qwen2_5_vl", proc.tokenizer)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    out = tmp_path_factory.mktemp("tied")
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def matrix_data(tmp_path_factory):
    """The combination matrix's records (tests/matrix_rows.py), shared by its HF and vLLM rows."""
    from matrix_rows import write_matrix_data

    return write_matrix_data(tmp_path_factory.mktemp("matrix_data"))


@pytest.fixture(scope="session")
def twin_dirs(tmp_path_factory):
    """The twins of the presets' checkpoints, saved once for the matrix's rows."""
    from matrix_rows import save_twins

    return save_twins(tmp_path_factory.mktemp("matrix_twins"))
