"""Lookahead decoding: the hand-built mask, greedy equal to generate, the pool, the sampling rule, figures."""
import dataclasses
import json
from collections import OrderedDict

import pytest
import torch

from engines.decoding.lookahead import LookaheadConfig, branches, lookahead, remember, slide
from engines.decoding.trees import ancestry
from engines.decoding.verify_tree import verify_sampled
from engines.methods import Run
from engines.trace import Step, Trace
from explorer.figures import VIEWS
from tests.conftest import PROMPTS, greedy_reference
from tests.test_jacobi import ALPHABET, REPEAT, eos_inside_a_commit

SETTINGS = [(5, 4, 5), (3, 2, 2), (1, 3, 1), (4, 5, 0), (12, 6, 12)]   # (W, N, G)


def decode(model, ids, **settings) -> list[Step]:
    return list(lookahead(model, ids, LookaheadConfig(**settings), torch.Generator().manual_seed(0)))


def output(steps: list[Step]) -> list[int]:
    return [t for s in steps for t in s.committed_ids]


# ----------------------------------------------------------------------------- the mask

def test_the_mask_for_w3_n3_g2_equals_the_hand_built_one():
    """Fed order: input i; level 0 columns 1, 2 (a1 a2); level 1 columns 0..2 (b0 b1 b2); candidate 1
    (c1 c2); candidate 2 (d1 d2). Column i's chain: i, a1..ai, bi. Candidates hang under the input."""
    levels = [[100, 11, 12], [20, 21, 22]]
    b = branches([100], levels, [[31, 32], [41, 42]])
    assert b.ids == [100, 11, 12, 20, 21, 22, 31, 32, 41, 42]
    #            i  a1 a2 b0 b1 b2 c1 c2 d1 d2
    hand = [[1, 0, 0, 0, 0, 0, 0, 0, 0, 0],   # i
            [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],   # a1
            [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],   # a2
            [1, 0, 0, 1, 0, 0, 0, 0, 0, 0],   # b0 (column 0: i, b0)
            [1, 1, 0, 0, 1, 0, 0, 0, 0, 0],   # b1 (column 1: i, a1, b1)
            [1, 1, 1, 0, 0, 1, 0, 0, 0, 0],   # b2 (column 2: i, a1, a2, b2)
            [1, 0, 0, 0, 0, 0, 1, 0, 0, 0],   # c1
            [1, 0, 0, 0, 0, 0, 1, 1, 0, 0],   # c2
            [1, 0, 0, 0, 0, 0, 0, 0, 1, 0],   # d1
            [1, 0, 0, 0, 0, 0, 0, 0, 1, 1]]   # d2
    attend, depths = ancestry(b.parents)
    assert [[int(x) for x in row] for row in attend] == hand
    assert depths == [0, 1, 2, 1, 2, 3, 1, 2, 1, 2]    # level j, column i sits at i + j
    assert b.window_rows == [[0, 1, 2], [3, 4, 5]] and b.candidate_rows == [[6, 7], [8, 9]]


def test_pending_text_is_causal_and_shared_candidate_prefixes_are_fed_once():
    b = branches([7, 8, 100], [[100, 11]], [[31, 32], [31, 33]])
    assert b.ids == [7, 8, 100, 11, 31, 32, 33]
    attend, depths = ancestry(b.parents)
    assert [[int(x) for x in row] for row in attend] == [[1, 0, 0, 0, 0, 0, 0],
                                     [1, 1, 0, 0, 0, 0, 0],
                                     [1, 1, 1, 0, 0, 0, 0],
                                     [1, 1, 1, 1, 0, 0, 0],
                                     [1, 1, 1, 0, 1, 0, 0],
                                     [1, 1, 1, 0, 1, 1, 0],
                                     [1, 1, 1, 0, 1, 0, 1]]
    assert depths == [0, 1, 2, 3, 3, 4, 4]
    assert b.candidate_rows == [[4, 5], [4, 6]] and b.trie_rows == [4, 5, 6] and b.trie_parents == [-1, 0, 0]


# ----------------------------------------------------------------------------- exactness

@pytest.fixture(scope="module")
def references(tiny_target) -> dict[str, list[int]]:
    return {p: greedy_reference(tiny_target, tiny_target.encode(p), 30) for p in (PROMPTS[1], ALPHABET, REPEAT)}


@pytest.mark.parametrize("window, ngram, guesses", SETTINGS)
def test_greedy_equals_generate_on_the_tiny_target(tiny_target, references, window, ngram, guesses):
    for prompt, reference in references.items():
        ids = tiny_target.encode(prompt)
        steps = decode(tiny_target, ids, max_new_tokens=30, window=window, ngram=ngram, guesses=guesses)
        assert output(steps) == reference, (prompt, window, ngram, guesses)
        produced = 0
        for s in steps:
            produced += len(s.committed_ids)
            assert s.detail["cache_len"] == len(ids) + produced - 1
            assert s.target_forwards == 1 and len(s.committed_ids) <= ngram
            assert s.tokens_fed == (len(ids) - 1 if s.index == 0 else 0) + len(s.detail["fed_ids"])


def test_repetitive_text_hits_the_pool(tiny_target):
    steps = decode(tiny_target, tiny_target.encode(REPEAT), max_new_tokens=30, window=5, ngram=4, guesses=5)
    hits = [s for s in steps if s.detail["accepted_len"] >= 1]
    assert hits and len(steps) < 30
    for s in hits:
        d = s.detail
        cand = d["candidates"][d["accepted"]]
        assert list(s.committed_ids[:d["accepted_len"]]) == cand[:d["accepted_len"]]
        # the accepted n-gram came from an earlier step's window diagonals
        assert any([d["input_token"], *cand] in e.detail["harvested"] for e in steps[:s.index])


def test_greedy_equals_generate_on_smollm2(smollm2):
    prompt = "Repeat after me: red green blue, red green blue, red green blue, red green blue,"
    trace = Run("lookahead", prompt, {"max_new_tokens": 12}, target=smollm2.source).run()
    assert trace.output_ids == greedy_reference(smollm2, trace.prompt_ids, 12)


def test_eos_inside_an_accepted_ngram_ends_the_text_there(tiny_target):
    settings = dict(max_new_tokens=40, window=8, ngram=3, guesses=8)
    prompts = [ALPHABET, PROMPTS[0], "The quick brown fox jumps over the lazy dog."]
    ids, eos = eos_inside_a_commit(tiny_target, "lookahead", prompts, **settings)
    as_eos = dataclasses.replace(tiny_target, eos_ids=frozenset({eos}))
    steps = decode(as_eos, ids, **settings)
    out = output(steps)
    assert out == greedy_reference(as_eos, ids, 40) and out[-1] == eos and out.count(eos) == 1
    assert steps[-1].detail["accepted"] >= 0                 # it ended inside an accepted pooled n-gram


# ----------------------------------------------------------------------------- pool and window

def test_the_pool_keeps_the_g_most_recent_ngrams_per_first_token():
    pool = OrderedDict()
    assert remember(pool, [1, 2, 3], 2) and remember(pool, [1, 4, 5], 2)
    assert not remember(pool, [1, 2, 3], 2)            # seen again: refreshed, not duplicated
    assert remember(pool, [1, 6, 7], 2)                # the least recent, (4, 5), leaves
    assert pool[1] == [(2, 3), (6, 7)]
    remember(pool, [9, 9, 9], 2)
    assert list(pool) == [1, 9]


def test_the_window_slides_so_level_0_starts_at_the_last_committed_token():
    fill = lambda n: [0] * n
    levels = [[10, 11, 12], [21, 22, 23]]               # level j, column i at position i + j
    # full window (N - 1 = 2 levels): the oldest level leaves; 3 tokens committed move it 2 more columns
    out, shift = slide(levels, [32, 33, 34], 2, 3, fill)
    assert shift == 2 and out == [[23, 0, 0], [34, 0, 0]]
    # warming up (room for 3 levels): nothing leaves, so one committed token already moves it one column
    out, shift = slide(levels, [32, 33, 34], 3, 1, fill)
    assert shift == 1 and out == [[11, 12, 0], [22, 23, 0], [33, 34, 0]]


# ----------------------------------------------------------------------------- the sampling rule

def test_sampled_verification_of_the_candidate_trie_gives_the_target_distribution():
    """Candidates (1, 2), (1, 3), (4, 5) form the trie 1 -> {2, 3}, 4 -> {5}; SpecInfer's rule over it
    (engines.tree.verify_sampled, applied to 200,000 runs at once) must draw the first token from p at the
    input and, after 1 is accepted, the second from p at node 1."""
    b = branches([0], [[0]], [[1, 2], [1, 3], [4, 5]])
    assert b.trie_parents == [-1, 0, 0, -1, 3] and [b.ids[r] for r in b.trie_rows] == [1, 2, 3, 4, 5]
    tokens = [b.ids[r] for r in b.trie_rows]
    p_root = torch.tensor([0.10, 0.35, 0.05, 0.05, 0.30, 0.15])
    p_one = torch.tensor([0.20, 0.05, 0.30, 0.25, 0.10, 0.10])
    p = torch.stack([p_root, p_one, *[torch.full((6,), 1 / 6)] * 4])    # rows: input, then each trie node
    draws = 200_000
    v = verify_sampled(b.trie_parents, tokens, p, torch.Generator().manual_seed(0), draws=draws)
    first_node = torch.where(v.last >= 0, torch.tensor([0, 0, 0, 3, 3])[v.last.clamp(min=0)], -1)
    first = torch.where(first_node >= 0, torch.tensor(tokens)[first_node.clamp(min=0)], v.final)
    assert torch.allclose(torch.bincount(first, minlength=6).float() / draws, p_root, atol=0.004)
    after_one = v.last[first == 1]
    second = torch.where(after_one > 0, torch.tensor(tokens)[after_one.clamp(min=0)], v.final[first == 1])
    assert torch.allclose(torch.bincount(second, minlength=6).float() / second.numel(), p_one, atol=0.006)


def test_sampling_records_every_draw_and_the_same_seed_gives_the_same_trace(tiny_target):
    settings = {"max_new_tokens": 16, "temperature": 0.8, "window": 3, "ngram": 3, "guesses": 3}
    a = Run("lookahead", ALPHABET, settings, target=tiny_target.source, seed=5).run()
    b = Run("lookahead", ALPHABET, settings, target=tiny_target.source, seed=5).run()
    strip = lambda t: [{k: v for k, v in s.to_dict().items() if k != "wall_s"} for s in t.steps]
    assert strip(a) == strip(b)
    for s in a.steps:
        d = s.detail
        for draw in d["draws"]:
            assert draw["accepted"] == (draw["u"] <= draw["p_child"])
        assert sum(draw["accepted"] for draw in d["draws"]) >= d["accepted_len"]


def test_the_cli_takes_window_ngram_and_guesses(tiny_target, cli):
    r = cli("trace", "--method", "lookahead", "--window", "5", "--ngram", "4", "--guesses", "5", "--prompt", REPEAT,
            "--max-new-tokens", "8", "--target", tiny_target.source)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["config"]["window"], d["config"]["ngram"], d["config"]["guesses"]) == (5, 4, 5)
    assert len(d["output_ids"]) == 8


@pytest.mark.parametrize("settings, says", [({"window": 0}, "W"), ({"ngram": 1}, "N"), ({"guesses": 13}, "G")])
def test_bad_settings_are_refused_in_one_sentence(tiny_target, settings, says):
    with pytest.raises(ValueError, match=says):
        Run("lookahead", PROMPTS[0], settings, target=tiny_target.source)


# ----------------------------------------------------------------------------- figures

def test_every_view_works_for_every_step_and_stays_small(tiny_target):
    view = VIEWS["lookahead"]
    for settings in ({"max_new_tokens": 24}, {"max_new_tokens": 12, "window": 12, "ngram": 6, "guesses": 12}):
        trace = Trace.from_json(Run("lookahead", REPEAT, settings, target=tiny_target.source).run().to_json())
        assert view.words(trace, -1) and view.main(trace, -1) and view.side(trace, -1)
        for i in range(len(trace.steps)):
            for figure in (view.main(trace, i), view.side(trace, i)):
                assert len(figure.to_json()) < 100_000
            assert view.words(trace, i) and view.chips(trace, i)


def test_the_mask_figure_shows_the_recorded_mask(tiny_target):
    trace = Run("lookahead", REPEAT, {"max_new_tokens": 12, "window": 3, "ngram": 3, "guesses": 2},
                target=tiny_target.source).run()
    step = next(s for s in trace.steps if s.detail["candidates"])
    d = step.detail
    fig = json.loads(VIEWS["lookahead"].main(trace, step.index).to_json())
    heat = next(t for t in fig["data"] if t["type"] == "heatmap")
    seen = [[int(z > 0) for z in row] for row in heat["z"]]
    assert seen == [[int(x) for x in row] for row in ancestry(d["parents"])[0]]
    n_look = len(d["window"][0]) - 1 + sum(len(level) for level in d["window"][1:])
    assert {row[0] for row in heat["z"][1 + n_look:]} == {3}   # verification rows, coded by branch
    words = VIEWS["lookahead"].words(trace, step.index)
    assert "pooled tokens" in words and "matched" in words and f"{step.tokens_fed} tokens" in words
