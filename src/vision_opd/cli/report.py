"""`vision-opd report PATH [--out FILE]`: the page of a training run, an eval or a gap folder, or the demo's."""

from __future__ import annotations

import sys


def cmd_report(args) -> int:
    from ..report import Limits, ReportError, build_report, folder_kind

    try:
        limits = Limits(max_steps=args.max_steps, max_rollouts=args.max_rollouts, max_items=args.max_items)
        kind = folder_kind(args.path)
        out = build_report(args.path, args.out, limits)
    except (ReportError, ValueError) as e:
        print(f"vision-opd: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({kind} page, {out.stat().st_size / 1e6:.2f} MB, self-contained: open it in any browser)")
    return 0


def add_parsers(sub) -> None:
    from pathlib import Path

    from ..report import Limits

    d = Limits()
    r = sub.add_parser("report", help="one self-contained HTML page for a run, eval, gap or demo folder",
                       description="Build one self-contained HTML page (plots and images embedded, no network) from "
                       "an output folder: a training run (curves; rollouts with both views and every token coloured by "
                       "the teacher's disagreement), an eval folder (accuracy, failures, a filterable gallery), a gap "
                       "folder (views, paired differences, the items the views disagree on) or the demo's. It reads "
                       "the folder's files and never loads a model.")
    r.add_argument("path", type=Path, help="the folder (train.out_dir, or the --out of eval / gap / demo)")
    r.add_argument("--out", type=Path, default=None, help="the HTML file to write (default: PATH/report.html)")
    r.add_argument("--max-steps", type=int, default=d.max_steps, help="training run: steps whose rollouts are shown")
    r.add_argument("--max-rollouts", type=int, default=d.max_rollouts, help="training run: rollouts shown in all")
    r.add_argument("--max-items", type=int, default=d.max_items, help="eval / gap / demo: items per gallery")
    r.set_defaults(func=cmd_report)
