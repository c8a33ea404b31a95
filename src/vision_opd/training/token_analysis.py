"""Where the divergence concentrates: the tables and the plot of `vision-opd inspect RUN`, from RUN/tokens.jsonl.

    vision-opd inspect runs/my_run                      # tables on stdout, runs/my_run/inspect.png, inspect.json
    vision-opd inspect runs/a runs/b --steps 100:200    # several runs side by side, a range of steps

Every dumped response token (token_dump.py) is one observation with its loss value (`--value divergence`, the
default; `reverse_kl` for the KL(S||T) at that position, e.g. when the loss is the sampled-token surrogate). Three
breakdowns, each giving per bin the share of the tokens, the mean value and the share of the total value:

- by position in the response (0, 1, 2-3, 4-7, ...: powers of two);
- by the student's probability of the token (log-prob bins): does the divergence sit on the tokens the student
  found unlikely (as reported for OPD gains) or on the confident ones?
- answer tokens (inside the final answer's span) vs the other tokens;
and, when the run mixes token sources (`rollout.source=mix`), student vs teacher responses.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .token_dump import read_token_rows

# student probability bins of the sampled token, as (label, lower bound of p)
PROB_BINS = (("p >= 0.9", 0.9), ("0.5 <= p < 0.9", 0.5), ("0.1 <= p < 0.5", 0.1), ("0.01 <= p < 0.1", 0.01),
             ("p < 0.01", 0.0))


@dataclass
class Observation:
    position: int
    student_logprob: float
    value: float
    in_answer: bool
    source: str


def in_steps(rows: list[dict], steps: tuple[int, int] | None) -> list[dict]:
    """The rows of the dumps in an inclusive step range (None = all)."""
    return [r for r in rows if steps is None or steps[0] <= r["step"] <= steps[1]]


def observations(rows: list[dict], value: str = "divergence") -> list[Observation]:
    """Flatten tokens.jsonl rows into per-token observations."""
    out = []
    for row in rows:
        for i, (lp, v, a) in enumerate(zip(row["student_logprob"], row[value], row["in_answer"], strict=True)):
            out.append(Observation(i, lp, v, bool(a), row.get("source", "student")))
    return out


def position_bin(position: int) -> str:
    if position < 2:
        return str(position)
    lo = 2 ** int(math.log2(position))
    return f"{lo}-{2 * lo - 1}"


def prob_bin(logprob: float) -> str:
    p = math.exp(logprob)
    return next(label for label, lower in PROB_BINS if p >= lower)


def breakdown(obs: list[Observation], key) -> list[dict]:
    """Per bin of `key(obs)`: tokens, share of tokens, mean value, share of the total value (bins as first seen)."""
    total_n, total_v = len(obs), sum(o.value for o in obs)
    groups: dict[str, list[float]] = {}
    for o in obs:
        groups.setdefault(key(o), []).append(o.value)
    return [{"bin": k, "tokens": len(v), "token_share": len(v) / max(1, total_n), "mean": sum(v) / len(v),
             "value_share": sum(v) / total_v if total_v else 0.0} for k, v in groups.items()]


def analyse(rows: list[dict], value: str = "divergence", steps: tuple[int, int] | None = None) -> dict:
    """The three breakdowns (and by source when mixed) of one run's dump."""
    rows = in_steps(rows, steps)
    obs = observations(rows, value)
    if not obs:
        raise ValueError("no dumped tokens in that range: was the run trained with train.dump_tokens_every > 0?")
    by_pos = sorted(breakdown(obs, lambda o: position_bin(o.position)),
                    key=lambda r: int(r["bin"].split("-")[0]))
    by_prob = _every_bin(breakdown(obs, lambda o: prob_bin(o.student_logprob)), [label for label, _ in PROB_BINS])
    by_answer = _every_bin(breakdown(obs, lambda o: "answer" if o.in_answer else "other"), ["answer", "other"])
    out = {"value": value, "tokens": len(obs), "responses": len(rows), "steps": sorted({r["step"] for r in rows}), "mean": sum(o.value for o in obs) / len(obs),
           "by_position": by_pos, "by_student_prob": by_prob, "answer_vs_other": by_answer}
    if len({o.source for o in obs}) > 1:
        out["by_source"] = breakdown(obs, lambda o: o.source)
    return out


def _every_bin(rows: list[dict], order: list[str]) -> list[dict]:
    """The rows in `order`, with empty bins as zero rows (so runs line up bin by bin)."""
    have = {r["bin"]: r for r in rows}
    return [have.get(k, {"bin": k, "tokens": 0, "token_share": 0.0, "mean": 0.0, "value_share": 0.0}) for k in order]


def table(title: str, rows: list[dict]) -> str:
    lines = [f"{title}", "| bin | tokens | share of tokens | mean value | share of the value |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['bin']} | {r['tokens']} | {r['token_share']:.3f} | {r['mean']:.4f} | {r['value_share']:.3f} |"
              for r in rows]
    return "\n".join(lines)


def report(run: str | Path, result: dict) -> str:
    parts = [f"## {run}: {result['tokens']} tokens of {result['responses']} responses, steps "
             f"{result['steps'][0]}-{result['steps'][-1]} ({len(result['steps'])} dumps); mean {result['value']} "
             f"{result['mean']:.4f}",
             table("by position in the response", result["by_position"]),
             table("by the student's probability of the token", result["by_student_prob"]),
             table("answer tokens vs the others", result["answer_vs_other"])]
    if "by_source" in result:
        parts.append(table("by who wrote the response", result["by_source"]))
    return "\n\n".join(parts)


def plot(path: str | Path, results: dict[str, dict]) -> None:
    """Bars of the share of tokens and the share of the value, per bin, for each breakdown and run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = (("by_position", "position in the response"), ("by_student_prob", "student probability of the token"),
            ("answer_vs_other", "answer span"))
    fig, axes = plt.subplots(len(results), 3, figsize=(14, 3.6 * len(results)), squeeze=False)
    for row_axes, (run, res) in zip(axes, results.items(), strict=True):
        for ax, (key, title) in zip(row_axes, keys, strict=True):
            bins = res[key]
            x = range(len(bins))
            ax.bar([i - 0.2 for i in x], [b["token_share"] for b in bins], width=0.4, label="share of tokens")
            ax.bar([i + 0.2 for i in x], [b["value_share"] for b in bins], width=0.4, label=f"share of {res['value']}")
            ax.set_xticks(list(x), [b["bin"] for b in bins], rotation=30, fontsize=7)
            ax.set_title(f"{Path(run).name}: {title}", fontsize=9)
            ax.grid(alpha=0.3, axis="y")
        row_axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def inspect_runs(runs: list[str | Path], *, value: str = "divergence", steps: tuple[int, int] | None = None,
                 out: str | Path | None = None) -> dict[str, dict]:
    """Analyse each run's tokens.jsonl, print the tables, write inspect.json and inspect.png (into `out`, default the
    first run's folder). Raises ValueError with the fix when a run has no dump."""
    results = {}
    for run in runs:
        path = Path(run) / "tokens.jsonl"
        if not path.is_file():
            raise ValueError(f"{path} not found: train with train.dump_tokens_every=N to write the token dump")
        results[str(run)] = analyse(read_token_rows(path), value, steps)
        print(report(run, results[str(run)]) + "\n")
    out = Path(out or runs[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "inspect.json").write_text(json.dumps(results, indent=1))
    plot(out / "inspect.png", results)
    print(f"[inspect] wrote {out / 'inspect.json'} and {out / 'inspect.png'}")
    return results
