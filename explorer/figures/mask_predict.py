"""Mask-predict and masked diffusion: the order in which the span unmasks, and how sure the model was.

Main figure: positions x iterations, the token in every cell coloured by confidence, masks grey,
re-masked cells crossed; below it the text as it stands, coloured by the iteration each token settled.
Side figure: this iteration's confidence at every position, and the masks left per iteration against
the schedule and the paper's formula. Everything is read from the recorded Steps.
"""
from __future__ import annotations

import math

import plotly.graph_objects as go

from engines.trace import Trace
from explorer.figures.common import (
    FIGURE_WIDTH,
    TARGET_COLOUR,
    Chip,
    View,
    colour,
    count_axis,
    empty,
    figure,
    fit,
    grid,
    mask_token,
    show,
    symbol,
    token,
)
from explorer.figures.mask_predict_words import coin_note, fmt, span_at, words

CELL_BUDGET = 384           # heatmap cells drawn at most, so one step's figure stays small
ROWS_SHOWN = 32             # iterations drawn at most, so rows stay readable
# Light sequential scales under dark text: white text on the dark end of Cividis or Plasma could not be read
CELL_TEXT = "#111111"
CONFIDENCE_SCALE = [[0.0, "#F4F8FB"], [0.5, "#A9CFE9"], [1.0, "#4A9FD6"]]
SETTLED_SCALE = [[0.0, "#FFF4CC"], [1.0, "#E69F00"]]
MASK_GREY = colour("masked")
PANEL_PX = 190              # px of each panel of the side figure, stacked


def mask_id(trace: Trace) -> int:
    """The mask token: what every position of the span holds before the first iteration."""
    return mask_token(trace)


def state(r: dict, i: int, mask: int) -> str:
    """What happened at position i in one iteration."""
    if i in r["remasked"]:
        return "re-masked"
    if i in r["unmasked"]:
        return "unmasked"
    if r["tokens"][i] == mask:
        return "guessed, still masked" if i in r["masked_before"] else "masked"
    return "kept"


def cell_text(trace: Trace, r: dict, i: int, mask: int) -> str:
    """The token a cell shows: the prediction (also for re-masked cells), nothing for a plain mask."""
    kind = state(r, i, mask)
    return "" if kind in ("masked", "guessed, still masked") else show(token(trace, r["predicted_tokens"][i]))


def hover(trace: Trace, r: dict, i: int, iteration: int, mask: int, candidates: int = 0) -> str:
    """What was recorded about position i in one iteration, with its best `candidates` of the top-5."""
    kind = state(r, i, mask)
    guess = r["predicted_tokens"][i]
    text = f"iter {iteration + 1}, pos {i}: {kind}"
    if guess != mask:
        text += f"<br>{show(token(trace, guess))} (id {guess}) conf {fmt(r['confidence'][i])} p {fmt(r['p'][i])}"
        if r["settled"][i] is not None:
            text += f"<br>unchanged since iter {r['settled'][i] + 1}"
    text += coin_note(r, i)
    if candidates and r["top"][i]:
        text += "<br>candidates: " + ", ".join(f"{show(token(trace, t))} {fmt(p)}" for t, p in r["top"][i][:candidates])
    return text


def unmasking(trace: Trace, index: int, narrow: bool = False) -> go.Figure:
    """The unmasking-order heatmap (recent iterations x positions) and the settled-iteration strip."""
    if index < 0 or not trace.steps:
        return empty("Press Step: one forward predicts every masked position at once.")
    mask, best = mask_id(trace), trace.steps[index].detail["best"]
    length = span_at(trace, index)["length"]
    shown = max(1, min(index + 1, CELL_BUDGET // length, ROWS_SHOWN))
    rows = range(index + 1 - shown, index + 1)
    records = [trace.steps[s].detail["spans"][best] for s in rows]
    y = [s + 1 for s in rows]       # numeric rows, labelled "iter k", so outlines can sit on a cell's edge
    x = list(range(length))
    g = grid(2, 1, row_heights=[0.76, 0.24], vspace=0.06)
    top = g.cell(1, 1)
    # a cell's px (the plot less the colour bar); its token is cut to that and left to the hover where two
    # characters would not fit, and position ticks keep 24 px apart
    cell_px = (FIGURE_WIDTH[narrow] - 170) / length
    tick_every = max(1, math.ceil(24 / cell_px))
    grey = [[1 if state(r, i, mask) in ("masked", "guessed, still masked") else None for i in x] for r in records]
    data = [{"type": "heatmap", **top, "x": x, "y": y, "z": grey, "colorscale": [[0, MASK_GREY], [1, MASK_GREY]],
             "showscale": False, "hoverinfo": "skip", "xgap": 1, "ygap": 1}]
    conf = [[None if state(r, i, mask) in ("masked", "guessed, still masked") else r["confidence"][i]
             for i in x] for r in records]
    low = min([0.0] + [c for row in conf for c in row if c is not None])
    data.append({"type": "heatmap", **top, "x": x, "y": y, "z": conf, "zmin": low, "zmax": 1,
                 "colorscale": CONFIDENCE_SCALE, "xgap": 1, "ygap": 1,
                 "text": [[fit(cell_text(trace, r, i, mask), cell_px - 2, 9) for i in x] for r in records],
                 "texttemplate": "%{text}", "textfont": {"size": 9, "color": CELL_TEXT},
                 "customdata": [[hover(trace, r, i, s, mask) for i in x] for s, r in zip(rows, records)],
                 "hovertemplate": "%{customdata}<extra></extra>", "name": "confidence",
                 "colorbar": {"title": {"text": "confidence"}, "len": 0.66, "y": 0.66}})
    for kind, status, label, dash in (("unmasked", "chosen", "unmasked this iteration", "solid"),
                                      ("re-masked", "rejected", "re-masked (may change)", "dot")):
        cells = [(i, y[k]) for k, r in enumerate(records) for i in x if state(r, i, mask) == kind]
        xs, ys = outlines(cells)
        # the cell's hover already names its state, so the outline takes no hover of its own
        data.append({"type": "scatter", **top, "x": xs, "y": ys, "mode": "lines", "name": label,
                     "line": {"color": colour(status), "width": 2, "dash": dash}, "hoverinfo": "skip"})
    data.append({"type": "scatter", **top, "x": [None], "y": [None], "mode": "markers", "name": "masked",
                 "marker": {"symbol": "square", "color": MASK_GREY, "size": 12}, "hoverinfo": "skip"})
    settled_strip(data, g.cell(2, 1), trace, records[-1], index, mask, cell_px)
    rows_used = 1 + cache_strip(data, g.cell(2, 1), trace, records[-1])
    # shared x: the top axis follows the bottom one and leaves the tick labels to it
    g.xaxis(1, 1).update(matches="x2", showticklabels=False)
    # the rows' own extent, newest at the bottom: autorange would pad around the outlines
    g.yaxis(1, 1).update(range=[y[-1] + 0.5, y[0] - 0.5], tickmode="array", tickvals=y,
                         ticktext=[f"iter {k}" for k in y])
    for axis in g.xaxes():
        axis.update(range=[-0.5, length - 0.5])
    g.yaxis(2, 1).update(range=[rows_used - 0.5, -0.5], tickmode="array", tickvals=list(range(rows_used)),
                         ticktext=STRIP_ROWS[:rows_used])
    g.xaxis(2, 1).update(title={"text": "position in the span"}, tickmode="linear", tick0=0, dtick=tick_every)
    if shown < index + 1:
        g.yaxis(1, 1).update(title={"text": f"last {shown} of {index + 1}"})
    # short: the colour bar names the colour, and a longer second line reached under the toolbar on a phone
    return figure(data, g, f"Iteration {index + 1}: unmasking order",
                  height=min(720, max(380, 140 + 22 * shown)), width=FIGURE_WIDTH[narrow])


OUTLINE_INSET = 0.44   # outlines run just inside a cell's edge: clear of its centred token, apart from the next


def outlines(cells: list[tuple[int, int]]) -> tuple[list, list]:
    """One rectangle per (position, iteration) cell along its edge, as a single line trace (None between
    rectangles). A marker on the cell covered its token once cells were narrower than the token's text."""
    xs, ys = [], []
    for cx, cy in cells:
        for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1), (-1, -1)):
            xs.append(cx + dx * OUTLINE_INSET)
            ys.append(cy + dy * OUTLINE_INSET)
        xs.append(None)
        ys.append(None)
    return xs, ys


def unmasked_at(trace: Trace, index: int, best: int) -> list[int | None]:
    """For each position of the span, the iteration (from 1) that last unmasked it, up to this one; None while
    it is masked. This is when its token entered the text: the record's `settled` says only since when the
    prediction has not changed, which can be long before (predicted at 1, unmasked at 3)."""
    length = trace.steps[index].detail["spans"][best]["length"]
    at: list[int | None] = [None] * length
    for s in trace.steps[: index + 1]:
        r = s.detail["spans"][best]
        for i in r["unmasked"]:
            at[i] = s.index + 1
        for i in r["remasked"]:
            at[i] = None
    return at


# The strip's rows, numbered and labelled by ticks: Plotly.js (3.x) fails to draw one-row heatmaps on a
# categorical axis past its first category ("Cannot read properties of undefined"), which froze the page.
STRIP_ROWS = ["text now", "key-value cache"]


def settled_strip(data: list[dict], axes: dict, trace: Trace, r: dict, index: int, mask: int,
                  cell_px: float = 1e9) -> None:
    """The text as it stands after this iteration, each token coloured by the iteration that unmasked it."""
    x = list(range(r["length"]))
    entered = unmasked_at(trace, index, trace.steps[index].detail["best"])
    settled = [None if r["tokens"][i] == mask else entered[i] for i in x]
    data.append({"type": "heatmap", **axes, "x": x, "y": [STRIP_ROWS.index("text now")], "z": [settled], "zmin": 1,
                 "zmax": max(index + 1, 2), "colorscale": SETTLED_SCALE, "xgap": 1,
                 "text": [[fit(show(token(trace, r["tokens"][i])), cell_px - 2, 9) if s else ""
                           for i, s in zip(x, settled)]],
                 "texttemplate": "%{text}", "textfont": {"size": 9, "color": CELL_TEXT},
                 "customdata": [[f"position {i}: {show(token(trace, r['tokens'][i]))}, unmasked at iteration {s}"
                                 + (f", predicted unchanged since iteration {r['settled'][i] + 1}"
                                    if r["settled"][i] is not None and r["settled"][i] + 1 < s else "")
                                 if s else f"position {i}: masked" for i, s in zip(x, settled)]],
                 "hovertemplate": "%{customdata}<extra></extra>", "name": "unmasked at iteration",
                 # ticks at the first and the last iteration only: the bar is too short for one a row
                 "colorbar": {"title": {"text": "unmasked at", "side": "top"}, "len": 0.28, "y": 0.1,
                              "thickness": 10, "tickmode": "array", "tickvals": sorted({1, max(index + 1, 2)})}})
    data.append({"type": "heatmap", **axes, "x": x, "y": [STRIP_ROWS.index("text now")],
                 "z": [[1 if s is None else None for s in settled]],
                 "showscale": False, "colorscale": [[0, MASK_GREY], [1, MASK_GREY]], "xgap": 1, "hoverinfo": "skip"})


KV_LOOK = {"fresh": (0, "fed to this forward"), "cached": (1, "read from the cache, computed on this text"),
           "stale": (2, "read from the cache, computed when a token it sees was different")}
# the legend's names for the cache row's letters: short enough for a phone-width legend (the meaning above is
# in each cell's hover)
KV_NAMES = {"fresh": "fed fresh", "cached": "cached, same text", "stale": "cached, stale"}
KV_COLOURS = {"fresh": "#F0F0F0", "cached": "#56B4E9", "stale": "#D55E00"}
KV_SCALE = [[0.0, KV_COLOURS["fresh"]], [0.33, KV_COLOURS["fresh"]], [0.34, KV_COLOURS["cached"]],
            [0.66, KV_COLOURS["cached"]], [0.67, KV_COLOURS["stale"]], [1.0, KV_COLOURS["stale"]]]


def cache_strip(data: list[dict], axes: dict, trace: Trace, r: dict) -> bool:
    """With a cached prefix: per span position whether this forward computed it fresh, read it from the cache,
    or read a stale entry (the recorded kv_state; the prompt's positions are counted in the words). Returns
    whether it drew the row."""
    states = r.get("kv_state") or []
    if not states or set(states) == {"fresh"}:
        return False
    span_states = states[len(states) - r["length"]:]
    data.append({"type": "heatmap", **axes, "x": list(range(r["length"])), "y": [STRIP_ROWS.index("key-value cache")],
                 "z": [[KV_LOOK[k][0] for k in span_states]], "zmin": 0, "zmax": 2, "colorscale": KV_SCALE,
                 "showscale": False, "xgap": 1, "name": "key-value cache",
                 "text": [[k[0].upper() for k in span_states]], "texttemplate": "%{text}",
                 "textfont": {"size": 9, "color": CELL_TEXT},
                 "customdata": [[f"position {i}: {KV_LOOK[k][1]}, computed at iteration {c + 1}"
                                 for i, (k, c) in enumerate(zip(span_states, r["kv_computed"][len(states) - r["length"]:]))]],
                 "hovertemplate": "%{customdata}<extra></extra>"})
    # the row's letters named in the legend: "F" in every cell meant nothing without it
    for code in KV_LOOK:
        if code in span_states:
            data.append({"type": "scatter", **axes, "x": [None], "y": [None], "mode": "markers",
                         "name": f"cache {code[0].upper()}: {KV_NAMES[code]}", "hoverinfo": "skip",
                         "marker": {"symbol": "square", "size": 12, "color": KV_COLOURS[code]}})
    return True


def confidence_and_schedule(trace: Trace, index: int, narrow: bool = False) -> go.Figure:
    """This iteration's confidence per position; masks left per iteration against the schedule."""
    if index < 0 or not trace.steps:
        return empty("The schedule appears after the first iteration.")
    mask, r = mask_id(trace), span_at(trace, index)
    x = list(range(r["length"]))
    kinds = [state(r, i, mask) for i in x]
    curve = trace.steps[index].detail.get("quality_curve")
    # the panels one under another: the side figure is at most 440 px wide, and side by side their titles ran
    # into each other and past the figure's edge
    titles = ("confidence at every position", "masks left and tokens committed") + \
        (("quality vs iterations",) if curve else ())
    panels = len(titles)
    gap = 110     # px between panels: the x axis's ticks and title, then the next panel's title
    plots = PANEL_PX * panels + gap * (panels - 1)
    g = grid(panels, 1, vspace=gap / plots, titles=titles)
    left, right = g.cell(1, 1), g.cell(2, 1)
    threshold = trace.steps[index].detail["strategy"] == "threshold"
    data = []
    if threshold:
        tau = trace.config.get("threshold")
        data.append({"type": "scatter", **left, "x": [-0.5, r["length"] - 0.5], "y": [tau, tau], "mode": "lines",
                     "name": f"threshold tau = {tau}", "line": {"color": colour("rejected"), "dash": "dash"},
                     "hovertemplate": f"tau = {tau}: every masked position at or above it is committed<extra></extra>"})
    style = {"unmasked": ("chosen", ""), "re-masked": ("rejected", "x"), "kept": ("earlier", ""),
             "guessed, still masked": ("masked", "/")}   # plain masks have no confidence yet: no bar
    for kind, (status, pattern) in style.items():
        at = [i for i in x if kinds[i] == kind]
        if not at:
            continue
        data.append({"type": "bar", **left, "x": at, "y": [r["confidence"][i] for i in at], "name": kind,
                     "marker": {"color": colour(status), "pattern": {"shape": pattern}}, "width": 0.8,
                     "customdata": [hover(trace, r, i, index, mask, 5 if r["length"] <= 64 else 3) for i in at],
                     "hovertemplate": "%{customdata}<extra></extra>"})
    plan = trace.steps[0].detail["spans"][trace.steps[index].detail["best"]]
    iterations = list(range(1, len(plan["plan_masks"]) + 1))
    seen = [trace.steps[s].detail["spans"][trace.steps[index].detail["best"]] for s in range(index + 1)]
    # threshold commits what is sure enough and has no schedule of masks: no planned line to draw for it
    data += [] if threshold else [
        {"type": "scatter", **right, "x": iterations, "y": plan["plan_formula"], "mode": "lines",
         "name": "formula N(T-t)/T", "line": {"color": colour("earlier"), "dash": "dot"},
         "hovertemplate": "iteration %{x}: formula %{y:.2f} masks<extra></extra>"},
        {"type": "scatter", **right, "x": iterations, "y": plan["plan_masks"], "mode": "lines", "name": "schedule",
         "line": {"color": TARGET_COLOUR, "shape": "hv"},
         "hovertemplate": "iteration %{x}: schedule %{y} masks<extra></extra>"},
    ]
    data += [
        {"type": "scatter", **right, "x": list(range(1, index + 2)), "y": [q["input_tokens"].count(mask) for q in seen],
         "mode": "markers", "name": "masks at the start (recorded)",
         "marker": {"color": colour("chosen"), "symbol": symbol("chosen"), "size": 8},
         "hovertemplate": "iteration %{x}: %{y} masks going in<extra></extra>"},
        {"type": "bar", **right, "x": list(range(1, index + 2)), "y": [len(q["unmasked"]) for q in seen],
         "name": "tokens committed (recorded)", "marker": {"color": colour("chosen"), "opacity": 0.45},
         "hovertemplate": "iteration %{x}: %{y} tokens committed<extra></extra>"},
    ]
    if curve:
        far = g.cell(3, 1)
        data.append({"type": "scatter", **far, "x": [p["iterations"] for p in curve],
                     "y": [p["mean_logprob"] for p in curve], "mode": "lines+markers", "name": "mean log p at commit",
                     "line": {"color": TARGET_COLOUR},
                     "customdata": [f"T = {p['iterations']} ({p['tokens_per_iteration']:g} tokens per iteration): "
                                    f"mean log p {fmt(p['mean_logprob'])}, distinct-2 {fmt(p['distinct2'])}"
                                    for p in curve], "hovertemplate": "%{customdata}<extra></extra>"})
        g.xaxis(3, 1).update(title={"text": "iterations T"}, type="log")
    g.yaxis(1, 1).update(title={"text": "confidence"})
    g.xaxis(1, 1).update(title={"text": "position"}, range=[-0.5, r["length"] - 0.5])
    g.xaxis(2, 1).update(count_axis("iteration", max(len(iterations), index + 1)))
    g.yaxis(2, 1).update(rangemode="tozero")
    # the panels' titles need room above the first one; the legend goes below the last x axis
    return figure(data, g, f"Iteration {index + 1}: confidence and schedule", height=plots + 70 + 40,
                  barmode="overlay", margin={"t": 70}, legend_below=True)


def chips(trace: Trace, index: int) -> list[Chip]:
    """The span as it stands: unmasked now, corrected, re-masked (struck through), kept, still masked."""
    if index < 0 or not trace.steps:
        return []
    mask, r = mask_id(trace), span_at(trace, index)
    held = held_before(trace, index)
    out = []
    for i in range(r["length"]):
        kind, guess = state(r, i, mask), r["predicted_tokens"][i]
        note = f"position {i}, confidence {fmt(r['confidence'][i])}"
        if r["settled"][i] is not None:
            note += f", settled at iteration {r['settled'][i] + 1}"
        if kind == "re-masked":
            out.append(Chip(guess, "rejected", note + ", re-masked"))
        elif kind == "unmasked":
            # corrected only where the position held another token before a re-mask took it back; a new guess
            # at a position that was never committed (diffusion never re-masks) is simply chosen
            changed = held[i] is not None and held[i] != guess
            out.append(Chip(guess, "resampled" if changed else "chosen",
                            note + (f", was {show(token(trace, held[i]))} before it was re-masked" if changed else "")))
        elif kind == "kept":
            out.append(Chip(r["tokens"][i], "earlier", note))
        else:
            out.append(Chip(mask, "masked", f"position {i}, still masked" +
                            (f", best guess {show(token(trace, guess))}" if guess != mask else "")))
    return out


def held_before(trace: Trace, index: int) -> list[int | None]:
    """For each position of the best span, the token it last held committed before this iteration (one a re-mask
    later took back, or that it still holds); None where it was never unmasked."""
    best = trace.steps[index].detail["best"]
    held: list[int | None] = [None] * span_at(trace, index)["length"]
    for s in trace.steps[:index]:
        if s.detail["best"] != best:
            continue
        r = s.detail["spans"][best]
        for i in r["unmasked"]:
            held[i] = r["tokens"][i]
    return held


def progress(trace: Trace, index: int) -> tuple[int, int, str]:
    """The span fills over the iterations; its tokens become new text only at the last one."""
    r = span_at(trace, index)
    return r["length"] - r["masks_after"], r["length"], "span positions unmasked"


VIEW = View(
    main=unmasking, side=confidence_and_schedule, words=words, chips=chips, progress=progress,
    fields=("iteration", "iterations", "strategy", "lengths", "best", "spans"),
    legend=("earlier", "chosen", "resampled", "rejected", "masked"),
    help="**Mask-predict** (Ghazvininejad et al. 2019) and **masked diffusion** (LLaDA, Nie et al. 2025) fill a "
         "span of masks after the prompt with a bidirectional masked LM. Every iteration is one forward that "
         "predicts all masked positions at once. *Mask-predict* then masks again the N(T-t)/T least confident "
         "tokens anywhere in the span, so a token can change; *diffusion* commits the most confident masked "
         "positions and never takes them back, block by block when a block size is set; *remdm* (ReMDM, Wang et "
         "al. 2025) is diffusion that may take them back: before each commit, every token committed earlier in "
         "the block draws a coin and is re-masked with chance sigma_t (at most eta, and at most what the schedule "
         "has room for; by lower confidence with the conf schedule), and the next forward predicts it again; "
         "*random* commits at random, a control. The heatmap shows positions (across) by iterations (down): the token in every "
         "cell, its confidence as colour, masks grey, a solid outline where a position was unmasked, a dotted "
         "one where it was re-masked. The strip below colours the text by the iteration that unmasked each token. "
         "In the side figure, one panel under another: "
         "this iteration's confidences (hover a bar for the model's top candidates), and the masks left "
         "against the schedule and the formula. With length 0 "
         "several span lengths run at once and the best mean log-probability wins (the paper's length beam).",
)
