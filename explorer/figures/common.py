"""What every method's figures share: one colour per meaning, one Plotly template, token chips.

Colours are Okabe-Ito (colour-blind safe) and every status also has a marker symbol
and a chip style (strike-through for rejected), so colour is never the only cue.
Backgrounds are transparent and text is mid-grey, so figures read in light and dark mode.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Callable, Sequence

import plotly.graph_objects as go

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


def layout(fig: go.Figure, title: str, *, height: int = 340, uirevision: str = "keep", **kwargs) -> go.Figure:
    """Apply the shared look. uirevision keeps the user's zoom across steps of one run."""
    fig.update_layout(
        title={"text": title, "x": 0.01, "font": {"size": 14}},
        height=height, margin={"l": 50, "r": 20, "t": 44, "b": 40},
        paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)",
        font={"color": TEXT_COLOUR, "size": 12}, uirevision=uirevision,
        legend={"orientation": "h", "y": -0.18, "x": 0, "bgcolor": "rgba(0,0,0,0)"},
        hoverlabel={"font": {"size": 12}}, **kwargs)
    fig.update_xaxes(gridcolor=GRID_COLOUR, zerolinecolor=GRID_COLOUR)
    fig.update_yaxes(gridcolor=GRID_COLOUR, zerolinecolor=GRID_COLOUR)
    return fig


def empty(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 14, "color": TEXT_COLOUR})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return layout(fig, "", height=260)


def show(text: str) -> str:
    """A token's text made visible: spaces as a dot, newlines as an arrow."""
    return text.replace(" ", "\u2423").replace("\n", "\u21b5") if text.strip() == "" else \
        text.replace("\n", "\u21b5")


def token(trace: Trace, token_id: int) -> str:
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


def chips_html(trace: Trace, chips: Sequence[Chip]) -> str:
    spans = []
    for c in chips:
        label = STATUS[c.status][2]
        title = html.escape(f"{label} | id {c.token_id}" + (f" | {c.hover}" if c.hover else ""), quote=True)
        text = html.escape(show(token(trace, c.token_id)))
        spans.append(f'<span class="chip chip-{c.status}" title="{title}" data-status="{c.status}">{text}</span>')
    return '<div class="chips">' + "".join(spans) + "</div>"


def legend_html(statuses: Sequence[str]) -> str:
    items = "".join(f'<span class="chip chip-{s}">{html.escape(STATUS[s][2])}</span>' for s in statuses)
    return f'<div class="chips legend">{items}</div>'


def steps_so_far(trace: Trace, index: int) -> list[Step]:
    return trace.steps[: index + 1]


@dataclass(frozen=True)
class View:
    """How the explorer shows one method. Every function is pure: (trace, step index) -> output."""
    main: Callable[[Trace, int], go.Figure]
    side: Callable[[Trace, int], go.Figure]
    words: Callable[[Trace, int], str]          # "this step, in words": markdown with the real numbers
    chips: Callable[[Trace, int], list[Chip]]   # the step's own tokens (committed, and rejected drafts)
    help: str                                    # how to read the figures; the paper's name and year
    legend: tuple[str, ...] = ("prompt", "earlier", "chosen")
    # (done, total, what) for the progress line, where "new tokens so far" is not the method's measure
    progress: Callable[[Trace, int], tuple[int, int, str]] | None = None
