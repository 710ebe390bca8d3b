"""The early-exit drafter's own view (LayerSkip's self-speculation, engines/drafting/early_exit.py), for speculative
and tree decoding alike.

A step drafted by the target's own first L layers carries detail["early_exit"] = {exit_layer, target_layers}. The
figure draws the head view's layer strip (explorer/figures/heads.py) for it: the target's hidden states 0
(embeddings) .. N, the first L layers filled (they draft: layers 1..L, then the target's own final norm and
output head read hidden state L), the exit marked at L, and layers L+1..N open (they run only when the target
verifies). Under it, acceptance per draft position (speculative) or depth (tree) over the run so far: how far
into a draft the first L layers keep agreeing with all N.
"""
from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from engines.trace import Step, Trace
from explorer.figures.common import (
    DRAFT_COLOUR,
    FIGURE_WIDTH,
    GRID_COLOUR,
    TARGET_COLOUR,
    TEXT_COLOUR,
    colour,
    figure,
    fit,
    grid,
)

LABEL_SIZE = 11


@dataclass
class Tally:
    """One draft position's (or depth's) acceptance over the run so far."""
    name: str
    reached: int = 0     # steps in which the target examined it
    accepted: int = 0


def tally(steps: list[Step]) -> list[Tally]:
    """Speculative steps: per drafted position, examined and kept. Tree steps: per depth, the steps in which a
    node there was examined, and those in which one was accepted."""
    out: list[Tally] = []
    for s in steps:
        d = s.detail
        if "positions" in d and "nodes" not in d:
            levels = [[pos["status"]] for pos in d["positions"]]
        else:
            levels = [[] for _ in range(max((n["depth"] for n in d["nodes"]), default=0))]
            for n in d["nodes"]:
                levels[n["depth"] - 1].append(n["status"])
        for i, statuses in enumerate(levels):
            if i == len(out):
                out.append(Tally(f"{'position' if 'nodes' not in d else 'depth'} {i + 1}"))
            if any(x != "not_reached" for x in statuses):
                out[i].reached += 1
                out[i].accepted += "accepted" in statuses
    return out


def exit_strip(data: list[dict], notes: list[dict], axes: dict, record: dict, panel_px: float) -> None:
    """Hidden states 0..N as squares: 0..L filled in the draft's colour (computed when drafting, and again when
    verifying), L+1..N open in the target's (only when verifying); "exit L" over square L; under the strip, what
    each part does, anchored at the strip's two ends so the two never meet."""
    exit_layer, n = record["exit_layer"], record["target_layers"]
    xs = list(range(n + 1))
    drafts = [x <= exit_layer for x in xs]
    size = max(5, min(16, 0.8 * panel_px / (n + 1)))
    data.append({"type": "scatter", **axes, "x": xs, "y": [0] * len(xs), "mode": "markers+text",
                 "text": [f"exit {exit_layer}" if x == exit_layer else "" for x in xs], "textposition": "top center",
                 "textfont": {"size": LABEL_SIZE}, "cliponaxis": False, "showlegend": False, "name": "target layers",
                 "marker": {"symbol": ["square" if f else "square-open" for f in drafts], "size": size,
                            "color": [DRAFT_COLOUR if f else TARGET_COLOUR for f in drafts]},
                 "hoverinfo": "text",
                 "hovertext": [f"target hidden state {x}{' (the embeddings)' if x == 0 else ''}: "
                               + ("computed by the draft, then read by the final norm and output head: the exit"
                                  if x == exit_layer else "computed by the draft (and again by the verification)"
                                  if f else "computed only by the verification forward")
                               for x, f in zip(xs, drafts)]})
    # a bracket under each part: the draft's layers, and the layers only the verification runs
    for lo, hi, look in ((0, exit_layer, DRAFT_COLOUR), (exit_layer + 1, n, TARGET_COLOUR)):
        data.append({"type": "scatter", **axes, "x": [lo - 0.3, hi + 0.3], "y": [-0.55, -0.55], "mode": "lines",
                     "line": {"color": look, "width": 3}, "showlegend": False, "hoverinfo": "skip"})
    rest = f"{exit_layer + 1}-{n}" if exit_layer + 1 < n else f"{n}"
    left = (f"draft: layers 1-{exit_layer} + final norm + head", f"draft: 1-{exit_layer}")
    right = (f"verify only: layer{'s' if exit_layer + 1 < n else ''} {rest}", f"verify: {rest}")
    room = panel_px / 2 - 6
    for texts, x, anchor in ((left, -0.5, "left"), (right, n + 0.5, "right")):
        text = next((t for t in texts if fit(t, room, LABEL_SIZE) == t), texts[-1])
        notes.append({"text": text, "x": x, "y": -0.65,
                      "xref": axes["xaxis"], "yref": axes["yaxis"], "xanchor": anchor, "yanchor": "top",
                      "showarrow": False, "font": {"size": LABEL_SIZE, "color": TEXT_COLOUR}})


def tally_bars(data: list[dict], axes: dict, tallies: list[Tally]) -> None:
    data.append({"type": "bar", **axes, "x": [t.name for t in tallies],
                 "y": [t.accepted / t.reached if t.reached else None for t in tallies],
                 "name": "accepted / examined", "marker": {"color": colour("accepted")},
                 "text": [f"{t.accepted}/{t.reached}" for t in tallies], "textposition": "outside",
                 "hoverinfo": "text",
                 "hovertext": [f"{t.name}: accepted {t.accepted} of the {t.reached} steps that examined it"
                               + (f" = {t.accepted / t.reached:.3f}" if t.reached else " (never examined yet)")
                               for t in tallies]})


def drafter_figure(trace: Trace, index: int, narrow: bool = False) -> go.Figure | None:
    """The early-exit drafter's figure for a step, or None when the step was not drafted by an early exit."""
    if index < 0 or not trace.steps[index].detail.get("early_exit"):
        return None
    record = trace.steps[index].detail["early_exit"]
    width = FIGURE_WIDTH[narrow]
    g = grid(2, 1, row_heights=[0.3, 0.7], vspace=0.22)
    data, notes = [], []
    exit_strip(data, notes, g.cell(1, 1), record, width - 80)
    g.xaxis(1, 1).update(range=[-0.6, record["target_layers"] + 0.6], showgrid=False, zeroline=False,
                         tickmode="linear", tick0=0, dtick=1 if record["target_layers"] <= (12 if narrow else 32)
                         else 4)
    g.yaxis(1, 1).update(visible=False, range=[-1.1, 0.9])
    tallies = tally(trace.steps[: index + 1])
    tally_bars(data, g.cell(2, 1), tallies)
    g.yaxis(2, 1).update(range=[0, 1.25], tickvals=[0, 0.5, 1], title={"text": "accepted so far"},
                         gridcolor=GRID_COLOUR)
    if not tallies:
        g.xaxis(2, 1)["visible"] = False
    title = (f"Step {index + 1}: the target's own layers 1-{record['exit_layer']} of {record['target_layers']} "
             f"drafted (an early exit)")
    return figure(data, g, title, height=400, annotations=notes, width=width, showlegend=False)
