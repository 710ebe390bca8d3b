"""The event handlers: values in, the results panel out. The panel (`Panel`) belongs to the selected tab's current
run: handlers answer with dicts keyed by its components, and a screen of any other run is dropped."""
from __future__ import annotations

import dataclasses
import html
import logging
import time
from typing import Any

import gradio as gr

from engines.methods import METHODS, method_default_target
from engines.trace import Trace
from explorer import guide
from explorer.controls import (
    Controls,
    announce_loading,
    checked_method,
    draft_visibility,
    friendly,
    model_choices,
    own_name,
)
from explorer.figures import VIEWS
from explorer.limits import ServerLimits, read_upload, whole_number
from explorer.render import Screen, check_trace, render, save_trace
from explorer.session import Session, Sessions, changes
from explorer.wire import on_the_wire

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Panel:
    """The results panel: every component that Step, Run, Back, the slider, a loaded trace or a tab switch
    writes. Handlers return `Panel.show` or `Panel.unchanged`, dicts keyed by these components, so no output is
    wired by its place in a list. An API client receives them in `Panel.client_names()` order."""
    text: Any
    main: Any
    side: Any
    words: Any
    stats: Any
    position: Any       # its data-run attribute names the run the panel shows
    history: Any
    record: Any
    drafter: Any
    download: Any       # a button, whose update (enabled or not) gradio_client does not return
    # The visitor's Sessions (a gr.State), set again by every screen: Gradio counts a State's time to live from
    # when an answer last set it, and never frees one no answer has set (its runs and trace files stayed).
    state: Any = None

    @staticmethod
    def names() -> list[str]:
        return [f.name for f in dataclasses.fields(Panel)]

    @staticmethod
    def client_names() -> list[str]:
        """The outputs gradio_client returns for the panel, in order: all but the Download button and the state."""
        return [name for name in Panel.names() if name not in ("download", "state")]

    def components(self) -> list:
        return [getattr(self, name) for name in self.names()]

    def show(self, screen: Screen) -> dict:
        return {self.text: screen.text, self.main: screen.main, self.side: screen.side, self.words: screen.words,
                self.stats: screen.stats, self.position: screen.position,
                self.history: gr.Slider(minimum=0, maximum=max(screen.history_max, 1), value=screen.history_value),
                self.record: screen.record, self.download: gr.Button(interactive=screen.downloadable),
                self.drafter: gr.Plot(value=screen.drafter, visible=screen.drafter is not None)}

    def unchanged(self) -> dict:
        return {c: gr.skip() for c in self.components()}

    def figures_cleared(self) -> dict:
        """The figures emptied, the rest as it is: Plotly then draws the next run's figures afresh. Redrawn in
        place, a loaded autoregressive trace's figure over a speculative run's threw 'Something went wrong with
        axis scaling' in Plotly.js, and the page dropped the whole update (issue 21)."""
        return {**self.unchanged(), self.main: None, self.side: None}


def make_handlers(controls: Controls, panel: Panel, limits: ServerLimits = ServerLimits()):
    """The handlers by api name. Those that take control values take them by name (`Controls.named`).

    Every screen goes through `screen_of`: it is rendered only while its run owns the panel (the selected tab's
    current run, `Sessions.owns`), else the panel is left as it is. So a Run to end on a tab left behind, or a
    Step answered after a tab switch, never writes over the tab on screen."""
    def screen_of(sessions: Sessions, method: str, session: Session | None) -> dict:
        with sessions.panel:
            if not sessions.owns(method, session):
                return panel.unchanged()
            return {**on_the_wire(panel.show(render(session, method, sessions.narrow))), panel.state: sessions}

    def sent(sessions: Sessions, owner: int):
        """Run to end's next screen may only be asked for once its last one was sent (Gradio sends each yield
        before asking for the next). If the panel changed owner after that screen was made and before it was
        sent, it may have reached the page after the new owner's own: the new owner's screen is sent again."""
        with sessions.panel:
            if sessions.owner == owner or sessions.shown is None:
                return
            screen = screen_of(sessions, sessions.shown, sessions.get(sessions.shown))   # the shown run owns it
        yield screen

    def reset(sessions: Sessions, progress=gr.Progress(), **values):
        wanted = controls.wanted(values)
        announce_loading(wanted, progress)
        session = controls.session(values)
        with sessions.work:
            sessions.put(wanted["method"], session)
            return screen_of(sessions, wanted["method"], session)

    def step(sessions: Sessions, progress=gr.Progress(), **values):
        """Presses take turns (`Sessions.work`): ten presses are ten steps, each screen made before the next
        step, so the screens reach the page in order."""
        wanted = controls.wanted(values)
        announce_loading(wanted, progress)
        with sessions.work:
            session, moved = sessions.advance(wanted["method"], wanted, lambda: controls.session(values))
            if not moved and session.at_end:
                gr.Info("This run has finished; press Reset to start another.")
            return screen_of(sessions, wanted["method"], session)

    def back(sessions: Sessions, method: str):
        method = checked_method(method)
        with sessions.work:
            session = sessions.get(method)
            if session is not None:
                session.back()
            return screen_of(sessions, method, session)

    def seek(sessions: Sessions, method: str, value: float):
        method = checked_method(method)
        index = whole_number("The history position", value, 0, 10 ** 9)
        with sessions.work:
            session = sessions.get(method)
            if session is not None:
                session.seek(index - 1)
            return screen_of(sessions, method, session)

    def run(sessions: Sessions, progress=gr.Progress(), **values):
        """Steps until the end, Stop, the time budget or the run's replacement (Reset, a loaded trace), whichever
        comes first. The page is sent a screen at most every `render_interval_s` (a browser cannot draw faster,
        and a backlog of screens made the page show iteration 26 while the engine was at 170); the last screen
        sent is the engine's true position. While another tab is selected, its screens are not sent; the run
        goes on, and its tab shows where it is when selected again."""
        wanted = controls.wanted(values)
        method = wanted["method"]
        announce_loading(wanted, progress)
        with sessions.work, sessions.panel:
            session, _ = sessions.advance(method, wanted, lambda: controls.session(values), again=True)
            session.running, session.stopped = True, False
            first, owner = screen_of(sessions, method, session), sessions.owner
        try:
            yield first
            yield from sent(sessions, owner)
            started = shown = time.monotonic()
            while True:
                with sessions.work:   # Step, Back and Stop get their turn between two steps
                    if session.stopped or sessions.get(method) is not session or not session.step():
                        break
                    if time.monotonic() - started > limits.call_budget_s:
                        session.note = (f"Stopped after {limits.call_budget_s:g} s, this server's limit for one "
                                        f"call; press Run to end again to go on.")
                        break
                    due = time.monotonic() - shown >= limits.render_interval_s
                    with sessions.panel:
                        screen = screen_of(sessions, method, session) if due else None
                        owner = sessions.owner
                if screen is not None:
                    shown = time.monotonic()
                    yield screen
                    yield from sent(sessions, owner)
        finally:
            session.running = False
        with sessions.work, sessions.panel:
            last, owner = screen_of(sessions, method, session), sessions.owner
        yield last
        yield from sent(sessions, owner)

    def stop(sessions: Sessions, method: str):
        """Run to end sees this before its next step: it stops within one iteration, and its last screen shows
        where the engine is, 'stopped'."""
        session = sessions.get(checked_method(method))
        if session is not None and session.running:
            session.stopped = True

    def load_trace(sessions: Sessions, path: str | None):
        """The trace's controls and its replay, in one answer after the figures are cleared: the panel shows the
        loaded run at once."""
        trace = check_trace(Trace.from_json(read_upload(path, limits.max_upload_bytes)))
        session = Session.replay(trace)
        yield on_the_wire(panel.figures_cleared())
        with sessions.work, sessions.panel:
            sessions.put(trace.method, session)
            if sessions.shown is not None:   # the page selects the trace's tab (its method control, below)
                sessions.show(trace.method)
            screen = screen_of(sessions, trace.method, session)
        yield {**on_the_wire(dict(zip(controls.named().values(), controls.from_trace(trace)))),
               **method_view(sessions, trace.method, trace.models.get("target"), **{
                    own_name(trace.method, "drafter"): trace.config.get("drafter")}), **screen}

    def method_view(sessions: Sessions, method: str, target: str | None, **drafters) -> dict:
        """What changes with the method besides the panel: its options, its target, the draft model, its help."""
        m = METHODS[method]
        return on_the_wire({**{group: gr.Group(visible=name == method) for name, group in controls.groups.items()},
                controls.target: gr.Dropdown(choices=model_choices(m.model_kind),
                                             value=target_for(sessions.get(method), method, target)),
                controls.draft: draft_visibility(method, **drafters),
                controls.help: f"### {m.title}\n{VIEWS[method].help}",
                controls.intro: guide.intro(method), controls.examples: gr.Dataset(samples=guide.examples(method))})

    def show_method(sessions: Sessions, method: str, target: str | None = None, **drafters):
        """Switch the screen to `method`: its options, its target, its run (or its empty state), at once; from
        now on only that run's screens reach the panel. `drafters` are the drafter controls' values by name
        (speculative_drafter, tree_drafter): the draft model shows only where it is used."""
        method = checked_method(method)
        with sessions.panel:
            sessions.show(method)
        yield on_the_wire(panel.figures_cleared())   # another run's figures: Plotly draws them afresh
        with sessions.panel:
            screen = screen_of(sessions, method, sessions.get(method))
        yield {**method_view(sessions, method, target, **drafters), **screen}

    def settings_note(sessions: Sessions, **values) -> str:
        """One line under the position while the controls ask for another run than the one on screen, so that
        the screen is never taken for a run of the new settings: which changed, and that the next Step or Run
        to end starts a new run ('' when they match, before any run, and for a loaded trace)."""
        method = values.get("method")
        session = sessions.get(method) if method in METHODS else None
        if session is None or session.wanted is None:
            return ""
        try:
            wanted = controls.wanted(values)
        except ValueError:   # a box half typed; Step says in one sentence what is wrong with it
            return ""
        if wanted == session.wanted:
            return ""
        what = " and ".join(changes(session.wanted, wanted))
        # while Run to end streams, in words that stay true once it has ended (the page clears the note only
        # on the next press)
        now = ("keeps the settings it began with, to its end or Stop" if session.running
               else "was made with the settings before")
        return (f'<span class="note">Changed: {html.escape(what)}. The run on screen {now}; the next Step or '
                f'Run to end starts a new run with the settings shown.</span>')

    def set_narrow(sessions: Sessions, narrow: Any):
        """The page told its width: at phone width the figures stack their panels rather than shrink them."""
        sessions.narrow = narrow is True
        with sessions.panel:
            if sessions.shown is None:
                return panel.unchanged()
            return screen_of(sessions, sessions.shown, sessions.get(sessions.shown))

    def download_trace(sessions: Sessions, method: str) -> str:
        """Write the run on screen to a file, now that it is asked for (a Step never writes one)."""
        session = sessions.get(checked_method(method))
        if session is None or not session.trace.steps:
            raise ValueError("There is no run to download yet; press Step or Run to end first.")
        with sessions.work:   # not while a Run to end appends a step
            return save_trace(session.trace, session.key)

    return {name: friendly(fn) for name, fn in dict(reset=reset, step=step, back=back, seek=seek, run=run,
                                                     stop=stop, load_trace=load_trace, show_method=show_method,
                                                     download_trace=download_trace, set_narrow=set_narrow,
                                                     settings_note=settings_note).items()}


def target_for(session: Session | None, method: str, current: str | None) -> str:
    """The target model control on switching to a method: the model of that method's run on screen (what its
    controls asked for, or a loaded trace's own target), else the current choice unless it is a preset of the
    other kind (causal or masked), else the method's default. A loaded trace switches the tab, and the switch
    must not put back the target the page showed before the trace."""
    if session is not None and session.wanted and session.wanted["target"]:
        return session.wanted["target"]
    if session is not None and session.wanted is None and session.trace.models.get("target"):
        return session.trace.models["target"]
    other = model_choices("causal" if METHODS[method].model_kind == "masked" else "masked")
    return current if current and current not in other else method_default_target(method)


# ----------------------------------------------------------------------------- layout
