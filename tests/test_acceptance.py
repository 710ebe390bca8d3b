"""The verification rules alone, on toy distributions, vectorised over hundreds of thousands of draws.

Losslessness means: whatever q is, the tokens that come out are distributed as p. Each test
applies a rule to a whole batch of uniforms at once and measures the total variation
distance between the empirical distribution of the output and p.
"""
import pytest
import torch

from engines.decoding.acceptance import (
    accepted_count,
    block_accept,
    block_correction,
    block_stop_chances,
    block_verify,
    block_weights,
    correction,
    greedy_accept,
    one_hot,
    pick,
    ratio,
    residual,
    speculative_accept,
)
from engines.decoding.sampling import Sampling, probabilities

DRAWS = 200_000
TV = 0.01


def tv(samples: torch.Tensor, p: torch.Tensor) -> float:
    counts = torch.bincount(samples, minlength=p.shape[-1]).double()
    return 0.5 * float((counts / counts.sum() - p.double()).abs().sum())


def dist(*weights) -> torch.Tensor:
    w = torch.tensor(weights, dtype=torch.float32)
    return w / w.sum()


def uniforms(shape, gen) -> torch.Tensor:
    return 1.0 - torch.rand(shape, generator=gen)   # (0, 1], as the engine draws them


def one_position(p, q, gen, draws=DRAWS, rule=residual) -> torch.Tensor:
    """x ~ q; keep x when u <= min(1, p(x)/q(x)); else draw from rule(p, q). Vectorised."""
    x = torch.multinomial(q, draws, replacement=True, generator=gen)
    keep = uniforms(draws, gen) <= ratio(p.expand(draws, -1), q.expand(draws, -1), x)
    instead = pick(rule(p, q).expand(draws, -1), uniforms(draws, gen))
    return torch.where(keep, x, instead)


V = 6
PEAKED = dist(90, 4, 3, 1, 1, 1)
FLAT = dist(1, 1, 1, 1, 1, 1)


def truncated(logits, top_p):
    return probabilities(torch.tensor(logits), Sampling(temperature=1.0, top_p=top_p))


CASES = {
    "p equals q": (dist(5, 1, 3, 0, 2, 1), dist(5, 1, 3, 0, 2, 1)),
    "disjoint supports": (dist(3, 2, 1, 0, 0, 0), dist(0, 0, 0, 1, 4, 2)),
    "peaked p, flat q": (PEAKED, FLAT),
    "flat p, peaked q": (FLAT, PEAKED),
    "partial overlap": (dist(0, 1, 2, 3, 4, 0), dist(4, 3, 2, 1, 0, 0)),
    "top-p truncation of both": (truncated([2.0, 1.5, 1.0, 0.2, -1.0, -3.0], 0.8),
                                 truncated([0.1, 1.8, 0.5, 1.2, 0.9, -0.5], 0.8)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_speculative_sampling_yields_p(case):
    p, q = CASES[case]
    gen = torch.Generator().manual_seed(0)
    assert tv(one_position(p, q, gen), p) < TV


def test_top_p_case_really_truncates_and_differs():
    p, q = CASES["top-p truncation of both"]
    assert (p == 0).sum() >= 2 and (q == 0).sum() >= 1
    assert ((p > 0) & (q == 0)).any() and ((q > 0) & (p == 0)).any()


@pytest.mark.parametrize("case", ["peaked p, flat q", "partial overlap", "top-p truncation of both"])
def test_a_wrong_rule_fails_the_same_check(case):
    """Resampling from p instead of the residual after a rejection over-weights what q likes."""
    p, q = CASES[case]
    gen = torch.Generator().manual_seed(0)
    assert tv(one_position(p, q, gen, rule=lambda p, q: p), p) > 3 * TV


def test_ratio_computed_with_a_q_that_did_not_draw_the_token_fails():
    """q must be the distribution the draft sampled from: drafting at temperature 1 but judging
    with the draft's temperature-0.5 distribution breaks losslessness."""
    p = dist(1, 2, 3, 4, 5, 6)
    logits_q = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.2, 0.1])
    sampled_from = probabilities(logits_q, Sampling(temperature=1.0))
    judged_with = probabilities(logits_q, Sampling(temperature=0.5))
    gen = torch.Generator().manual_seed(0)
    x = torch.multinomial(sampled_from, DRAWS, replacement=True, generator=gen)
    keep = uniforms(DRAWS, gen) <= ratio(p.expand(DRAWS, -1), judged_with.expand(DRAWS, -1), x)
    out = torch.where(keep, x, pick(residual(p, judged_with).expand(DRAWS, -1), uniforms(DRAWS, gen)))
    assert tv(out, p) > 3 * TV


def test_one_hot_q_rule_for_a_deterministic_drafter():
    """An n-gram or greedy drafter always proposes the same x: accept with p(x), else p without x."""
    p = dist(4, 3, 2, 1, 0, 0)
    gen = torch.Generator().manual_seed(1)
    for x in (0, 2, 5):
        q = one_hot(torch.tensor(x), V)
        assert tv(one_position(p, q, gen), p) < TV
        without_x = p.clone()
        without_x[x] = 0
        assert torch.allclose(residual(p, q), without_x / without_x.sum())


def test_one_hot_rule_over_siblings_tries_each_in_turn():
    """Tree siblings with one-hot q: reject x1, zero it, renormalise, try x2 against what is left."""
    p = dist(5, 3, 1, 1)
    gen = torch.Generator().manual_seed(2)
    u1, u2, w = uniforms(DRAWS, gen), uniforms(DRAWS, gen), uniforms(DRAWS, gen)
    first, second = torch.tensor(0), torch.tensor(1)
    keep1 = u1 <= p[first]
    after1 = residual(p, one_hot(first, 4))
    keep2 = u2 <= after1[second]
    after2 = residual(after1, one_hot(second, 4))
    out = torch.where(keep1, first, torch.where(keep2, second, pick(after2.expand(DRAWS, -1), w)))
    assert tv(out, p) < TV


def test_every_position_of_a_multi_token_draft_is_distributed_as_p():
    """k = 3 drafts, then the correction: the token committed at position j (whenever the step
    reaches it) is distributed as p_j, including the bonus from p_4 after three acceptances."""
    k, draws = 3, 400_000
    p = torch.stack([dist(6, 2, 1, 1, 0, 0), dist(1, 1, 4, 4, 0, 0), dist(0, 0, 1, 1, 3, 5),
                     dist(2, 2, 2, 1, 1, 1)])
    q = torch.stack([dist(5, 3, 1, 1, 0, 0), dist(1, 2, 3, 3, 1, 0), dist(0, 1, 1, 1, 3, 4)])
    gen = torch.Generator().manual_seed(3)
    x = torch.stack([torch.multinomial(q[i], draws, replacement=True, generator=gen) for i in range(k)], -1)
    P, Q = p.expand(draws, -1, -1), q.expand(draws, -1, -1)
    n = speculative_accept(P, Q, x, uniforms((draws, k), gen))
    after = pick(correction(P, Q, n), uniforms(draws, gen))
    for j in range(k + 1):
        reached = n >= j
        token = x[:, j] if j < k else after
        committed = torch.where(n > j, token, after)[reached]
        assert reached.sum() > 50_000, "the toy distributions should reach every position often"
        assert tv(committed, p[j]) < TV, j


def test_greedy_accept_counts_the_matching_prefix():
    draft = torch.tensor([[5, 6, 7], [5, 9, 7], [1, 6, 7], [5, 6, 7]])
    choice = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 2, 8]])
    assert greedy_accept(draft, choice).tolist() == [3, 1, 0, 2]
    assert greedy_accept(torch.zeros(0, dtype=torch.long), torch.tensor([4])).item() == 0


def test_accepted_count_stops_at_the_first_false():
    accept = torch.tensor([[True, True, False, True], [False, True, True, True], [True] * 4])
    assert accepted_count(accept).tolist() == [2, 0, 4]


def test_ratio_is_capped_at_one_and_safe_where_q_is_zero():
    p, q = dist(1, 1, 2, 0), dist(2, 1, 1, 0)
    assert torch.allclose(ratio(p.expand(4, -1), q.expand(4, -1), torch.arange(4)),
                          torch.tensor([0.5, 1.0, 1.0, 0.0]))
    assert ratio(dist(1, 1), dist(1, 0), torch.tensor(1)).item() == 1.0


def test_residual_of_equal_distributions_falls_back_to_p():
    p = dist(1, 2, 3)
    assert torch.equal(residual(p, p), p)


def test_correction_is_the_residual_at_a_rejection_and_p_after_all_accepted():
    p = torch.stack([dist(1, 1, 2), dist(3, 1, 0), dist(1, 0, 1)])
    q = torch.stack([dist(2, 1, 1), dist(1, 1, 1)])
    assert torch.allclose(correction(p, q, torch.tensor(0)), residual(p[0], q[0]))
    assert torch.allclose(correction(p, q, torch.tensor(1)), residual(p[1], q[1]))
    assert torch.equal(correction(p, q, torch.tensor(2)), p[2])
    assert torch.equal(correction(p[:1], q[:0], torch.tensor(0)), p[0])    # nothing drafted
    batch = correction(p.expand(3, -1, -1), q.expand(3, -1, -1), torch.tensor([0, 1, 2]))
    assert torch.allclose(batch, torch.stack([residual(p[0], q[0]), residual(p[1], q[1]), p[2]]))


def test_pick_draws_from_the_distribution_and_never_a_zero():
    p = dist(0, 3, 0, 1, 6, 0)
    gen = torch.Generator().manual_seed(4)
    out = pick(p.expand(DRAWS, -1), uniforms(DRAWS, gen))
    assert tv(out, p) < TV
    assert set(out.unique().tolist()) == {1, 3, 4}
    assert pick(p, torch.tensor(1.0)).item() == 4


# ----------------------------------------------------------------------------- block verification (Sun et al. 2024)
# Its losslessness over whole texts is checked on a toy chain in tests/test_sampling_check.py: one step of block
# verification alone is not distributed position by position as the token rule's is.

def test_block_weights_and_stop_chances_by_hand():
    """k = 2 on a 3-token vocabulary, every number worked out on paper from Algorithm 2."""
    p = torch.stack([dist(1, 2, 1), dist(2, 1, 1), dist(1, 1, 2)])    # p_1, p_2, p_3
    q = torch.stack([dist(1, 1, 2), dist(1, 2, 1)])                   # q_1, q_2
    x = torch.tensor([1, 0])
    w = block_weights(p, q, x)
    # p_1 = min(0.5 / 0.25, 1) = 1; p_2 = min(1 * 0.5 / 0.25, 1) = 1
    assert torch.allclose(w, torch.tensor([1.0, 1.0, 1.0]))
    x = torch.tensor([2, 1])
    w = block_weights(p, q, x)
    # p_1 = 0.25 / 0.5 = 0.5; p_2 = min(0.5 * 0.25 / 0.5, 1) = 0.25
    assert torch.allclose(w, torch.tensor([1.0, 0.5, 0.25]))
    # r_1 = sum max(0.5 * p_2 - q_2, 0) = max(0.25 - 0.25, 0) + max(0.125 - 0.5, 0) + max(0.125 - 0.25, 0) = 0
    # so h_1 = 0: the residual after one kept token is empty; h_2 = p_2 = 0.25
    assert torch.allclose(block_stop_chances(p, q, w), torch.tensor([0.0, 0.25]))
    q = torch.stack([dist(1, 1, 2), dist(1, 4, 3)])
    h = block_stop_chances(p, q, w)
    # r_1 = max(0.25 - 0.125, 0) = 0.125 (only token 0); h_1 = 0.125 / (0.125 + 1 - 0.5) = 0.2
    assert torch.allclose(h, torch.tensor([0.2, 0.25]))
    # the block residual after one token: norm(max(0.5 * p_2 - q_2, 0)) = all on token 0
    assert torch.allclose(block_correction(p, q, w, torch.tensor(1)), torch.tensor([1.0, 0.0, 0.0]))


def test_block_accept_reads_the_coins_from_the_end():
    h = torch.tensor([[0.9, 0.1, 0.5], [0.9, 0.1, 0.5], [0.1, 0.1, 0.1], [0.0, 1.0, 0.0]])
    u = torch.tensor([[1.0, 1.0, 0.4], [0.5, 1.0, 0.6], [0.5, 0.5, 0.5], [0.01, 0.3, 0.01]])
    # from the end: pass at 3; fail 3 then pass at 1 (2 failed); none; pass at 2 (its prefix kept whatever 1 said)
    assert block_accept(h, u).tolist() == [3, 1, 0, 2]


def test_one_drafted_token_block_equals_the_token_rule():
    """k = 1: h_1 = p_1 = min(1, p/q) and the residual at 0 is norm(max(p - q, 0)): the same rule, same coins."""
    p, q = CASES["partial overlap"]
    P, Q = torch.stack([p, dist(1, 1, 1, 1, 1, 1)]), q.unsqueeze(0)
    for x in range(V):
        drafts = torch.tensor([x])
        w = block_weights(P, Q, drafts)
        assert torch.allclose(block_stop_chances(P, Q, w), ratio(p, q, torch.tensor(x)).view(1))
        assert torch.allclose(block_correction(P, Q, w, torch.tensor(0)), residual(p, q))


@pytest.mark.parametrize("soft_q", [False, True])
def test_block_under_greedy_keeps_the_longest_matching_prefix(soft_q):
    """A one-hot p (greedy): whatever q and whatever the coins, block verification keeps the drafts while they
    equal the target's argmax, and its correction is one-hot on the argmax after them."""
    k, n, gen = 4, 2_000, torch.Generator().manual_seed(5)
    choice = torch.randint(0, V, (n, k + 1), generator=gen)
    # half of each draft copies the argmax, so every matching length 0..k occurs
    copy = torch.rand(n, k, generator=gen) < 0.7
    x = torch.where(copy, choice[:, :k], torch.randint(0, V, (n, k), generator=gen))
    p = one_hot(choice, V)
    q = torch.softmax(torch.randn(n, k, V, generator=gen), -1) if soft_q else one_hot(x, V)
    expected = greedy_accept(x, choice)
    assert set(expected.tolist()) == set(range(k + 1))
    for rng in (None, torch.Generator().manual_seed(6)):
        v = block_verify(p, q, x, rng)
        assert torch.equal(v.accepted, expected)
        assert torch.equal(v.correction, one_hot(choice.gather(-1, expected.unsqueeze(-1)).squeeze(-1), V))


BLOCK_P = torch.stack([dist(6, 2, 1, 1, 0, 0), dist(1, 1, 4, 4, 0, 0), dist(0, 0, 1, 1, 3, 5),
                       dist(3, 1, 2, 2, 1, 1), dist(2, 2, 2, 1, 1, 1)])
BLOCK_Q = torch.stack([dist(3, 4, 1, 1, 1, 0), dist(2, 2, 2, 3, 1, 0), dist(0, 1, 3, 1, 3, 2), dist(1, 3, 2, 2, 1, 1)])


def test_block_keeps_at_least_as_many_drafts_as_the_token_rule_on_average():
    """10,000 drafts x ~ q (k = 4) on a fixed (p, q), each verified by both rules with the same coins: the block
    rule's mean accepted length is at least the token rule's (Sun et al. 2024, Theorem 2)."""
    k, draws, gen = 4, 10_000, torch.Generator().manual_seed(7)
    x = torch.stack([torch.multinomial(BLOCK_Q[i], draws, replacement=True, generator=gen) for i in range(k)], -1)
    P, Q = BLOCK_P.expand(draws, -1, -1), BLOCK_Q.expand(draws, -1, -1)
    v = block_verify(P, Q, x, gen)
    token = speculative_accept(P, Q, x, v.u).double().mean().item()
    block = v.accepted.double().mean().item()
    print(f"mean accepted length over {draws:,} drafts: block {block:.3f}, token {token:.3f}")
    assert block >= token + 0.05
