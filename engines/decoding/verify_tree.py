"""Verifying a draft token tree against the target's distributions at every node, in one pass: greedy, the
lossless sampled rule (multi-draft, SpecInfer / Medusa), one-draft-per-node, and Medusa-2's typical acceptance.
Tree decoding and lookahead decoding both verify through these."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from engines.decoding import trees
from engines.decoding.acceptance import one_hot, ratio, residual, typical_accept
from engines.decoding.sampling import Sampling, choose
from engines.decoding.trees import ROOT


@dataclass(frozen=True)
class Verdict:
    """Where recursive rejection ended, for each of B independent runs over the same tree."""
    last: torch.Tensor      # [B] the last accepted node, ROOT if none
    final: torch.Tensor     # [B] the token drawn from the residual left at `last`
    u: torch.Tensor         # [B, nodes] the uniform drawn when a node was tested; nan if never tested
    ratio: torch.Tensor     # [B, nodes] its acceptance probability at that moment
    residual: torch.Tensor  # [B, vocab] the distribution `final` was drawn from


def verify_sampled(parent_of: Sequence[int], tokens: Sequence[int], p: torch.Tensor, rng: torch.Generator, *,
                   draws: int = 1, q: torch.Tensor | None = None) -> Verdict:
    """SpecInfer's multi-step speculative sampling over a token tree (Miao et al. 2024, Algorithm 2).

    p[0] is the target's distribution at the root, p[i + 1] at node i; q[i] is the distribution node
    i's token was proposed from (None: one-hot, as for a deterministic top-k drafter). From each
    accepted node its children are tried in rank order: with r the residual (p at first), accept child
    x when u <= min(1, r(x) / q(x)), else r <- norm(max(0, r - q)) and try the next sibling. When no
    child is accepted, the final token is drawn from r. Vectorised over `draws` runs; a uniform is
    drawn only for a run that tests a node.
    """
    n, vocab, device = len(tokens), p.shape[-1], p.device
    kids = trees.children(parent_of)
    at = torch.full((draws,), ROOT, dtype=torch.long, device=device)
    open_ = torch.ones(draws, dtype=torch.bool, device=device)
    u = torch.full((draws, n), math.nan, dtype=torch.float32, device=device)
    chance = torch.full((draws, n), math.nan, dtype=torch.float32, device=device)
    final = torch.zeros(draws, dtype=torch.long, device=device)
    left = torch.zeros(draws, vocab, dtype=torch.float32, device=device)
    for node in [ROOT, *range(n)]:                  # breadth-first: a node is settled before its children
        here = ((at == node) & open_).nonzero().squeeze(1)
        if here.numel() == 0:
            continue
        r = p[node + 1].expand(here.numel(), vocab).clone()
        waiting = torch.ones(here.numel(), dtype=torch.bool, device=device)
        for child in kids[node]:
            w = waiting.nonzero().squeeze(1)
            if w.numel() == 0:
                break
            x = torch.full((w.numel(),), tokens[child], dtype=torch.long, device=device)
            qc = one_hot(x, vocab, like=r) if q is None else q[child].expand(w.numel(), vocab)
            # in (0, 1], as in acceptance.py; float32 whatever the default dtype, as every buffer here
            draw = (1.0 - torch.rand(w.numel(), generator=rng, dtype=torch.float32)).to(device)
            keep = ratio(r[w], qc, x)
            ok = draw <= keep
            u[here[w], child], chance[here[w], child] = draw, keep
            at[here[w[ok]]] = child
            waiting[w[ok]] = False
            r[w[~ok]] = residual(r[w[~ok]], qc[~ok])
        done = waiting.nonzero().squeeze(1)
        if done.numel():
            drawn = torch.multinomial(r[done].float().cpu(), 1, generator=rng)
            final[here[done]] = drawn.squeeze(1).to(device)
            left[here[done]] = r[done]
            open_[here[done]] = False
    return Verdict(at, final, u, chance, left)


@dataclass(frozen=True)
class Outcome:
    """One iteration's verification: the accepted nodes and the token the target adds after them."""
    path: list[int]
    final: int
    tested: list[bool]                 # per node: was it compared with the target at all
    u: list[float | None]              # per node: the uniform drawn for it (sampling only)
    ratio: list[float | None]          # per node: its acceptance probability when tested (sampling only)
    residual: torch.Tensor | None = None  # what a resampled final token was drawn from (sampling only)


def verify_greedy(parent_of: Sequence[int], tokens: Sequence[int], p: torch.Tensor) -> Outcome:
    """Greedy tree verification: from the root, follow the child whose token is the target's argmax at
    its parent; where no child matches, that argmax is the target's own next token. Every child of an
    accepted node is compared."""
    kids = trees.children(parent_of)
    path, node = [], ROOT
    while True:
        want = int(p[node + 1].argmax())
        match = [c for c in kids[node] if tokens[c] == want]
        if not match:
            break
        node = match[0]
        path.append(node)
    on_path = {ROOT, *path}
    tested = [parent_of[i] in on_path for i in range(len(tokens))]
    return Outcome(path, want, tested, [None] * len(tokens), [None] * len(tokens))


def verify_typical(parent_of: Sequence[int], tokens: Sequence[int], p: torch.Tensor, typical: tuple[float, float],
                   s: Sampling, rng: torch.Generator) -> Outcome:
    """Medusa-2's typical acceptance over a tree (lossy): a node passes when p(x) at its parent exceeds
    min(epsilon, delta * exp(-H(p))); the deepest node whose whole path passes wins, and of paths accepted to the
    same depth the one the target finds likeliest (the highest sum of log p along it, as Medusa's
    evaluate_posterior picks; the first in breadth-first order on an exact tie). The target's next token is
    chosen from p at it, not from a residual. Under greedy p is one-hot, only the argmax passes, and this is
    greedy verification."""
    n = len(tokens)
    rows = torch.tensor([parent + 1 for parent in parent_of], dtype=torch.long, device=p.device)
    x = torch.tensor(list(tokens), dtype=torch.long, device=p.device)
    passes = typical_accept(p[rows], x, *typical).tolist()
    logp = p[rows, x].clamp_min(1e-30).log().tolist() if n else []
    ok, depth, path_logp = [False] * n, [0] * n, [0.0] * n
    for i in range(n):   # breadth-first: a parent is settled before its children
        parent = parent_of[i]
        ok[i] = passes[i] and (parent == ROOT or ok[parent])
        depth[i] = 1 + (depth[parent] if parent != ROOT else 0)
        path_logp[i] = logp[i] + (path_logp[parent] if parent != ROOT else 0.0)
    best = max((i for i in range(n) if ok[i]), key=lambda i: (depth[i], path_logp[i], -i), default=ROOT)
    path, node = [], best
    while node != ROOT:
        path.append(node)
        node = parent_of[node]
    on_path = {ROOT, *path}
    tested = [parent_of[i] in on_path for i in range(n)]
    return Outcome(path[::-1], choose(p[best + 1], s, rng), tested, [None] * n, [None] * n)


def verify_one(parent_of: Sequence[int], tokens: Sequence[int], p: torch.Tensor, rng: torch.Generator) -> Outcome:
    """Sampling verification of one tree (one run of verify_sampled), as the engine records it."""
    v = verify_sampled(parent_of, tokens, p, rng)
    path, node = [], int(v.last[0])
    while node != ROOT:
        path.append(node)
        node = parent_of[node]
    u = [None if math.isnan(x) else x for x in v.u[0].tolist()]
    chances = [None if math.isnan(x) else x for x in v.ratio[0].tolist()]
    return Outcome(path[::-1], int(v.final[0]), [x is not None for x in u], u, chances, v.residual[0])


# ----------------------------------------------------------------------------- the engine
