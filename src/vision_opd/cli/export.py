"""`vision-opd export`: a training checkpoint as a plain Hugging Face folder (LoRA merged), for eval and serving."""

from __future__ import annotations

from pathlib import Path


def cmd_export(args) -> int:
    import shutil

    from ..data.folder_lock import folder_lock
    from ..data.writes import WriteFailed, writing
    from ..models.export import MARKER, export_checkpoint, serve_commands

    out = Path(args.out)
    # the export folder is replaced whole, so its lock sits beside it
    with folder_lock(out, "export", path=out.with_name(f".{out.name}.vision-opd.lock"), break_lock=args.break_lock):
        try:
            with writing("the export", out):
                info = export_checkpoint(args.checkpoint, out, merge=args.merge, dtype=args.dtype)
        except WriteFailed as e:
            if out.is_dir() and not (out / MARKER).is_file():  # a partial export (its marker is written last)
                shutil.rmtree(out, ignore_errors=True)
            e.note = f"the partial export was removed; {args.checkpoint} is untouched"
            raise
    if info["kind"] == "lora" and not info["merged"]:
        print(f"wrote the adapter of {args.checkpoint} to {args.out} (base model {info['base_model']}); add --merge for a "
              "full model folder")
    else:
        what = "merged base + adapter" if info["merged"] else "the full model"
        if info["kind"] == "full" and args.merge:
            what += " (a full fine-tuning checkpoint: nothing to merge)"
        print(f"wrote {what} to {args.out}: load it with from_pretrained, evaluate it with `vision-opd eval --model "
              f"{args.out}`; serve it (OpenAI-compatible, then `vision-opd eval --backend openai --api-base "
              f"http://127.0.0.1:8000/v1 --model {Path(args.out).name}`) with:")
        for line in serve_commands(args.out):
            print(f"  {line}")
    return 0


def add_parsers(sub) -> None:
    e = sub.add_parser("export", help="write a checkpoint as a plain Hugging Face model folder (LoRA: merged with --merge)",
                       description="Write a training checkpoint (RUN/checkpoints/step_NNNNNN) as a Hugging Face model "
                       "folder: weights, config, generation config, processor and chat template under the stock class "
                       "names, nothing of the trainer. A LoRA checkpoint is merged into its base model with --merge "
                       "(the folder `from_pretrained` loads and `vllm serve` serves); without --merge it is written as "
                       "an adapter folder naming its base. See docs/real-models.md.")
    e.add_argument("checkpoint", help="a checkpoint folder, e.g. runs/NAME/checkpoints/step_000390")
    e.add_argument("--out", required=True, help="the folder to write (new, or an earlier export, which is replaced)")
    e.add_argument("--merge", action="store_true", help="LoRA: merge the adapter into the base weights")
    e.add_argument("--break-lock", action="store_true", help="take over the --out folder's lock held by a process on "
                   "another host that you know is gone")
    e.add_argument("--dtype", default=None, help="save the weights in this dtype (float32, bfloat16, float16; default: "
                   "as trained)")
    e.set_defaults(func=cmd_export)
