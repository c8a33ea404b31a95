"""Peak host memory of a training run does not grow with the dataset: Records hold paths, images are
decoded per batch by the views.

    python perf/bench_data_memory.py                 # 100 vs 10,000 records, validate_images false/true
    python perf/bench_data_memory.py --sizes 100 2000 --cache /tmp/vopd_mem

For each dataset size and each data.validate_images setting, a fresh `python -m vision_opd.cli train`
(tiny:qwen2_5_vl, 5 steps) runs as a child process. Its peak resident set size is read two ways:
  VmHWM  the kernel's high-water mark of the child's own address space (/proc/PID/status, polled every
         20 ms until it exits; reset by exec, so nothing of this script is counted),
  ru_maxrss  from `os.wait4` for that child. Linux carries the pre-exec high-water mark of the forked copy
         of this script into it, so this script stays small: the datasets are generated in a subprocess.
A third column is what the loaded Records themselves take (tracemalloc in a separate process).
The synthetic datasets (`write_synthetic`, small canvases) are generated once into the cache folder and
reused. Prints a table and the largest/smallest peak ratio per setting; the claim holds when it is under
1.10. Results: docs/data.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

def dataset(cache: Path, n: int, seed: int = 0) -> Path:
    """`cache/n{n}/train.jsonl`, generated on first use in a subprocess (write_synthetic holds every image
    of the set until it returns; generated here it would inflate the children's ru_maxrss, see above)."""
    final = cache / f"n{n}"
    if not (final / "train.jsonl").is_file():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--generate", str(final), str(n), str(seed)], check=True)
        print(f"generated {n} records in {time.perf_counter() - t0:.0f} s: {final}", flush=True)
    return final / "train.jsonl"


def _generate(final: Path, n: int, seed: int) -> None:
    from vision_opd.demo.world import WorldConfig, write_synthetic

    world = WorldConfig(canvas=112, target_size=14, distractors=4)  # small PNGs: 10,000 of them in under a minute
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.", dir=final.parent))
    write_synthetic(tmp, n, seed, world, name="train.jsonl")
    os.replace(tmp, final)  # image paths are stored relative to the jsonl, so the folder can be renamed


def records_footprint_mb(train_file: Path) -> float:
    """Python memory held by the loaded Records (tracemalloc, in a fresh process)."""
    code = ("import gc, sys, tracemalloc; from vision_opd.data.sources import load_source; tracemalloc.start(); "
            "r = load_source(sys.argv[1]); held = tracemalloc.get_traced_memory()[0]; del r; gc.collect(); "
            "print((held - tracemalloc.get_traced_memory()[0]) / 2**20)")
    return float(subprocess.run([sys.executable, "-c", code, str(train_file)], check=True, capture_output=True,
                                text=True).stdout.split()[-1])


def _vmhwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run_train(train_file: Path, out_dir: Path, *, steps: int, validate_images: bool) -> tuple[float, float, float, str]:
    """(VmHWM MB, ru_maxrss MB, wall seconds, command) of one training run in a fresh child process."""
    cmd = [sys.executable, "-m", "vision_opd.cli", "train", "model.name_or_path=tiny:qwen2_5_vl", "model.tiny_image_size=112",
           f"data.train_file={train_file}", "data.synth_if_missing=false", f"data.validate_images={str(validate_images).lower()}",
           f"train.steps={steps}", "train.progress=false", "train.prompts_per_step=4", "train.micro_batch_size=8",
           "rollout.samples_per_prompt=2", "rollout.max_new_tokens=8", "train.sample_every=0", "train.save_every=0",
           "train.keep_last=1", "views.teacher_pixels=12544", f"train.out_dir={out_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = out_dir.with_suffix(".log")
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    hwm = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # ru_maxrss: KiB on Linux
        if pid:
            break
        hwm = max(hwm, _vmhwm_kib(proc.pid) or 0)  # monotone while the process lives
        time.sleep(0.02)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"training run failed ({proc.returncode}):\n{' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return hwm / 1024, usage.ru_maxrss / 1024, seconds, " ".join(cmd[1:])


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--generate":
        return _generate(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 10_000])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "vision_opd" / "bench_data_memory")
    ap.add_argument("--validate", choices=["false", "true", "both"], default="both")
    args = ap.parse_args()
    files = {n: dataset(args.cache, n) for n in args.sizes}
    held = {n: records_footprint_mb(f) for n, f in files.items()}
    settings = {"false": [False], "true": [True], "both": [False, True]}[args.validate]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_data_memory.") as runs:
        for validate in settings:
            for n, f in files.items():
                hwm, maxrss, s, cmd = run_train(f, Path(runs) / f"n{n}_{validate}", steps=args.steps, validate_images=validate)
                rows.append((validate, n, hwm, maxrss, s))
                print(f"  validate_images={str(validate).lower():5s} records {n:>6}: VmHWM {hwm:6.0f} MB, "
                      f"ru_maxrss {maxrss:6.0f} MB, {s:5.1f} s", flush=True)
    print(f"\ncommand (one run): python {cmd}\n")
    print("| data.validate_images | records | Records in memory (MB) | peak RSS, VmHWM (MB) | peak RSS, ru_maxrss (MB) | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    for validate, n, hwm, maxrss, s in rows:
        print(f"| {str(validate).lower()} | {n:,} | {held[n]:.1f} | {hwm:.0f} | {maxrss:.0f} | {s:.1f} |")
    for validate in settings:
        peaks = [hwm for v, _, hwm, _, _ in rows if v == validate]
        ratio = max(peaks) / min(peaks)
        verdict = "ok (< 1.10)" if ratio < 1.10 else "GROWS with the dataset (>= 1.10)"
        print(f"validate_images={str(validate).lower()}: peak RSS (VmHWM) ratio largest/smallest = {ratio:.3f}  {verdict}")


if __name__ == "__main__":
    main()
