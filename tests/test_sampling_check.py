"""The sampling check: resampling one position many times tells the exact rule from the ways people break it.

Fixed seeds throughout, so every TV below is deterministic. "Within the noise" means at most twice the mean TV
of an exact sampler at the same number of draws; the broken rules must land well above it (3x and more).
"""
import pytest
import torch

from engines.analysis.sampling_check import (
    BLOCK_RULES,
    RULES,
    Position,
    chain_check,
    check,
    frequencies,
    sampling_check,
    siblings,
    total_variation,
)
from engines.decoding.acceptance import one_hot
from engines.decoding.trees import ROOT
from engines.decoding.verify_tree import verify_sampled
from engines.methods import Run

BROKEN = [r for r in RULES if r != "exact"]
P = torch.tensor([.3, .2, .15, .1, .1, .05, .05, .05])
Q = torch.tensor([.1, .4, .1, .1, .1, .1, .05, .05])


@pytest.mark.parametrize("sampled", [True, False])
def test_exact_within_the_noise_and_every_broken_rule_well_above(sampled):
    pos = Position(P, Q, [1] if sampled else [1, 0, 3], sampled, (0.09, 0.3))
    tv, floor, _ = check(pos, "exact", 20_000, 0)
    assert tv <= 2 * floor
    for rule in BROKEN:
        tv, floor, _ = check(pos, rule, 20_000, 0)
        assert tv > 3 * floor, rule


def test_the_sibling_sampler_matches_the_tree_engines_recursive_rejection():
    """siblings() decides every draw from precomputed ratios; tree.verify_sampled runs the rule per draw."""
    gen = torch.Generator().manual_seed(0)
    children = [1, 0, 3]
    for q in (None, torch.stack([Q] * 3)):
        v = verify_sampled([ROOT] * 3, children, torch.stack([P] * 4), gen, draws=20_000, q=q)
        theirs = torch.where(v.last == ROOT, v.final, torch.tensor(children)[v.last.clamp(min=0)])
        qs = [one_hot(torch.tensor(x), 8, like=P) for x in children] if q is None else [Q] * 3
        ours = siblings(P, children, qs, 20_000, gen)
        assert total_variation(frequencies(theirs, 8), frequencies(ours, 8)) < 0.02


def test_rules_that_need_a_draft_model_say_so():
    pos = Position(P, None, [1], False, (0.09, 0.3))
    with pytest.raises(ValueError, match="draft model's q"):
        check(pos, "greedy_draft", 5_000, 0)


# ----------------------------------------------------------------------------- block verification on a toy chain

def dist(*weights) -> torch.Tensor:
    w = torch.tensor(weights, dtype=torch.float32)
    return w / w.sum()


# a 4-token Markov chain as the target, and a draft that shifts 70% of each row to the wrong tokens: it is often
# refused, so block verification's stop chances and residuals after a kept prefix are exercised
PT = torch.stack([dist(6, 1, 2, 1), dist(1, 6, 1, 2), dist(2, 1, 6, 1), dist(1, 2, 1, 6)])
QT = 0.7 * PT.roll(1, 0) + 0.3 * PT
CHAIN_DRAWS, LEVEL = 400_000, 1e-3


@pytest.fixture(scope="module")
def chain_checks() -> dict:
    """Texts of 3 tokens, decoded with k = 3 drafts per iteration, 400,000 times under each rule."""
    return {rule: chain_check(PT, QT, 3, 3, rule, CHAIN_DRAWS, seed=0) for rule in BLOCK_RULES}


@pytest.mark.parametrize("rule", ["token", "block"])
def test_block_and_token_verification_decode_texts_distributed_as_the_target(chain_checks, rule):
    """The joint of all 3 tokens (64 cells), across iterations: within the noise floor, and Pearson's test."""
    c = chain_checks[rule]
    assert c.tv <= 2 * c.noise_floor and c.p_value > LEVEL, c


@pytest.mark.parametrize("rule", [r for r in BLOCK_RULES if r.startswith("block_")])
def test_every_broken_block_variant_fails_the_same_check(chain_checks, rule):
    c = chain_checks[rule]
    assert c.p_value < LEVEL, c


def test_block_keeps_more_of_the_first_draft_than_the_token_rule(chain_checks):
    assert chain_checks["block"].mean_accepted > chain_checks["token"].mean_accepted + 0.05


@pytest.fixture(scope="module", params=["speculative", "tree"])
def recorded(request, tiny_target, tiny_draft):
    run = Run(request.param, "Once upon a time", {"max_new_tokens": 8, "temperature": 1.0, "top_k": 20},
              target=tiny_target.source, draft=tiny_draft.source, seed=0)
    run.step()
    return run


def test_on_the_tiny_pair_exact_passes_and_the_broken_rules_fail(recorded):
    exact = sampling_check(recorded.trace, 0, 0, "exact", recorded.target, recorded.draft, 20_000, seed=0)
    assert exact.within_noise and exact.recomputed_p == pytest.approx(exact.recorded_p, abs=1e-4)
    for rule in BROKEN:
        c = sampling_check(recorded.trace, 0, 0, rule, recorded.target, recorded.draft, 20_000, seed=0)
        assert c.tv > 3 * c.noise_floor and not c.within_noise, rule
        assert "NOT distributed as p" in c.words


def test_bad_positions_and_greedy_runs_are_refused(recorded, tiny_target, tiny_draft):
    with pytest.raises(ValueError, match="choose a position"):
        sampling_check(recorded.trace, 0, 40, "exact", recorded.target, recorded.draft)
    with pytest.raises(ValueError, match="Step must be"):
        sampling_check(recorded.trace, 5, 0, "exact", recorded.target, recorded.draft)
    greedy = Run("speculative", "Once upon a time", {"max_new_tokens": 4}, target=tiny_target.source,
                 draft=tiny_draft.source).run()
    with pytest.raises(ValueError, match="temperature above 0"):
        sampling_check(greedy, 0, 0, "exact", tiny_target, tiny_draft)


def test_the_tab_handler_returns_the_histogram(tiny_target, tiny_draft):
    from explorer.checks import run_sampling_check
    fig, words, record = run_sampling_check("Once upon a time", "speculative", tiny_target.source, tiny_draft.source,
                                            1.0, 20, 0, 1, 1, "resample_from_p", 5_000)
    assert len(fig.data) == 2 and "noise" in words and record["rule"] == "resample_from_p"
    with pytest.raises(ValueError, match="Draws"):
        run_sampling_check("Once upon a time", "speculative", tiny_target.source, tiny_draft.source, 1.0, 20, 0, 1,
                           1, "exact", 10)
