"""Exit codes a scheduler can read: an interrupted run that saved its state exits 128 + the signal (130 SIGINT,
143 SIGTERM) and says how to resume; Ctrl-C anywhere else is one line and 130; a YAML syntax error names the file,
the line and the column."""

from __future__ import annotations

import os
import signal
import threading
import time

from vision_opd.cli import main


def test_sigint_saves_says_resume_and_exits_130(tmp_path, synth_dir, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setenv("VISION_OPD_TEST_WAIT_SIGNAL_AT", "1")  # the run waits after step 1 for the signal
    monkeypatch.setenv("VISION_OPD_TEST_PAUSE_SECONDS", "60")

    def interrupt():  # once step 1 is logged (the handlers are installed by then)
        t_end = time.time() + 60
        while not (run / "metrics.jsonl").exists() and time.time() < t_end:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    rc = main(["train", f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={run}", "train.steps=3",
               "train.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=3",
               "train.progress=false", "train.log_every=1", "views.teacher_pixels=12544", "train.report=false"])
    err = capsys.readouterr().err
    assert rc == 130, err
    assert "received SIGINT: state saved in" in err and "resume with --resume" in err and "Traceback" not in err
    assert (run / "checkpoints" / "step_000001" / "COMPLETE").exists()


def test_ctrl_c_during_evaluation_is_one_line(tmp_path, synth_dir, monkeypatch, capsys):
    import vision_opd.eval.hf_backend as hf

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(hf, "load_hf_generator", ctrl_c)
    rc = main(["eval", "--model", "tiny:qwen2_5_vl", "--benchmark", "synthetic", "--data", str(synth_dir / "train.jsonl"),
               "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 130 and err == "vision-opd: interrupted (Ctrl-C)\n"


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: 5\n  lr: [1, 2\nmodel:\n  name_or_path: x\n")
    assert main(["config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vision-opd: error: {bad}, line 4, column 6: not valid YAML") and err.count("\n") == 1
    assert "unicode string" not in err
