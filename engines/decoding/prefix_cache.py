"""Fast-dLLM's prefix cache for masked diffusion (Wu et al. 2025, section 3.2): the keys and values of the
positions before the current block are kept between iterations, and each cached position is audited as "cached"
(computed on the text as it stands) or "stale" (computed when a token it attends to was different)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

KVState = Literal["fresh", "cached", "stale"]


@dataclass
class Audit:
    """What one iteration's forward read and what the cache cost: per row position (prompt and span) "fresh"
    (fed to this forward), "cached" (read from the cache, computed on the text as it stands) or "stale" (read
    from the cache, computed when a token it attends to was different) and the iteration that computed it;
    with cached positions in a bidirectional model, the largest logit difference to the exact forward over
    the positions decided, the positions whose decision the exact forward would change, and its length."""
    states: list[KVState] = field(default_factory=list)
    computed: list[int] = field(default_factory=list)
    drift: float | None = None
    changed: list[int] = field(default_factory=list)
    tokens_fed: int = 0
    seconds: float = 0.0


@dataclass
class Prefix:
    """One span's cached prefix: the model's cache, the iteration that computed each cached position, and the
    row each iteration saw (to tell a cached position from a stale one)."""
    kv: object
    computed: list[int] = field(default_factory=list)
    rows: dict[int, list[int]] = field(default_factory=dict)


def kv_states(prefix: Prefix, row: list[int], bidirectional: bool) -> list[KVState]:
    """'cached' or 'stale' for every cached position: stale when a token it attends to (every token in a
    bidirectional model, those on its left in a causal one) has changed since it was computed."""
    states: list[KVState] = []
    for i, at in enumerate(prefix.computed):
        seen = prefix.rows[at]
        visible = len(row) if bidirectional else i + 1
        states.append("stale" if seen[:visible] != row[:visible] else "cached")
    return states


def cached_forward(model, prefix: Prefix, row: list[int], need: int, iteration: int) -> tuple[torch.Tensor, Audit]:
    """Fast-dLLM's prefix cache (section 3.2): feed row[len(cache):] over the cached keys and values, every
    position seeing every other; keep in the cache only what lies before `need` (the current block's first row
    position) for the next iterations. Returns the logits of row[need:] and what was read from where."""
    before = len(prefix.computed)
    audit = Audit(states=kv_states(prefix, row, model.bidirectional) + ["fresh"] * (len(row) - before),
                  computed=prefix.computed + [iteration] * (len(row) - before))
    logits = model.masked_logits_cached(prefix.kv, row, need)
    prefix.rows[iteration] = list(row)
    keep = model.cacheable(need)
    prefix.computed = audit.computed[:keep]
    model.crop(prefix.kv, keep)
    return logits, audit
