"""Speculative decoding: draft k tokens cheaply, verify them with ONE target forward.

Leviathan et al. 2023 ("Fast Inference from Transformers via Speculative Decoding") and
Chen et al. 2023 ("Accelerating Large Language Model Decoding with Speculative Sampling").
Each iteration:

1. propose: the draft model samples x_1..x_k from q_1..q_k (its cache reused), or prompt
   lookup copies the k tokens that followed the latest earlier match of the text's last
   n-gram (Saxena 2023), a deterministic drafter with one-hot q;
2. verify: one target forward over [pending token, x_1..x_k] gives p_1..p_{k+1};
   the rules in engines/decoding/acceptance.py keep a prefix of n drafts and pick one more token
   (the residual's at a rejection, the bonus from p_{k+1} when all k pass): token verification (Leviathan et
   al. 2023) decides the drafts one at a time, block verification (Sun et al. 2024, arXiv 2403.10444) the
   block as a whole, from its end;
3. crop both caches back to the committed text, so nothing is ever re-run.

p and q both come from sampling.probabilities with the same settings, and q is exactly
the distribution each draft token was sampled from.
"""
from __future__ import annotations

from dataclasses import dataclass
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
from engines.decoding.acceptance import (
    BlockVerdict,
    accepted_count,
    block_residual_mass,
    block_verify,
    correction,
    entropy,
    greedy_accept,
    one_hot,
    ratio,
    speculative_accept,
    typical_accept,
    typical_threshold,
)
from engines.decoding.sampling import (
    Sampling,
    TokenProbability,
    choose,
    probabilities,
    raw_probabilities,
    top,
)
from engines.decoding.step_time import time_split
from engines.drafting import registry
from engines.drafting.base import Draft, EarlyExitRecord, HeadsRecord, LookupMatch
from engines.models.adapter import LM
from engines.models.devices import clock
from engines.trace import Step

MAX_K = 16
TOP = 5


@dataclass(frozen=True)
class SpeculativeConfig(DecodeConfig):
    k: int = option(4, "tokens drafted per iteration (the starting value when the schedule is adaptive)", 1, MAX_K)
    drafter: str = option("model", registry.described("chain"), choices=registry.names("chain"))
    schedule: str = option("constant", "constant k, or adaptive: k + 2 after a fully accepted draft, k - 1 after a "
                                       "rejection (transformers' heuristic), within 1-16",
                           choices=("constant", "adaptive"))
    lookup_ngram: int = option(3, "longest n-gram prompt lookup tries to match (ngram drafter)", 1, 8,
                               label="lookup n-gram")
    exit_layer: int = exit_layer_option()
    acceptance: str = acceptance_option()
    typical_epsilon: float = epsilon_option()
    typical_delta: float = delta_option()
    verification: str = option("token", "token: decide the drafts one at a time, stop at the first refusal "
                                        "(Leviathan et al. 2023); block: decide the drafted block as a whole, from "
                                        "its end (Sun et al. 2024, block verification): exact too, and keeps "
                                        "at least as many drafts on average", choices=("token", "block"))

    def __post_init__(self):
        super().__post_init__()
        if self.verification == "block" and self.acceptance == "typical":
            raise ValueError("Block verification is an exact rule: set acceptance to exact, or verification to "
                             "token for typical acceptance.")


# ----------------------------------------------------------------------------- the step record

class DraftedPosition(TypedDict):
    """One drafted token x_i and how verification treated it (p: target, q: drafter, i = 1..k)."""
    token: int                      # x_i, the drafted token
    status: Literal["accepted", "rejected", "not_reached"]   # kept; the first refused; after it, never tested
    p: float                        # p_i(x_i): the target's probability after temperature / top-k / top-p
    q: float                        # q_i(x_i): the drafter's probability it was proposed from; 1 if one-hot
    ratio: float | None             # min(1, p_i(x_i) / q_i(x_i)); null under greedy or typical acceptance
    u: float | None                 # the uniform in (0, 1] drawn for it (all k at once); null when none was drawn
    p_raw: float                    # p_i(x_i) under the target's own distribution (temperature 1)
    q_raw: float | None             # the draft model's or the heads' own probability (temperature 1); null for lookup
    target_token: int               # the target's argmax at this position
    p_top: list[TokenProbability]   # top 5 of p_i
    q_top: list[TokenProbability]   # top 5 of q_i (the drafted token alone when one-hot)
    p_raw_top: list[TokenProbability]          # top 5 of the target's own distribution
    q_raw_top: list[TokenProbability] | None   # top 5 of the drafter's own distribution; null for lookup
    threshold: NotRequired[float]   # typical acceptance: min(epsilon, delta * exp(-H(p_i))), kept when p is above
    entropy: NotRequired[float]     # typical acceptance: H(p_i) in nats


class BlockRecord(TypedDict):
    """Block verification (Sun et al. 2024, Algorithm 2) of this draft x_1..x_m, and the token rule beside it."""
    weights: list[float]            # p_1..p_m: p_i = min(p_{i-1} * p_i(x_i) / q_i(x_i), 1), p_0 = 1
    residual_mass: list[float]      # r_0..r_{m-1}: r_i = sum_x max(p_i * p_{i+1}(x) - q_{i+1}(x), 0)
    stop_chances: list[float]       # h_1..h_m: h_i = r_i / (r_i + 1 - p_i) (0 when r_i = 0), h_m = p_m
    passed: list[bool]              # u_i <= h_i, the coin of each position (the coins are the positions' u; greedy
                                    # draws none and reads u = 1: the h are 0 or 1 there)
    accepted: int                   # tau: the last i whose coin passed, 0 when none did (decided from the end)
    token_accepted: int             # token verification on the same draft with the same coins: the leading run of
                                    # u_i <= min(1, p_i(x_i) / q_i(x_i)), the positions' ratio (greedy: the
                                    # leading matches of the argmax, as block verification keeps there too)


class VerificationRecord(TypedDict):
    """One draft-and-verify: every drafted position and the token the target added after the kept ones."""
    draft_tokens: list[int]         # x_1..x_m as drafted (m <= k: a drafter may stop early)
    accepted: int                   # n, how many leading drafts were kept
    positions: list[DraftedPosition]          # one per drafted token, in order
    bonus_p_top: list[TokenProbability]       # top 5 of p_{m+1}, the target after the whole draft
    bonus_p_raw_top: list[TokenProbability]   # top 5 of the target's own distribution there
    lookup: LookupMatch | None      # prompt lookup's match; null for other drafters or when nothing matched
    next_token: int | None          # the token after the kept drafts; null when a kept draft ended the text
    next_kind: Literal["bonus", "resampled"] | None   # bonus: p_{m+1} after a full accept; resampled: at a rejection
    next_p: float | None            # its probability in the distribution it was drawn from
    next_top: list[TokenProbability] | None   # top 5 of that distribution: norm(max(0, p - q)), p_{m+1}, or p (typical)
    next_raw_p: NotRequired[float]  # its probability under the target's own distribution; absent with no next token


class SpeculativeDetail(VerificationRecord):
    """A speculative step: the verification and what the run's settings made of it."""
    drafter: str                    # model, ngram, heads, eagle or early-exit; typed for a continuation a person typed
    acceptance: Literal["exact", "typical"]   # the rule: lossless, or Medusa-2's typical acceptance (lossy)
    verification: NotRequired[Literal["token", "block"]]   # exact rule's form; absent in traces recorded before it
    block: NotRequired[BlockRecord]  # block verification's numbers; present when verification is block
    k: int                          # drafts asked for this step (capped by the token budget)
    k_next: int                     # k for the next step (the adaptive schedule moves it)
    schedule: Literal["constant", "adaptive"]   # how k changes between steps
    ended: bool                     # an end-of-text token was committed
    target_cache: list[int]         # the target's cache length before the forward, after it, after the crop
    draft_cache: list[int] | None   # the same for the draft model's cache; null without a draft model
    heads: HeadsRecord | None       # the head drafter's record; null for other drafters
    early_exit: NotRequired[EarlyExitRecord]   # the early-exit drafter: the layer it exits after, of how many
    target_forward_s: NotRequired[float]   # seconds of the target's forward this step (CUDA waited for)
    drafting_s: NotRequired[float]  # seconds the drafter took this step (drafting, and reading the verdict)
    bookkeeping_s: NotRequired[float]   # the rest of wall_s: verifying, sampling, cropping caches, the record


def speculative(target: LM, draft: LM | None, prompt_ids: Sequence[int], cfg: SpeculativeConfig,
                rng: torch.Generator) -> Iterator[Step]:
    """Yield one Step per draft-and-verify iteration until max_new_tokens or an end-of-text token."""
    if not prompt_ids:
        raise ValueError("The prompt has no tokens: type a few words for the model to continue.")
    drafter = registry.start(cfg.drafter, target, draft, cfg)
    s = cfg.sampling
    target_kv = target.new_kv()
    text = list(prompt_ids)
    k, produced, index = cfg.k, 0, 0
    while produced < cfg.max_new_tokens:
        start = clock(target.device)   # CUDA waited for: timings measure the GPU's work
        # never draft what the budget could not keep: n accepted + 1 more must fit
        k_now = min(k, cfg.max_new_tokens - produced - 1)
        drafter.begin()
        proposal = drafter.draft_chain(text, k_now, s, rng, target.eos_ids) if k_now else Draft([])
        drafted_at = clock(target.device)

        m, target_before = len(proposal.tokens), len(target_kv)
        fed = text[target_before:] + proposal.tokens
        features = None
        if drafter.layers:   # the same forward also hands the drafter its hidden states: no extra target forward
            logits, features = target.forward_features(target_kv, fed, drafter.layers)
            logits = logits[-(m + 1):]
        else:
            logits = target.forward(target_kv, fed)[-(m + 1):]
        target_s = clock(target.device) - drafted_at
        target_after = len(target_kv)
        p = probabilities(logits, s)
        q = proposal.q if proposal.q is not None else one_hot(
            torch.tensor(proposal.tokens, dtype=torch.long, device=p.device), p.shape[-1], like=p)
        verdict = verify(p, q, proposal.tokens, s, rng, typical=typical_of(cfg), block=cfg.verification == "block")
        n = verdict.accepted

        committed = proposal.tokens[:n]
        ended = bool(committed) and committed[-1] in target.eos_ids  # an accepted EOS ends the text: no bonus
        next_token, dist = None, None
        if not ended:
            dist = verdict.next_distribution
            next_token = choose(dist, s, rng)
            committed = committed + [next_token]
            ended = next_token in target.eos_ids

        target.crop(target_kv, len(text) + n)   # the cache keeps the committed text but the pending token
        final_rows = None if features is None or ended else features[:, :len(text) - target_before + n]
        reading = clock(target.device)
        drafter.after_chain(len(text) + n, final_rows, target_before, text + committed)
        drafting_s = drafted_at - start + clock(target.device) - reading
        text += committed
        produced += len(committed)
        k_next = next_k(k, n, m, cfg.schedule)
        detail = SpeculativeDetail(
            **record(p, logits, q, proposal, verdict, next_token, dist),
            drafter=cfg.drafter, acceptance=cfg.acceptance, verification=cfg.verification, k=k_now, k_next=k_next,
            schedule=cfg.schedule, ended=ended, target_cache=[target_before, target_after, len(target_kv)],
            **({"draft_cache": None, "heads": None} | drafter.chain_record(verdict.choice.tolist())),
        )
        if verdict.block is not None:
            detail["block"] = block_record(p, q, verdict)
        final = ended or produced >= cfg.max_new_tokens
        wall_s = clock(target.device) - start
        detail.update(time_split(wall_s, target_s, drafting_s))
        yield Step(index, tuple(committed), target_forwards=1, draft_forwards=drafter.forwards, final=final,
                   tokens_fed=len(fed), wall_s=wall_s, detail=detail)
        if final:
            return
        k, index = k_next, index + 1


def next_k(k: int, accepted: int, drafted: int, schedule: str) -> int:
    """transformers' heuristic schedule: +2 when every drafted token was accepted, else -1."""
    if schedule != "adaptive" or drafted == 0:
        return k
    return min(MAX_K, k + 2) if accepted == drafted else max(1, k - 1)


# ----------------------------------------------------------------------------- verifying

@dataclass
class Verdict:
    accepted: int
    choice: torch.Tensor                # [m+1] the target's argmax at every position
    next_distribution: torch.Tensor     # [V] what the token after the kept drafts is drawn from
    u: torch.Tensor | None = None       # [m] uniforms in (0, 1]; None under greedy (no draws)
    ratios: torch.Tensor | None = None  # [m] min(1, p/q); None under greedy
    threshold: torch.Tensor | None = None  # [m] typical acceptance: min(epsilon, delta * exp(-H(p)))
    entropy: torch.Tensor | None = None    # [m] typical acceptance: H(p) in nats
    block: BlockVerdict | None = None      # block verification's weights, stop chances and coins
    token_accepted: int | None = None      # block verification: what the token rule keeps with the same coins


def verify(p: torch.Tensor, q: torch.Tensor, tokens: list[int], s: Sampling, rng: torch.Generator,
           typical: tuple[float, float] | None = None, block: bool = False) -> Verdict:
    """How many drafts the target keeps, and the distribution of the token after them. Greedy: while each equals
    the target's argmax. Sampling: while u_i <= min(1, p_i(x_i)/q_i(x_i)) (Leviathan et al. 2023, Algorithm 1),
    then the residual. Block (Sun et al. 2024, Algorithm 2): the last i with u_i <= h_i, then the block residual;
    under greedy it keeps the same prefix as the greedy rule. Typical (epsilon, delta): while p_i(x_i) >
    min(epsilon, delta * exp(-H(p_i))), no draw (lossy), then p itself; under greedy p is one-hot, so this keeps
    exactly the argmax, as greedy verification does."""
    x = torch.tensor(tokens, dtype=torch.long, device=p.device)
    choice = p.argmax(-1)
    if typical is not None:
        rows = p[:len(tokens)]
        n = int(accepted_count(typical_accept(rows, x, *typical)))
        # typical acceptance draws the next token from p itself (Medusa-2), not from the residual
        return Verdict(n, choice, p[n], threshold=typical_threshold(rows, *typical), entropy=entropy(rows))
    if block:
        return verify_block(p, q, x, s, rng, choice)
    if s.greedy:
        n = int(greedy_accept(x, choice))
        return Verdict(n, choice, correction(p, q, torch.tensor(n, device=p.device)))
    # drawn in (0, 1] so that u <= 0 can never keep a token the target rules out
    u = 1.0 - torch.rand(len(tokens), generator=rng, dtype=torch.float32)   # float32 whatever the default dtype
    n = int(speculative_accept(p, q, x, u.to(p.device)))   # the rule the 400,000-draw test checks
    return Verdict(n, choice, correction(p, q, torch.tensor(n, device=p.device)), u, ratio(p[:len(tokens)], q, x))


def verify_block(p: torch.Tensor, q: torch.Tensor, x: torch.Tensor, s: Sampling, rng: torch.Generator,
                 choice: torch.Tensor) -> Verdict:
    """Block verification, and beside it what token verification decides on the same draft with the same coins
    (the token rule reads coin i against min(1, p/q) from the front; the block rule reads it against h_i from the
    end). Greedy draws no coin: p is one-hot, so both keep the leading matches of the argmax."""
    b = block_verify(p, q, x, None if s.greedy else rng)
    if s.greedy:
        return Verdict(int(b.accepted), choice, b.correction, block=b, token_accepted=int(greedy_accept(x, choice)))
    token = int(speculative_accept(p, q, x, b.u))
    return Verdict(int(b.accepted), choice, b.correction, b.u, ratio(p[:len(x)], q, x), block=b, token_accepted=token)


def block_record(p: torch.Tensor, q: torch.Tensor, verdict: Verdict) -> BlockRecord:
    b = verdict.block
    weights = torch.cat([torch.ones(1, dtype=b.weights.dtype, device=b.weights.device), b.weights])
    return BlockRecord(weights=b.weights.tolist(), residual_mass=block_residual_mass(p, q, weights).tolist(),
                       stop_chances=b.stop_chances.tolist(), passed=(b.u <= b.stop_chances).tolist(),
                       accepted=verdict.accepted, token_accepted=verdict.token_accepted)


# ----------------------------------------------------------------------------- recording

def record(p: torch.Tensor, logits: torch.Tensor, q: torch.Tensor, proposal: Draft, verdict: Verdict,
           next_token: int | None, dist: torch.Tensor | None) -> VerificationRecord:
    """The step's internals as plain data: per drafted position p(x), q(x), their top-5 (processed
    and raw), min(1, p/q), u and the decision; then the token that followed and its distribution."""
    m, n = len(proposal.tokens), verdict.accepted
    p_raw = raw_probabilities(logits)
    x = torch.tensor(proposal.tokens, dtype=torch.long, device=p.device).unsqueeze(-1)
    px, qx, px_raw = (t[:m].gather(-1, x).squeeze(-1).tolist() for t in (p, q, p_raw))
    qx_raw = proposal.q_raw.gather(-1, x.to(proposal.q_raw.device)).squeeze(-1).tolist() \
        if proposal.q_raw is not None else [None] * m
    u = verdict.u.tolist() if verdict.u is not None else [None] * m
    r = verdict.ratios.tolist() if verdict.ratios is not None else [None] * m
    typical = verdict.threshold is not None
    choice = verdict.choice.tolist()
    p_top, q_top, p_raw_top = top_rows(p), top_rows(q), top_rows(p_raw)
    q_raw_top = top_rows(proposal.q_raw) if proposal.q_raw is not None else [None] * m
    positions = []
    for i, token in enumerate(proposal.tokens):
        position = DraftedPosition(
            token=token, status="accepted" if i < n else "rejected" if i == n else "not_reached",
            p=px[i], q=qx[i], ratio=r[i], u=u[i], p_raw=px_raw[i], q_raw=qx_raw[i], target_token=choice[i],
            p_top=p_top[i], q_top=q_top[i], p_raw_top=p_raw_top[i], q_raw_top=q_raw_top[i])
        if typical:   # the lossy rule's numbers: accepted when p > threshold
            position["threshold"], position["entropy"] = float(verdict.threshold[i]), float(verdict.entropy[i])
        positions.append(position)
    detail = VerificationRecord(
        draft_tokens=list(proposal.tokens), accepted=n, positions=positions,
        bonus_p_top=p_top[m], bonus_p_raw_top=p_raw_top[m], lookup=proposal.lookup,
        next_token=next_token, next_kind=None, next_p=None, next_top=None)
    if next_token is not None:
        detail["next_kind"] = "bonus" if n == m else "resampled"
        # the distribution the next token was drawn from: residual norm(max(0, p - q)) or p_{k+1}
        detail["next_p"], detail["next_top"] = float(dist[next_token]), top(dist, TOP)
        detail["next_raw_p"] = float(p_raw[n, next_token])
    return detail


def top_rows(probs: torch.Tensor, k: int = TOP) -> list[list[tuple[int, float]]]:
    """sampling.top for every row of [n, V] at once (one topk call instead of n)."""
    values, ids = probs.float().topk(min(k, probs.shape[-1]), dim=-1)
    return [[(int(i), round(float(v), 6)) for i, v in zip(row_ids, row_values) if v > 0]
            for row_ids, row_values in zip(ids.tolist(), values.tolist())]
