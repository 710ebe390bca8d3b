"""The diffusion section's summary, in Markdown, from its rows alone: mean perplexity, distinct-2 and tokens per
forward per prompt set x model x strategy x T; a line per goal of issue 24, met or not with its figure; and a
masked LM's training curve (diffusion.json) thinned to a table, for assets/models/README.md.

    python -c "from engines.analysis.diffusion_tables import curve_markdown; \\
               print(curve_markdown('assets/models/smollm2-135m-diffusion'))"
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engines.models import presets

AUTOREGRESSIVE = "ar:greedy"
GOAL_STRATEGY = "diffusion"   # the goals are read on LLaDA-style diffusion, as issue 13's table was


@dataclass(frozen=True)
class Goals:
    """Issue 24's goals: at T = span (one token per forward) and T = span / 4, and for threshold 0.9."""
    full_ppl: float = 6.0
    full_distinct2: float = 0.70
    quarter_ppl: float = 15.0
    quarter_distinct2: float = 0.60
    threshold_tokens_per_forward: float = 1.5
    threshold_ppl_ratio: float = 1.2   # threshold's perplexity at most this times T = span's


def mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if known else None


def summary(rows: Sequence[dict]) -> list[dict]:
    """The scored rows (those with a perplexity field) grouped by prompt set, model and method, in first-seen
    order: means over the prompts of perplexity, distinct-2 and tokens per forward."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "gen_ppl" in r:
            groups.setdefault((r.get("prompt_set", ""), r["target"], r["method"]), []).append(r)
    return [{"prompt_set": s, "target": t, "method": m, "strategy": rs[0].get("strategy", "autoregressive"),
             "T": rs[0].get("T"), "prompts": len(rs), "gen_ppl": mean([r["gen_ppl"] for r in rs]),
             "distinct2": mean([r["distinct2"] for r in rs]),
             "tokens_per_forward": mean([r["tokens_per_forward"] for r in rs])}
            for (s, t, m), rs in groups.items()]


def cell(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def summary_markdown(rows: Sequence[dict]) -> str:
    """One Markdown row per prompt set x model x strategy x T."""
    lines = ["| prompts | model | strategy | T | prompts run | gen. perplexity | distinct-2 | tokens per forward |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for s in summary(rows):
        strategy = s["method"].removeprefix("dlm:").split(" T=")[0]
        lines.append(f"| {s['prompt_set']} | {s['target']} | {strategy} | {s['T'] or '–'} | {s['prompts']} | "
                     f"{cell(s['gen_ppl'])} | {cell(s['distinct2'])} | {cell(s['tokens_per_forward'])} |")
    return "\n".join(lines)


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def goal_lines(rows: Sequence[dict], span: int, goals: Goals = Goals()) -> list[str]:
    """For each masked model and prompt set: the three goals, each met or not with the figures, read on
    GOAL_STRATEGY at T = span and T = span / 4 and on threshold 0.9; a goal whose rows are missing says so."""
    found = {(s["prompt_set"], s["target"], s["method"]): s for s in summary(rows)}
    pairs = list(dict.fromkeys((p, t) for p, t, m in found if m != AUTOREGRESSIVE))
    lines = []
    for prompt_set, target in pairs:
        full, quarter, tau = (found.get((prompt_set, target, method)) for method in (
            f"dlm:{GOAL_STRATEGY} T={span}", f"dlm:{GOAL_STRATEGY} T={span // 4}", "dlm:threshold 0.9"))
        where = f"{target} on the {prompt_set} prompts"
        if full and full["gen_ppl"] is not None:
            ok = full["gen_ppl"] <= goals.full_ppl and full["distinct2"] >= goals.full_distinct2
            lines.append(f"goal {where}, {GOAL_STRATEGY} T={span}: perplexity <= {goals.full_ppl:g} and distinct-2 "
                         f">= {goals.full_distinct2:.2f}: {verdict(ok)} ({full['gen_ppl']:.2f}, "
                         f"{full['distinct2']:.2f})")
        else:
            lines.append(f"goal {where}, {GOAL_STRATEGY} T={span}: not measured")
        if quarter and quarter["gen_ppl"] is not None:
            ok = quarter["gen_ppl"] <= goals.quarter_ppl and quarter["distinct2"] >= goals.quarter_distinct2
            lines.append(f"goal {where}, {GOAL_STRATEGY} T={span // 4}: perplexity <= {goals.quarter_ppl:g} and "
                         f"distinct-2 >= {goals.quarter_distinct2:.2f}: {verdict(ok)} ({quarter['gen_ppl']:.2f}, "
                         f"{quarter['distinct2']:.2f})")
        else:
            lines.append(f"goal {where}, {GOAL_STRATEGY} T={span // 4}: not measured")
        if tau and full and tau["gen_ppl"] is not None and full["gen_ppl"] is not None:
            bound = goals.threshold_ppl_ratio * full["gen_ppl"]
            ok = tau["tokens_per_forward"] >= goals.threshold_tokens_per_forward and tau["gen_ppl"] <= bound
            lines.append(f"goal {where}, threshold 0.9: >= {goals.threshold_tokens_per_forward:g} tokens per forward "
                         f"at perplexity <= {bound:.2f} ({goals.threshold_ppl_ratio:g} x T={span}'s): {verdict(ok)} "
                         f"({tau['tokens_per_forward']:.2f} tokens per forward, perplexity {tau['gen_ppl']:.2f})")
        else:
            lines.append(f"goal {where}, threshold 0.9: not measured")
    return lines


# ----------------------------------------------------------------------------- the training curve

def read_curve(folder: str | Path) -> list[dict] | None:
    """The curve in a masked LM's diffusion.json (step, tokens, held_out_loss, perhaps held_out_chat_loss), or
    None where the folder holds none."""
    path = Path(folder) / presets.DIFFUSION_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("curve") or None


def thinned(curve: Sequence[dict], rows: int = 15) -> list[dict]:
    """About `rows` points spread evenly over the curve, the first and the last always among them."""
    if len(curve) <= rows:
        return list(curve)
    picks = sorted({round(i * (len(curve) - 1) / (rows - 1)) for i in range(rows)})
    return [curve[i] for i in picks]


def curve_markdown(folder: str | Path, rows: int = 15) -> str:
    """The curve as a Markdown table, training tokens -> held-out loss (and held-out chat loss where the curve
    has it: points measured before it was recorded show a dash); '' for a folder with no curve."""
    curve = read_curve(folder)
    if not curve:
        return ""
    chat = any("held_out_chat_loss" in p for p in curve)
    head = "| training tokens | step | held-out loss |" + (" held-out chat loss |" if chat else "")
    lines = [head, "| ---: | ---: | ---: |" + (" ---: |" if chat else "")]
    for p in thinned(curve, rows):
        line = f"| {p['tokens'] / 1e6:.2f}M | {p['step']} | {p['held_out_loss']:.3f} |"
        lines.append(line + (f" {cell(p.get('held_out_chat_loss'), 3)} |" if chat else ""))
    return "\n".join(lines)
