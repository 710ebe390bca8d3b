"""The early-exit drafter (LayerSkip's self-speculation): greedy output equals transformers' generate, the first
draft is the target's own first L layers read through its final norm and head, the target is left as it was, and
the run matches transformers' own `generate(assistant_early_exit=L)` token for token and in tokens per target
forward."""
import copy

import pytest
import torch

from engines.decoding.sampling import Sampling
from engines.decoding.speculative import SpeculativeConfig, speculative
from engines.decoding.tree import TreeConfig, tree
from engines.drafting.early_exit import EarlyExitDrafter
from engines.models import chat
from tests.conftest import PROMPTS, greedy_reference

QUESTION = "Name three colours of the rainbow."


def output(steps) -> list[int]:
    return [t for s in steps for t in s.committed_ids]


def run_chain(target, ids, n, **settings):
    cfg = SpeculativeConfig(drafter="early-exit", max_new_tokens=n, **settings)
    return list(speculative(target, None, ids, cfg, torch.Generator().manual_seed(0)))


@pytest.fixture(scope="module")
def question(smollm2) -> list[int]:
    return chat.prompt_ids(smollm2, QUESTION, True)[0]


@pytest.mark.parametrize("exit_layer, k", [(1, 3), (0, 4), (5, 2)])
def test_greedy_equals_generate_on_the_tiny_target(tiny_target, exit_layer, k):
    ids = tiny_target.encode(PROMPTS[1])
    steps = run_chain(tiny_target, ids, 16, exit_layer=exit_layer, k=k)
    assert output(steps) == greedy_reference(tiny_target, ids, 16)
    layers = tiny_target.model.config.num_hidden_layers
    assert {s.detail["early_exit"]["exit_layer"] for s in steps} == {exit_layer or layers // 2}
    assert all(s.detail["early_exit"]["target_layers"] == layers for s in steps)
    # the draft's own cache: after each crop it holds at most what the target kept (committed text but the last)
    assert all(s.detail["draft_cache"][2] <= s.detail["target_cache"][2] + 1 for s in steps)


def test_tree_greedy_equals_generate_on_the_tiny_target(tiny_target):
    ids = tiny_target.encode(PROMPTS[2])
    cfg = TreeConfig(drafter="early-exit", exit_layer=4, tree_budget=8, tree_depth=3, tree_topk=2, max_new_tokens=16)
    steps = list(tree(tiny_target, None, ids, cfg, torch.Generator().manual_seed(0)))
    assert output(steps) == greedy_reference(tiny_target, ids, 16)
    assert steps[0].detail["early_exit"] == {"exit_layer": 4, "target_layers": 6}


def test_greedy_equals_generate_on_smollm2(smollm2, question):
    steps = run_chain(smollm2, question, 10, exit_layer=28, k=3)
    assert output(steps) == greedy_reference(smollm2, question, 10)
    assert sum(s.detail["accepted"] for s in steps) > 0, "layer 28 of 30 agrees with the target often"


@pytest.mark.parametrize("exit_layer", [8, 28])
def test_the_first_draft_is_the_argmax_of_the_first_layers_read_through_the_head(smollm2, question, exit_layer):
    """The reference: one plain forward of the whole target, its hidden state after layer L (hidden_states[L];
    [0] is the embeddings' output) through the final norm and the output head. A drafter that ran every layer
    would draft the target's own argmax, which differs from it here (checked)."""
    m = smollm2.model
    before = (m.config.num_hidden_layers, m.training, [p.data_ptr() for p in m.parameters()])
    with torch.inference_mode():
        out = m(torch.tensor([question]), output_hidden_states=True)
        manual = int(m.lm_head(m.model.norm(out.hidden_states[exit_layer][0, -1])).argmax())
    drafter = EarlyExitDrafter(smollm2, exit_layer)
    drafter.begin()
    proposal = drafter.draft_chain(question, 3, Sampling(), torch.Generator(), frozenset())
    assert proposal.tokens[0] == manual
    if exit_layer == 8:
        assert manual != int(out.logits[0, -1].argmax()), "pick a layer whose argmax differs from the target's"
    # a real cache of L layers: the prompt once, then one token per draft forward; cropped to what was kept
    assert len(drafter.kv) == len(question) + 2 and drafter.forwards == 3
    assert len(drafter.kv.cache.layers) == exit_layer
    drafter.after_chain(len(question) + 1, None, 0, question + proposal.tokens[:1])
    assert len(drafter.kv) == len(question) + 1
    # the target is as it was, and the draft's weights are the target's own (no copy)
    shared = {p.data_ptr() for p in drafter.draft.model.parameters()}
    assert shared <= set(before[2])
    assert (m.config.num_hidden_layers, m.training, [p.data_ptr() for p in m.parameters()]) == before


class LayerCalls:
    """Counts calls of one decoder layer while in a `with` block. Layer L runs in a full target forward only:
    transformers' early-exit assistant runs layers[:L] and our drafter holds layers[:L], so the count is the
    number of target forwards. The hook is removed on the way out."""

    def __init__(self, layer):
        self.layer, self.calls = layer, 0

    def __enter__(self):
        self.handle = self.layer.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_equals_transformers_assistant_early_exit(smollm2, question):
    """transformers' `generate(assistant_early_exit=L)` with its draft length fixed at k and its confidence cut-off
    off (it stops a draft early below 0.4 by default, which our drafter never does): same tokens, and tokens per
    target forward within 5%. Its settings for the assistant are read from the model's generation_config, so they
    are set there for this call only and restored."""
    exit_layer, k, n = 28, 4, 24
    m = smollm2.model
    saved = m.generation_config
    m.generation_config = copy.deepcopy(saved)
    m.generation_config.update(num_assistant_tokens=k, num_assistant_tokens_schedule="constant",
                               assistant_confidence_threshold=0.0)
    ids = torch.tensor([question])
    try:
        with LayerCalls(m.model.layers[exit_layer]) as theirs:
            out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             assistant_early_exit=exit_layer, eos_token_id=sorted(smollm2.eos_ids),
                             pad_token_id=smollm2.tokenizer.pad_token_id or 0)
    finally:
        m.generation_config = saved
    reference = out[0, len(question):].tolist()
    with LayerCalls(m.model.layers[exit_layer]) as ours:
        steps = run_chain(smollm2, question, n, exit_layer=exit_layer, k=k)
    assert output(steps) == reference == greedy_reference(smollm2, question, n)
    assert ours.calls == sum(s.target_forwards for s in steps) == len(steps)
    mine, transformers = len(reference) / ours.calls, len(reference) / theirs.calls
    assert abs(mine - transformers) <= 0.05 * transformers, (mine, transformers)
    assert mine > 1.2, "at layer 28 of 30 drafts are accepted"


@pytest.mark.parametrize("value, says", [
    ("6", "The exit layer must be between 1 and 5 for 'tiny-target', which has 6 layers (0 takes half of them), "
          "not 6."),
    ("-1", "exit layer must be between 0 and 255")])
def test_a_bad_exit_layer_is_one_sentence(cli, value, says):
    for method in ("speculative", "tree"):
        r = cli("trace", "--method", method, "--drafter", "early-exit", "--exit-layer", value, "--prompt", "x",
                "--target", "tiny-target")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and says in lines[0], r.stderr
