"""Speculative decoding's figures: p against q at every drafted position with the coin flip u
against min(1, p/q), where the step's last token came from (the residual, the bonus or the
target's argmax), and the running acceptance statistics against the formula of Leviathan et al.
"""
from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go

from engines.analysis.theory import (
    TRADE_OFF,
    acceptance_rate,
    drafts,
    expected_speedup,
    expected_tokens,
    speculative_drafts,
    verdict,
)
from engines.trace import Step, Trace
from explorer.figures import heads, theory
from explorer.figures.common import (
    DRAFT_COLOUR,
    TARGET_COLOUR,
    Chip,
    Grid,
    View,
    colour,
    empty,
    figure,
    grid,
    listing,
    quoted,
    show,
    symbol,
    token,
)

BARS = 5          # tokens shown per position
COIN = "#666666"


def is_greedy(trace: Trace) -> bool:
    return float(trace.config.get("temperature", 0) or 0) == 0


def num(v: float) -> str:
    """A probability for a sentence: three decimals, or two significant digits when tiny."""
    return f"{v:.3f}" if v == 0 or v >= 0.001 else f"{v:.1e}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def label(trace: Trace, token_id: int) -> str:
    return show(token(trace, token_id))


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


def is_typical(d: dict) -> bool:
    """Typical acceptance (lossy); traces recorded before the setting existed used the exact rule."""
    return d.get("acceptance", "exact") == "typical"


def decision(trace: Trace, pos: dict) -> str:
    """One position's verdict as a phrase with its numbers."""
    if pos.get("threshold") is not None:
        sign = ">" if pos["p"] > pos["threshold"] else "<="
        return (f"typical: p = {num(pos['p'])} {sign} min(ε, δ·exp(-H)) = {num(pos['threshold'])}, "
                f"H(p) = {pos['entropy']:.2f} nats")
    if pos["u"] is None:   # greedy
        if pos["token"] == pos["target_token"]:
            return f"it is the target's argmax (raw p = {num(pos['p_raw'])})"
        return (f"the target's argmax is {quoted(trace, pos['target_token'])}, not this token "
                f"(raw p = {num(pos['p_raw'])})")
    sign = "<=" if pos["u"] <= pos["ratio"] else ">"
    return f"u = {pos['u']:.3f} {sign} min(1, p/q) = min(1, {num(pos['p'])}/{num(pos['q'])}) = {pos['ratio']:.3f}"


# ----------------------------------------------------------------------------- main figure

def draft_check(trace: Trace, index: int) -> go.Figure:
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
    cols = len(positions) + 1
    titles = [f"{i + 1}: {label(trace, pos['token'])}" for i, pos in enumerate(positions)]
    titles.append(f"{cols}: bonus" if d["next_kind"] == "bonus" else f"{cols}: after the draft")
    g = grid(2, cols, row_heights=[0.74, 0.26], vspace=0.2, hspace=min(0.04, 0.4 / cols), titles=titles)
    data, notes = [], []
    for i, pos in enumerate(positions):
        b = position_bars(trace, pos)
        names = [label(trace, t) for t in b.ids]
        first = i == 0
        data.append({"type": "bar", **g.cell(1, i + 1), "x": names, "y": b.p, "legendgroup": "p",
                     "name": "p, target" + (" (temperature 1)" if raw else ""), "showlegend": first,
                     "marker": {"color": TARGET_COLOUR, "line": {
                         "color": [colour(pos["status"])] + ["rgba(0,0,0,0)"] * (len(b.ids) - 1), "width": 3}},
                     "hovertext": bar_hover(trace, b.ids, b.p, "p"), "hoverinfo": "text"})
        data.append({"type": "bar", **g.cell(1, i + 1), "x": names, "y": b.q, "legendgroup": "q",
                     "name": q_name(trace, d, pos), "showlegend": first,
                     "marker": {"color": DRAFT_COLOUR},
                     "hovertext": bar_hover(trace, b.ids, b.q, "q"), "hoverinfo": "text"})
        coin(data, notes, g.cell(2, i + 1), trace, pos, first)
    after(data, notes, g, trace, step, cols)
    for col, (x, y) in enumerate(zip(g.xaxes(1), g.yaxes(1))):
        x.update(tickangle=-40, tickfont={"size": 10})
        y.update(rangemode="tozero", **({"matches": "y"} if col else {}))   # one scale, so positions compare
    for col, (x, y) in enumerate(zip(g.xaxes(2), g.yaxes(2))):
        # greedy draws no coin: the u axis would only frame the words. Every coin shares one u scale, labelled
        # under the first only: labels under each ran together ("0 0.5 10 0.5 1") on a phone-width screen
        x.update(range=[0, 1.02], tickvals=[0, 0.5, 1], showticklabels=col == 0, visible=not raw)
        y.update(visible=False)
    g.xaxis(2, cols)["visible"] = False     # the column after the draft never has a coin
    g.yaxis(1, 1)["title"] = {"text": "probability"}
    what = "greedy: kept while it is the target's argmax" if raw else "kept while u <= min(1, p/q)"
    return figure(data, g, f"Step {index + 1}: {len(positions)} drafted by the {d['drafter']} drafter, "
                           f"{d['accepted']} kept ({what})", height=430, barmode="group", bargap=0.25,
                  annotations=notes)


def nothing_drafted(d: dict) -> bool:
    """Nothing was drafted: the step is a plain target forward, and its token is the target's own, no bonus."""
    return not d["positions"]


def why_nothing(trace: Trace, index: int, sentence: bool = False) -> str:
    """Why a step drafted nothing, read from the record: a short phrase, or the opening of a sentence."""
    d = trace.steps[index].detail
    if d["k"] == 0:
        return "Only one token was left in the budget" if sentence else "one token left in the budget"
    if d["drafter"] == "ngram" and d["lookup"] is None:
        return ("Prompt lookup found no earlier occurrence of the text's last tokens" if sentence
                else "prompt lookup found no match")
    if d.get("heads") and trace.steps[index].index == 0:
        return ("The heads draft from a verification forward's hidden states and none had run yet" if sentence
                else "the heads had no verification to read yet")
    return "The drafter proposed nothing" if sentence else "the drafter proposed nothing"


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


def unmeasured(trace: Trace) -> str:
    """Why a trace carries no cost calibration (yet)."""
    if (measured := theory.measuring(trace)) is not None:
        return measured
    if trace.config.get("drafter") == "typed":
        return "Be the drafter verifies one typed draft in one forward and does not time the target's forwards"
    return "it was recorded before runs measured c and T(n)"


def coin(data: list[dict], notes: list[dict], axes: dict, trace: Trace, pos: dict, first: bool) -> None:
    """A drafted position's coin row: u against min(1, p/q), or, where no draw decided, a word."""
    status = pos["status"]
    if pos.get("threshold") is not None and status != "not_reached" and not is_greedy(trace):
        typical_coin(data, axes, trace, pos, first)
        return
    if pos["u"] is None or status == "not_reached":   # greedy, or a draw the cut draft never used
        # a word, not a marker: no draw decided here, so a point on the u axis would mean nothing
        hover = (f"not reached: an earlier draft was rejected (its unused draw: {decision(trace, pos)})"
                 if status == "not_reached" and pos["u"] is not None else f"{status}: {decision(trace, pos)}")
        notes.append(cell_note(axes, ("= argmax" if status == "accepted" else "not reached"
                                      if status == "not_reached" else f"argmax: {label(trace, pos['target_token'])}"),
                               status, hover))
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


def after(data: list[dict], notes: list[dict], g: Grid, trace: Trace, step: Step, col: int) -> None:
    """The last column: p after the whole draft (the bonus distribution); the coin row says its fate."""
    d = step.detail
    raw = is_greedy(trace)
    used = d["next_kind"] == "bonus"
    top = with_next(d["bonus_p_raw_top"] if raw else d["bonus_p_top"], d, raw) if used else \
        (d["bonus_p_raw_top"] if raw else d["bonus_p_top"])
    ids = [t for t, _ in top]
    data.append({"type": "bar", **g.cell(1, col), "x": [label(trace, t) for t in ids], "y": [v for _, v in top],
                 "name": "p after the draft", "showlegend": False, "opacity": 1.0 if used else 0.35,
                 "marker": {"color": TARGET_COLOUR, "line": {
                     "color": [colour("bonus") if used and t == d["next_token"] else "rgba(0,0,0,0)" for t in ids],
                     "width": 3}},
                 "hovertext": bar_hover(trace, ids, [v for _, v in top], "p"), "hoverinfo": "text"})
    fate = (f"\u2605 bonus: {label(trace, d['next_token'])}" if used else
            "ended at end-of-text" if d["next_token"] is None else "not reached")
    notes.append(cell_note(g.cell(2, col), fate, "bonus" if used else "not_reached", fate))


def cell_note(axes: dict, text: str, status: str, hover: str) -> dict:
    """A word in the middle of a cell, in its status's colour, with hover text: where no coin was drawn."""
    return {"text": text, "x": 0.5, "y": 0.5, "xref": f"{axes['xaxis']} domain", "yref": f"{axes['yaxis']} domain",
            "showarrow": False, "font": {"color": colour(status)}, "hovertext": hover}


# ----------------------------------------------------------------------------- side figure

@dataclass
class Running:
    """Acceptance statistics after each step so far."""
    steps: list[int]
    alpha: list[float | None]       # accepted / examined draft tokens
    measured: list[float]           # committed tokens per target forward
    expected: list[float | None]    # mean of (1 - alpha^(k+1)) / (1 - alpha) over the steps' draft lengths


def running(trace: Trace, index: int) -> Running:
    out = Running([], [], [], [])
    steps = trace.steps[: index + 1]
    tokens = forwards = 0
    for i, s in enumerate(steps):
        tokens += len(s.committed_ids)
        forwards += s.target_forwards
        alpha = acceptance_rate(steps[: i + 1])
        out.steps.append(s.index + 1)
        out.alpha.append(alpha)
        out.measured.append(tokens / max(forwards, 1))
        out.expected.append(None if alpha is None else sum(
            expected_tokens(alpha, len(t.detail["draft_tokens"])) for t in steps[: i + 1]) / (i + 1))
    return out


def next_token_and_stats(trace: Trace, index: int) -> go.Figure:
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
        notes.append(cell_note(g.cell(4, 1), theory.cost_note_text(trace), "not_reached",
                               f"no calibration: {unmeasured(trace)}"))
    if alpha is None:
        notes.append(cell_note(g.cell(3, 1), "no draft examined yet: no α", "not_reached",
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


def measured_tokens(steps: list[Step]) -> list[theory.Measured]:
    """Mean tokens per iteration at each k the steps drafted (the adaptive schedule and the budget vary it),
    the marker sized by how many steps it averages."""
    by_k: dict[int, list[int]] = {}
    for s in steps:
        if s.detail["draft_tokens"]:
            by_k.setdefault(len(s.detail["draft_tokens"]), []).append(len(s.committed_ids))
    return [theory.Measured(k, sum(v) / len(v), f"measured at k = {k}: {sum(v) / len(v):.2f} tokens per iteration "
                                                f"over {plural(len(v), 'step')}", min(18, 9 + 2 * len(v)))
            for k, v in sorted(by_k.items())]


def run_k(steps: list[Step]) -> int:
    """The k most steps drafted: the run's k, where its measured speedup is placed."""
    ks = [len(s.detail["draft_tokens"]) for s in steps if s.detail["draft_tokens"]]
    return max(set(ks), key=ks.count) if ks else max(1, int(steps[-1].detail["k"]))


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
        name = ("p at the rejection (typical)" if is_typical(d) else "residual norm(max(0, p - q))") \
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
            data.append({"type": "bar", **axes, "x": names, "y": [vals.get(t) for t in ids],
                         "name": f"{who} at position {n + 1}", "marker": {"color": c}, "opacity": 0.45,
                         "hovertext": bar_hover(trace, ids, [vals.get(t) for t in ids], who), "hoverinfo": "text"})


# ----------------------------------------------------------------------------- words and chips

def drafted_sentence(trace: Trace, index: int) -> str:
    d = trace.steps[index].detail
    tokens = d["draft_tokens"]
    if d["drafter"] == "typed":
        return f"You proposed {plural(len(tokens), 'token')}: {listing(trace, tokens)} (a one-hot q)."
    if not tokens:
        return (f"{why_nothing(trace, index, sentence=True)}, so nothing was drafted and this step is a plain target "
                "forward.")
    if d["drafter"] == "ngram":
        look = d["lookup"]
        return (f"Prompt lookup matched the {look['n']}-gram {listing(trace, look['ngram_tokens'])} "
                f"(seen earlier at position {look['match_at']}) and proposed what followed it: "
                f"{listing(trace, tokens)}.")
    who = heads.who(d) if d.get("heads") else "The draft"
    return f"{who} proposed {plural(len(tokens), 'token')}: {listing(trace, tokens)}."


def next_probability(trace: Trace, d: dict) -> str:
    if is_greedy(trace):
        return f"raw p = {num(d['next_raw_p'])}"
    return f"probability {num(d['next_p'])} in the distribution it was drawn from"


def verdict_sentence(trace: Trace, d: dict) -> str:
    kept = [p for p in d["positions"] if p["status"] == "accepted"]
    rejected = [p for p in d["positions"] if p["status"] == "rejected"]
    parts = []
    if kept:
        parts.append("The target accepted " + ", ".join(f"{quoted(trace, p['token'])} ({decision(trace, p)})"
                                                        for p in kept))
    if rejected:
        p = rejected[0]
        verb = "then rejected" if kept else "The target rejected"
        how = ("took its own argmax" if is_greedy(trace) else
               "drew from p itself, as typical acceptance does" if is_typical(d) else
               "drew from the residual max(0, p - q), renormalised")
        parts.append(f"{verb} {quoted(trace, p['token'])} ({decision(trace, p)}) and {how}: "
                     f"{quoted(trace, d['next_token'])} ({next_probability(trace, d)})")
    text = "; ".join(parts) + "." if parts else ""
    if d["next_kind"] == "bonus" and d["positions"]:
        text += (f" Every drafted token passed, so the target's distribution after the last one gave a bonus "
                 f"token: {quoted(trace, d['next_token'])} ({next_probability(trace, d)}).")
    elif d["next_kind"] == "bonus":
        text += f" The target chose {quoted(trace, d['next_token'])} ({next_probability(trace, d)})."
    if d["next_token"] is None:
        text += " The last accepted token ends the text, so no bonus token follows it."
    elif d["ended"]:
        text += " That token ends the text."
    return text.strip()


def words(trace: Trace, index: int) -> str:
    if index < 0:
        return ("Nothing has run yet. Each step drafts up to k tokens, checks them with one target forward, "
                "keeps the accepted prefix and adds one token from the target.")
    s = trace.steps[index]
    d = s.detail
    committed = len(s.committed_ids)
    tc, dc = d["target_cache"], d["draft_cache"]
    text = " ".join(x for x in (drafted_sentence(trace, index), verdict_sentence(trace, d)) if x)
    drafted_by = "head forward" if d.get("heads") else "draft forward"
    text += (f" {plural(committed, 'token')} for 1 target forward"
             f"{' and ' + plural(s.draft_forwards, drafted_by) if s.draft_forwards else ''}, "
             f"{s.wall_s * 1000:.0f} ms.")
    if split := theory.time_split(s):
        text += f" {split}"
    text += f" The target read {plural(s.tokens_fed, 'token')} (cache {tc[0]} → {tc[1]}, cropped to {tc[2]})"
    text += f"; the draft's cache went {dc[0]} → {dc[1]} → {dc[2]}." if dc else "."
    if is_typical(d):
        text += (" Typical acceptance (Medusa-2) keeps x when p(x) > min(ε, δ·exp(-H(p))), with no coin and no "
                 "residual: it is lossy, so sampled output is not distributed as the target's" +
                 (" (under greedy p is one-hot, so only the argmax passes and it equals greedy)." if is_greedy(trace)
                  else "."))
    if d["schedule"] == "adaptive" and not d["ended"]:
        text += f" Adaptive schedule: k = {d['k_next']} next."
    text += acceptance_words(trace, index)
    said = heads.words(trace, index, heads.CHAIN)
    return "\n\n".join(x for x in (text, cost_words(trace, index), said) if x)


def acceptance_words(trace: Trace, index: int) -> str:
    """The two acceptance figures side by side, each named, with its counts."""
    steps = trace.steps[: index + 1]
    r = running(trace, index)
    if r.alpha[-1] is None:
        return ""
    accepted, examined = drafts(speculative_drafts, steps)
    made = sum(len(s.committed_ids) for s in steps)
    return (f" So far, two acceptance figures: the acceptance rate α = accepted / examined drafts = {accepted} / "
            f"{examined} = {r.alpha[-1]:.2f} (a draft counts as examined up to and including the first refused "
            f"one); and the mean tokens per iteration, the target's own token included, = {made} / "
            f"{plural(len(steps), 'iteration')} = {made / len(steps):.2f}, against {expected_words(steps, r)}.")


def expected_words(steps: list[Step], r: Running) -> str:
    """The expected tokens per iteration the measured mean is set against, saying how it was computed: the
    formula at each step's own draft length, averaged, which is the formula at k itself only when every step
    drafted k tokens (the budget's end, a lookup miss or heads not yet fed draft fewer)."""
    alpha, k = r.alpha[-1], run_k(steps)
    lengths = [len(s.detail["draft_tokens"]) for s in steps]
    if all(n == k for n in lengths):
        return f"{r.expected[-1]:.2f} expected from (1 - α^(k+1)) / (1 - α) at k = {k}"
    fewer = sum(n != k for n in lengths)
    return (f"{r.expected[-1]:.2f} expected: (1 - α^(k+1)) / (1 - α) at each iteration's own draft length, "
            f"averaged, since {fewer} of {plural(len(steps), 'iteration')} drafted other than k = {k} "
            f"(at k = {k} throughout it would be {expected_tokens(alpha, k):.2f}, the figure the cost model uses)")


def cost_words(trace: Trace, index: int) -> str:
    """The cost model with the run's numbers: c, T(k+1), the expected and the measured speedup, the best k."""
    cal = theory.calibration(trace)
    if cal is None:
        if theory.measuring(trace) is not None:
            return f"**Cost model:** {unmeasured(trace)}; no speedup is drawn until then."
        return f"**Cost model:** not measured for this trace ({unmeasured(trace)}), so no speedup is drawn."
    steps = trace.steps[: index + 1]
    k, alpha, c = run_k(steps), acceptance_rate(steps), theory.draft_c(trace, cal)
    drafter = trace.config.get("drafter", "model")
    draft = (f"a draft forward {theory.ms(cal.draft_forward_s)}, so c = {c:.2f}" if drafter not in theory.FREE_DRAFTS
             else theory.FREE_DRAFTS[drafter])
    text = (f"**Cost model**, {theory.origin(cal)}: a target forward over one token takes "
            f"{theory.ms(cal.target_forward_s)}; {draft}; verifying k + 1 = {k + 1} tokens costs "
            f"T({k + 1}) = {cal.T(k + 1):.2f} forwards of one token.")
    if alpha is None or c is None:
        return text
    ns, costs = cal.verify_n, cal.verify_cost
    spent = k * c + cal.T(k + 1)
    text += (f" At α = {alpha:.2f} and k = {k} the model expects {expected_tokens(alpha, k):.2f} tokens per "
             f"iteration for {k} × {c:.2f} + {cal.T(k + 1):.2f} = {spent:.2f} forwards: "
             f"{expected_speedup(alpha, k, c, ns, costs):.2f}x.")
    speedup = theory.measured_speedup(steps, cal)
    if speedup is not None:
        made = sum(len(s.committed_ids) for s in steps)
        text += (f" Measured: {speedup:.2f}x ({made} tokens × {theory.ms(cal.target_forward_s)} / "
                 f"{sum(s.wall_s for s in steps):.3f} s of steps; the engine's own work per step, sampling and "
                 f"recording what these figures show, is in that time but not in the model).")
    return f"{text} {TRADE_OFF} Here, at α = {alpha:.2f} and c = {c:.2f}, {verdict(alpha, c, ns, costs)}."


def chips(trace: Trace, index: int) -> list[Chip]:
    d = trace.steps[index].detail
    out = [Chip(p["token"], p["status"], decision(trace, p)) for p in d["positions"]]
    if d["next_token"] is not None:
        out.append(Chip(d["next_token"], "chosen" if nothing_drafted(d) else d["next_kind"],
                        ("nothing drafted: the target's own token, " if nothing_drafted(d) else "")
                        + next_probability(trace, d)))
    return out


VIEW = View(
    main=draft_check, side=next_token_and_stats, words=words, chips=chips, drafter=heads.for_speculative,
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
