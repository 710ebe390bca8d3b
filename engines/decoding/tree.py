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

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Iterator, Literal, NotRequired, Sequence, TypedDict

import torch

from engines.config import (
    DecodeConfig,
    acceptance_option,
    delta_option,
    epsilon_option,
    exit_layer_option,
    option,
    typical_of,
)
from engines.decoding import trees
from engines.decoding.acceptance import (
    entropy,
    typical_threshold,
)
from engines.decoding.sampling import (
    TokenProbability,
    probabilities,
    raw_probabilities,
    top,
)
from engines.decoding.step_time import time_split
from engines.decoding.stop import until_eos
from engines.decoding.tree_size import DepthAcceptance, TreeSizing, fit, next_depth
from engines.decoding.trees import ROOT, Node, Path
from engines.decoding.verify_tree import Outcome, verify_greedy, verify_one, verify_typical
from engines.drafting import registry
from engines.drafting.base import Drafter, EarlyExitRecord, HeadsRecord, RetrievalMatch, SuffixMatch
from engines.drafting.recycling import RecyclingRecord
from engines.models.adapter import KV, LM
from engines.models.devices import clock
from engines.trace import Step

AUTO = 0          # tree_budget's value for a tree sized to the machine (engines/decoding/tree_size.py)
MAX_BUDGET = 64


@dataclass(frozen=True)
class TreeConfig(DecodeConfig):
    drafter: str = option("model", "what grows the tree: " + registry.described("tree"), choices=registry.names("tree"))
    tree: str = option("dynamic", "the draft tree: 'dynamic' (EAGLE-2, grown by draft confidence) or a fixed shape",
                       choices=("dynamic",) + tuple(trees.SHAPES))
    tree_budget: int = option(16, "nodes kept for the target to verify; 0 or 'auto': the number that maximises "
                                  "expected tokens per second on this machine (measured forward times, the "
                                  "acceptance seen so far)", 0, MAX_BUDGET, label="tree budget", auto=AUTO)
    tree_depth: int = option(4, "dynamic tree: levels drafted, one draft forward each", 1, 8, label="tree depth")
    tree_topk: int = option(3, "dynamic tree: children per expanded node, and nodes expanded per level", 1, 8,
                            label="tree top-k")
    exit_layer: int = exit_layer_option()
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


class DroppedNode(TypedDict):
    """A drafted candidate the budget left out of the tree the target verified."""
    token: int                 # the token it proposed
    path: list[int]            # its rank path from the root (rank among its parent's draft choices, per level)
    parent: int | None         # the kept node it would hang from (-1: the root); null when its parent was dropped
    score: float               # its cumulative draft log-probability, EAGLE-2's confidence, that ranked it out


class TreeDetail(TypedDict):
    """A tree step: the draft tree, the one target forward over it (mask, positions), and the accepted path."""
    tree: str                               # dynamic (EAGLE-2) or the name of a fixed shape (engines/decoding/trees.py)
    acceptance: Literal["exact", "typical"]   # the verification rule: lossless, or Medusa-2's typical (lossy)
    root_token: int                         # the last committed token, the tree's root
    pending_ids: list[int]                  # tokens the forward fed before the nodes (not yet in the target's cache)
    nodes: list[TreeNodeRecord]             # every node kept, breadth-first
    dropped: int                            # drafted nodes the budget left out
    dropped_nodes: NotRequired[list[DroppedNode]]   # those nodes, most confident first (EAGLE-2's rerank, auditable)
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
    early_exit: NotRequired[EarlyExitRecord]   # the early-exit drafter: the layer it exits after, of how many
    suffix_match: NotRequired[SuffixMatch | None]   # suffix drafter: the match the tree grew from; null before any
    recycling: NotRequired[RecyclingRecord]   # Token Recycling: the table rows drafted from, and their rewrite
    retrieval_match: NotRequired[RetrievalMatch]   # retrieval drafter (REST): the datastore match the tree grew from
    sizing: NotRequired[TreeSizing]         # tree budget auto: the expected tokens and seconds it chose the size by
    residual_top: NotRequired[list[TokenProbability]]   # exact sampling, at a rejection: top 5 of the residual
    target_forward_s: NotRequired[float]   # seconds of the target's forward this step (CUDA waited for)
    drafting_s: NotRequired[float]  # seconds the drafter took this step (growing the tree, reading the verdict)
    bookkeeping_s: NotRequired[float]   # the rest of wall_s: verifying the tree, keeping the path, the record


def verify_forward(target: LM, kv: KV, pending: Sequence[int], paths: Sequence[Path], tokens: Sequence[int],
                   layers: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ONE target forward over the pending tokens and every tree node. Returns the logits of every fed row
    [pending + nodes, vocab]: row len(pending) - 1 is after the root (the last pending token), row len(pending) + i
    after node i; and, when `layers` are asked for (head drafters), the hidden states of every fed row
    [layers, pending + nodes, d]."""
    k = len(pending)
    mask = trees.behind(k, trees.attend(paths))
    depths = list(range(k)) + [k - 1 + d for d in trees.depths(paths)]
    ids = list(pending) + list(tokens)
    if not layers:
        return target.forward(kv, ids, depths=depths, attend=mask), None
    return target.forward_features(kv, ids, layers, depths=depths, attend=mask)


def tree(target: LM, draft: LM | None, prompt_ids: Sequence[int], cfg: TreeConfig, rng: torch.Generator,
         drafter: Drafter | None = None, verify_seconds: Callable[[int], float | None] | None = None
         ) -> Iterator[Step]:
    """Tree speculative decoding; one Step per draft-tree-and-verify iteration. `drafter`: one already built (a
    retrieval drafter over a datastore of the caller's choosing); by default the registry starts cfg.drafter's.
    verify_seconds(n): the measured seconds of a target forward over n tokens (None where not measured yet),
    which a tree budget of 'auto' sizes the tree by; without it an auto tree keeps the unmeasured default."""
    drafter = drafter or registry.start(cfg.drafter, target, draft, cfg)
    auto, seen, draft_depth = cfg.tree_budget == AUTO, DepthAcceptance(), cfg.tree_depth
    target_kv = target.new_kv()
    committed, pending, produced, index = list(prompt_ids), list(prompt_ids), 0, 0
    while produced < cfg.max_new_tokens:
        start = clock(target.device)   # CUDA waited for: timings measure the GPU's work
        # never draft past the budget: the deepest path plus the target's own token fill it exactly
        drafter.begin()   # a step's drafter forwards: its tree levels (heads: and the read of its verification)
        drafting = replace(cfg, tree_budget=MAX_BUDGET, tree_depth=draft_depth) if auto else cfg
        nodes, dropped = drafter.draft_tree(committed, drafting, cfg.max_new_tokens - produced - 1)
        if auto:   # the size that maximises expected tokens per second, then the drafting depth that serves it
            nodes, dropped, sizing = sized(nodes + dropped, len(pending), clock(target.device) - start,
                                           verify_seconds or (lambda n: None), seen, draft_depth)
            draft_depth = next_depth(nodes, cfg.tree_depth)
        paths, tokens = [n.path for n in nodes], [n.token for n in nodes]
        parent_of = trees.parents(paths)
        drafted_at = clock(target.device)
        fed, features = verify_forward(target, target_kv, pending, paths, tokens, drafter.layers)
        target_s = clock(target.device) - drafted_at
        logits = fed[len(pending) - 1:]   # row 0 after the root, row i + 1 after node i
        p = probabilities(logits, cfg.sampling)
        p_raw = raw_probabilities(logits)
        typical = typical_of(cfg)
        outcome = (verify_typical(parent_of, tokens, p, typical, cfg.sampling, rng) if typical
                   else verify_greedy(parent_of, tokens, p) if cfg.sampling.greedy
                   else verify_one(parent_of, tokens, p, rng))
        new = until_eos([tokens[i] for i in outcome.path] + [outcome.final], target.eos_ids)
        learning = clock(target.device)   # the drafter reads every fed row's scores (Token Recycling keeps them)
        kept = list(range(len(pending))) + [len(pending) + i for i in outcome.path]
        drafter.verified(list(pending) + tokens, fed, kept)
        learning_s = clock(target.device) - learning
        target.keep(target_kv, len(committed), outcome.path)
        stop = outcome.path[-1] if outcome.path else ROOT
        resampled = bool(trees.children(parent_of)[stop])   # the stop node had children and all were rejected
        detail = TreeDetail(
            tree=cfg.tree, acceptance=cfg.acceptance, root_token=committed[-1], pending_ids=list(pending),
            nodes=node_records(nodes, outcome, p, p_raw, typical), dropped=len(dropped),
            dropped_nodes=dropped_records(nodes, dropped),
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
        detail.update(drafter.tree_record([outcome.final]))
        if auto:
            detail["sizing"] = sizing
            seen.note(nodes, outcome.tested, outcome.path)
        if outcome.residual is not None and resampled:
            detail["residual_top"] = top(outcome.residual, 5)
        final_rows = None
        if features is not None and new[-1] not in target.eos_ids:   # pending rows and accepted path are final
            rows = list(range(len(pending))) + [len(pending) + i for i in outcome.path[:len(new) - 1]]
            final_rows = features[:, rows]
        reading = clock(target.device)
        drafter.after_tree(len(committed), [nodes[i].row for i in outcome.path if nodes[i].row is not None],
                           final_rows, len(committed) - len(pending), committed + new)
        drafting_s = drafted_at - start + learning_s + clock(target.device) - reading
        tokens_fed = len(pending) + len(nodes)
        committed += new
        pending, produced = [new[-1]], produced + len(new)
        final = new[-1] in target.eos_ids or produced >= cfg.max_new_tokens
        wall_s = clock(target.device) - start
        detail.update(time_split(wall_s, target_s, drafting_s))
        yield Step(index, tuple(new), target_forwards=1, draft_forwards=drafter.forwards, tokens_fed=tokens_fed,
                   wall_s=wall_s, final=final, detail=detail)
        index += 1
        if final:
            return


def sized(candidates: list[Node], pending: int, drafting_s: float, verify_seconds: Callable[[int], float | None],
          seen: DepthAcceptance, draft_depth: int) -> tuple[list[Node], list[Node], TreeSizing]:
    """An auto budget's tree in breadth-first order, the candidates it left out (most confident first), and why."""
    kept, sizing = fit(candidates, pending, drafting_s, verify_seconds, seen, draft_depth, MAX_BUDGET)
    kept_paths = {n.path for n in kept}
    dropped = sorted((n for n in candidates if n.path not in kept_paths), key=lambda n: (-n.logq, len(n.path), n.path))
    return sorted(kept, key=lambda n: (len(n.path), n.path)), dropped, sizing


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


def dropped_records(nodes: list[Node], dropped: list[Node]) -> list[DroppedNode]:
    """The candidates the budget left out, each with the kept node it would hang from."""
    kept = {n.path: i for i, n in enumerate(nodes)}
    return [DroppedNode(token=n.token, path=list(n.path), score=round(n.logq, 6),
                        parent=ROOT if len(n.path) == 1 else kept.get(n.path[:-1])) for n in dropped]
