"""The race end to end on the tiny pair, its JSON from the command line, and the theory curves."""
import json

import pytest

from engines.analysis.race import (
    LEFT_OUT,
    Row,
    expected_speedup,
    expected_tokens,
    first_difference,
    lanes,
    race,
    timeline,
)
from engines.trace import Step

N = 12


@pytest.fixture(scope="module")
def tiny_race(tiny_target, tiny_draft):
    return race("Once upon a time", N, target=tiny_target.source, draft=tiny_draft.source)


def test_every_entry_runs_to_the_same_budget_and_lossless_ones_equal_greedy(tiny_race):
    assert [r.label for r in tiny_race.rows] == [e.label for e in lanes(tiny_race.target)]
    reference = tiny_race.rows[0]
    assert reference.method == "autoregressive" and reference.wall_ratio == 1.0
    for r in tiny_race.rows:
        assert r.equals_greedy and r.first_difference is None, r.label
        assert r.new_tokens == reference.new_tokens
        assert sum(r.committed_per_forward) == r.new_tokens
        assert len(r.committed_per_forward) == r.target_forwards
        assert r.tokens_per_target_forward == pytest.approx(r.new_tokens / r.target_forwards)
    assert "mask-predict" in tiny_race.left_out


def test_both_acceptance_definitions_are_reported(tiny_race):
    spec = next(r for r in tiny_race.rows if r.label.startswith("speculative, model"))
    assert spec.acceptance_rate == pytest.approx(spec.drafts_accepted / spec.drafts_examined)
    # every iteration yields its accepted drafts plus exactly one token of the target's own
    assert spec.tokens_per_iteration == pytest.approx((spec.drafts_accepted + spec.iterations) / spec.iterations)


def test_cost_model_measures_c_and_the_verify_cost(tiny_race):
    cost = tiny_race.cost
    assert cost.c is not None and cost.c > 0
    assert cost.verify_cost[0] == 1.0 and len(cost.verify_cost) == len(cost.verify_n)
    labels = {p.label for p in cost.points}
    assert any(label.startswith("speculative, model") for label in labels)
    assert "alpha" in cost.words and "c = " in cost.words


def test_race_json_carries_every_figure(capsys):
    from engines.__main__ import main
    assert main(["race", "--prompt", "Once upon a time", "--max-new-tokens", "6", "--target", "tiny-target",
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    needed = {"target_forwards", "draft_forwards", "tokens_per_target_forward", "tokens_fed_per_forward", "wall_s",
              "wall_ratio", "equals_greedy", "first_difference", "output_ids", "output_text",
              "committed_per_forward", "acceptance_rate", "tokens_per_iteration"}
    assert [r["label"] for r in d["rows"]] == [e.label for e in lanes("tiny-target")]
    for row in d["rows"]:
        assert needed <= row.keys()
    assert {"c", "verify_n", "verify_cost", "points", "words"} <= d["cost"].keys()
    assert d["left_out"] == LEFT_OUT


def test_theory():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(1.0, 4) == 5.0
    assert expected_tokens(0.5, 1) == pytest.approx(1.5)
    # a free draft and a flat verify cost: speedup is the expected tokens themselves
    assert expected_speedup(0.8, 3, 0.0, [1, 17], [1.0, 1.0]) == pytest.approx(expected_tokens(0.8, 3))


def test_timeline_and_first_difference():
    steps = [Step(0, (1, 2), target_forwards=1), Step(1, (3,), target_forwards=2), Step(2, (), target_forwards=0)]
    assert timeline(steps) == [2, 0, 1]
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2
    assert Row.__dataclass_fields__.keys() >= {"wall_ratio", "equals_greedy"}


def test_race_figures_show_one_mark_per_target_forward(tiny_race):
    from explorer.figures.race import (
        cost_figure,
        outputs_html,
        table_markdown,
        timeline_figure,
    )
    fig = timeline_figure(tiny_race)
    lanes = [t for t in fig.data if t.showlegend is False]
    assert [len(t.x) for t in lanes] == [r.target_forwards for r in tiny_race.rows]
    assert [list(t.x) for t in lanes] == [r.committed_per_forward for r in tiny_race.rows]
    assert any(t.x[0] == 4 for t in cost_figure(tiny_race).data if t.mode == "markers")   # the measured k
    table = table_markdown(tiny_race)
    assert all(r.label in table for r in tiny_race.rows) and "mask-predict" in table
    assert outputs_html(tiny_race).count("<tr>") == len(tiny_race.rows)


def test_outputs_mark_the_first_difference(tiny_race):
    import dataclasses

    from explorer.figures.race import outputs_html
    rows = list(tiny_race.rows)
    rows[1] = dataclasses.replace(rows[1], output_ids=rows[1].output_ids[:3] + [0] + rows[1].output_ids[4:],
                                  equals_greedy=False, first_difference=3)
    page = outputs_html(dataclasses.replace(tiny_race, rows=rows))
    assert page.count("first difference from autoregressive") == 1 and "first difference at token 3" in page
