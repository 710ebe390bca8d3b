"""One person's runs: per method, the recorded trace, a cursor into it, and (unless the
trace was loaded from a file) the live engine that extends it.

Back and the history slider move the cursor through recorded steps; only a Step past
the last recorded one runs the model. Models are never held here, only the Run
(which reaches them through the process-wide cache in engines.models.store).
"""
from __future__ import annotations

import copy
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable

from engines.methods import Run
from engines.trace import Step, Trace


@dataclass
class Session:
    trace: Trace
    run: Run | None = None     # None: a loaded trace, replay only
    cursor: int = -1           # index of the step on screen; -1 is "nothing run yet"
    key: str = field(default_factory=lambda: uuid.uuid4().hex[:16])   # names this run's trace file
    wanted: dict | None = None  # the control values that made the run (None: a loaded trace)
    failed: bool = False       # the engine raised: its generator is closed, so this run cannot go on
    note: str = ""             # said once on screen after a Step: why that Step started a new run
    stopped: bool = False      # Stop was pressed: Run to end ends before its next step, the page says "stopped"
    running: bool = False      # a Run to end is stepping this run (what Stop can stop)

    @classmethod
    def start(cls, run: Run, wanted: dict | None = None) -> "Session":
        return cls(trace=run.trace, run=run, wanted=wanted)

    @classmethod
    def replay(cls, trace: Trace) -> "Session":
        return cls(trace=trace, run=None, cursor=len(trace.steps) - 1)

    @classmethod
    def recorded(cls, trace: Trace, wanted: dict) -> "Session":
        """A whole run computed at once (ZeroGPU: one GPU call) and walked from its start by Step."""
        return cls(trace=trace, run=None, wanted=wanted)

    @property
    def at_end(self) -> bool:
        """No step after the cursor: recorded or still to run."""
        return self.cursor == len(self.trace.steps) - 1 and (self.run is None or self.run.finished or self.failed)

    @property
    def current(self) -> Step | None:
        return self.trace.steps[self.cursor] if self.cursor >= 0 else None

    def step(self) -> bool:
        """Show the next step, running the model only past the recorded ones. False at the end. A step that
        raises changes neither the trace nor the cursor; the run is marked failed, since its engine is gone."""
        if self.cursor < len(self.trace.steps) - 1:
            self.cursor += 1
            return True
        if self.run is None or self.failed:
            return False
        try:
            step = self.run.step()
        except Exception:
            self.failed = True
            raise
        if step is None:
            return False
        self.cursor = len(self.trace.steps) - 1
        return True

    @property
    def run_id(self) -> str:
        """Names this run among all the runs of a visitor: what the results panel says it shows."""
        return f"{self.trace.method}:{self.key}"

    def back(self) -> None:
        self.cursor = max(-1, self.cursor - 1)
        self.note = ""

    def seek(self, index: int) -> None:
        self.cursor = max(-1, min(int(index), len(self.trace.steps) - 1))
        self.note = ""

    def why_new(self, wanted: dict) -> str:
        """Why a Step with these control values starts a new run instead of continuing this one ('' when it
        continues): the controls must describe the run on screen. A loaded trace has no controls to compare."""
        if self.failed and self.cursor == len(self.trace.steps) - 1:
            return "New run: the last one stopped at an error."
        if self.wanted is None or wanted == self.wanted:
            return ""
        return f"New run: {' and '.join(changes(self.wanted, wanted))} changed."


# How a session starts from what the controls ask for (the `wanted` dict of explorer.ui.Controls): a live run
# stepped by the engine (the default), or a whole trace computed in one call and replayed (explorer.zerogpu).
Starter = Callable[[dict], Session]


def live_session(wanted: dict) -> Session:
    run = Run(wanted["method"], wanted["prompt"], wanted["settings"], target=wanted["target"],
              draft=wanted["draft"], seed=wanted["seed"], chat=wanted.get("chat"))
    return Session.start(run, wanted)


# how a changed control is named in the note that a new run started
CONTROL_NAMES = {"prompt": "the prompt", "chat": "the chat template", "target": "the target model",
                 "draft": "the draft model", "seed": "the seed"}


def changes(before: dict, after: dict) -> list[str]:
    """The controls that differ, by name; a method's settings each by their own name."""
    names = [CONTROL_NAMES[k] for k in CONTROL_NAMES if before.get(k) != after.get(k)]
    old, new = before.get("settings", {}), after.get("settings", {})
    names += [name.replace("_", " ") for name in sorted(old.keys() | new.keys()) if old.get(name) != new.get(name)]
    return names or ["the settings"]


class Sessions:
    """One visitor's runs: every method keeps its own session, so switching methods loses no run.

    The results panel belongs to one run at a time: the current run of the method whose tab is selected
    (`shown`). A screen of any other run is dropped (`owns`). `shown` is None until a page selects a tab:
    a program driving the API has no tabs, and every run it steps is its own.
    `panel` is held while a handler decides that its run owns the panel and renders it, and while a tab switch
    or a loaded trace changes the owner, so no screen of the old owner is made after the owner changed.
    `work` is held while one of this visitor's engines steps or its cursor moves: Step presses, Back and Run to
    end's steps take turns, in the order they came.
    """
    # A plain class, not a dataclass: Gradio turns a dataclass state into a dict for the page's config, which
    # would copy the locks.
    def __init__(self, by_method: dict[str, Session] | None = None, shown: str | None = None):
        self.by_method: dict[str, Session] = by_method if by_method is not None else {}
        self.shown = shown
        self.owner = 0           # counts the panel's changes of owner (`show`, and a replaced current run)
        self.narrow = False      # the page is phone-width: figures lay out for it (the page says so on load)
        self.panel = threading.RLock()
        self.work = threading.RLock()

    def __deepcopy__(self, memo: dict) -> "Sessions":
        # Gradio copies the state's initial value for each visitor: the copy gets its own locks
        return Sessions(by_method=copy.deepcopy(self.by_method, memo), shown=self.shown)

    def show(self, method: str) -> None:
        """The tab of `method` is selected: the panel now belongs to its current run."""
        self.shown = method
        self.owner += 1

    def owns(self, method: str, session: Session | None) -> bool:
        """Whether a screen of `session` (the run of `method`, None: its empty state) may go to the panel."""
        return (self.shown is None or self.shown == method) and self.get(method) is session

    def get(self, method: str) -> Session | None:
        return self.by_method.get(method)

    def put(self, method: str, session: Session) -> Session:
        with self.panel:
            self.by_method[method] = session
            self.owner += 1
        return session

    def advance(self, method: str, wanted: dict, start: Callable[[], Session],
                again: bool = False) -> tuple[Session, bool]:
        """One Step: the method's run goes on, unless there is none, it failed, the controls ask for another
        or (with `again`) it has finished; then a new run from `start` takes one step. A new run is kept only
        once its first step has worked, so a run that cannot be built or started never replaces the one on
        screen, and the next Step starts afresh. Returns the session on screen and whether it moved."""
        old = self.get(method)
        reason = old.why_new(wanted) if old is not None else ""
        finished = again and old is not None and old.run is not None and old.at_end
        if old is not None and not reason and not finished:
            old.note, old.stopped = "", False
            return old, old.step()
        new = start()
        moved = new.step()
        new.note = reason
        return self.put(method, new), moved
