"""Several processes (2 CPU processes over gloo, launched with torchrun as a user would): DDP and FSDP give the same
weights and held-out accuracy as one process, also when the prompts do not divide by the ranks; proposals and
evaluation are shared out and gathered; every rank samples its own noise and gets its own RNG back on resume; a
non-finite step is skipped by every rank or by none; the process-group timeout is a config key. The two-process
runs score each prompt once for its responses (`train.share_prompts`, the default, inside the wrapped module's
forward); the one-process reference scores every row with its own prompt."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
# two processes started with torchrun, each importing torch and building the model: the slow tier (`make test-slow`)
pytestmark = [pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed"), pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(synth_dir, out, *extra):
    # greedy rollouts: the runs then see the same responses, so any difference comes from the distributed
    # gradient (sharding of prompts and weights, normalisation by the global token count, sync), not sampling.
    # 3 prompts over 2 ranks: rank 1 pads its share with a repeated prompt whose tokens count for nothing.
    return [f"data.train_file={synth_dir / 'train.jsonl'}", f"train.out_dir={out}", "train.steps=3", "train.prompts_per_step=3",
            "rollout.samples_per_prompt=2", "rollout.max_new_tokens=4", "rollout.do_sample=false", "train.micro_batch_size=2",
            "train.progress=false", "optim.warmup_steps=0", "optim.lr=1e-3", "views.teacher_pixels=12544", "train.device=cpu",
            "teacher.mode=ema", "teacher.ema_rate=0.5", "train.save_every=2", f"data.eval_file={synth_dir / 'train.jsonl'}",
            "train.eval_every=3", "train.eval_max_new_tokens=3", "train.eval_batch_size=4", *extra]


def _torchrun(args, *flags, module: bool = True):
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           *(["-m", "vision_opd.cli", "train"] if module else []), *args, *flags]
    # a session of its own: a run that hangs is killed with every worker it started, not just the launcher
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"no end in 300 s (a hang): {' '.join(cmd[5:])}\n{out[-2000:]}{err[-2000:]}")
    res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "train.share_prompts:" not in res.stdout  # the prompts were shared (no fallback to the per-row path)
    return res


@pytest.fixture(scope="module")
def single(tmp_path_factory, synth_dir):
    from vision_opd.config import load_config
    from vision_opd.training.loop import train

    return train(load_config(None, _args(synth_dir, tmp_path_factory.mktemp("one") / "run", "train.share_prompts=false")))


def _weights(ckpt):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(ckpt).state_dict()  # gathered checkpoints load like any other


def _metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _compare(one, two):
    _compare_metrics(one, two)
    last = "checkpoints/step_000003"
    wa, wb = _weights(one / last), _weights(two / last)
    assert wa.keys() == wb.keys()
    # Adam moves a weight whose gradient is near zero by lr * m / (sqrt(v) + eps), so the summation order of the
    # all-reduce shows there: measured up to 1.3e-5 (1.3% of one step at lr=1e-3) on 2 of the lm_head's 24,576 weights
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=3e-5, rtol=1e-4, msg=k)
    _compare_files(one / last / "teacher/model.safetensors", two / last / "teacher/model.safetensors")


def _compare_files(a, b):
    """Two safetensors files hold the same tensors (within the distributed runs' tolerance)."""
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys() and ta
    for k in ta:
        torch.testing.assert_close(tb[k], ta[k], atol=3e-5, rtol=1e-4, msg=k)


def _compare_metrics(one, two):
    m1, m2 = _metrics(one), _metrics(two)
    assert len(m1) == len(m2) == 3  # written once, by rank 0
    for a, b in zip(m1, m2, strict=True):
        assert a["tokens"] == b["tokens"]  # the global token count: the padding prompt's tokens are not in it
        assert a["response_len"] == pytest.approx(b["response_len"]) and a["truncation_rate"] == b["truncation_rate"]
        # the gradient norm is scale-sensitive (unlike Adam's update): it checks the normalisation
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)  # a sum of near-zero terms: summation order shows
    # held-out accuracy, every rank evaluating a share: the same numbers as one process evaluating everything
    assert (m2[-1]["eval_full_acc"], m2[-1]["eval_crop_acc"]) == (m1[-1]["eval_full_acc"], m1[-1]["eval_crop_acc"])


def test_ddp_two_processes_equal_one_with_prompts_not_divisible_by_ranks(tmp_path, synth_dir, single):
    _torchrun(_args(synth_dir, tmp_path / "two"))
    _compare(single, tmp_path / "two")


def test_fsdp_with_a_token_budget_equals_one_process(tmp_path, synth_dir, single):
    """train.micro_batch_tokens=105 on prompts 94-102 positions wide with 4-token responses: a rank whose prompts
    are at most 97 wide plans 2 micro-batches (a prompt's 2 rows each), a rank with a wider one 4 (one row each);
    FSDP all-gathers in every forward, so the rank with fewer splits its own (`StepPlan.split_to`) to run as many
    (without that, the run hangs); the same weights as one process."""
    run = tmp_path / "fsdp_budget"
    _torchrun(_args(synth_dir, run, "train.distributed=fsdp", "train.micro_batch_tokens=105"))
    _compare(single, run)


def test_fsdp_two_processes_equal_one_with_prompts_not_divisible_by_ranks_and_resume(tmp_path, synth_dir, single):
    """3 prompts over 2 FSDP ranks used to hang (2 micro-batches on rank 0, 1 on rank 1, an all-gather in each)."""
    run = tmp_path / "fsdp"
    _torchrun(_args(synth_dir, run, "train.distributed=fsdp"))
    _compare(single, run)
    # resume a sharded run from its step-2 checkpoint (weights gathered, full optimizer state re-sharded)
    shutil.rmtree(run / "checkpoints" / "step_000003")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    res = _torchrun(_args(synth_dir, run, "train.distributed=fsdp"), "--resume")
    assert "resumed from" in res.stdout
    _compare(single, run)




@pytest.mark.slow
def test_fsdp_on_a_tied_model_equals_one_process(tmp_path, synth_dir, tied_model_dir):
    """FSDP2 refused the tied embedding and lm_head (one parameter) wrapped as two units, at the first forward."""
    from vision_opd.config import load_config
    from vision_opd.training.loop import train

    tied = f"model.name_or_path={tied_model_dir}", "train.guard_uniform_teacher=false"  # a random model's teacher
    one = train(load_config(None, _args(synth_dir, tmp_path / "one", *tied, "train.share_prompts=false")))
    _torchrun(_args(synth_dir, tmp_path / "fsdp", *tied, "train.distributed=fsdp"))
    _compare(one, tmp_path / "fsdp")
    w = _weights(tmp_path / "fsdp" / "checkpoints" / "step_000003")
    assert torch.equal(w["lm_head.weight"], w["model.language_model.embed_tokens.weight"])  # still tied


@pytest.mark.slow
def test_fsdp_with_lora_and_an_ema_teacher_equals_one_process(tmp_path, synth_dir):
    """The EMA adapter, copied before sharding, met the sharded adapter (a DTensor) at the first teacher forward."""
    from vision_opd.config import load_config
    from vision_opd.training.loop import train

    lora = ["model.lora_r=4", "model.lora_alpha=8"]  # teacher.mode=ema, as _args has it
    one = train(load_config(None, _args(synth_dir, tmp_path / "one", *lora, "train.share_prompts=false")))
    _torchrun(_args(synth_dir, tmp_path / "fsdp", *lora, "train.distributed=fsdp"))
    _compare_metrics(one, tmp_path / "fsdp")
    last = "checkpoints/step_000003"
    for f in ("adapter_model.safetensors", "teacher/model.safetensors"):  # the adapter and the EMA adapter
        _compare_files(one / last / f, tmp_path / "fsdp" / last / f)


SHARE_SCRIPT = textwrap.dedent('''
    """Train as `vision-opd train` does, counting on each rank the images a proposer read and the prompts evaluated."""
    import json, os, sys
    import vision_opd.eval.hf_backend as R
    import vision_opd.proposers.cache as C
    from vision_opd.config import load_config
    from vision_opd.training.loop import train

    rank, out = int(os.environ["RANK"]), sys.argv[1]
    counts = {"proposed": 0, "evaluated": 0}
    real_open, real_call = C.open_image, R.HFGenerator.__call__

    def open_counted(*args, **kw):
        counts["proposed"] += 1
        return real_open(*args, **kw)

    def call_counted(self, views):
        counts["evaluated"] += len(views)
        return real_call(self, views)

    C.open_image, R.HFGenerator.__call__ = open_counted, call_counted
    train(load_config(None, sys.argv[2:]))
    with open(os.path.join(out, f"counts{rank}.json"), "w") as f:
        json.dump(counts, f)
''')


def test_proposals_and_evaluation_shared_out_and_every_rank_rng_saved_and_restored(tmp_path, synth_dir):
    """Sampled rollouts over 2 ranks with label-free proposals and a held-out evaluation: each rank proposes half
    the records and evaluates half the prompts (no rank works alone while the others wait), every record is
    proposed once and as one process proposes it; the checkpoint holds both ranks' RNG states, which differ (each
    rank draws its own noise); a resumed run ends with the weights of the uninterrupted one."""
    from safetensors.torch import load_file

    from vision_opd.config import load_config
    from vision_opd.data.sources import load_train_records
    from vision_opd.models.loading import load_model
    from vision_opd.proposers import propose_with
    from vision_opd.training.checkpoint import load_trainer_state

    run = tmp_path / "sampled"
    args = _args(synth_dir, run, "rollout.do_sample=true", "views.teacher_source=proposer", "teacher.keep_fallback=true")
    script = tmp_path / "share.py"
    script.write_text(SHARE_SCRIPT)
    _torchrun([str(script), str(tmp_path), *args], module=False)
    cfg = load_config(None, args)
    records, _ = load_train_records(cfg.data, cfg.views)
    c0, c1 = (json.loads((tmp_path / f"counts{r}.json").read_text()) for r in (0, 1))
    assert (c0["proposed"], c1["proposed"]) == (6, 6), (c0, c1)  # 12 records, half each
    assert c0["evaluated"] == c1["evaluated"] == 12, (c0, c1)  # 12 held-out records x (full, crop), half each
    m = _metrics(run)[-1]
    assert m["eval_full_acc"] is not None and m["eval_crop_acc"] is not None
    cache = [json.loads(x) for x in (run / "proposals_attention.jsonl").read_text().splitlines()]
    assert sorted(c["id"] for c in cache) == sorted(r.id for r in records)  # each once, written by the main process
    model, proc = load_model(cfg.model, seed=cfg.train.seed)
    alone = propose_with(model, proc, records, "attention", cfg.views, progress=False)
    for c in cache:
        assert c["proposal"]["box"] == pytest.approx(list(alone[c["id"]].box)), c["id"]
    rng = load_trainer_state(run / "checkpoints" / "step_000002")["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    uninterrupted = load_file(str(run / "checkpoints" / "step_000003" / "model.safetensors"))
    shutil.rmtree(run / "checkpoints" / "step_000003")
    _torchrun(args, "--resume")
    resumed = load_file(str(run / "checkpoints" / "step_000003" / "model.safetensors"))
    for k, v in uninterrupted.items():
        torch.testing.assert_close(resumed[k], v, atol=1e-6, rtol=1e-6, msg=k)


RANK_SCRIPT = textwrap.dedent('''
    """Train with rank 1's loss made non-finite at step 1 (its gradient stays the same, finite one); record each rank's
    prompts per step, student forwards, rollouts and final weights."""
    import json, os, sys
    import vision_opd.training.loop as T
    import vision_opd.training.step as S
    from vision_opd.config import load_config

    rank, out = int(os.environ["RANK"]), sys.argv[1]
    real_step, real_mean = T.vision_opd_step, S.masked_token_mean
    seen = {"step": 0, "model": None, "rollouts": [], "prompts": [], "forwards": []}

    def step(cfg, ctx, records, *args, **kw):
        seen["step"] += 1
        seen["model"] = model = ctx.model
        calls = []
        hook = model.register_forward_pre_hook(lambda *a: calls.append(1))  # the student's forwards (DDP/FSDP wrapper)
        res = real_step(cfg, ctx, records, *args, **kw)
        hook.remove()
        seen["prompts"].append(len(records))
        seen["forwards"].append(len(calls))
        ro = res.rollout
        seen["rollouts"].append([ids[:int(m.sum())] for ids, m in zip(ro.response_ids_B_T.tolist(), ro.response_mask_B_T,
                                                                       strict=True)])  # each response, no padding
        return res

    def mean(values, mask, num_tokens):
        loss = real_mean(values, mask, num_tokens)
        return loss + float("inf") if rank == 1 and seen["step"] == 1 else loss

    T.vision_opd_step, S.masked_token_mean = step, mean
    T.train(load_config(None, sys.argv[2:]))
    params = {n: p.detach().double().sum().item() for n, p in seen["model"].named_parameters()}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({k: seen[k] for k in ("rollouts", "prompts", "forwards")} | {"params": params}, f)
''')


def test_ranks_run_alike_sample_their_own_noise_and_skip_a_nonfinite_step_together(tmp_path, synth_dir):
    """DDP, 3 prompts over 2 ranks: both ranks take 2 prompts (one a padding repeat) and run the same forwards. Every
    prompt is the same item, so ranks with one seed would sample the same responses. Rank 1 alone sees a non-finite
    loss at step 1: both ranks skip that step, and the replicas stay identical."""
    rows = [json.loads(x) for x in (synth_dir / "train.jsonl").read_text().splitlines()]
    same = synth_dir / "same_item.jsonl"  # same folder: image paths stay relative
    same.write_text("".join(json.dumps({**rows[0], "id": f"copy{i}"}) + "\n" for i in range(8)))
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    run = tmp_path / "run"
    _torchrun([str(script), str(tmp_path), *_args(synth_dir, run, f"data.train_file={same}", "rollout.do_sample=true",
                                                  "train.prompts_per_step=3", "train.steps=2", "train.eval_every=0",
                                                  "rollout.max_new_tokens=6")], module=False)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    problems = []  # every check reported at once: each names the defect it guards against
    if not (r0["prompts"] == r1["prompts"] == [2, 2] and r0["forwards"] == r1["forwards"]):
        problems.append(f"the ranks ran different work: prompts {r0['prompts']} / {r1['prompts']}, "
                        f"forwards {r0['forwards']} / {r1['forwards']}")
    n = min(len(r0["rollouts"][0]), len(r1["rollouts"][0]))
    if r0["rollouts"][0][:n] == r1["rollouts"][0][:n]:
        problems.append("the ranks drew the same sampling noise")
    skipped = [m["skipped"] for m in _metrics(run)]
    if skipped != [1, 0]:  # rank 0's own loss was finite: skipped all the same
        problems.append(f"skipped per step {skipped}, not [1, 0]")
    if r0["params"] != pytest.approx(r1["params"], rel=1e-12, abs=1e-12):
        problems.append("the replicas drifted apart")
    assert not problems, "; ".join(problems)


TIMEOUT_SCRIPT = textwrap.dedent('''
    import os, sys, time
    import torch.distributed as dist
    from vision_opd.config import load_config
    from vision_opd.training.distributed import make_accelerator

    out, timeout, busy = sys.argv[1], sys.argv[2], float(sys.argv[3])
    rank = int(os.environ["RANK"])
    open(f"{out}.ready{rank}", "w").close()  # start the process group together (the timeout also bounds its start)
    while not all(os.path.exists(f"{out}.ready{r}") for r in (0, 1)):
        time.sleep(0.05)
    cfg = load_config(None, [f"train.dist_timeout_s={timeout}", "train.device=cpu"])
    acc = make_accelerator(cpu=cfg.train.device == "cpu", timeout_s=cfg.train.dist_timeout_s)  # as train() does
    if rank == 1:
        time.sleep(busy)  # this rank is busy far longer than the timeout, then leaves
        os._exit(0)
    t0 = time.time()
    try:
        dist.barrier()
        outcome = "passed"
    except Exception as e:
        outcome = type(e).__name__
    with open(out, "w") as f:
        f.write(f"{outcome} {time.time() - t0:.1f}")
    os._exit(0)
''')


def test_process_group_timeout_is_the_config_key(tmp_path):
    """train.dist_timeout_s=2 reaches the process group: a rank waiting in a collective gives up after about 2 s
    (without it, 30 minutes) instead of waiting for a rank that is busy for 12 s."""
    script = tmp_path / "timeout.py"
    script.write_text(TIMEOUT_SCRIPT)
    _torchrun([str(script), str(tmp_path / "out.txt"), "2", "12"], module=False)
    outcome, seconds = (tmp_path / "out.txt").read_text().split()
    assert outcome != "passed" and float(seconds) < 8, (outcome, seconds)
