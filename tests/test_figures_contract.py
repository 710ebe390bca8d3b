"""The synthetic steps of tests/synthetic.py carry exactly the fields the real engines yield.

A synthetic step with a field no engine writes would test a figure against a record that never happens,
and one missing a field would leave that field's drawing untested. Both are checked here against short
runs of the real engines on the embedded models, through every nested record (drafted positions, tree
nodes, lookups, draws). Mask-predict's synthetic steps come from its real engine on a stub model, so they
need no check.
"""
from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from engines.drafting import heads as drafters
from engines.methods import Run
from engines.models import heads
from engines.training.heads import new_head
from explorer.figures import VIEWS
from tests import synthetic as syn

REPETITIVE = "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. The quick"


def field_names(value: Any, at: str = "") -> set[str]:
    """Dotted names of every dict key in a record, looking inside lists (of dicts) as `name[]`."""
    if isinstance(value, dict):
        return {name for k, v in value.items() for name in {at + k} | field_names(v, at + k + ".")}
    if isinstance(value, (list, tuple)):
        return {name for v in value for name in field_names(v, at[:-1] + "[]." if at else "[].")}
    return set()


def step_fields(steps) -> set[str]:
    return {name for s in steps for name in field_names(s.to_dict())}


def real_steps(method: str, runs: list[tuple[str, dict]], target, draft) -> list:
    steps = []
    for prompt, settings in runs:
        run = Run(method, prompt, settings, target=target.source, draft=draft.source, seed=3)
        steps += run.run().steps
    return steps


def synthetic_fields(make) -> set[str]:
    """Fields over many synthetic steps, so optional ones (a bonus's probability, a sampled node's u) appear."""
    rnd = random.Random(0)
    return step_fields(make(rnd, i) for i in range(60))


def speculative(rnd: random.Random, i: int):
    k = rnd.randint(1, 16)
    drafted = rnd.randint(0, k)
    return syn.speculative_step(rnd, i % 2, k=k, drafted=drafted, accepted=rnd.randint(0, drafted),
                                greedy=rnd.random() < 0.5,
                                drafter=rnd.choice(["model", "ngram", "early-exit", *syn.HEAD_DRAFTERS]),
                                end=rnd.choice(["none", "eos_next", "eos_draft"]),
                                verification=rnd.choice(["token", "block"]))


def tree(rnd: random.Random, i: int):
    return syn.tree_step(rnd, i % 2, shape=rnd.choice(["dynamic", "sparse", "chain", "balanced"]),
                         budget=rnd.randint(0, 64), depth=rnd.randint(1, 8), topk=rnd.randint(1, 8),
                         room=rnd.randint(0, 8), greedy=rnd.random() < 0.5, stop_chance=rnd.random(),
                         drafter=rnd.choice(["model", "early-exit", *syn.HEAD_DRAFTERS]))


def jacobi(rnd: random.Random, i: int):
    return syn.jacobi_step(rnd, i % 2, block=rnd.randint(1, 32), settled=rnd.randint(0, 8), produced=0,
                           max_new_tokens=64)


def lookahead(rnd: random.Random, i: int):
    ngram = rnd.randint(2, 6)
    return syn.lookahead_step(rnd, i % 2, window=rnd.randint(1, 12), ngram=ngram, guesses=rnd.randint(0, 12),
                              levels=rnd.randint(1, ngram - 1), candidates=rnd.randint(0, 12),
                              match=rnd.randint(0, ngram - 1), greedy=rnd.random() < 0.5,
                              pooled_keys=rnd.randint(0, 12))


def autoregressive(rnd: random.Random, i: int):
    return syn.autoregressive_step(rnd, i, greedy=rnd.random() < 0.5, final=False)


GREEDY, SAMPLED = {"max_new_tokens": 8}, {"max_new_tokens": 8, "temperature": 1.5}


@pytest.fixture
def random_heads(tiny_target, tmp_path, monkeypatch):
    """Randomly initialised Medusa and EAGLE heads for the tiny target, where the drafters look for heads; the
    draft vocabulary is every other token id, so some target tokens lie outside it."""
    vocab = torch.arange(0, tiny_target.model.config.vocab_size, 2)
    for kind, folder in (("medusa", "medusa"), ("eagle", "eagle")):
        torch.manual_seed(0)
        heads.save(new_head(kind, tiny_target, vocab), tmp_path / f"{tiny_target.name}-{folder}")
    monkeypatch.setattr(drafters, "HEADS_DIR", tmp_path)


@pytest.mark.parametrize("method, make, runs", [
    ("autoregressive", autoregressive, [("Once upon a time", {"max_new_tokens": 3})]),
    ("speculative", speculative, [("Once upon a time", {**GREEDY, "k": 4}), ("Once upon a time", {**SAMPLED, "k": 4}),
                                  (REPETITIVE, {**GREEDY, "drafter": "ngram"}),
                                  (REPETITIVE, {**SAMPLED, "drafter": "ngram"}),
                                  ("Once upon a time", {**GREEDY, "k": 6, "drafter": "heads"}),
                                  ("Once upon a time", {**SAMPLED, "k": 3, "drafter": "eagle"}),
                                  ("Once upon a time", {**SAMPLED, "k": 3, "drafter": "early-exit"}),
                                  ("Once upon a time", {**SAMPLED, "k": 4, "verification": "block"})]),
    ("tree", tree, [("Once upon a time", GREEDY), ("Once upon a time", {**SAMPLED, "tree": "sparse"}),
                    ("Once upon a time", SAMPLED), ("Once upon a time", {**GREEDY, "drafter": "heads"}),
                    ("Once upon a time", {**SAMPLED, "drafter": "eagle", "tree": "sparse"}),
                    ("Once upon a time", {**GREEDY, "drafter": "early-exit", "exit_layer": 2}),
                    ("Once upon a time", {**GREEDY, "tree_budget": 0})]),
    ("jacobi", jacobi, [("Once upon a time", {"max_new_tokens": 6})]),
    ("lookahead", lookahead, [(REPETITIVE, {**GREEDY, "window": 3, "ngram": 3}),
                              (REPETITIVE, {**SAMPLED, "window": 3, "ngram": 3})]),
])
def test_synthetic_steps_have_the_engines_fields(method, make, runs, tiny_target, tiny_draft, random_heads):
    steps = real_steps(method, runs, tiny_target, tiny_draft)
    real, ours = step_fields(steps), synthetic_fields(make)
    assert ours - real == set(), "synthetic fields no engine writes"
    assert real - ours == set(), "engine fields the synthetic steps never carry"
    # a loaded trace is refused when a step lacks a field its view requires: every real step has them all
    assert all(set(VIEWS[method].fields) <= s.detail.keys() for s in steps)
