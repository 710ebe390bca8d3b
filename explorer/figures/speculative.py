"""Speculative decoding's figures: p against q at every drafted position with the coin flip u
against min(1, p/q), where the step's last token came from (the residual, the bonus or the
target's argmax), and the running acceptance statistics against the formula of Leviathan et al.
"""
from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from engines.analysis.theory import (
    acceptance_rate,
)
from engines.trace import Step, Trace
from explorer.figures import drafters, theory
from explorer.figures.common import (
    DRAFT_COLOUR,
    FIGURE_WIDTH,
    TARGET_COLOUR,
    TEXT_COLOUR,
    Grid,
    View,
    colour,
    empty,
    figure,
    fit,
    grid,
    quoted,
    symbol,
)
from explorer.figures.speculative_words import (
    chips,
    block_decision,
    decision,
    is_block,
    is_greedy,
    is_typical,
    label,
    measured_tokens,
    nothing_drafted,
    plural,
    run_k,
    running,
    unmeasured,
    why_nothing,
    words,
)

BARS = 5          # tokens shown per position
# a verdict in one sign, where a panel is too narrow for its words (the hover has them)
SHORT = {"accepted": "=", "rejected": "\u2260", "not_reached": "\u2013", "bonus": "\u2605"}
PER_ROW = {False: 9, True: 3}   # positions side by side, on a wide page and at phone width
COIN = "#666666"


def tick(text: str, width: int = 8) -> str:
    """A bar's label cut to `width` characters (the hover has it whole), so turned labels stay under their
    own panel."""
    return text if len(text) <= width else text[:width - 1] + "\u2026"


# ----------------------------------------------------------------------------- what a position shows

@dataclass
class Bars:
    ids: list[int]
    p: list[float | None]
    q: list[float | None]


def position_bars(trace: Trace, pos: dict) -> Bars:
    """The drafted token and the most probable others under p and q. Greedy runs show the models'
    temperature-1 distributions (the processed ones are one-hot); a deterministic drafter has no raw q.
    Values outside a recorded top-5 are unknown and left out (None), never guessed."""
    raw = is_greedy(trace)
    p_top = dict(pos["p_raw_top"] if raw else pos["p_top"])
    q_list = pos["q_raw_top"] if raw and pos.get("q_raw_top") is not None else pos["q_top"]
    q_top = dict(q_list)
    x = pos["token"]
    p_top[x] = pos["p_raw"] if raw else pos["p"]
    q_top[x] = pos["q_raw"] if raw and pos.get("q_raw") is not None else pos["q"]
    others = sorted((set(p_top) | set(q_top)) - {x}, key=lambda t: -max(p_top.get(t, 0), q_top.get(t, 0)))
    ids = [x] + others[: BARS - 1]
    return Bars(ids, [p_top.get(t) for t in ids], [q_top.get(t) for t in ids])


def bar_hover(trace: Trace, ids: list[int], values: list[float | None], who: str) -> list[str]:
    return [f"{quoted(trace, t)} (id {t})<br>{who} = " + (f"{v:.4f}" if v is not None else "below its top 5")
            for t, v in zip(ids, values)]


def draft_check(trace: Trace, index: int, narrow: bool = False) -> go.Figure:
    """One column per drafted position (and one for the bonus position): p and q as bars, and below
    them the coin: the acceptance region [0, min(1, p/q)] with the uniform u drawn against it."""
    if index < 0:
        return empty("Press Step: the drafter proposes k tokens and one target forward checks them all.")
    step = trace.steps[index]
    d = step.detail
    positions = d["positions"]
    if not positions:
        return plain_forward(trace, index)
    raw = is_greedy(trace)
    columns = len(positions) + 1
    # the positions wrap, PER_ROW[narrow] to a row of panels, rather than shrink to unreadable columns
    per_row = min(columns, PER_ROW[narrow])
    blocks = -(-columns // per_row)
    hspace = min(0.04 if not narrow else 0.08, 0.4 / per_row)
    # px of a panel's width for its title and words: the plot area less the gaps, a few px to spare
    room = (FIGURE_WIDTH[narrow] - 70) * (1 - hspace * (per_row - 1)) / per_row - 10
    titles = [fit(f"{i + 1}: {label(trace, pos['token'])}", room, 14) or f"{i + 1}" for i, pos in enumerate(positions)]
    titles.append(fit(f"{columns}: bonus" if d["next_kind"] == "bonus" else f"{columns}: after the draft", room, 14)
                  or f"{columns}")
    titles += [""] * (blocks * per_row - columns)
    # each block of positions is a row of bars over a row of coins; only bar rows carry titles
    grid_titles = [t for b in range(blocks) for t in (*titles[b * per_row:(b + 1) * per_row], *[""] * per_row)]
    g = grid(2 * blocks, per_row, row_heights=[0.7, 0.3] * blocks, vspace=0.2 / blocks, hspace=hspace,
             titles=grid_titles)

    def cell(i: int, coin_row: bool) -> tuple[int, int]:
        return 2 * (i // per_row) + 1 + coin_row, i % per_row + 1

    data, notes = [], []
    for i, pos in enumerate(positions):
        b = position_bars(trace, pos)
        names = [label(trace, t) for t in b.ids]
        g.xaxis(*cell(i, False)).update(tickvals=names, ticktext=[tick(n) for n in names])
        first = i == 0
        reached = pos["status"] != "not_reached"   # a position after the first rejection was never examined
        data.append({"type": "bar", **g.cell(*cell(i, False)), "x": names, "y": b.p, "legendgroup": "p",
                     "name": "p, target" + (" (temperature 1)" if raw else ""), "showlegend": first,
                     "opacity": 1.0 if reached else 0.4,
                     "marker": {"color": TARGET_COLOUR, "line": {
                         "color": [colour(pos["status"])] + ["rgba(0,0,0,0)"] * (len(b.ids) - 1), "width": 3}},
                     "hovertext": bar_hover(trace, b.ids, b.p, "p"), "hoverinfo": "text"})
        data.append({"type": "bar", **g.cell(*cell(i, False)), "x": names, "y": b.q, "legendgroup": "q",
                     "name": q_name(trace, d, pos), "showlegend": first,
                     "opacity": 1.0 if reached else 0.4, "marker": {"color": DRAFT_COLOUR},
                     "hovertext": bar_hover(trace, b.ids, b.q, "q"), "hoverinfo": "text"})
        if is_block(d) and pos["u"] is not None:
            block_coin(data, g.cell(*cell(i, True)), d, i, first)
        else:
            coin(data, notes, g.cell(*cell(i, True)), g.centre(*cell(i, True)), room, trace, pos, first)
    after(data, notes, g, trace, step, cell(columns - 1, False), cell(columns - 1, True), room)
    for row in range(1, 2 * blocks + 1, 2):
        for col, (x, y) in enumerate(zip(g.xaxes(row), g.yaxes(row))):
            # no automargin: Plotly widened the left margin for turned labels until the plots were 64 px wide
            x.update(tickangle=-40, tickfont={"size": 10}, automargin=False)
            y.update(rangemode="tozero", **({"matches": "y"} if col or row > 1 else {}))   # one scale: they compare
        for col, (x, y) in enumerate(zip(g.xaxes(row + 1), g.yaxes(row + 1))):
            # greedy draws no coin: the u axis would only frame the words. Every coin shares one u scale,
            # labelled under the first only: labels under each ran together ("0 0.5 10 0.5 1") on a phone
            x.update(range=[0, 1.02], tickvals=[0, 0.5, 1], showticklabels=col == 0 and row == 1, visible=not raw)
            y.update(visible=False)
    g.xaxis(*cell(columns - 1, True))["visible"] = False     # the column after the draft never has a coin
    for i in range(columns, blocks * per_row):                # the empty panels of the last block
        for coin_row in (False, True):
            g.xaxis(*cell(i, coin_row))["visible"] = False
            g.yaxis(*cell(i, coin_row))["visible"] = False
    g.yaxis(1, 1)["title"] = {"text": "probability"}
    what = ("greedy: kept while it is the target's argmax" if raw else
            f"block: the last i with u <= h_i; token verification would keep {d['block']['token_accepted']}"
            if is_block(d) else "kept while u <= min(1, p/q)")
    title = f"Step {index + 1}: {len(positions)} drafted by the {d['drafter']} drafter, {d['accepted']} kept ({what})"
    return figure(data, g, title, height=170 + 260 * blocks, barmode="group",
                  bargap=0.25, annotations=notes, width=FIGURE_WIDTH[narrow])


def plain_forward(trace: Trace, index: int) -> go.Figure:
    """A step that drafted nothing: one panel, the target's distribution after the text with its own token
    outlined. No drafted positions, so no coin and no bonus."""
    d = trace.steps[index].detail
    raw = is_greedy(trace)
    data: list[dict] = []
    notes: list[dict] = []
    next_bars(data, notes, {"xaxis": "x", "yaxis": "y"}, trace, d)
    chose = (f"chose {label(trace, d['next_token'])}" if d["next_token"] is not None else "ended the text")
    what = "its argmax" if raw else "drawn from p"
    return figure(data, None, f"Step {index + 1}: nothing drafted ({why_nothing(trace, index)}); a plain target "
                              f"forward {chose} ({what})", height=430, annotations=notes,
                  xaxis={"tickangle": -40, "tickfont": {"size": 10}},
                  yaxis={"title": {"text": "probability"}, "rangemode": "tozero"})


def q_name(trace: Trace, d: dict, pos: dict) -> str:
    """The q bars' legend: a draft model's or a head's own distribution (at temperature 1 under greedy), or,
    for a drafter with no distribution (typed, prompt lookup), the one-hot q verification used."""
    if d["drafter"] == "typed":
        return "q = 1 on the typed token (a typed draft has no distribution)"
    if pos.get("q_raw_top") is None:
        return "q = 1 on the looked-up token (prompt lookup has no distribution)"
    return "q, draft" + (" (temperature 1)" if is_greedy(trace) else "")


def coin(data: list[dict], notes: list[dict], axes: dict, centre: tuple[float, float], room: float, trace: Trace,
         pos: dict, first: bool) -> None:
    """A drafted position's coin row: u against min(1, p/q), or, where no draw decided, a word."""
    status = pos["status"]
    if pos.get("threshold") is not None and status != "not_reached" and not is_greedy(trace):
        typical_coin(data, axes, trace, pos, first)
        return
    if pos["u"] is None or status == "not_reached":   # greedy, or a draw the cut draft never used
        # a word, not a marker: no draw decided here, so a point on the u axis would mean nothing
        hover = (f"not reached: an earlier draft was rejected (its unused draw: {decision(trace, pos)})"
                 if status == "not_reached" and pos["u"] is not None else f"{status}: {decision(trace, pos)}")
        word = ("= argmax" if status == "accepted" else "not reached" if status == "not_reached"
                else f"argmax: {label(trace, pos['target_token'])}")
        # the whole phrase or its sign; only the argmax's token may be cut
        shown_word = fit(word, room) if status == "rejected" else word if fit(word, room) == word else ""
        notes.append(cell_note(centre, shown_word or SHORT[status], status, hover))
        return
    data.append({"type": "bar", **axes, "x": [pos["ratio"]], "y": ["coin"], "orientation": "h",
                 "marker": {"color": colour(status)}, "opacity": 0.35, "name": "min(1, p/q): accept region",
                 "legendgroup": "ratio", "showlegend": first, "hoverinfo": "text",
                 "hovertext": f"accept when u <= min(1, p/q) = {pos['ratio']:.4f}"})
    data.append({"type": "scatter", **axes, "x": [pos["u"]], "y": ["coin"], "mode": "markers",
                 "marker": {"symbol": symbol(status), "size": 13, "color": colour(status),
                            "line": {"color": COIN, "width": 1}},
                 "name": "u, the uniform draw", "legendgroup": "u", "showlegend": first,
                 "hovertext": f"{status}: {decision(trace, pos)}", "hoverinfo": "text"})


def block_coin(data: list[dict], axes: dict, d: dict, i: int, first: bool) -> None:
    """Block verification reads every coin from the end: u_i against the stop chance h_i (the bar), with the
    token rule's bound min(1, p/q) marked on the same axis, so both rules' decisions show on one coin."""
    pos, b = d["positions"][i], d["block"]
    status = pos["status"]
    data.append({"type": "bar", **axes, "x": [b["stop_chances"][i]], "y": ["coin"], "orientation": "h",
                 "marker": {"color": colour(status)}, "opacity": 0.35, "name": "h_i: block keeps x_1..x_i below",
                 "legendgroup": "stop", "showlegend": first, "hoverinfo": "text",
                 "hovertext": f"block verification keeps x_1..x_{i + 1} when u <= h_{i + 1} = "
                              f"{b['stop_chances'][i]:.4f} and no later coin passed"})
    data.append({"type": "scatter", **axes, "x": [pos["ratio"]], "y": ["coin"], "mode": "markers",
                 "marker": {"symbol": "line-ns", "size": 16, "color": COIN, "line": {"color": COIN, "width": 2}},
                 "name": "min(1, p/q): token rule's bound", "legendgroup": "ratio", "showlegend": first,
                 "hoverinfo": "text", "hovertext": f"token verification keeps this draft, if every earlier one was "
                                                   f"kept, when u <= min(1, p/q) = {pos['ratio']:.4f}"})
    data.append({"type": "scatter", **axes, "x": [pos["u"]], "y": ["coin"], "mode": "markers",
                 "marker": {"symbol": symbol(status), "size": 13, "color": colour(status),
                            "line": {"color": COIN, "width": 1}},
                 "name": "u, the uniform draw", "legendgroup": "u", "showlegend": first,
                 "hovertext": f"{status}: {block_decision(d, i)}", "hoverinfo": "text"})


def typical_coin(data: list[dict], axes: dict, trace: Trace, pos: dict, first: bool) -> None:
    """Typical acceptance draws no coin: p(x) against the threshold, kept when it lies beyond the bar."""
    status = pos["status"]
    data.append({"type": "bar", **axes, "x": [pos["threshold"]], "y": ["coin"], "orientation": "h",
                 "marker": {"color": colour("rejected")}, "opacity": 0.35, "legendgroup": "threshold",
                 "name": "typical threshold min(ε, δ·exp(-H)): refused below", "showlegend": first,
                 "hoverinfo": "text", "hovertext": f"refused when p <= {pos['threshold']:.4f}"})
    data.append({"type": "scatter", **axes, "x": [pos["p"]], "y": ["coin"], "mode": "markers",
                 "marker": {"symbol": symbol(status), "size": 13, "color": colour(status),
                            "line": {"color": COIN, "width": 1}},
                 "name": "p(x), the target's probability", "legendgroup": "px", "showlegend": first,
                 "hovertext": f"{status}: {decision(trace, pos)}", "hoverinfo": "text"})


def after(data: list[dict], notes: list[dict], g: Grid, trace: Trace, step: Step, bars: tuple[int, int],
          fate_cell: tuple[int, int], room: float) -> None:
    """The last column: p after the whole draft (the bonus distribution); the coin row says its fate."""
    d = step.detail
    raw = is_greedy(trace)
    used = d["next_kind"] == "bonus"
    top = with_next(d["bonus_p_raw_top"] if raw else d["bonus_p_top"], d, raw) if used else \
        (d["bonus_p_raw_top"] if raw else d["bonus_p_top"])
    ids = [t for t, _ in top]
    g.xaxis(*bars).update(tickvals=[label(trace, t) for t in ids], ticktext=[tick(label(trace, t)) for t in ids])
    # unused, the bars are lighter, but not so light they vanish on a dark page
    data.append({"type": "bar", **g.cell(*bars), "x": [label(trace, t) for t in ids], "y": [v for _, v in top],
                 "name": "p after the draft", "showlegend": False, "opacity": 1.0 if used else 0.6,
                 "marker": {"color": TARGET_COLOUR, "line": {
                     "color": [colour("bonus") if used and t == d["next_token"] else "rgba(0,0,0,0)" for t in ids],
                     "width": 3}},
                 "hovertext": bar_hover(trace, ids, [v for _, v in top], "p"), "hoverinfo": "text"})
    fate = (f"\u2605 bonus: {label(trace, d['next_token'])}" if used else
            "ended at end-of-text" if d["next_token"] is None else "not reached")
    status = "bonus" if used else "not_reached"
    notes.append(cell_note(g.centre(*fate_cell), fit(fate, room) if used else fate if fit(fate, room) == fate
                           else SHORT[status], status, fate))


def cell_note(centre: tuple[float, float], text: str, status: str, hover: str) -> dict:
    """A word in the middle of a cell, with hover text: where no coin was drawn. Placed on the page, not by the
    cell's axis domain: Plotly drew domain-placed words of hidden axes all in the first cell, on top of each
    other. The text is the theme's grey (the status colours read under 4.5:1 on white); a box in the status's
    colour frames it, dotted where the position was never reached."""
    return {"text": text, "x": centre[0], "y": centre[1], "xref": "paper", "yref": "paper",
            "showarrow": False, "font": {"color": TEXT_COLOUR}, "hovertext": hover, "bordercolor": colour(status),
            "borderwidth": 1, "borderpad": 2}


# ----------------------------------------------------------------------------- side figure

def next_token_and_stats(trace: Trace, index: int, narrow: bool = False) -> go.Figure:
    """Top: the distribution the step's last token was drawn from. Bottom: alpha, measured tokens per
    target forward and the expected value (1 - alpha^(k+1)) / (1 - alpha), step by step."""
    if index < 0:
        return empty("The residual distribution and the running acceptance rate appear after the first step.")
    d = trace.steps[index].detail
    r = running(trace, index)
    # the cost model's curves need α: until a draft is examined there is nothing to draw, so no panels for it
    theory_rows = r.alpha[-1] is not None
    g = (grid(4, 1, row_heights=[0.28, 0.28, 0.22, 0.22], vspace=0.085, secondary_y=((2, 1),),
              titles=[next_title(trace, d), "Running statistics", theory.TOKENS_TITLE, theory.SPEEDUP_TITLE])
         if theory_rows else
         grid(2, 1, row_heights=[0.5, 0.5], vspace=0.15, secondary_y=((2, 1),),
              titles=[next_title(trace, d), "Running statistics (α and the cost model once a draft is examined)"]))
    data, notes = [], []
    next_bars(data, notes, g.cell(1, 1), trace, d)
    data += [
        {"type": "scatter", **g.cell(2, 1), "x": r.steps, "y": r.measured, "mode": "lines+markers",
         "name": "measured tokens / target forward", "marker": {"color": TARGET_COLOUR},
         "hovertemplate": "after step %{x}: %{y:.3f} tokens per target forward<extra></extra>"},
        {"type": "scatter", **g.cell(2, 1), "x": r.steps, "y": r.expected, "mode": "lines+markers",
         "line": {"dash": "dash", "color": colour("bonus")}, "name": "expected (1 - α^(k+1)) / (1 - α)",
         "hovertemplate": "after step %{x}: %{y:.3f} expected for this α and these k<extra></extra>"},
        {"type": "scatter", **g.cell(2, 1, secondary_y=True), "x": r.steps, "y": r.alpha, "mode": "lines+markers",
         "line": {"color": colour("accepted")}, "marker": {"symbol": "circle-open"}, "name": "acceptance rate α",
         "hovertemplate": "after step %{x}: α = %{y:.3f}<extra></extra>"},
    ]
    g.yaxis(2, 1).update(title={"text": "tokens / forward"}, rangemode="tozero")
    g.yaxis(2, 1, secondary_y=True).update(title={"text": "α"}, range=[0, 1.05], tickmode="array",
                                           tickvals=[0, 0.25, 0.5, 0.75, 1], showgrid=False)
    g.yaxis(1, 1).update(title={"text": "probability"}, rangemode="tozero")
    g.xaxis(2, 1).update(title={"text": "step"}, tickmode="linear", tick0=1, dtick=max(1, round(len(r.steps) / 8)))
    if theory_rows:
        theory_panels(data, notes, g, trace, index)
    return figure(data, g, "", height=960 if theory_rows else 540, barmode="group", annotations=notes,
                  legend_below=True)


def theory_panels(data: list[dict], notes: list[dict], g: Grid, trace: Trace, index: int) -> None:
    """Rows 3 and 4: the cost model over k for the run's alpha and c so far, the run's measured points on it."""
    steps = trace.steps[: index + 1]
    alpha, cal = acceptance_rate(steps), theory.calibration(trace)
    c = theory.draft_c(trace, cal)
    for row in (3, 4):
        g.xaxis(row, 1).update(theory.k_axis())
        g.yaxis(row, 1).update(rangemode="tozero")
    g.yaxis(3, 1)["title"] = {"text": "tokens / iteration"}
    g.yaxis(4, 1)["title"] = {"text": "speedup"}
    if cal is None or c is None:
        notes.append(cell_note(g.centre(4, 1), theory.cost_note_text(trace), "not_reached",
                               f"no calibration: {unmeasured(trace)}"))
    if alpha is None:
        notes.append(cell_note(g.centre(3, 1), "no draft examined yet: no α", "not_reached",
                               "the curves need the acceptance rate α, accepted / examined drafts"))
        return
    ns, costs = (cal.verify_n, cal.verify_cost) if cal is not None else ([], [])
    cv = theory.Curves(f"expected at α {alpha:.2f}" + (f", c {c:.2f}" if c is not None else ""), alpha, c, ns, costs,
                       colour("bonus"), measured_tokens(steps), marker_name="measured so far")
    speedup = theory.measured_speedup(steps, cal) if cal is not None else None
    if speedup is not None and c is not None:
        k = run_k(steps)
        cv.speedup = [theory.Measured(k, speedup, f"measured so far: {speedup:.2f}x over {plural(len(steps), 'step')}"
                                                  f" (most at k = {k}), wall time and all")]
    data += theory.curve_traces(cv, g.cell(3, 1), g.cell(4, 1))
    data.append(theory.plain_line(g.cell(4, 1)))


def next_title(trace: Trace, d: dict) -> str:
    if d["next_token"] is None:
        return "No token after the draft: it ended the text"
    if nothing_drafted(d):
        return ("The target's own token (nothing drafted): " +
                ("its argmax" if is_greedy(trace) else "drawn from p"))
    if d["next_kind"] == "bonus":
        return "Bonus token: drawn from p after the last draft" if not is_greedy(trace) else \
            "Bonus token: the target's argmax after the draft"
    if is_greedy(trace):
        return "Correction: the target's argmax at the rejection"
    if is_typical(d):
        return "Typical acceptance: p itself at the rejection (no residual: lossy)"
    if is_block(d) and d["accepted"]:
        return f"Block residual norm(max(0, p_{d['accepted']}·p - q)) after the kept drafts"
    return "Residual norm(max(0, p - q)) at the rejection"


def with_next(top: list, d: dict, raw: bool) -> list:
    """A recorded top-5 plus the token actually drawn, whose own probability is recorded too."""
    if d["next_token"] in dict(top):
        return top
    return [*top, [d["next_token"], d["next_raw_p"] if raw else d["next_p"]]]


def next_bars(data: list[dict], notes: list[dict], axes: dict, trace: Trace, d: dict) -> None:
    """The distribution the step's last token came from, that token outlined; at a sampled rejection
    also p and q there, so the residual max(0, p - q) can be read off them."""
    if d["next_token"] is None:
        notes.append({"text": "An accepted end-of-text token ends the text: no bonus follows it.", "x": 0.5,
                      "y": 0.5, "xref": "x domain", "yref": "y domain", "showarrow": False})
        return
    n, raw = d["accepted"], is_greedy(trace)
    rejected = d["positions"][n] if d["next_kind"] == "resampled" else None
    if raw:   # greedy: the draw is an argmax; show the model's own distribution at that position
        source = rejected["p_raw_top"] if rejected else d["bonus_p_raw_top"]
        name = "p, target (temperature 1)"
    else:
        source = d["next_top"]
        name = ("p at the rejection (typical)" if is_typical(d) else "block residual" if is_block(d) and n else
                "residual norm(max(0, p - q))") \
            if rejected else "p, target" if nothing_drafted(d) else "p after the draft"
    source = with_next(source, d, raw)
    ids = [t for t, _ in source]
    values = dict(source)
    kind = "chosen" if nothing_drafted(d) else d["next_kind"]
    names = [label(trace, t) for t in ids]
    data.append({"type": "bar", **axes, "x": names, "y": [values.get(t) for t in ids], "name": name,
                 "marker": {"color": colour(kind), "line": {
                     "color": [colour(kind) if t == d["next_token"] else "rgba(0,0,0,0)" for t in ids], "width": 3}},
                 "hovertext": bar_hover(trace, ids, [values.get(t) for t in ids], name), "hoverinfo": "text"})
    if rejected and not raw:
        p, q = dict(rejected["p_top"]), dict(rejected["q_top"])
        for who, vals, c in (("p", p, TARGET_COLOUR), ("q", q, DRAFT_COLOUR)):
            if not any(t in vals for t in ids):    # none of these tokens in its recorded top-k: nothing to draw
                continue
            data.append({"type": "bar", **axes, "x": names, "y": [vals.get(t) for t in ids],
                         "name": f"{who} at position {n + 1}", "marker": {"color": c}, "opacity": 0.45,
                         "hovertext": bar_hover(trace, ids, [vals.get(t) for t in ids], who), "hoverinfo": "text"})


VIEW = View(
    main=draft_check, side=next_token_and_stats, words=words, chips=chips, drafter=drafters.for_speculative,
    fields=("draft_tokens", "accepted", "positions", "bonus_p_top", "bonus_p_raw_top", "lookup", "next_token",
            "next_kind", "next_p", "next_top", "drafter", "k", "k_next", "schedule", "ended", "target_cache",
            "draft_cache"),
    legend=("prompt", "earlier", "accepted", "rejected", "resampled", "bonus", "chosen", "not_reached"),
    help="**Speculative decoding** (Leviathan et al. 2023; Chen et al. 2023). A cheap drafter proposes k "
         "tokens: the draft model samples them from its distribution q, or prompt lookup copies what followed "
         "the text's last n-gram earlier on (a one-hot q). One target forward scores every drafted position at "
         "once, giving p.\n\n"
         "**Top figure:** one column per drafted position: p (blue) and q (pink) for the drafted token (outlined "
         "in its fate's colour) and the likeliest others. Below each, the coin: the bar is min(1, p/q), the "
         "chance of keeping the token, and the marker is the uniform draw u; the token is kept when u falls "
         "inside the bar. Under greedy decoding the rule is simpler: keep while the token is the target's "
         "argmax, and the bars show the models at temperature 1.\n\n"
         "**Bottom figure:** where the step's last token came from: at a rejection, the residual "
         "norm(max(0, p - q)), which is exactly what makes the output distributed as the target's; after a "
         "fully accepted draft, a bonus token from p. Then the running acceptance rate α and tokens per target "
         "forward beside the expected (1 - α^(k+1)) / (1 - α). Last, the cost model, measured on this machine "
         "when the run started: the expected tokens per iteration and the expected speedup "
         "tokens / (k·c + T(k+1)) over k for the run's α and c (c: a draft forward over a target forward; T(n): "
         "verifying n tokens over one), with the run's measured points on them.\n\n"
         "Look for: a draft that agrees with the target (high α) gives several tokens per forward; a rejection "
         "costs the rest of the draft but never changes what the target would have written.",
)
