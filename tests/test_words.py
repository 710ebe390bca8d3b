"""What the explorer says and shows is true of the recorded steps (issue 21, "Say what is true", "Tokens as text").

Each test builds the situation (synthetic steps from tests/synthetic.py, or a tiny model from tests/conftest.py)
and reads the words, figures and chips the explorer makes of it.
"""
from __future__ import annotations

import dataclasses
import json
import random

import pytest

from engines.__main__ import main as cli_main
from engines.analysis.bench_table import tables
from engines.analysis.race import CostModel, Point, Race, Row, explain
from engines.analysis.race import table as race_table
from engines.analysis.theory import expected_tokens
from engines.analysis.verify_draft import verify_draft_trace
from engines.models.token_text import has_bytes, joined, readable
from engines.schema import trace_schema
from explorer import render
from explorer.figures import mask_predict as mask_figures
from explorer.figures import race as race_figures
from explorer.figures import speculative as speculative_figures
from explorer.figures import tree as tree_figures
from explorer.figures.common import MASK_GLYPH, chips_html
from tests import synthetic

# ----------------------------------------------------------------------------- the command line

def test_tree_trace_with_the_suffix_drafter_is_accepted_from_the_command_line(tiny_target, capsys):
    code = cli_main(["trace", "--method", "tree", "--drafter", "suffix", "--prompt", "Once upon a time",
                     "--max-new-tokens", "4", "--target", tiny_target.source])
    out, err = capsys.readouterr()
    assert code == 0, err
    trace = json.loads(out)
    assert trace["method"] == "tree" and trace["config"]["drafter"] == "suffix"


def test_a_drafter_the_method_lacks_is_refused_in_one_sentence(tiny_target, capsys):
    code = cli_main(["trace", "--method", "speculative", "--drafter", "suffix", "--prompt", "Once upon a time",
                     "--max-new-tokens", "4", "--target", tiny_target.source])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: ") and "suffix" in err and "Traceback" not in err


def test_schema_command_prints_the_published_trace_schema(capsys):
    assert cli_main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == trace_schema()


# ----------------------------------------------------------------------------- 1. a suffix tree that matched nothing

def suffix_miss_trace():
    """A tree run with the suffix drafter, 16 new tokens: three one-token steps, then a step whose suffix tree
    held no continuation of the text (13 tokens still to generate)."""
    rnd = random.Random(1)
    steps = [synthetic.tree_step(rnd, i, shape="dynamic", budget=16, depth=4, topk=3, room=0, greedy=True,
                                 produced=i, max_new_tokens=16, drafter="suffix") for i in range(4)]
    for s in steps:
        s.detail["suffix_match"] = {"length": 0, "tokens": [], "occurrences": 0}
    config = synthetic.tree_config(shape="dynamic", budget=16, depth=4, topk=3, greedy=True, max_new_tokens=16,
                                   drafter="suffix")
    return synthetic.trace_of("tree", steps, config)


def test_a_suffix_tree_that_matched_nothing_is_called_so_not_a_spent_budget():
    trace = suffix_miss_trace()
    said = tree_figures.words(trace, 3)
    assert "Only one token was left" not in said
    assert "13 tokens were left" in said and "suffix tree matched nothing" in said
    assert "plain target forward" in said
    title = tree_figures.draft_tree(trace, 3).layout.title.text.replace("<br>", " ")   # long titles wrap
    assert "0 nodes" not in title and "suffix tree matched nothing" in title and "plain target forward" in title


def test_the_last_token_of_the_budget_is_still_called_the_last():
    rnd = random.Random(2)
    steps = [synthetic.tree_step(rnd, i, shape="dynamic", budget=16, depth=4, topk=3, room=0, greedy=True,
                                 produced=i, max_new_tokens=2) for i in range(2)]
    trace = synthetic.trace_of("tree", steps, synthetic.tree_config(shape="dynamic", budget=16, depth=4, topk=3,
                                                                    greedy=True, max_new_tokens=2))
    assert "Only one token was left to generate" in tree_figures.words(trace, 1)
    assert "one token left" in tree_figures.draft_tree(trace, 1).layout.title.text


# ----------------------------------------------------------------------------- 2. speculative with nothing drafted

def lookup_miss_trace(greedy: bool):
    """Speculative with the n-gram drafter whose first step found no match: nothing drafted."""
    rnd = random.Random(3)
    step = synthetic.speculative_step(rnd, 0, k=4, drafted=0, accepted=0, greedy=greedy, drafter="ngram",
                                      max_new_tokens=16)
    config = synthetic.speculative_config(k=4, greedy=greedy, drafter="ngram", schedule="constant",
                                          max_new_tokens=16)
    return synthetic.trace_of("speculative", [step], config)


def annotation_texts(fig) -> list[str]:
    return [a.text for a in fig.layout.annotations]


@pytest.mark.parametrize("greedy", [True, False])
def test_a_step_that_drafted_nothing_is_a_plain_target_forward_in_figure_side_panel_chips_and_words(greedy):
    trace = lookup_miss_trace(greedy)
    said = speculative_figures.words(trace, 0)
    assert "plain target forward" in said and "prompt lookup found no" in said.lower() and "bonus" not in said
    main = speculative_figures.draft_check(trace, 0)
    texts = [main.layout.title.text, *annotation_texts(main)]
    assert "plain target forward" in main.layout.title.text and "prompt lookup found no match" in main.layout.title.text
    assert not any("bonus" in t.lower() for t in texts)
    # one panel, and it has the target's distribution with the token it chose
    assert [k for k in main.layout.to_plotly_json() if k.startswith("xaxis")] == ["xaxis"]
    assert len(main.data) == 1 and len(main.data[0].x) >= 1
    side = speculative_figures.next_token_and_stats(trace, 0)
    side_texts = annotation_texts(side)
    assert not any("bonus" in t.lower() for t in side_texts)
    assert any("target's own token" in t for t in side_texts)
    # no panels for a cost model that has no α to draw with, and no note standing in for them
    assert not any("no α" in t for t in side_texts)
    assert not any(k.startswith(("xaxis3", "xaxis4")) for k in side.layout.to_plotly_json())
    used = {(t.xaxis or "x") for t in side.data}
    axes = {k.replace("axis", "") for k in side.layout.to_plotly_json() if k.startswith("xaxis")}
    assert axes <= used | {"x"}, "every subplot draws something"
    (chip,) = speculative_figures.chips(trace, 0)
    assert chip.status == "chosen" and chip.token_id == trace.steps[0].detail["next_token"]


def test_a_drafted_step_still_has_its_bonus_and_cost_panels():
    rnd = random.Random(4)
    step = synthetic.speculative_step(rnd, 0, k=3, drafted=3, accepted=3, greedy=True, drafter="ngram")
    trace = synthetic.trace_of("speculative", [step], synthetic.speculative_config(
        k=3, greedy=True, drafter="ngram", schedule="constant", max_new_tokens=64))
    assert any("bonus" in t for t in annotation_texts(speculative_figures.draft_check(trace, 0)))
    side = speculative_figures.next_token_and_stats(trace, 0)
    assert any(t.startswith("Bonus token") for t in annotation_texts(side))
    assert "xaxis4" in side.layout.to_plotly_json()
    assert speculative_figures.chips(trace, 0)[-1].status == "bonus"


# ----------------------------------------------------------------------------- 7. the expected tokens per iteration

def heads_trace(first_drafts: int):
    """Speculative with Medusa heads, k = 4: a first step drafting `first_drafts`, then two drafting 4 with one
    kept each, so α = accepted / examined = 1/2 over the last two."""
    rnd = random.Random(5)
    steps = [synthetic.speculative_step(rnd, 0, k=4, drafted=first_drafts, accepted=first_drafts // 2,
                                        greedy=True, drafter="heads")]
    steps += [synthetic.speculative_step(rnd, i, k=4, drafted=4, accepted=1, greedy=True, drafter="heads",
                                         produced=i * 2) for i in (1, 2)]
    config = synthetic.speculative_config(k=4, greedy=True, drafter="heads", schedule="constant", max_new_tokens=64)
    return synthetic.trace_of("speculative", steps, config)


def test_expected_tokens_name_how_they_were_computed_when_steps_drafted_fewer_than_k():
    trace = heads_trace(first_drafts=0)      # the heads had no verification to read: nothing drafted
    said = speculative_figures.words(trace, 2)
    alpha = speculative_figures.running(trace, 2).alpha[-1]
    assert alpha == 0.5
    assert f"{expected_tokens(0.5, 4):.2f}" == "1.94" and "1.94" in said
    assert "each iteration's own draft length" in said and "1 of 3 iterations" in said
    mean = (expected_tokens(0.5, 0) + 2 * expected_tokens(0.5, 4)) / 3
    assert f"{mean:.2f} expected: (1 - α^(k+1)) / (1 - α) at each" in said


def test_expected_tokens_at_one_k_are_the_formula_at_that_k():
    trace = heads_trace(first_drafts=4)
    said = speculative_figures.words(trace, 2)
    alpha = speculative_figures.running(trace, 2).alpha[-1]
    assert f"{expected_tokens(alpha, 4):.2f} expected from (1 - α^(k+1)) / (1 - α) at k = 4" in said


# ----------------------------------------------------------------------------- 9. Be the drafter

def test_a_typed_draft_says_why_it_has_no_cost_model_and_that_it_has_no_q_distribution(tiny_target):
    trace = verify_draft_trace("Once upon a time", " there was a", tiny_target.source)
    said = speculative_figures.words(trace, 0)
    assert "recorded before runs measured" not in said
    assert "Cost model:** not measured for this trace (Be the drafter verifies one typed draft" in said
    main = speculative_figures.draft_check(trace, 0)
    q_names = {t.name for t in main.data if t.legendgroup == "q"}
    assert q_names == {"q = 1 on the typed token (a typed draft has no distribution)"}
    side = speculative_figures.next_token_and_stats(trace, 0)
    hovers = [a.hovertext or "" for a in side.layout.annotations]
    assert not any("recorded before" in h for h in hovers)


def test_a_draft_model_keeps_its_temperature_1_q():
    rnd = random.Random(6)
    step = synthetic.speculative_step(rnd, 0, k=2, drafted=2, accepted=1, greedy=True, drafter="model")
    trace = synthetic.trace_of("speculative", [step], synthetic.speculative_config(
        k=2, greedy=True, drafter="model", schedule="constant", max_new_tokens=64))
    q_names = {t.name for t in speculative_figures.draft_check(trace, 0).data if t.legendgroup == "q"}
    assert q_names == {"q, draft (temperature 1)"}


# ----------------------------------------------------------------------------- 3. one direction: speedup

def race_row(label: str, method: str, wall_s: float, reference_s: float, settings: dict | None = None) -> Row:
    return Row(label=label, method=method, settings=settings or {}, new_tokens=8, iterations=4, target_forwards=4,
               draft_forwards=0, tokens_per_target_forward=2.0, tokens_fed_per_forward=3.0, wall_s=wall_s,
               wall_ratio=wall_s / reference_s, equals_greedy=True, first_difference=None, acceptance_rate=0.5,
               tokens_per_iteration=2.0, drafts_accepted=4, drafts_examined=8, committed_per_forward=[2, 2, 2, 2],
               step_wall_s=[wall_s / 4] * 4, output_ids=[10, 11, 12, 13, 14, 15, 16, 17], output_text="x")


def speed_race() -> Race:
    """Autoregressive 1.0 s; prompt lookup 0.56 s (1.79x faster); the model drafter 1.15 s (slower, 0.87x)."""
    rows = [race_row("autoregressive", "autoregressive", 1.0, 1.0),
            race_row("speculative, ngram k=4", "speculative", 0.56, 1.0, {"drafter": "ngram", "k": 4}),
            race_row("speculative, model k=4", "speculative", 1.15, 1.0, {"drafter": "model", "k": 4})]
    points = [Point(r.label, 4, 0.5, 0.0, 2.0, expected_tokens(0.5, 4), r.speedup, 1.5, 4, 1.5) for r in rows[1:]]
    cost = CostModel(0.01, None, None, [1, 5], [1.0, 1.2], points, explain(None, [1, 5], [1.0, 1.2], points))
    return Race("Once upon a time", "tiny-target", "tiny-draft", 8, rows, cost, {})


def test_the_race_says_speedup_in_one_direction_in_table_lanes_words_and_cost_figure():
    r = speed_race()
    table = race_figures.table_markdown(r)
    assert "| 1.79x |" in table and "| 0.87x |" in table and "0.56x" not in table and "1.15x" not in table
    assert "speedup vs AR" in table and "ratio to AR" not in table
    lanes = [race_figures.lane(x) for x in r.rows]
    assert "speedup 1.79x" in lanes[1] and "speedup 0.87x" in lanes[2]
    assert "measured 1.79x" in r.cost.words and "measured 0.87x" in r.cost.words
    drawn = json.dumps(race_figures.cost_figure(r).to_plotly_json()["data"], ensure_ascii=False)
    assert "speedup 1.79x" in drawn and "speedup 0.87x" in drawn
    text = race_table(r)
    assert " 1.79x" in text and " 0.87x" in text and "above 1 is faster" in text and "lower is faster" not in text


def test_the_bench_tables_give_speedups_above_1_for_faster():
    races = [speed_race().to_dict()]
    data = {"command": "python -m engines bench --json b.json", "target": "tiny-target", "max_new_tokens": 8,
            "race": races, "speculative_vs_transformers": [
                {"method": "speculative", "target": "tiny-target", "new_tokens": 8, "target_forwards_per_token": 0.4,
                 "acceptance": 0.5, "same_output_as_generate": 1.0, "wall_ratio_vs_assisted_generate": 0.8,
                 "run_wall_ratio_vs_assisted_generate": 1.25}]}
    text = tables(data, "b.json")
    assert "| speculative, ngram k=4 |" in text and "| 1.79x | 1/1 |" in text and "| 0.87x | 1/1 |" in text
    assert "| 1.25x | 0.80x |" in text
    assert "below 1 is faster" not in text and "wall time / autoregressive" not in text


# ----------------------------------------------------------------------------- 6. tokens that hold bytes of a character

MIXED = "😀 שלום مرحبا 日本"


def test_a_token_that_holds_part_of_a_character_reads_as_its_bytes_never_as_the_replacement_mark(tiny_target):
    ids = tiny_target.encode(MIXED)
    texts = [tiny_target.token_text(i) for i in ids]
    assert not any("\ufffd" in t for t in texts), texts
    assert texts[0] == "<0xF0><0x9F>"        # SmolLM2's byte-level BPE splits the emoji's 4 bytes over tokens
    assert any(has_bytes(t) for t in texts[1:])
    assert joined(texts) == MIXED == tiny_target.decode(ids)
    eos = min(tiny_target.eos_ids)       # a special token keeps its name
    assert tiny_target.token_text(eos) == tiny_target.tokenizer.decode([eos], skip_special_tokens=False)


def test_bytes_that_are_not_a_whole_character_are_written_as_bytes():
    assert readable("😀".encode()[:2]) == "<0xF0><0x9F>"
    assert readable(b"a" + "ש".encode() + "日".encode()[:1]) == "aש<0xE6>"
    assert joined(["<0xF0><0x9F>", "<0x98>", "<0x80>", " hi"]) == "😀 hi"
    assert joined(["<b>", "<0xD7>"]) == "<b><0xD7>"       # only <0xNN> escapes are bytes


def emoji_trace(model):
    """A speculative step whose three drafted tokens are the bytes of one emoji, all accepted."""
    ids = model.encode("😀")
    rnd = random.Random(7)
    step = synthetic.speculative_step(rnd, 0, k=len(ids), drafted=len(ids), accepted=len(ids), greedy=True,
                                      drafter="model")
    d = step.detail
    d["draft_tokens"] = list(ids)
    for pos, t in zip(d["positions"], ids):
        pos.update(token=t, target_token=t, p_top=[(t, 1.0)], q_top=[(t, 1.0)])
    step = dataclasses.replace(step, committed_ids=(*ids, step.committed_ids[-1]))
    trace = synthetic.trace_of("speculative", [step], synthetic.speculative_config(
        k=len(ids), greedy=True, drafter="model", schedule="constant", max_new_tokens=64))
    trace.token_texts.update({i: model.token_text(i) for i in ids})
    return trace, ids


def test_byte_tokens_show_their_bytes_on_chips_and_axes_and_join_into_the_character_in_text_and_words(tiny_target):
    trace, ids = emoji_trace(tiny_target)
    chips = render.text_chips(trace, 0)
    page = chips_html(trace, chips)
    assert "\ufffd" not in page
    assert "&lt;0xF0&gt;&lt;0x9F&gt;" in page
    assert '<span class="char-joined">😀</span>' in page and 'class="chip-char"' in page
    assert page.count('class="chip chip-') == len(chips)       # every token keeps its own chip
    said = speculative_figures.words(trace, 0)
    assert '"<0xF0><0x9F>"' in said and 'together "😀"' in said and "\ufffd" not in said
    main = speculative_figures.draft_check(trace, 0)
    ticks = [x for t in main.data if t.type == "bar" for x in (t.x or ())]
    assert "<0xF0><0x9F>" in ticks and not any("\ufffd" in x for x in ticks)


# ----------------------------------------------------------------------------- 4, 5, 8. mask-predict

def masked_trace(strategy: str, length: int = 24, iterations: int = 6, steady: bool = False):
    """A real mask-predict run on a stub masked LM whose mask token is named <empty_output>, as
    smollm2-135m-diffusion's adapter names it."""
    steps, config = synthetic.mask_predict_steps(2, {"length": length, "iterations": iterations,
                                                     "max_new_tokens": length, "strategy": strategy},
                                                 steady=steady)
    trace = synthetic.trace_of("mask-predict", steps, config)
    trace.token_texts[synthetic.MASK] = "<empty_output>"
    return trace


@pytest.mark.parametrize("strategy", ["mask-predict", "diffusion"])
def test_a_mask_shows_as_the_mask_glyph_in_chips_axes_and_words_never_its_vocabulary_name(strategy):
    trace = masked_trace(strategy)
    for index in range(len(trace.steps) - 1):     # every iteration before the span is full holds masks
        page = chips_html(trace, render.text_chips(trace, index))
        assert "empty_output" not in page
        # diffusion leaves masks standing (mask-predict shows its re-masked guesses, struck through)
        assert MASK_GLYPH in page or strategy == "mask-predict"
        assert "empty_output" not in mask_figures.words(trace, index)
        for fig in (mask_figures.unmasking(trace, index), mask_figures.confidence_and_schedule(trace, index)):
            assert "empty_output" not in json.dumps(fig.to_plotly_json(), ensure_ascii=False, default=str)


def test_diffusion_never_calls_a_first_unmasking_a_correction():
    trace = masked_trace("diffusion")
    for index in range(len(trace.steps)):
        chips = mask_figures.chips(trace, index)
        assert not [c for c in chips if c.status == "resampled"], index
        assert not [c for c in chips if c.status == "rejected"], index     # and nothing is re-masked
        unmasked = trace.steps[index].detail["spans"][trace.steps[index].detail["best"]]["unmasked"]
        assert sum(c.status == "chosen" for c in chips) == len(unmasked)


def test_mask_predict_calls_a_correction_only_where_a_committed_token_was_re_masked_and_changed():
    trace = masked_trace("mask-predict", length=12, iterations=6)
    seen_correction = False
    for index in range(len(trace.steps)):
        held = {}
        for s in trace.steps[:index]:
            r = s.detail["spans"][s.detail["best"]]
            held.update({i: r["tokens"][i] for i in r["unmasked"]})
        r = trace.steps[index].detail["spans"][trace.steps[index].detail["best"]]
        for i, chip in enumerate(mask_figures.chips(trace, index)):
            if chip.status == "resampled":
                seen_correction = True
                assert i in r["unmasked"] and i in held and held[i] != chip.token_id
            elif i in r["unmasked"]:
                assert chip.status == "chosen" and held.get(i, chip.token_id) == chip.token_id
    assert seen_correction, "this run re-masks and changes a committed token at least once"


def test_mask_predict_stats_count_the_unmasked_positions_not_zero_tokens():
    trace = masked_trace("diffusion", length=24, iterations=6)
    r = trace.steps[1].detail["spans"][trace.steps[1].detail["best"]]
    unmasked = r["length"] - r["masks_after"]
    assert 0 < unmasked < 24 and not trace.steps[1].committed_ids
    line = render.stats_line(trace, 1)
    assert f"**span positions unmasked** {unmasked} of 24" in line
    assert "**tokens committed** 0 (the span is committed at its last iteration)" in line
    assert "**tokens** 0" not in line
    last = len(trace.steps) - 1
    assert f"**tokens committed** {len(trace.steps[last].committed_ids)}" in render.stats_line(trace, last)
