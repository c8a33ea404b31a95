"""Every sampled token coloured by the teacher's disagreement with the student.

    scale = TokenScale.of(samples)                 # one scale for the page, so colours compare across rollouts
    html = coloured_tokens(row["tokens"], row["token_kl"], row.get("student_logprob"), row.get("teacher_logprob"), scale)

Two colourings of the same spans (the page's toggle switches between them, CSS variables `--kl` / `--lr`), each in
LEVELS = 20 linear steps (a class per step, so a long rollout costs about 100 bytes a token):
- KL: white -> orange-red with the token's KL(S||T) over the vocabulary (samples.jsonl `token_kl`), step
  round(20 * min(1, KL / kl_max)), full colour at the page's 95th percentile (`TokenScale.kl_max`) and above.
- log-ratio: d = log p_T(y) - log p_S(y) of the sampled token y (samples.jsonl `teacher_logprob - student_logprob`):
  step round(20 * clip(d / ratio_max, -1, 1)), blue where the teacher finds the token more likely than the student
  (training pushes it up), red where less likely (pushed down), ratio_max = the 95th percentile of |d|.
- weight (runs with a negative teacher view, samples.jsonl `weight`): white -> green with the token's loss weight
  (`loss.weighting`), step round(20 * min(1, w / weight_max)), weight_max = the 95th percentile of the weights.
Hovering a token shows its text, KL and both log-probs (the page's script reads the data-* attributes).
Whitespace and control characters are made visible (newline, tab, control pictures), special tokens such as
`<|im_end|>` are drawn as small tags.
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
WEIGHT_RGB = (26, 152, 80)  # a token at the top of the weight scale
_SPECIAL = re.compile(r"^<\|[^|<>]{1,40}\|>$|^<(/?)(think|tool_call|answer)>$")
LEVELS = 20  # colour steps from white to full colour (per sign for the log-ratio)


@dataclass(frozen=True)
class TokenScale:
    kl_max: float  # KL at full colour
    ratio_max: float  # |log p_T - log p_S| at full colour
    weight_max: float = 1.0  # the loss weight at full colour (negative teacher views)

    @staticmethod
    def of(rows: Iterable[dict]) -> "TokenScale":
        """The 95th percentiles over every token of `rows` (samples with token_kl and, optionally, the log-probs)."""
        kl, ratio, weight = [], [], []
        for r in rows:
            kl.extend(_finite(r.get("token_kl") or []))
            weight.extend(_finite(r.get("weight") or []))
            lps, lpt = r.get("student_logprob"), r.get("teacher_logprob")
            if lps is not None and lpt is not None and len(lps) == len(lpt):  # an inconsistent row is shown uncoloured
                ratio.extend(abs(t - s) for s, t in zip(lps, lpt, strict=True) if math.isfinite(t - s))
        return TokenScale(kl_max=_p95(kl), ratio_max=_p95(ratio), weight_max=_p95(weight))


def _finite(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _p95(values: list[float]) -> float:
    return max(float(np.percentile(values, 95)), 1e-6) if values else 1.0


def _mix(rgb: tuple[int, int, int], weight: float) -> str:
    """White mixed with `rgb` by `weight` in [0, 1], as #rrggbb."""
    w = max(0.0, min(1.0, weight))
    return "#" + "".join(f"{round(255 + (c - 255) * w):02x}" for c in rgb)


def kl_level(kl: float | None, scale: TokenScale) -> int | None:
    """The KL colour step of one token, 0 (white) .. LEVELS (full colour); None when missing or not finite."""
    if kl is None or not math.isfinite(kl):
        return None
    return round(LEVELS * max(0.0, min(1.0, kl / scale.kl_max)))


def ratio_level(student_logprob: float | None, teacher_logprob: float | None, scale: TokenScale) -> int | None:
    """The log-ratio colour step, -LEVELS (teacher far less likely, red) .. +LEVELS (far more likely, blue)."""
    if student_logprob is None or teacher_logprob is None or not math.isfinite(teacher_logprob - student_logprob):
        return None
    d = teacher_logprob - student_logprob
    return round(LEVELS * max(-1.0, min(1.0, d / scale.ratio_max)))


def weight_level(weight: float | None, scale: TokenScale) -> int | None:
    """The weight colour step, 0 (weight 0, white) .. LEVELS (full colour); None when missing or not finite."""
    if weight is None or not math.isfinite(weight):
        return None
    return round(LEVELS * max(0.0, min(1.0, weight / scale.weight_max)))


def colour_css() -> str:
    """The classes of the colour steps: .kN sets --kl, .rN / .r-N set --lr, .wN --w (missing values: .kx / .rx / .wx,
    grey)."""
    rules = [f".k{i}{{--kl:{_mix(KL_RGB, i / LEVELS)}}}" for i in range(LEVELS + 1)]
    rules += [f".w{i}{{--w:{_mix(WEIGHT_RGB, i / LEVELS)}}}" for i in range(LEVELS + 1)]
    rules += [f".r{i}{{--lr:{_mix(MORE_RGB if i > 0 else LESS_RGB, abs(i) / LEVELS)}}}" for i in range(-LEVELS, LEVELS + 1)]
    return "".join(rules) + ".kx{--kl:#d0d4da}.rx{--lr:#d0d4da}.wx{--w:#d0d4da}"


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


def coloured_tokens(tokens: Sequence[str], token_kl: Sequence[float], student_logprob: Sequence[float] | None,
                    teacher_logprob: Sequence[float] | None, scale: TokenScale, weight: Sequence[float] | None = None) -> str:
    """One span per token: its colour steps as classes (`colour_css`), its values as data-kl / data-lps / data-lpt
    (and data-w with `weight`, a negative view's loss weights; the page's script shows them on hover)."""
    n = len(tokens)
    lps = list(student_logprob) if student_logprob is not None else [None] * n
    lpt = list(teacher_logprob) if teacher_logprob is not None else [None] * n
    kls = list(token_kl) if token_kl is not None else [None] * n
    ws = list(weight) if weight is not None and len(weight) == n else [None] * n
    if not (len(kls) == len(lps) == len(lpt) == n):
        return f'<div class="warn">{n} tokens but {len(kls)} KL values: the row is inconsistent, shown uncoloured</div>' \
               f'<div class="text">{esc("".join(tokens))}</div>'
    spans = []
    for tok, kl, s, t, w in zip(tokens, kls, lps, lpt, ws, strict=True):
        text, cls = visible(tok)
        k, r, g = kl_level(kl, scale), ratio_level(s, t, scale), weight_level(w, scale)
        classes = f"tok k{'x' if k is None else k} r{'x' if r is None else r}" + (f" w{g}" if g is not None else "")
        classes += f" {cls}" if cls else ""
        data = f' data-kl="{kl}"' + (f' data-lps="{s}" data-lpt="{t}"' if s is not None else "")
        data += f' data-w="{w}"' if w is not None else ""
        spans.append(f'<span class="{classes}"{data}>{esc(text)}</span>')
    return '<div class="tokens">' + "".join(spans) + "</div>"


def legend(scale: TokenScale, has_logprobs: bool, has_weights: bool = False) -> str:
    """The colour key and the toggle between the colourings (by weight too, `has_weights`: a negative view's run)."""
    toggle = ('<button data-colour="kl" class="on">colour by KL</button>'
              '<button data-colour="ratio">colour by log p_T − log p_S</button>') if has_logprobs else ""
    if has_weights:
        toggle += '<button data-colour="weight">colour by loss weight</button>'
    return (f'<div class="legend">{toggle}'
            f'<span class="kl-only">KL(student ‖ teacher) per token: 0 <span class="ramp kl"></span> '
            f'≥ {scale.kl_max:.3g} (95th percentile on this page)</span>'
            f'<span class="lr-only">teacher less likely ≤ −{scale.ratio_max:.3g} <span class="ramp lr"></span> '
            f'≥ +{scale.ratio_max:.3g} teacher more likely</span>'
            + (f'<span class="w-only">loss weight per token: 0 <span class="ramp w"></span> ≥ {scale.weight_max:.3g}</span>'
               if has_weights else "") +
            '<span>· hover a token for its values</span></div>')
