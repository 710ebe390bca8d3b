"""Synthetic Step records for every method, built without a model.

Each builder writes the fields its engine really yields (engines/<method>.py: the `detail` dict
and the Step counters), with the same shapes: top-k lists of (id, probability), one entry per
drafted position or tree node, masks as 0/1 rows. Where an engine's helper is pure (tree paths
and masks, the lookahead trie, the mask-predict engine itself, whose model is duck-typed), the
builder calls it rather than imitating it, so structure and field names cannot drift apart.
tests/test_figures_properties.py checks these builders against steps of the real engines.

Randomness comes from a `random.Random` the caller seeds (hypothesis draws the seed), so a
failing example replays exactly.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict
from typing import Sequence

import torch

from engines.decoding import trees
from engines.decoding.jacobi import leading_matches
from engines.decoding.lookahead import agreement, branches
from engines.decoding.mask_predict import MaskPredictConfig, mask_predict
from engines.decoding.speculative import next_k
from engines.decoding.step_time import time_split
from engines.decoding.stop import until_eos
from engines.models.heads import fusion_layers
from engines.trace import Step, Trace

EOS = 2
MASK = 47
# Texts that have broken figures and chips before: markup, blanks, newlines, punctuation, long words.
WORDS = [" the", " old", " man", ",", ".", "\n", " ", "<b>", "&", " café", "Once", " upon", " a", " time", "!",
         "?", "-", "...", " extraordinarily", "'", '"', "\t", " sat", " went", " woman", " 1", "2", " (", ")",
         " fox", " dog", " %", "{", "}", " \\", " <|im_end|>", " über", "日本", " a b", ":", ";", "  ", "\n\n"]
TEXTS = {0: "<unk>", 1: "<s>", EOS: "<|endoftext|>", MASK: "<|mask|>",
         **{i + 3: w for i, w in enumerate(WORDS)}}
WORD_IDS = [i for i in TEXTS if i not in (0, 1, EOS, MASK)]
EOS_IDS = frozenset({EOS})
HEAD_DRAFTERS = ("heads", "hydra", "eagle")
MODEL_DRAFTERS = ("model", "early-exit")   # a model (the draft, or the target's first layers) samples the draft
MEDUSA_HEADS = 4     # Medusa and Hydra draw at most this many tokens ahead: one per head


# ----------------------------------------------------------------------------- small parts

def prob(rnd: random.Random, low: float = 1e-6, high: float = 1.0) -> float:
    return round(rnd.uniform(low, high), 6)


def tokens(rnd: random.Random, count: int, avoid: Sequence[int] = ()) -> list[int]:
    """`count` distinct word ids, none in `avoid` (top-k ranks and siblings are distinct tokens)."""
    return rnd.sample([t for t in WORD_IDS if t not in avoid], count)


def word(rnd: random.Random, avoid: Sequence[int] = ()) -> int:
    return tokens(rnd, 1, avoid)[0]


def top(rnd: random.Random, first: int | None = None, size: int = 5) -> list[tuple[int, float]]:
    """A recorded top-k: (id, probability) pairs, most probable first, `first` leading when given."""
    ids = ([first] if first is not None else []) + tokens(rnd, size - (first is not None), [first])
    values = sorted((prob(rnd, 1e-6, 1.0 / (i + 1)) for i in range(size)), reverse=True)
    return list(zip(ids, values))


def one_hot_top(token_id: int) -> list[tuple[int, float]]:
    """The recorded top-k of a one-hot distribution (greedy processing, a deterministic drafter)."""
    return [(token_id, 1.0)]


def trace_of(method: str, steps: list[Step], config: dict, prompt_ids: Sequence[int] = (10, 11, 12, 13)) -> Trace:
    return Trace(method=method, config=config, models={"target": "synthetic"}, prompt="Once upon a time",
                 prompt_ids=list(prompt_ids), steps=steps, token_texts=dict(TEXTS),
                 finished=bool(steps) and steps[-1].final)


def sampling_config(greedy: bool, max_new_tokens: int) -> dict:
    return {"max_new_tokens": max_new_tokens, "temperature": 0.0 if greedy else 0.8, "top_k": 0, "top_p": 1.0,
            "seed": 0}


# ----------------------------------------------------------------------------- the time split

def timed(rnd: random.Random, wall_s: float, drafting: bool = True) -> dict:
    """A step's time split as engines/decoding/step_time.py records it: parts that add up to wall_s."""
    target = wall_s * rnd.uniform(0.3, 0.9)
    drafted = (wall_s - target) * rnd.uniform(0, 0.8) if drafting else None
    return time_split(wall_s, target, drafted)


# ----------------------------------------------------------------------------- autoregressive

def autoregressive_step(rnd: random.Random, index: int, *, greedy: bool, final: bool, fed: int = 1) -> Step:
    chosen = EOS if final and rnd.random() < 0.5 else word(rnd)
    raw = top(rnd, chosen if rnd.random() < 0.8 else None, 10)
    processed = one_hot_top(chosen) if greedy else top(rnd, chosen, rnd.randint(1, 10))
    wall_s = rnd.uniform(0, 0.2)
    return Step(index, (chosen,), target_forwards=1, tokens_fed=fed, wall_s=wall_s, final=final,
                detail={"chosen": chosen, "p_chosen": dict(processed)[chosen], "raw_p_chosen": prob(rnd),
                        "top": processed, "raw_top": raw, "cache_len": 4 + index, **timed(rnd, wall_s, False)})


# ----------------------------------------------------------------------------- speculative

def draft_position(rnd: random.Random, token_id: int, status: str, *, greedy: bool, drafter: str) -> dict:
    """One drafted position as speculative.record writes it. Greedy: p and q are one-hot (processed), no u;
    sampling: u in (0, 1] against min(1, p/q), consistent with the status. The ngram drafter's q is one-hot
    and it has no raw q."""
    model = drafter in MODEL_DRAFTERS
    own_q = drafter != "ngram"     # the draft model's and the heads' own distributions are recorded as q_raw
    argmax = token_id if status == "accepted" else word(rnd, [token_id]) if status == "rejected" else word(rnd)
    if greedy:
        p, q, ratio, u = (1.0 if argmax == token_id else 0.0), 1.0, None, None
        p_top, q_top = one_hot_top(argmax), one_hot_top(token_id)
    else:
        q = prob(rnd, 0.01) if model else 1.0
        p = prob(rnd, 1e-6, q * 0.99) if status == "rejected" else prob(rnd)
        ratio = round(min(1.0, p / q), 6)
        u = (prob(rnd, 1e-6, ratio) if status == "accepted" else
             prob(rnd, min(ratio + 1e-6, 1.0)) if status == "rejected" else prob(rnd))
        p_top = top(rnd, argmax if rnd.random() < 0.7 else None, rnd.randint(1, 5))
        q_top = top(rnd, token_id, 5) if model else one_hot_top(token_id)
    return {"token": token_id, "status": status, "p": p, "q": q, "ratio": ratio, "u": u,
            "p_raw": prob(rnd), "q_raw": prob(rnd) if own_q else None, "target_token": argmax,
            "p_top": p_top, "q_top": q_top, "p_raw_top": top(rnd, None, 5),
            "q_raw_top": top(rnd, token_id, 5) if own_q else None}


def speculative_step(rnd: random.Random, index: int, *, k: int, drafted: int, accepted: int, greedy: bool,
                     drafter: str, end: str = "none", schedule: str = "constant", produced: int = 0,
                     max_new_tokens: int = 64, prompt_len: int = 4, verification: str = "token") -> Step:
    """One draft-and-verify iteration. drafted <= k tokens were proposed (0: nothing left in the budget, or
    prompt lookup found no match), the first `accepted` kept. end: "none"; "eos_next", the token after the
    draft is end-of-text; "eos_draft", the last drafted token is end-of-text (drafting stops after one),
    which ends the text with no bonus when it is accepted."""
    draft = tokens(rnd, drafted, [EOS])
    if end == "eos_draft" and drafted:
        draft[-1] = EOS
    statuses = ["accepted"] * accepted + ["rejected"] * (accepted < drafted) + \
        ["not_reached"] * max(0, drafted - accepted - 1)
    positions = [draft_position(rnd, t, s, greedy=greedy, drafter=drafter) for t, s in zip(draft, statuses)]
    committed = draft[:accepted]
    ended = bool(committed) and committed[-1] == EOS
    detail = {"draft_tokens": draft, "accepted": accepted, "positions": positions,
              "bonus_p_top": one_hot_top(word(rnd)) if greedy else top(rnd, None, rnd.randint(1, 5)),
              "bonus_p_raw_top": top(rnd, None, 5), "lookup": None,
              "next_token": None, "next_kind": None, "next_p": None, "next_top": None}
    detail["heads"] = heads_record(rnd, drafter, drafted + 1)   # the target's argmax at each position
    if drafter == "early-exit":
        detail["early_exit"] = early_exit_record(rnd)
    if drafter == "ngram" and drafted:
        ngram = tokens(rnd, rnd.randint(1, 3))
        detail["lookup"] = {"ngram_tokens": ngram, "match_at": rnd.randint(0, 30), "n": len(ngram)}
    if not ended:
        after = EOS if end == "eos_next" else word(rnd, draft[accepted:accepted + 1])
        if greedy and accepted < drafted:   # greedy: the token after a rejection is the target's argmax there
            positions[accepted].update(target_token=after, p_top=one_hot_top(after))
        committed = committed + [after]
        ended = after == EOS
        detail.update({"next_token": after, "next_kind": "bonus" if accepted == drafted else "resampled",
                       "next_p": 1.0 if greedy else prob(rnd),
                       "next_top": one_hot_top(after) if greedy else top(rnd, after, rnd.randint(1, 5)),
                       "next_raw_p": prob(rnd)})
    cached = prompt_len - 1 + produced
    if verification == "block":
        detail["block"] = block_record(rnd, positions, accepted, greedy)
    detail.update({"drafter": drafter, "acceptance": "exact", "verification": verification, "k": k, "k_next": next_k(k, accepted, drafted, schedule),
                   "schedule": schedule, "ended": ended,
                   "target_cache": [cached, cached + 1 + drafted, cached + accepted + 1],
                   "draft_cache": ([cached, cached + drafted, cached + min(drafted, accepted + 1)]
                                   if drafter in MODEL_DRAFTERS else None)})
    final = ended or produced + len(committed) >= max_new_tokens
    wall_s = rnd.uniform(0, 0.3)
    detail.update(timed(rnd, wall_s))
    return Step(index, tuple(committed), target_forwards=1, draft_forwards=draft_forwards(drafter, drafted),
                tokens_fed=(prompt_len if index == 0 else 1) + drafted, wall_s=wall_s, final=final,
                detail=detail)


def block_record(rnd: random.Random, positions: list[dict], accepted: int, greedy: bool) -> dict:
    """detail["block"] as speculative.block_record writes it, the positions' u redrawn to fit the block decision
    (the last coin under its stop chance is at `accepted`, every later one above its own); greedy: weights 1 on the
    kept prefix and 0 after, no coins."""
    m = len(positions)
    if greedy:
        weights = [1.0] * accepted + [0.0] * (m - accepted)
        mass = [prob(rnd) if i == accepted else 0.0 for i in range(m)]
        chances = [1.0 if i + 1 == accepted else 0.0 for i in range(m - 1)] + weights[-1:]
        return {"weights": weights, "residual_mass": mass, "stop_chances": chances,
                "passed": [h >= 1 for h in chances], "accepted": accepted, "token_accepted": accepted}
    weights, w = [], 1.0
    for _ in range(m):
        w = round(w * rnd.uniform(0.2, 1.0), 6)
        weights.append(w)
    chances = [prob(rnd, 0.01, 0.95) for _ in range(m - 1)] + weights[-1:]
    for i, pos in enumerate(positions):
        if i + 1 == accepted:
            pos["u"] = prob(rnd, 1e-6, chances[i])
        elif i >= accepted:
            pos["u"] = prob(rnd, min(chances[i] + 1e-6, 1.0))
    passed = [pos["u"] <= h for pos, h in zip(positions, chances)]
    token = next((i for i, pos in enumerate(positions) if pos["u"] > pos["ratio"]), m)
    return {"weights": weights, "residual_mass": [prob(rnd, 0.0, 1.0) for _ in range(m)], "stop_chances": chances,
            "passed": passed, "accepted": accepted, "token_accepted": token}


def heads_record(rnd: random.Random, drafter: str, count: int) -> dict | None:
    """detail["heads"] as engines/drafters.describe writes it, for `count` target tokens (whether the draft
    vocabulary holds each); None for a drafter that is not a head."""
    if drafter not in HEAD_DRAFTERS:
        return None
    layers = rnd.randint(1, 32)
    return {"kind": {"heads": "medusa", "hydra": "hydra"}.get(drafter, "eagle"), "trained_on": "synthetic",
            "layers": [layers] if drafter != "eagle" else list(fusion_layers(layers)), "target_layers": layers,
            "draft_vocab": rnd.randint(1, 49152), "target_in_vocab": [rnd.random() < 0.8 for _ in range(count)]}


def early_exit_record(rnd: random.Random) -> dict:
    """detail["early_exit"] as engines/drafting/early_exit.py writes it: the exit layer, of how many."""
    layers = rnd.randint(2, 48)
    return {"exit_layer": rnd.randint(1, layers - 1), "target_layers": layers}


def draft_forwards(drafter: str, drafted: int) -> int:
    """Drafting's forwards in a chain: the draft model one per token; Medusa one head forward for all (when the
    heads read the last verification); EAGLE and Hydra that one and one more per token after the first; lookup
    none."""
    if drafter in ("model", "eagle", "hydra", "early-exit"):
        return drafted
    return int(drafter == "heads" and drafted > 0)


def speculative_config(*, k: int, greedy: bool, drafter: str, schedule: str, max_new_tokens: int) -> dict:
    return {**sampling_config(greedy, max_new_tokens), "k": k, "drafter": drafter, "schedule": schedule,
            "lookup_ngram": 3}


# ----------------------------------------------------------------------------- tree

def dynamic_paths(rnd: random.Random, depth: int, topk: int, budget: int) -> tuple[list, dict, set, int]:
    """EAGLE-2's tree as engines/drafting/growth.py grows it: each level expands the top-k children of the top-k most
    confident nodes of the level before; then the `budget` most confident nodes are kept. Returns the kept
    paths (breadth-first), each path's draft q and cumulative log q, the expanded paths, and the candidates the
    budget dropped with their cumulative log q."""
    q: dict = {}
    logq: dict = {(): 0.0}

    def children(parent: tuple) -> list[tuple]:
        values = sorted((prob(rnd, 1e-4) for _ in range(topk)), reverse=True)
        out = [parent + (r,) for r in range(topk)]
        for path, v in zip(out, values):
            q[path], logq[path] = v, logq[parent] + math.log(v)
        return out

    level, expanded = children(()), set()
    drafted = list(level)
    for _ in range(depth - 1):
        frontier = sorted(level, key=lambda p: -logq[p])[:topk]
        expanded |= set(frontier)
        level = [c for p in frontier for c in children(p)]
        drafted += level
    kept = sorted(drafted, key=lambda p: (-logq[p], len(p)))[:budget]
    left_out = sorted((p for p in drafted if p not in kept), key=lambda p: (-logq[p], len(p), p))
    return sorted(kept, key=lambda p: (len(p), p)), {p: (q[p], logq[p]) for p in kept}, expanded, \
        [(p, logq[p]) for p in left_out]


def static_paths(rnd: random.Random, shape: str, depth: int) -> tuple[list, dict, set, int]:
    paths = trees.ordered([p for p in trees.SHAPES[shape] if len(p) <= depth])
    q = {p: prob(rnd, 1e-4) for p in paths}
    logq = {}
    for p in paths:
        logq[p] = logq.get(p[:-1], 0.0) + math.log(q[p])
    return paths, {p: (q[p], logq[p]) for p in paths}, {p[:-1] for p in paths if len(p) > 1}, 0


def tree_outcome(rnd: random.Random, parent_of: list[int], node_tokens: list[int], greedy: bool,
                 stop_chance: float) -> tuple[list[int], list[bool], dict[int, tuple[float, float]]]:
    """Verification as engines/decoding/tree.py records it: the accepted path, which nodes were tested, and the
    (u, ratio) of each tested node under sampling. Greedy tests every child of an accepted node; sampling
    tries children in rank order until one is accepted (recursive rejection)."""
    kids = trees.children(parent_of)
    path, tested, draws, node = [], [False] * len(node_tokens), {}, trees.ROOT
    while kids[node]:
        take = None if rnd.random() < stop_chance else rnd.choice(kids[node])
        for child in kids[node]:
            if not greedy and take is not None and child > take:
                break        # tried in rank order: siblings after the accepted one are never tested
            tested[child] = True
            if not greedy:
                ratio = prob(rnd, 1e-4, 0.999)
                draws[child] = (prob(rnd, 1e-6, ratio) if child == take else prob(rnd, ratio + 1e-6, 1.0), ratio)
        if take is None:
            break
        path.append(take)
        node = take
    return path, tested, draws


def tree_step(rnd: random.Random, index: int, *, shape: str, budget: int, depth: int, topk: int, room: int,
              greedy: bool, stop_chance: float = 0.3, eos: str = "none", committed_len: int = 4,
              produced: int = 0, max_new_tokens: int = 64, drafter: str = "model") -> Step:
    """One tree iteration. `room` is the depth the token budget leaves (max new tokens - produced - 1;
    0: no tree). eos: "none", "path" (an accepted node is end-of-text), "final" (the target's token is).
    Heads draft nothing before the first verification; Medusa's tree is at most one level per head, and its
    level is one head's ranks: the same token and q at a rank whatever the parent."""
    if drafter in HEAD_DRAFTERS and index == 0:
        room = 0
    if drafter in ("heads", "hydra"):
        room = min(room, MEDUSA_HEADS)
    if room < 1:
        paths, qs, expanded, dropped = [], {}, set(), []
    elif shape == "dynamic":   # an auto budget (0) keeps some number of the drafted nodes, none to all of them
        paths, qs, expanded, dropped = dynamic_paths(rnd, min(room, depth), topk, budget or rnd.randint(0, 64))
    else:
        paths, qs, expanded, dropped = static_paths(rnd, shape, room)
    parent_of = trees.parents(paths)
    kids = trees.children(parent_of)
    node_tokens = [0] * len(paths)
    for parent, children in kids.items():
        for child, t in zip(children, tokens(rnd, len(children), [EOS])):
            node_tokens[child] = t
    if drafter == "heads":
        node_tokens, qs = medusa_levels(rnd, paths)
    path, tested, draws = tree_outcome(rnd, parent_of, node_tokens, greedy, stop_chance)
    if eos == "path" and path:
        node_tokens[rnd.choice(path)] = EOS   # siblings hold no EOS, so they stay distinct
    stop = path[-1] if path else trees.ROOT
    resampled = bool(kids[stop])
    final = EOS if eos == "final" else word(rnd, [node_tokens[c] for c in kids[stop]])
    new = until_eos([node_tokens[i] for i in path] + [final], EOS_IDS)
    nodes = []
    for i, p in enumerate(paths):
        row = {"id": i, "parent": parent_of[i], "token": node_tokens[i], "depth": len(p), "rank": p[-1],
               "q": round(qs[p][0], 6), "logq": round(qs[p][1], 4), "p": prob(rnd, 0.0), "p_raw": prob(rnd, 0.0),
               "status": "accepted" if i in path else "rejected" if tested[i] else "not_reached",
               "expanded": p in expanded}
        if i in draws:
            row["u"], row["ratio"] = round(draws[i][0], 6), round(draws[i][1], 6)
        nodes.append(row)
    root_position = committed_len - 1
    pending = list(range(10, 10 + committed_len)) if index == 0 else [word(rnd)]
    detail = {
        "tree": shape, "acceptance": "exact", "root_token": pending[-1], "pending_ids": pending, "nodes": nodes,
        "dropped": len(dropped) if isinstance(dropped, list) else dropped,
        "mask": trees.behind(1, trees.attend(paths)).int().tolist(),
        "positions": [root_position] + trees.positions(paths, root_position),
        "accepted_path": path, "accepted_length": min(len(path), len(new)), "stop_node": stop,
        "final_token": final, "final_kind": "resampled" if resampled else "bonus",
        "final_p": prob(rnd), "final_p_raw": prob(rnd),
        "stop_top": one_hot_top(final) if greedy else top(rnd, final, 5), "stop_raw_top": top(rnd, None, 5),
        "eos_cut": len(new) < len(path) + 1,
    }
    if isinstance(dropped, list) and shape == "dynamic":   # EAGLE-2 records what its budget left out
        kept = {p: i for i, p in enumerate(paths)}
        detail["dropped_nodes"] = [{"token": word(rnd), "path": list(p), "score": round(score, 6),
                                    "parent": -1 if len(p) == 1 else kept.get(p[:-1])} for p, score in dropped]
    if budget == 0:
        detail["sizing"] = sizing_record(rnd, len(paths), len(paths) + detail["dropped"], depth)
    if drafter in HEAD_DRAFTERS:
        detail["heads"] = heads_record(rnd, drafter, 1)     # the target's own token after the path
    if drafter == "early-exit":
        detail["early_exit"] = early_exit_record(rnd)
    if drafter == "recycling":
        detail["recycling"] = recycling_record(rnd, pending[-1], nodes)
    if not greedy and resampled:
        detail["residual_top"] = top(rnd, final, rnd.randint(1, 5))
    detail["cache_len"] = committed_len + len(new) - 1
    # Medusa reads every level off the one head forward made at the last verification
    levels = 1 if drafter == "heads" else 1 + len({len(p) for p in expanded})
    final_step = new[-1] == EOS or produced + len(new) >= max_new_tokens
    wall_s = rnd.uniform(0, 0.5)
    detail.update(timed(rnd, wall_s))
    return Step(index, tuple(new), target_forwards=1, draft_forwards=levels if paths else 0,
                tokens_fed=len(pending) + len(paths), wall_s=wall_s, final=final_step, detail=detail)


def sizing_record(rnd: random.Random, budget: int, candidates: int, depth: int) -> dict:
    """An auto budget's record: expected tokens rising by less each node, seconds rising by a measured slope (or
    nothing measured yet)."""
    expected, gains = [1.0], sorted((prob(rnd, 1e-4) for _ in range(candidates)), reverse=True)
    for g in gains:
        expected.append(round(expected[-1] + g, 4))
    measured = rnd.random() < 0.8
    drafting, one, slope = rnd.uniform(0, 0.05), rnd.uniform(0.01, 0.2), rnd.uniform(0, 0.01)
    seconds = [round(drafting + one + slope * n, 6) for n in range(candidates + 1)] if measured else []
    return {"budget": budget, "candidates": candidates, "draft_depth": depth, "measured": measured,
            "drafting_s": round(drafting, 6), "expected_tokens": expected, "seconds": seconds,
            "depth_ratio": [round(rnd.uniform(0.2, 3), 4) for _ in range(depth)]}


def recycling_record(rnd: random.Random, root: int, nodes: list[dict], k: int = 8) -> dict:
    """detail["recycling"] as engines/drafting/recycling.py writes it for this tree: a row read for the root and
    for every node with children (breadth-first, each token once), holding each child at its rank, the rest of
    the row distinct other tokens; after the verification some rows keep their order, some shuffle, some take new
    tokens."""
    parents = [root] + [n["token"] for n in nodes]
    children: dict[int, dict[int, int]] = {}
    for n in nodes:
        children.setdefault(parents[n["parent"] + 1], {})[n["rank"]] = n["token"]
    used = []
    for t in dict.fromkeys(t for t in parents if t in children):
        fixed = children[t]
        rest = iter(tokens(rnd, k, list(fixed.values())))
        before = [fixed[r] if r in fixed else next(rest) for r in range(k)]
        after = {0: before, 1: rnd.sample(before, k), 2: before[:k // 2] + tokens(rnd, k - k // 2, before)}[
            rnd.randrange(3)]
        used.append({"token": t, "before": before, "after": list(after)})
    return {"k": k, "template": len(nodes) + rnd.randint(0, 8), "rows_known": len(used) + rnd.randint(0, 60),
            "rows_read": len(used), "used": used[:16], "written": len(nodes) + 1,
            "recycled": rnd.randint(0, len(nodes)), "new": rnd.randint(0, len(nodes) + 1),
            "changed": sum(row["after"] != row["before"] for row in used)}


def medusa_levels(rnd: random.Random, paths: list) -> tuple[list[int], dict]:
    """Node tokens and (q, cumulative log q) for a Medusa tree: head d's ranks give depth d's tokens."""
    ranks = {}
    for p in paths:
        ranks[len(p)] = max(ranks.get(len(p), 0), p[-1] + 1)
    table = {d: list(zip(tokens(rnd, n, [EOS]), sorted((prob(rnd, 1e-4) for _ in range(n)), reverse=True)))
             for d, n in ranks.items()}
    qs: dict = {}
    for p in paths:
        q = table[len(p)][p[-1]][1]
        qs[p] = (q, (qs[p[:-1]][1] if len(p) > 1 else 0.0) + math.log(q))
    return [table[len(p)][p[-1]][0] for p in paths], qs


def tree_config(*, shape: str, budget: int, depth: int, topk: int, greedy: bool, max_new_tokens: int,
                drafter: str = "model") -> dict:
    return {**sampling_config(greedy, max_new_tokens), "drafter": drafter, "tree": shape, "tree_budget": budget,
            "tree_depth": depth, "tree_topk": topk}


# ----------------------------------------------------------------------------- jacobi

def jacobi_step(rnd: random.Random, index: int, *, block: int, settled: int, produced: int, max_new_tokens: int,
                eos: bool = False, prompt_len: int = 4) -> Step:
    """One Jacobi iteration over min(block, budget - 1) guesses whose first `settled` the target reproduced;
    with `eos`, the target's output holds an end-of-text token inside the committed prefix."""
    budget = max_new_tokens - produced
    guesses = [word(rnd) for _ in range(min(block, budget - 1))]
    settled = min(settled, len(guesses))
    new = []
    for i in range(len(guesses) + 1):   # the target's argmax at every guess, and one past the block
        guess = guesses[i] if i < len(guesses) else None
        new.append(guess if i < settled or (i > settled and guess is not None and rnd.random() < 0.4)
                   else word(rnd, [guess] if guess is not None else []))
    if eos:
        new[rnd.randint(0, settled)] = EOS
    settled = leading_matches(guesses, new)
    committed = until_eos(new[:min(settled + 1, budget)], EOS_IDS)
    rest = new[len(committed):]
    fresh = [rest[-1] if rest else committed[-1]] * max(0, block - len(rest))   # the 'repeat' guess
    final = committed[-1] == EOS or produced + len(committed) >= max_new_tokens
    return Step(index, tuple(committed), target_forwards=1, tokens_fed=(prompt_len if index == 0 else 1) + len(guesses),
                wall_s=rnd.uniform(0, 0.3), final=final, detail={
                    "block_start": produced, "block_before_ids": guesses, "block_after_ids": new[:len(guesses)],
                    "beyond_token": new[len(guesses)], "p_new": [prob(rnd) for _ in new],
                    "changed": [i for i, (a, b) in enumerate(zip(guesses, new)) if a != b],
                    "fixed": [i for i, (a, b) in enumerate(zip(guesses, new)) if a == b],
                    "settled": settled, "fresh_ids": fresh,
                    "cache_len": prompt_len + produced + len(committed) - 1})


def jacobi_config(*, block: int, max_new_tokens: int) -> dict:
    return {**sampling_config(True, max_new_tokens), "block": block, "init": "repeat"}


# ----------------------------------------------------------------------------- lookahead

def lookahead_step(rnd: random.Random, index: int, *, window: int, ngram: int, guesses: int, levels: int,
                   candidates: int, match: int, greedy: bool, pooled_keys: int, eos: bool = False,
                   produced: int = 0, max_new_tokens: int = 64, prompt: Sequence[int] = (10, 11, 12, 13)) -> Step:
    """One lookahead forward: a window of `levels` (1 .. N-1) levels x W columns, `candidates` (<= G) pooled
    n-grams under the last token; `match` tokens of one candidate accepted (0: none matched); a pool
    snapshot under `pooled_keys` first tokens."""
    levels = max(1, min(levels, ngram - 1))
    full = guesses > 0 and levels == ngram - 1
    candidates = min(candidates, guesses) if full else 0   # the pool only fills once the window is full
    pending = list(prompt) if index == 0 else [word(rnd)]
    last = pending[-1]
    window = [[word(rnd) for _ in range(window)] for _ in range(levels)]
    window[0][0] = last
    tails: list[list[int]] = []
    while len(tails) < candidates:
        tail = [word(rnd) for _ in range(ngram - 1)]
        if tail not in tails:
            tails.append(tail)
    b = branches(pending, window, tails)
    root = len(pending) - 1
    chosen = rnd.randrange(len(tails)) if tails and match else -1
    prefix = tails[chosen][:min(match, ngram - 1)] if chosen >= 0 else []
    # the target's own token differs from every pooled continuation of the accepted prefix
    followers = [t[len(prefix)] for t in tails if t[:len(prefix)] == prefix and len(t) > len(prefix)]
    committed = prefix + [EOS if eos else word(rnd, followers)]
    committed = until_eos(committed[:max_new_tokens - produced], EOS_IDS)
    accepted = next((g for g, t in enumerate(tails) if prefix and t[:len(prefix)] == prefix), -1)
    draws = []
    if not greedy:
        for depth, token_id in enumerate(committed[:len(prefix)]):
            draws.append({"depth": depth, "child_token": token_id, "u": prob(rnd, 1e-6, 0.5), "p_child": prob(rnd, 0.5),
                          "accepted": True})
        if followers:
            draws.append({"depth": len(prefix), "child_token": followers[0], "u": prob(rnd, 0.5), "p_child":
                          prob(rnd, 1e-6, 0.5), "accepted": False})
    new_level = [word(rnd) for _ in range(len(window[0]))]
    harvested = [[level[i] for level in window] + [t] for i, t in enumerate(new_level)] if full else []
    pool = pool_snapshot(rnd, last, tails, pooled_keys if full else 0, guesses, ngram)
    final = committed[-1] == EOS or produced + len(committed) >= max_new_tokens
    return Step(index, tuple(committed), target_forwards=1, tokens_fed=len(b.ids), wall_s=rnd.uniform(0, 0.3),
                final=final, detail={
                    "input_token": last, "window": window, "new_level_ids": new_level, "fed_ids": b.ids[root:],
                    "parents": [p - root if p >= root else -1 for p in b.parents[root:]],
                    "candidates": tails, "matched": [agreement(c, committed) for c in tails],
                    "accepted": accepted, "accepted_len": len(committed) - 1, "draws": draws,
                    "p_committed": [prob(rnd) for _ in committed], "raw_p_committed": [prob(rnd) for _ in committed],
                    "harvested": harvested, "added": [rnd.random() < 0.6 for _ in harvested],
                    "pool": pool, "pool_size": sum(len(t) for _, t in pool) + rnd.randint(0, 5) * bool(pool),
                    "pool_keys": len(pool) + rnd.randint(0, 3) * bool(pool), "warming_up": levels < ngram - 1,
                    "shift": len(committed) - (levels == ngram - 1), "cache_len": len(prompt) + produced})


def pool_snapshot(rnd: random.Random, last: int, tails: list[list[int]], keys: int, capacity: int,
                  ngram: int) -> list:
    """The recorded pool: [first token, [continuations]] for the last token (its candidates) first, then other
    first tokens, each with at most G continuations of N - 1 tokens."""
    pool = [[last, [list(t) for t in tails]]] if tails else []
    for key in tokens(rnd, max(0, min(keys, 12) - len(pool)), [last]):
        pool.append([key, [[word(rnd) for _ in range(ngram - 1)] for _ in range(rnd.randint(1, capacity))]])
    return pool


def lookahead_config(*, window: int, ngram: int, guesses: int, greedy: bool, max_new_tokens: int) -> dict:
    return {**sampling_config(greedy, max_new_tokens), "window": window, "ngram": ngram, "guesses": guesses}


# ----------------------------------------------------------------------------- mask-predict

class StubMaskedLM:
    """What engines/mask_predict.py asks of a model (mask_id, eos_ids, masked_logits_rows), with seeded
    random logits: the real engine then writes every field of its steps. eos_pull raises end-of-text's logit
    towards the end of each row, as a diffusion LM trained on padded text does (a large pull floods the span)."""
    mask_id, eos_ids = MASK, EOS_IDS

    def __init__(self, seed: int, sharpness: float, steady: bool = False, eos_pull: float = 0.0):
        self.seed, self.generator = seed, torch.Generator().manual_seed(seed)
        self.sharpness, self.steady = sharpness, steady   # steady: the same logits every forward
        self.eos_pull = eos_pull

    def masked_logits_rows(self, rows: list[list[int]]) -> list[torch.Tensor]:
        vocab = max(TEXTS) + 1
        if self.steady:
            self.generator.manual_seed(self.seed)
        out = []
        for row in rows:
            logits = torch.randn(len(row), vocab, generator=self.generator) * self.sharpness
            out.append(finish(logits, self.eos_pull))
        return out


def finish(logits: torch.Tensor, eos_pull: float) -> torch.Tensor:
    """Never the mask or a special token; end-of-text pulled up along the row by up to eos_pull."""
    logits[:, [0, 1, MASK]] = -1e9
    logits[:, EOS] += eos_pull * torch.arange(len(logits)) / max(1, len(logits) - 1)
    return logits


class StubCachedLM:
    """A stub with a key-value cache (what the cached prefix asks: new_kv, masked_logits_cached, cacheable,
    crop, bidirectional). Position j's value mixes its token and position with the text it was computed on:
    the whole row when bidirectional, the row up to j when not; its logits read the values it may see. A
    cached value computed on an older row is then stale in the bidirectional stub only, so there the cached
    logits drift from the exact ones (and decisions may change), while the causal stub's cache is exact."""
    mask_id, eos_ids, can_cache = MASK, EOS_IDS, True
    WIDTH, ROWS = 8, 512

    def __init__(self, seed: int, sharpness: float, bidirectional: bool = True, eos_pull: float = 0.0):
        g = torch.Generator().manual_seed(seed)
        vocab = max(TEXTS) + 1
        self.embed = torch.randn(vocab, self.WIDTH, generator=g)
        self.position = torch.randn(self.ROWS, self.WIDTH, generator=g)
        self.out = torch.randn(self.WIDTH, vocab, generator=g) * sharpness / 3
        self.bidirectional, self.eos_pull = bidirectional, eos_pull

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """What each position sees of x: the mean of every row when bidirectional, of the rows up to it if not."""
        if self.bidirectional:
            return x.mean(0).expand_as(x)
        return x.cumsum(0) / torch.arange(1, len(x) + 1)[:, None]

    def values(self, row: Sequence[int], start: int = 0) -> torch.Tensor:
        """The values of row[start:], computed on this row."""
        e = self.embed[torch.tensor(list(row))]
        return (e + self.position[:len(row)] + self.context(e))[start:]

    def logits(self, values: torch.Tensor) -> torch.Tensor:
        return finish((values + self.context(values)) @ self.out, self.eos_pull)

    def masked_logits_rows(self, rows: list[list[int]]) -> list[torch.Tensor]:
        return [self.logits(self.values(row)) for row in rows]

    def new_kv(self) -> list:
        return []

    def cacheable(self, start: int) -> int:
        return max(0, start - 1)      # as the adapted diffusion LM: the position before `start` is fed again

    def crop(self, kv: list, n: int) -> None:
        del kv[n:]

    def masked_logits_cached(self, kv: list, row: list[int], start: int) -> torch.Tensor:
        kv.extend(self.values(row, len(kv)))
        return self.logits(torch.stack(kv))[start:]


def mask_predict_steps(seed: int, settings: dict, sharpness: float = 3.0, steady: bool = False,
                       prompt: Sequence[int] = (10, 11, 12, 13), bidirectional: bool = True,
                       eos_pull: float = 0.0) -> tuple[list[Step], dict]:
    """Every step of a mask-predict run on a stub model, and the trace config the UI would record. With
    cache "prefix" the stub keeps a cache (bidirectional: stale entries and a drift to audit)."""
    cfg = MaskPredictConfig(**settings)
    model = (StubCachedLM(seed, sharpness, bidirectional, eos_pull) if cfg.cache == "prefix"
             else StubMaskedLM(seed, sharpness, steady, eos_pull))
    steps = list(mask_predict(model, prompt, cfg, torch.Generator().manual_seed(seed)))
    return steps, {**asdict(cfg), "seed": seed}


# ----------------------------------------------------------------------------- the cost model's calibration

def calibration(rnd: random.Random, c: float | None = None) -> dict:
    """A calibration as engines.cost.measure records it (Trace.cost): c over its plausible range (a draft
    costlier than the target included) unless given, T(n) from 1 up, as measured (not always monotonic)."""
    from engines.analysis.theory import VERIFY_N
    target_s = rnd.uniform(1e-4, 0.5)
    c = rnd.choice([0.02, 0.3, 1.0, 1.4, rnd.uniform(0.01, 1.5)]) if c is None else c
    costs = [1.0]
    for _ in VERIFY_N[1:]:
        costs.append(max(0.5, costs[-1] + rnd.uniform(-0.2, 1.5)))
    return {"target_forward_s": target_s, "draft_forward_s": c * target_s, "c": c, "verify_n": list(VERIFY_N),
            "verify_cost": costs, "measured_at": "2026-01-01T00:00:00Z"}
