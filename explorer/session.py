"""One person's runs: per method, the recorded trace, a cursor into it, and (unless the
trace was loaded from a file) the live engine that extends it.

Back and the history slider move the cursor through recorded steps; only a Step past
the last recorded one runs the model. Models are never held here, only the Run
(which reaches them through the process-wide cache in engines.lm).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from engines.methods import Run
from engines.trace import Step, Trace


@dataclass
class Session:
    trace: Trace
    run: Run | None = None     # None: a loaded trace, replay only
    cursor: int = -1           # index of the step on screen; -1 is "nothing run yet"
    key: str = field(default_factory=lambda: uuid.uuid4().hex[:16])   # names this run's trace file

    @classmethod
    def start(cls, run: Run) -> "Session":
        return cls(trace=run.trace, run=run)

    @classmethod
    def replay(cls, trace: Trace) -> "Session":
        return cls(trace=trace, run=None, cursor=len(trace.steps) - 1)

    @property
    def at_end(self) -> bool:
        """No step after the cursor: recorded or still to run."""
        return self.cursor == len(self.trace.steps) - 1 and (self.run is None or self.run.finished)

    @property
    def current(self) -> Step | None:
        return self.trace.steps[self.cursor] if self.cursor >= 0 else None

    def step(self) -> bool:
        """Show the next step, running the model only past the recorded ones. False at the end."""
        if self.cursor < len(self.trace.steps) - 1:
            self.cursor += 1
            return True
        if self.run is None or self.run.step() is None:
            return False
        self.cursor = len(self.trace.steps) - 1
        return True

    def back(self) -> None:
        self.cursor = max(-1, self.cursor - 1)

    def seek(self, index: int) -> None:
        self.cursor = max(-1, min(int(index), len(self.trace.steps) - 1))


@dataclass
class Sessions:
    """Every method keeps its own session, so switching methods loses no run."""
    by_method: dict[str, Session] = field(default_factory=dict)

    def get(self, method: str) -> Session | None:
        return self.by_method.get(method)

    def put(self, method: str, session: Session) -> Session:
        self.by_method[method] = session
        return session
