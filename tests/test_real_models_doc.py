"""docs/real-models.md runs as written: every block marked "runs on the tiny stand-ins" is executed, in order, in a
fresh folder, with the hub model replaced by a tiny model of the same family and training shrunk to 2 steps.

The substitutions are the only differences from the page (so a renamed flag, path or checkpoint breaks this test):
`vision-opd` -> `vision_opd.cli.main` in this process (the `cli` fixture: exit code 0, no traceback); train commands
get TINY_TRAIN appended (a `--resume` one step more: train.steps=3, as a resumed run must go past its checkpoint);
eval/gap commands get a short response limit; the page's checkpoint of a 390-step run, step_000390, is the shrunk
run's step_000002.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "real-models.md"
MARK = "<!-- runs on the tiny stand-ins -->"
TINY_TRAIN = ["model.name_or_path=tiny:qwen2_5_vl", "train.steps=2", "train.prompts_per_step=2", "rollout.samples_per_prompt=2",
              "rollout.max_new_tokens=4", "train.micro_batch_size=2", "train.progress=false", "train.threads=1"]
TINY_EVAL = ["--max-new-tokens", "4", "--no-progress"]


def doc_commands(text: str) -> list[str]:
    """The shell commands of the marked ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(re.escape(MARK) + r"\s*```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                commands.append(line)
    return commands


def tiny(command: str) -> list[str]:
    argv = shlex.split(command.replace("step_000390", "step_000002"))
    assert argv[0] == "vision-opd", f"a marked block may only hold vision-opd commands: {command}"
    argv = argv[1:]
    if argv[0] == "train":
        argv += TINY_TRAIN + (["train.steps=3"] if "--resume" in argv else [])
    elif argv[0] in ("eval", "gap"):
        argv += TINY_EVAL
    return argv


def test_the_page_marks_its_commands():
    cmds = doc_commands(DOC.read_text(encoding="utf-8"))
    assert len(cmds) >= 10 and any(" export " in c and "--merge" in c for c in cmds)
    assert {c.split()[1] for c in cmds} >= {"synth", "data", "train", "export", "eval", "gap"}


def test_real_models_doc_commands_run_on_tiny_models(tmp_path, cli):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    for command in doc_commands(DOC.read_text(encoding="utf-8")):
        cli(*tiny(command), cwd=tmp_path)  # exit code 0, no traceback
    assert (tmp_path / "exports" / "my_7b" / "model.safetensors").is_file()  # merged
    assert (tmp_path / "runs" / "my_7b_lora" / "checkpoints" / "step_000002" / "adapter_model.safetensors").is_file()
    for name in ("my_7b", "my_7b_adapter"):
        assert (tmp_path / "runs" / "eval" / name / "results.json").is_file()
    assert (tmp_path / "runs" / "gap" / "my_3b" / "gap.png").is_file()
