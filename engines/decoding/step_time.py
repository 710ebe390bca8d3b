"""Where a step's time went: the target's forward, the drafter, and the engine's own work around them."""
from __future__ import annotations


def time_split(wall_s: float, target_s: float, drafting_s: float | None = None) -> dict[str, float]:
    """The parts of a step's wall time as its record keeps them: target_forward_s, drafting_s (for methods that
    draft) and bookkeeping_s, the rest. Each part was read off the same clock inside the step, so they add up to
    wall_s; the rest is floored at 0 against a clock that rounds."""
    parts = {"target_forward_s": target_s, **({"drafting_s": drafting_s} if drafting_s is not None else {})}
    return {**parts, "bookkeeping_s": max(0.0, wall_s - sum(parts.values()))}
