"""Speculative decoding end to end on real models: greedy output equals transformers' generate,
the sampled first token is distributed as the target's, and every recorded number reproduces
the decision it was used for."""
import copy
import dataclasses
import json

import pytest
import torch

from engines.__main__ import main as cli
from engines.analysis.sampling_check import chi_square_p_value
from engines.decoding import speculative as engine
from engines.decoding.sampling import probabilities, top
from engines.decoding.speculative import (
    SpeculativeConfig,
    next_k,
    speculative,
)
from engines.drafting.lookup import draft_by_lookup
from engines.methods import Run
from engines.models.adapter import LM
from engines.trace import Step, Trace
from explorer.figures import VIEWS
from explorer.render import figure_bytes
from tests.conftest import PROMPTS, greedy_reference, untimed


def decode(target: LM, draft: LM | None, ids: list[int], seed: int = 0, **settings) -> list[Step]:
    return list(speculative(target, draft, ids, SpeculativeConfig(**settings), torch.Generator().manual_seed(seed)))


def output(steps: list[Step]) -> list[int]:
    return [t for s in steps for t in s.committed_ids]


@pytest.fixture(scope="module")
def near_copy(tiny_target) -> LM:
    """The target with slightly perturbed weights: a draft that agrees with it often, not always."""
    model = copy.deepcopy(tiny_target.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in model.parameters():
            w.add_(torch.randn(w.shape, generator=gen).to(w) * 0.1 * w.std())
    return dataclasses.replace(tiny_target, name="near-copy", model=model)


# ----------------------------------------------------------------------------- greedy is exact

@pytest.mark.parametrize("k", [1, 3, 8])
def test_greedy_equals_generate_on_the_tiny_pair(tiny_target, tiny_draft, k):
    for prompt in PROMPTS[1:3]:
        ids = tiny_target.encode(prompt)
        steps = decode(tiny_target, tiny_draft, ids, k=k, max_new_tokens=16)
        assert output(steps) == greedy_reference(tiny_target, ids, 16), prompt
        assert all(s.target_forwards == 1 for s in steps)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_greedy_equals_generate_when_drafts_are_often_accepted(tiny_target, near_copy, k):
    """The target as its own draft accepts everything (bonus every step); the near copy mixes both."""
    accepted = 0
    for draft in (tiny_target, near_copy):
        ids = tiny_target.encode(PROMPTS[2])
        steps = decode(tiny_target, draft, ids, k=k, max_new_tokens=16)
        assert output(steps) == greedy_reference(tiny_target, ids, 16)
        accepted += sum(s.detail["accepted"] for s in steps)
        if draft is tiny_target:
            assert all(s.detail["next_kind"] == "bonus" for s in steps)
            assert len(steps) == -(-16 // (k + 1))
    assert accepted > 0


@pytest.fixture(scope="module")
def smollm2_reference(smollm2) -> tuple[list[int], list[int]]:
    ids = smollm2.encode(PROMPTS[1])
    return ids, greedy_reference(smollm2, ids, 10)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_greedy_equals_generate_on_smollm2_with_the_tiny_draft(smollm2, tiny_draft, smollm2_reference, k):
    ids, reference = smollm2_reference
    assert output(decode(smollm2, tiny_draft, ids, k=k, max_new_tokens=10)) == reference


def test_prompt_lookup_greedy_equals_generate_on_smollm2(smollm2):
    ids = smollm2.encode("One, two, three, four. One, two, three, four. One, two,")
    steps = decode(smollm2, None, ids, k=4, drafter="ngram", max_new_tokens=12)
    assert output(steps) == greedy_reference(smollm2, ids, 12)
    assert sum(s.detail["accepted"] for s in steps) > 0, "repeated text should let lookup drafts through"
    assert all(s.draft_forwards == 0 for s in steps)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_prompt_lookup_greedy_equals_generate_on_the_tiny_target(tiny_target, k):
    ids = tiny_target.encode(PROMPTS[2] + " " + PROMPTS[2])
    steps = decode(tiny_target, None, ids, k=k, drafter="ngram", max_new_tokens=16)
    assert output(steps) == greedy_reference(tiny_target, ids, 16)


def first_new_token(reference: list[int]) -> int:
    """Index of a token that does not occur earlier in the reference (so, as EOS, it ends the text there)."""
    return next((j for j in range(1, len(reference)) if reference[j] not in reference[:j]), 0)


@pytest.fixture(scope="module")
def eos_case(tiny_target):
    """A prompt, the target's greedy text up to a token declared end-of-text, and the target that stops there."""
    ids = tiny_target.encode(PROMPTS[2])
    reference = greedy_reference(tiny_target, ids, 12)
    j = first_new_token(reference)
    return ids, reference[: j + 1], dataclasses.replace(tiny_target, eos_ids=frozenset({reference[j]}))


def test_eos_inside_a_model_draft_ends_the_text_without_a_bonus(tiny_target, eos_case):
    ids, expected, as_eos = eos_case
    steps = decode(as_eos, tiny_target, ids, k=8, max_new_tokens=20)
    assert output(steps) == expected
    last = steps[-1].detail
    assert last["ended"] and last["next_token"] is None and last["next_kind"] is None
    assert last["draft_tokens"][-1] == expected[-1], "the draft stopped at the EOS, which was accepted"
    assert len(last["draft_tokens"]) < 8
    assert all(p["status"] == "accepted" for p in last["positions"])


def test_eos_inside_a_lookup_draft_ends_the_text_without_a_bonus(smollm2):
    ids = smollm2.encode("One, two, three, four. One, two, three, four. One, two,")
    four = smollm2.encode(" four")[0]
    as_eos = dataclasses.replace(smollm2, eos_ids=frozenset({four}))
    steps = decode(as_eos, None, ids, k=6, drafter="ngram", max_new_tokens=12)
    reference = greedy_reference(as_eos, ids, 12)
    assert output(steps) == reference and reference[-1] == four
    last = steps[-1].detail
    assert last["draft_tokens"][-1] == four and last["accepted"] == len(last["draft_tokens"])
    assert last["next_token"] is None and last["ended"]


def test_eos_as_the_targets_own_token_ends_the_text(tiny_draft, eos_case):
    ids, expected, as_eos = eos_case
    steps = decode(as_eos, tiny_draft, ids, k=3, max_new_tokens=20)
    assert output(steps) == expected
    assert steps[-1].detail["ended"] and steps[-1].detail["next_token"] == expected[-1]   # the target's own token


@pytest.mark.parametrize("k,budget,drafts", [(4, 7, [4, 1]), (8, 5, [4]), (3, 9, [3, 3, 0]), (2, 1, [0])])
def test_max_new_tokens_reached_mid_draft(tiny_target, k, budget, drafts):
    """The last iteration drafts only what the budget can keep, so the run stops exactly at it."""
    ids = tiny_target.encode(PROMPTS[2])
    steps = decode(tiny_target, tiny_target, ids, k=k, max_new_tokens=budget)
    assert output(steps) == greedy_reference(tiny_target, ids, budget)
    assert [len(s.detail["draft_tokens"]) for s in steps] == drafts


def test_sampled_runs_stop_exactly_at_max_new_tokens(tiny_target, near_copy):
    ids = tiny_target.encode(PROMPTS[0])
    for seed in range(4):
        steps = decode(tiny_target, near_copy, ids, seed, k=5, max_new_tokens=13, temperature=1.0, top_k=8)
        assert len(output(steps)) == 13


# ----------------------------------------------------------------------------- caches and counters

def test_caches_are_reused_and_cropped(tiny_target, near_copy):
    ids = tiny_target.encode(PROMPTS[1])
    steps = decode(tiny_target, near_copy, ids, 3, k=4, max_new_tokens=30, temperature=1.0, top_k=8)
    made = 0
    for s in steps:
        d = s.detail
        m = len(d["draft_tokens"])
        before, after, cropped = d["target_cache"]
        assert s.tokens_fed == (len(ids) if s.index == 0 else 1) + m     # only what the cache lacks
        assert after == before + s.tokens_fed
        made += len(s.committed_ids)
        assert cropped == len(ids) + made - 1                             # all but the pending token
        d_before, d_after, d_cropped = d["draft_cache"]
        assert s.draft_forwards == m
        if m:
            assert d_after == len(ids) + made - len(s.committed_ids) + m - 1
        assert d_cropped == min(d_after, cropped)
    assert any(s.detail["accepted"] < len(s.detail["draft_tokens"]) for s in steps)
    assert any(s.detail["accepted"] > 0 for s in steps)


def test_recorded_p_and_q_are_what_the_models_give(tiny_target, near_copy):
    """p from a fresh target forward over the draft; q from fresh draft forwards: q is exactly the
    distribution each token was sampled from, and both went through the same processing."""
    ids = tiny_target.encode(PROMPTS[3])
    settings = {"k": 4, "max_new_tokens": 8, "temperature": 0.8, "top_p": 0.9}
    step = decode(tiny_target, near_copy, ids, 5, **settings)[0]
    s = SpeculativeConfig(**settings).sampling
    tokens = step.detail["draft_tokens"]
    p = probabilities(tiny_target.forward(tiny_target.new_kv(), ids + tokens)[len(ids) - 1:], s)
    for i, pos in enumerate(step.detail["positions"]):
        q = probabilities(near_copy.forward(near_copy.new_kv(), ids + tokens[:i])[-1], s)
        assert pos["p"] == pytest.approx(float(p[i, tokens[i]]), rel=1e-4, abs=1e-7)
        assert pos["q"] == pytest.approx(float(q[tokens[i]]), rel=1e-4, abs=1e-7)
        assert pos["q"] > 0
        assert [t for t, _ in pos["q_top"]] == [t for t, _ in top(q, 5)]
        assert [t for t, _ in pos["p_top"]] == [t for t, _ in top(p[i], 5)]
    assert [t for t, _ in step.detail["bonus_p_top"]] == [t for t, _ in top(p[len(tokens)], 5)]


def test_recorded_draws_reproduce_every_decision(tiny_target, near_copy):
    ids = tiny_target.encode(PROMPTS[0])
    statuses = set()
    for seed in range(3):
        for s in decode(tiny_target, near_copy, ids, seed, k=4, max_new_tokens=20, temperature=1.0, top_k=8):
            d, alive = s.detail, True
            for pos in d["positions"]:
                assert pos["ratio"] == pytest.approx(min(1.0, pos["p"] / pos["q"]), rel=1e-5)
                kept = alive and pos["u"] <= pos["ratio"]
                want = "accepted" if kept else "rejected" if alive else "not_reached"
                assert pos["status"] == want
                statuses.add(want)
                alive = kept
                assert 0 < pos["u"] <= 1
            assert d["accepted"] == sum(p["status"] == "accepted" for p in d["positions"])
            kind = "bonus" if d["accepted"] == len(d["positions"]) else "resampled"
            assert d["next_kind"] == kind
            assert list(s.committed_ids) == d["draft_tokens"][:d["accepted"]] + [d["next_token"]]
    assert statuses == {"accepted", "rejected", "not_reached"}


def test_greedy_records_no_draws_and_its_decisions_follow_the_argmax(tiny_target, near_copy):
    ids = tiny_target.encode(PROMPTS[2])
    for s in decode(tiny_target, near_copy, ids, k=4, max_new_tokens=16):
        alive = True
        for pos in s.detail["positions"]:
            assert pos["u"] is None and pos["ratio"] is None
            kept = alive and pos["token"] == pos["target_token"]
            assert pos["status"] == ("accepted" if kept else "rejected" if alive else "not_reached")
            alive = kept


def test_same_seed_same_trace_and_another_seed_differs(tiny_target, near_copy):
    ids = tiny_target.encode(PROMPTS[1])
    settings = {"k": 3, "max_new_tokens": 12, "temperature": 1.0, "top_p": 0.95}
    strip = lambda steps: [untimed(s.to_dict()) for s in steps]
    a = decode(tiny_target, near_copy, ids, 11, **settings)
    b = decode(tiny_target, near_copy, ids, 11, **settings)
    c = decode(tiny_target, near_copy, ids, 12, **settings)
    assert strip(a) == strip(b)
    assert output(a) != output(c)


# ----------------------------------------------------------------------------- sampling is lossless

FIRST_TOKEN = {"k": 1, "max_new_tokens": 3, "temperature": 1.0, "top_k": 8}
SEEDS = 300
LEVEL = 1e-3   # the right rule must pass the test at this level and the wrong rule must fail it


def first_tokens(target: LM, draft: LM, ids: list[int], **settings) -> torch.Tensor:
    cfg = SpeculativeConfig(**(FIRST_TOKEN | settings))
    return torch.tensor([next(speculative(target, draft, ids, cfg, torch.Generator().manual_seed(seed)))
                         .committed_ids[0] for seed in range(SEEDS)])


@pytest.fixture(scope="module")
def first_token_setup(tiny_target, near_copy):
    ids = tiny_target.encode(PROMPTS[0])
    s = SpeculativeConfig(**FIRST_TOKEN).sampling
    p = probabilities(tiny_target.forward(tiny_target.new_kv(), ids)[-1], s)
    q = probabilities(near_copy.forward(near_copy.new_kv(), ids)[-1], s)
    alpha = float(torch.minimum(p, q).sum())
    assert 0.2 < alpha < 0.9, f"the near copy should sometimes agree and sometimes not (alpha = {alpha:.2f})"
    return ids, p


def test_first_token_is_distributed_as_the_targets(tiny_target, near_copy, first_token_setup):
    ids, p = first_token_setup
    assert chi_square_p_value(first_tokens(tiny_target, near_copy, ids), p) > LEVEL


def test_a_wrong_rule_fails_the_same_chi_square_test(tiny_target, near_copy, first_token_setup, monkeypatch):
    """Resampling from p instead of the residual after a rejection: the engine's output drifts toward q."""
    ids, p = first_token_setup
    monkeypatch.setattr(engine, "correction", lambda p, q, n: p[n])
    assert chi_square_p_value(first_tokens(tiny_target, near_copy, ids), p) < LEVEL


# ----------------------------------------------------------------------------- block verification

@pytest.mark.parametrize("k", [1, 3, 8])
def test_block_verification_under_greedy_equals_generate(tiny_target, tiny_draft, near_copy, k):
    for draft in (tiny_draft, near_copy, tiny_target):
        ids = tiny_target.encode(PROMPTS[2])
        steps = decode(tiny_target, draft, ids, k=k, max_new_tokens=16, verification="block")
        assert output(steps) == greedy_reference(tiny_target, ids, 16)
        assert all(s.detail["block"]["accepted"] == s.detail["block"]["token_accepted"] for s in steps)


def test_block_first_token_is_distributed_as_the_targets(tiny_target, near_copy, first_token_setup):
    """k = 3: the first token depends on the stop chances of the whole block, not only on min(1, p/q)."""
    ids, p = first_token_setup
    assert chi_square_p_value(first_tokens(tiny_target, near_copy, ids, k=3, verification="block"), p) > LEVEL


def test_recorded_block_numbers_reproduce_its_decision_and_the_token_rules(tiny_target, near_copy):
    ids, longer = tiny_target.encode(PROMPTS[0]), 0
    for seed in range(3):
        for s in decode(tiny_target, near_copy, ids, seed, k=4, max_new_tokens=20, temperature=1.0, top_k=8,
                        verification="block"):
            d, b = s.detail, s.detail["block"]
            w, u = 1.0, [pos["u"] for pos in d["positions"]]
            for pos, weight in zip(d["positions"], b["weights"]):   # p_i = min(p_{i-1} p(x_i) / q(x_i), 1)
                w = min(w * pos["p"] / pos["q"], 1.0)
                assert weight == pytest.approx(w, rel=1e-4, abs=1e-7)
            if u:
                assert b["stop_chances"][-1] == b["weights"][-1]
            assert b["passed"] == [ui <= h for ui, h in zip(u, b["stop_chances"])]
            assert d["accepted"] == b["accepted"] == max([i + 1 for i, ok in enumerate(b["passed"]) if ok], default=0)
            token = next((i for i, pos in enumerate(d["positions"]) if pos["u"] > pos["ratio"]), len(u))
            assert b["token_accepted"] == token
            assert list(s.committed_ids) == d["draft_tokens"][:d["accepted"]] + [d["next_token"]]
            longer += b["accepted"] > token
    assert longer, "block verification should keep a prefix the token rule refused somewhere"


def test_block_verification_refuses_typical_acceptance():
    with pytest.raises(ValueError, match="Block verification is an exact rule"):
        SpeculativeConfig(verification="block", acceptance="typical")


# ----------------------------------------------------------------------------- drafters and schedule

def test_prompt_lookup_proposes_what_followed_the_latest_match():
    text = [1, 2, 3, 9, 1, 2, 3, 4, 5, 6, 7, 1, 2, 3]
    d = draft_by_lookup(text, 3, 3, frozenset())
    assert d.tokens == [4, 5, 6] and d.lookup == {"ngram_tokens": [1, 2, 3], "match_at": 4, "n": 3}
    assert draft_by_lookup(text, 9, 3, frozenset()).tokens == [4, 5, 6, 7, 1, 2, 3]
    assert draft_by_lookup(text, 3, 3, frozenset({5})).tokens == [4, 5]          # stops after an EOS
    assert draft_by_lookup([7, 8, 3, 5, 3], 2, 3, frozenset()).tokens == [5, 3]   # falls back to 1-gram
    assert draft_by_lookup([1, 2, 3], 4, 3, frozenset()).tokens == []
    assert draft_by_lookup([1, 2, 3], 4, 3, frozenset()).lookup is None


def test_adaptive_schedule_follows_the_transformers_heuristic(tiny_target, near_copy):
    assert [next_k(4, 4, 4, "adaptive"), next_k(4, 2, 4, "adaptive"), next_k(1, 0, 1, "adaptive"),
            next_k(16, 16, 16, "adaptive"), next_k(4, 2, 4, "constant")] == [6, 3, 1, 16, 4]
    ids = tiny_target.encode(PROMPTS[0])
    steps = decode(tiny_target, tiny_target, ids, k=2, schedule="adaptive", max_new_tokens=40)
    assert [s.detail["k"] for s in steps][:4] == [2, 4, 6, 8]
    assert output(steps) == greedy_reference(tiny_target, ids, 40)
    moves = set()
    for seed in range(3):
        k = 6
        for s in decode(tiny_target, near_copy, ids, seed, k=k, schedule="adaptive", max_new_tokens=40,
                        temperature=1.0, top_k=8):
            d = s.detail
            if d["draft_tokens"] and not d["ended"]:
                kept_all = d["accepted"] == len(d["draft_tokens"])
                assert d["k_next"] == (min(16, k + 2) if kept_all else max(1, k - 1))
                moves.add(kept_all)
            k = d["k_next"]
    assert moves == {True, False}, "both directions of the schedule should occur"


@pytest.mark.parametrize("settings,match", [({"k": 0}, "k must be between 1 and 16"), ({"k": 17}, "k must"),
                                            ({"drafter": "oracle"}, "drafter must be one of"),
                                            ({"schedule": "fast"}, "schedule must be one of"),
                                            ({"lookup_ngram": 0}, "lookup n-gram")])
def test_bad_settings_are_refused_in_one_sentence(settings, match):
    with pytest.raises(ValueError, match=match):
        SpeculativeConfig(**settings)


def test_model_drafter_without_a_draft_is_refused(tiny_target):
    with pytest.raises(ValueError, match="needs a draft model"):
        decode(tiny_target, None, [1, 2, 3])


# ----------------------------------------------------------------------------- trace, CLI and figures

@pytest.fixture(scope="module")
def traces(tiny_target, tiny_draft):
    near = tiny_target.source
    runs = {"sampled": ({"k": 4, "temperature": 1.0, "top_k": 8, "max_new_tokens": 14}, near),
            "sampled, rejected": ({"k": 4, "temperature": 1.0, "top_p": 0.9, "max_new_tokens": 6}, tiny_draft.source),
            "greedy": ({"k": 3, "max_new_tokens": 10}, tiny_draft.source),
            "lookup": ({"k": 4, "drafter": "ngram", "max_new_tokens": 12}, tiny_draft.source),
            "adaptive": ({"k": 2, "schedule": "adaptive", "max_new_tokens": 12}, near),
            "block": ({"k": 4, "temperature": 1.0, "top_k": 8, "max_new_tokens": 14, "verification": "block"},
                      tiny_draft.source),
            "block, greedy": ({"k": 3, "max_new_tokens": 10, "verification": "block"}, tiny_draft.source)}
    return {name: Run("speculative", PROMPTS[0] + " " + PROMPTS[0], settings, target=tiny_target.source,
                      draft=draft, seed=2).run() for name, (settings, draft) in runs.items()}


def test_trace_round_trips_and_knows_every_token_text(traces):
    for trace in traces.values():
        again = Trace.from_json(trace.to_json())
        assert again.to_json() == trace.to_json()
        for s in trace.steps:
            for pos in s.detail["positions"]:
                assert pos["token"] in trace.token_texts and pos["target_token"] in trace.token_texts
                assert all(t in trace.token_texts for t, _ in pos["p_top"] + pos["q_top"])


def test_every_view_function_works_for_every_step(traces):
    view = VIEWS["speculative"]
    for name, trace in traces.items():
        for i in range(-1, len(trace.steps)):
            for fig in (view.main(trace, i), view.side(trace, i)):
                assert figure_bytes(fig) < 100_000
                assert all(t.hoverinfo == "text" or t.hovertemplate for t in fig.data), name
            assert view.words(trace, i)
            if i >= 0:
                d = trace.steps[i].detail
                chips = view.chips(trace, i)
                assert [c.status for c in chips][: len(d["positions"])] == [p["status"] for p in d["positions"]]
                # a step that drafted nothing shows its one token as the target's own choice
                assert [c.token_id for c in chips if c.status in ("accepted", "resampled", "bonus", "chosen")] == \
                    list(trace.steps[i].committed_ids)


def test_words_explain_each_decision_with_its_numbers(traces):
    view = VIEWS["speculative"]
    for trace in (traces["sampled"], traces["sampled, rejected"]):
        for i, s in enumerate(trace.steps):
            text = view.words(trace, i)
            for pos in s.detail["positions"]:
                if pos["status"] != "not_reached":
                    assert f"u = {pos['u']:.3f}" in text and f"= {pos['ratio']:.3f}" in text
            assert "1 target forward" in text
    assert "residual" in view.words(traces["sampled, rejected"], 0)
    greedy = traces["greedy"]
    assert "argmax" in view.words(greedy, 0)
    assert any("Prompt lookup" in view.words(traces["lookup"], i) for i in range(len(traces["lookup"].steps)))


def test_the_coin_row_draws_u_against_min_1_p_over_q_where_the_target_looked(traces):
    """Every examined position shows its recorded u and acceptance region; a position after the rejection
    shows no coin (its draw was never used) and says so."""
    view, cut_short = VIEWS["speculative"], 0
    for trace in (traces["sampled"], traces["sampled, rejected"]):
        for i, s in enumerate(trace.steps):
            fig = view.main(trace, i).to_plotly_json()
            data, notes = fig["data"], fig["layout"].get("annotations", [])
            examined = [p for p in s.detail["positions"] if p["status"] != "not_reached"]
            assert [t["x"][0] for t in data if t.get("name") == "u, the uniform draw"] == [p["u"] for p in examined]
            assert [t["x"][0] for t in data if t.get("name") == "min(1, p/q): accept region"] == \
                [p["ratio"] for p in examined]
            unused = sum(p["status"] == "not_reached" for p in s.detail["positions"])
            assert sum("not reached: an earlier draft was rejected" in str(t.get("hovertext")) for t in data + notes) \
                == unused
            cut_short += unused > 0
    assert cut_short, "some draft should have been cut short by a rejection"


def test_running_stats_match_the_formula():
    from engines.analysis.theory import expected_tokens
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 3) == pytest.approx((1 - 0.5 ** 4) / 0.5)


@pytest.mark.parametrize("drafter", ["model", "ngram"])
def test_cli_trace(tiny_target, tiny_draft, drafter, capsys):
    code = cli(["trace", "--method", "speculative", "--prompt", PROMPTS[0], "--k", "4", "--drafter", drafter,
                "--target", tiny_target.source, "--draft", tiny_draft.source, "--max-new-tokens", "6"])
    assert code == 0
    trace = json.loads(capsys.readouterr().out)
    assert trace["config"]["k"] == 4 and trace["config"]["drafter"] == drafter
    assert len(trace["output_ids"]) == 6


def test_cli_refuses_a_bad_k(tiny_target, capsys):
    code = cli(["trace", "--method", "speculative", "--prompt", "x", "--k", "0", "--drafter", "ngram",
                "--target", tiny_target.source, "--draft", tiny_target.source])
    assert code == 2 and "k must be between 1 and 16" in capsys.readouterr().err
