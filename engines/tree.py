"""Tree speculative decoding: the draft grows a token tree, the target checks every branch in one forward.

Each iteration:
  1. draft: grow a tree of candidate continuations from the draft's top-k ranks, one draft forward
     per level (the tree mask keeps branches apart in the draft too). Static: a fixed shape of rank
     paths (Medusa, Cai et al. 2024, arXiv 2401.10774). Dynamic: expand the top-k children of the
     most confident frontier nodes by cumulative draft log-probability, then keep the `budget`
     most confident nodes (EAGLE-2, Li et al. 2024, arXiv 2406.16858, section 4).
  2. verify: ONE target forward over the pending token(s) and every node, with the tree attention
     mask and position = root position + depth (SpecInfer, Miao et al. 2024, section 4.2).
     Greedy: follow the child equal to the target's argmax; the argmax where none matches is added.
     Sampling: recursive rejection over siblings (SpecInfer's multi-step speculative sampling,
     Algorithm 2), which is lossless: the output is distributed as the target's own sampling.
  3. keep the accepted path in both caches (LM.keep) and drop every other branch.

The drafter is deterministic (top-k ranks, no sampling), so each child was proposed from a one-hot
q; q recorded per node is the draft's own probability (temperature 1), which ranks the children.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Literal, NotRequired, Sequence, TypedDict

import torch

from engines import trees
from engines.acceptance import entropy, one_hot, ratio, residual, typical_accept, typical_threshold
from engines.config import DecodeConfig, acceptance_option, delta_option, epsilon_option, option, typical_of
from engines.drafters import HEAD_KINDS, HeadsRecord, SuffixDrafter, SuffixMatch, describe, head_drafter
from engines.lm import KV, LM, clock
from engines.sampling import Sampling, TokenProbability, choose, probabilities, raw_probabilities, top
from engines.trace import Step
from engines.trees import ROOT, Path


@dataclass(frozen=True)
class TreeConfig(DecodeConfig):
    drafter: str = option("model", "what grows the tree: the draft model; heads: Medusa heads on the target's last "
                                   "hidden state (each level one head's ranks); eagle: the EAGLE-3 head on the "
                                   "target's fused features, one head forward per level; suffix: SuffixDecoding, a "
                                   "frequency-scored tree from a suffix tree over the prompt and output (no model)",
                          choices=("model",) + HEAD_KINDS + ("suffix",))
    tree: str = option("dynamic", "the draft tree: 'dynamic' (EAGLE-2, grown by draft confidence) or a fixed shape",
                       choices=("dynamic",) + tuple(trees.SHAPES))
    tree_budget: int = option(16, "dynamic tree: nodes kept for the target to verify", 1, 64,
                              label="tree budget")
    tree_depth: int = option(4, "dynamic tree: levels drafted, one draft forward each", 1, 8, label="tree depth")
    tree_topk: int = option(3, "dynamic tree: children per expanded node, and nodes expanded per level", 1, 8,
                            label="tree top-k")
    acceptance: str = acceptance_option()
    typical_epsilon: float = epsilon_option()
    typical_delta: float = delta_option()


# ----------------------------------------------------------------------------- the step record

class TreeNodeRecord(TypedDict):
    """One node of the draft tree, its numbers and its fate (p: target, q: drafter)."""
    id: int                    # its index in the breadth-first node list
    parent: int                # its parent's id; -1 for a child of the root (the last committed token)
    token: int                 # the token it proposes
    depth: int                 # 1 for a child of the root
    rank: int                  # its rank among its parent's draft choices (0: the drafter's most probable)
    q: float                   # the draft's probability of it after the parent (temperature 1); suffix: frequency share
    logq: float                # cumulative draft log-probability from the root, the confidence EAGLE-2 ranks by
    p: float                   # the target's probability of the token at the parent, after the sampling settings
    p_raw: float               # the same under the target's own distribution (temperature 1)
    status: Literal["accepted", "rejected", "not_reached"]   # on the accepted path; tested and refused; never tested
    expanded: bool             # the drafter read it to grow the next level (its row in the draft cache)
    u: NotRequired[float]      # exact sampling, when tested: the uniform in (0, 1] drawn for it
    ratio: NotRequired[float]  # exact sampling, when tested: its acceptance probability min(1, r(x) / q(x)) then
    threshold: NotRequired[float]   # typical acceptance: min(epsilon, delta * exp(-H(p))) at its parent
    entropy: NotRequired[float]     # typical acceptance: H(p) at its parent, in nats


class TreeDetail(TypedDict):
    """A tree step: the draft tree, the one target forward over it (mask, positions), and the accepted path."""
    tree: str                               # dynamic (EAGLE-2) or the name of a fixed shape (engines/trees.py)
    acceptance: Literal["exact", "typical"]   # the verification rule: lossless, or Medusa-2's typical (lossy)
    root_token: int                         # the last committed token, the tree's root
    pending_ids: list[int]                  # tokens the forward fed before the nodes (not yet in the target's cache)
    nodes: list[TreeNodeRecord]             # every node kept, breadth-first
    dropped: int                            # drafted nodes the budget left out
    mask: list[list[int]]                   # the tree attention mask over [root, nodes]: 1 where a row sees a column
    positions: list[int]                    # position ids of [root, nodes]: the root's position plus depth
    accepted_path: list[int]                # node ids accepted, root to leaf
    accepted_length: int                    # accepted nodes committed (an end-of-text token cuts the path)
    stop_node: int                          # the last accepted node; -1 for the root
    final_token: int                        # the target's token after the accepted path
    final_kind: Literal["bonus", "resampled"]   # bonus: the stop node had no children; resampled: all were rejected
    final_p: float                          # the final token's probability under p at the stop node
    final_p_raw: float                      # the same under the target's own distribution
    stop_top: list[TokenProbability]        # top 5 of p at the stop node
    stop_raw_top: list[TokenProbability]    # top 5 of the target's own distribution there
    eos_cut: bool                           # an end-of-text token cut the committed tokens short
    cache_len: int                          # tokens in the target's cache after the accepted path was kept
    heads: NotRequired[HeadsRecord]         # head drafters: the head and whether it could draft the final token
    suffix_match: NotRequired[SuffixMatch | None]   # suffix drafter: the match the tree grew from; null before any
    residual_top: NotRequired[list[TokenProbability]]   # exact sampling, at a rejection: top 5 of the residual


# ----------------------------------------------------------------------------- drafting

@dataclass
class Node:
    path: Path
    token: int
    q: float                # the draft's probability of `token` after its parent (temperature 1)
    logq: float             # cumulative draft log-probability from the root: EAGLE-2's confidence
    row: int | None = None  # its row in the draft cache after the committed text, once fed to the draft


@dataclass
class Drafting:
    """The draft's side of one iteration: its cache beyond the committed text and the nodes fed so far."""
    draft: LM
    kv: KV
    start: int                              # committed length; tree rows follow it in the draft cache
    fed: list[Node] = field(default_factory=list)
    forwards: int = 0

    def root(self, committed: Sequence[int]) -> torch.Tensor:
        """Bring the draft cache to the committed text; the draft's distribution after it."""
        self.forwards += 1
        return raw_probabilities(self.draft.catch_up(self.kv, committed))

    def expand(self, nodes: list[Node]) -> torch.Tensor:
        """Feed one level of nodes in one draft forward, each seeing only its ancestors; their distributions."""
        attend = trees.attend([n.path for n in nodes], [n.path for n in self.fed + nodes])
        logits = self.draft.forward_tree_level(self.kv, [n.token for n in nodes], start=self.start,
                                               depths=[len(n.path) - 1 for n in nodes], attend=attend)
        for n in nodes:
            n.row = len(self.fed)
            self.fed.append(n)
        self.forwards += 1
        return raw_probabilities(logits)


def offspring(parent: Node | None, probs: torch.Tensor, ranks: Sequence[int]) -> list[Node]:
    """The children of `parent` (None: the root) at the given ranks of the draft's distribution."""
    values, ids = probs.topk(max(ranks) + 1)
    values, ids = values.tolist(), ids.tolist()
    path, logq = (parent.path, parent.logq) if parent else ((), 0.0)
    return [Node(path + (r,), ids[r], values[r], logq + math.log(max(values[r], 1e-30))) for r in ranks]


def grow_static(drafting: Drafting, committed: Sequence[int], shape: Sequence[Path]) -> list[Node]:
    """A fixed shape of rank paths, filled from the draft's top-k choices one level per forward."""
    ranks: dict[Path, list[int]] = {}
    for p in trees.ordered(shape):
        ranks.setdefault(p[:-1], []).append(p[-1])
    level = offspring(None, drafting.root(committed), ranks[()])
    nodes = list(level)
    while parents := [n for n in level if n.path in ranks]:
        probs = drafting.expand(parents)
        level = [c for n, pr in zip(parents, probs) for c in offspring(n, pr, ranks[n.path])]
        nodes += level
    return nodes


def grow_dynamic(drafting: Drafting, committed: Sequence[int], depth: int, topk: int) -> list[Node]:
    """EAGLE-2's expansion phase: each level, expand the top-k children of the top-k most confident
    nodes of the level before. Returns every drafted candidate."""
    level = offspring(None, drafting.root(committed), range(topk))
    nodes = list(level)
    for _ in range(depth - 1):
        frontier = sorted(level, key=lambda n: -n.logq)[:topk]
        probs = drafting.expand(frontier)
        level = [c for n, pr in zip(frontier, probs) for c in offspring(n, pr, range(topk))]
        nodes += level
    return nodes


def most_confident(nodes: list[Node], budget: int) -> list[Node]:
    """EAGLE-2's reranking: the `budget` nodes with the highest cumulative draft log-probability. A child is
    never more confident than its parent (ties go to the shallower node), so the kept nodes form a tree."""
    return sorted(nodes, key=lambda n: (-n.logq, len(n.path)))[:budget]


def grow(drafting: Drafting, committed: Sequence[int], cfg: TreeConfig, depth: int) -> tuple[list[Node], int]:
    """The iteration's draft tree in breadth-first order (at most `depth` deep), and how many drafted
    candidates the budget dropped."""
    depth = min(depth, getattr(drafting, "max_depth", depth))
    if depth < 1 or not getattr(drafting, "ready", True):   # heads draft from the first verification on
        return [], 0
    if isinstance(drafting, SuffixDrafter):
        return drafting.grow(committed, cfg.tree_budget, min(depth, cfg.tree_depth)), 0
    if cfg.tree == "dynamic":
        drafted = grow_dynamic(drafting, committed, min(depth, cfg.tree_depth), cfg.tree_topk)
        kept = most_confident(drafted, cfg.tree_budget)
    else:
        drafted = kept = grow_static(drafting, committed, [p for p in trees.SHAPES[cfg.tree] if len(p) <= depth])
    return sorted(kept, key=lambda n: (len(n.path), n.path)), len(drafted) - len(kept)


# ----------------------------------------------------------------------------- verification

def verify_forward(target: LM, kv: KV, pending: Sequence[int], paths: Sequence[Path], tokens: Sequence[int],
                   layers: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ONE target forward over the pending tokens and every tree node. Returns logits [1 + nodes, vocab]:
    row 0 after the root (the last pending token), row i + 1 after node i; and, when `layers` are asked
    for (head drafters), the hidden states of every fed row [layers, pending + nodes, d]."""
    k = len(pending)
    mask = trees.behind(k, trees.attend(paths))
    depths = list(range(k)) + [k - 1 + d for d in trees.depths(paths)]
    ids = list(pending) + list(tokens)
    if not layers:
        return target.forward(kv, ids, depths=depths, attend=mask)[k - 1:], None
    logits, features = target.forward_features(kv, ids, layers, depths=depths, attend=mask)
    return logits[k - 1:], features


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
    min(epsilon, delta * exp(-H(p))); the deepest node whose whole path passes wins (the first in breadth-first
    order on a tie), and the target's next token is chosen from p at it, not from a residual. Under greedy p is
    one-hot, only the argmax passes, and this is greedy verification."""
    n = len(tokens)
    rows = torch.tensor([parent + 1 for parent in parent_of], dtype=torch.long, device=p.device)
    passes = typical_accept(p[rows], torch.tensor(list(tokens), dtype=torch.long, device=p.device), *typical).tolist()
    ok, depth = [False] * n, [0] * n
    for i in range(n):   # breadth-first: a parent is settled before its children
        parent = parent_of[i]
        ok[i] = passes[i] and (parent == ROOT or ok[parent])
        depth[i] = 1 + (depth[parent] if parent != ROOT else 0)
    best = max((i for i in range(n) if ok[i]), key=lambda i: (depth[i], -i), default=ROOT)
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

def tree(target: LM, draft: LM, prompt_ids: Sequence[int], cfg: TreeConfig, rng: torch.Generator) -> Iterator[Step]:
    """Tree speculative decoding; one Step per draft-tree-and-verify iteration."""
    heads = head_drafter(target, cfg.drafter) if cfg.drafter in HEAD_KINDS else None
    suffix = SuffixDrafter() if cfg.drafter == "suffix" else None
    target_kv, draft_kv = target.new_kv(), (draft.new_kv() if cfg.drafter == "model" else None)
    committed, pending, produced, index = list(prompt_ids), list(prompt_ids), 0, 0
    while produced < cfg.max_new_tokens:
        start = clock(target.device)   # CUDA waited for: timings measure the GPU's work
        # never draft past the budget: the deepest path plus the target's own token fill it exactly
        drafting = heads or suffix or Drafting(draft, draft_kv, len(committed))
        if heads is not None:   # a step's head forwards: its tree levels and the read of its verification
            heads.begin()
        nodes, dropped = grow(drafting, committed, cfg, cfg.max_new_tokens - produced - 1)
        paths, tokens = [n.path for n in nodes], [n.token for n in nodes]
        parent_of = trees.parents(paths)
        logits, features = verify_forward(target, target_kv, pending, paths, tokens, heads.layers if heads else ())
        p = probabilities(logits, cfg.sampling)
        p_raw = raw_probabilities(logits)
        typical = typical_of(cfg)
        outcome = (verify_typical(parent_of, tokens, p, typical, cfg.sampling, rng) if typical
                   else verify_greedy(parent_of, tokens, p) if cfg.sampling.greedy
                   else verify_one(parent_of, tokens, p, rng))
        new = until_eos([tokens[i] for i in outcome.path] + [outcome.final], target.eos_ids)
        target.keep(target_kv, len(committed), outcome.path)
        if nodes and draft_kv is not None:
            draft.keep(draft_kv, len(committed), [nodes[i].row for i in outcome.path if nodes[i].row is not None])
        stop = outcome.path[-1] if outcome.path else ROOT
        resampled = bool(trees.children(parent_of)[stop])   # the stop node had children and all were rejected
        detail = TreeDetail(
            tree=cfg.tree, acceptance=cfg.acceptance, root_token=committed[-1], pending_ids=list(pending),
            nodes=node_records(nodes, outcome, p, p_raw, typical), dropped=dropped,
            mask=trees.behind(1, trees.attend(paths)).int().tolist(),
            positions=[len(committed) - 1] + trees.positions(paths, len(committed) - 1),
            accepted_path=list(outcome.path), accepted_length=min(len(outcome.path), len(new)),
            stop_node=stop, final_token=outcome.final, final_kind="resampled" if resampled else "bonus",
            final_p=round(float(p[stop + 1, outcome.final]), 6),
            final_p_raw=round(float(p_raw[stop + 1, outcome.final]), 6),
            stop_top=top(p[stop + 1], 5), stop_raw_top=top(p_raw[stop + 1], 5),
            eos_cut=len(new) < len(outcome.path) + 1,
            cache_len=len(target_kv),   # the accepted path is kept above; nothing below changes the target's cache
        )
        if heads is not None:   # recorded before the heads read this verification's hidden states
            detail["heads"] = describe(heads, [outcome.final])
        if suffix is not None:
            detail["suffix_match"] = suffix.match
        if outcome.residual is not None and resampled:
            detail["residual_top"] = top(outcome.residual, 5)
        if heads is not None and new[-1] not in target.eos_ids:   # pending rows and accepted path are final
            rows = list(range(len(pending))) + [len(pending) + i for i in outcome.path[:len(new) - 1]]
            heads.observe(features[:, rows], len(committed) - len(pending), committed + new)
        tokens_fed = len(pending) + len(nodes)
        committed += new
        pending, produced = [new[-1]], produced + len(new)
        final = new[-1] in target.eos_ids or produced >= cfg.max_new_tokens
        yield Step(index, tuple(new), target_forwards=1, draft_forwards=drafting.forwards, tokens_fed=tokens_fed,
                   wall_s=clock(target.device) - start, final=final, detail=detail)
        index += 1
        if final:
            return


def until_eos(ids: list[int], eos_ids: frozenset[int]) -> list[int]:
    """The ids up to and including the first end-of-text token."""
    for i, t in enumerate(ids):
        if t in eos_ids:
            return ids[:i + 1]
    return ids


def node_records(nodes: list[Node], outcome: Outcome, p: torch.Tensor, p_raw: torch.Tensor,
                 typical: tuple[float, float] | None = None) -> list[TreeNodeRecord]:
    """Every node with its numbers and its fate: accepted, rejected (tested and refused) or not reached; under
    typical acceptance also the threshold at its parent and H(p) there."""
    parent_of = trees.parents([n.path for n in nodes])
    accepted = set(outcome.path)
    if typical:
        thresholds, entropies = typical_threshold(p, *typical).tolist(), entropy(p).tolist()
    rows = []
    for i, n in enumerate(nodes):
        row = TreeNodeRecord(
            id=i, parent=parent_of[i], token=n.token, depth=len(n.path), rank=n.path[-1],
            q=round(n.q, 6), logq=round(n.logq, 4),
            p=round(float(p[parent_of[i] + 1, n.token]), 6),
            p_raw=round(float(p_raw[parent_of[i] + 1, n.token]), 6),
            status="accepted" if i in accepted else "rejected" if outcome.tested[i] else "not_reached",
            expanded=n.row is not None)
        if outcome.u[i] is not None:
            row["u"], row["ratio"] = round(outcome.u[i], 6), round(outcome.ratio[i], 6)
        if typical:
            row["threshold"] = round(thresholds[parent_of[i] + 1], 6)
            row["entropy"] = round(entropies[parent_of[i] + 1], 6)
        rows.append(row)
    return rows
