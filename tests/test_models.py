"""Tiny models of each family, loading, rollouts and response alignment."""

from __future__ import annotations

import pytest
import torch

from vision_opd.data.views import ViewConfig, encode_views, student_view, teacher_view
from vision_opd.models.loading import load_model_and_processor, vision_token_ids
from vision_opd.models.processors import has_torchvision
from vision_opd.models.tiny import FAMILIES, build_tiny, save_tiny
from vision_opd.rollout import response_mask, sample
from vision_opd.scoring.forward import response_logits, select_prompts


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_round_trip(family, tmp_path, synth_records):
    from transformers import AutoModelForImageTextToText

    save_tiny(tmp_path, family=family)
    model, proc = load_model_and_processor(str(tmp_path))
    ref, _ = build_tiny(family)
    assert model.config.model_type == family
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    inputs = encode_views(proc, [student_view(r) for r in synth_records[:2]])
    plain = AutoModelForImageTextToText.from_pretrained(tmp_path)
    with torch.no_grad():
        a, b, c = model(**inputs).logits, plain(**inputs).logits, ref(**inputs).logits
    assert torch.equal(a, b) and torch.allclose(a, c)
    if not has_torchvision():
        assert type(proc).__name__.endswith("NoVideo")


def test_processor_falls_back_when_autoprocessor_returns_a_tokenizer(tmp_path, monkeypatch):
    """With torchvision installed the stock AutoProcessor is used; for a checkpoint without a video-processor config
    it returns the bare tokenizer (seen on a GPU machine with torchvision): the loader must build the processor."""
    from vision_opd.models import processors

    save_tiny(tmp_path, family="qwen2_vl")
    monkeypatch.setattr(processors, "has_torchvision", lambda: True)
    proc = processors.load_processor(str(tmp_path))
    assert hasattr(proc, "image_processor") and proc.tokenizer.padding_side == "left"


def test_response_mask_ends_after_first_eos():
    ids = torch.tensor([[5, 9, 7, 9, 3], [1, 2, 3, 4, 5], [9, 1, 1, 1, 1]])
    mask, trunc = response_mask(ids, [9])
    assert mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert trunc.tolist() == [False, True, False]


def test_rollout_suppresses_vision_tokens_and_groups_samples(synth_records):
    model, proc = build_tiny("qwen2_5_vl")
    banned = vision_token_ids(model, proc)
    assert model.config.image_token_id in banned and model.config.vision_start_token_id in banned
    def favour_image_pad(module, args, out):  # make <|image_pad|> the model's favourite token
        out[..., model.config.image_token_id] += 1e4
        return out

    model.lm_head.register_forward_hook(favour_image_pad)
    inputs = encode_views(proc, [student_view(r) for r in synth_records[:2]])
    torch.manual_seed(0)
    ro = sample(model, proc, inputs, samples_per_prompt=3, max_new_tokens=5, suppress_ids=banned)
    assert ro.response_ids_B_T.shape == (6, 5)
    assert ro.prompt_index_B.tolist() == [0, 0, 0, 1, 1, 1]
    assert not torch.isin(ro.response_ids_B_T, torch.tensor(banned)).any()
    free = sample(model, proc, inputs, samples_per_prompt=1, max_new_tokens=3, do_sample=False)
    assert (free.response_ids_B_T == model.config.image_token_id).all()  # the bias works without suppression


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_5"])
def test_forward_reads_the_logits_generate_used(family, synth_records):
    """Scoring [prompt + response] reproduces, position by position, the logits generate sampled from."""
    model, proc = build_tiny(family)
    inputs = encode_views(proc, [student_view(r) for r in synth_records[:3]])
    g = model.generate(**inputs, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True,
                       pad_token_id=proc.tokenizer.pad_token_id, eos_token_id=[0])
    resp = g.sequences[:, inputs["input_ids"].shape[1]:]
    with torch.no_grad():
        scored = response_logits(model, inputs, resp, torch.ones_like(resp, dtype=torch.float))
    torch.testing.assert_close(scored, torch.stack(g.logits, 1), atol=1e-5, rtol=1e-5)
    # selecting (and repeating) prompts keeps each row's images with it
    rows = torch.tensor([2, 0, 0])
    sel = select_prompts(inputs, rows, model.config.vision_start_token_id)
    with torch.no_grad():
        again = response_logits(model, sel, resp[rows], torch.ones_like(resp[rows], dtype=torch.float))
    torch.testing.assert_close(again, scored[rows], atol=1e-6, rtol=1e-6)


def test_teacher_view_with_more_image_tokens_is_read_at_the_same_response_tokens(synth_records):
    """Teacher prompt is longer (more image tokens) than the student's; both are read at the response."""
    from vision_opd.models.tiny import build_processor

    model, _ = build_tiny("qwen2_5_vl")
    proc = build_processor("qwen2_5_vl")
    proc.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 448 * 448}  # token count follows image size
    recs = synth_records[:2]
    s_in = encode_views(proc, [student_view(r) for r in recs])
    t_in = encode_views(proc, [teacher_view(r, ViewConfig(teacher_pixels=336 * 336)) for r in recs])
    n_img = lambda x: int((x["input_ids"][0] == model.config.image_token_id).sum())  # noqa: E731
    assert n_img(t_in) > 2 * n_img(s_in)
    resp = torch.tensor([[40, 41, 42, 43], [50, 51, 52, 53]])
    mask = torch.ones_like(resp, dtype=torch.float)
    with torch.no_grad():
        t_logits = response_logits(model, t_in, resp, mask)
        s_logits = response_logits(model, s_in, resp, mask)
        # reference: each teacher prompt alone, unpadded, response appended, logits read from its own end
        for b in range(2):
            one = encode_views(proc, [teacher_view(recs[b], ViewConfig(teacher_pixels=336 * 336))])
            full_ids = torch.cat([one["input_ids"], resp[b:b + 1]], 1)
            mm = torch.cat([one["mm_token_type_ids"], torch.zeros_like(resp[b:b + 1])], 1)
            out = model(input_ids=full_ids, attention_mask=torch.ones_like(full_ids), pixel_values=one["pixel_values"],
                        image_grid_thw=one["image_grid_thw"], mm_token_type_ids=mm).logits
            torch.testing.assert_close(t_logits[b], out[0, -5:-1], atol=1e-5, rtol=1e-5)
    assert t_logits.shape == s_logits.shape == (2, 4, model.config.text_config.vocab_size)


def test_pixel_budget_from_the_loader(tmp_path):
    from PIL import Image

    from vision_opd.models.processors import load_processor

    save_tiny(tmp_path, family="qwen2_5_vl")
    grid = lambda p: p.image_processor(images=[Image.new("RGB", (300, 300))], return_tensors="pt")["image_grid_thw"].tolist()  # noqa: E731
    assert grid(load_processor(str(tmp_path), max_pixels=56 * 56)) == [[1, 2, 2]]  # lower bound follows the upper one down
    assert grid(load_processor(str(tmp_path), min_pixels=224 * 224, max_pixels=448 * 448)) == [[1, 22, 22]]  # 300 -> 308 px
    with pytest.raises(ValueError, match="above max_pixels"):
        load_processor(str(tmp_path), min_pixels=448 * 448, max_pixels=56 * 56)


def test_no_remote_code_unless_asked(tmp_path, monkeypatch):
    """Checkpoints never run their own code unless the user passes trust_remote_code."""
    import transformers

    seen = []
    real = transformers.AutoModelForImageTextToText.from_pretrained

    def spy(*a, **kw):
        seen.append(kw.get("trust_remote_code"))
        return real(*a, **kw)

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", spy)
    save_tiny(tmp_path, family="qwen2_5_vl")
    load_model_and_processor(str(tmp_path))
    load_model_and_processor(str(tmp_path), trust_remote_code=True)
    assert seen == [False, True]
