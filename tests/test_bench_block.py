"""engines/analysis/bench_block.py: a recorded block-verification step recomputed from fresh forwards and its own
coins agrees with what the engine recorded (and a tampered record is caught); the comparison's summary counts."""
from __future__ import annotations

import copy

import pytest

from engines.analysis import bench_block
from engines.decoding.sampling import Sampling
from tests.conftest import PROMPTS

SAMPLED = Sampling(1.0, 0, 1.0)


@pytest.fixture(scope="module")
def recorded(tiny_target, tiny_draft):
    ids = tiny_target.encode(PROMPTS[1])
    return ids, bench_block.run_sampled(tiny_target, tiny_draft, ids, 16, "block", 3)


def test_every_recorded_step_recomputes_to_the_same_decision(tiny_target, tiny_draft, recorded):
    ids, steps = recorded
    checks = bench_block.check_steps(tiny_target, tiny_draft, ids, steps, SAMPLED)
    assert len(checks) == sum(1 for s in steps if s.detail["draft_tokens"]) > 0
    for c in checks:
        assert c["accepted"] == c["recorded_accepted"] and c["token_accepted"] == c["recorded_token_accepted"]
        assert c["passed_agree"] and c["statuses_agree"]
        for gap in ("p_gap", "q_gap", "weight_gap", "residual_gap", "stop_gap"):
            assert c[gap] < 1e-4, (c["step"], gap, c[gap])
    # the run kept what block verification decided, position by position
    assert all(s.detail["accepted"] == s.detail["block"]["accepted"] for s in steps)


def test_a_tampered_record_is_caught(tiny_target, tiny_draft, recorded):
    ids, steps = recorded
    step = copy.deepcopy(next(s for s in steps if s.detail["draft_tokens"]))
    context = list(ids) + [t for s in steps[:step.index] for t in s.committed_ids]
    p, q = bench_block.distributions(tiny_target, tiny_draft, context, step.detail["draft_tokens"], SAMPLED)
    b = step.detail["block"]
    b["accepted"] = (b["accepted"] + 1) % (len(step.detail["draft_tokens"]) + 1)
    b["residual_mass"] = [r + 0.01 for r in b["residual_mass"]]
    c = bench_block.check_step(step, p, q)
    assert c["accepted"] != c["recorded_accepted"] and c["residual_gap"] > 5e-3


def test_the_summary_counts_steps_and_tokens_per_rule():
    rows = [{"verification": "token", "steps": 4, "accepted": 2, "new_tokens": 6, "target_forwards": 4},
            {"verification": "token", "steps": 2, "accepted": 2, "new_tokens": 4, "target_forwards": 2},
            {"verification": "block", "steps": 3, "accepted": 6, "new_tokens": 9, "target_forwards": 3}]
    s = bench_block.summary(rows)
    assert s["token"]["accepted_per_step"] == pytest.approx(4 / 6)
    assert s["token"]["mean_of_runs"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["token"]["tokens_per_forward"] == pytest.approx(10 / 6)
    assert s["block"]["accepted_per_step"] == 2 and s["block"]["runs"] == 1 and s["block"]["stdev_of_runs"] == 0
