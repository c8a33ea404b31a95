"""The synthetic world: determinism by seed, disjoint splits, boxes on the target, question types, options."""

from __future__ import annotations

import hashlib

import pytest

from vision_opd.data.records import LETTERS
from vision_opd.data.validate import read_records
from vision_opd.demo.world import QUESTION_TYPES, SPLIT_SEEDS, WorldConfig, generate, write_synthetic


def _digest(img) -> str:
    return hashlib.sha1(img.tobytes()).hexdigest()


def test_deterministic_by_seed():
    a, b = generate(6, seed=5), generate(6, seed=5)
    assert [r.to_json() for r, _ in a] == [r.to_json() for r, _ in b]
    assert [_digest(i) for _, i in a] == [_digest(i) for _, i in b]
    c = generate(6, seed=6)
    assert [_digest(i) for _, i in a] != [_digest(i) for _, i in c]


def test_splits_are_disjoint():
    seen: dict[str, str] = {}
    ids: set[str] = set()
    for split, seed in SPLIT_SEEDS.items():
        for r, img in generate(30, seed, prefix=f"{split}_"):
            assert r.id not in ids
            ids.add(r.id)
            d = _digest(img)
            assert d not in seen, f"{split} shares an image with {seen.get(d)}"
            seen[d] = split


def test_question_types_options_and_answers():
    cfg = WorldConfig()
    items = generate(12, seed=0, cfg=cfg)
    assert {r.category for r, _ in items} == set(QUESTION_TYPES)
    for r, _ in items:
        assert len(r.options) == cfg.options == len(set(r.options))
        assert r.answer in LETTERS[: cfg.options]
        if r.category == "digit":
            assert all(o in cfg.digits for o in r.options)


@pytest.mark.parametrize("distractors", [0, 10])
def test_box_contains_the_target_and_only_it(distractors):
    """The evidence box is the frame: black outline pixels on its border, the target's colour inside."""
    from vision_opd.demo.world import COLOURS

    cfg = WorldConfig(distractors=distractors, question_types=("colour",))  # framed, also with 0 distractors
    for r, img in generate(9, seed=1, cfg=cfg):
        x1, y1, x2, y2 = (int(v) for v in r.box)
        assert 0 <= x1 < x2 <= img.width and 0 <= y1 < y2 <= img.height
        assert img.getpixel((x1, (y1 + y2) // 2)) == (0, 0, 0)  # the frame's left edge
        colour = r.options[LETTERS.index(r.answer)]
        cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
        assert img.getpixel((cx, cy + 3)) == COLOURS[colour]  # the answer's colour at the target's centre


def test_write_synthetic_round_trip(tmp_path):
    path = write_synthetic(tmp_path, 5, seed=2, name="x.jsonl")
    recs = read_records(path)
    assert len(recs) == 5 and all(r.box is not None and r.options for r in recs)


def test_easy_regime_has_only_the_target():
    cfg = WorldConfig().easy()
    assert cfg.distractors == 0
    r, img = generate(1, seed=0, cfg=cfg)[0]
    bg = cfg.background
    x1, y1, x2, y2 = (int(v) for v in r.box)
    others = [img.getpixel((x, y)) for x in range(0, img.width, 3) for y in range(0, img.height, 3)
              if not (x1 <= x < x2 and y1 <= y < y2)]
    assert all(p == bg for p in others)


def test_easy_regime_has_no_frame_by_default():
    cfg = WorldConfig()
    r, img = generate(1, seed=0, cfg=cfg.easy())[0]
    assert (0, 0, 0) not in {img.getpixel((int(r.box[0]), y)) for y in range(int(r.box[1]), int(r.box[3]))}
    r, img = generate(1, seed=0, cfg=WorldConfig(easy_frame=True).easy())[0]
    assert img.getpixel((int(r.box[0]), int(r.box[1] + r.box[3]) // 2)) == (0, 0, 0)


def test_dot_question_reads_the_dot_of_the_framed_object():
    from vision_opd.demo.world import COLOURS

    cfg = WorldConfig(question_types=("dot",))
    for r, img in generate(8, seed=2, cfg=cfg):
        assert r.category == "dot" and r.question == "Colour of the dot on the framed object?"
        x1, y1, x2, y2 = (int(v) for v in r.box)
        dot = r.options[LETTERS.index(r.answer)]
        cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
        centre = img.getpixel((cx, cy + 3))  # inside the dot (lowered on triangles)
        assert centre == COLOURS[dot]
        body = img.getpixel((x1 + 4, y2 - 5))  # near the bottom-left corner: the fill colour for every shape
        assert body != COLOURS[dot]  # the dot's colour always differs from the object's


def test_other_question_types_keep_their_images_when_dot_is_added():
    """The dot type draws its extra colours only for dot items: colour/digit/shape items are drawn from the same
    RNG stream as before it existed (golden digests recorded from the code before the dot type)."""
    import random

    from vision_opd.demo.world import make_item

    rng = random.Random(5)
    got = [hashlib.md5(make_item(rng, WorldConfig(), t)[0].tobytes()).hexdigest()[:6] for t in ("colour", "digit", "shape")]
    assert got[0] == "b5bf84" and got[2] == "7b0b51"  # (the digit image depends on the installed font: not pinned)


def test_cached_eval_split_is_regenerated_when_the_world_changes(tmp_path):
    from vision_opd.demo.pretrain import eval_split

    a = eval_split(tmp_path, "val", 4, WorldConfig(question_types=("colour",)))
    again = eval_split(tmp_path, "val", 4, WorldConfig(question_types=("colour",)))
    assert [r.id for r in again] == [r.id for r in a] and {r.category for r in a} == {"colour"}
    b = eval_split(tmp_path, "val", 4, WorldConfig(question_types=("dot",)))  # same folder, same n, other world
    assert {r.category for r in b} == {"dot"}
