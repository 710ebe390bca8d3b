"""The first view that teaches (issue 21): every method introduced in two sentences, its own example prompts, a
glossary of every symbol the figures use; examples on text no model here was trained on."""
import re

import pytest

from engines.analysis import task_suite as ts
from engines.methods import METHODS
from explorer import guide


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_has_two_sentences_and_its_own_examples(method):
    text = guide.intro(method)
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.replace(f"**{METHODS[method].title}.** ", "")) if s]
    assert len(sentences) == 2, text
    assert len(guide.examples(method)) >= 2 and all(len(row) == 1 and row[0] for row in guide.examples(method))


def test_the_glossary_names_every_symbol_the_page_promises():
    for symbol in ("**p**", "**q**", "**u**", "**α**", "**k**", "**c**", "**T(n)**", "**τ**"):
        assert symbol in guide.GLOSSARY


def test_no_example_prompt_is_training_text_or_a_suite_prompt():
    prompts = sorted({p for rows in guide.EXAMPLES.values() for p in rows})
    tasks = [ts.Task(f"example-{i}", "rag", ({"role": "user", "content": p},)) for i, p in enumerate(prompts)]
    shared = ts.overlaps(ts.training_texts(), tasks=tasks)
    assert shared == [], [(o.task_id, o.text) for o in shared]
    suite = {m["content"] for task in ts.load_suite() for m in task.messages}
    assert not suite & set(prompts)
