"""The chat data generator: instructions are deterministic and unique, the stored ids are exactly what the
target saw and wrote (the answer spans decode to the stored answers), and a killed run resumes shard by shard."""
from __future__ import annotations

import json

import pytest

from engines.models import store
from engines.training import chat_data
from engines.training.instructions import instructions


def test_instructions_are_deterministic_unique_and_cover_every_family():
    items = instructions()
    assert items == instructions()
    assert len(items) >= 5000
    assert len({it["user"] for it in items}) == len(items)
    assert {it["family"] for it in items} == {"general", "code", "math", "language", "passage"}
    assert 0.1 < sum(bool(it["follow_up"]) for it in items) / len(items) < 0.3
    assert instructions(seed=1) != items


@pytest.fixture(scope="module")
def tiny():
    target = store.load("tiny-target")
    if not target.tokenizer.chat_template:
        pytest.skip("tiny-target's tokenizer has no chat template")
    return target


def test_shards_hold_what_the_target_wrote_and_resume(tiny, tmp_path):
    items = [{"family": "general", "user": "Tell me about the sea.", "follow_up": "Why is that?"},
             {"family": "math", "user": "What is 3 plus 4?", "follow_up": None},
             {"family": "general", "user": "Name a colour.", "follow_up": None}]
    assert chat_data.generate(tiny, tmp_path, items, 3, per_shard=2, limits=(6, 4)) == 2
    rows = chat_data.read_shards(tmp_path)
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert [r["split"] for r in rows] == ["held_out", "train", "train"]
    assert [r["sampled"] for r in rows] == [False, False, True]   # odd shards are sampled
    first = rows[0]
    assert [m["role"] for m in first["messages"]] == ["user", "assistant", "user", "assistant"]
    for row in rows:
        answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        for (start, end), text in zip(row["answers"][-1:], answers[-1:]):
            written = [t for t in row["ids"][start:end] if t not in tiny.eos_ids]
            assert tiny.decode(written) == text
            assert 0 < end - start <= 6
        prompt = row["ids"][:row["answers"][-1][0]]
        assert prompt == chat_data.templated(tiny.tokenizer, row["messages"][:-1])

    # a shard lost mid-run is written again, and only it
    (tmp_path / "shard-00001.jsonl.gz").unlink()
    assert chat_data.generate(tiny, tmp_path, items, 3, per_shard=2, limits=(6, 4)) == 1
    assert [r["index"] for r in chat_data.read_shards(tmp_path)] == [0, 1, 2]
    assert chat_data.status(tmp_path)["conversations"] == 3


def test_resuming_over_another_instruction_list_is_refused(tiny, tmp_path):
    items = [{"family": "general", "user": "Say hi.", "follow_up": None}]
    chat_data.generate(tiny, tmp_path, items, 1, per_shard=1, limits=(2, 2))
    assert json.loads((tmp_path / "instructions.json").read_text())["count"] == 1
    with pytest.raises(SystemExit, match="another instruction list"):
        chat_data.generate(tiny, tmp_path, [{"family": "general", "user": "Say bye.", "follow_up": None}], 1,
                           per_shard=1, limits=(2, 2))
