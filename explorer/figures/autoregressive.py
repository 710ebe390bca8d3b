"""The baseline's figures: the next-token distribution before and after processing, and time per step."""
from __future__ import annotations

import plotly.graph_objects as go

from engines.trace import Trace
from explorer.figures.common import (
    FIGURE_WIDTH,
    RAW_COLOUR,
    TARGET_COLOUR,
    Chip,
    View,
    colour,
    count_axis,
    empty,
    figure,
    quoted,
    show,
    token,
)


def distribution(trace: Trace, index: int, narrow: bool = False) -> go.Figure:
    """Top tokens of the raw distribution beside the processed one it was chosen from."""
    if index < 0:
        return empty("Press Step to run the first forward.")
    d = trace.steps[index].detail
    ids = [t for t, _ in d["raw_top"]]
    ids += [t for t, _ in d["top"] if t not in ids]
    if d["chosen"] not in ids:
        ids.append(d["chosen"])
    raw, processed = dict(d["raw_top"]), dict(d["top"])
    labels = [f"{show(token(trace, t))} ({t})" for t in ids]
    chosen = labels[ids.index(d["chosen"])]
    data = [
        {"type": "bar", "x": labels, "y": [raw.get(t, 0) for t in ids], "name": "model (temperature 1, no filter)",
         "marker": {"color": RAW_COLOUR}, "hovertemplate": "%{x}<br>raw p = %{y:.4f}<extra></extra>"},
        {"type": "bar", "x": labels, "y": [processed.get(t, 0) for t in ids],
         "name": "after temperature / top-k / top-p",
         "marker": {"color": TARGET_COLOUR, "line": {
             "color": [colour("chosen") if t == d["chosen"] else "rgba(0,0,0,0)" for t in ids], "width": 3}},
         "hovertemplate": "%{x}<br>processed p = %{y:.4f}<extra></extra>"},
        {"type": "scatter", "x": [chosen], "y": [max(raw.get(d["chosen"], 0), processed.get(d["chosen"], 0)) + 0.04],
         "mode": "markers+text", "text": ["chosen"], "textposition": "top center",
         "cliponaxis": False,   # the word above a bar of p = 1 reaches past the axis range; cut, it read "chos"
         "marker": {"symbol": "triangle-down", "size": 12, "color": colour("chosen")}, "name": "chosen token",
         "hovertemplate": f"chosen: {chosen}<br>p = {d['p_chosen']:.4f}<extra></extra>"},
    ]
    return figure(data, None, f"Step {index + 1}: next-token distribution", barmode="group", legend_below=True,
                  yaxis={"title": {"text": "probability"}, "range": [0, 1.12]}, width=FIGURE_WIDTH[narrow])


def step_times(trace: Trace, index: int, narrow: bool = False) -> go.Figure:
    """Wall time of every step so far; the cursor's step is marked."""
    steps = trace.steps[: index + 1]
    if not steps:
        return empty("No steps yet.")
    x = [s.index + 1 for s in steps]
    data = [{"type": "scatter", "x": x, "y": [s.wall_s * 1000 for s in steps], "mode": "lines+markers",
             "name": "wall time per step", "marker": {"color": TARGET_COLOUR},
             "customdata": [[s.tokens_fed, s.detail.get("cache_len", 0)] for s in steps],
             "hovertemplate": "step %{x}<br>%{y:.1f} ms<br>tokens fed %{customdata[0]}"
                              "<br>cache length %{customdata[1]}<extra></extra>"}]
    # a short title: Plotly's toolbar takes the top right of a phone-width figure
    return figure(data, None, "Time per step", height=260, xaxis=count_axis("step", x[-1]),
                  yaxis={"title": {"text": "ms, one target forward"}, "rangemode": "tozero"})


def words(trace: Trace, index: int) -> str:
    if index < 0:
        return "Nothing has run yet. Each step is one forward pass of the target over the pending token."
    s = trace.steps[index]
    d = s.detail
    how = "took the most probable token" if trace.config.get("temperature", 0) == 0 else \
        f"sampled from the processed distribution (temperature {trace.config['temperature']:g})"
    runners = [f"{quoted(trace, t)} ({p:.3f})" for t, p in d["raw_top"] if t != d["chosen"]][:3]
    text = (f"The target read {s.tokens_fed} token{'s' if s.tokens_fed != 1 else ''} "
            f"(its cache now holds {d['cache_len']}) and {how}: {quoted(trace, d['chosen'])} "
            f"with model probability {d['raw_p_chosen']:.3f}")
    if d["p_chosen"] != d["raw_p_chosen"]:
        text += f" ({d['p_chosen']:.3f} after processing)"
    text += "."
    if runners:
        text += f" Runners-up: {', '.join(runners)}."
    text += f" 1 token for 1 target forward, {s.wall_s * 1000:.0f} ms."
    return text


def chips(trace: Trace, index: int) -> list[Chip]:
    s = trace.steps[index]
    return [Chip(s.detail["chosen"], "chosen", f"p = {s.detail['p_chosen']:.3f}")]


VIEW = View(
    main=distribution, side=step_times, words=words, chips=chips,
    fields=("chosen", "p_chosen", "raw_p_chosen", "top", "raw_top", "cache_len"),
    help="**Autoregressive decoding**, the baseline: every new token costs one forward pass of the target. "
         "The bars show the model's raw next-token distribution (grey) and the distribution after temperature, "
         "top-k and top-p (blue) from which the token was chosen. With temperature 0 the choice is the argmax; "
         "every faster method here must reproduce exactly this output (greedy) or this distribution (sampling).",
)
