"""The published configs of the real checkpoints the presets and docs name, as far as the twins need them.

Only the values a twin keeps or scales are here: sizes (which `twins.py` shrinks), every structural switch (tied
embeddings, grouped-query ratio, rope / mrope sections and interleaving, the vision merger, window and deepstack
layers, hybrid layer types), the special tokens' names and the instruct checkpoint's sampling defaults
(generation_config.json). Each entry says where its values were read; the hub itself is not reachable from the
machines that built this, so the sources are public copies of the checkpoints' config.json files (test fixtures and
converters of other projects that paste them whole). What no public copy confirmed is listed in docs/testing.md
("Tiny twins").

The rope values are written the way transformers 5 reads them (`rope_parameters`); the published files of the
Qwen2.5-VL and Qwen3-VL checkpoints carry the same numbers as `rope_theta` + `rope_scaling` (older transformers).
"""

from __future__ import annotations

# The special tokens in vocabulary order (the ids in the published configs are 151643 + index for Qwen2.5-VL and
# Qwen3-VL: vision_start 151652, vision_end 151653, image_pad 151655, video_pad 151656).
QWEN_VL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
QWEN3_TOKENS = QWEN_VL_TOKENS + ["<tool_call>", "</tool_call>", "<think>", "</think>"]

_QWEN2_5_VL_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
                      "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                      "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu"}
_QWEN2_5_VL_ROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}
_QWEN2_5_VL_GENERATION = {"do_sample": True, "temperature": 0.1, "top_p": 0.001, "top_k": 1, "repetition_penalty": 1.05}
_QWEN3_VL_ROPE = {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
_QWEN3_VL_GENERATION = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.0}

PUBLISHED = {
    "Qwen/Qwen2.5-VL-3B-Instruct": {
        "model_type": "qwen2_5_vl", "tie_word_embeddings": True, "vocab_size": 151936,
        "text": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
                 "num_key_value_heads": 2, "rope_parameters": _QWEN2_5_VL_ROPE},
        "vision": {**_QWEN2_5_VL_VISION, "out_hidden_size": 2048},
        "tokens": QWEN_VL_TOKENS, "template": "qwen2_vl", "generation": _QWEN2_5_VL_GENERATION,
        "source": "config.json as pasted whole in a parameter-counting test (transformers 4.52.4 dump, 'nano_config') "
                  "and in a robot-policy config (Qwen2.5-VL-3B base); generation defaults: PaddleMIX's deploy script "
                  "for Qwen2.5-VL-3B-Instruct (top_k 1, top_p 0.001, temperature 0.1, repetition_penalty 1.05)",
    },
    "Qwen/Qwen2.5-VL-7B-Instruct": {
        "model_type": "qwen2_5_vl", "tie_word_embeddings": False, "vocab_size": 152064,
        "text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                 "num_key_value_heads": 4, "rope_parameters": _QWEN2_5_VL_ROPE},
        "vision": {**_QWEN2_5_VL_VISION, "out_hidden_size": 3584},
        "tokens": QWEN_VL_TOKENS, "template": "qwen2_vl", "generation": _QWEN2_5_VL_GENERATION,
        "source": "config.json as pasted in TensorRT-LLM's Qwen2.5-VL test (the 7B's, layers cut for the test) and "
                  "in an evaluation README (the 7B's whole config.json); generation defaults as the 3B's",
    },
    "Qwen/Qwen3-VL-4B-Instruct": {
        "model_type": "qwen3_vl", "tie_word_embeddings": True, "vocab_size": 151936,
        "text": {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 128, "rope_parameters": _QWEN3_VL_ROPE},
        "vision": {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "patch_size": 16,
                   "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 2560,
                   "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17],
                   "hidden_act": "gelu_pytorch_tanh"},
        "tokens": QWEN3_TOKENS, "template": "qwen3_vl", "generation": _QWEN3_VL_GENERATION,
        "source": "config.json (transformers 4.57.0.dev0) as pasted whole in two text-encoder ports of "
                  "Qwen3-VL-4B-Instruct; generation defaults: the Qwen3-VL Instruct model cards' recommended sampling "
                  "(temperature 0.7, top_p 0.8, top_k 20, repetition_penalty 1.0)",
    },
    "Qwen/Qwen3-VL-8B-Instruct": {
        "model_type": "qwen3_vl", "tie_word_embeddings": False, "vocab_size": 151936,
        "text": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 128, "rope_parameters": _QWEN3_VL_ROPE},
        "vision": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16, "patch_size": 16,
                   "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 4096,
                   "num_position_embeddings": 2304, "deepstack_visual_indexes": [8, 16, 24],
                   "hidden_act": "gelu_pytorch_tanh"},
        "tokens": QWEN3_TOKENS, "template": "qwen3_vl", "generation": _QWEN3_VL_GENERATION,
        "source": "config.json as pasted in TensorRT-LLM's Qwen3-VL test (Qwen3-VL-8B-Instruct, layers cut for the "
                  "test) and whole in a CoreML test fixture and the Cosmos-Reason2-8B config (same architecture); "
                  "generation defaults as the 4B's",
    },
    "Qwen/Qwen3.5-4B": {
        "model_type": "qwen3_5", "tie_word_embeddings": True, "vocab_size": 248320,
        "text": {"hidden_size": 2560, "intermediate_size": 9216, "num_hidden_layers": 32, "num_attention_heads": 16,
                 "num_key_value_heads": 4, "head_dim": 256, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
                 "linear_value_head_dim": 128, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
                 "layer_types": ["linear_attention"] * 3 + ["full_attention"],  # repeated over the 32 layers
                 "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "mrope_section": [11, 11, 10],
                                     "mrope_interleaved": True, "partial_rotary_factor": 0.25}},
        "vision": {"depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "patch_size": 16,
                   "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 2560,
                   "num_position_embeddings": 2304, "deepstack_visual_indexes": [], "hidden_act": "gelu_pytorch_tanh"},
        "tokens": QWEN3_TOKENS, "template": "qwen3_5",
        "generation": {"do_sample": True, "temperature": 1.0, "top_p": 0.95, "top_k": 20, "repetition_penalty": 1.0},
        "source": "config.json of a Qwen3.5-4B fine-tune pasted whole in a Rust config test (text 2560 x 32 layers, "
                  "16/4 heads of 256, mrope [11, 11, 10] interleaved, partial rotary 0.25, tied; vision 24 x 1024 -> "
                  "2560, no deepstack) and the 4B topology of an MLX adapter test (9216 intermediate, full attention "
                  "every 4th layer, 16/32 linear heads of 128); generation defaults: the Qwen3.5 model card's thinking "
                  "mode sampling (not confirmed from generation_config.json)",
    },
}
