"""`vision-opd demo`: the regional-to-global gap, and label-free Vision-OPD closing it, in minutes on a CPU.

    vision-opd demo                       # shipped pre-trained tiny model, ~1.5 min on 2 cores (docs/demo.md)
    vision-opd demo --pretrain            # pre-train the tiny model first (adds up to 12 min)
    vision-opd demo --study               # + the controls over 3 seeds (prints its expected time first)

1. Load the tiny pre-trained VLM (src/vision_opd/assets/demo_model, made by `vision-opd pretrain`): it was
   trained with labels on evidence crops and easy full images only (demo/world.py).
2. Measure held-out accuracy (greedy, `demo.accuracy`) on hard full images and on their crops: the gap.
3. Vision-OPD with NO labels: the student samples answers on unlabelled hard full images, the frozen
   pre-trained model reads the same answers on the crops, the loss is the JSD between the two views'
   next-token distributions (`train.vision_opd_step`).
4. Measure again; print a table; write report.md, report.html (`vision-opd report`), demo.png, summary.json and
   examples.json into --out.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .arms import ArmConfig
from .world import WorldConfig
from .pretrain import DEMO_VIEWS, eval_split, evaluate_views, load_demo_model, pretrain
from .pretrain_config import PretrainConfig

ASSET_MODEL = Path(__file__).resolve().parents[1] / "assets" / "demo_model"
N_EXAMPLES = 6  # held-out items shown in report.html
REGENERATE = "vision-opd pretrain --out runs/pretrain --copy-to src/vision_opd/assets/demo_model"


def world_of(model_dir: str | Path) -> WorldConfig:
    """The synthetic world a demo checkpoint was pre-trained on (its pretrain_curve.json), else the default."""
    f = Path(model_dir) / "pretrain_curve.json"
    if f.exists():
        w = json.loads(f.read_text()).get("config", {}).get("world")
        if w:
            known = set(WorldConfig.__dataclass_fields__)
            return WorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in w.items() if k in known})
    return WorldConfig()


def easy_share_of(model_dir: str | Path) -> float:
    """The share of easy full images in the checkpoint's labelled pre-training stream (for the `continue` arms)."""
    f = Path(model_dir) / "pretrain_curve.json"
    cfg = json.loads(f.read_text()).get("config", {}) if f.exists() else {}
    return float(cfg.get("easy_share", PretrainConfig().easy_share))


def prepare_data(out: Path, world: WorldConfig, n_opd: int, n_eval: int, eval_split_name: str = "test"):
    """(unlabelled Vision-OPD records, held-out eval records), written under out/data."""
    opd = eval_split(out / "data", "opd", n_opd, world)
    held = eval_split(out / "data", eval_split_name, n_eval, world)
    for r in opd:  # the label-free arm must not be able to read labels, even by accident
        r.answer = None
    return opd, held


def _plot(path: Path, pre_curve: list[dict], runs: dict[str, list[dict]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if pre_curve:
        ax.plot([p["step"] for p in pre_curve], [p["val_full"] for p in pre_curve], "o-", label="full image (hard)")
        ax.plot([p["step"] for p in pre_curve], [p["val_crop"] for p in pre_curve], "s-", label="evidence crop")
        if "val_easy_full" in pre_curve[0]:
            ax.plot([p["step"] for p in pre_curve], [p["val_easy_full"] for p in pre_curve], "^:", label="easy full image (labelled regime)")
    ax.set_title("pre-training with labels (crops + easy full images)")
    ax.set_xlabel("pre-training step")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax = axes[1]
    for i, (name, curve) in enumerate(runs.items()):
        colour = f"C{i}"
        ax.plot([p["step"] for p in curve], [p["full"] for p in curve], "o-", color=colour, label=f"{name}: full")
        ax.plot([p["step"] for p in curve], [p["crop"] for p in curve], "s--", color=colour, alpha=0.6, label=f"{name}: crop")
    ax.set_title(title)
    ax.set_xlabel("training step (after pre-training)")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class DemoData:
    """How many items the demo draws: unlabelled hard images for Vision-OPD, held-out items for accuracy."""
    n_opd: int = 1200
    n_eval: int = 300


def demo(out: str | Path = "runs/demo", *, model_dir: str | Path | None = None, do_pretrain: bool = False,
         arm: ArmConfig = ArmConfig(), sizes: DemoData = DemoData(), pretrain_cfg: PretrainConfig | None = None,
         progress: bool = True) -> dict:
    """Run the demo; returns the summary (also written to out/summary.json).

    `arm`: the Vision-OPD arm's settings (steps, lr, teacher, loss, crop_source, seed, ...); its world and labelled
    mix are the checkpoint's own."""
    from .arms import run_arm

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if do_pretrain or (model_dir is None and not (ASSET_MODEL / "config.json").exists()):
        print(f"[demo] pre-training the tiny model into {out / 'pretrain'}")
        pretrain(out / "pretrain", pretrain_cfg or PretrainConfig(), progress=progress)
        model_dir = out / "pretrain" / "model"
    model_dir = Path(model_dir or ASSET_MODEL)
    world = world_of(model_dir)
    curve_file = model_dir / "pretrain_curve.json"
    pre = json.loads(curve_file.read_text()) if curve_file.exists() else {"curve": []}
    opd, held = prepare_data(out, world, sizes.n_opd, sizes.n_eval)
    print(f"[demo] model {model_dir}; {len(opd)} unlabelled hard images for Vision-OPD; {len(held)} held-out items")
    model, processor = load_demo_model(model_dir)
    before = evaluate_views(model, processor, held, DEMO_VIEWS, progress=progress, max_new_tokens=world.max_new_tokens)
    print(f"[demo] before: full {before['full']:.3f}  crop {before['crop']:.3f}  gap {before['crop'] - before['full']:+.3f}")
    cfg = replace(arm, world=world, easy_share=easy_share_of(model_dir))
    crop_source, teacher = cfg.crop_source, cfg.teacher
    res = run_arm(cfg, model_dir, opd, held, views=DEMO_VIEWS, progress=progress, eval_first=before,
                  proposal_cache=out / f"proposals_{crop_source}.jsonl")
    if res["proposals"]:
        p = res["proposals"]
        print(f"[demo] no boxes: {crop_source} proposals, recall@0.5 {p['recall@0.5']:.3f} (scored against the true boxes, "
              f"which training never reads), {p['kept']} of {p['n']} kept")
    after = res["after"]
    seconds = time.perf_counter() - t0
    summary = {
        "full_before": before["full"], "crop_before": before["crop"], "full_after": after["full"], "crop_after": after["crop"],
        "gap_before": before["crop"] - before["full"], "gap_after": after["crop"] - after["full"],
        "gap_closed": (after["full"] - before["full"]) / max(1e-9, before["crop"] - before["full"]),
        "per_category_before": {"full": before["full_per_category"], "crop": before["crop_per_category"]},
        "per_category_after": {"full": after["full_per_category"], "crop": after["crop_per_category"]},
        "curve": res["curve"], "train_seconds": res["train_seconds"], "seconds": round(seconds, 1),
        "model_dir": str(model_dir), "arm": res["config"], "n_eval": len(held), "n_opd": len(opd),
        "world": world.to_dict(), "pretrain_steps": pre.get("steps"), "crop_source": crop_source,
        "proposals": res["proposals"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    with open(out / "metrics.jsonl", "w") as f:
        for row in res["log"]:
            f.write(json.dumps(row) + "\n")
    _plot(out / "demo.png", pre["curve"], {"Vision-OPD (no labels)": res["curve"]}, "label-free Vision-OPD on hard full images")
    table = _table(summary)
    print(table)
    (out / "report.md").write_text(_report(summary, table))
    html = _html_report(out, model, res["model"], processor, held[:N_EXAMPLES], teacher)
    print(f"[demo] wrote {out / 'report.md'}, {html}, {out / 'demo.png'}, {out / 'summary.json'} in {seconds:.0f} s")
    return summary


def _html_report(out: Path, before, after, processor, records, teacher: str) -> Path:
    """examples.json (what each view sees and answers, before and after training) and report.html."""
    from ..report import build_report
    from .examples import view_answers, write_examples

    frozen = teacher == "frozen"
    note = {"before": "the initial model on the crop",
            "after": "the initial model on the crop (the frozen teacher)" if frozen
            else f"the trained model on the crop (a {teacher} teacher follows the student)"}
    phases = {"before": view_answers(before, before, processor, records, DEMO_VIEWS),
              "after": view_answers(after, before if frozen else after, processor, records, DEMO_VIEWS)}
    write_examples(out / "examples.json", records, phases, DEMO_VIEWS, note)
    return build_report(out)


def _table(s: dict) -> str:
    rows = [("", "full image", "crop", "gap (crop - full)"),
            ("before Vision-OPD", f"{s['full_before']:.3f}", f"{s['crop_before']:.3f}", f"{s['gap_before']:+.3f}"),
            ("after Vision-OPD", f"{s['full_after']:.3f}", f"{s['crop_after']:.3f}", f"{s['gap_after']:+.3f}")]
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|---|---:|---:|---:|")
    return "\n".join(lines) + f"\n\nshare of the gap closed: {s['gap_closed']:.2f}"


def _report(s: dict, table: str) -> str:
    cats = s["per_category_before"]["full"].keys()
    per = ["| category | full before | full after | crop before | crop after |", "|---|---:|---:|---:|---:|"]
    for c in cats:
        per.append(f"| {c} | {s['per_category_before']['full'][c]:.3f} | {s['per_category_after']['full'][c]:.3f} | "
                   f"{s['per_category_before']['crop'][c]:.3f} | {s['per_category_after']['crop'][c]:.3f} |")
    a = s["arm"]
    return f"""# Vision-OPD demo report

Held-out split: {s['n_eval']} hard full images (target among {s['world']['distractors']} look-alike distractors) and
their evidence crops; greedy decoding, answers read with `vision_opd.eval.choice.extract_choice`.
Vision-OPD: {a['steps']} steps x {a['prompts']} unlabelled prompts x {a['samples']} rollouts, loss {a['loss']},
teacher crops from {'the true evidence boxes' if s['crop_source'] == 'box' else 'the ' + s['crop_source'] + ' proposer (no boxes read)'},
{a['teacher']} teacher, lr {a['lr']}, seed {a['seed']}; no labels are read.

{table}

{chr(10).join(per)}

![accuracy curves](demo.png)

Model: {s['model_dir']} (pre-trained {s['pretrain_steps']} steps; regenerate with `{REGENERATE}`).
Training time {s['train_seconds']} s; whole demo {s['seconds']} s. Controls (continued pre-training, off-policy
self-distillation, supervised upper bound, teacher and divergence ablations): `vision-opd demo --study`, docs/demo.md.
"""
