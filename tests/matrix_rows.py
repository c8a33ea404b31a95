"""The rows of the combination matrix (tests/test_matrix.py, tests/test_matrix_vllm.py; tests/matrix_runner.py runs
and checks them): the factors, a pairwise covering set over them, the shipped preset of each row on the twin of its
checkpoint, the overrides that shrink a preset to its twin, and the defects that stop a row until their fixes land.

Factors: processes {1, DDP x2, FSDP x2} x rollouts {HF, vLLM} x weights {full, LoRA} x teacher {frozen, EMA, live}
x train.share_prompts {on, off} x embeddings {tied, untied}. Tied rows run Qwen2.5-VL-3B / Qwen3.5-4B presets, untied
ones Qwen2.5-VL-7B (and the ablations) / Qwen3-VL-8B.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

# (the order of the values breaks ties in `pairwise`: this one gives 9 rows, the fewest possible, 4 of them with HF
# rollouts, so the two-process runs mostly fall to `make test-vllm`)
FACTORS = {"procs": ("fsdp", "ddp", "1"), "engine": ("vllm", "hf"), "weights": ("full", "lora"),
           "teacher": ("frozen", "ema", "live"), "share": ("on", "off"), "tied": ("tied", "untied")}
ROOT = Path(__file__).resolve().parents[1]
# every shipped preset, with the twin of its checkpoint (tiny_cpu runs its own tiny model); the negative-view presets
# first, so that they take rows of their own among the pairs (FSDP + LoRA + EMA, DDP + vLLM, vLLM) rather than only
# a one-process row
PRESETS = {"configs/ablations/opdv.yaml": "qwen2_5_vl_7b", "configs/ablations/cvopd.yaml": "qwen2_5_vl_7b",
           "configs/ablations/vzero.yaml": "qwen2_5_vl_7b", "configs/qwen2_5_vl_3b_full.yaml": "qwen2_5_vl_3b", "configs/qwen3_5_4b_reference.yaml": "qwen3_5_4b",
           "configs/qwen2_5_vl_7b_lora.yaml": "qwen2_5_vl_7b", "configs/qwen3_vl_8b_lora.yaml": "qwen3_vl_8b",
           "configs/ablations/onpolicy.yaml": "qwen2_5_vl_7b", "configs/ablations/offpolicy.yaml": "qwen2_5_vl_7b",
           "configs/ablations/seqkd.yaml": "qwen2_5_vl_7b", "configs/ablations/textonly.yaml": "qwen2_5_vl_7b",
           "configs/tiny_cpu.yaml": "tiny:qwen2_5_vl"}
TIED = {"qwen2_5_vl_3b", "qwen3_5_4b"}
# combinations the matrix holds beyond pairs: full fine-tuning of a tied model synced to vLLM (the output head is the
# embedding); with HF rollouts (so in `make test`), LoRA under FSDP with the EMA teacher (the default teacher) and FSDP
# over a tied model
REQUIRED = ({"engine": "vllm", "weights": "full", "tied": "tied"},
            {"procs": "fsdp", "weights": "lora", "teacher": "ema", "engine": "hf"},
            {"procs": "fsdp", "tied": "tied", "engine": "hf"})
VLLM_TWINS = {"qwen2_5_vl_3b", "qwen2_5_vl_7b"}  # the families vLLM's CPU backend runs (tests/test_vllm.py)
SIDE = 168  # the synthetic images' size: the processors' pixel budget, so no engine resizes an image


def pairs_of(row: dict) -> set:
    items = sorted(row.items())
    return {(a, b) for a, b in itertools.combinations(items, 2)}


def pairwise(factors: dict, required: tuple[dict, ...] = ()) -> list[dict]:
    """A small set of rows covering every pair of values of two factors (greedy: each new row the one covering most
    uncovered pairs, first in enumeration order on ties). Each `required` partial row is completed first, the same
    way, so that the set also holds those combinations."""
    names = list(factors)
    every = [dict(zip(names, values, strict=True)) for values in itertools.product(*factors.values())]
    todo = set().union(*(pairs_of(r) for r in every))
    rows = []
    for part in required:
        best = max((r for r in every if part.items() <= r.items()), key=lambda r: len(pairs_of(r) & todo))
        rows.append(best)
        todo -= pairs_of(best)
    while todo:
        best = max(every, key=lambda r: len(pairs_of(r) & todo))
        rows.append(best)
        todo -= pairs_of(best)
    return rows


def assign_presets(rows: list[dict]) -> list[tuple[str, dict]]:
    """(preset, row) for every row: a preset whose twin has the row's embeddings (and that vLLM runs, for vLLM rows),
    the least used first; then one more row per preset no row got, with the preset's own settings (1 process, HF,
    its weights and teacher, prompts shared)."""
    used = dict.fromkeys(PRESETS, 0)
    out = []
    for row in rows:
        fits = [p for p, twin in PRESETS.items() if (twin in TIED) == (row["tied"] == "tied") and twin != "tiny:qwen2_5_vl"
                and (row["engine"] == "hf" or twin in VLLM_TWINS)]
        preset = min(fits, key=lambda p: used[p])
        used[preset] += 1
        out.append((preset, row))
    for preset in (p for p, n in used.items() if n == 0):
        import yaml

        shipped = yaml.safe_load((ROOT / preset).read_text())
        out.append((preset, {"procs": "1", "engine": "hf",
                             "weights": "lora" if shipped["model"].get("lora_r", 0) > 0 else "full",
                             "teacher": shipped["teacher"]["mode"], "share": "on",
                             "tied": "tied" if PRESETS[preset] in TIED else "untied"}))
    return out


def known_defects(row: dict) -> list[str]:
    """The defects a row runs into until their fixes land (the rows are xfail(strict) for them). Defects 1-3 and 5 of
    the twins issue stopped the rows holding a tied model under vLLM or FSDP, LoRA + FSDP + EMA, and every vLLM
    resume; their fixes are in. A row found to fail on a new defect is listed here until its fix lands."""
    found: list[str] = []  # the two this matrix found itself (vLLM under FSDP: the engine read the class FSDP2
    # renamed as its architecture; vLLM over several processes: closing the engine took the process group down before
    # the final checkpoint was gathered) are fixed too
    return found


def write_matrix_data(d: Path) -> Path:
    """Synthetic records, each with its own teacher_image (the evidence crop, as in the 6K data)."""
    from vision_opd.data.crops import crop_image
    from vision_opd.data.images import open_image
    from vision_opd.demo.world import write_synthetic

    src = write_synthetic(d, 6, seed=0, name="base.jsonl")
    lines = []
    for row in map(json.loads, src.read_text().splitlines()):
        crop = f"images/{row['id']}_crop.png"
        crop_image(open_image(str(d / row["image"])), tuple(row["box"])).save(d / crop)
        lines.append(json.dumps({**row, "teacher_image": crop}))
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    return d / "train.jsonl"


def save_twins(root: Path) -> dict:
    """The twins of the presets' checkpoints, at the synthetic images' pixel budget."""
    from vision_opd.models.twins import save_twin

    return {t: save_twin(root / t, t, image_size=SIDE) for t in set(PRESETS.values()) if not t.startswith("tiny:")}


def matrix_param(preset: str, row: dict):
    """A pytest param of a row, xfail(strict) while a known defect stands in its way."""
    import pytest

    defects = known_defects(row)
    marks = [pytest.mark.xfail(strict=True, reason="; ".join(defects))] if defects else []
    return pytest.param(preset, row, id=row_id(preset, row), marks=marks)


def row_id(preset: str, row: dict) -> str:
    return "-".join([Path(preset).stem, *row.values()])


def row_overrides(row: dict, twin_dir: str, data: Path, out: Path) -> list[str]:
    """The sizes (model -> its twin, float32 and fp32 compute for the 1e-5 checks, tiny data, 3 steps, a checkpoint
    at step 2, LoRA rank 8) and the row's factors."""
    o = [f"model.name_or_path={twin_dir}", "model.dtype=float32", "model.max_pixels=null", "train.mixed_precision=fp32",
         f"model.tiny_image_size={SIDE}", f"data.train_file={data}", "data.format=records", f"train.out_dir={out}",
         "train.steps=3", "train.save_every=2", "train.prompts_per_step=2", "rollout.max_new_tokens=4",
         "train.micro_batch_size=4", "train.eval_every=0", "train.progress=false", "train.tensorboard=false",
         "train.threads=1", "train.device=cpu", "views.teacher_pixels=12544", f"rollout.engine={row['engine']}",
         "train.guard_uniform_teacher=false"]  # a random twin's teacher is near uniform: the guard is for real weights
    if row["procs"] != "1":
        o.append(f"train.distributed={row['procs']}")
    o += ["model.lora_r=8", "model.lora_alpha=16"] if row["weights"] == "lora" else ["model.lora_r=0"]
    o += [f"teacher.mode={row['teacher']}", f"train.share_prompts={'true' if row['share'] == 'on' else 'false'}"]
    return o
