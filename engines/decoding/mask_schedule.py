"""How many positions each mask-predict iteration commits, and the blocks a semi-autoregressive run walks
through: pure functions of the length, the block size and the iteration count."""
from __future__ import annotations

from dataclasses import dataclass


def spread(total: int, parts: int) -> list[int]:
    """`total` split into `parts` counts differing by at most one, the larger first (LLaDA's
    get_num_transfer_tokens: tokens committed per iteration, and here also iterations per block)."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def schedule(n: int, iterations: int, strategy: str) -> list[int]:
    """Masks at the start of each iteration t = 0 .. T-1 of a block of n positions.

    mask-predict: floor(n * (T - t) / T), the paper's n (all n at t = 0).
    diffusion, random: n minus the tokens committed so far, `spread(n, T)` per iteration.
    """
    if strategy == "mask-predict":
        return [n * (iterations - t) // iterations for t in range(iterations)]
    commits = spread(n, iterations)
    return [n - sum(commits[:t]) for t in range(iterations)]


def block_bounds(length: int, block: int) -> list[tuple[int, int]]:
    """[start, end) of every block of the span; block 0 or >= length is the whole span."""
    size = block if 0 < block < length else length
    return [(s, min(s + size, length)) for s in range(0, length, size)]


@dataclass(frozen=True)
class Phase:
    """Where one global iteration falls: the block [start, end) and the iteration t of T inside it."""
    start: int
    end: int
    t: int
    of: int


def plan(length: int, block: int, iterations: int) -> list[Phase]:
    """One Phase per global iteration: blocks left to right, the iterations spread over them."""
    bounds = block_bounds(length, block)
    return [Phase(s, e, t, per) for (s, e), per in zip(bounds, spread(iterations, len(bounds)))
            for t in range(per)]


def worst_plan(length: int, block: int) -> list[Phase]:
    """Threshold has no schedule: at least one commit per iteration, so a block of n takes at most n iterations.
    This is that slowest plan, block by block."""
    return [Phase(s, e, t, e - s) for s, e in block_bounds(length, block) for t in range(e - s)]
