"""The chat template: an instruct target reads the prompt as one user message in its template (the ids are
apply_chat_template's), chat off reads the bare text, the trace records which, a model without a template refuses
chat in one sentence, the CLI's --chat says which, and the drafters stay exact on the templated ids."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from engines.methods import Run
from engines.models import chat, locate, store
from engines.trace import Trace
from tests.conftest import greedy_reference

QUESTION = "What is the capital of France?"
CONVERSATION = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Name another."}]


def templated(model, messages) -> list[int]:
    return list(model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=False))


@pytest.fixture(scope="module")
def no_template(tmp_path_factory):
    """A tiny random causal model whose tokenizer has no chat template."""
    folder = tmp_path_factory.mktemp("no-template")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(locate.resolve("tiny-target"))
    tok.chat_template = None
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return store.load(str(folder))


def test_an_instruct_target_reads_the_prompt_in_its_template_by_default(smollm2):
    trace = Run("autoregressive", QUESTION, {"max_new_tokens": 1}, target=smollm2.source).run()
    assert trace.chat is True
    assert trace.prompt_ids == templated(smollm2, [{"role": "user", "content": QUESTION}])
    assert trace.prompt == QUESTION and trace.messages is None
    # the template's own tokens are in the text table as their text, so the view shows them
    start = smollm2.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert trace.prompt_ids[0] == start and trace.token_texts[start] == "<|im_start|>"


def test_chat_off_reads_the_bare_prompt_and_on_equals_apply_chat_template(tiny_target):
    off = Run("autoregressive", QUESTION, {"max_new_tokens": 1}, target=tiny_target.source, chat=False)
    on = Run("autoregressive", QUESTION, {"max_new_tokens": 1}, target=tiny_target.source, chat=True)
    auto = Run("autoregressive", QUESTION, {"max_new_tokens": 1}, target=tiny_target.source)
    assert off.trace.prompt_ids == tiny_target.encode(QUESTION) and off.trace.chat is False
    assert on.trace.prompt_ids == templated(tiny_target, [{"role": "user", "content": QUESTION}])
    assert on.trace.chat is True
    # the embedded models learnt plain text: their tokenizer's template is SmolLM2's, off unless asked
    assert auto.trace.prompt_ids == off.trace.prompt_ids and auto.trace.chat is False


def test_masked_models_read_plain_text_unless_their_preset_learnt_chat(tiny_masked):
    auto = Run("mask-predict", QUESTION, {"length": 4, "iterations": 1}, target=tiny_masked.source)
    assert auto.trace.chat is False and auto.trace.prompt_ids == tiny_masked.encode(QUESTION)
    assert chat.chat_by_default_for("tiny-masked") is False and chat.chat_by_default_for("tiny-target") is False
    assert chat.chat_by_default_for("smollm2-135m-instruct") is True and chat.chat_by_default_for("/a/b") is None
    # the diffusion adapter was trained on SmolLM2's own chat answers: the Mask-predict tab answers a question
    assert chat.chat_by_default_for("smollm2-135m-diffusion") is True


def test_a_conversation_is_templated_whole_and_recorded(tiny_target):
    trace = Run("autoregressive", CONVERSATION, {"max_new_tokens": 2}, target=tiny_target.source).run()
    assert trace.prompt_ids == templated(tiny_target, CONVERSATION)
    assert trace.chat is True and trace.messages == CONVERSATION and trace.prompt == "Name another."
    with pytest.raises(ValueError, match="turn chat on"):
        Run("autoregressive", CONVERSATION, {}, target=tiny_target.source, chat=False)
    with pytest.raises(ValueError, match="end with a user message"):
        Run("autoregressive", CONVERSATION[:2], {}, target=tiny_target.source)
    with pytest.raises(ValueError, match="Message 1 is not a message"):
        Run("autoregressive", [{"role": "robot", "content": "hi"}], {}, target=tiny_target.source)


def test_the_trace_records_chat_and_round_trips_through_json(tiny_target):
    trace = Run("autoregressive", CONVERSATION, {"max_new_tokens": 3}, target=tiny_target.source).run()
    data = json.loads(trace.to_json())
    assert data["chat"] is True and data["messages"] == CONVERSATION
    back = Trace.from_json(trace.to_json())
    assert back.chat is True and back.messages == CONVERSATION and back.prompt_ids == trace.prompt_ids
    # a trace recorded before the template existed has no chat field: it fed the bare prompt
    del data["chat"], data["messages"]
    older = Trace.from_dict(data)
    assert older.chat is False and older.messages is None


def test_chat_on_a_model_without_a_template_is_one_sentence(no_template):
    assert not chat.has_template(no_template)
    auto = Run("autoregressive", QUESTION, {"max_new_tokens": 1}, target=no_template.source)
    assert auto.trace.chat is False and auto.trace.prompt_ids == no_template.encode(QUESTION)
    with pytest.raises(ValueError) as refused:
        Run("autoregressive", QUESTION, {}, target=no_template.source, chat=True)
    said = str(refused.value)
    assert "has no chat template" in said and said.count(". ") == 0 and "\n" not in said
    with pytest.raises(ValueError, match="has no chat template"):
        Run("autoregressive", CONVERSATION, {}, target=no_template.source)
    with pytest.raises(ValueError, match="chat is on"):
        Run("autoregressive", QUESTION, {}, target=no_template.source, chat="yes")


def test_cli_chat_on_and_off(cli, tiny_target):
    common = ["trace", "--method", "autoregressive", "--prompt", QUESTION, "--target", tiny_target.source,
              "--max-new-tokens", "2"]
    on, off, auto = cli(*common, "--chat", "on"), cli(*common, "--chat", "off"), cli(*common)
    assert on.returncode == off.returncode == auto.returncode == 0, on.stderr + off.stderr
    on, off, auto = json.loads(on.stdout), json.loads(off.stdout), json.loads(auto.stdout)
    assert on["chat"] is True and on["prompt_ids"] == templated(tiny_target, [{"role": "user", "content": QUESTION}])
    assert off["chat"] is False and off["prompt_ids"] == tiny_target.encode(QUESTION)
    assert auto["prompt_ids"] == off["prompt_ids"]
    bad = cli(*common, "--chat", "maybe")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_cli_chat_on_a_model_without_a_template_is_one_line(cli, no_template):
    out = cli("trace", "--method", "autoregressive", "--prompt", QUESTION, "--target", no_template.source,
              "--chat", "on")
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "has no chat template" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- the drafters stay exact

N = 8


@pytest.fixture(scope="module")
def chat_reference(smollm2) -> tuple[list[int], list[int]]:
    ids = templated(smollm2, [{"role": "user", "content": QUESTION}])
    return ids, greedy_reference(smollm2, ids, N)


@pytest.mark.parametrize("method, settings", [
    ("speculative", {"drafter": "model", "k": 3}),
    ("speculative", {"drafter": "ngram", "k": 3}),
    ("tree", {"drafter": "eagle", "tree": "dynamic", "tree_budget": 6, "tree_depth": 3, "tree_topk": 2}),
    ("tree", {"drafter": "heads", "tree": "sparse"}),
])
def test_greedy_on_the_templated_prompt_equals_generate(method, settings, smollm2, chat_reference):
    ids, reference = chat_reference
    trace = Run(method, QUESTION, {**settings, "max_new_tokens": N}, target=smollm2.source, chat=True).run()
    assert trace.chat is True and trace.prompt_ids == ids
    assert trace.output_ids == reference


# ----------------------------------------------------------------------------- the UI's chat box

def test_the_chat_box_follows_the_target_and_reaches_the_run(tiny_target):
    import gradio as gr

    from explorer import controls as ui
    from explorer.session import live_session

    assert ui.chat_for_target("smollm2-135m-instruct").value is True
    assert ui.chat_for_target("tiny-target").value is False and ui.chat_for_target("tiny-masked").value is False
    assert ui.chat_for_target("/a/folder/of/my/own") == gr.skip()   # known once it loads: left as it is
    assert ui.checked_chat(None) is None and ui.checked_chat(False) is False
    with pytest.raises(ValueError, match="The chat box is on or off"):
        ui.checked_chat("yes")
    wanted = {"method": "autoregressive", "prompt": QUESTION, "target": tiny_target.source, "draft": None,
              "seed": 0, "settings": {"max_new_tokens": 1}, "chat": True}
    session = live_session(wanted)
    assert session.trace.chat is True
    assert session.trace.prompt_ids == templated(tiny_target, [{"role": "user", "content": QUESTION}])
    assert session.why_new({**wanted, "chat": False}) == "New run: the chat template changed."


def test_the_race_takes_chat_as_run_does(tiny_target, tiny_draft, cli):
    from engines.analysis.race import Entry, race, table

    entries = [Entry("autoregressive", "autoregressive"), Entry("prompt lookup", "speculative", {"drafter": "ngram"})]
    on = race(QUESTION, 4, target=tiny_target.source, draft=tiny_draft.source, entries=entries, chat=True)
    off = race(QUESTION, 4, target=tiny_target.source, draft=tiny_draft.source, entries=entries)
    assert on.chat is True and off.chat is False and "in the chat template" in table(on)
    assert all(r.equals_greedy for r in on.rows)
    said = cli("race", "--prompt", QUESTION, "--max-new-tokens", "2", "--target", "tiny-target", "--chat", "on",
               "--json")
    assert said.returncode == 0 and json.loads(said.stdout)["chat"] is True


def test_be_the_drafter_reads_the_prompt_as_run_does(tiny_target):
    from engines.analysis.verify_draft import verify_draft_trace

    on = verify_draft_trace(QUESTION, " Paris", tiny_target.source, chat=True)
    off = verify_draft_trace(QUESTION, " Paris", tiny_target.source)
    assert on.chat is True and on.prompt_ids == templated(tiny_target, [{"role": "user", "content": QUESTION}])
    assert off.chat is False and off.prompt_ids == tiny_target.encode(QUESTION)
