"""Jacobi decoding: the fixed point is the greedy output, at least one token per forward, figures from steps."""
import dataclasses
import json

import pytest
import torch

from engines.decoding.jacobi import JacobiConfig, jacobi, leading_matches
from engines.methods import Run
from engines.trace import Step, Trace
from explorer.figures import VIEWS
from tests.conftest import PROMPTS, greedy_reference

REPEAT = "the cat sat on the mat. the cat sat on the mat. the cat sat on the mat. the cat"
ALPHABET = "a b c d e f g a b c d e f g a b c"


def decode(model, ids, **settings) -> list[Step]:
    return list(jacobi(model, ids, JacobiConfig(**settings), torch.Generator().manual_seed(0)))


def output(steps: list[Step]) -> list[int]:
    return [t for s in steps for t in s.committed_ids]


@pytest.fixture(scope="module")
def references(tiny_target) -> dict[str, list[int]]:
    return {p: greedy_reference(tiny_target, tiny_target.encode(p), 24) for p in (PROMPTS[0], PROMPTS[3], REPEAT)}


@pytest.mark.parametrize("block, init", [(1, "repeat"), (4, "random"), (8, "repeat"), (32, "pad")])
def test_greedy_equals_generate_on_the_tiny_target(tiny_target, references, block, init):
    for prompt, reference in references.items():
        steps = decode(tiny_target, tiny_target.encode(prompt), max_new_tokens=24, block=block, init=init)
        assert output(steps) == reference, (prompt, block, init)
        assert sum(s.target_forwards for s in steps) == len(steps) <= 24


def test_greedy_equals_generate_on_smollm2(smollm2):
    trace = Run("jacobi", PROMPTS[1], {"max_new_tokens": 12, "block": 6}, target=smollm2.source).run()
    assert trace.output_ids == greedy_reference(smollm2, trace.prompt_ids, 12)   # in its chat template
    assert trace.totals["target_forwards"] <= 12


def test_every_iteration_commits_the_converged_prefix_and_keeps_the_cache_exact(tiny_target):
    ids = tiny_target.encode(REPEAT)
    steps = decode(tiny_target, ids, max_new_tokens=30, block=8)
    produced = 0
    for s in steps:
        d = s.detail
        k = leading_matches(d["block_before_ids"], d["block_after_ids"])
        assert d["settled"] == k
        assert 1 <= len(s.committed_ids) <= k + 1
        assert list(s.committed_ids[:k]) == d["block_before_ids"][:len(s.committed_ids[:k])]
        assert d["block_start"] == produced
        produced += len(s.committed_ids)
        assert d["cache_len"] == len(ids) + produced - 1      # the committed text but its last (pending) token
        assert s.tokens_fed == (len(ids) if s.index == 0 else 1) + len(d["block_before_ids"])
        assert sorted(d["changed"] + d["fixed"]) == list(range(len(d["block_before_ids"])))


@pytest.mark.parametrize("block", [3, 8])
def test_no_block_takes_more_iterations_than_its_length(tiny_target, block):
    """Santilli et al.'s guarantee: the positions of the block fed at iteration t are all committed by
    iteration t + n - 1."""
    for prompt in (PROMPTS[2], REPEAT):
        steps = decode(tiny_target, tiny_target.encode(prompt), max_new_tokens=40, block=block)
        done = [0]
        for s in steps:
            done.append(done[-1] + len(s.committed_ids))
        for t, s in enumerate(steps):
            n = len(s.detail["block_before_ids"])
            end = s.detail["block_start"] + n
            last = min(t + n, len(steps))                     # after iteration t + n - 1
            assert done[last] >= min(end, done[-1]), (t, n)


def eos_inside_a_commit(model, method: str, prompts, **settings) -> tuple[list[int], int]:
    """A prompt and a token whose first appearance in the greedy output is committed together with later
    tokens, so that, made the end-of-text token, it ends the text inside one iteration's commit."""
    for prompt in prompts:
        ids = model.encode(prompt)
        trace = Run(method, prompt, settings, target=model.source).run()
        out, start = trace.output_ids, 0
        for s in trace.steps:
            for i, t in enumerate(s.committed_ids[:-1]):
                if out.index(t) == start + i:
                    return ids, t
            start += len(s.committed_ids)
    pytest.fail("no prompt gave a multi-token commit with a fresh token inside it")


def test_eos_inside_a_block_ends_the_text_there(tiny_target):
    ids, eos = eos_inside_a_commit(tiny_target, "jacobi", [ALPHABET, REPEAT, PROMPTS[3]], max_new_tokens=30, block=8)
    as_eos = dataclasses.replace(tiny_target, eos_ids=frozenset({eos}))
    ended = decode(as_eos, ids, max_new_tokens=30, block=8)
    out = output(ended)
    assert out == greedy_reference(as_eos, ids, 30) and out[-1] == eos and out.count(eos) == 1
    last = ended[-1]
    assert len(last.committed_ids) < last.detail["settled"] + 1   # the converged prefix went past the end


def test_same_seed_same_random_guesses_and_the_output_never_depends_on_them(tiny_target):
    strip = lambda t: [{k: v for k, v in s.to_dict().items() if k != "wall_s"} for s in t.steps]
    settings = {"max_new_tokens": 12, "block": 5, "init": "random"}
    a = Run("jacobi", PROMPTS[0], settings, target=tiny_target.source, seed=3).run()
    b = Run("jacobi", PROMPTS[0], settings, target=tiny_target.source, seed=3).run()
    c = Run("jacobi", PROMPTS[0], settings, target=tiny_target.source, seed=4).run()
    assert strip(a) == strip(b)
    assert a.steps[0].detail["block_before_ids"] != c.steps[0].detail["block_before_ids"]
    assert a.output_ids == c.output_ids


@pytest.mark.parametrize("settings, says", [({"temperature": 0.7}, "greedy only"), ({"block": 0}, "block"),
                                            ({"block": 33}, "block"), ({"init": "zeros"}, "init")])
def test_bad_settings_are_refused_in_one_sentence(tiny_target, settings, says):
    with pytest.raises(ValueError, match=says) as e:
        Run("jacobi", PROMPTS[0], settings, target=tiny_target.source)
    assert str(e.value).count(". ") == 0 and str(e.value).endswith(".")


def test_the_cli_takes_block_and_init(tiny_target, cli):
    r = cli("trace", "--method", "jacobi", "--block", "8", "--init", "repeat", "--prompt", PROMPTS[0],
            "--max-new-tokens", "6", "--target", tiny_target.source)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["config"]["block"] == 8 and len(d["output_ids"]) == 6


# ----------------------------------------------------------------------------- figures

def hand_made() -> Trace:
    """Block [5, 6, 7] -> [5, 9, 7], beyond 8: the guess 5 is confirmed, 9 corrects 6, 7 stays unproven."""
    step = Step(0, (5, 9), target_forwards=1, tokens_fed=4, detail={
        "block_start": 0, "block_before_ids": [5, 6, 7], "block_after_ids": [5, 9, 7], "beyond_token": 8,
        "p_new": [0.9, 0.5, 0.4, 0.3], "changed": [1], "fixed": [0, 2], "settled": 1, "fresh_ids": [8],
        "cache_len": 4})
    return Trace("jacobi", {"block": 3, "init": "repeat", "max_new_tokens": 8}, {"target": "x"}, "p", [1, 2],
                 [step], token_texts={5: " a", 6: " b", 7: " c", 8: " d", 9: " e"})


def test_figures_from_a_hand_made_step():
    trace, view = hand_made(), VIEWS["jacobi"]
    heat = json.loads(view.main(trace, 0).to_json())["data"][0]
    assert heat["type"] == "heatmap" and list(heat["x"]) == [0, 1, 2, 3]
    assert list(heat["z"]) == [0, 0, 1, 3]                     # committed, committed, unchanged, new guess
    assert "\u2192" in heat["hovertext"][1] and '" b"' in heat["hovertext"][1] and '" e"' in heat["hovertext"][1]
    side = json.loads(view.side(trace, 0).to_json())["data"]
    assert [list(t["y"]) for t in side[:2]] == [[2], [1]]      # 2 committed, 1 unchanged but unproven
    words = view.words(trace, 0)
    assert '" a"' in words and '" e"' in words and "2 tokens for 1 forward" in words
    assert [c.status for c in view.chips(trace, 0)] == ["accepted", "resampled"]


def test_every_view_works_for_every_step_and_stays_small(tiny_target):
    trace = Run("jacobi", REPEAT, {"max_new_tokens": 40, "block": 32, "init": "random"},
                target=tiny_target.source).run()
    trace = Trace.from_json(trace.to_json())
    view = VIEWS["jacobi"]
    assert view.words(trace, -1) and view.main(trace, -1) and view.side(trace, -1)
    for i in range(len(trace.steps)):
        for figure in (view.main(trace, i), view.side(trace, i)):
            text = figure.to_json()
            assert len(text) < 100_000
            assert figure.layout.showlegend is not False
        assert view.words(trace, i) and view.chips(trace, i)
