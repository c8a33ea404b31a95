"""`vision-opd report`: the pages of a tiny training run, an eval folder, a gap folder and the demo, read back.

The content is checked against the folder's own files: one block per sampled rollout, every token's colour
recomputed from its value in samples.jsonl (independently of the report's code), the images embedded and
decodable, the gallery's outcomes and its filter buttons, the galleries of the gap probe, the bounds on a long
run, the missing-data path, the command line, and that building a page never imports torch or transformers.
The browser renders the same pages in test_report_browser.py.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from vision_opd.cli import main
from vision_opd.report import Limits, build_html, build_report

VOID = {"img", "br", "meta", "input", "hr", "link"}


class Tree(HTMLParser):
    """Every element with its attributes, its ancestors and its text (enough for these checks)."""

    def __init__(self, text: str):
        super().__init__()
        self.elements: list[dict] = []
        self.stack: list[dict] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        el = {"tag": tag, "attrs": dict(attrs), "parents": list(self.stack), "text": []}
        self.elements.append(el)
        if tag not in VOID:
            self.stack.append(el)

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i]["tag"] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        for el in self.stack:
            el["text"].append(data)

    def all(self, cls: str | None = None, tag: str | None = None, within: dict | None = None) -> list[dict]:
        return [e for e in self.elements if (cls is None or cls in e["attrs"].get("class", "").split())
                and (tag is None or e["tag"] == tag) and (within is None or any(p is within for p in e["parents"]))]


def text(el: dict) -> str:
    return "".join(el["text"])


def rows_of(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def assert_self_contained(html: str) -> None:
    assert not re.search(r"<script[^>]+src=|<link\b|@import|url\(\s*['\"]?https?:", html, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.I), "the page must not fetch anything"


def image_of(el: dict) -> Image.Image:
    src = el["attrs"]["src"]
    assert src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,"))
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))


def expected_kl_colour(kl: float, p95: float) -> str:
    """White -> (228, 87, 46) in 20 linear steps, full at the page's 95th percentile (docs/report.md), written out."""
    w = round(20 * min(1.0, max(0.0, kl / p95))) / 20
    return "#" + "".join(f"{round(255 + (c - 255) * w):02x}" for c in (228, 87, 46))


def colour_rules(html: str) -> dict[str, str]:
    """{class: colour} of the page's colour-step rules (.k12{--kl:#...})."""
    return dict(re.findall(r"\.(k\d+|r-?\d+|kx|rx)\{--(?:kl|lr):(#[0-9a-f]{6})\}", html))


# ----------------------------------------------------------------------------- training run


def test_training_run_page_shows_every_rollout_with_its_token_values(report_run):
    page = report_run / "report.html"
    assert page.is_file(), "train writes report.html at the end of the run (train.report=true)"
    html = page.read_text(encoding="utf-8")
    assert_self_contained(html)
    tree = Tree(html)
    samples = rows_of(report_run / "samples.jsonl")
    by_step: dict[int, list[dict]] = {}
    for r in samples:
        by_step.setdefault(r["step"], []).append(r)
    assert sorted(by_step) == [1, 2, 3]
    assert len(samples) == 12  # 3 steps x 4 rows, all within the default limits
    p95 = float(np.percentile([v for r in samples for v in r["token_kl"]], 95))
    rules = colour_rules(html)
    r95 = float(np.percentile([abs(t - s) for r in samples for s, t in zip(r["student_logprob"], r["teacher_logprob"])], 95))
    colours, seen = [], set()
    for resp in tree.all("resp"):
        item = next(p for p in reversed(resp["parents"]) if "rollout" in p["attrs"].get("class", ""))
        step, same = int(item["attrs"]["data-step"]), [int(i) for i in resp["attrs"]["data-samples"].split(",")]
        row = by_step[step][same[0]]  # identical responses of a prompt are shown once
        assert all(by_step[step][i]["tokens"] == row["tokens"] and by_step[step][i]["token_kl"] == row["token_kl"]
                   and by_step[step][i]["id"] == row["id"] for i in same)
        seen.update((step, i) for i in same)
        assert item["attrs"]["data-id"] == row["id"]
        spans = tree.all("tok", within=resp)
        assert len(spans) == len(row["tokens"]) > 0
        assert [float(s["attrs"]["data-kl"]) for s in spans] == row["token_kl"]
        assert [float(s["attrs"]["data-lps"]) for s in spans] == row["student_logprob"]
        assert [float(s["attrs"]["data-lpt"]) for s in spans] == row["teacher_logprob"]
        for s, kl in zip(spans, row["token_kl"], strict=True):
            step = next(c for c in s["attrs"]["class"].split() if re.fullmatch(r"k\d+", c))
            assert rules[step] == expected_kl_colour(kl, p95)
            colours.append((kl, int(rules[step][3:5], 16)))  # the green channel falls as KL grows
            d = float(s["attrs"]["data-lpt"]) - float(s["attrs"]["data-lps"])  # blue: teacher more likely; red: less
            w = round(20 * min(1.0, max(-1.0, d / r95)))
            rgb = (33, 102, 172) if w > 0 else (215, 48, 31)
            ratio = next(c for c in s["attrs"]["class"].split() if re.fullmatch(r"r-?\d+", c))
            assert rules[ratio] == "#" + "".join(f"{round(255 + (c - 255) * abs(w) / 20):02x}" for c in rgb)
    assert len(seen) == len(samples), "every sampled row is on the page"
    colours.sort()
    assert all(g1 >= g2 for (_, g1), (_, g2) in zip(colours, colours[1:])), "higher KL must never be paler"
    assert colours[0][1] > colours[-1][1]
    # the two views as images, per rollout block: the student's full image and the teacher's crop
    from vision_opd.data.validate import read_records
    from vision_opd.data.views import ViewConfig, teacher_view

    train_file = yaml.safe_load((report_run / "config.yaml").read_text())["data"]["train_file"]
    records = {r.id: r for r in read_records(train_file)}
    for item in tree.all("rollout"):
        imgs = tree.all(tag="img", within=item)
        assert len(imgs) == 2
        full, crop = (image_of(i).convert("RGB") for i in imgs)
        record = records[item["attrs"]["data-id"]]
        assert full.size == (168, 168)  # the synthetic image, its crop box outlined
        seen = teacher_view(record, ViewConfig(teacher_pixels=12544)).images[0].convert("RGB")
        assert crop.size == seen.size and np.array_equal(np.asarray(crop), np.asarray(seen)), "the teacher's own view"
        assert record.question in text(item)
    # curves: loss, KL, length, truncation, agreement, grad norm, lr, held-out accuracy, responses, time, padding,
    # rollout-vs-trainer, the teacher's mean entropy
    curves = next(e for e in tree.elements if e["attrs"].get("id") == "curves")
    assert len(tree.all(tag="svg", within=curves)) == 13
    assert "padding (share of the student's scored positions)" in text(curves)


def test_missing_data_file_leaves_the_rest_of_the_page(report_run, tmp_path):
    run = tmp_path / "moved"
    run.mkdir()
    for name in ("metrics.jsonl", "samples.jsonl"):
        shutil.copy(report_run / name, run / name)
    cfg = yaml.safe_load((report_run / "config.yaml").read_text())
    cfg["data"]["train_file"] = str(tmp_path / "gone" / "train.jsonl")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    tree = Tree(build_html(run))
    assert any("records not found" in text(w) for w in tree.all("warn"))
    assert sum(len(r["attrs"]["data-samples"].split(",")) for r in tree.all("resp")) == 12 and tree.all("tok")
    assert not tree.all(tag="img") and tree.all(tag="svg")


def test_a_long_run_shows_a_bounded_spread_of_steps(tmp_path):
    """3000 logged steps, samples every 10: the page takes 5 steps (first and last included), 10 rollouts."""
    run = tmp_path / "long"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"steps": 3000, "sample_every": 10},
                                                     "data": {"train_file": str(tmp_path / "absent.jsonl")}}))
    rng = np.random.default_rng(0)
    with open(run / "metrics.jsonl", "w") as f:
        for s in range(1, 3001):
            f.write(json.dumps({"step": s, "loss": float(rng.random()), "kl": float(rng.random()), "skipped": int(s == 1500),
                                "collapse": "kl 12 > 10" if 2000 <= s < 2010 else ""}) + "\n")
    with open(run / "samples.jsonl", "w") as f:
        for s in range(10, 3001, 10):
            for g in range(4):
                f.write(json.dumps({"step": s, "id": f"x{s}", "response": "B", "tokens": ["B", "<|im_end|>"],
                                    "token_kl": [0.1 * g, 0.0], "student_logprob": [-1.0, -0.1],
                                    "teacher_logprob": [-0.5, -0.1]}) + "\n")
    tree = Tree(build_html(run, Limits(max_steps=5, max_rollouts=10)))
    steps = [int(e["attrs"]["data-step"]) for e in tree.all("rollout")]
    assert steps[0] == 10 and steps[-1] == 3000 and len(set(steps)) == 5
    assert sum(len(r["attrs"]["data-samples"].split(",")) for r in tree.all("resp")) == 10  # 2 per step
    assert len(tree.all("resp")) == 10  # their KL values differ, so none is merged
    assert [text(c) for c in tree.all("card") if "skipped steps" in text(c)][0].startswith("skipped steps1")


def test_rows_with_kl_only_are_coloured_by_kl_without_the_toggle(tmp_path):
    """samples.jsonl written before the sampled-token log-probs existed: KL colours, no log-ratio toggle."""
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"train": {"steps": 1}, "data": {"train_file": "absent.jsonl"}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.1}) + "\n")
    (run / "samples.jsonl").write_text(json.dumps({"step": 1, "id": "a", "response": "x\ny", "tokens": ["x", "\n", "y\x01"],
                                                   "token_kl": [0.0, 0.5, 1.0]}) + "\n")
    tree = Tree(build_html(run))
    spans = tree.all("tok")
    assert [float(s["attrs"]["data-kl"]) for s in spans] == [0.0, 0.5, 1.0]
    assert not any("data-lps" in s["attrs"] for s in spans) and not tree.all(tag="button")
    assert [text(s) for s in spans] == ["x", "↵\n", "y␁"]  # newline and control character made visible


def test_report_command_rebuilds_and_refuses_what_it_cannot_read(report_run, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["report", str(report_run), "--out", str(out), "--max-rollouts", "2"]) == 0
    assert "(training page" in capsys.readouterr().out
    assert sum(len(r["attrs"]["data-samples"].split(",")) for r in Tree(out.read_text()).all("resp")) == 3  # 1 per step
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no output of vision-opd here" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["report", str(report_run), "--max-items", "0"]) == 2
    assert "max-items must be at least 1" in capsys.readouterr().err


def test_train_report_off_writes_no_page(tmp_path, synth_dir):
    assert main(["train", f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={tmp_path / 'r'}", "train.steps=1",
                 "train.prompts_per_step=1", "rollout.samples_per_prompt=1", "rollout.max_new_tokens=2",
                 "train.progress=false", "train.report=false", "train.threads=1"]) == 0
    assert (tmp_path / "r" / "metrics.jsonl").is_file() and not (tmp_path / "r" / "report.html").exists()


# ----------------------------------------------------------------------------- eval and gap folders


def _outcome(s: dict) -> str:
    return "unread" if s["extracted"] is None else "right" if s["correct"] else "wrong"


def test_eval_page_gallery_outcomes_and_filter_counts(report_eval):
    out = build_report(report_eval)
    html = out.read_text(encoding="utf-8")
    assert_self_contained(html)
    tree = Tree(html)
    samples = {s["id"]: s for s in rows_of(report_eval / "samples.jsonl")}
    items = tree.all("item")
    assert len(items) == len(samples) == 12
    for it in items:
        s = samples[it["attrs"]["data-id"]]
        assert it["attrs"]["data-outcome"] == _outcome(s)
        assert s["response"] in text(it) and f"gold {s['gold']}" in text(it)
        assert [image_of(i).size for i in tree.all(tag="img", within=it)][0] == (168, 168)
    counts = {k: sum(_outcome(s) == k for s in samples.values()) for k in ("right", "wrong", "unread")}
    assert counts["right"] and counts["wrong"], "the demo model gets some synthetic items right and some wrong"
    buttons = {b["attrs"]["data-show"]: text(b) for b in tree.all(tag="button") if "data-show" in b["attrs"]}
    assert buttons["all"] == "all (12)" and buttons["right"] == f"right ({counts['right']})"
    results = json.loads((report_eval / "results.json").read_text())
    assert f"{results['accuracy']:.3f}" in text(tree.all("card")[0])


def test_eval_page_counts_each_failure_kind_and_names_it_on_the_item(report_eval, tmp_path):
    """The outcome table has results.json's count of every failure kind; an item says its kind, and an answer the
    judge read is marked as such."""
    folder = tmp_path / "eval"
    shutil.copytree(report_eval, folder)
    samples = rows_of(folder / "samples.jsonl")
    wrong = [s for s in samples if s["extracted"] is not None and not s["correct"]]
    refused, judged = wrong[0], wrong[1]
    refused.update(extracted=None, failure="refused", method="none", response="I cannot determine the answer.")
    judged.update(method="judge")
    (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    results = json.loads((folder / "results.json").read_text())
    results["failures"] = {**results["failures"], "refused": results["failures"]["refused"] + 1}
    (folder / "results.json").write_text(json.dumps(results))
    tree = Tree(build_html(folder))
    cells = [[text(td) for td in tree.all(tag="td", within=tr)] for tr in tree.all(tag="tr")]
    rows = {c[0]: c[1] for c in cells if len(c) == 3}  # the outcome table: outcome, items, share
    for kind, count in results["failures"].items():
        assert rows[f"no answer: {kind}"] == str(count)
    assert rows["answer read by the judge (right or wrong)"] == "1"
    items = {it["attrs"]["data-id"]: it for it in tree.all("item")}
    assert "failure: refused" in text(items[refused["id"]]) and items[refused["id"]]["attrs"]["data-outcome"] == "unread"
    assert "answer read by the judge" in text(items[judged["id"]])


def test_eval_gallery_keeps_every_outcome_under_a_small_limit(report_eval):
    tree = Tree(build_html(report_eval, Limits(max_items=4)))
    outcomes = [it["attrs"]["data-outcome"] for it in tree.all("item")]
    assert len(outcomes) <= 4 and {"right", "wrong"} <= set(outcomes)


def test_gap_page_pairs_the_items_the_views_disagree_on(report_gap):
    html = build_report(report_gap).read_text(encoding="utf-8")
    assert_self_contained(html)
    tree = Tree(html)
    by_view: dict[str, dict] = {}
    for s in rows_of(report_gap / "samples.jsonl"):
        by_view.setdefault(s["view"], {})[s["id"]] = s
    full, crop = by_view["full"], by_view["crop"]
    crop_wins = {i for i in full if crop[i]["correct"] and not full[i]["correct"]}
    full_wins = {i for i in full if full[i]["correct"] and not crop[i]["correct"]}
    assert crop_wins, "the demo model's crop view beats its full view on some items (the gap)"
    shown = {g: {it["attrs"]["data-id"] for it in tree.all("item") if it["attrs"]["data-group"] == g}
             for g in ("crop-wins", "full-wins")}
    assert shown == {"crop-wins": crop_wins, "full-wins": full_wins}
    for it in tree.all("item"):
        i = it["attrs"]["data-id"]
        assert len(tree.all(tag="img", within=it)) == 2
        assert full[i]["response"] in text(it) and crop[i]["response"] in text(it)
    results = json.loads((report_gap / "results.json").read_text())
    assert f"{results['differences']['crop-full']['difference']:+.3f}" in html


# ----------------------------------------------------------------------------- the demo, and no model anywhere


def test_demo_writes_report_html_with_both_views_before_and_after(report_demo):
    html = (report_demo / "report.html").read_text(encoding="utf-8")
    assert_self_contained(html)
    tree = Tree(html)
    examples = json.loads((report_demo / "examples.json").read_text())["items"]
    items = tree.all("example")
    assert len(items) == len(examples) == 6
    for it, ex in zip(items, examples, strict=True):
        assert it["attrs"]["data-id"] == ex["record"]["id"] and len(tree.all(tag="img", within=it)) == 2
        phases = tree.all("phase", within=it)
        assert len(phases) == 2
        for phase, name in zip(phases, ("before", "after"), strict=True):
            kls = [float(s["attrs"]["data-kl"]) for s in tree.all("tok", within=phase)]
            assert kls == ex[name]["student"]["token_kl"] and kls
            assert ex[name]["teacher"]["response"] in text(phase)


def test_building_pages_never_imports_torch_or_transformers(report_run, report_eval, report_gap, report_demo, tmp_path):
    code = ("import sys; from vision_opd.report import build_report\n"
            f"for i, d in enumerate({[str(p) for p in (report_run, report_eval, report_gap, report_demo)]!r}):\n"
            f"    build_report(d, {str(tmp_path)!r} + f'/{{i}}.html')\n"
            "print(sorted(m for m in ('torch', 'transformers', 'vision_opd.models.loading') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    assert len(list(tmp_path.glob("*.html"))) == 4


def test_gap_page_without_boxes_pairs_full_with_the_proposed_crop(tmp_path, synth_dir):
    """`vision-opd gap --proposer rarity` on records without boxes: the crop shown is the proposer's (read from the
    folder's proposals cache), outlined on the full image."""
    from vision_opd.demo.run import ASSET_MODEL

    rows = rows_of(synth_dir / "train.jsonl")
    no_box = synth_dir / "no_box_report.jsonl"
    no_box.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "box"}) + "\n" for r in rows))
    out = tmp_path / "gap"
    assert main(["gap", "--model", str(ASSET_MODEL), "--benchmark", "synthetic", "--data", str(no_box), "--out", str(out),
                 "--views", "full", "--proposer", "rarity", "--no-progress"]) == 0
    tree = Tree(build_html(out))
    groups = {it["attrs"]["data-group"] for it in tree.all("item")}
    assert groups <= {"proposed-wins", "full-wins"} and groups
    boxes = {json.loads(x)["id"]: json.loads(x)["proposal"] for x in (out / "proposals_rarity.jsonl").read_text().splitlines()}
    for it in tree.all("item"):  # only items with a proposal (not a fallback) have a "proposed" answer to pair
        assert not boxes[it["attrs"]["data-id"]]["fallback"] and len(tree.all(tag="img", within=it)) == 2
        assert "proposed box" in text(it)


def test_a_curve_of_tiny_values_writes_its_ticks_whole_and_keeps_the_title_clear():
    """matplotlib's offset text ("1e-7" above the y axis) sat on the chart's title (the rollout-vs-trainer curve, an
    lr of 1e-6): each tick carries its own exponent instead, and no offset text is drawn."""
    import re

    from vision_opd.report.plots import Series, curve

    svg = curve("rollout vs trainer |log-prob difference|", [Series("max", [1, 2, 3, 4], [1e-7, 3e-7, 2e-7, 2.2e-6])])
    texts = re.findall(r">([^<>]+)</text>", svg)
    assert "step" in texts and texts[-1].startswith("rollout vs trainer"), "the scanner reads the chart's texts"
    offset = [t for t in texts if re.fullmatch(r"1e\u2212\d+", t)]  # matplotlib writes its minus as U+2212
    assert not offset, f"an offset text above the axis: {offset}"
    assert any(re.fullmatch(r"[\d.]+e-0[67]", t) for t in texts), f"the ticks carry their exponent: {texts}"
