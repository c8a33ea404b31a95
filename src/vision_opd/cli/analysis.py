"""`vision-opd inspect RUN [RUN ...]`: where the divergence concentrates, from the runs' token dumps."""

from __future__ import annotations


def _steps(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    lo, sep, hi = text.partition(":")
    try:
        return (int(lo) if lo else 0, int(hi) if hi else 10**12) if sep else (int(lo), int(lo))
    except ValueError:
        raise SystemExit(f"--steps {text!r}: expected FROM:TO (either may be empty) or one step, e.g. 100:200") from None


def cmd_inspect(args) -> int:
    from ..training.token_analysis import inspect_runs

    try:
        inspect_runs(args.runs, value=args.value, steps=_steps(args.steps), out=args.out)
    except ValueError as e:
        raise SystemExit(f"vision-opd inspect: {e}") from None
    return 0


def add_parsers(sub) -> None:
    i = sub.add_parser("inspect", help="where the divergence concentrates in a run's token dump (tokens.jsonl)",
                       description="Tables and a plot of the per-token divergence of runs trained with "
                       "train.dump_tokens_every > 0: by position, by the student's probability of the token, answer "
                       "tokens vs the others (and student vs teacher responses when mixed).")
    i.add_argument("runs", nargs="+", help="run folders holding tokens.jsonl")
    i.add_argument("--value", default="divergence", choices=["divergence", "reverse_kl"],
                   help="per-token value to break down: the loss value (default) or KL(S||T) at the position")
    i.add_argument("--steps", default=None, help="only dumps in this step range, FROM:TO (inclusive)")
    i.add_argument("--out", default=None, help="where inspect.json and inspect.png go (default: the first run)")
    i.set_defaults(func=cmd_inspect)
