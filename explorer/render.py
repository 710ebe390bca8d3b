"""A session's screen: everything the explorer shows for the step under the cursor.

Pure functions of the recorded trace and the cursor; the UI only places the results. Nothing here writes a
file while a screen is made: the trace file is written by `save_trace`, when a person asks to download it.
"""
from __future__ import annotations

import html
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go

from engines.methods import METHODS
from engines.trace import Trace, totals
from explorer.figures import VIEWS
from explorer.figures.common import Chip, chips_html, legend_html
from explorer.session import Session

log = logging.getLogger(__name__)
TRACE_DIR = Path(tempfile.gettempdir()) / "parallel-decoding-explorer-traces"


@dataclass
class Screen:
    text: str            # HTML: the text so far as token chips
    main: go.Figure | None   # None before a run's first step: the plots are hidden
    side: go.Figure | None
    words: str           # markdown: this step, in words
    stats: str           # markdown: running counters
    position: str        # HTML: "Iteration i of n" and a progress bar
    history_max: int     # slider range: recorded steps
    history_value: int
    record: dict         # the raw step record
    run_id: str          # the run this screen shows ("<method>:<key>"; "<method>:none" before any run)
    downloadable: bool   # the run has steps to save
    drafter: go.Figure | None = None   # the drafter's own figure (heads, early exit, Token Recycling), for their runs


def text_chips(trace: Trace, cursor: int) -> list[Chip]:
    view = VIEWS[trace.method]
    chips = [Chip(t, "prompt") for t in trace.prompt_ids]
    for s in trace.steps[:cursor]:
        chips += [Chip(t, "earlier", f"step {s.index + 1}") for t in s.committed_ids]
    if cursor >= 0:
        chips += view.chips(trace, cursor)
    return chips


def stats_line(trace: Trace, cursor: int) -> str:
    t = totals(trace.steps[: cursor + 1])
    view = VIEWS[trace.method]
    parts = [f"**tokens committed** {t['new_tokens']}"]
    if view.progress is not None and cursor >= 0:
        # a method whose text is committed only at its end (mask-predict's span) counts its own progress
        done, total, what = view.progress(trace, cursor)
        parts = [f"**{what}** {done} of {total}",
                 f"**tokens committed** {t['new_tokens']}" + ("" if t["new_tokens"] or trace.steps[cursor].final
                                                             else " (the span is committed at its last iteration)")]
    parts.append(f"**target forwards** {t['target_forwards']}")
    if t["draft_forwards"]:
        parts.append(f"**draft forwards** {t['draft_forwards']}")
    if t["tokens_per_target_forward"]:
        parts.append(f"**tokens / target forward** {t['tokens_per_target_forward']:.2f}")
    parts.append(f"**tokens fed to the target** {t['tokens_fed']}")
    parts.append(f"**engine time** {t['wall_s']:.2f} s")
    if cursor >= 0:
        parts.append(f"**this step** {trace.steps[cursor].wall_s * 1000:.0f} ms")
    return " &nbsp;|&nbsp; ".join(parts)


def position_html(session: Session) -> str:
    trace, cursor = session.trace, session.cursor
    view = VIEWS[trace.method]
    if view.progress is not None and cursor >= 0:
        done, total, what = view.progress(trace, cursor)
        amount = f"{done} of {total} {what}"
    else:
        done = totals(trace.steps[: cursor + 1])["new_tokens"]
        total = trace.config.get("max_new_tokens") or max(done, 1)
        amount = f"{done} of at most {total} new tokens"
    state = ("replay of a loaded trace" if session.run is None else "stopped at an error" if session.failed
             else "finished" if trace.finished else "stopped" if session.stopped else "running")
    label = (f"Iteration {cursor + 1} of {len(trace.steps)} recorded" if cursor >= 0
             else f"Before the first iteration ({len(trace.steps)} recorded)")
    note = f'<span class="note">{html.escape(session.note)}</span>' if session.note else ""
    return (f'<div class="position" data-run="{html.escape(session.run_id)}"><span>{html.escape(label)} &middot; {amount} &middot; {state}</span>'
            f'<progress max="{total}" value="{done}"></progress>{note}</div>')


def save_trace(trace: Trace, key: str) -> str:
    """Write the trace as the CLI prints it, for a download, once per state of the run: steps are only ever
    appended, so the run's key, its step count and whether it finished name the contents. Older states are
    removed."""
    TRACE_DIR.mkdir(parents=True, exist_ok=True)
    path = TRACE_DIR / f"trace-{trace.method}-{key}-{len(trace.steps)}{'-end' if trace.finished else ''}.json"
    if not path.exists():
        forget_traces(trace, key)
        path.write_text(trace.to_json(indent=1), encoding="utf-8")
    return str(path)


def forget_traces(trace: Trace, key: str) -> None:
    """Remove the file `save_trace` wrote for this run (its session has expired)."""
    for old in TRACE_DIR.glob(f"trace-{trace.method}-{key}-*.json"):
        old.unlink(missing_ok=True)


def check_trace(trace: Trace) -> Trace:
    """Refuse, in one sentence, a loaded trace the explorer could not show, before it replaces anything: an
    unknown method, a step without the fields its method's view reads (a 'tree' trace whose steps are
    speculative), or a step whose words and chips do not render; the first and last figures are drawn too."""
    if trace.method not in VIEWS:
        raise ValueError(f"This trace is of the method '{trace.method}', which this app does not know.")
    view = VIEWS[trace.method]
    for step in trace.steps:
        missing = [name for name in view.fields if name not in step.detail]
        if missing:
            raise ValueError(f"This trace says its method is '{trace.method}', but its step {step.index + 1} lacks "
                             f"that method's fields ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); "
                             f"it cannot be replayed.")
    cursor = -1
    try:
        for cursor in range(len(trace.steps)):
            view.words(trace, cursor)
            text_chips(trace, cursor)
        for cursor in sorted({0, len(trace.steps) - 1} - {-1}):
            view.main(trace, cursor)
            view.side(trace, cursor)
            view.drafter(trace, cursor)
    except Exception as e:  # noqa: BLE001 - any failure to draw a step refuses the whole trace
        # the person reads one sentence; what failed inside goes to the log
        log.info("a loaded '%s' trace does not draw at step %d", trace.method, cursor + 1, exc_info=True)
        raise ValueError(f"This '{trace.method}' trace cannot be replayed: its step {cursor + 1} does not draw "
                         f"(its numbers do not fit its method's figures).") from e
    return trace


# any "<" that does not open one of the few tags the words use on purpose
STRAY_TAG = re.compile(r"<(?!/?(?:b|i|br)>)")


def markdown_words(words: str) -> str:
    """The words as Markdown shows them: a token such as <|im_end|> or <empty_output> would be read as an HTML
    tag and vanish, with the rest of the sentence after it."""
    return STRAY_TAG.sub("&lt;", words)


def render(session: Session | None, method: str, narrow: bool = False) -> Screen:
    """The screen for the session's cursor. narrow: the page is phone-width, and the figures lay out for it
    (fewer panels side by side, stacked rather than shrunk)."""
    view = VIEWS[method]
    if session is None:
        hint = f"Press Step or Run to start {METHODS[method].title.lower()} decoding."
        run_id = f"{method}:none"
        # no figure yet: the page hides a plot without one (assets/explorer.css), and the words say what to do
        return Screen(text=legend_html(view.legend), main=None, side=None, words=hint, stats="",
                      position=f'<div class="position" data-run="{run_id}"><span>No run yet</span></div>',
                      history_max=0, history_value=0, record={}, run_id=run_id, downloadable=False)
    trace, cursor = session.trace, session.cursor
    return Screen(
        text=chips_html(trace, text_chips(trace, cursor)) + legend_html(view.legend),
        main=of_run(view.main(trace, cursor, narrow), session, "main"),
        side=of_run(view.side(trace, cursor, narrow), session, "side"),
        words=markdown_words(view.words(trace, cursor)),
        stats=stats_line(trace, cursor), position=position_html(session),
        history_max=len(trace.steps), history_value=cursor + 1,
        record=trace.steps[cursor].to_dict() if cursor >= 0 else {"prompt_ids": trace.prompt_ids},
        run_id=session.run_id, downloadable=bool(trace.steps),
        drafter=of_run(view.drafter(trace, cursor, narrow), session, "drafter"))


def of_run(fig: go.Figure | None, session: Session, place: str) -> go.Figure | None:
    """The figure keeps the person's zoom across the steps of its run only (Plotly's uirevision). One revision
    for every figure let Plotly carry a speculative figure's axes into a loaded autoregressive trace's figure,
    which it could not scale: the page threw, and the whole update of the panel was lost (issue 21)."""
    if fig is not None:
        fig.update_layout(uirevision=f"{session.run_id}:{place}")
    return fig


def figure_bytes(fig: go.Figure) -> int:
    return len(json.dumps(fig.to_plotly_json(), default=str))
