"""Verification rules, pure and batched, in the papers' notation: p = target, q = draft.

Speculative sampling (Leviathan et al. 2023, "Fast Inference from Transformers via
Speculative Decoding", Algorithm 1; Chen et al. 2023, "Accelerating Large Language Model
Decoding with Speculative Sampling", Algorithm 2): draft x_i ~ q_i; accept x_i while
u_i <= min(1, p_i(x_i) / q_i(x_i)); at the first rejection draw from
norm(max(0, p_i - q_i)); when all k are accepted draw the bonus token from p_{k+1}.

A deterministic drafter (greedy draft, n-gram lookup, a top-k tree) has a one-hot q, so
the same rule reads: accept x with probability p(x); on rejection zero p(x) and
renormalise (`residual(p, one_hot(x))`), then try the next sibling if there is one.

Every function takes its uniform draws as arguments and works on any leading batch shape,
so a test can apply a rule to 200,000 draws at once and an engine to one draft.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def accepted_count(accept: torch.Tensor) -> torch.Tensor:
    """Length of the accepted prefix: the number of leading True values along the last dim."""
    return accept.to(torch.long).cumprod(-1).sum(-1)


def greedy_accept(draft: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """Greedy verification: x_i is kept while it equals the target's argmax at its parent.

    draft [..., k] drafted ids; choice [..., k+1] the target's argmax after the text and after
    each drafted token. Returns n [...]; the target's own token choice[n] always follows.
    """
    return accepted_count(draft == choice[..., : draft.shape[-1]])


def ratio(p: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """min(1, p(x) / q(x)), the probability of keeping a drafted x (Leviathan et al. 2023, Sec. 2.3).

    p, q [..., V]; x [...]. A token the draft could not have sampled (q(x) = 0) gets 0 when
    p(x) = 0 and 1 otherwise, so the rule never divides by zero.
    """
    px = p.gather(-1, x.unsqueeze(-1)).squeeze(-1)
    qx = q.gather(-1, x.unsqueeze(-1)).squeeze(-1)
    return (px / qx).nan_to_num(0.0).clamp(max=1.0)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)): what is left of p after the draft's share (Leviathan et al. 2023, Eq. 1 ff.).

    With q = one_hot(x) this is p with x zeroed and renormalised. Where nothing is left
    (p <= q everywhere, so a rejection had probability 0 and only rounding got us here),
    p itself is returned.
    """
    left = (p - q).clamp(min=0)
    total = left.sum(-1, keepdim=True)
    return torch.where(total > 0, left / total.clamp(min=torch.finfo(left.dtype).tiny), p)


def correction(p: torch.Tensor, q: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """The distribution of the token that follows n accepted drafts.

    p [..., k+1, V] target distributions after the text and after each drafted token;
    q [..., k, V] the draft's; n [...] accepted counts. For n < k: residual(p_n, q_n) (the
    rejection); for n = k: p_{k+1} (the bonus), which is residual(p, 0), so one formula serves.
    """
    q_then_nothing = torch.cat([q, q.new_zeros(*q.shape[:-2], 1, q.shape[-1])], dim=-2)
    at = n.reshape(*n.shape, 1, 1).expand(*n.shape, 1, p.shape[-1])
    return residual(p.gather(-2, at).squeeze(-2), q_then_nothing.gather(-2, at).squeeze(-2))


def speculative_accept(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Accepted count n [...] of drafts [..., k] with uniforms u [..., k] in (0, 1]: keep x_i while
    u_i <= min(1, p_i(x_i) / q_i(x_i)). p [..., k+1 or k, V], q [..., k, V]."""
    k = draft.shape[-1]
    return accepted_count(u <= ratio(p[..., :k, :], q, draft))


# ----------------------------------------------------------------------------- block verification (lossless)
# Sun, Mendlovic, Leviathan, Aharoni, Beirami, Ro, Suresh 2024, "Block Verification Accelerates Speculative
# Decoding" (arXiv 2403.10444), Algorithm 2. The token rule above decides x_1, x_2, ... one at a time and stops at
# the first refusal; block verification judges the drafted block as a whole: a later position may keep the whole
# prefix before it even where the token rule would have refused an earlier token. Expected accepted length is never
# below the token rule's (the paper's Theorem 2), and the output is still distributed as the target's.


def block_weights(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor) -> torch.Tensor:
    """The running weights p_0 = 1, p_i = min(p_{i-1} * p_i(x_i) / q_i(x_i), 1) for i = 1..k (Algorithm 2, line 4).

    p [..., k+1 or k, V], q [..., k, V], draft [..., k] -> [..., k+1]. As in `ratio`, a token the draft could not
    have sampled (q(x) = 0) keeps the weight when the target allows it and zeroes it when the target rules it out.
    """
    k = draft.shape[-1]
    px = p[..., :k, :].gather(-1, draft.unsqueeze(-1)).squeeze(-1)
    qx = q.gather(-1, draft.unsqueeze(-1)).squeeze(-1)
    weights = [torch.ones(draft.shape[:-1], dtype=p.dtype, device=p.device)]
    for i in range(k):   # min(., 1) at every step: no cumulative product can stand in for it
        weights.append((weights[-1] * px[..., i] / qx[..., i]).nan_to_num(0.0, posinf=1.0).clamp(max=1.0))
    return torch.stack(weights, -1)


def block_residual_mass(p: torch.Tensor, q: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """r_i = sum_x max(p_i * p_{i+1}(x) - q_{i+1}(x), 0) for i = 0..k-1: what the block residual at i holds
    (weights [..., k+1] as block_weights gives them; rows i of p and q are the distributions of x_{i+1})."""
    k = q.shape[-2]
    return (weights[..., :k, None] * p[..., :k, :] - q).clamp(min=0).sum(-1)


def block_stop_chances(p: torch.Tensor, q: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """h_1..h_k, the chance of keeping exactly the first i drafts once no longer prefix was kept (Algorithm 2,
    line 5): h_i = r_i / (r_i + 1 - p_i) for i < k, h_k = p_k. Where r_i = 0 the block residual at i is empty, so
    stopping there is impossible and h_i = 0 (this also settles 0 / 0, which needs p_i = 1 and r_i = 0)."""
    if not q.shape[-2]:
        return weights[..., 1:]   # nothing drafted: no chance to record
    r = block_residual_mass(p, q, weights)[..., 1:]
    w = weights[..., 1:-1]
    # 1 - p_i before adding r_i: at p_i = 1 it is exactly 0, so h_i is exactly 1 and a coin of 1 passes (greedy)
    inner = torch.where(r > 0, r / (r + (1 - w)).clamp(min=torch.finfo(r.dtype).tiny), torch.zeros_like(r))
    return torch.cat([inner.clamp(max=1.0), weights[..., -1:]], -1)


def block_accept(stop_chances: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Accepted length tau [...]: the largest i with u_i <= h_i, 0 when none passes (Algorithm 2, lines 6-7: the
    block is decided from its end backwards, one coin per position; the first pass from the end keeps the whole
    prefix up to it). stop_chances, u [..., k] with u in (0, 1]."""
    k = u.shape[-1]
    passes = (u <= stop_chances).to(torch.long) * torch.arange(1, k + 1, device=u.device)
    return passes.max(-1).values if k else torch.zeros(u.shape[:-1], dtype=torch.long, device=u.device)


def block_correction(p: torch.Tensor, q: torch.Tensor, weights: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """The distribution of the token after tau = n kept drafts (Algorithm 2, lines 8-11): for n < k the block
    residual norm(max(p_n * p_{n+1} - q_{n+1}, 0)), which at n = 0 (p_0 = 1) is the token rule's residual; for
    n = k the bonus p_{k+1}. p [..., k+1, V], q [..., k, V], weights [..., k+1], n [...]."""
    scaled = correction(p * weights.unsqueeze(-1), q, n)   # at n = k: p_k * p_{k+1}, renormalised below
    return scaled / scaled.sum(-1, keepdim=True)


@dataclass
class BlockVerdict:
    """What block verification computed for one draft (tensors; a batch when p, q carry leading dims)."""
    accepted: torch.Tensor        # tau, the accepted length
    weights: torch.Tensor         # p_1..p_k
    stop_chances: torch.Tensor    # h_1..h_k
    u: torch.Tensor               # the coins eta_1..eta_k in (0, 1]
    correction: torch.Tensor      # the distribution the next token is drawn from


def block_verify(p: torch.Tensor, q: torch.Tensor, draft: torch.Tensor, rng: torch.Generator | None) -> BlockVerdict:
    """Block verification of drafts [..., k] (Sun et al. 2024, Algorithm 2): p [..., k+1, V] the target after the
    text and after each draft, q [..., k, V] the distributions the drafts were sampled from; the k coins come from
    rng. rng None draws no coin (every u = 1): only for a one-hot p (greedy), where every weight is 0 or 1 and so
    is every stop chance past the matching prefix, so tau is the longest prefix equal to the target's argmax
    whatever the coins, and the correction is one-hot on the argmax after it."""
    weights = block_weights(p, q, draft)
    h = block_stop_chances(p, q, weights)
    if rng is None:
        u = torch.ones(draft.shape, dtype=p.dtype, device=p.device)
    else:   # drawn in (0, 1], float32 whatever the default dtype, as the token rule's coins
        u = (1.0 - torch.rand(draft.shape, generator=rng, dtype=torch.float32)).to(p.device)
    n = block_accept(h, u.to(h.dtype))
    return BlockVerdict(n, weights[..., 1:], h, u, block_correction(p, q, weights, n))


def one_hot(x: torch.Tensor, vocab: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """The q of a deterministic drafter: all mass on the token it proposed."""
    dtype = like.dtype if like is not None else torch.float32
    return torch.nn.functional.one_hot(x, vocab).to(dtype)


def pick(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: the token whose cumulative probability first reaches u in (0, 1].

    probs [..., V], u [...]. Lets a test draw from residuals of a whole batch at once.
    """
    cdf = probs.cumsum(-1)
    cdf = cdf / cdf[..., -1:]           # rounding must not leave the last bucket short of 1
    index = torch.searchsorted(cdf, u.unsqueeze(-1).to(cdf.dtype).contiguous()).squeeze(-1)
    return index.clamp(max=probs.shape[-1] - 1)


# ----------------------------------------------------------------------------- typical acceptance (lossy)
# Medusa-2 (Cai et al. 2024, arXiv 2401.10774, section 2.3.1): keep a drafted x when the target finds it
# plausible enough, p(x) > min(epsilon, delta * exp(-H(p))), with no uniform draw and no residual. It keeps
# more drafts than the exact rule and its output is NOT distributed as the target's sampling. Under greedy
# the processed p is one-hot, so H(p) = 0, the threshold is min(epsilon, delta) < 1 and only the argmax passes:
# typical acceptance then equals greedy verification.

def entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum p log p in nats over the last dim (0 log 0 = 0)."""
    return -torch.special.xlogy(p, p).sum(-1)


def typical_threshold(p: torch.Tensor, epsilon: float, delta: float) -> torch.Tensor:
    """min(epsilon, delta * exp(-H(p))) for each distribution p [..., V]: a peaked p asks for more."""
    return torch.clamp(delta * torch.exp(-entropy(p)), max=epsilon)


def typical_accept(p: torch.Tensor, x: torch.Tensor, epsilon: float, delta: float) -> torch.Tensor:
    """Per drafted token: does p(x) exceed the typical threshold? p [..., V], x [...] -> bool [...]."""
    px = p.gather(-1, x.unsqueeze(-1)).squeeze(-1)
    return px > typical_threshold(p, epsilon, delta)
