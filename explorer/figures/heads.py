"""The head drafters' own view (Medusa heads, the EAGLE-3 head), for speculative and tree decoding alike.

A step drafted by heads carries detail["heads"] (engines/drafters.describe): which target layers the head
read, the size of its draft vocabulary, and whether the target's token could have been drafted at all.
Here, one figure shows, top to bottom: the target layers that fed the head; each head's (Medusa) or each
depth's (EAGLE) candidates with their confidences, the guess that was accepted and the target's token;
and acceptance per head or depth over the run so far. The words say the same with the numbers.

A "level" is one head of Medusa (head i guesses the token i places after the pending one) or one depth of
EAGLE's chain or tree: the drafted tokens at one position, whichever drafter made them.
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


def level_name(d: dict, depth: int) -> str:
    return f"head {depth}" if is_medusa(d) else f"depth {depth}"


def head_name(d: dict) -> str:
    return "the Medusa heads" if is_medusa(d) else "the EAGLE head"


def who(d: dict) -> str:
    """The drafter as a sentence's subject."""
    return "The Medusa heads" if is_medusa(d) else "The EAGLE head"


def chain_levels(d: dict) -> list[Level]:
    """Speculative decoding: position i was drafted by head i (Medusa) or by the EAGLE head's i-th step; its
    recorded top 5 (q_raw_top) are the head's own probabilities, the drafted token is their first."""
    flags = d["heads"]["target_in_vocab"]
    levels = []
    for i, pos in enumerate(d["positions"]):
        offered = [(t, v) for t, v in (pos["q_raw_top"] or []) if t != pos["token"]]
        guesses = [Guess(pos["token"], pos["q_raw"], pos["status"], "drafted: the head's first choice")]
        guesses += [Guess(t, v, "offered", "in the head's top 5, not drafted") for t, v in offered]
        levels.append(Level(level_name(d, i + 1), guesses, pos["target_token"],
                            f"the target's most likely token at position {i + 1}", flags[i]))
    return levels


def tree_levels(d: dict) -> list[Level]:
    """Tree decoding: the nodes at each depth. Medusa's level is one head's ranks (the same token at a rank
    whatever the parent), so a rank is shown once with the best fate it met; EAGLE's nodes at a depth come
    from different parents, so the most confident are shown, the accepted one always."""
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
        levels.append(Level(level_name(d, depth), guesses, target, about,
                            d["heads"]["target_in_vocab"][0] if own and target is not None else
                            True if depth <= len(path) else None))
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
    levels: Callable[[dict], list[Level]]
    tally: Callable[[list[Step]], list[Tally]]
    extra: str


CHAIN = Reading(chain_levels, chain_tally, "target's argmax in its top 5")
TREE = Reading(tree_levels, tree_tally, "accepted with its rank-0 guess")


def rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


# ----------------------------------------------------------------------------- the figure

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
    levels = reading.levels(d)
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
    g.xaxis(1, 1).update(tickmode="linear", dtick=1,
                          range=[-0.5, heads["target_layers"] + 0.5])
    g.yaxis(1, 1).update(visible=False, range=[-0.6, 1.2])
    for col, level in enumerate(levels, start=1):
        ticks = level_bars(data, notes, g.cell(2, col), trace, level, col == 1, panel_px)
        g.xaxis(2, col).update(**ticks, tickangle=-40, tickfont={"size": 10})
        # one probability scale across the levels, so heads compare
        g.yaxis(2, col).update(rangemode="tozero", **({"matches": g.cell(2, 1)["yaxis"], "showticklabels": False}
                                                       if col > 1 else {}))   # the first panel's labels serve all
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
    notes.append(heading(g, 3, f"Acceptance per {'head' if is_medusa(d) else 'depth'}, steps 1-{index + 1}"))
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


# ----------------------------------------------------------------------------- words

def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def reads_sentence(d: dict) -> str:
    heads = d["heads"]
    last = heads["target_layers"]
    if is_medusa(d):
        return (f"The Medusa heads read the target's last hidden state (layer {last} of {last}) and guess through "
                f"a {heads['draft_vocab']}-token draft vocabulary.")
    layers = ", ".join(str(x) for x in heads["layers"][:-1]) + f" and {heads['layers'][-1]}"
    return (f"The EAGLE head fuses the outputs of target layers {layers} of {last} (low, middle, high) and drafts "
            f"at the feature level over a {heads['draft_vocab']}-token draft vocabulary.")


def chain_phrase(trace: Trace, level: Level) -> str:
    x = level.guesses[0]
    fate = {"accepted": "accepted", "not_reached": "not reached"}.get(x.status, "rejected")
    if x.status == "rejected" and level.target is not None and level.target != x.token:
        fate += f"; the target's most likely was {quoted(trace, level.target)}"
    return f"{level.name} {quoted(trace, x.token)} (q = {x.q:.3f}, {fate})"


def tree_phrase(trace: Trace, level: Level) -> str:
    offered = ", ".join(f"{quoted(trace, x.token)} ({x.q:.3f})" for x in level.guesses[:4])
    more = f" and {len(level.guesses) - 4} more" if len(level.guesses) > 4 else ""
    won = [x for x in level.guesses if x.status == "accepted"]
    if won:
        verdict = f"the target accepted {quoted(trace, won[0].token)}"
    elif level.target is not None:
        verdict = f"none was accepted; the target took {quoted(trace, level.target)}"
    else:
        verdict = "not reached" if all(x.status == "not_reached" for x in level.guesses) else "none was accepted"
    return f"{level.name} offered {offered}{more}: {verdict}"


def outside_sentence(trace: Trace, d: dict, levels: list[Level]) -> str:
    said = [f"{quoted(trace, lv.target)} (at {lv.name})" for lv in levels if lv.in_vocab is False]
    if not levels and d["heads"]["target_in_vocab"] and d["heads"]["target_in_vocab"][-1] is False:
        said.append("this step's token")
    if not said:
        return ""
    return (f"The target's token {', '.join(said)} lies outside the {d['heads']['draft_vocab']}-token draft "
            f"vocabulary: no head could ever have drafted it.")


def cost_sentence(step: Step, d: dict) -> str:
    if not step.draft_forwards:
        return ("Nothing was drafted: the heads draft from the hidden states of a verification forward, and "
                "none had run yet (or the budget left no room), so this step is one plain target forward.")
    return (f"Drafting cost {plural(step.draft_forwards, 'head forward')} and no target forward: "
            f"{head_name(d)} read the hidden states the previous verification forward had already computed.")


def tally_sentence(d: dict, tallies: list[Tally], extra: str) -> str:
    seen = [t for t in tallies if t.reached]
    if not seen:
        return ""
    return (f"So far, accepted / examined per {'head' if is_medusa(d) else 'depth'}: "
            + ", ".join(f"{t.name} {t.accepted}/{t.reached}" for t in seen)
            + f" ({extra}: " + ", ".join(f"{t.extra}/{t.reached}" for t in seen) + ").")


def words(trace: Trace, index: int, reading: Reading) -> str:
    """What the heads did this step, with the record's numbers; empty when no head drafted."""
    if index < 0 or not trace.steps[index].detail.get("heads"):
        return ""
    step = trace.steps[index]
    d = step.detail
    levels = reading.levels(d)
    phrase = chain_phrase if reading is CHAIN else tree_phrase
    guessed = ("Per " + ("head" if is_medusa(d) else "depth") + ": " + "; ".join(phrase(trace, lv) for lv in levels)
               + ".") if levels else ""
    parts = [reads_sentence(d), guessed, outside_sentence(trace, d, levels), cost_sentence(step, d),
             tally_sentence(d, reading.tally(trace.steps[: index + 1]), reading.extra)]
    return " ".join(p for p in parts if p)
