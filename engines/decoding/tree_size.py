"""A draft tree sized to the machine: the number of nodes that maximises expected tokens per second.

EAGLE-2 (Li et al. 2024, arXiv 2406.16858, section 4) observes that a node's draft confidence approximates the
chance that the target accepts it. Sequoia (Chen et al. 2024, arXiv 2402.12374, section 4) sizes the tree to the
hardware: a node is worth adding while the expected tokens it earns pay for what it adds to the verification
forward. Here the two meet:

    c(x)    = min(1, r_d * q(x))                 the chance the target accepts child x once its parent is
                                                 accepted: the drafter's probability q(x) of it, scaled by what
                                                 this run observed at its depth d (r_d = children accepted / sum of
                                                 q over the children the target tested, 1 before any), the
                                                 siblings' chances scaled down to sum to at most 1
    a(x)    = a(parent) * c(x)                   the chance x is on the accepted path (a(root) = 1)
    E(n)    = 1 + sum_{i <= n} a_i               the accepted path's expected length plus the target's own
                                                 token: one path is accepted, so its expected length is the sum
                                                 of each node's chance of being on it
    cost(n) = drafting_s + T_s(pending + n)      the step's seconds: drafting (paid whatever n) and the measured
                                                 target forward over the pending tokens and n nodes
    n*      = argmax_n E(n) / cost(n)            tokens per second, the nodes taken in order of a

A child's chance never exceeds its parent's, so every prefix of that order is a tree.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

from engines.decoding.trees import Node

UNMEASURED_BUDGET = 16   # the budget before the run has measured any target forward (the fixed default)


class TreeSizing(TypedDict):
    """How an automatic budget chose this step's tree: the numbers it compared."""
    budget: int                  # nodes kept for the target to verify
    candidates: int              # drafted nodes it chose among
    draft_depth: int             # levels drafted this step (one past the deepest node the last budget kept)
    measured: bool               # False: no target forward measured yet, so the unmeasured budget was kept
    drafting_s: float            # this step's drafting seconds, paid whatever the budget
    expected_tokens: list[float]   # E(n) for n = 0..candidates: expected tokens of a tree of the n first nodes
    seconds: list[float]         # cost(n) for n = 0..candidates: drafting + the target forward over n nodes
    depth_ratio: list[float]     # r_d for d = 1..: children accepted / their summed q, tested so far (1: none yet)


@dataclass
class DepthAcceptance:
    """What a run observed per tree depth: the children the target tested, their summed q, and how many it kept."""
    accepted: dict[int, float] = field(default_factory=dict)
    offered: dict[int, float] = field(default_factory=dict)

    def ratio(self, depth: int) -> float:
        """r_d, with one pseudo-observation at r = 1 so that a depth seen once does not swing the budget."""
        return (self.accepted.get(depth, 0.0) + 1.0) / (self.offered.get(depth, 0.0) + 1.0)

    def note(self, nodes: Sequence[Node], tested: Sequence[bool], accepted: Sequence[int]) -> None:
        """A verified tree: each tested node's q at its depth, and the accepted path's nodes."""
        for n, was_tested in zip(nodes, tested):
            if was_tested:
                self.offered[len(n.path)] = self.offered.get(len(n.path), 0.0) + n.q
        for i in accepted:
            self.accepted[len(nodes[i].path)] = self.accepted.get(len(nodes[i].path), 0.0) + 1.0


def chances(candidates: Sequence[Node], seen: DepthAcceptance) -> dict[tuple[int, ...], float]:
    """a(x) for every candidate whose ancestors are all candidates: its chance of being on the accepted path."""
    siblings: dict[tuple[int, ...], list[Node]] = {}
    for n in candidates:
        siblings.setdefault(n.path[:-1], []).append(n)
    chance: dict[tuple[int, ...], float] = {(): 1.0}
    for parent in sorted(siblings, key=len):   # parents before children
        if parent not in chance:
            continue
        kids = siblings[parent]
        given = [min(1.0, seen.ratio(len(k.path)) * k.q) for k in kids]
        scale = 1.0 / max(1.0, sum(given))   # one child at most is accepted: the chances sum to at most 1
        for k, g in zip(kids, given):
            chance[k.path] = chance[parent] * g * scale
    del chance[()]
    return chance


def fit(candidates: Sequence[Node], pending: int, drafting_s: float, verify_s: Callable[[int], float | None],
        seen: DepthAcceptance, draft_depth: int, cap: int) -> tuple[list[Node], TreeSizing]:
    """The tree of at most `cap` nodes with the most expected tokens per second, and the numbers behind it.
    verify_s(n): the measured seconds of a target forward over n tokens, None while none is measured."""
    chance = chances(candidates, seen)
    order = sorted((n for n in candidates if n.path in chance),
                   key=lambda n: (-chance[n.path], len(n.path), n.path))[:cap]
    depths = range(1, max((len(n.path) for n in order), default=0) + 1)
    expected = [1.0]
    for n in order:
        expected.append(expected[-1] + chance[n.path])
    forward = [verify_s(pending + n) for n in range(len(order) + 1)]
    measured = all(s is not None for s in forward)
    if measured:
        seconds = [drafting_s + s for s in forward]
        budget = max(range(len(order) + 1), key=lambda n: (expected[n] / seconds[n], -n))
    else:
        seconds, budget = [], min(UNMEASURED_BUDGET, len(order))
    sizing = TreeSizing(budget=budget, candidates=len(order), draft_depth=draft_depth, measured=measured,
                        drafting_s=round(drafting_s, 6), expected_tokens=[round(e, 4) for e in expected],
                        seconds=[round(s, 6) for s in seconds], depth_ratio=[round(seen.ratio(d), 4) for d in depths])
    return order[:budget], sizing


def next_depth(kept: Sequence[Node], most: int) -> int:
    """Draft one level past the deepest node this budget kept, at most `most`: levels the budget never keeps
    cost drafting forwards for nothing, and one more level lets the tree grow back when acceptance rises."""
    return max(1, min(most, max((len(n.path) for n in kept), default=0) + 1))
