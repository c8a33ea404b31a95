"""Tiny random-weight VLMs of the supported families, with an offline tokenizer and processor.

Nothing here downloads anything: the tokenizer is a byte-level BPE trained in a second on a built-in
corpus, with the Qwen special tokens and a Qwen-style chat template; the model configs are the real
architectures (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5) shrunk to a few hundred thousand parameters.
Tests and the demo build everything from here; `save_tiny(dir)` writes a normal Hugging Face directory
that `vision_opd.models.loading.load_model_and_processor(dir)` (and `from_pretrained`) read back.

    python -c "from vision_opd.models.tiny import save_tiny; save_tiny('runs/tiny', family='qwen2_5_vl')"
"""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5")

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<think>",
    "</think>",
]

# A Qwen-style chat template (the same structure as the real Qwen2-VL/2.5-VL/3-VL templates):
# images become <|vision_start|><|image_pad|><|vision_end|>, which the processor expands per image.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = """
user assistant system Question question Answer answer Options options The answer is
What colour is the object inside the marked box? What color is the marked object?
What digit is written on the marked object? What letter is written in the marked object?
Which shape is the marked object? How many objects are inside the marked region?
Answer with the option's letter from the given choices directly.
Only focus on the objects inside the red bounding box in the image to answer this question.
Write a general description of the image.
red green blue yellow purple orange cyan magenta white black grey gray brown pink
circle square triangle diamond star cross ring small large marked target distractor
zero one two three four five six seven eight nine 0 1 2 3 4 5 6 7 8 9
A B C D E F G H I J K L M N O P Q R S T U V W X Y Z a b c d e f g h i j k l m n o p q r s t u v w x y z
A. B. C. D. (A) (B) (C) (D) yes no Yes No the a an of in on is it to and which what where
The object is red. The target is a circle. I think the answer is B because the box is blue.
"""


def build_tokenizer(vocab_size: int = 384, *, special_tokens: list[str] = SPECIAL_TOKENS, chat_template: str = CHAT_TEMPLATE):
    """A byte-level BPE tokenizer with the Qwen special tokens, trained offline on a built-in corpus.

    `special_tokens` start with <|endoftext|> (pad), <|im_start|>, <|im_end|> (eos), in this order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=special_tokens[3:],
        chat_template=chat_template,
        padding_side="left",
    )
    return fast


def build_processor(family: str = "qwen2_5_vl", *, image_size: int = 112, tokenizer=None):
    """The family's processor with the PIL image processor and no video processor (works without torchvision).

    `image_size` sets the pixel budget: min_pixels = max_pixels = image_size**2, so every image becomes
    (image_size / patch)**2 / 4 vision tokens (16 at 112 px with 14 px patches).
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from .processors import processor_class_for

    _check_family(family)
    tokenizer = tokenizer or build_tokenizer()
    patch = 16 if family in ("qwen3_vl", "qwen3_5") else 14
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
        size={"shortest_edge": pixels, "longest_edge": pixels},
    )
    cls = processor_class_for(family)
    return cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template or CHAT_TEMPLATE)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {', '.join(FAMILIES)}")


def mrope_section(head_dim: int) -> list[int]:
    """The multimodal rotary split (temporal, height, width) of head_dim / 2 frequencies, Qwen-VL's 2:3:3 ratio."""
    half = head_dim // 2
    return [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]


def tiny_config(family: str, tokenizer, *, hidden: int = 64, layers: int = 2, vision_hidden: int = 32, vision_depth: int = 2,
                head_dim: int = 32):
    """A shrunk config of the real architecture: hidden // head_dim attention heads, mrope_section summing to head_dim / 2.

    head_dim 32 is the smallest vLLM's CPU attention runs (so `rollout.engine=vllm` works on tiny models);
    the shipped demo model was built with head_dim 16 (`demo/pretrain.py` keeps that).
    """
    _check_family(family)
    if hidden % head_dim:
        raise ValueError(f"hidden={hidden} must be a multiple of head_dim={head_dim}")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    common_tokens = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    heads = hidden // head_dim
    section = mrope_section(head_dim)
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=4096,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    if family in ("qwen2_vl", "qwen2_5_vl"):
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}
        vision = dict(depth=vision_depth, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        if family == "qwen2_vl":
            from transformers import Qwen2VLConfig as C

            vision.update(embed_dim=vision_hidden, hidden_size=hidden, mlp_ratio=2)
        else:
            from transformers import Qwen2_5_VLConfig as C

            vision.update(
                hidden_size=vision_hidden,
                intermediate_size=vision_hidden * 2,
                out_hidden_size=hidden,
                window_size=56,
                fullatt_block_indexes=[vision_depth - 1],
            )
    else:
        text.update(head_dim=head_dim)
        vision = dict(
            depth=vision_depth,
            hidden_size=vision_hidden,
            intermediate_size=vision_hidden * 2,
            num_heads=2,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            out_hidden_size=hidden,
            num_position_embeddings=64,
        )
        if family == "qwen3_vl":
            from transformers import Qwen3VLConfig as C

            text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section, "mrope_interleaved": True}
            vision.update(deepstack_visual_indexes=[0])
        else:
            from transformers import Qwen3_5Config as C

            text["rope_parameters"] = {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": section,
                "mrope_interleaved": True,
                "partial_rotary_factor": 1.0,
            }
            text.update(
                linear_key_head_dim=16,
                linear_value_head_dim=16,
                linear_num_key_heads=2,
                linear_num_value_heads=2,
                layer_types=["linear_attention", "full_attention"][:layers] if layers <= 2 else None,
            )
    return C(text_config=text, vision_config=vision, tie_word_embeddings=False, **common_tokens)


def build_tiny(family: str = "qwen2_5_vl", *, seed: int = 0, image_size: int = 112, **sizes):
    """(model, processor) of a tiny random-weight VLM of `family`, float32, in eval mode."""
    from transformers import AutoModelForImageTextToText

    processor = build_processor(family, image_size=image_size)
    config = tiny_config(family, processor.tokenizer, **sizes)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    return model.eval(), processor


def save_tiny(out_dir: str | Path, family: str = "qwen2_5_vl", **kw) -> Path:
    """Build a tiny model and write it as a Hugging Face directory (model + processor)."""
    model, processor = build_tiny(family, **kw)
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
