"""Tiny twins of the real checkpoints: each published config (`published.py`) with only its sizes shrunk.

A twin keeps every structural switch of its checkpoint: tied or untied embeddings, the grouped-query ratio
(query heads per key/value head), the rope theta, the mrope sections (scaled to the twin's head size in the same
proportions) and their interleaving, the partial rotary factor, the vision merger (spatial merge, out_hidden_size =
the text width), window attention layers (Qwen2.5-VL's fullatt_block_indexes) or deepstack layers (Qwen3-VL),
the hybrid layer pattern (Qwen3.5: three linear-attention layers, then one full), the special tokens in vocabulary
order, a chat template of the same shape (Qwen2.5-VL's default system prompt, Qwen3.5's thinking switch) and a
generation_config.json with the instruct checkpoint's sampling defaults. What shrinks: widths, layer counts
(a layer pattern keeps one period), head counts (down to one key/value head at the same ratio), the vocabulary (the
offline tokenizer of `tiny.py`) and max_position_embeddings.

    python -c "from vision_opd.models.twins import save_twin; save_twin('runs/twin3b', 'Qwen/Qwen2.5-VL-3B-Instruct')"

The folder loads like the real checkpoint: `model.name_or_path=runs/twin3b`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .published import PUBLISHED

# the twin of each checkpoint, by the short name tests and the matrix use
TWINS = {"qwen2_5_vl_3b": "Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl_7b": "Qwen/Qwen2.5-VL-7B-Instruct",
         "qwen3_vl_4b": "Qwen/Qwen3-VL-4B-Instruct", "qwen3_vl_8b": "Qwen/Qwen3-VL-8B-Instruct",
         "qwen3_5_4b": "Qwen/Qwen3.5-4B"}
HEAD_DIM = {"qwen2_5_vl": 32, "qwen3_vl": 32, "qwen3_5": 64}  # 32: the smallest vLLM's CPU attention runs
TEXT_LAYERS, VISION_DEPTH = 2, {"qwen2_5_vl": 8, "qwen3_vl": 4, "qwen3_5": 4}
VISION_WIDTH, VISION_HEADS, LINEAR_HEAD_DIM = 32, 2, 16

_CONTENT = ("{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
            "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
            "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}")
_TURNS = "{{ '<|im_start|>' + message['role'] + '\n' }}" + _CONTENT + "{{ '<|im_end|>\n' }}"
# Qwen2-VL / Qwen2.5-VL: a default system prompt when the conversation has none
_QWEN2_VL = ("{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
             "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}" + _TURNS + "{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Qwen3-VL Instruct: no default system prompt
_QWEN3_VL = ("{% for message in messages %}" + _TURNS + "{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Qwen3.5: the generation prompt opens a thought unless enable_thinking is false (then an empty one, closed)
_QWEN3_5 = ("{% for message in messages %}" + _TURNS + "{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
            "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}"
            "{% else %}{{ '<think>\n' }}{% endif %}{% endif %}")
TEMPLATES = {"qwen2_vl": _QWEN2_VL, "qwen3_vl": _QWEN3_VL, "qwen3_5": _QWEN3_5}


def checkpoint_of(name: str) -> str:
    """The published checkpoint id of a twin name (`qwen2_5_vl_3b`) or of an id itself."""
    if name in TWINS:
        return TWINS[name]
    if name in PUBLISHED:
        return name
    raise ValueError(f"no twin of {name!r}; choose one of {', '.join(TWINS)} (or {', '.join(PUBLISHED)})")


def scale_sections(sections: list[int], total: int) -> list[int]:
    """`sections` rescaled to sum to `total` in the same proportions (largest remainder; every section >= 1)."""
    exact = [s * total / sum(sections) for s in sections]
    out = [max(1, int(x)) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: exact[i] - int(exact[i]), reverse=True)
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def scale_layer_indexes(indexes: list[int], depth: int, new_depth: int) -> list[int]:
    """Layer indexes of a `depth`-layer stack at the same relative places in `new_depth` layers (distinct, sorted)."""
    return sorted({max(0, round((i + 1) * new_depth / depth) - 1) for i in indexes})


def _text_config(pub: dict, family: str, ids: dict) -> dict:
    t = pub["text"]
    ratio = t["num_attention_heads"] // t["num_key_value_heads"]  # query heads per key/value head
    head_dim = HEAD_DIM[family]
    heads = ratio  # one key/value head
    # the width keeps its ratio to heads x head_dim (Qwen2.5-VL: equal, head_dim = hidden / heads)
    published_q = t["num_attention_heads"] * t.get("head_dim", t["hidden_size"] // t["num_attention_heads"])
    hidden = round(heads * head_dim * t["hidden_size"] / published_q)
    rope = dict(t["rope_parameters"])
    rotary = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    rope["mrope_section"] = scale_sections(rope["mrope_section"], rotary // 2)
    text = {"vocab_size": ids["vocab"], "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_attention_heads": heads, "num_key_value_heads": 1, "max_position_embeddings": 4096,
            "rope_parameters": rope, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"], "num_hidden_layers": TEXT_LAYERS}
    if "head_dim" in t:
        text["head_dim"] = head_dim
    if "layer_types" in t:  # one period of the hybrid pattern
        text["layer_types"] = list(t["layer_types"])
        text["num_hidden_layers"] = len(t["layer_types"])
        k, v = t["linear_num_key_heads"], t["linear_num_value_heads"]
        text.update(linear_conv_kernel_dim=t["linear_conv_kernel_dim"], linear_key_head_dim=LINEAR_HEAD_DIM,
                    linear_value_head_dim=LINEAR_HEAD_DIM, linear_num_key_heads=2, linear_num_value_heads=2 * v // k)
    return text


def _vision_config(pub: dict, family: str, out_hidden: int) -> dict:
    v = dict(pub["vision"])
    depth = VISION_DEPTH[family]
    for key in ("fullatt_block_indexes", "deepstack_visual_indexes"):
        if key in v:
            v[key] = scale_layer_indexes(v[key], v["depth"], depth)
    v.update(depth=depth, hidden_size=VISION_WIDTH, intermediate_size=2 * VISION_WIDTH, num_heads=VISION_HEADS,
             out_hidden_size=out_hidden)
    return v


def twin_config(name: str, tokenizer):
    """The transformers config of the twin of checkpoint `name`, for this tokenizer's vocabulary."""
    from transformers import AutoConfig

    pub = PUBLISHED[checkpoint_of(name)]
    family = pub["model_type"]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in pub["tokens"]}
    ids["vocab"] = len(tokenizer)
    text = _text_config(pub, family, ids)
    vision = _vision_config(pub, family, text["hidden_size"])
    tokens = {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
              "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"]}
    return AutoConfig.for_model(family, text_config=text, vision_config=vision,
                                tie_word_embeddings=pub["tie_word_embeddings"], **tokens)


def generation_config_of(name: str, tokenizer):
    """The instruct checkpoint's sampling defaults, with the twin's token ids (eos: <|im_end|>, <|endoftext|>)."""
    from transformers import GenerationConfig

    pub = PUBLISHED[checkpoint_of(name)]
    end, eot = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return GenerationConfig(bos_token_id=eot, pad_token_id=eot, eos_token_id=[end, eot], **pub["generation"])


def build_twin(name: str, *, seed: int = 0, image_size: int = 112):
    """(model, processor) of the twin of checkpoint `name` (an id or a key of TWINS), float32, in eval mode."""
    from transformers import AutoModelForImageTextToText

    from .tiny import build_processor, build_tokenizer

    pub = PUBLISHED[checkpoint_of(name)]
    tokenizer = build_tokenizer(special_tokens=pub["tokens"], chat_template=TEMPLATES[pub["template"]])
    processor = build_processor(pub["model_type"], image_size=image_size, tokenizer=tokenizer)
    config = twin_config(name, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config = generation_config_of(name, tokenizer)
    return model.eval(), processor


def save_twin(out_dir: str | Path, name: str, *, seed: int = 0, image_size: int = 112) -> Path:
    """Write the twin as a Hugging Face folder (config.json, generation_config.json, weights, processor)."""
    model, processor = build_twin(name, seed=seed, image_size=image_size)
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
