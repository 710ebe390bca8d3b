"""Limits the server enforces itself, whatever the widgets allow: prompt tokens (a cap, and the model's
positions), the seed's range; each refused in one sentence before any forward."""
from __future__ import annotations

import math

import pytest

from engines.config import MAX_PROMPT_TOKENS
from engines.methods import METHODS, Run
from engines.models import adapter, store


def one_sentence(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert len(message.splitlines()) == 1 and message.endswith(".") and message.count(". ") == 0, message
    return message


@pytest.fixture
def no_forward(monkeypatch, tiny_target, tiny_draft, tiny_masked):
    """Any forward of any model fails the test: a refusal must come before model work. (The models are in
    the cache first: loading one runs a warm-up forward.)"""
    for model in (tiny_target, tiny_draft, tiny_masked):
        store.load(model.source)

    def forbidden(*args, **kwargs):
        raise AssertionError("a model ran before the prompt was checked")
    for name in ("forward", "catch_up", "masked_logits", "masked_logits_rows", "forward_tree_level"):
        monkeypatch.setattr(adapter.LM, name, forbidden)


def words(n: int) -> str:
    return "word " * n


@pytest.mark.parametrize("method", ["autoregressive", "speculative", "jacobi"])
def test_a_prompt_over_the_cap_is_refused_in_one_sentence(tiny_target, tiny_draft, no_forward, method):
    with pytest.raises(ValueError) as refused:
        Run(method, words(MAX_PROMPT_TOKENS + 10), {}, target=tiny_target.source, draft=tiny_draft.source)
    assert f"more than the {MAX_PROMPT_TOKENS} this app accepts" in one_sentence(refused)


def test_the_cap_is_the_caller_s_to_set(tiny_target):
    with pytest.raises(ValueError, match="more than the 3 this app accepts"):
        Run("autoregressive", "Once upon a time", {}, target=tiny_target.source, max_prompt_tokens=3)
    assert Run("autoregressive", "Once upon a time", {"max_new_tokens": 1}, target=tiny_target.source,
               max_prompt_tokens=4).run().finished


def test_a_prompt_beyond_the_model_s_positions_is_refused(tiny_target, no_forward):
    limit = tiny_target.max_positions
    prompt = words(limit - 100)
    with pytest.raises(ValueError) as refused:
        Run("autoregressive", prompt, {"max_new_tokens": 200}, target=tiny_target.source, max_prompt_tokens=limit)
    message = one_sentence(refused)
    assert f"more than the {limit} of 'tiny-target'" in message and "lower max new tokens" in message


def test_positions_count_what_a_method_feeds_beyond_the_new_tokens(tiny_target, tiny_draft):
    """A draft of k tokens past the last new one needs positions too; exactly at the limit is allowed."""
    limit = tiny_target.max_positions
    prompt_tokens = len(tiny_target.encode(words(limit - 40)))
    settings = {"max_new_tokens": limit - prompt_tokens - 4, "k": 4}
    assert METHODS["speculative"].reach(METHODS["speculative"].config(**settings)) == limit - prompt_tokens
    Run("speculative", words(limit - 40), settings, target=tiny_target.source, draft=tiny_draft.source,
        max_prompt_tokens=limit)
    with pytest.raises(ValueError, match="positions speculative may add"):
        Run("speculative", words(limit - 40), {**settings, "k": 5}, target=tiny_target.source,
            draft=tiny_draft.source, max_prompt_tokens=limit)


def test_mask_predict_s_span_must_fit_the_masked_lm(tiny_masked, no_forward):
    limit = tiny_masked.max_positions
    with pytest.raises(ValueError) as refused:
        Run("mask-predict", words(limit - 10), {"length": 24, "max_new_tokens": 24}, target=tiny_masked.source)
    assert "lower the span length" in one_sentence(refused)


@pytest.mark.parametrize("seed, says", [(-1, "seed must be between 0 and"), (2 ** 64, "seed must be between"),
                                        (1.5, "seed must be a whole number"),
                                        (math.nan, "seed must be a whole number")])
def test_a_seed_out_of_range_is_one_sentence(tiny_target, seed, says):
    with pytest.raises(ValueError, match=says) as refused:
        Run("autoregressive", "Once upon a time", {"seed": seed}, target=tiny_target.source)
    one_sentence(refused)


def test_the_seed_is_a_setting_and_lands_in_the_trace(tiny_target):
    a = Run("autoregressive", "Once", {"seed": 5, "temperature": 1.0, "max_new_tokens": 4}, target=tiny_target.source)
    b = Run("autoregressive", "Once", {"temperature": 1.0, "max_new_tokens": 4}, target=tiny_target.source, seed=5)
    assert a.trace.config["seed"] == b.trace.config["seed"] == 5
    assert a.run().output_ids == b.run().output_ids


@pytest.mark.parametrize("value", [math.nan, math.inf, 1e400, -5, "many"])
def test_max_new_tokens_out_of_range_is_one_sentence(tiny_target, value):
    with pytest.raises(ValueError, match="max new tokens") as refused:
        Run("autoregressive", "Once upon a time", {"max_new_tokens": value}, target=tiny_target.source)
    one_sentence(refused)


def test_a_refused_run_leaves_the_next_one_unharmed(tiny_target):
    with pytest.raises(ValueError):
        Run("autoregressive", words(MAX_PROMPT_TOKENS + 1), {}, target=tiny_target.source)
    trace = Run("autoregressive", "Once upon a time", {"max_new_tokens": 3}, target=tiny_target.source).run()
    assert trace.finished and len(trace.output_ids) == 3
