"""Be the drafter: a typed continuation verified by the target in one forward, recorded as a speculative step."""
import pytest

from engines.analysis.verify_draft import verify_draft_trace
from explorer.figures import speculative as figures
from explorer.render import check_trace
from tests.conftest import greedy_reference

PROMPT = "Alice was beginning to get very tired of"


def test_the_targets_own_greedy_text_is_kept_whole_and_earns_the_bonus(tiny_target):
    ids = tiny_target.encode(PROMPT)
    greedy = greedy_reference(tiny_target, ids, 6)
    # the longest prefix that reads back as the same tokens when typed (two newlines type as one token)
    m = max(n for n in range(1, 6) if tiny_target.encode(tiny_target.decode(greedy[:n])) == greedy[:n])
    trace = verify_draft_trace(PROMPT, tiny_target.decode(greedy[:m]), tiny_target.source)
    d = trace.steps[0].detail
    assert d["draft_tokens"] == greedy[:m] and d["accepted"] == m and d["next_kind"] == "bonus"
    assert trace.output_ids == greedy[:m + 1] and trace.steps[0].target_forwards == 1


def test_a_wrong_token_is_rejected_and_the_target_adds_its_own(tiny_target):
    ids = tiny_target.encode(PROMPT)
    greedy = greedy_reference(tiny_target, ids, 4)
    wrong = [t for t in tiny_target.encode(" zebra") if t != greedy[2]][:1]
    typed = tiny_target.decode(greedy[:2] + wrong)
    trace = verify_draft_trace(PROMPT, typed, tiny_target.source)
    d = trace.steps[0].detail
    if d["draft_tokens"][:2] != greedy[:2]:
        pytest.skip("the typed text tokenises differently on its own")
    assert d["accepted"] == 2 and d["positions"][2]["status"] == "rejected"
    assert trace.output_ids == greedy[:3] and d["next_kind"] == "resampled"
    assert "You proposed 3 tokens" in figures.words(trace, 0) and "argmax" in figures.words(trace, 0)


def test_sampled_verification_keeps_while_u_is_at_most_p(tiny_target):
    trace = verify_draft_trace("Once upon a time", " there was a little girl who", tiny_target.source,
                               temperature=1.0, seed=3)
    check_trace(trace)   # the explorer's own check: fields, words, chips and both figures render
    d = trace.steps[0].detail
    for pos in d["positions"]:
        assert pos["q"] == 1.0 and pos["ratio"] == pytest.approx(pos["p"], rel=1e-5)
        if pos["status"] != "not_reached":
            assert (pos["u"] <= pos["ratio"]) == (pos["status"] == "accepted")
    assert figures.draft_check(trace, 0).data and figures.next_token_and_stats(trace, 0).data


@pytest.mark.parametrize("typed, message", [("   ", "Type a continuation"), (" a" * 40, "at most 16")])
def test_empty_or_long_drafts_are_refused_in_one_sentence(tiny_target, typed, message):
    with pytest.raises(ValueError, match=message):
        verify_draft_trace("Once upon a time", typed, tiny_target.source)


def test_the_tab_handler_returns_the_speculative_figures(tiny_target):
    from explorer.checks import run_verify_draft
    main, side, words, record = run_verify_draft("Once upon a time", " there was", tiny_target.source, 0.0, 0)
    assert main.data and side.data and "You proposed" in words and record["drafter"] == "typed"
