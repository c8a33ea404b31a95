"""Label-free crop proposers: box parsing, the window search, the attention hook against eager attention,
self-grounding end to end, the cache and the scoring.

    pytest tests/test_proposers.py -q
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from PIL import Image

from vision_opd.proposers import (
    AttentionProposer,
    GroundingProposer,
    Proposal,
    ProposalCache,
    WindowConfig,
    best_window,
    evaluate_proposals,
    iou,
    parse_box,
    propose_records,
    window_proposal,
)
from vision_opd.proposers import grounding as grounding_mod
from vision_opd.proposers.attention import attention_layer, capture_last_query_attention, image_grid
from vision_opd.proposers.window import full_image_box

# ---------------------------------------------------------------- box parsing
IMG = (1000, 500)  # original (width, height)
RESIZED = (500, 250)  # the model's resized input: pixel_resized coordinates scale by 2
J = '[{"bbox_2d": [100, 50, 200, 150], "label": "sign"}]'
PARSE_CASES = [
    # (text, coords, multiple, expected box in original pixels or None)
    (J, "pixel_resized", "first", (200, 100, 400, 300)),  # Qwen2.5-VL: resized-input pixels
    (J, "norm1000", "first", (100, 25, 200, 75)),  # Qwen3-VL / Qwen3.5: 0-1000
    (J, "auto", "first", (200, 100, 400, 300)),  # auto: JSON numbers > 1 read as resized pixels
    ('{"bbox_2d": [100, 50, 200, 150]}', "pixel_resized", "first", (200, 100, 400, 300)),  # a bare object
    ("<|object_ref_start|>sign<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|>", "auto", "first",
     (100, 100, 300, 200)),  # Qwen2-VL box tokens: 0-1000
    ("<|box_start|>( 100 , 200 ) , ( 300 , 400 )<|box_end|>", "norm1000", "first", (100, 100, 300, 200)),
    ('```json\n[\n\t{"bbox_2d": [10, 20, 110, 120], "label": "x"}\n]\n```', "pixel_resized", "first",
     (20, 40, 220, 240)),  # markdown code fence
    ("[10, 20, 110, 120]", "pixel_resized", "first", (20, 40, 220, 240)),  # plain list
    ("The region is at [10, 20, 110, 120].", "pixel_resized", "first", (20, 40, 220, 240)),  # prose around it
    ('[{"bbox_2d": [10, 20, 30, 40]}, {"bbox_2d": [100, 100, 200, 200]}]', "pixel_resized", "first",
     (20, 40, 60, 80)),  # several boxes: the first
    ('[{"bbox_2d": [10, 20, 30, 40]}, {"bbox_2d": [100, 100, 200, 200]}]', "pixel_resized", "union",
     (20, 40, 400, 400)),  # several boxes: their union
    ('[{"bbox_2d": [10, 20, 110, 120,],},]', "pixel_resized", "first", (20, 40, 220, 240)),  # trailing commas
    ("[{'bbox_2d': [10, 20, 110, 120], 'label': 'x'}]", "pixel_resized", "first", (20, 40, 220, 240)),  # ' quotes
    ('{"bbox_2d": ["10", "20", "110", "120"]}', "pixel_resized", "first", (20, 40, 220, 240)),  # quoted numbers
    ('[{"bbox_2d": [10, 20, 110, 120]', "pixel_resized", "first", (20, 40, 220, 240)),  # missing } ] only
    ('[{"bbox_2d": [10, 20, 110', "pixel_resized", "first", None),  # cut off: missing bracket
    ('[{"bbox_2d": [10, 20, 110, 120}]', "pixel_resized", "first", None),  # coordinate list never closed
    ("[-20, -10, 600, 300]", "pixel_resized", "first", (0, 0, 1000, 500)),  # out of range: clamped
    ("[900, 900, 1100, 1200]", "norm1000", "first", (900, 450, 1000, 500)),  # beyond 1000: clamped
    ("[200, 50, 100, 150]", "pixel_resized", "first", None),  # inverted x
    ("[10, 150, 100, 50]", "pixel_resized", "first", None),  # inverted y
    ("[100, 50, 100, 150]", "pixel_resized", "first", None),  # zero width
    ("[600, 300, 700, 400]", "pixel_resized", "first", None),  # wholly outside the image: nothing left
    ("[0.1, 0.2, 0.5, 0.6]", "auto", "first", (100, 100, 500, 300)),  # auto: values <= 1 are 0-1
    ("[0.1, 0.2, 0.5, 0.6]", "norm1", "first", (100, 100, 500, 300)),
    ("[[200, 50, 100, 150], [10, 20, 110, 120]]", "pixel_resized", "first", (20, 40, 220, 240)),  # first *valid*
    ("[10.5, 20.25, 110, 120]", "pixel_resized", "first", (21, 40.5, 220, 240)),  # decimals
    ("I cannot tell where it is.", "auto", "first", None),
    ("[1, 2, 3, 4, 5]", "pixel_resized", "first", None),  # five numbers are not a box
    ('{"point_2d": [10, 20]}', "auto", "first", None),  # a point is not a box
]


@pytest.mark.parametrize("text,coords,multiple,expected", PARSE_CASES)
def test_parse_box_table(text, coords, multiple, expected):
    got = parse_box(text, IMG, RESIZED, coords=coords, multiple=multiple)
    if expected is None:
        assert got is None
    else:
        assert got is not None, f"no box parsed from {text!r}"
        assert np.allclose(got, expected), (text, got, expected)


def test_parse_box_pixel_without_resized_size_means_original_pixels_and_coords_by_family():
    from vision_opd.proposers.grounding import COORDS_BY_MODEL

    assert parse_box("[10, 20, 110, 120]", IMG, None, coords="pixel_resized") == (10, 20, 110, 120)
    with pytest.raises(ValueError, match="coords"):
        parse_box("[10, 20, 110, 120]", IMG, None, coords="pixels")
    assert COORDS_BY_MODEL["qwen2_5_vl"] == "pixel_resized"
    assert COORDS_BY_MODEL["qwen2_vl"] == COORDS_BY_MODEL["qwen3_vl"] == COORDS_BY_MODEL["qwen3_5"] == "norm1000"


# ---------------------------------------------------------------- window search
H, W = 32, 48  # relevance grid
IMAGE = (480, 320)  # image (width, height): 10 px per cell


def hot_map(x0, y0, x1, y1, h=H, w=W, value=1.0):
    r = np.zeros((h, w))
    r[y0:y1, x0:x1] = value
    return r


def cells_to_px(x0, y0, x1, y1, h=H, w=W, image=IMAGE):
    return (x0 * image[0] / w, y0 * image[1] / h, x1 * image[0] / w, y1 * image[1] / h)


@pytest.mark.parametrize("cells", [
    (8, 4, 14, 8),  # 1/8 of each side, aligned with the stride
    (12, 8, 24, 16),  # 1/4
    (24, 16, 48, 32),  # 1/2, bottom-right
    (5, 3, 17, 11),  # 1/4 size, not on the stride grid
    (3, 21, 9, 25),  # 1/8 size, off-grid
    (10, 6, 30, 20),  # between scales
])
def test_window_finds_hot_square(cells):
    rng = np.random.default_rng(0)
    r = hot_map(*cells) + 0.05 * rng.random((H, W))
    p = window_proposal(r, IMAGE)
    assert not p.fallback
    assert iou(p.box, cells_to_px(*cells)) > 0.7, (p.box, cells_to_px(*cells))
    assert 0.7 < p.confidence <= 1.0


@pytest.mark.parametrize("frac,cells", [(1 / 8, (12, 8, 18, 12)), (1 / 4, (24, 16, 36, 24)), (1 / 2, (0, 0, 24, 16))])
def test_window_without_refinement_snaps_to_the_scale(frac, cells):
    p = window_proposal(hot_map(*cells), IMAGE, WindowConfig(refine=False))
    assert iou(p.box, cells_to_px(*cells)) > 0.99
    assert p.confidence == pytest.approx(1.0)  # a hot rectangle on a cold map: contrast = full range


def test_uniform_map_falls_back_to_full_image():
    p = window_proposal(np.full((H, W), 0.3), IMAGE)
    assert p.confidence == 0.0 and p.fallback
    assert p.box == full_image_box(*IMAGE) and "full image" in p.note


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_has_low_confidence_and_falls_back(seed):
    rng = np.random.default_rng(seed)
    for r in (rng.random((H, W)), rng.lognormal(size=(H, W))):  # bounded and heavy-tailed, no structure
        p = window_proposal(r, IMAGE)
        assert p.confidence < WindowConfig().min_confidence, p.confidence
        assert p.fallback and p.box == full_image_box(*IMAGE)


def test_refinement_never_shrinks_below_the_smallest_window():
    r = np.ones((H, W))
    r[10, 20] = 50.0  # one outlier cell
    cells, _, conf = best_window(r)
    assert cells[2] - cells[0] >= W // 8 and cells[3] - cells[1] >= H // 8
    assert cells[0] <= 20 < cells[2] and cells[1] <= 10 < cells[3] and conf < 0.25


def test_window_score_is_invariant_to_offset_and_scale():
    cells = (5, 3, 17, 11)
    r = hot_map(*cells) + 0.1 * np.random.default_rng(2).random((H, W))
    a, b = best_window(r), best_window(3.0 * r + 7.0)
    assert a[0] == b[0] and a[2] == pytest.approx(b[2])


def test_ties_go_to_the_first_window_in_scan_order():
    r = hot_map(6, 4, 12, 8) + hot_map(30, 20, 36, 24)  # two identical hot squares, both on the stride grid
    cells, _, _ = best_window(r, WindowConfig(refine=False))
    assert cells == (6, 4, 12, 8)  # the top one
    assert best_window(r)[0] == (6, 4, 12, 8)  # refinement cannot move to the other one either
    r = hot_map(30, 4, 36, 8) + hot_map(6, 4, 12, 8)  # same row
    cells, _, _ = best_window(r, WindowConfig(refine=False))
    assert cells[0] == 6  # the left one
    assert best_window(r)[0] == best_window(r.copy())[0]  # deterministic


@pytest.mark.parametrize("h,w,cells", [
    (13, 17, (13, 10, 17, 13)),  # bottom-right corner, sides not divisible by the stride
    (13, 17, (0, 0, 3, 2)),  # top-left corner
    (13, 17, (14, 0, 17, 13)),  # a full-height strip at the right border
])
def test_borders(h, w, cells):
    r = hot_map(*cells, h=h, w=w)
    p = window_proposal(r, (w * 10, h * 10))
    assert iou(p.box, cells_to_px(*cells, h=h, w=w, image=(w * 10, h * 10))) > 0.99


def test_tiny_grids():
    p = window_proposal(np.ones((1, 1)), (50, 40))  # one cell: nothing to localise
    assert p.fallback and p.box == (0, 0, 50, 40)
    p = window_proposal(hot_map(1, 1, 2, 2, h=2, w=2), (40, 40))  # 2x2 grid, one hot cell
    assert not p.fallback and p.box == (20, 20, 40, 40)
    with pytest.raises(AssertionError, match="NaN"):
        best_window(np.array([[0.0, np.nan]]))


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0 and iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0 and iou((0, 0, 0, 10), (0, 0, 0, 10)) == 0.0


# ---------------------------------------------------------------- attention proposer on tiny models
class _Tiny(dict):
    """Tiny models built on first use: 3 layers (so there is a middle one); Qwen3.5: its 2 (linear, full)."""

    def __missing__(self, family):
        from vision_opd.models.tiny import build_tiny

        self[family] = build_tiny(family) if family == "qwen3_5" else build_tiny(family, layers=3)
        return self[family]


@pytest.fixture(scope="module")
def tiny_models():
    return _Tiny()


def photo(seed=0, size=(150, 100)):
    return Image.fromarray((np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype("uint8"))


def count_forwards(module):
    calls = []
    return calls, module.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_attention_proposer_runs_with_one_forward_per_prompt(tiny_models, family):
    model, processor = tiny_models[family]
    img = photo()
    calls, handle = count_forwards(model.model)
    try:
        p = AttentionProposer()(model, processor, img, "What colour is the marked object?")
    finally:
        handle.remove()
    assert len(calls) == 2 == p.forward_passes  # question prompt + generic prompt
    x1, y1, x2, y2 = p.box
    assert 0 <= x1 < x2 <= img.width and 0 <= y1 < y2 <= img.height
    from vision_opd.data.views import View, encode_views

    grid = encode_views(processor, [View([img], "x")])["image_grid_thw"][0]
    assert p.relevance.shape == (int(grid[1]) // 2, int(grid[2]) // 2)
    assert np.isfinite(p.relevance).all() and (p.relevance > 0).all()
    assert 0.0 <= p.confidence <= 1.0 and p.extra["layer"] == 1
    assert model.config._attn_implementation != "eager"  # the hook did not need eager attention


def sharpened(model):
    """A copy whose attention is far from uniform: random tiny Qwen2/2.5-VL layers attend almost uniformly
    (row spread ~1e-3), which would let a wrong computation pass a 1e-4 tolerance. Scaling q and k by 4
    multiplies the logits by 16 (Qwen3-VL/3.5 normalise q and k, so there it changes nothing)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for lay in model.model.language_model.layers:
            if hasattr(lay, "self_attn"):
                lay.self_attn.q_proj.weight.mul_(4)
                lay.self_attn.k_proj.weight.mul_(4)
    return model


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "qwen2_vl", "qwen3_5"])
def test_hooked_attention_equals_eager_attention(tiny_models, family):
    from transformers import AutoModelForImageTextToText

    from vision_opd.data.views import View, encode_views
    from vision_opd.proposers.attention import last_query_attention

    model, processor = tiny_models[family]
    model = sharpened(model)
    config = copy.deepcopy(model.config)  # from_config would switch the shared config (and `model`) to eager
    eager = AutoModelForImageTextToText.from_config(config, attn_implementation="eager", dtype=torch.float32)
    eager.load_state_dict(model.state_dict())
    eager.eval()
    assert eager.config._attn_implementation == "eager" and model.config._attn_implementation == "sdpa"
    inputs = encode_views(processor, [View([photo(1, (120, 90))], "What digit is written on the marked object?")])
    with torch.no_grad():
        ref = eager(**inputs, use_cache=False, output_attentions=True).attentions  # per layer [B, heads, L, L]
    layers = model.model.language_model.layers
    softmax_layers = [i for i, lay in enumerate(layers) if hasattr(lay, "self_attn")]  # Qwen3.5: full-attention only
    assert len(ref) == len(softmax_layers) >= 1  # eager returns one map per softmax-attention layer
    for idx, ref_B_heads_L_L in zip(softmax_layers, ref, strict=True):
        hooked = capture_last_query_attention(model, inputs, idx)  # [B, heads, L]
        want = ref_B_heads_L_L[:, :, -1].float()
        assert hooked.shape == want.shape
        assert (want.amax(-1) - want.amin(-1)).min() > 0.01, "reference attention too flat to test against"
        torch.testing.assert_close(hooked, want, atol=1e-4, rtol=0)
        assert torch.allclose(hooked.sum(-1), torch.ones(1)), "a softmax row sums to 1"

    # negative control: the same recomputation without the rotary embedding misses by far more than 1e-4
    idx, attn = attention_layer(model, softmax_layers[-1])
    seen = {}
    handle = attn.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    with torch.no_grad():
        model.model(**inputs, use_cache=False)
    handle.remove()
    cos, sin = seen["position_embeddings"]
    no_rope = last_query_attention(attn, seen["hidden_states"], torch.ones_like(cos), torch.zeros_like(sin))
    assert (no_rope - ref[-1][:, :, -1]).abs().max() > 1e-2

    full = capture_last_query_attention(model, inputs, softmax_layers[-1], stop_early=False)
    torch.testing.assert_close(full, capture_last_query_attention(model, inputs, softmax_layers[-1]))
    t, h, w = image_grid(model, inputs)
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == t * h * w


def test_default_layer_is_the_middle_self_attention_layer(tiny_models):
    model, _ = tiny_models["qwen2_5_vl"]
    assert attention_layer(model)[0] == 1 and attention_layer(model, -1)[0] == 2


# ---------------------------------------------------------------- self-grounding
def test_grounding_runs_end_to_end_on_a_tiny_model(tiny_models):
    model, processor = tiny_models["qwen2_5_vl"]
    img = photo(2)
    calls, handle = count_forwards(model)
    try:
        p = GroundingProposer(max_new_tokens=12)(model, processor, img, "What colour is the marked object?")
    finally:
        handle.remove()
    assert p.forward_passes == len(calls) >= 1  # one forward per generation step
    assert p.extra["coords"] == "pixel_resized" and isinstance(p.extra["text"], str)
    if p.fallback:  # random weights: almost always no box
        assert p.box == full_image_box(*img.size) and p.confidence == 0.0 and "no valid box" in p.note
    else:
        assert 0 <= p.box[0] < p.box[2] <= img.width and 0.0 <= p.confidence <= 1.0


def test_grounding_confidence_is_the_mean_probability_of_the_digit_tokens(tiny_models, monkeypatch):
    model, processor = tiny_models["qwen3_vl"]
    tok = processor.tokenizer
    text = '[{"bbox_2d": [100, 200, 500, 600]}]'
    ids = tok.encode(text)
    digit_tok = [any(c.isdigit() for c in tok.decode([i])) for i in ids]
    probs = [0.5 if d else 1.0 for d in digit_tok]
    fake = grounding_mod.Grounding(tok.decode(ids), ids, probs, (224, 224), len(ids) + 1)
    monkeypatch.setattr(grounding_mod, "ground", lambda *a, **k: fake)
    p = GroundingProposer()(model, processor, photo(size=(200, 100)), "q")
    assert not p.fallback and p.extra["coords"] == "norm1000"
    assert np.allclose(p.box, (20, 20, 100, 60))  # 0-1000 of a 200 x 100 image
    assert p.confidence == pytest.approx(0.5)  # digits only: the JSON punctuation (prob 1) does not count
    assert p.forward_passes == len(ids) + 1


# ---------------------------------------------------------------- cache and scoring
def test_cache_computes_once_and_rehashes_on_new_settings(tiny_models, synth_records, tmp_path):
    model, processor = tiny_models["qwen2_5_vl"]
    calls = []

    def oracle(model, processor, image, question, *, shrink=0.0, records=None):
        calls.append(question)
        r = next(r for r in records if r.question == question)
        x1, y1, x2, y2 = r.box
        return Proposal((x1 + shrink, y1 + shrink, x2 - shrink, y2 - shrink), 1.0, 1)

    recs = [r for r in synth_records if r.box is not None][:4]
    recs = [r for i, r in enumerate(recs) if r.question not in {q.question for q in recs[:i]}]
    assert len(recs) >= 2
    prop = functools.partial(oracle, records=recs)
    path = tmp_path / "proposals.jsonl"
    out = propose_records(model, processor, recs, prop, ProposalCache(path), progress=False)
    assert len(calls) == len(recs)
    assert evaluate_proposals(recs, out)["mean_iou"] == pytest.approx(1.0)
    again = propose_records(model, processor, recs, prop, ProposalCache(path), progress=False)
    assert len(calls) == len(recs) and {k: v.box for k, v in again.items()} == {k: v.box for k, v in out.items()}
    propose_records(model, processor, recs, functools.partial(oracle, records=recs, shrink=1.0),
                    ProposalCache(path), progress=False)
    assert len(calls) == 2 * len(recs)  # new settings, new key
    with open(path, "a") as f:
        f.write('{"key": "torn')  # a crash mid-write
    assert len(ProposalCache(path)) == 2 * len(recs)


def test_attention_proposals_through_the_cache(tiny_models, synth_records, tmp_path):
    model, processor = tiny_models["qwen3_vl"]
    recs = synth_records[:2]
    cache = ProposalCache(tmp_path / "p.jsonl", with_relevance=True)
    out = propose_records(model, processor, recs, AttentionProposer(), cache, progress=False)
    back = propose_records(model, processor, recs, AttentionProposer(), ProposalCache(tmp_path / "p.jsonl"),
                           progress=False)
    for r in recs:
        assert back[r.id].box == pytest.approx(out[r.id].box)
        assert np.allclose(back[r.id].relevance, out[r.id].relevance)
    m = evaluate_proposals(recs, out)
    assert m["mean_forward_passes"] == 2.0 and 0.0 <= m["mean_iou"] <= 1.0


def test_evaluate_proposals():
    from vision_opd.data.records import Record

    recs = [Record("a", "a.png", "q", box=(0, 0, 10, 10)), Record("b", "b.png", "q", box=(0, 0, 10, 10)),
            Record("c", "c.png", "q")]
    props = {"a": Proposal((0, 0, 10, 10), 0.9, 2), "b": Proposal((0, 0, 100, 100), 0.0, 4, fallback=True),
             "c": Proposal((0, 0, 5, 5), 0.5, 3)}
    m = evaluate_proposals(recs, props)
    assert m["n"] == 3 and m["n_with_box"] == 2
    assert m["mean_iou"] == pytest.approx((1.0 + 0.01) / 2) and m["recall@0.5"] == 0.5
    assert m["mean_forward_passes"] == 3.0 and m["fallback_rate"] == pytest.approx(1 / 3)
    with pytest.raises(AssertionError, match="no proposal"):
        evaluate_proposals(recs, {"a": props["a"]})


# ---------------------------------------------------------------- confidence search
def test_sliding_windows_cover_the_image_at_every_scale():
    from vision_opd.proposers import sliding_windows

    boxes = sliding_windows(168, 120, fractions=(1 / 6, 1 / 3), stride=0.5)
    small = [b for b in boxes if b[2] - b[0] == pytest.approx(28)]
    large = [b for b in boxes if b[2] - b[0] == pytest.approx(56)]
    assert len(small) == 11 * 11 and len(large) == 5 * 5 and len(boxes) == 146
    for b in boxes:
        assert 0 <= b[0] < b[2] <= 168 and 0 <= b[1] < b[3] <= 120
    assert max(b[2] for b in small) == pytest.approx(168) and max(b[3] for b in small) == pytest.approx(120)
    odd = sliding_windows(100, 100, fractions=(0.3,), stride=1.0)  # 30 px windows, stride 30: 0, 30, 60 + flush 70
    assert sorted({b[0] for b in odd}) == [0, 30, 60, 70]
    with pytest.raises(ValueError):
        sliding_windows(10, 10, fractions=(1.5,))
    with pytest.raises(ValueError):
        sliding_windows(10, 10, stride=0)


def _redness(model, processor, images, prompt, batch_size=64):
    """A stand-in for the model's confidence: the share of pure-red pixels in each image (crop)."""
    out = []
    for im in images:
        a = np.asarray(im.convert("RGB")).astype(int)
        out.append(float(((a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] < 60)).mean()))
    return np.array(out)


def test_confidence_proposer_finds_the_window_the_score_prefers(monkeypatch):
    from vision_opd.proposers import ConfidenceProposer
    from vision_opd.proposers import confidence as conf_mod

    monkeypatch.setattr(conf_mod, "answer_confidence", _redness)
    img = Image.new("RGB", (168, 168), (235, 235, 235))
    img.paste((230, 20, 20), (116, 32, 140, 56))  # a red 24 px square in the cell (112..140, 28..56)
    p = ConfidenceProposer(min_side=1)(None, None, img, "Colour of the framed object?")
    assert not p.fallback and iou(p.box, (116, 32, 140, 56)) >= 0.5
    assert p.forward_passes == 146 + 1 and p.confidence > p.extra["full_confidence"]


def test_confidence_proposer_falls_back_when_no_crop_beats_the_full_image(monkeypatch):
    from vision_opd.proposers import ConfidenceProposer
    from vision_opd.proposers import confidence as conf_mod

    monkeypatch.setattr(conf_mod, "answer_confidence", lambda m, p, images, q, bs=64: np.array([0.9] + [0.5] * (len(images) - 1)))
    img = Image.new("RGB", (90, 60), (0, 0, 0))
    p = ConfidenceProposer()(None, None, img, "q")
    assert p.fallback and p.box == full_image_box(90, 60) and p.confidence == 0.9


def test_confidence_proposer_on_a_tiny_model_reads_the_full_prompt(tiny_models, synth_records, tmp_path):
    from vision_opd.proposers import ConfidenceProposer, make_proposer

    model, processor = tiny_models["qwen2_vl"]
    seen = []
    real = ConfidenceProposer.__call__

    def spy(self, model, processor, image, question):
        seen.append(question)
        return real(self, model, processor, image, question)

    prop = ConfidenceProposer(fractions=(1 / 2,), stride=1.0)
    import unittest.mock as um

    with um.patch.object(ConfidenceProposer, "__call__", spy):
        out = propose_records(model, processor, synth_records[:2], prop, ProposalCache(tmp_path / "c.jsonl"), progress=False)
    assert all("A. " in q for q in seen)  # options and instruction, not the bare question
    for r in synth_records[:2]:
        p = out[r.id]
        assert 0.0 <= p.confidence <= 1.0 and p.forward_passes == 4 + 1
    from vision_opd.data.views import ViewConfig

    made = make_proposer("confidence", ViewConfig(expand_ratio=0.1, min_side=40))
    assert made.expand_ratio == 0.1 and made.min_side == 40
    with pytest.raises(ValueError, match="unknown proposer"):
        make_proposer("nope")


# ---------------------------------------------------------------- rarity
def test_rarity_map_peaks_at_the_token_without_look_alikes():
    from vision_opd.proposers import rarity_map

    g = torch.Generator().manual_seed(0)
    protos = torch.randn(4, 16, generator=g)
    feats = protos[torch.arange(24) % 4] + 0.01 * torch.randn(24, 16, generator=g)  # 4 kinds, 6 look-alikes each
    feats[17] = torch.randn(16, generator=g)  # one token unlike any other
    r = rarity_map(feats, (4, 6), k=3)
    assert r.shape == (4, 6) and np.unravel_index(r.argmax(), r.shape) == (17 // 6, 17 % 6)
    assert r[17 // 6, 17 % 6] > 5 * np.delete(r.ravel(), 17).max()
    assert np.allclose(rarity_map(torch.ones(6, 3), (2, 3)), 0.0, atol=1e-6)  # all alike: nothing is rare


def test_rarity_proposer_finds_the_odd_one_out_with_one_vision_forward(tiny_models, monkeypatch):
    from vision_opd.proposers import RarityProposer
    from vision_opd.proposers import rarity as rarity_mod

    model, processor = tiny_models["qwen2_5_vl"]
    calls = []
    real = model.model.get_image_features

    def counted(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(model.model, "get_image_features", counted)
    img = photo()
    p = RarityProposer()(model, processor, img, "ignored: rarity does not read the question")
    assert len(calls) == 1 == p.forward_passes
    x1, y1, x2, y2 = p.box
    assert 0 <= x1 < x2 <= img.width and 0 <= y1 < y2 <= img.height
    from vision_opd.data.views import View, encode_views

    grid = encode_views(processor, [View([img], "x")])["image_grid_thw"][0]
    assert p.relevance.shape == (int(grid[1]) // 2, int(grid[2]) // 2)
    # with features that single out one merged cell, the proposal is that cell's pixels
    h, w = p.relevance.shape
    feats = torch.ones(h * w, 8)
    feats[w + 1] = torch.tensor([1.0, -1, 1, -1, 1, -1, 1, -1])
    monkeypatch.setattr(rarity_mod, "image_token_features", lambda m, pr, im: (feats, (h, w)))
    q = RarityProposer(window=WindowConfig(fractions=(1 / max(h, w),), refine=False))(model, processor, img, "q")
    cw, ch = img.width / w, img.height / h
    assert not q.fallback and iou(q.box, (cw, ch, 2 * cw, 2 * ch)) > 0.5


def test_apply_proposals_keeps_the_crop_signal_and_can_leave_the_records_alone():
    from vision_opd.data.records import Record
    from vision_opd.proposers import apply_proposals

    recs = [Record("a", "a.png", "q", box=(0, 0, 10, 10)), Record("b", "b.png", "q")]
    props = {"a": Proposal((1, 2, 3, 4), 0.8, 2), "b": Proposal((0, 0, 50, 50), 0.1, 2, fallback=True)}
    copies = apply_proposals(recs, props, copy=True)
    assert [r.id for r in copies] == ["a"] and copies[0].meta["proposed_box"] == [1, 2, 3, 4]
    assert all("proposed_box" not in r.meta for r in recs) and copies[0].box == (0, 0, 10, 10)  # originals untouched
    kept = apply_proposals(recs, props, keep_fallback=True)
    assert [r.id for r in kept] == ["a", "b"] and recs[1].meta["proposed_box"] == [0, 0, 50, 50]
    assert recs[1].meta["proposal_fallback"] is True and recs[0].meta["proposal_confidence"] == 0.8
