"""Lookahead decoding's figures: the 2D window beside the attention mask (as Fu et al. 2024 draw them, Fig. 2-3),
and the n-gram pool as a table that grows step by step."""
from __future__ import annotations

import math
from dataclasses import dataclass

import plotly.graph_objects as go

from engines.decoding.trees import ancestry
from engines.trace import Step, Trace
from explorer.figures.common import (
    CHAR_PX,
    FIGURE_WIDTH,
    SIDE_WIDTH,
    Chip,
    Grid,
    View,
    colour,
    empty,
    figure,
    fit,
    grid,
    listing,
    quoted,
    show,
    token,
)
from explorer.figures.jacobi import discrete_scale

HIDDEN = "rgba(128,128,128,0.12)"    # a masked cell of the attention mask
POOL_ROWS = 20       # pool table rows drawn at most (the current first token's come first)
POOL_ROW = 22        # px per pool table row
POOL_CHROME = 100    # px of the pool figure above its rows: title, header, margin
POOL_COLUMN_PX = (44, 150, 44, 96)   # text width of each table column when the figure is 380 px wide
BRANCH = {"input": colour("prompt"), "lookahead": colour("chosen"), "verification": colour("accepted")}


def short(trace: Trace, token_id: int, width: int = 7) -> str:
    text = show(token(trace, token_id))
    return text if len(text) <= width else text[:width - 1] + "\u2026"


def ngram_text(trace: Trace, ids) -> str:
    return "".join(token(trace, t) for t in ids).replace("\n", "\\n")


def branch_of(d: dict) -> list[str]:
    """The branch of every token fed this step, in the order the engine laid them out."""
    levels = d["window"]
    lookahead = len(levels[0]) - 1 + sum(len(level) for level in levels[1:])
    return ["input"] + ["lookahead"] * lookahead + ["verification"] * (len(d["fed_ids"]) - 1 - lookahead)


def candidate_status(d: dict, g: int, k: int) -> str:
    m = d["matched"][g]
    return "accepted" if k < m else "rejected" if k == m else "not_reached"


CELL_FONT = 10       # px of a window cell's token
ROW_LABEL_FONT = 10  # px of the window's row labels (level j, new level, candidate c)
# a window cell's marker by status: square, so its token always stands on its own fill (an open or crossed
# symbol left the token on the page); rejected is a square with an x through it
CELL_SYMBOL = {"rejected": "square-x", "not_reached": "square-dot"}


def tint(hex_colour: str, white: float = 0.6) -> str:
    """The colour mixed with white: a light, opaque fill under which dark text reads in either theme (the
    status colours themselves were too dark for it, and a translucent fill turned dark on the dark page)."""
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(c + (255 - c) * white):02x}" for c in (r, g, b))


def add_cells(data: list[dict], cell: dict, xs, ys, texts, hovers, status: str, name: str, size: float = 30,
              **line) -> None:
    """Window cells as square markers `size` px wide, each token cut to its cell (the hover holds it whole)."""
    if not xs:
        return
    data.append({"type": "scatter", **cell, "x": xs, "y": ys, "mode": "markers+text",
                 "text": [fit(t, size - 4, CELL_FONT) for t in texts],
                 "hovertext": hovers, "hoverinfo": "text", "name": name, "textposition": "middle center",
                 "textfont": {"size": CELL_FONT, "color": "#111111"},
                 "marker": {"symbol": CELL_SYMBOL.get(status, "square"), "size": size, "color": tint(colour(status)),
                            "opacity": 1, "line": {"width": 1.5, "color": colour(status), **line}}})


def window_columns(d: dict) -> int:
    """Positions the window panel spans: the window's W columns at L levels, and the new level past them."""
    return len(d["window"][0]) + len(d["window"])


def row_labels_px(d: dict) -> float:
    """About how wide the window's longest row label is drawn."""
    return CHAR_PX * ROW_LABEL_FONT * len(f"candidate {len(d['candidates'])}") + 12


def window_panel(data: list[dict], g: Grid, trace: Trace, step: Step, panel_px: float = 400) -> None:
    """Rows: the window's levels (oldest first), this forward's new level, then each pooled candidate.
    x: position after the last committed token (0). Harvested n-grams are the diagonals. panel_px: about how
    wide the panel is drawn; a cell takes its share of it and its token is cut to the cell."""
    d = step.detail
    cell = g.cell(1, 1)
    levels, width = d["window"], len(d["window"][0])
    columns = window_columns(d)
    size = max(8.0, min(30.0, panel_px / columns - 3))
    rows = [f"level {j}" for j in range(len(levels))]
    new_row = "new level"
    cand_rows = [f"candidate {c + 1}" for c in range(len(d["candidates"]))]
    xs, ys, texts, hovers = [], [], [], []
    for j, level in enumerate(levels):
        for i, t in enumerate(level):
            if j == 0 and i == 0:
                continue
            xs.append(i + j), ys.append(rows[j]), texts.append(short(trace, t))
            hovers.append(f"level {j}, column {i}, position +{i + j}<br>{quoted(trace, t)} (id {t})<br>"
                          f"a guess from {len(levels) - j} forward{'s' if len(levels) - j != 1 else ''} ago")
    add_cells(data, cell, xs, ys, texts, hovers, "earlier", "lookahead window (past Jacobi guesses)", size)
    add_cells(data, cell, [0], [rows[0]], [short(trace, d["input_token"])],
              [f"the last committed token {quoted(trace, d['input_token'])}: level 0, column 0, position 0"],
              "prompt", "last committed token (the input)", size, width=2.5, color=colour("chosen"))
    L = len(levels)
    add_cells(data, cell, [i + L for i in range(width)], [new_row] * width,
              [short(trace, t) for t in d["new_level_ids"]],
              [f"column {i}, position +{i + L}<br>{quoted(trace, t)}: the target's argmax after column {i}'s chain"
               for i, t in enumerate(d["new_level_ids"])], "chosen", "new level: this forward's outputs", size)
    by_status: dict[str, list] = {}
    for c, cand in enumerate(d["candidates"]):
        for k, t in enumerate(cand):
            status = candidate_status(d, c, k)
            cells = by_status.setdefault(status, [[], [], [], []])
            cells[0].append(k + 1), cells[1].append(cand_rows[c]), cells[2].append(short(trace, t))
            cells[3].append(f"candidate {c + 1}, token {k + 1} at position +{k + 1}: {quoted(trace, t)}<br>"
                            + {"accepted": "equals the committed token: accepted",
                               "rejected": "differs from the target's token here: rejected",
                               "not_reached": "after a rejection: not checked"}[status])
    names = {"accepted": "pooled n-gram token accepted", "rejected": "pooled token rejected",
             "not_reached": "pooled token not reached"}
    for status, (cx, cy, ct, ch) in by_status.items():
        add_cells(data, cell, cx, cy, ct, ch, status, names[status], size)
    # the harvested n-grams are the window's diagonals: column i of levels 0..N-2, then the new output
    lx, ly, lh = [], [], []
    for i, (ngram, new) in enumerate(zip(d["harvested"], d["added"])):
        if new:
            path = [(i + j, rows[j]) for j in range(L)] + [(i + L, new_row)]
            lx += [x for x, _ in path] + [None]
            ly += [y for _, y in path] + [None]
            lh += [f"n-gram {quoted_ids(trace, ngram)} added to the pool"] * len(path) + [None]
    if lx:
        data.append({"type": "scatter", **cell, "x": lx, "y": ly, "mode": "lines", "hovertext": lh,
                     "hoverinfo": "text", "name": "n-gram harvested into the pool",
                     "line": {"color": colour("bonus"), "width": 3}})
    order = rows + [new_row] + cand_rows
    g.yaxis(1, 1).update(categoryorder="array", categoryarray=order[::-1], type="category",
                         tickfont={"size": ROW_LABEL_FONT})
    # the columns' own extent, so a cell is exactly its share of the panel (autorange pads round the markers);
    # position ticks keep 24 px apart
    g.xaxis(1, 1).update(title={"text": "position after the last committed token"}, range=[-0.5, columns - 0.5],
                         dtick=max(1, math.ceil(24 * columns / panel_px)), tick0=0)


def quoted_ids(trace: Trace, ids) -> str:
    return '"' + ngram_text(trace, ids) + '"'


def mask_panel(data: list[dict], g: Grid, trace: Trace, step: Step, at: tuple[int, int] = (1, 2),
               panel_px: float = 300) -> None:
    """Which fed token sees which: the lookahead branch's columns and the verification chains, all under
    the input token; every row also sees the cached text."""
    d = step.detail
    attend, depths = ancestry(d["parents"])
    kinds = branch_of(d)
    code = {"input": 1, "lookahead": 2, "verification": 3}
    names = [f"{i}: {show(token(trace, t))} +{depth}" for i, (t, depth) in enumerate(zip(d["fed_ids"], depths))]
    z = [[code[kinds[r]] if seen else 0 for seen in row] for r, row in enumerate(attend)]
    scale = discrete_scale([HIDDEN, BRANCH["input"], BRANCH["lookahead"], BRANCH["verification"]])
    data.append({"type": "heatmap", **g.cell(*at), "z": z, "x": names, "y": names, "zmin": 0, "zmax": 3,
                 "showscale": False, "xgap": 1, "ygap": 1, "colorscale": scale,
                 "hovertemplate": "query %{y}<br>key %{x}<extra></extra>"})
    # a token per row and column named only while a 10 px label has 14 px of its own; past that the hover names it
    labelled = len(names) <= 30 and panel_px / len(names) >= 14
    g.yaxis(*at).update(autorange="reversed", type="category", tickfont={"size": 10}, showticklabels=labelled)
    g.xaxis(*at).update(type="category", tickfont={"size": 10}, tickangle=-60, showticklabels=labelled)


def window_and_mask(trace: Trace, index: int, narrow: bool = False) -> go.Figure:
    if index < 0:
        return empty("Press Step: one forward runs the lookahead and the verification branch together.")
    step = trace.steps[index]
    d = step.detail
    rows = len(d["window"]) + 1 + len(d["candidates"])
    window_px = 44 * rows + 60
    fig_px = FIGURE_WIDTH[narrow]
    labels_px = row_labels_px(d)
    beside_px = (fig_px - 40 - labels_px) * 0.5
    # the mask goes under the window rather than beside it when beside it a window cell would be narrower than
    # 26 px (always at phone width): side by side they overlapped, and cut tokens to a character
    stacked = narrow or beside_px / window_columns(d) < 26
    mask_at = (2, 1) if stacked else (1, 2)
    if stacked:
        mask_px = 300 if narrow else 380
        g = grid(2, 1, row_heights=[window_px, mask_px], vspace=170 / (window_px + mask_px + 170),
                 titles=("window and pooled candidates", f"attention mask, {len(d['fed_ids'])} tokens"))
        panel_px = fig_px - 40 - labels_px
    else:
        g = grid(1, 2, col_widths=[0.58, 0.42], hspace=0.12,
                 titles=("window and pooled candidates", f"attention mask over {len(d['fed_ids'])} tokens"))
        panel_px = beside_px
    data: list[dict] = []
    window_panel(data, g, trace, step, panel_px)
    mask_panel(data, g, trace, step, mask_at, min(mask_px, panel_px) if stacked else beside_px * 0.8)
    for kind, c in BRANCH.items():
        data.append({"type": "scatter", **g.cell(*mask_at), "x": [None], "y": [None], "mode": "markers",
                     "name": f"mask: {kind} branch" if kind != "input" else "mask: input token",
                     "marker": {"symbol": "square", "size": 12, "color": c}, "hoverinfo": "skip"})
    data.append({"type": "scatter", **g.cell(*mask_at), "x": [None], "y": [None], "mode": "markers",
                 "name": "mask: hidden (-inf)", "hoverinfo": "skip",
                 "marker": {"symbol": "square", "size": 12, "color": HIDDEN}})
    warm = " (warming up: the window is still filling)" if d["warming_up"] else ""
    return figure(data, g, f"Step {index + 1}: {len(d['window'])} level{'s' if len(d['window']) != 1 else ''} x "
                           f"{len(d['window'][0])} columns, {len(d['candidates'])} candidate"
                           f"{'s' if len(d['candidates']) != 1 else ''}{warm}",
                  height=window_px + mask_px + 170 if stacked else max(380, 44 * rows + 160), legend_below=True,
                  width=FIGURE_WIDTH[narrow])


def added_at(trace: Trace, index: int) -> dict[tuple, int]:
    """For each n-gram seen so far, the step that first put it in the pool."""
    first: dict[tuple, int] = {}
    for s in trace.steps[: index + 1]:
        for ngram, new in zip(s.detail["harvested"], s.detail["added"]):
            if new:
                first.setdefault(tuple(ngram), s.index + 1)
    return first


def translucent(hex_colour: str, alpha: float = 0.35) -> str:
    if not hex_colour.startswith("#"):
        return hex_colour
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def pool_table(trace: Trace, index: int, narrow: bool = False) -> go.Figure:
    """The pool after this step under the current first token and the most recently updated ones."""
    if index < 0:
        return empty("The n-gram pool fills once the window holds N - 1 levels.")
    step = trace.steps[index]
    d = step.detail
    if not d["pool"]:
        return empty(f"The pool is still empty after step {index + 1}: the window is filling "
                     f"({len(d['window'])} of {trace.config.get('ngram', 4) - 1} levels).")
    born = added_at(trace, index)
    harvested = {tuple(n) for n, new in zip(d["harvested"], d["added"]) if new}
    accepted = d["candidates"][d["accepted"]] if d["accepted"] >= 0 else None
    cells = [[], [], [], []]
    fills = []
    rows = [(key, tail) for key, tails in d["pool"] for tail in tails][:POOL_ROWS]
    for key, tail in rows:
        ngram = (key, *tail)
        if key == d["input_token"] and list(tail) == accepted:
            status, fill = f"accepted: gave {d['accepted_len'] + 1} tokens", colour("accepted")
        elif key == d["input_token"] and list(tail) in d["candidates"]:
            status, fill = "verified, not accepted", colour("rejected")
        elif ngram in harvested:
            status, fill = "new this step", colour("bonus")
        else:
            status, fill = "", "rgba(0,0,0,0)"
        cells[0].append(show(token(trace, key)))
        cells[1].append(" \u00b7 ".join(show(token(trace, t)) for t in tail))
        cells[2].append(str(born.get(ngram, "earlier")))
        cells[3].append(status)
        fills.append(translucent(fill))
    data = [{"type": "table",
             "header": {"values": ["first token", "continuation (N - 1 tokens)", "added at step", "this step"],
                        "fill": {"color": "rgba(128,128,128,0.25)"}, "align": "left"},
             "cells": {"values": cells, "align": "left", "height": POOL_ROW,
                       "fill": {"color": [["rgba(0,0,0,0)"] * len(fills)] * 3 + [fills]}},
             "columnwidth": [1, 3, 1, 2]}]
    for name, c in (("accepted n-gram", colour("accepted")), ("verified, not accepted", colour("rejected")),
                    ("harvested this step", colour("bonus"))):
        data.append({"type": "scatter", "x": [None], "y": [None], "mode": "markers", "name": name,
                     "hoverinfo": "skip", "marker": {"symbol": "square", "size": 12, "color": c}})
    shown = "all shown" if len(rows) == d["pool_size"] else f"showing {plural(len(rows), 'row')}"
    # tall enough for every row shown, so the table never hides rows behind a scroll bar
    return figure(data, None, f"Pool after step {index + 1}: {plural(d['pool_size'], 'n-gram')} under "
                              f"{plural(d['pool_keys'], 'first token')} ({shown})",
                  height=POOL_CHROME + sum(row_height(row) for row in zip(*cells)) + POOL_ROW, legend_below=True,
                  xaxis={"visible": False}, yaxis={"visible": False},
                  # a little narrower than the figure: a line of digits ("step 2: 9") runs wider than the average
                  # character, and the title's first line reached under the toolbar
                  width=SIDE_WIDTH - 24)


def row_height(texts: tuple[str, ...]) -> int:
    """A pool table row's height: Plotly wraps a cell's text at its column's width, so a long continuation takes
    several lines (about 7 px a character in columns of a phone-width figure) and the row grows with them."""
    return POOL_ROW * max(math.ceil(7 * len(text) / width) or 1 for text, width in zip(texts, POOL_COLUMN_PX))


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('ss') else 's'}"


@dataclass(frozen=True)
class Fed:
    """The tokens of one forward by branch; they add up to the step's tokens_fed."""
    pending: int    # text not yet in the cache, ending with the input token
    window: int     # lookahead branch: every window cell but the input token's own
    pooled: int     # verification branch: the pooled n-grams' trie


def fed_counts(step: Step) -> Fed:
    d = step.detail
    window = sum(len(level) for level in d["window"]) - 1
    return Fed(step.tokens_fed - len(d["fed_ids"]) + 1, window, len(d["fed_ids"]) - 1 - window)


def words(trace: Trace, index: int) -> str:
    if index < 0:
        return ("Nothing has run yet. Each step is ONE forward of the target over the last committed token, the "
                "lookahead window (a Jacobi step on past guesses, whose diagonals become n-grams) and the pooled "
                "n-grams that start with the last committed token.")
    s = trace.steps[index]
    d = s.detail
    levels, width = len(d["window"]), len(d["window"][0])
    cands = d["candidates"]
    fed = fed_counts(s)
    # the input token is also the window's first cell (level 0, column 0): counted once, as the input
    text = (f"The target read {s.tokens_fed} tokens in one forward: "
            f"{'the last committed token' if fed.pending == 1 else f'{fed.pending} tokens of text ending with'} "
            f"{quoted(trace, d['input_token'])}, {plural(fed.window, 'guess')} of the window ({levels} "
            f"level{'s' if levels != 1 else ''} x {width} columns, its first cell being that token"
            f"{'; still warming up' if d['warming_up'] else ''})")
    text += (f" and {plural(fed.pooled, 'pooled token')} ({plural(len(cands), 'n-gram')} starting with it, shared "
             f"prefixes fed once). " if cands else
             f"; no pooled n-gram starts with {quoted(trace, d['input_token'])}, so there was nothing to verify. ")
    ids = s.committed_ids
    if d["accepted"] >= 0:
        m = d["accepted_len"]
        text += (f"Candidate {d['accepted'] + 1} {quoted_ids(trace, cands[d['accepted']])} matched {m} "
                 f"token{'s' if m != 1 else ''} ({listing(trace, ids[:m])}), so it gave "
                 f"{len(ids)} tokens for 1 forward")
        text += f", the last being the target's own {quoted(trace, ids[m])}." if len(ids) > m else "."
    elif cands:
        text += (f"None matched: the target's next token is {quoted(trace, ids[0])}, not "
                 f"{' or '.join(sorted({quoted(trace, c[0]) for c in cands}))}; 1 token for 1 forward.")
    else:
        text += f"The target's next token {quoted(trace, ids[0])} was committed: 1 token for 1 forward."
    for draw in d["draws"]:
        sign = "<=" if draw["accepted"] else ">"
        text += (f" Checking {quoted(trace, draw['child_token'])} at depth {draw['depth'] + 1}: "
                 f"u = {draw['u']:.3f} {sign} p = {draw['p_child']:.3f}.")
    new = [n for n, a in zip(d["harvested"], d["added"]) if a]
    if d["harvested"]:
        text += (f" The window's {len(d['harvested'])} diagonals gave {len(new)} n-gram"
                 f"{'s' if len(new) != 1 else ''} new to the pool")
        text += f" (e.g. {quoted_ids(trace, new[0])})." if new else "."
    text += (f" The pool holds {d['pool_size']} n-grams under {d['pool_keys']} first tokens; the window slid "
             f"{d['shift']} column{'s' if d['shift'] != 1 else ''} and its newest level is the target's output.")
    return text


def chips(trace: Trace, index: int) -> list[Chip]:
    s = trace.steps[index]
    d = s.detail
    m = d["accepted_len"]
    full = d["accepted"] >= 0 and m == len(d["candidates"][d["accepted"]])
    out = []
    for i, t in enumerate(s.committed_ids):
        if i < m:
            status, what = "accepted", f"from pooled candidate {d['accepted'] + 1}"
        else:
            status = "bonus" if full else "resampled" if d["candidates"] else "chosen"
            what = "the target's own token"
        out.append(Chip(t, status, f"{what}; target p = {d['raw_p_committed'][i]:.3f}"))
    return out


VIEW = View(
    main=window_and_mask, side=pool_table, words=words, chips=chips,
    fields=("input_token", "window", "new_level_ids", "fed_ids", "parents", "candidates", "matched", "accepted",
            "accepted_len", "draws", "p_committed", "raw_p_committed", "harvested", "added", "pool", "pool_size",
            "pool_keys", "warming_up", "shift", "cache_len"),
    legend=("prompt", "earlier", "accepted", "resampled", "bonus", "chosen"),
    help="**Lookahead decoding** (Fu, Bailis, Stoica and Zhang, 2024). No draft model: ONE forward runs two "
         "branches. The **lookahead branch** is a window of past Jacobi guesses, N - 1 levels of W columns; level j, "
         "column i sits at position i + j, and column i reads as a chain (level 0 up to column i, then up the "
         "levels), so the forward is one Jacobi step for W overlapping trajectories. Its outputs become the newest "
         "level and each diagonal becomes an n-gram in the **pool**, keyed by its first token (at most G per key). "
         "The **verification branch** feeds up to G pooled n-grams that start with the last committed token; the "
         "longest prefix equal to the target's tokens is kept plus the target's own next token (greedy), or each "
         "pooled token is accepted with probability p(x) and rejected ones are zeroed out (sampling, one-hot q). "
         "The **mask** shows which fed token sees which; every one also sees the cached text. Watch the pool "
         "table: on repetitive text, harvested n-grams come back and give several tokens per forward.",
)
