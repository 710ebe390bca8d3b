"""What every method's figures share: one colour per meaning, one Plotly template, token chips.

Colours are Okabe-Ito (colour-blind safe) and every status also has a marker symbol
and a chip style (strike-through for rejected), so colour is never the only cue.
Backgrounds are transparent and text is mid-grey, so figures read in light and dark mode.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

import plotly.graph_objects as go

from engines.models.token_text import has_bytes, joined
from engines.trace import Step, Trace

# status -> (colour, marker symbol, label)
STATUS = {
    "prompt":    ("#7f7f7f", "square", "prompt"),
    "earlier":   ("#999999", "circle-open", "committed earlier"),
    "chosen":    ("#0072B2", "circle", "chosen this step"),
    "accepted":  ("#009E73", "circle", "accepted"),
    "rejected":  ("#D55E00", "x", "rejected"),
    "resampled": ("#E69F00", "diamond", "resampled / corrected"),
    "bonus":     ("#56B4E9", "star", "bonus (target's own token)"),
    "masked":    ("#BBBBBB", "square-open", "still masked"),
    "not_reached": ("#BBBBBB", "circle-open", "not reached"),
}
TARGET_COLOUR = "#0072B2"   # p, the target's distribution
DRAFT_COLOUR = "#CC79A7"    # q, the draft's distribution
RAW_COLOUR = "#999999"      # a distribution before temperature / top-k / top-p
TEXT_COLOUR = "#8a8a8a"
GRID_COLOUR = "rgba(128,128,128,0.25)"


def colour(status: str) -> str:
    return STATUS[status][0]


def symbol(status: str) -> str:
    return STATUS[status][1]


def look(title: str, height: int, uirevision: str) -> dict:
    """The shared layout: transparent backgrounds, mid-grey text, the legend below. uirevision keeps the
    user's zoom across steps of one run."""
    return {"title": {"text": title, "x": 0.01, "font": {"size": 14}}, "height": height,
            "margin": {"l": 50, "r": 20, "t": 44, "b": 40},
            "paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)",
            "font": {"color": TEXT_COLOUR, "size": 12}, "uirevision": uirevision,
            "legend": {"orientation": "h", "y": -0.18, "x": 0, "bgcolor": "rgba(0,0,0,0)"},
            "hoverlabel": {"font": {"size": 12}}, "modebar": {"remove": list(TOOLBAR_EXTRAS)}}


# Plotly's toolbar shows on hover over the top right of a figure; with all its buttons it spans 300 px and
# covered the title of a phone-width figure. Zoom, pan, reset and download stay.
TOOLBAR_EXTRAS = ("select", "lasso", "select2d", "lasso2d", "zoomIn", "zoomOut", "zoomIn2d", "zoomOut2d",
                  "autoScale", "autoScale2d", "toggleSpikelines", "hoverClosestCartesian", "hoverCompareCartesian",
                  "toggleHover", "hoverclosest", "hovercompare", "resetViews", "resetViewMapbox")


AXIS_LOOK = {"gridcolor": GRID_COLOUR, "zerolinecolor": GRID_COLOUR}
AXIS_ROOM = 64       # px below the plot for an x axis's tick labels and title
LEGEND_ROW = 22      # px per row of a horizontal legend
LEGEND_WIDTH = 380   # px a legend row may fill: a side figure on a phone-width screen
# px a main figure is wide in the results column: on a 1280 px page, and on a phone (narrow)
FIGURE_WIDTH = {False: 900, True: 388}
SIDE_WIDTH = 388     # px a side figure is wide at most on a phone (440 beside the words on a wide page)
CHAR_PX = 0.62       # a character's width, in font sizes, about (for fitting text into cells)


def fit(text: str, px: float, size: float = 12) -> str:
    """`text` cut with an ellipsis to about `px` pixels at font `size` ('' when not even two characters fit)."""
    room = int(px / (CHAR_PX * size))
    if len(text) <= room:
        return text
    return text[:room - 1] + "\u2026" if room >= 2 else ""


def count_axis(title: str, last: int) -> dict:
    """An axis of steps or iterations: ticks on whole numbers only (never at 1.5), about ten at most."""
    return {"title": {"text": title}, "tickmode": "linear", "tick0": 1, "dtick": max(1, math.ceil(last / 10))}


def legend_rows(data: list[dict], width: int = LEGEND_WIDTH) -> int:
    """How many rows a horizontal legend of these traces takes, estimated as Plotly lays it out: each entry
    is its symbol and padding (40 px) plus about 7 px a character, wrapped at `width`."""
    rows, used = 1, 0
    for d in data:
        if not d.get("name") or d.get("showlegend") is False or d.get("type") in ("heatmap", "table"):
            continue
        need = 40 + 7 * len(d["name"])
        if used and used + need > width:
            rows, used = rows + 1, 0
        used += need
    return rows


# ----------------------------------------------------------------------------- figures from plain dicts
# Every figure is written as plain trace and layout dicts and validated once, by go.Figure: Plotly's
# make_subplots and update_* methods would cost tens of milliseconds per figure on every step.

def suffix(n: int) -> str:
    """Plotly's axis numbering: the first axis is "x" / "xaxis", the n-th "x<n>" / "xaxis<n>"."""
    return str(n) if n > 1 else ""


@dataclass
class Grid:
    """A rows x cols grid of subplots as layout dicts, with make_subplots' geometry. Cell (1, 1) is top left;
    its axes are numbered row by row, and secondary y axes after all the cells."""
    rows: int
    cols: int
    layout: dict
    secondary: dict[tuple[int, int], int]

    def number(self, row: int, col: int) -> int:
        return (row - 1) * self.cols + col

    def y_number(self, row: int, col: int, secondary_y: bool) -> int:
        return self.secondary[(row, col)] if secondary_y else self.number(row, col)

    def cell(self, row: int, col: int, secondary_y: bool = False) -> dict:
        """The axis references a trace in this cell carries."""
        return {"xaxis": f"x{suffix(self.number(row, col))}",
                "yaxis": f"y{suffix(self.y_number(row, col, secondary_y))}"}

    def xaxis(self, row: int, col: int) -> dict:
        return self.layout[f"xaxis{suffix(self.number(row, col))}"]

    def yaxis(self, row: int, col: int, secondary_y: bool = False) -> dict:
        return self.layout[f"yaxis{suffix(self.y_number(row, col, secondary_y))}"]

    def centre(self, row: int, col: int) -> tuple[float, float]:
        """The middle of a cell in paper coordinates: where a word stands in for a plot."""
        return (sum(self.xaxis(row, col)["domain"]) / 2, sum(self.yaxis(row, col)["domain"]) / 2)

    def xaxes(self, row: int | None = None) -> list[dict]:
        return [self.xaxis(r, c) for r in range(1, self.rows + 1) for c in range(1, self.cols + 1)
                if row in (None, r)]

    def yaxes(self, row: int | None = None) -> list[dict]:
        return [self.yaxis(r, c) for r in range(1, self.rows + 1) for c in range(1, self.cols + 1)
                if row in (None, r)]


def spans(sizes: list[float] | None, count: int, spacing: float) -> list[tuple[float, float]]:
    """Domains of `count` consecutive cells of relative sizes `sizes`, `spacing` apart, filling [0, 1].

    Each edge is computed on its own from the cell's index, in exact fractions, and rounded once: summing
    floats cell by cell overshoots 1 (twelve columns ended at 1.0000000000000002, which Plotly refuses)."""
    sizes = [Fraction(s) for s in sizes] if sizes else [Fraction(1)] * count
    gap = Fraction(spacing)
    if count > 1 and gap * (count - 1) >= 1:   # too many cells for this spacing: let the gaps take half the room
        gap = Fraction(1, 2 * (count - 1))
    room, total = 1 - gap * (count - 1), sum(sizes)
    out = []
    for i, size in enumerate(sizes):
        start = i * gap + room * sum(sizes[:i]) / total
        out.append((unit(start), unit(start + room * size / total)))
    return out


def unit(x: Fraction) -> float:
    """An exact position as a float that stays inside [0, 1]."""
    return min(1.0, max(0.0, float(x)))


def grid(rows: int, cols: int, *, row_heights: list[float] | None = None, col_widths: list[float] | None = None,
         hspace: float | None = None, vspace: float | None = None, titles: tuple[str, ...] | list[str] = (),
         secondary_y: tuple[tuple[int, int], ...] = ()) -> Grid:
    """Axes and subplot titles for a grid, as make_subplots lays them out (rows listed top to bottom)."""
    xs = spans(col_widths, cols, 0.2 / cols if hspace is None else hspace)
    if vspace is None:   # make_subplots' defaults: more room between rows when they carry titles
        vspace = (0.5 if titles else 0.3) / rows
    ys = spans(list(reversed(row_heights)) if row_heights else None, rows, vspace)
    ys = list(reversed(ys))   # row 1 is the top
    g = Grid(rows, cols, {"annotations": []}, {})
    for r in range(1, rows + 1):
        for c in range(1, cols + 1):
            n = g.number(r, c)
            g.layout[f"xaxis{suffix(n)}"] = {"domain": list(xs[c - 1]), "anchor": f"y{suffix(n)}"}
            g.layout[f"yaxis{suffix(n)}"] = {"domain": list(ys[r - 1]), "anchor": f"x{suffix(n)}"}
            if n <= len(titles) and titles[n - 1]:
                g.layout["annotations"].append({
                    "text": titles[n - 1], "x": sum(xs[c - 1]) / 2, "y": ys[r - 1][1], "xref": "paper",
                    "yref": "paper", "xanchor": "center", "yanchor": "bottom", "showarrow": False,
                    "font": {"size": 14}})
    for k, (r, c) in enumerate(secondary_y):
        n, m = g.number(r, c), rows * cols + k + 1
        g.secondary[(r, c)] = m
        lo, hi = g.xaxis(r, c)["domain"]
        g.xaxis(r, c)["domain"][1] = max(lo, hi - 0.06)   # room for the right-hand axis
        g.layout[f"yaxis{m}"] = {"anchor": f"x{suffix(n)}", "overlaying": f"y{suffix(n)}", "side": "right"}
    return g


TOOLBAR_PX = 210     # px Plotly's toolbar (zoom, pan, reset, download) takes at the top right, with a margin
TITLE_LINE = 18      # px a further line of a 14 px title takes
TITLE_RISE = 7       # px Plotly lifts a hung title per further line


def title_lines(title: str, width: int, size: float = 14, toolbar: bool = True) -> list[str]:
    """The title broken at spaces: its first line clear of Plotly's toolbar, the others within the figure.
    A part with markup (<sup>) is left whole. toolbar=False: a heading lower in the figure, every line the
    figure's width."""
    lines: list[str] = []
    for part in title.split("<br>"):
        if re.search(r"<[a-z/]", part):
            lines.append(part)
            continue
        line = ""
        for word in part.split(" "):
            room = (width - (TOOLBAR_PX if not lines and toolbar else 30)) / (CHAR_PX * size)
            if line and len(line) + 1 + len(word) > room:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines.append(line)
    return lines


def figure(data: list[dict], grid_: Grid | None, title: str, *, height: int = 340, uirevision: str = "keep",
           annotations: list[dict] = (), legend_below: bool = False, width: int = SIDE_WIDTH,
           **kwargs) -> go.Figure:
    """A figure from trace dicts and a grid, with the shared look; validated once. A dict given for a key of
    the look (margin={"t": 70}, legend={"y": -0.3}) changes only the fields it names; every axis gets the
    shared grid colours. legend_below: the legend sits at the bottom of the figure, below the x axis's
    ticks and title rather than over them, and the figure grows by the room it takes. width: the px the figure
    is drawn at (FIGURE_WIDTH[narrow] for a main figure; the default fits a side figure on any screen): a
    longer title is broken into lines, and the top margin grows by them."""
    lines = title_lines(title, width)
    lay = {**(grid_.layout if grid_ else {}), **look("<br>".join(lines), height, uirevision)}
    # hung from the top, so further lines go down into the margin made for them, not over the plot (Plotly
    # raises a title of n lines by about 6.5 px a further line above its anchor: the pad makes up for it)
    lay["title"] = {**lay["title"], "y": 1, "yref": "container", "yanchor": "top",
                    "pad": {"t": 6 + TITLE_RISE * (len(lines) - 1)}}
    if legend_below:
        room = AXIS_ROOM + LEGEND_ROW * legend_rows(data)
        lay["height"] = height + room - lay["margin"]["b"]
        lay["margin"] = {**lay["margin"], "b": room}
        lay["legend"] = {**lay["legend"], "yref": "container", "y": 0, "yanchor": "bottom"}
    for key, value in kwargs.items():
        lay[key] = {**lay[key], **value} if isinstance(value, dict) and isinstance(lay.get(key), dict) else value
    # a figure's own <br> already has its room
    extra = (TITLE_LINE + TITLE_RISE) * (len(lines) - 1) - ((TITLE_LINE + TITLE_RISE) if "<br>" in title else 0)
    if extra > 0:
        lay["height"] += extra
        lay["margin"] = {**lay["margin"], "t": lay["margin"]["t"] + extra}
    lay.setdefault("xaxis", {})
    lay.setdefault("yaxis", {})
    for key in [k for k in lay if k.startswith(("xaxis", "yaxis"))]:
        lay[key] = {**AXIS_LOOK, **lay[key]}
    lay["annotations"] = [*lay.get("annotations", []), *annotations]
    return go.Figure(data=data, layout=lay)


def empty(message: str) -> go.Figure:
    return figure([], None, "", height=260, xaxis={"visible": False}, yaxis={"visible": False}, annotations=[
        {"text": message, "showarrow": False, "x": 0.5, "y": 0.5, "xref": "paper", "yref": "paper",
         "font": {"size": 14, "color": TEXT_COLOUR}}])


def show(text: str) -> str:
    """A token's text made visible: spaces as a dot, newlines as an arrow."""
    return text.replace(" ", "\u2423").replace("\n", "\u21b5") if text.strip() == "" else \
        text.replace("\n", "\u21b5")


MASK_GLYPH = "\u2592"   # a masked position, whatever special token the masked LM's vocabulary uses for it


def mask_token(trace: Trace) -> int | None:
    """The masked LM's mask token in a mask-predict trace: what every position of the span holds before the
    first iteration. None for other methods."""
    if trace.method != "mask-predict" or not trace.steps:
        return None
    return trace.steps[0].detail["spans"][0]["input_tokens"][0]


def token(trace: Trace, token_id: int) -> str:
    """A token's text; a mask is the mask glyph, never its vocabulary name (such as <empty_output>)."""
    if token_id == mask_token(trace):
        return MASK_GLYPH
    return trace.token_texts.get(token_id, f"<{token_id}>")


def quoted(trace: Trace, token_id: int) -> str:
    """A token for a sentence: its text in quotes, newlines shown."""
    return '"' + token(trace, token_id).replace("\n", "\\n") + '"'


@dataclass(frozen=True)
class Chip:
    """One token in the text-so-far strip."""
    token_id: int
    status: str
    hover: str = ""


def listing(trace: Trace, ids: Sequence[int], sep: str = ", ") -> str:
    """Consecutive tokens for a sentence, each quoted; where some hold only bytes of a character, the text they
    make together follows, so an emoji split over three tokens reads as the emoji."""
    text = sep.join(quoted(trace, t) for t in ids)
    texts = [token(trace, t) for t in ids]
    if any(has_bytes(t) for t in texts) and (together := joined(texts)) != "".join(texts):
        text += f' (together "{together}")'
    return text


def characters(texts: Sequence[str]) -> list[tuple[int, int, str]]:
    """Runs of consecutive token texts that hold bytes of characters and together make whole characters:
    (first, end, the text they make)."""
    runs, i = [], 0
    while i < len(texts):
        if has_bytes(texts[i]):
            for j in range(i + 1, len(texts) + 1):
                if not has_bytes(texts[j - 1]) and j - 1 > i:
                    break
                if not has_bytes(joined(texts[i:j])):
                    runs.append((i, j, joined(texts[i:j])))
                    i = j - 1
                    break
        i += 1
    return runs


def chips_html(trace: Trace, chips: Sequence[Chip]) -> str:
    spans = []
    for c in chips:
        label = STATUS[c.status][2]
        title = html.escape(f"{label} | id {c.token_id}" + (f" | {c.hover}" if c.hover else ""), quote=True)
        text = html.escape(show(token(trace, c.token_id)))
        spans.append(f'<span class="chip chip-{c.status}" title="{title}" data-status="{c.status}">{text}</span>')
    # tokens that each hold bytes of a character keep their own chips, grouped, with the character they make
    for first, end, text in reversed(characters([token(trace, c.token_id) for c in chips])):
        title = html.escape(f"{text}: one text written by {end - first} tokens that each hold some of its bytes",
                            quote=True)
        spans[first:end] = [f'<span class="chip-char" title="{title}">' + "".join(spans[first:end]) +
                            f'<span class="char-joined">{html.escape(show(text))}</span></span>']
    return '<div class="chips">' + "".join(spans) + "</div>"


def legend_html(statuses: Sequence[str]) -> str:
    items = "".join(f'<span class="chip chip-{s}">{html.escape(STATUS[s][2])}</span>' for s in statuses)
    return f'<div class="chips legend">{items}</div>'


def steps_so_far(trace: Trace, index: int) -> list[Step]:
    return trace.steps[: index + 1]


@dataclass(frozen=True)
class View:
    """How the explorer shows one method. Every function is pure: (trace, step index) -> output; the figure
    functions take a third argument, narrow, true when the page is phone-width."""
    main: Callable[[Trace, int, bool], go.Figure]
    side: Callable[[Trace, int, bool], go.Figure]
    words: Callable[[Trace, int], str]          # "this step, in words": markdown with the real numbers
    chips: Callable[[Trace, int], list[Chip]]   # the step's own tokens (committed, and rejected drafts)
    help: str                                    # how to read the figures; the paper's name and year
    legend: tuple[str, ...] = ("prompt", "earlier", "chosen")
    # (done, total, what) for the progress line, where "new tokens so far" is not the method's measure
    progress: Callable[[Trace, int], tuple[int, int, str]] | None = None
    # the detail fields every step of the method carries: a loaded trace whose steps lack one is refused
    fields: tuple[str, ...] = ()
    # a figure only some runs have (a drafter's own view: heads, early exit, Token Recycling), drawn under the main
    # one; None: not this run
    drafter: Callable[[Trace, int, bool], go.Figure | None] = lambda trace, index, narrow=False: None
