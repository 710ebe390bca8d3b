"""The sampling check: is the token a speculative or tree step emits at one position distributed as p?

One recorded position is resampled many times (seeded, vectorised) under a verification rule, and the
histogram of the emitted token is compared with the target's p by total variation distance. The exact rules
land within the noise floor, the TV that an exact sampler shows at that number of draws (measured by
sampling p itself N times, seeded); the rules people break land well above it.

The step records hold top-5 lists, not whole distributions, so the check recomputes p and q: one target
forward (and one draft forward) over the recorded prefix of that position, not a decode. With the same
model, device and settings they are the distributions the engine used (the recorded p(x) is compared).

Rules (p = target, q = draft, both after the same temperature / top-k / top-p):
  exact            speculative with the draft model: x ~ q, keep when u <= min(1, p(x)/q(x)), else draw from
                   norm(max(0, p - q)); a deterministic drafter (prompt lookup, heads, tree children): each
                   proposed token in turn with one-hot q, the residual updated after each refusal (SpecInfer)
  greedy_draft     the draft proposes argmax q but reports its sampled q in the ratio and the residual
  resample_from_p  at a rejection draw from p itself instead of the residual
  soft_q_topk      deterministic top-k children (the draft's top 3, or the tree's children) verified with the
                   draft's soft q instead of one-hot
  typical          Medusa-2's typical acceptance: keep the first proposal with p(x) > min(eps, delta e^-H(p)),
                   else draw from p (lossy by design)

Block verification (Sun et al. 2024) decides x_1 from the whole block, so one position cannot check it: it is
checked on a toy Markov chain whose every distribution is known (chain_check, below), over whole decoded texts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch

from engines.decoding.acceptance import (
    block_accept,
    block_correction,
    block_residual_mass,
    block_stop_chances,
    block_weights,
    correction,
    one_hot,
    pick,
    ratio,
    residual,
    speculative_accept,
    typical_threshold,
)
from engines.decoding.sampling import Sampling, probabilities
from engines.models.adapter import LM
from engines.trace import Trace

DRAWS = 20_000
MAX_DRAWS = 200_000
NOISE_REPEATS = 20       # runs of N draws from p whose mean TV is the noise floor
WITHIN = 2.0             # a TV up to this many noise floors is "within the noise"
SOFT_CHILDREN = 3        # soft_q_topk on a chain: the draft's top 3 as children
SHOWN = 16               # tokens in the histogram


@dataclass
class Position:
    """The full distributions at one recorded position, recomputed, and what was proposed there."""
    p: torch.Tensor                  # [V] the target's processed distribution
    q: torch.Tensor | None           # [V] the draft model's processed distribution (None: no draft model)
    proposed: list[int]              # the drafted token (chain) or the node's children in rank order (tree)
    sampled_draft: bool              # the chain's token was sampled from q (the model drafter)
    typical: tuple[float, float]     # (epsilon, delta) for the typical rule


def need_q(pos: Position, rule: str) -> torch.Tensor:
    if pos.q is None:
        raise ValueError(f"The rule '{rule}' needs the draft model's q, and this position was drafted without "
                         f"one; choose exact, resample_from_p or typical.")
    return pos.q


def draws_from(dist: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.multinomial(dist.double().cpu(), n, replacement=True, generator=gen)


def uniforms(n: int, gen: torch.Generator, columns: int = 1) -> torch.Tensor:
    return 1.0 - torch.rand(n, columns, generator=gen, dtype=torch.float64)   # in (0, 1], as the engines draw


def one_draft(p: torch.Tensor, q: torch.Tensor, fallback: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """x ~ q, kept when u <= min(1, p(x)/q(x)), else a draw from `fallback`. Memory O(n + V)."""
    x = draws_from(q, n, gen)
    p, q = p.double().cpu(), q.double().cpu()
    # each draw's own p(x) and q(x) as one-entry distributions: min(1, p/q) without an [n, V] tensor
    chance = ratio(p[x].unsqueeze(-1), q[x].unsqueeze(-1), torch.zeros(n, dtype=torch.long))
    keep = uniforms(n, gen)[:, 0] <= chance
    return torch.where(keep, x, draws_from(fallback, n, gen))


def siblings(p: torch.Tensor, tokens: Sequence[int], qs: Sequence[torch.Tensor], n: int, gen: torch.Generator,
             update: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = residual) -> torch.Tensor:
    """Proposals tried in order (SpecInfer's recursive rejection over a node's children): with r = p, keep
    x_j when u_j <= min(1, r(x_j)/q_j(x_j)), else r <- update(r, q_j); none kept: a draw from r. The
    sequence of r does not depend on the draws, so every draw is decided from precomputed ratios."""
    r, chances = p.double().cpu(), []
    for x, q in zip(tokens, qs):
        q = q.double().cpu()
        chances.append(float(ratio(r, q, torch.tensor(x))))
        r = update(r, q)
    emitted = draws_from(r, n, gen)
    u = uniforms(n, gen, len(tokens))
    for j in reversed(range(len(tokens))):   # the first j that passes wins: apply from the last to the first
        emitted = torch.where(u[:, j] <= chances[j], torch.tensor(tokens[j]), emitted)
    return emitted


def keep_p(r: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The broken update: after a refusal p is left as it was, not reduced by the draft's share."""
    return r


def typical_emit(pos: Position, n: int, gen: torch.Generator) -> torch.Tensor:
    """Keep the first proposal with p(x) above the typical threshold, else draw from p."""
    p = pos.p.double().cpu()
    passes = p > typical_threshold(p, *pos.typical)   # typical_accept for every token at once
    fallback = draws_from(p, n, gen)
    if pos.sampled_draft:
        x = draws_from(pos.q, n, gen)
        return torch.where(passes[x], x, fallback)
    first = next((x for x in pos.proposed if bool(passes[x])), None)
    return fallback if first is None else torch.full((n,), first)


def emit(pos: Position, rule: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """n tokens emitted at this position under `rule`."""
    p, vocab = pos.p, pos.p.shape[-1]
    hot = [one_hot(torch.tensor(x), vocab, like=p) for x in pos.proposed]
    if rule == "exact":
        return one_draft(p, pos.q, residual(p, pos.q), n, gen) if pos.sampled_draft else \
            siblings(p, pos.proposed, hot, n, gen)
    if rule == "greedy_draft":
        q = need_q(pos, rule)
        return siblings(p, [int(q.argmax())], [q], n, gen)
    if rule == "resample_from_p":
        return one_draft(p, pos.q, p, n, gen) if pos.sampled_draft else siblings(p, pos.proposed, hot, n, gen,
                                                                                  update=keep_p)
    if rule == "soft_q_topk":
        q = need_q(pos, rule)
        children = pos.proposed if not pos.sampled_draft else q.topk(SOFT_CHILDREN).indices.tolist()
        return siblings(p, children, [q] * len(children), n, gen)
    if rule == "typical":
        return typical_emit(pos, n, gen)
    raise ValueError(f"Unknown rule '{rule}': choose one of {', '.join(RULES)}.")


RULES = {
    "exact": "the exact rule (lossless)",
    "greedy_draft": "broken: drafted greedily (argmax q) but the sampled q reported",
    "resample_from_p": "broken: at a rejection, drawn from p instead of the residual",
    "soft_q_topk": "broken: deterministic top-k children verified with the draft's soft q",
    "typical": "typical acceptance (Medusa-2), lossy by design",
}


# ----------------------------------------------------------------------------- measuring

def frequencies(samples: torch.Tensor, vocab: int) -> torch.Tensor:
    counts = torch.bincount(samples, minlength=vocab).double()
    return counts / counts.sum()


def total_variation(a: torch.Tensor, b: torch.Tensor) -> float:
    return 0.5 * float((a.double().cpu() - b.double().cpu()).abs().sum())


def noise_floor(p: torch.Tensor, n: int, gen: torch.Generator, repeats: int = NOISE_REPEATS) -> float:
    """The mean TV between p and the histogram of n exact draws from p: what a perfect sampler shows at n."""
    return sum(total_variation(frequencies(draws_from(p, n, gen), p.shape[-1]), p) for _ in range(repeats)) / repeats


@dataclass
class Check:
    """One sampling check: the histogram of the emitted token against p, its TV and the noise floor."""
    method: str
    step: int                       # 0-based step index in the trace
    position: int                   # 0-based: the drafted position (speculative) or the depth along the accepted
                                    # path whose children were verified (tree)
    rule: str
    draws: int
    seed: int
    token_ids: list[int]            # the tokens shown: the most probable under p or in the histogram
    p: list[float]                  # the target's probability of each
    emitted: list[float]            # the share of draws that emitted each
    tv: float
    noise_floor: float
    within_noise: bool
    proposed: list[int]
    recorded_p: float | None        # p of the proposed token as the step recorded it
    recomputed_p: float             # ... and as this check recomputed it
    words: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check(pos: Position, rule: str, draws: int, seed: int) -> tuple[float, float, torch.Tensor]:
    """TV of the emitted histogram against p, the noise floor at that many draws, and the histogram."""
    if not 1_000 <= draws <= MAX_DRAWS:
        raise ValueError(f"Draws must be between 1,000 and {MAX_DRAWS:,}.")
    gen = torch.Generator().manual_seed(seed)
    hist = frequencies(emit(pos, rule, draws, gen), pos.p.shape[-1])
    floor = noise_floor(pos.p, draws, torch.Generator().manual_seed(seed + 1))
    return total_variation(hist, pos.p), floor, hist


# ----------------------------------------------------------------------------- recomputing a position

def prefix_at(trace: Trace, step: int, position: int) -> tuple[list[int], list[int], float | None]:
    """The text the verification forward conditioned on at this position, what was proposed there, and the
    recorded p of the first proposal."""
    if not 0 <= step < len(trace.steps):
        raise ValueError(f"Step must be between 1 and {len(trace.steps)}, the steps this run recorded.")
    before = list(trace.prompt_ids) + [t for s in trace.steps[:step] for t in s.committed_ids]
    d = trace.steps[step].detail
    if trace.method == "speculative":
        drafted = d["draft_tokens"]
        if not 0 <= position < len(drafted):
            raise ValueError(f"Step {step + 1} drafted {len(drafted)} tokens: choose a position from 1 to "
                             f"{len(drafted)}." if drafted else f"Step {step + 1} drafted nothing; choose another.")
        return before + drafted[:position], [drafted[position]], d["positions"][position]["p"]
    if trace.method == "tree":
        path = d["accepted_path"]
        if not 0 <= position <= len(path):
            raise ValueError(f"Step {step + 1} accepted {len(path)} nodes: choose a position from 1 (the root's "
                             f"children) to {len(path) + 1}.")
        node = path[position - 1] if position else -1
        tokens = [n["token"] for n in d["nodes"]]
        children = [n for n in d["nodes"] if n["parent"] == node]
        if not children:
            raise ValueError(f"Position {position + 1} of step {step + 1} is a leaf of the tree: nothing was "
                             f"drafted after it. Choose a smaller position.")
        return before + [tokens[i] for i in path[:position]], [n["token"] for n in children], children[0]["p"]
    raise ValueError("The sampling check is for speculative and tree decoding.")


def last_distribution(model: LM, ids: Sequence[int], s: Sampling) -> torch.Tensor:
    """One forward over the prefix; the processed distribution of the next token."""
    return probabilities(model.forward(model.new_kv(), list(ids))[-1], s)


def position_of(trace: Trace, step: int, position: int, target: LM, draft: LM | None) -> tuple[Position, float | None]:
    """Recompute p (and q, with a draft model) at a recorded position; the recorded p of the first proposal."""
    cfg = trace.config
    s = Sampling(float(cfg.get("temperature", 0)), int(cfg.get("top_k", 0)), float(cfg.get("top_p", 1.0)))
    if s.greedy:
        raise ValueError("Under greedy decoding p is one-hot and nothing is sampled: set a temperature above 0.")
    ids, proposed, recorded = prefix_at(trace, step, position)
    p = last_distribution(target, ids, s)
    q = last_distribution(draft, ids, s) if draft is not None else None
    sampled = trace.method == "speculative" and cfg.get("drafter") == "model"
    typical = (float(cfg.get("typical_epsilon", 0.09)), float(cfg.get("typical_delta", 0.3)))
    return Position(p, q, proposed, sampled, typical), recorded


def shown_tokens(p: torch.Tensor, hist: torch.Tensor, proposed: Sequence[int]) -> list[int]:
    ranked = torch.maximum(p.double().cpu(), hist).topk(SHOWN).indices.tolist()
    return list(dict.fromkeys([*proposed[:1], *ranked]))[:SHOWN]


def sampling_check(trace: Trace, step: int, position: int, rule: str, target: LM, draft: LM | None,
                   draws: int = DRAWS, seed: int = 0) -> Check:
    """Resample one recorded position `draws` times under `rule` and compare the emitted token with p."""
    if rule not in RULES:
        raise ValueError(f"Unknown rule '{rule}': choose one of {', '.join(RULES)}.")
    pos, recorded = position_of(trace, step, position, target, draft)
    tv, floor, hist = check(pos, rule, draws, seed)
    ids = shown_tokens(pos.p, hist, pos.proposed)
    recomputed = float(pos.p[pos.proposed[0]])
    within = tv <= WITHIN * floor
    return Check(trace.method, step, position, rule, draws, seed, ids, [float(pos.p[i]) for i in ids],
                 [float(hist[i]) for i in ids], tv, floor, within, list(pos.proposed), recorded, recomputed,
                 explain(trace, rule, draws, tv, floor, within, recorded, recomputed))


def explain(trace: Trace, rule: str, draws: int, tv: float, floor: float, within: bool, recorded: float | None,
            recomputed: float) -> str:
    verdict = (f"within the noise (at most {WITHIN:g} times the floor): the emitted token is distributed as p"
               if within else f"{tv / floor:.1f} times the noise floor: the emitted token is NOT distributed as p")
    again = (f" p of the proposed token was recomputed by one target forward over the recorded prefix: "
             f"{recomputed:.4f} (the step recorded {recorded:.4f}).") if recorded is not None else ""
    return (f"{draws:,} draws under {RULES[rule]}: total variation to p = {tv:.4f}; an exact sampler shows "
            f"{floor:.4f} at {draws:,} draws (mean over {NOISE_REPEATS} seeded runs of sampling p itself). "
            f"So the TV is {verdict}.{again}")


# ----------------------------------------------------------------------------- whole blocks on a toy chain
# One recorded position cannot test block verification: its decision at x_1 depends on the target and the draft
# at every later drafted position, for every draft that could have been sampled. So the block rule is checked on a
# toy language, a Markov chain whose full distributions are known: p(x_t | x_{t-1}) = PT[x_{t-1}], the draft's
# q(x_t | x_{t-1}) = QT[x_{t-1}], text starting after token 0. Many runs decode `length` tokens with k drafts per
# iteration, and the joint histogram of the text is compared with the target's prod_t PT[x_{t-1}, x_t].

BLOCK_RULES = {
    "token": "token verification (Leviathan et al. 2023), lossless",
    "block": "block verification (Sun et al. 2024, Algorithm 2), lossless",
    "block_token_residual": "broken: the block's accepted length, but the token rule's residual norm(max(0, p - q)) "
                            "without the weight p_tau",
    "block_naive": "broken: keep the longest prefix whose coin passes u_i <= p_i, no stop chance h_i",
    "block_unnormalised": "broken: the stop chance h_i = r_i, the residual mass not divided by r_i + 1 - p_i",
}


def chain_verify(p: torch.Tensor, q: torch.Tensor, x: torch.Tensor, u: torch.Tensor, rule: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Accepted lengths [N] and next-token distributions [N, V] of drafts x [N, k] under a rule of BLOCK_RULES."""
    if rule == "token":
        n = speculative_accept(p, q, x, u)
        return n, correction(p, q, n)
    weights = block_weights(p, q, x)
    chances = weights[..., 1:] if rule == "block_naive" else block_stop_chances(p, q, weights)
    if rule == "block_unnormalised":
        chances = torch.cat([block_residual_mass(p, q, weights)[..., 1:], weights[..., -1:]], -1)
    n = block_accept(chances, u)
    return n, correction(p, q, n) if rule == "block_token_residual" else block_correction(p, q, weights, n)


def chain_decode(PT: torch.Tensor, QT: torch.Tensor, k: int, length: int, draws: int, gen: torch.Generator,
                 rule: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`draws` texts of `length` tokens decoded speculatively at once, and the accepted length of every first
    iteration (x_1..x_k drafted after token 0). Texts [draws, length] (positions past length are dropped)."""
    rows = torch.arange(draws)
    text = torch.zeros(draws, length + k + 2, dtype=torch.long)   # column 0 holds the start token 0
    done = torch.ones(draws, dtype=torch.long)                      # columns filled so far
    first = None
    while bool((done <= length).any()):
        last = text[rows, done - 1]
        drafts, prev = [], last
        for _ in range(k):
            prev = pick(QT[prev], uniforms(draws, gen)[:, 0].float())
            drafts.append(prev)
        x = torch.stack(drafts, -1)
        before = torch.cat([last.unsqueeze(-1), x], -1)             # the context's last token at each position
        n, after = chain_verify(PT[before], QT[before[:, :k]], x, uniforms(draws, gen, k).float(), rule)
        y = pick(after, uniforms(draws, gen)[:, 0].float())
        new = torch.cat([x, y.unsqueeze(-1)], -1).scatter(-1, n.unsqueeze(-1), y.unsqueeze(-1))
        for j in range(k + 1):   # x_1..x_n, then y: columns done .. done + n
            write = (j <= n) & (done <= length)
            text[rows[write], (done + j)[write]] = new[write, j]
        done = torch.where(done <= length, done + n + 1, done)
        first = n if first is None else first
    return text[:, 1:length + 1], first


def chain_joint(PT: torch.Tensor, length: int) -> torch.Tensor:
    """The target's joint distribution of the first `length` tokens after token 0, flattened [V ** length]."""
    joint = PT[0]
    for _ in range(length - 1):   # joint[..., a, b] = joint[..., a] * PT[a, b]
        joint = joint.unsqueeze(-1) * PT
    return joint.reshape(-1)


def text_index(texts: torch.Tensor, vocab: int) -> torch.Tensor:
    """Each text as one number in base `vocab`, the index of its cell in chain_joint."""
    return (texts * vocab ** torch.arange(texts.shape[-1] - 1, -1, -1)).sum(-1)


def chi_square_p_value(samples: torch.Tensor, p: torch.Tensor) -> float:
    """Pearson's test of samples against p; cells expected fewer than 5 times share one bin."""
    n = samples.numel()
    observed = torch.bincount(samples, minlength=p.numel()).double()
    expected = p.double() * n
    big = expected >= 5
    obs = torch.cat([observed[big], observed[~big].sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)])
    if exp[-1] == 0:
        if obs[-1] > 0:
            return 0.0
        obs, exp = obs[:-1], exp[:-1]
    stat = ((obs - exp) ** 2 / exp).sum()
    return float(torch.special.gammaincc(torch.tensor((len(exp) - 1) / 2), stat / 2))


@dataclass
class ChainCheck:
    """The block check on a toy chain: TV of the texts' joint histogram to the target's, the noise floor, Pearson's
    p-value, and the mean accepted length of the first iteration."""
    rule: str
    tv: float
    noise_floor: float
    p_value: float
    mean_accepted: float


def chain_check(PT: torch.Tensor, QT: torch.Tensor, k: int, length: int, rule: str, draws: int, seed: int
                ) -> ChainCheck:
    if rule not in BLOCK_RULES:
        raise ValueError(f"Unknown rule '{rule}': choose one of {', '.join(BLOCK_RULES)}.")
    texts, first = chain_decode(PT, QT, k, length, draws, torch.Generator().manual_seed(seed), rule)
    joint, cells = chain_joint(PT, length), text_index(texts, PT.shape[0])
    floor = noise_floor(joint, draws, torch.Generator().manual_seed(seed + 1))
    return ChainCheck(rule, total_variation(frequencies(cells, joint.numel()), joint), floor,
                      chi_square_p_value(cells, joint), float(first.double().mean()))
