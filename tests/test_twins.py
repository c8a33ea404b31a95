"""The tiny twins (models/twins.py): each real checkpoint's structural switches, read back from the saved folder's
config.json, generation_config.json and chat template, equal the published ones (models/published.py); each twin
loads through the normal path, runs a forward on an image and generates."""

from __future__ import annotations

import json

import pytest
import torch

from vision_opd.models.published import PUBLISHED
from vision_opd.models.twins import TWINS, save_twin, scale_layer_indexes, scale_sections


@pytest.fixture(scope="module")
def twin_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    return {name: save_twin(root / name, name, image_size=168) for name in TWINS}


def _saved(folder):
    return (json.loads((folder / "config.json").read_text()), json.loads((folder / "generation_config.json").read_text()))


def test_every_checkpoint_the_presets_name_has_a_twin():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    named = {line.split(":", 1)[1].strip().split()[0] for p in (root / "configs").rglob("*.yaml")
             for line in p.read_text().splitlines() if line.strip().startswith("name_or_path:")}
    assert {n for n in named if n.startswith("Qwen/")} <= set(TWINS.values())


def test_sections_and_layers_scale_in_proportion():
    assert scale_sections([16, 24, 24], 16) == [4, 6, 6]
    assert scale_sections([24, 20, 20], 16) == [6, 5, 5]
    assert scale_sections([11, 11, 10], 8) == [3, 3, 2]
    assert scale_layer_indexes([7, 15, 23, 31], 32, 8) == [1, 3, 5, 7]  # the last block of every quarter
    assert scale_layer_indexes([5, 11, 17], 24, 4) == [0, 1, 2]


@pytest.mark.parametrize("name", TWINS)
def test_twin_keeps_the_structural_switches(name, twin_dirs):
    pub = PUBLISHED[TWINS[name]]
    cfg, gen = _saved(twin_dirs[name])
    text, vision, pt, pv = cfg["text_config"], cfg["vision_config"], pub["text"], pub["vision"]
    assert cfg["model_type"] == pub["model_type"]
    assert cfg["tie_word_embeddings"] is pub["tie_word_embeddings"]
    assert text["num_attention_heads"] // text["num_key_value_heads"] == pt["num_attention_heads"] // pt["num_key_value_heads"]
    assert text["hidden_size"] < pt["hidden_size"] and text["num_hidden_layers"] < pt["num_hidden_layers"]
    rope, prope = text["rope_parameters"], pt["rope_parameters"]
    assert rope["rope_theta"] == prope["rope_theta"]
    assert rope.get("mrope_interleaved", False) is prope.get("mrope_interleaved", False)
    assert rope.get("partial_rotary_factor", 1.0) == prope.get("partial_rotary_factor", 1.0)
    head_dim = text.get("head_dim", text["hidden_size"] // text["num_attention_heads"])
    assert sum(rope["mrope_section"]) == int(head_dim * rope.get("partial_rotary_factor", 1.0)) // 2
    for s, p in zip(rope["mrope_section"], prope["mrope_section"], strict=True):  # the same proportions, to rounding
        assert abs(s - p * sum(rope["mrope_section"]) / sum(prope["mrope_section"])) < 1
    assert vision["spatial_merge_size"] == pv["spatial_merge_size"] and vision["patch_size"] == pv["patch_size"]
    assert vision["out_hidden_size"] == text["hidden_size"]  # the merger feeds the text width, as published
    for key in ("fullatt_block_indexes", "deepstack_visual_indexes", "window_size"):
        assert (key in pv) == (vision.get(key) is not None), key
    if "fullatt_block_indexes" in pv:  # window attention everywhere else: some blocks are not full
        assert vision["window_size"] == pv["window_size"]
        assert 0 < len(vision["fullatt_block_indexes"]) < vision["depth"]
    if pv.get("deepstack_visual_indexes"):
        assert len(vision["deepstack_visual_indexes"]) == len(pv["deepstack_visual_indexes"])
    elif "deepstack_visual_indexes" in pv:
        assert vision["deepstack_visual_indexes"] == []
    if "layer_types" in pt:
        assert text["layer_types"] == pt["layer_types"]  # one period of the hybrid pattern
    for k, v in pub["generation"].items():
        assert gen[k] == v, k
    assert isinstance(gen["eos_token_id"], list) and len(gen["eos_token_id"]) == 2


@pytest.mark.parametrize("name", TWINS)
def test_twin_tokens_and_chat_template(name, twin_dirs):
    from vision_opd.models.loading import load_model_and_processor

    pub = PUBLISHED[TWINS[name]]
    cfg, _ = _saved(twin_dirs[name])
    model, proc = load_model_and_processor(str(twin_dirs[name]))
    tok = proc.tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in pub["tokens"]] == list(range(len(pub["tokens"])))  # vocabulary order
    assert cfg["image_token_id"] == tok.convert_tokens_to_ids("<|image_pad|>")
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]}]
    text = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert "<|vision_start|><|image_pad|><|vision_end|>Q<|im_end|>" in text
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.") == (pub["template"] == "qwen2_vl")
    assert text.endswith("<think>\n") == (pub["template"] == "qwen3_5")
    if pub["template"] == "qwen3_5":
        off = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, enable_thinking=False)
        assert off.endswith("<think>\n\n</think>\n\n")
    head, embed = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert (head.data_ptr() == embed.data_ptr()) is pub["tie_word_embeddings"]  # tied after loading, as published


@pytest.mark.parametrize("name", TWINS)
def test_twin_runs_a_forward_on_an_image_and_generates(name, twin_dirs, synth_records):
    from vision_opd.data.views import encode_views, student_view
    from vision_opd.models.loading import load_model_and_processor

    model, proc = load_model_and_processor(str(twin_dirs[name]))
    inputs = encode_views(proc, [student_view(r) for r in synth_records[:2]])
    assert int((inputs["input_ids"] == model.config.image_token_id).sum(-1)[0]) == 36  # 168 px: 12 x 12 patches / 2 x 2
    with torch.no_grad():
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert logits.shape[-1] == len(proc.tokenizer) and torch.isfinite(logits).all()
    assert out.shape[0] == 2 and out.shape[1] > inputs["input_ids"].shape[1]
