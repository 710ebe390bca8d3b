"""The held-out task suite: its shape, that nothing in it was trained on (and that the check would notice if it
were), its chat-template ids, and the tasks bench section on the tiny models."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from engines.analysis import task_suite as ts


@pytest.fixture(scope="module")
def suite():
    return ts.load_suite()


def test_six_families_of_at_least_twelve_prompts_with_unique_ids(suite):
    assert list(ts.FAMILIES) == ["multi_turn", "translation", "summarization", "question_answering",
                                 "math_reasoning", "rag"]
    for family in ts.FAMILIES:
        assert sum(t.family == family for t in suite) >= 12, family
    assert len({t.id for t in suite}) == len(suite)
    for t in suite:
        assert t.messages[-1]["role"] == "user"
        users = sum(m["role"] == "user" for m in t.messages)
        assert users == (2 if t.family == "multi_turn" else 1), t.id


def test_digest_follows_the_content(suite):
    assert ts.digest(suite) == ts.digest(ts.load_suite())
    changed = [replace(suite[0], messages=({"role": "user", "content": "Something else."},)), *suite[1:]]
    assert ts.digest(changed) != ts.digest(suite)


def test_a_bad_suite_file_is_refused_in_one_sentence(tmp_path):
    for family in ts.FAMILIES:
        (tmp_path / f"{family}.jsonl").write_text(
            json.dumps({"id": family, "family": family, "messages": [{"role": "user", "content": "Hi."}]}) + "\n")
    assert len(ts.load_suite(tmp_path)) == 6
    (tmp_path / "rag.jsonl").write_text('{"id": "x", "family": "translation", "messages": []}\n')
    with pytest.raises(ValueError, match="sits in rag.jsonl"):
        ts.load_suite(tmp_path)
    (tmp_path / "rag.jsonl").write_text(json.dumps({"id": "translation", "family": "rag",
                                                    "messages": [{"role": "user", "content": "Hi."}]}) + "\n")
    with pytest.raises(ValueError, match="appears twice"):
        ts.load_suite(tmp_path)


def test_prompt_ids_are_the_chat_template_with_the_generation_prompt(tiny_target, suite):
    if not tiny_target.tokenizer.chat_template:
        pytest.skip("this tiny target has no chat template")
    task = next(t for t in suite if t.family == "multi_turn")
    ids = ts.prompt_ids(tiny_target, task)
    text = tiny_target.decode(ids)
    assert text.endswith("<|im_start|>assistant\n")
    for m in task.messages:
        assert m["content"] in text
    assert ids == tiny_target.tokenizer.apply_chat_template(ts.chat_messages(task), add_generation_prompt=True,
                                                            tokenize=True, return_dict=False)


# ----------------------------------------------------------------------------- contamination

@pytest.fixture(scope="module")
def training(suite):
    """The training text tokenized once (about 1.5M tokens), with the tokenizer."""
    tokenizer = ts.suite_tokenizer()
    texts = ts.training_texts()
    return tokenizer, texts, ts.token_lists(texts, tokenizer)


def test_training_text_covers_the_corpus_and_the_chat_instructions(training):
    from engines.training.instructions import CORPUS_DIR, instructions
    _, texts, _ = training
    books = [p for p in CORPUS_DIR.iterdir() if p.suffix == ".txt"]
    assert len(books) == 10
    assert len(texts) > len(instructions()) + len(books)
    assert sum(len(ids) for ids in training[2]) > 1_000_000


def test_no_8_token_window_of_the_suite_occurs_in_any_training_text(suite, training):
    tokenizer, _, text_ids = training
    found = ts.shared_windows(text_ids, ts.suite_windows(suite, tokenizer), tokenizer)
    assert found == [], [(o.task_id, o.window) for o in found]


def test_the_check_finds_a_corpus_passage_or_an_instruction_planted_in_the_suite(suite, training):
    from engines.training.instructions import corpus_passages, instructions
    tokenizer, _, text_ids = training
    passage = corpus_passages()[100]
    instruction = instructions()[7]["user"]
    planted = [*suite,
               ts.Task("planted-book", "summarization", ({"role": "user", "content": f"Summarize:\n\n{passage}"},)),
               ts.Task("planted-chat", "question_answering", ({"role": "user", "content": instruction},))]
    found = {o.task_id for o in ts.shared_windows(text_ids, ts.suite_windows(planted, tokenizer), tokenizer)}
    assert found == {"planted-book"} | ({"planted-chat"} if len(tokenizer(instruction)["input_ids"]) >= 8 else set())
    # the public form, on text given directly: an eight-word phrase shared is found, a fresh one is not
    said = "It said: down the rabbit hole went the small girl."
    quote = ts.Task("quote", "rag", ({"role": "user", "content": said},))
    assert [o.task_id for o in ts.overlaps(["She looked down the rabbit hole went the small girl at once."],
                                           tasks=[quote], tokenizer=tokenizer)] == ["quote"]
    assert ts.overlaps(["Nothing in common here at all, not a single phrase."], tasks=[quote],
                       tokenizer=tokenizer) == []


# ----------------------------------------------------------------------------- the bench section

def test_tasks_section_on_the_tiny_models_fills_spec_bench_tables_and_equals_generate(tiny_target, tiny_draft,
                                                                                        capsys):
    if not tiny_target.tokenizer.chat_template:
        pytest.skip("this tiny target has no chat template")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # about 35 s on one idle core; its time is not asserted, since these machines are shared
        rows = ts.bench_tasks(tiny_target, tiny_draft, per_family_count=1, new_tokens=4)
    finally:
        torch.set_num_threads(threads)
    skipped = capsys.readouterr().out
    methods = [m for m in ts.TASK_METHODS if m not in skipped]
    assert "autoregressive (ours)" in methods and "PLD: prompt lookup, k=4" in methods
    assert [(r["method"], r["family"]) for r in rows] == [(m, f) for f in ts.FAMILIES for m in methods]
    assert all(r["same_as_generate"] for r in rows), [(r["method"], r["task"]) for r in rows
                                                      if not r["same_as_generate"]]
    assert all(1 <= r["new_tokens"] <= 4 and r["wall_s"] > 0 for r in rows)
    assert all(r["new_tokens"] == r["target_forwards"] for r in rows if r["method"] == "autoregressive (ours)")
    text = ts.tables(rows)
    blocks = text.split("### ")[1:]
    assert len(blocks) == 5
    for block in blocks[:4]:
        table = [line for line in block.splitlines() if line.startswith("|")]
        assert len(table) == 2 + len(methods)                       # header, rule, one row per method
        header = [c.strip() for c in table[0].strip("|").split("|")]
        assert header[1:7] == list(ts.FAMILIES.values()) and header[-1] == "Overall"
        assert all(len(line.strip("|").split("|")) == len(header) for line in table)
    reference = [line for line in blocks[4].splitlines() if line.startswith("| EAGLE2")]
    assert reference and "4.36" in reference[0] and "2.25x" in reference[0]
    assert f"{len(rows) // len(methods)}/{len(rows) // len(methods)}" in blocks[3]


def test_the_cli_refuses_task_options_it_cannot_use(capsys):
    from engines.__main__ import main
    assert main(["bench", "--section", "tree", "--per-family", "2"]) == 2
    assert "--per-family is a setting of the tasks section" in capsys.readouterr().err
    assert main(["bench", "--section", "tasks", "--per-family", "0"]) == 2
    assert "at least 1 prompt per family" in capsys.readouterr().err
    assert main(["bench", "--section", "tasks", "--max-new-tokens", "0"]) == 2
    with pytest.raises(ValueError, match="between 1 and"):
        ts.bench_tasks("tiny-target", None, per_family_count=1, new_tokens=100_000)
