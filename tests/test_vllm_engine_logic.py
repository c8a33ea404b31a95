"""The vLLM engine's own logic that runs without vLLM, in the default `make test` (tests/test_vllm.py runs the engine
itself, in `make test-vllm`): what the step hands the engine to sync and when, how vLLM's outputs become a Rollout
(prompt-major rows, the sampled token's log-prob, greedy copies, per-prompt seeds from torch's RNG), and the checks
made before an engine is built."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vision_opd.models.loading import vision_token_ids
from vision_opd.rollout import Decoding, HFEngine, decoding_of
from vision_opd.rollout.vllm_engine import EngineError, VLLMEngine, check_supported, engine_dtype
from vision_opd.rollout.weights import engine_weights


class _RecordingEngine(HFEngine):
    """The HF engine, with the sync of the vLLM engine recorded: what it would push, and when."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.pushed = []

    def sync(self, model) -> float:
        self.pushed.append({n: t.clone() for n, t in engine_weights(model, trainable_only=True)})
        return 0.25


def test_the_step_syncs_the_engine_once_after_the_update_with_the_updated_weights(tmp_path, synth_dir):
    from vision_opd.config import load_config
    from vision_opd.data.sources import load_train_records
    from vision_opd.models.loading import load_model
    from vision_opd.training import loop as T

    cfg = load_config(None, [f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={tmp_path}",
                             "train.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4",
                             "train.micro_batch_size=2", "optim.warmup_steps=0", "optim.lr=1e-2",
                             "views.teacher_pixels=12544", "teacher.mode=frozen"])
    T.seed_everything(0)
    model, proc = load_model(cfg.model, seed=0)
    model.model.visual.requires_grad_(False)  # as a run that freezes the tower: the sync leaves it out
    records, _ = load_train_records(cfg.data, cfg.views)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    suppress = vision_token_ids(model, proc)
    engine = _RecordingEngine(proc, decoding_of(cfg.rollout, suppress))
    ctx = T.StepContext(model, T.Teacher(model, "frozen", 0.05), proc, opt, sched, suppress, torch.device("cpu"), engine)
    m = T.vision_opd_step(cfg, ctx, records[:2]).metrics
    assert m["sec_sync"] == 0.25 and len(engine.pushed) == 1
    pushed, now = engine.pushed[0], dict(model.named_parameters())
    assert set(pushed) == {n for n, p in now.items() if p.requires_grad} and not any(".visual." in n for n in pushed)
    for n, t in pushed.items():
        assert torch.equal(t, now[n].detach()), f"{n}: not the weights after the update"
    assert sum(not torch.equal(pushed[n], before[n]) for n in pushed) > len(pushed) // 2  # the update moved them


def _output(ids, logprobs):
    """A vLLM CompletionOutput: the token ids and, per step, {token id: Logprob} (the sampled one, perhaps others)."""
    return SimpleNamespace(token_ids=ids, logprobs=[{t: SimpleNamespace(logprob=lp) for t, lp in step.items()}
                                                    for step in logprobs])


class _FakeLLM:
    """`LLM.generate` answering from a script: per prompt, its list of outputs; records the parameters it got."""

    def __init__(self, script):
        self.script, self.params = script, None

    def generate(self, requests, params, use_tqdm=False):
        self.params = params
        return [SimpleNamespace(prompt_token_ids=[1, 2, 3], outputs=self.script[i]) for i in range(len(requests))]


def _engine(proc, decoding, script, eos=9, pad=0):
    engine = VLLMEngine.__new__(VLLMEngine)  # no vLLM: the parts that turn its outputs into a Rollout
    engine.processor, engine.decoding, engine.eos_ids, engine.pad_id = proc, decoding, [eos], pad
    engine.llm = _FakeLLM(script)
    engine.sampling_params = lambda seed, logprobs=True: {"seed": seed}
    return engine


def test_sampled_outputs_become_a_prompt_major_rollout_with_the_sampled_tokens_logprobs(synth_records):
    from vision_opd.data.views import student_view
    from vision_opd.models.tiny import build_processor

    proc = build_processor("qwen2_5_vl")
    views = [student_view(r) for r in synth_records[:2]]
    script = [[_output([5, 9], [{5: -0.5}, {9: -0.1}]),                    # ends on EOS
               _output([6, 7, 8], [{6: -1.0}, {2: -0.2, 7: -2.0}, {8: -0.3}])],  # cut; step 2 also lists a likelier token
              [_output([4, 9], [{4: -0.7}, {9: -0.2}]), _output([9], [{9: -0.05}])]]
    d = Decoding(samples_per_prompt=2, do_sample=True, max_new_tokens=3)
    engine = _engine(proc, d, script)
    torch.manual_seed(0)
    ro = engine.sample(None, None, views)
    seeds = [p["seed"] for p in engine.llm.params]
    assert ro.response_ids_B_T.tolist() == [[5, 9, 0], [6, 7, 8], [4, 9, 0], [9, 0, 0]]
    assert ro.prompt_index_B.tolist() == [0, 0, 1, 1] and ro.truncated_B.tolist() == [False, True, False, False]
    assert ro.response_mask_B_T.tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0]]
    torch.testing.assert_close(ro.logprobs_B_T, torch.tensor([[-0.5, -0.1, 0], [-1.0, -2.0, -0.3], [-0.7, -0.2, 0],
                                                              [-0.05, 0, 0]]))
    assert len(set(seeds)) == 2  # a seed per prompt, its G samples children of it
    torch.manual_seed(0)
    engine.sample(None, None, views)
    assert [p["seed"] for p in engine.llm.params] == seeds  # drawn from torch's RNG: a resumed run draws the same


def test_greedy_outputs_are_repeated_for_each_of_the_g_rows(synth_records):
    from vision_opd.data.views import student_view
    from vision_opd.models.tiny import build_processor

    proc = build_processor("qwen2_5_vl")
    views = [student_view(r) for r in synth_records[:2]]
    script = [[_output([5, 9], [{5: -0.5}, {9: -0.1}])], [_output([4, 6], [{4: -0.7}, {6: -0.2}])]]
    engine = _engine(proc, Decoding(samples_per_prompt=3, do_sample=False, max_new_tokens=2), script)
    ro = engine.sample(None, None, views)
    assert ro.response_ids_B_T.tolist() == [[5, 9]] * 3 + [[4, 6]] * 3
    assert ro.prompt_index_B.tolist() == [0, 0, 0, 1, 1, 1] and ro.truncated_B.tolist() == [False] * 3 + [True] * 3
    assert [p["seed"] for p in engine.llm.params] == [None, None]


def test_models_vllm_cannot_run_are_refused_before_an_engine_is_built():
    from transformers import LlamaConfig

    from vision_opd.demo.pretrain import build_demo_model

    model, _ = build_demo_model()  # head_dim 16: not among vLLM's CPU attention kernels
    with pytest.raises(EngineError, match=r"head_dim=16 .*supported: 32, 64"):
        check_supported(model.config, "cpu")
    check_supported(model.config, "cuda")
    with pytest.raises(EngineError, match=r"model type 'llama' is not supported; supported: .*qwen2_5_vl"):
        check_supported(LlamaConfig(hidden_size=64, num_attention_heads=2), "cpu")
    assert engine_dtype("auto", model, mixed_bf16=False) == "float32"
    assert engine_dtype("auto", model, mixed_bf16=True) == "bfloat16" and engine_dtype("float16", model, False) == "float16"
