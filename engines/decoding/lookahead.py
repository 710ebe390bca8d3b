"""Lookahead decoding: Jacobi iterations harvest n-grams that later forwards verify.

Fu, Bailis, Stoica, Zhang 2024, "Break the Sequential Dependency of LLM Inference Using
Lookahead Decoding" (arXiv 2402.02057), Sec. 3 and Fig. 2-3. One forward carries two branches:

- the lookahead branch: a 2D window of N - 1 levels x W columns of past Jacobi iterates.
  Level j, column i sits at position i + j after the last committed token (level 0,
  column 0 is that token itself). Column i is read as the chain
  [level 0 columns 0..i, level 1 column i, ..., level N-2 column i], so the forward is
  one Jacobi step for W overlapping trajectories; its outputs are the next level, and each
  diagonal (level 0..N-2 of column i, then the new output) is an n-gram for the pool.
- the verification branch: up to G pooled n-grams whose first token is the last committed
  token, each a chain after it (n-grams sharing a prefix share its tokens: a trie). Greedy:
  the longest prefix equal to the target's argmax is accepted plus the target's next token.
  Sampling: each n-gram is a deterministic draft (one-hot q), verified by recursive rejection
  over the distinct next tokens (Sec. 3.4), the rule engines/decoding/verify_tree.py verifies trees with.

Both branches are one tree of tokens under the stock model: every token sees the cached
text and its ancestors (`attend`), at position = cache length + depth.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence, TypedDict

import torch

from engines.config import DecodeConfig, option
from engines.decoding import trees
from engines.decoding.sampling import Sampling, probabilities, raw_probabilities
from engines.decoding.stop import until_eos
from engines.decoding.verify_tree import verify_greedy, verify_one
from engines.models.adapter import LM
from engines.models.devices import clock
from engines.trace import Step

POOL_KEYS_RECORDED = 12   # a step records the pool under at most this many first tokens


@dataclass(frozen=True)
class LookaheadConfig(DecodeConfig):
    window: int = option(5, "W: positions the lookahead branch guesses ahead, per level", 1, 12, label="window W")
    ngram: int = option(4, "N: n-gram size; the window keeps N - 1 levels of past Jacobi outputs", 2, 6,
                        label="n-gram size N")
    guesses: int = option(5, "G: pooled n-grams verified per forward (and kept per first token)", 0, 12,
                          label="guesses G")


# ----------------------------------------------------------------------------- the step record

PoolEntry = tuple[int, list[list[int]]]   # (first token, the pooled n-grams' other tokens), most recent last


class LookaheadDraw(TypedDict):
    """One uniform drawn while verifying the pooled n-grams by recursive rejection (sampling only)."""
    depth: int          # the tested token's depth in the candidates' trie (0: right after the last committed token)
    child_token: int    # the token tested
    u: float            # the uniform in (0, 1] drawn for it
    p_child: float      # its acceptance probability then, min(1, r(x)): r is p, or the residual after refused siblings
    accepted: bool      # it is on the accepted path


class LookaheadDetail(TypedDict):
    """One lookahead forward: the Jacobi window, the pooled n-grams verified, what was committed and harvested."""
    input_token: int                 # the last committed token: level 0, column 0 of the window
    window: list[list[int]]          # the window the forward read, [level][column]
    new_level_ids: list[int]         # the forward's argmax after the window's last level: the next level
    fed_ids: list[int]               # tokens fed from the last committed token on: window, then verification trie
    parents: list[int]               # each fed token's parent, an index into fed_ids; -1 for the first
    candidates: list[list[int]]      # pooled n-grams verified: the tokens after the last committed one
    matched: list[int]               # per candidate, its leading tokens equal to the committed ones
    accepted: int                    # the candidate whose tokens were accepted; -1 when none was
    accepted_len: int                # pooled tokens committed (the target's own token comes after them)
    draws: list[LookaheadDraw]       # every uniform drawn in verification, by depth; empty under greedy
    p_committed: list[float]         # each committed token's probability under p, after the sampling settings
    raw_p_committed: list[float]     # the same under the target's own distribution (temperature 1)
    harvested: list[list[int]]       # n-grams read off the window's diagonals; empty while the window fills
    added: list[bool]                # per harvested n-gram: it was new to the pool
    pool: list[PoolEntry]            # the pool under the last committed token and the most recently updated others
    pool_size: int                   # n-grams in the whole pool
    pool_keys: int                   # first tokens in the whole pool
    warming_up: bool                 # the window has fewer than N - 1 levels yet: nothing harvested
    shift: int                       # positions the window slid left after the commit
    cache_len: int                   # tokens in the target's cache after the accepted n-gram was kept


# ----------------------------------------------------------------------------- the tree of one forward

@dataclass
class Branches:
    """The tokens of one forward, each with its parent (-1: the cached text), and where each cell sits."""
    ids: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    window_rows: list[list[int]] = field(default_factory=list)     # [level][column] -> index in ids
    candidate_rows: list[list[int]] = field(default_factory=list)  # [candidate][token] -> index in ids
    trie_rows: list[int] = field(default_factory=list)      # verification branch as a trie: node -> index in ids
    trie_parents: list[int] = field(default_factory=list)   # node -> parent node (-1: the last committed token)

    def add(self, token: int, parent: int) -> int:
        self.ids.append(token)
        self.parents.append(parent)
        return len(self.ids) - 1


def branches(pending: Sequence[int], levels: Sequence[Sequence[int]],
             candidates: Sequence[Sequence[int]]) -> Branches:
    """Lay out [pending] + lookahead branch + verification branch (Fu et al. Fig. 3's mask, as parents).
    Candidates sharing a prefix share its tokens (a trie), so nothing is fed twice."""
    b = Branches()
    for t in pending:                                   # the text not yet cached: a causal chain
        b.add(t, len(b.ids) - 1)
    root = len(b.ids) - 1                               # the last committed token is level 0, column 0
    level0 = [root]
    for token in levels[0][1:]:
        level0.append(b.add(token, level0[-1]))
    b.window_rows.append(level0)
    for level in levels[1:]:                            # level j, column i continues column i's chain
        b.window_rows.append([b.add(token, below) for token, below in zip(level, b.window_rows[-1])])
    node = {(): -1}                                     # prefix -> trie node
    for candidate in candidates:
        for d in range(1, len(candidate) + 1):
            prefix, parent = tuple(candidate[:d]), node[tuple(candidate[:d - 1])]
            if prefix not in node:
                node[prefix] = len(b.trie_rows)
                b.trie_rows.append(b.add(candidate[d - 1], b.trie_rows[parent] if parent >= 0 else root))
                b.trie_parents.append(parent)
        b.candidate_rows.append([b.trie_rows[node[tuple(candidate[:d])]] for d in range(1, len(candidate) + 1)])
    return b



# ----------------------------------------------------------------------------- the n-gram pool

def remember(pool: OrderedDict, ngram: Sequence[int], capacity: int) -> bool:
    """Put an n-gram into the pool under its first token, most recent last; True if it was new."""
    key, tail = ngram[0], tuple(ngram[1:])
    tails = pool.setdefault(key, [])
    pool.move_to_end(key)
    new = tail not in tails
    if not new:
        tails.remove(tail)
    tails.append(tail)
    del tails[:-capacity]
    return new


def pool_snapshot(pool: OrderedDict, first: int) -> list:
    """The pool under `first` and the most recently updated first tokens, capped for the record."""
    keys = [first] if first in pool else []
    keys += [k for k in reversed(pool) if k != first][:POOL_KEYS_RECORDED - len(keys)]
    return [[k, [list(t) for t in pool[k]]] for k in keys]


# ----------------------------------------------------------------------------- verification

@dataclass
class Verdict:
    tokens: list[int]          # committed: accepted pooled tokens, then the target's own token
    path: list[int]            # the accepted verification tokens (indices in the forward)
    draws: list[LookaheadDraw]   # every uniform drawn (sampling only)


def verify(logits: torch.Tensor, root: int, b: Branches, s: Sampling, rng: torch.Generator) -> Verdict:
    """Verify the candidates' trie from the last committed token: greedy (Fu et al. Sec. 3.2) or, since each
    pooled n-gram is a deterministic draft (one-hot q), SpecInfer's recursive rejection over siblings
    (Fu et al. Sec. 3.4): the very rule tree speculative decoding verifies its token tree with."""
    p = probabilities(logits[[root] + b.trie_rows], s)
    tokens = [b.ids[r] for r in b.trie_rows]
    outcome = verify_greedy(b.trie_parents, tokens, p) if s.greedy else verify_one(b.trie_parents, tokens, p, rng)
    draws = [LookaheadDraw(depth=depth(b.trie_parents, n), child_token=tokens[n], u=round(u, 6),
                           p_child=round(chance, 6), accepted=n in outcome.path)
             for n, (u, chance) in enumerate(zip(outcome.u, outcome.ratio)) if u is not None]
    return Verdict([tokens[n] for n in outcome.path] + [outcome.final], [b.trie_rows[n] for n in outcome.path],
                   sorted(draws, key=lambda d: d["depth"]))


def depth(parents: Sequence[int], node: int) -> int:
    return 0 if parents[node] < 0 else 1 + depth(parents, parents[node])


# ----------------------------------------------------------------------------- the window

def slide(levels: list[list[int]], new_level: list[int], n_levels: int, committed: int,
          fill: Callable[[int], list[int]]) -> tuple[list[list[int]], int]:
    """Append the new level (dropping the oldest once N - 1 are kept) and shift every level left so
    column 0 of level 0 sits on the new last committed token; freed slots take tokens from `fill`."""
    stacked = levels + [new_level]
    shift = committed
    if len(stacked) > n_levels:
        stacked, shift = stacked[1:], committed - 1     # dropping the oldest level moved one position already
    width = len(new_level)
    out = []
    for level in stacked:
        kept = level[shift:]
        out.append(kept + fill(width - len(kept)))
    return out, shift


def harvest(pool: OrderedDict, levels: list[list[int]], new_level: list[int], capacity: int
            ) -> tuple[list[list[int]], list[bool]]:
    """Each column's diagonal (levels 0..N-2, then the new output) is an n-gram; pool them all."""
    ngrams = [[level[i] for level in levels] + [token] for i, token in enumerate(new_level)]
    return ngrams, [remember(pool, ngram, capacity) for ngram in ngrams]


def lookahead(target: LM, prompt_ids: Sequence[int], cfg: LookaheadConfig, rng: torch.Generator) -> Iterator[Step]:
    W, N, G, s = cfg.window, cfg.ngram, cfg.guesses, cfg.sampling
    kv = target.new_kv()
    text, pending = list(prompt_ids), list(prompt_ids)
    # fresh window slots copy random tokens of the text so far, as Fu et al.'s implementation does
    draw = lambda count: [text[i] for i in torch.randint(len(text), (count,), generator=rng).tolist()]
    levels = [draw(W)]
    pool: OrderedDict[int, list[tuple[int, ...]]] = OrderedDict()
    for index in range(cfg.max_new_tokens):
        start = clock(target.device)   # CUDA waited for: timings measure the GPU's work
        last = pending[-1]
        levels[0][0] = last
        candidates = [list(t) for t in pool.get(last, [])] if G else []
        b = branches(pending, levels, candidates)
        sees, depths = trees.ancestry(b.parents)
        attend = torch.tensor(sees, dtype=torch.bool)
        cached, root = len(kv), len(pending) - 1
        logits = target.forward(kv, b.ids, depths=depths, attend=attend)
        new_level = logits[b.window_rows[-1]].argmax(-1).tolist()
        verdict = verify(logits, root, b, s, rng)
        committed = until_eos(verdict.tokens[:cfg.max_new_tokens - (len(text) - len(prompt_ids))], target.eos_ids)
        path = [root] + verdict.path[:len(committed) - 1]
        accepted = next((g for g, rows in enumerate(b.candidate_rows) if verdict.path
                         and rows[:len(verdict.path)] == verdict.path), -1)
        # keep the accepted n-gram's rows: the cache then holds the committed text but its last token
        target.keep(kv, cached + len(pending), [r - root - 1 for r in path[1:]])
        window_full = G > 0 and len(levels) == N - 1
        harvested, added = harvest(pool, levels, new_level, G) if window_full else ([], [])
        ids = torch.tensor(committed, device=logits.device).view(-1, 1)
        p_committed = probabilities(logits[path], s).gather(-1, ids).view(-1).tolist()
        raw_p_committed = raw_probabilities(logits[path]).gather(-1, ids).view(-1).tolist()
        window = [list(level) for level in levels]
        text += committed
        levels, shift = slide(levels, new_level, N - 1, len(committed), draw)
        final = committed[-1] in target.eos_ids or len(text) - len(prompt_ids) >= cfg.max_new_tokens
        yield Step(index, tuple(committed), target_forwards=1, tokens_fed=len(b.ids),
                   wall_s=clock(target.device) - start, final=final, detail=LookaheadDetail(
                       input_token=last,
                       window=window,
                       new_level_ids=new_level,
                       fed_ids=b.ids[root:],
                       parents=[p - root if p >= root else -1 for p in b.parents[root:]],
                       candidates=candidates,
                       matched=[agreement(c, committed) for c in candidates],
                       accepted=accepted,
                       accepted_len=len(committed) - 1,
                       draws=verdict.draws,
                       p_committed=[round(p, 6) for p in p_committed],
                       raw_p_committed=[round(p, 6) for p in raw_p_committed],
                       harvested=harvested,
                       added=added,
                       pool=pool_snapshot(pool, last),
                       pool_size=sum(len(t) for t in pool.values()),
                       pool_keys=len(pool),
                       warming_up=len(window) < N - 1,
                       shift=shift,
                       cache_len=len(kv),
                   ))
        if final:
            return
        pending = [committed[-1]]


def agreement(candidate: Sequence[int], committed: Sequence[int]) -> int:
    """How many leading tokens of a candidate equal the committed ones."""
    k = 0
    while k < min(len(candidate), len(committed)) and candidate[k] == committed[k]:
        k += 1
    return k
