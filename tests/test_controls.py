"""The "is it the crop?" teacher views (none, blur, mask, full), the multi-view teacher, and degenerate responses."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from vision_opd.data.crops import crop_image
from vision_opd.data.degrade import mask_cells
from vision_opd.data.images import open_image
from vision_opd.data.records import Record
from vision_opd.data.views import ViewConfig, encode_views, teacher_view
from vision_opd.rollout.degenerate import degenerate_flags, max_ngram_count


@pytest.fixture
def record(tmp_path):
    """A 160 x 120 image: grey, with one black vertical line at x = 80 and a red square at the evidence box."""
    img = Image.new("RGB", (160, 120), (200, 200, 200))
    d = ImageDraw.Draw(img)
    d.line([(80, 0), (80, 119)], fill=(0, 0, 0), width=1)
    d.rectangle([20, 30, 39, 49], fill=(220, 40, 40))
    img.save(tmp_path / "a.png")
    return Record("rec1", str(tmp_path / "a.png"), "Colour of the framed object?", ["red", "blue"], None,
                  box=(20.0, 30.0, 40.0, 50.0))


def _px(img) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int32)


def test_full_and_none_views(record):
    full = teacher_view(record, ViewConfig(teacher_source="full"))
    assert len(full.images) == 1 and np.array_equal(_px(full.images[0]), _px(open_image(record.image)))
    none = teacher_view(record, ViewConfig(teacher_source="none"))
    assert none.images == [] and none.text == full.text


@pytest.mark.parametrize("radius", [0.01, 0.05])
def test_blur_view_spreads_the_line_by_its_strength(record, radius):
    orig = _px(open_image(record.image))
    got = _px(teacher_view(record, ViewConfig(teacher_source="blur", blur_radius=radius)).images[0])
    assert got.shape == orig.shape
    sigma = radius * 120  # the shorter side
    row = got[60, :, 0]
    assert row[80] > 40  # the black line is no longer black ...
    assert row[80 + round(sigma)] < 195  # ... its darkness spread about sigma pixels to the side ...
    assert np.array_equal(got[60, 100:150], orig[60, 100:150]) or abs(got[60, 100:150] - orig[60, 100:150]).max() <= 1
    assert abs(got.mean() - orig.mean()) < 1.0  # ... and the mean colour is kept
    weaker = _px(teacher_view(record, ViewConfig(teacher_source="blur", blur_radius=radius / 2)).images[0])
    assert weaker[60, 80, 0] < row[80]  # a smaller radius blurs less


@pytest.mark.parametrize("ratio, grid", [(0.5, 8), (0.25, 4), (1.0, 2)])
def test_mask_view_fills_exactly_the_chosen_cells_with_the_mean_colour(record, ratio, grid):
    orig = _px(open_image(record.image))
    cfg = ViewConfig(teacher_source="mask", mask_ratio=ratio, mask_grid=grid)
    got = _px(teacher_view(record, cfg).images[0])
    cells = mask_cells(160, 120, ratio, grid, record.id)
    assert len(cells) == round(ratio * grid * grid)
    fill = np.round(orig.reshape(-1, 3).mean(0)).astype(np.int32)
    covered = np.zeros(orig.shape[:2], dtype=bool)
    for x1, y1, x2, y2 in cells:
        assert (got[y1:y2, x1:x2] == fill).all()
        covered[y1:y2, x1:x2] = True
    assert np.array_equal(got[~covered], orig[~covered])  # everything else untouched
    assert np.array_equal(got, _px(teacher_view(record, cfg).images[0]))  # the same cells at every step
    other = replace(record, id="rec2")
    assert ratio == 1.0 or mask_cells(160, 120, ratio, grid, other.id) != cells  # chosen per record


@pytest.mark.parametrize("order", [("crop", "full"), ("full", "crop"), ("crop", "blur", "mask")])
def test_multi_view_teacher_holds_the_images_in_the_stated_order(record, order):
    cfg = ViewConfig(teacher_images=order, teacher_text="{question}\nThe first image is what matters.")
    view = teacher_view(record, cfg)
    want = {"crop": crop_image(open_image(record.image), record.box, upscale=cfg.teacher_upscale), "full": open_image(record.image),
            "blur": teacher_view(record, ViewConfig(teacher_source="blur")).images[0],
            "mask": teacher_view(record, ViewConfig(teacher_source="mask")).images[0]}
    assert len(view.images) == len(order)
    for img, name in zip(view.images, order, strict=True):
        assert np.array_equal(_px(img), _px(want[name])), name
    assert view.text.endswith("The first image is what matters.") and view.text.startswith(record.question)


def test_multi_view_prompt_scores_at_the_response_positions(record, tmp_path):
    """Two prompts of different lengths (crop + full vs full), left-padded in one batch, rows selected out of order:
    the logits read at the response positions equal those of each prompt alone, unpadded."""
    from vision_opd.models.tiny import build_tiny
    from vision_opd.scoring.forward import response_logits, select_prompts

    model, proc = build_tiny("qwen2_vl", seed=0, image_size=112)
    model.eval()
    multi = teacher_view(record, ViewConfig(teacher_images=("crop", "full")))
    single = teacher_view(record, ViewConfig(teacher_source="full"))
    inputs = encode_views(proc, [single, multi])
    vstart = model.config.vision_start_token_id
    assert (inputs["input_ids"] == vstart).sum(-1).tolist() == [1, 2]
    grids = inputs["image_grid_thw"]
    assert torch.equal(grids[1], encode_views(proc, [replace(multi, images=multi.images[:1])])["image_grid_thw"][0])
    rows = torch.tensor([1, 0, 1])
    ids = torch.randint(10, 200, (3, 4), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 4)
    with torch.no_grad():
        got = response_logits(model, select_prompts(inputs, rows, vstart), ids, mask)
        for i, r in enumerate(rows.tolist()):
            alone = encode_views(proc, [[single, multi][r]])
            L = alone["input_ids"].shape[1]
            full = {**alone, "input_ids": torch.cat([alone["input_ids"], ids[i:i + 1]], 1),
                    "attention_mask": torch.ones(1, L + 4, dtype=torch.long)}
            if "mm_token_type_ids" in alone:
                full["mm_token_type_ids"] = torch.cat([alone["mm_token_type_ids"], torch.zeros(1, 4, dtype=torch.long)], 1)
            want = model(**full).logits[0, L - 1:L + 3]
            torch.testing.assert_close(got[i], want, rtol=1e-4, atol=1e-4)


def test_evaluation_crop_view_ignores_the_teacher_controls(record):
    from vision_opd.eval.views import view_of

    view = view_of(record, "crop", ViewConfig(teacher_source="none", teacher_images=("full", "mask")))
    crop = crop_image(open_image(record.image), record.box, upscale=ViewConfig().teacher_upscale)
    assert len(view.images) == 1 and np.array_equal(_px(view.images[0]), _px(crop))


# ----------------------------------------------------------------------------- degenerate responses


def test_ngram_counts_on_constructed_responses():
    assert max_ngram_count([5, 5, 5, 5, 5, 5, 5], 4) == 4  # overlapping occurrences count
    assert max_ngram_count([1, 2, 3, 1, 2, 3, 1, 2, 3], 3) == 3
    assert max_ngram_count([1, 2, 3, 4, 5, 6], 2) == 1
    assert max_ngram_count([1, 2], 4) == 0


def test_degenerate_flags_on_constructed_responses():
    pad = 0
    rows = [[7, 8, 9, 3, pad, pad, pad, pad, pad, pad],    # a normal answer, EOS = 3
            [7, 8, 7, 8, 7, 8, 7, 8, 7, 8],                  # "ab" looped to the limit: repetitive and runaway
            [1, 2, 3, 4, 5, 6, 11, 12, 13, 14],              # no EOS but no loop: runaway only
            [4, 4, 4, 4, 4, 4, 4, 3, pad, pad],              # a loop that did end: repetitive only
            [4, 4, 4, 3, 4, 4, 4, 4, 4, 4]]                  # the loop is after the EOS: nothing (masked out)
    ids = torch.tensor(rows)
    lengths = [4, 10, 10, 8, 4]
    mask = torch.tensor([[1.0] * n + [0.0] * (10 - n) for n in lengths])
    truncated = torch.tensor([False, True, True, False, False])
    rep, run = degenerate_flags(ids, mask, truncated, ngram=2, count=4)
    assert rep.tolist() == [False, True, False, True, False]
    assert run.tolist() == [False, True, True, False, False]
    _, run8 = degenerate_flags(ids, mask, truncated, ngram=2, count=4, runaway_tokens=8)
    assert run8.tolist() == [False, True, True, True, False]
    rep_off, _ = degenerate_flags(ids, mask, truncated, ngram=2, count=0)
    assert not rep_off.any()
