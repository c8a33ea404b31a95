"""Every sampled token coloured by the teacher's disagreement with the student.

    scale = TokenScale.of(samples)                 # one scale for the page, so colours compare across rollouts
    html = coloured_tokens(row["tokens"], row["token_kl"], row.get("student_logprob"), row.get("teacher_logprob"), scale)

Two colourings of the same spans (the page's toggle switches between them, CSS variables `--kl` / `--lr`):
- KL: white -> orange-red with the token's KL(S||T) over the vocabulary (samples.jsonl `token_kl`), linear,
  full colour at the page's 95th percentile (`TokenScale.kl_max`) and above.
- log-ratio: log p_T(y) - log p_S(y) of the sampled token y (samples.jsonl `teacher_logprob - student_logprob`):
  blue where the teacher finds the token more likely than the student (training pushes it up), red where less
  (pushed down), full colour at the 95th percentile of |log-ratio|.
Hovering a token shows its text, KL and both log-probs (`title`). Whitespace and control characters are made
visible (newline, tab, control pictures), special tokens such as `<|im_end|>` are drawn as small tags.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .document import esc

KL_RGB = (228, 87, 46)  # the colour of a token at the top of the KL scale
MORE_RGB = (33, 102, 172)  # the teacher finds the token more likely than the student
LESS_RGB = (215, 48, 31)  # ... less likely
_SPECIAL = re.compile(r"^<\|[^|<>]{1,40}\|>$|^<(/?)(think|tool_call|answer)>$")


@dataclass(frozen=True)
class TokenScale:
    kl_max: float  # KL at full colour
    ratio_max: float  # |log p_T - log p_S| at full colour

    @staticmethod
    def of(rows: Iterable[dict]) -> "TokenScale":
        """The 95th percentiles over every token of `rows` (samples with token_kl and, optionally, the log-probs)."""
        kl, ratio = [], []
        for r in rows:
            kl.extend(_finite(r.get("token_kl") or []))
            lps, lpt = r.get("student_logprob"), r.get("teacher_logprob")
            if lps is not None and lpt is not None and len(lps) == len(lpt):  # an inconsistent row is shown uncoloured
                ratio.extend(abs(t - s) for s, t in zip(lps, lpt, strict=True) if math.isfinite(t - s))
        return TokenScale(kl_max=_p95(kl), ratio_max=_p95(ratio))


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _p95(values: list[float]) -> float:
    return max(float(np.percentile(values, 95)), 1e-6) if values else 1.0


def _mix(rgb: tuple[int, int, int], weight: float) -> str:
    """White mixed with `rgb` by `weight` in [0, 1], as #rrggbb."""
    w = max(0.0, min(1.0, weight)) if math.isfinite(weight) else 1.0
    return "#" + "".join(f"{round(255 + (c - 255) * w):02x}" for c in rgb)


def kl_colour(kl: float | None, scale: TokenScale) -> str:
    """The KL colouring of one token (grey when the value is missing or not finite)."""
    if kl is None or not math.isfinite(kl):
        return "#d0d4da"
    return _mix(KL_RGB, kl / scale.kl_max)


def ratio_colour(student_logprob: float | None, teacher_logprob: float | None, scale: TokenScale) -> str:
    """The log-ratio colouring of one token: blue when log p_T > log p_S, red when lower, white when equal."""
    if student_logprob is None or teacher_logprob is None or not math.isfinite(teacher_logprob - student_logprob):
        return "#d0d4da"
    d = teacher_logprob - student_logprob
    return _mix(MORE_RGB if d > 0 else LESS_RGB, abs(d) / scale.ratio_max)


def visible(token: str) -> tuple[str, str]:
    """(text to show, css class): newlines and tabs marked, control characters as control pictures."""
    if _SPECIAL.match(token):
        return token, "special"
    out, ctrl = [], False
    for ch in token:
        code = ord(ch)
        if ch == "\n":
            out.append("↵\n")
        elif ch == "\t":
            out.append("⇥")
        elif code < 32:
            out.append(chr(0x2400 + code))
            ctrl = True
        elif code == 127:
            out.append("␡")
            ctrl = True
        else:
            out.append(ch)
    return "".join(out) or "∅", "ctrl" if ctrl else ""


def _num(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}" if math.isfinite(v) else str(v)


def coloured_tokens(tokens: Sequence[str], token_kl: Sequence[float], student_logprob: Sequence[float] | None,
                    teacher_logprob: Sequence[float] | None, scale: TokenScale) -> str:
    """One span per token, coloured by both schemes; data-kl / data-lps / data-lpt hold the values shown."""
    n = len(tokens)
    lps = list(student_logprob) if student_logprob is not None else [None] * n
    lpt = list(teacher_logprob) if teacher_logprob is not None else [None] * n
    kls = list(token_kl) if token_kl is not None else [None] * n
    if not (len(kls) == len(lps) == len(lpt) == n):
        return f'<div class="warn">{n} tokens but {len(kls)} KL values: the row is inconsistent, shown uncoloured</div>' \
               f'<div class="text">{esc("".join(tokens))}</div>'
    spans = []
    for tok, kl, s, t in zip(tokens, kls, lps, lpt, strict=True):
        text, cls = visible(tok)
        title = f"{tok!r}  KL {_num(kl, 4)}  log p_S {_num(s)}  log p_T {_num(t)}"
        if s is not None and t is not None:
            title += f"  (log p_T - log p_S {_num(t - s)})"
        data = f' data-kl="{kl}"' + (f' data-lps="{s}" data-lpt="{t}"' if s is not None else "")
        spans.append(f'<span class="tok {cls}" style="--kl:{kl_colour(kl, scale)};--lr:{ratio_colour(s, t, scale)}"'
                     f'{data} title="{esc(title)}">{esc(text)}</span>')
    return '<div class="tokens">' + "".join(spans) + "</div>"


def legend(scale: TokenScale, has_logprobs: bool) -> str:
    """The colour key and the toggle between the two colourings."""
    toggle = ('<button data-colour="kl" class="on">colour by KL</button>'
              '<button data-colour="ratio">colour by log p_T − log p_S</button>') if has_logprobs else ""
    return (f'<div class="legend">{toggle}'
            f'<span class="kl-only">KL(student ‖ teacher) per token: 0 <span class="ramp kl"></span> '
            f'≥ {scale.kl_max:.3g} (95th percentile on this page)</span>'
            f'<span class="lr-only">teacher less likely ≤ −{scale.ratio_max:.3g} <span class="ramp lr"></span> '
            f'≥ +{scale.ratio_max:.3g} teacher more likely</span>'
            '<span>· hover a token for its values</span></div>')
