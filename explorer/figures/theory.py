"""The cost model's curves, shared by the race and the speculative view: expected tokens per iteration
(1 - α^(k+1)) / (1 - α) and expected speedup tokens / (k·c + T(k+1)) over k, with measured points on them.
Callers place the two panels in cells of their own grid."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from engines.analysis.theory import DISK, K_MAX, SWEEP, Calibration, expected_speedup, expected_tokens
from engines.trace import Step, Trace
from explorer.figures.common import GRID_COLOUR, TEXT_COLOUR, colour, symbol

KS = list(range(1, K_MAX + 1))
TOKENS_TITLE = "tokens per iteration: (1 - α^(k+1)) / (1 - α)"
SPEEDUP_TITLE = "speedup: tokens / (k·c + T(k+1))"
PALETTE = [colour("accepted"), colour("resampled"), colour("bonus"), colour("rejected")]


@dataclass
class Measured:
    """A measured value at one k, placed on a curve."""
    k: int
    value: float
    hover: str
    size: int = 13


@dataclass
class Curves:
    """One acceptance rate α and draft cost c on the theory curves, with what the run measured."""
    name: str
    alpha: float
    c: float | None                  # None: not measured, so no speedup curve
    ns: list[int]                    # T(n) measured at these n ...
    costs: list[float]               # ... in forwards of one token
    line: str                        # its colour
    tokens: list[Measured] = field(default_factory=list)
    speedup: list[Measured] = field(default_factory=list)
    marker_name: str = "measured"


def curve_traces(cv: Curves, tokens_cell: dict, speedup_cell: dict | None) -> list[dict]:
    """The two curves and their measured points, one legend group; the speedup panel only with a measured c."""
    data = [{"type": "scatter", "mode": "lines", "name": cv.name, "legendgroup": cv.name, "x": KS,
             "y": [expected_tokens(cv.alpha, k) for k in KS], "line": {"color": cv.line},
             "hovertemplate": "k %{x}: %{y:.2f} tokens expected<extra></extra>", **tokens_cell}]
    data += points(cv, cv.tokens, tokens_cell, True)
    if speedup_cell is not None and cv.c is not None and cv.costs:
        data.append({"type": "scatter", "mode": "lines", "name": cv.name, "legendgroup": cv.name, "showlegend": False,
                     "x": KS, "y": [expected_speedup(cv.alpha, k, cv.c, cv.ns, cv.costs) for k in KS],
                     "line": {"color": cv.line},
                     "hovertemplate": "k %{x}: %{y:.2f}x expected<extra></extra>", **speedup_cell})
        data += points(cv, cv.speedup, speedup_cell, not cv.tokens)
    return data


def points(cv: Curves, measured: list[Measured], cell: dict, legend: bool) -> list[dict]:
    if not measured:
        return []
    return [{"type": "scatter", "mode": "markers", "name": cv.marker_name, "legendgroup": cv.name,
             "showlegend": legend, "x": [m.k for m in measured], "y": [m.value for m in measured],
             "marker": {"color": cv.line, "symbol": symbol("bonus"), "size": [m.size for m in measured],
                        "line": {"color": "#333333", "width": 1}},
             "hovertext": [m.hover for m in measured], "hoverinfo": "text", **cell}]


def plain_line(cell: dict) -> dict:
    """Speedup 1: plain decoding, what a curve must rise above to win."""
    return {"type": "scatter", "mode": "lines", "name": "plain decoding (1x)", "x": [1, K_MAX], "y": [1, 1],
            "line": {"color": GRID_COLOUR.replace("0.25", "0.9"), "dash": "dash"},
            "hovertemplate": "plain decoding: speedup 1x<extra></extra>", **cell}


def k_axis() -> dict:
    return {"title": {"text": "k, tokens drafted per iteration"}, "dtick": 2, "range": [0.5, K_MAX + 0.5]}


# ----------------------------------------------------------------------------- what a trace recorded

def calibration(trace: Trace) -> Calibration | None:
    """The cost model's calibration the run recorded; None for a trace made before runs recorded it, and while
    a run has not yet timed the forward over one token that T(n) and c are counted in."""
    return Calibration.from_dict(trace.cost) if trace.cost and "target_forward_s" in trace.cost else None


def measuring(trace: Trace) -> str | None:
    """What a run still measuring its calibration has so far, in words; None when it is complete or absent."""
    cost = trace.cost
    if not cost or cost.get("complete", True):
        return None
    if "target_forward_s" not in cost:
        seconds = cost.get("forward_s") or {}
        so_far = (", ".join(f"{ms(s)} over {n} tokens" for n, s in seconds.items()) if seconds else
                  "nothing yet (the first step's forward also read the prompt, so it is no T(n) point)")
        return (f"measuring... this run's own verify forwards so far: {so_far}; c and T(n) also need a target and a "
                f"draft forward over one token, timed between the next steps")
    return (f"measuring... T(n) at n = {', '.join(map(str, cost['verify_n']))} so far ({cost.get('source')}); the "
            f"other sizes are timed between the next steps, so the curves may still move")


def unmeasured(trace: Trace) -> str:
    """Why a trace's views draw no cost: the run is still measuring, or it predates runs measuring."""
    return measuring(trace) or "not measured for this trace (it was recorded before runs measured c and T(n))"


def cost_note_text(trace: Trace) -> str:
    """The short note a cost panel shows instead of its curves."""
    return "measuring the cost..." if measuring(trace) else "cost not measured in this trace"


def cost_note(trace: Trace, cell: dict, y: float = 0.9) -> dict:
    """That note as an annotation near the top of the cell, in the theme's text grey (the grey of what was not
    reached read 1.9:1 on white)."""
    return {"text": cost_note_text(trace), "x": 0.5, "y": y, "showarrow": False, "xref": f"{cell['xaxis']} domain",
            "yref": f"{cell['yaxis']} domain", "font": {"color": TEXT_COLOUR}}


def origin(cal: Calibration) -> str:
    """Where the calibration came from and when, for the words."""
    if cal.source == DISK:
        return f"read from this machine's disk cache (measured {cal.measured_at})"
    after = "before the first step" if cal.at_step is None else f"by step {cal.at_step + 1}"
    how = "timed when the run started" if cal.source == SWEEP and cal.at_step is None else f"from {cal.source}"
    return f"measured on this machine {how}, {after}" + ("" if cal.complete else ", still measuring")


def time_split(step: Step) -> str:
    """Where the step's wall time went, as its record splits it; empty for a step recorded before steps did."""
    d = step.detail
    if "target_forward_s" not in d:
        return ""
    parts = [f"target forward {ms(d['target_forward_s'])}", *([f"drafting {ms(d['drafting_s'])}"]
             if "drafting_s" in d else []), f"bookkeeping {ms(d['bookkeeping_s'])}"]
    return f"**Where this step's {ms(step.wall_s)} went:** {', '.join(parts)}."


# drafters that run no draft model: what a drafting step costs them instead, for the words
FREE_DRAFTS = {
    "ngram": "prompt lookup scans the text and runs no model, so its c is taken as 0",
    "typed": "you typed the draft, so it cost no forward: c is taken as 0",
    "heads": "Medusa heads are one small layer each over hidden states the target's verify forward already "
             "computed, a few percent of a target forward: c is taken as 0",
    "hydra": "Hydra heads are one small layer each over the hidden state the target's verify forward already "
             "computed and the embeddings of the tokens drafted before, a few percent of a target forward: c is "
             "taken as 0",
    "eagle": "the EAGLE head is one decoder layer over features the target's verify forward already computed, "
             "a small fraction of a target forward: c is taken as 0",
    "suffix": "the suffix tree is a lookup in the text so far and runs no model, so c is taken as 0",
    "recycling": "the adjacency table is a lookup in a table the verify forward already filled and runs no model, "
                 "so c is taken as 0",
    "retrieval": "REST's datastore is a suffix-array lookup and runs no model, so c is taken as 0",
}


def draft_c(trace: Trace, cal: Calibration | None) -> float | None:
    """c for this run's drafter: the measured draft model's, 0 for drafters that run no model (heads are
    counted as free too), the share of the target's layers for the early-exit drafter, None when the draft
    model's cost was not measured."""
    drafter = trace.config.get("drafter", "model")
    if drafter in FREE_DRAFTS:
        return 0.0
    if (found := early_exit(trace)) is not None:
        return found["exit_layer"] / found["target_layers"]
    return cal.c if cal is not None else None


def early_exit(trace: Trace) -> dict | None:
    """The early-exit drafter's record (its exit layer, the target's layer count), None for other drafters."""
    return next((s.detail["early_exit"] for s in trace.steps if s.detail.get("early_exit")), None)


def exit_who(d: dict) -> str:
    """The early-exit drafter as a sentence's subject: which of the target's layers drafted."""
    found = d["early_exit"]
    return f"The target's own layers 1-{found['exit_layer']} of {found['target_layers']} (an early exit)"


def c_source(trace: Trace, cal: Calibration) -> str:
    """Where c comes from: a draft forward's measured time, or the early-exit draft's share of the layers (its
    output head, run on every draft, is left out of that estimate)."""
    if (found := early_exit(trace)) is not None:
        return (f"runs {found['exit_layer']} of the target's {found['target_layers']} layers, its share of the "
                f"layers taken as c")
    return ms(cal.draft_forward_s)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def measured_speedup(steps: Sequence[Step], cal: Calibration) -> float | None:
    """Committed tokens x the time of one plain target forward, over the steps' summed wall time: how much
    faster than one forward per token the run went, engine overhead and all."""
    wall = sum(s.wall_s for s in steps)
    return sum(len(s.committed_ids) for s in steps) * cal.target_forward_s / wall if wall > 0 else None
