"""The head drafters' own view (Medusa heads, Hydra heads, the EAGLE-3 head), for speculative and tree decoding.

A step drafted by heads carries detail["heads"] (engines/drafters.describe): which target layers the head
read, the size of its draft vocabulary, and whether the target's token could have been drafted at all.
Here, one figure shows, top to bottom: the target layers that fed the head; each head's (Medusa) or each
depth's (EAGLE) candidates with their confidences, the guess that was accepted and the target's token;
and acceptance per head or depth over the run so far. The words say the same with the numbers.

A "level" is one head of Medusa or Hydra (head i guesses the token i places after the pending one) or one
depth of EAGLE's chain or tree: the drafted tokens at one position, whichever drafter made them. Hydra's head i
also reads the token drafted before its guess (head 1: the pending token), drawn as an arrow from the level
before: that dependency is what sets Hydra apart from Medusa.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import plotly.graph_objects as go

from engines.trace import Step, Trace
from explorer.figures.common import (
    DRAFT_COLOUR,
    FIGURE_WIDTH,
    GRID_COLOUR,
    TARGET_COLOUR,
    TEXT_COLOUR,
    Grid,
    colour,
    figure,
    fit,
    grid,
    quoted,
    show,
    symbol,
    title_lines,
    token,
)

SHOWN = 8              # candidates shown per level (Medusa's top-k, EAGLE's most confident nodes at a depth)
TARGET_MARK = "triangle-down"
OUTSIDE = "\u2298"     # the mark for a token outside the draft vocabulary
RANKED = ("accepted", "rejected", "not_reached")   # a level's statuses, the decided first


@dataclass
class Guess:
    """One candidate at a level: its token, the head's probability of it, and its fate."""
    token: int
    q: float
    status: str        # accepted, rejected, not_reached; "offered": in the head's top-k but not drafted
    about: str         # hover text beyond the token and q: node, rank, cumulative log q


@dataclass
class Level:
    name: str                  # "head 2" or "depth 2"
    guesses: list[Guess]
    target: int | None         # the target's token at this position, where the record holds one
    target_about: str          # what that token is (argmax at a position, accepted, or the target's own)
    in_vocab: bool | None      # could a head have drafted the target's token (None: not recorded here)
    reads: int | None = None   # Hydra: the token this head read last on the shown path (head 1: the pending one)


@dataclass
class Tally:
    """One level's acceptance over the run so far."""
    name: str
    reached: int = 0           # steps in which the target examined this level
    accepted: int = 0
    extra: int = 0             # chain: target's argmax within the head's top 5; tree: accepted at rank 0


# ----------------------------------------------------------------------------- reading the records

def is_medusa(d: dict) -> bool:
    return d["heads"]["kind"] == "medusa"


def is_hydra(d: dict) -> bool:
    return d["heads"]["kind"] == "hydra"


def by_head(d: dict) -> bool:
    """Whether a level is a head of its own (Medusa, Hydra) rather than a depth of one head (EAGLE)."""
    return d["heads"]["kind"] in ("medusa", "hydra")


def level_name(d: dict, depth: int) -> str:
    return f"head {depth}" if by_head(d) else f"depth {depth}"


def head_name(d: dict) -> str:
    return {"medusa": "the Medusa heads", "hydra": "the Hydra heads"}.get(d["heads"]["kind"], "the EAGLE head")


def who(d: dict) -> str:
    """The drafter as a sentence's subject."""
    return head_name(d)[0].upper() + head_name(d)[1:]


def chain_levels(d: dict, pending: int | None = None) -> list[Level]:
    """Speculative decoding: position i was drafted by head i (Medusa, Hydra) or by the EAGLE head's i-th step;
    its recorded top 5 (q_raw_top) are the head's own probabilities, the drafted token is their first. A Hydra
    head read the token drafted before it (head 1: `pending`, the last committed token)."""
    flags = d["heads"]["target_in_vocab"]
    levels = []
    for i, pos in enumerate(d["positions"]):
        offered = [(t, v) for t, v in (pos["q_raw_top"] or []) if t != pos["token"]]
        guesses = [Guess(pos["token"], pos["q_raw"], pos["status"], "drafted: the head's first choice")]
        guesses += [Guess(t, v, "offered", "in the head's top 5, not drafted") for t, v in offered]
        reads = (pending if i == 0 else d["positions"][i - 1]["token"]) if is_hydra(d) else None
        levels.append(Level(level_name(d, i + 1), guesses, pos["target_token"],
                            f"the target's most likely token at position {i + 1}", flags[i], reads))
    return levels


def tree_levels(d: dict, pending: int | None = None) -> list[Level]:
    """Tree decoding: the nodes at each depth. Medusa's level is one head's ranks (the same token at a rank
    whatever the parent), so a rank is shown once with the best fate it met; Hydra's and EAGLE's nodes at a
    depth come from different parents, so the most confident are shown, the accepted one always. A Hydra
    level's input token is its parent's on the accepted path, else the most confident parent's."""
    nodes, path = d["nodes"], d["accepted_path"]
    taken = [nodes[i]["token"] for i in path] + ([] if d["eos_cut"] else [d["final_token"]])
    levels = []
    for depth in range(1, max((n["depth"] for n in nodes), default=0) + 1):
        here = sorted((n for n in nodes if n["depth"] == depth), key=lambda n: (RANKED.index(n["status"]), -n["logq"]))
        if is_medusa(d):
            by_rank = {}
            for n in here:
                by_rank.setdefault(n["rank"], n)
            here = [by_rank[r] for r in sorted(by_rank)]
        else:
            here = sorted(here[:SHOWN], key=lambda n: -n["logq"])
        guesses = [Guess(n["token"], n["q"], n["status"], f"node {n['id']}, rank {n['rank']}, "
                         f"cumulative log q = {n['logq']:.3f}, target p = {n['p']:.4f}") for n in here]
        own = depth == len(path) + 1
        target = taken[depth - 1] if depth <= len(taken) else None
        about = "accepted" if depth <= len(path) else "the target's own token after the accepted path"
        reads = None
        if is_hydra(d):
            above = [n for n in nodes if n["depth"] == depth - 1]
            on_path = [n for n in above if n["status"] == "accepted"]
            reads = d["root_token"] if depth == 1 else \
                (on_path or sorted(above, key=lambda n: -n["logq"]))[0]["token"]
        levels.append(Level(level_name(d, depth), guesses, target, about,
                            d["heads"]["target_in_vocab"][0] if own and target is not None else
                            True if depth <= len(path) else None, reads))
    return levels


def chain_tally(steps: list[Step]) -> list[Tally]:
    """Per head (depth): examined, accepted, and how often the target's argmax was in the head's top 5."""
    out: list[Tally] = []
    for s in steps:
        for i, pos in enumerate(s.detail["positions"]):
            if i == len(out):
                out.append(Tally(level_name(s.detail, i + 1)))
            if pos["status"] == "not_reached":
                continue
            out[i].reached += 1
            out[i].accepted += pos["status"] == "accepted"
            out[i].extra += pos["target_token"] in [t for t, _ in pos["q_raw_top"] or []]
    return out


def tree_tally(steps: list[Step]) -> list[Tally]:
    """Per depth: steps in which a node there was examined, accepted at any rank, accepted at rank 0."""
    out: list[Tally] = []
    for s in steps:
        for n in s.detail["nodes"]:
            while len(out) < n["depth"]:
                out.append(Tally(level_name(s.detail, len(out) + 1)))
        for depth in {n["depth"] for n in s.detail["nodes"] if n["status"] != "not_reached"}:
            won = [n for n in s.detail["nodes"] if n["depth"] == depth and n["status"] == "accepted"]
            out[depth - 1].reached += 1
            out[depth - 1].accepted += bool(won)
            out[depth - 1].extra += any(n["rank"] == 0 for n in won)
    return out


@dataclass(frozen=True)
class Reading:
    """How one method's steps become levels and tallies, and what its tally's second measure counts."""
    levels: Callable[..., list[Level]]   # (detail, the pending token) -> levels
    tally: Callable[[list[Step]], list[Tally]]
    extra: str


CHAIN = Reading(chain_levels, chain_tally, "target's argmax in its top 5")
TREE = Reading(tree_levels, tree_tally, "accepted with its rank-0 guess")


def rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def pending_token(trace: Trace, index: int) -> int | None:
    """The token the heads' first guess follows: the last one committed before this step (tree steps record
    it as root_token)."""
    d = trace.steps[index].detail
    if "root_token" in d:
        return d["root_token"]
    before = [t for s in trace.steps[:index] for t in s.committed_ids]
    return before[-1] if before else None


def step_levels(trace: Trace, index: int, reading: Reading) -> list[Level]:
    return reading.levels(trace.steps[index].detail, pending_token(trace, index))


FIRST_READS_RISE = 24   # px head 1's "reads" label stands above its arrow's tip (one line of 10 px text and a gap)


def dependency_arrows(notes: list[dict], g: Grid, trace: Trace, levels: list[Level], panel_px: float) -> None:
    """Hydra: into each head's panel, an arrow from the level before (head 1: from above) carrying the token
    that head read, so the heads' sequential dependency is drawn where their guesses are."""
    for col, level in enumerate(levels, start=1):
        if level.reads is None:
            continue
        cell = g.cell(2, col)
        first = col == 1
        notes.append({"text": fit(f"reads {quoted(trace, level.reads)}", max(40.0, panel_px * 0.9), 10)
                      or "reads", "x": 0.04 if not first else 0.5, "y": 0.8,   # under the titles, over the bars' headroom
                      "xref": f"{cell['xaxis']} domain", "yref": f"{cell['yaxis']} domain",
                      "showarrow": True, "arrowhead": 2, "arrowsize": 1, "arrowwidth": 1.5,
                      "arrowcolor": DRAFT_COLOUR, "axref": "pixel", "ayref": "pixel",
                      # head 1's label stands a line above the others': head 2's arrow comes in from the left
                      # over head 1's panel, and at phone width the two labels overlapped
                      "ax": 0 if first else -max(24.0, panel_px * 0.5), "ay": -FIRST_READS_RISE if first else 0,
                      "font": {"color": TEXT_COLOUR, "size": 10},
                      "hovertext": f"{level.name} read {quoted(trace, level.reads)} (id {level.reads}): "
                                   + ("the pending token, the target's own" if first else
                                      f"what {levels[col - 2].name} drafted on this path") + ", with h_t"})


# ----------------------------------------------------------------------------- the figure

LAYER_TICK_PX = 20   # room a layer number of two digits needs beside the next one


def layer_tick_step(target_layers: int, narrow: bool) -> int:
    """Every how many layers the strip is numbered: each layer where the numbers fit side by side, else every
    2nd, 5th or 10th (at phone width, 0 to 30 ran together into one smear of digits)."""
    per_layer = (FIGURE_WIDTH[narrow] - 70) / (target_layers + 1)
    return next((step for step in (1, 2, 5, 10) if per_layer * step >= LAYER_TICK_PX), 10)


def layer_strip(data: list[dict], axes: dict, heads: dict) -> None:
    """The target's hidden states 0 (embeddings) .. L as squares; the ones the head reads filled and named."""
    read = heads["layers"]
    names = (["low", "middle", "high"] if len(read) == 3 else [f"{i + 1}" for i in range(len(read))]) \
        if heads["kind"] == "eagle" else ["last"]
    which = dict(zip(read, names))
    xs = list(range(heads["target_layers"] + 1))
    fed = [x in which for x in xs]
    data.append({"type": "scatter", **axes, "x": xs, "y": [0] * len(xs), "mode": "markers+text",
                 "text": [which.get(x, "") for x in xs], "textposition": "top center", "showlegend": False,
                 "cliponaxis": False,    # the names over the squares may rise past the strip's short plot
                 "name": "target layers", "hoverinfo": "text",
                 "marker": {"symbol": ["square" if f else "square-open" for f in fed], "size": 16,
                            "color": [TARGET_COLOUR if f else GRID_COLOUR for f in fed]},
                 "hovertext": [f"target hidden state {x}{' (the embeddings)' if x == 0 else ''}: "
                               + (f"read by the head ({which[x]})" if f else "not read") for x, f in zip(xs, fed)]})


def level_bars(data: list[dict], notes: list[dict], axes: dict, trace: Trace, level: Level, first: bool,
               panel_px: float = 1e9) -> dict:
    """One level: the candidates' q as bars, the fate of each as a marker on its bar, the target's token as a
    triangle (at the end when it is not among them) and the out-of-vocabulary mark. Returns the level's x
    ticks (the bars sit at 0, 1, ...: two nodes at an EAGLE depth may hold the same token)."""
    g = level.guesses
    labels = [show(token(trace, x.token)) for x in g]
    hover = [f"{quoted(trace, x.token)} (id {x.token})<br>q (head) = {x.q:.4f}<br>{x.status.replace('_', ' ')}: "
             f"{x.about}" for x in g]
    data.append({"type": "bar", **axes, "x": list(range(len(g))), "y": [x.q for x in g], "name": "q, the head's",
                 "legendgroup": "q", "showlegend": first, "marker": {"color": DRAFT_COLOUR, "line": {
                     "color": [colour(x.status) if x.status in RANKED else "rgba(0,0,0,0)" for x in g], "width": 3}},
                 "hovertext": hover, "hoverinfo": "text"})
    for status in RANKED:
        at = [i for i, x in enumerate(g) if x.status == status]
        if at:
            data.append({"type": "scatter", **axes, "x": at, "y": [g[i].q for i in at], "mode": "markers",
                         "name": status.replace("_", " "), "legendgroup": status, "showlegend": first,
                         "marker": {"symbol": symbol(status), "size": 11, "color": colour(status)},
                         "hovertext": [hover[i] for i in at], "hoverinfo": "text"})
    ticks = list(range(len(g)))
    if level.target is not None:
        where = next((i for i, x in enumerate(g) if x.token == level.target), None)
        if where is None:
            where = len(g)
            labels.append(show(token(trace, level.target)))
            ticks.append(where)
        outside = level.in_vocab is False
        text = (f"target: {quoted(trace, level.target)} (id {level.target}), {level.target_about}"
                + ("<br>outside the draft vocabulary: no head could ever draft it" if outside else ""))
        data.append({"type": "scatter", **axes, "x": [where], "y": [0], "mode": "markers",
                     "name": "target's token", "legendgroup": "target", "showlegend": first,
                     "marker": {"symbol": TARGET_MARK, "size": 12, "color": TARGET_COLOUR},
                     "hovertext": text, "hoverinfo": "text"})
        if outside:   # in the theme's grey (the status colour read 3.9:1), cut to its panel
            words = f"{OUTSIDE} target's token outside the draft vocabulary"
            two = f"{OUTSIDE} target's token<br>outside the draft vocabulary"
            shown_words, size = ((words, 10) if fit(words, panel_px - 8, 10) == words else
                                 (two, 9) if fit("outside the draft vocabulary", panel_px - 8, 9).endswith("y")
                                 else (OUTSIDE, 10))
            notes.append({"text": shown_words, "x": 0.5, "y": 0.92, "yanchor": "top",
                          "xref": f"{axes['xaxis']} domain", "yref": f"{axes['yaxis']} domain", "showarrow": False,
                          "font": {"color": TEXT_COLOUR, "size": size}, "hovertext": text})
    # turned labels need about 19 px between bars; below that the hover names the tokens
    spacing = panel_px / max(1, len(ticks))
    return {"tickvals": ticks, "ticktext": [fit(t, 60, 10) or t[:1] for t in labels],
            "showticklabels": spacing >= 19}


def tally_bars(data: list[dict], axes: dict, tallies: list[Tally], extra: str) -> None:
    names = [t.name for t in tallies]
    for label, counts, look in (("accepted / examined", [t.accepted for t in tallies], colour("accepted")),
                                (f"{extra} / examined", [t.extra for t in tallies], TARGET_COLOUR)):
        data.append({"type": "bar", **axes, "x": names, "y": [rate(c, t.reached) for c, t in zip(counts, tallies)],
                     "name": label, "marker": {"color": look},
                     "text": [f"{c}/{t.reached}" for c, t in zip(counts, tallies)], "textposition": "outside",
                     "hovertext": [f"{t.name}: {label} = {c}/{t.reached}"
                                   + (f" = {c / t.reached:.3f}" if t.reached else " (never examined yet)")
                                   for c, t in zip(counts, tallies)], "hoverinfo": "text"})


def spread(g: Grid, row: int) -> dict:
    """Row `row` as one cell across the whole width (the grid's other cells in that row are hidden)."""
    for col in range(2, g.cols + 1):
        g.xaxis(row, col)["visible"] = False
        g.yaxis(row, col)["visible"] = False
    g.xaxis(row, 1)["domain"] = [0.0, 1.0]
    return g.cell(row, 1)


def heading(g: Grid, row: int, text: str) -> dict:
    return {"text": text, "x": 0, "y": g.yaxis(row, 1)["domain"][1], "xref": "paper", "yref": "paper",
            "xanchor": "left", "yanchor": "bottom", "showarrow": False, "font": {"size": 13}}


def drafter_figure(trace: Trace, index: int, reading: Reading, narrow: bool = False) -> go.Figure | None:
    """The head drafter's figure for a step, or None when the step was not drafted by heads."""
    if index < 0 or not trace.steps[index].detail.get("heads"):
        return None
    d = trace.steps[index].detail
    heads = d["heads"]
    levels = step_levels(trace, index, reading)
    tallies = reading.tally(trace.steps[: index + 1])
    cols = max(1, len(levels))
    hspace = min(0.04, 0.4 / cols)
    panel_px = (FIGURE_WIDTH[narrow] - 70) * (1 - hspace * (cols - 1)) / cols
    # a level's name cut to its panel ("depth 1" .. "depth 8" ran together at phone width), its number at least
    titles = [""] * cols + [fit(lv.name, panel_px - 6, 14) or lv.name.split()[-1] for lv in levels]
    # room under the bars for their turned labels, above the tally's heading
    g = grid(3, cols, row_heights=[0.12, 0.5, 0.38], vspace=0.16, hspace=hspace, titles=titles)
    # no automargin on the turned bar labels: Plotly squeezed the panels to widen the left margin for them
    for col in range(1, cols + 1):
        g.xaxis(2, col)["automargin"] = False
    data, notes = [], []
    layer_strip(data, spread(g, 1), heads)
    g.xaxis(1, 1).update(tickmode="linear", tick0=0, dtick=layer_tick_step(heads["target_layers"], narrow),
                          range=[-0.5, heads["target_layers"] + 0.5])
    g.yaxis(1, 1).update(visible=False, range=[-0.6, 1.2])
    for col, level in enumerate(levels, start=1):
        ticks = level_bars(data, notes, g.cell(2, col), trace, level, col == 1, panel_px)
        g.xaxis(2, col).update(**ticks, tickangle=-40, tickfont={"size": 10})
        # one probability scale across the levels, so heads compare
        g.yaxis(2, col).update(rangemode="tozero", **({"matches": g.cell(2, 1)["yaxis"], "showticklabels": False}
                                                       if col > 1 else {}))   # the first panel's labels serve all
    dependency_arrows(notes, g, trace, levels, panel_px)
    level_axes = {g.cell(2, col)["yaxis"] for col in range(1, len(levels) + 1)}
    heights = [y for d in data if d.get("type") == "bar" and d.get("yaxis") in level_axes for y in d["y"] if y]
    if heights:   # headroom above the tallest bar for the note a level may carry at its top
        g.yaxis(2, 1).update(range=[0, max(heights) * 1.35])
    if not levels:
        # in paper coordinates: Plotly misplaces a note on the domain of an axis it does not draw
        notes.append({"text": "Nothing drafted this step: the heads draft from the hidden states of a verification "
                              "forward, and none has run yet (or the token budget left no room).", "x": 0.5,
                      "y": sum(g.yaxis(2, 1)["domain"]) / 2, "xref": "paper", "yref": "paper", "showarrow": False})
        g.xaxis(2, 1)["visible"] = g.yaxis(2, 1)["visible"] = False
    g.yaxis(2, 1)["title"] = {"text": "q (head)"}
    tally_bars(data, spread(g, 3), tallies, reading.extra)
    g.yaxis(3, 1).update(range=[0, 1.2], title={"text": "rate so far"}, tickvals=[0, 0.5, 1])
    notes.append(heading(g, 3, f"Acceptance per {'head' if by_head(d) else 'depth'}, steps 1-{index + 1}"))
    # the layer strip's heading in lines the figure's width holds (one line was cut at its right edge)
    about = title_lines(f"{who(d)} (trained on {heads['trained_on']}, {heads['draft_vocab']}-token draft "
                        f"vocabulary) read the filled target hidden states (0 = embeddings, "
                        f"{heads['target_layers']} = the last layer's output):", FIGURE_WIDTH[narrow], 13,
                        toolbar=False)
    notes.append(heading(g, 1, "<br>".join(about)))
    more = 17 * (len(about) - 1)
    return figure(data, g, f"Step {index + 1}: what {head_name(d)} proposed", height=470 + more, barmode="group",
                  annotations=notes, margin={"t": 60 + more}, legend_below=True, width=FIGURE_WIDTH[narrow])


def for_speculative(trace: Trace, index: int, narrow: bool = False) -> go.Figure | None:
    return drafter_figure(trace, index, CHAIN, narrow)


def for_tree(trace: Trace, index: int, narrow: bool = False) -> go.Figure | None:
    return drafter_figure(trace, index, TREE, narrow)
