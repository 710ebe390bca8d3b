"""The process-wide model cache: concurrent cold loads, one entry per model however it is spelled, the
memory bound, the atomic conversion folder, and messages that give away no server path."""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import weakref
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from engines.methods import Run
from engines.models import adapter, convert, presets, store

TINY = ("tiny-target", "tiny-draft", "tiny-masked")
pytestmark = pytest.mark.skipif(not all(store.available(n) for n in TINY), reason="the embedded models are missing")
ABSOLUTE_PATH = re.compile(r"(^|[\s'\"(=:])(/|~/|[A-Za-z]:\\)[\w.-]")


@pytest.fixture
def cold():
    """An empty cache before and after: every load in the test is a first load."""
    budget = store.MODELS.budget_bytes
    store.MODELS.clear()
    yield
    store.set_memory_budget(budget)
    store.MODELS.clear()


@pytest.fixture
def reads(monkeypatch) -> collections.Counter:
    """How often each folder was read from disk: a spy on the one place lm calls from_pretrained for a model
    (it calls the real function)."""
    counts: collections.Counter = collections.Counter()
    real = store.read_pretrained

    def spy(source, dt):
        counts[Path(source).name] += 1
        return real(source, dt)

    monkeypatch.setattr(store, "read_pretrained", spy)
    return counts


def load_at_once(names: list[str]) -> list[adapter.LM | BaseException]:
    """Each name loaded by its own thread, all released at the same moment."""
    start = threading.Barrier(len(names))
    results: list = [None] * len(names)

    def load(i: int) -> None:
        start.wait()
        try:
            results[i] = store.load(names[i])
        except BaseException as e:  # noqa: BLE001 - the test reports it
            results[i] = e

    threads = [threading.Thread(target=load, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return results


def assert_whole(model: adapter.LM) -> None:
    """Loaded completely: no weight left on the meta device, tied output layer tied, and it runs."""
    assert not any(p.is_meta for p in model.model.parameters())
    if model.model.config.tie_word_embeddings:
        assert model.model.get_output_embeddings().weight is model.model.get_input_embeddings().weight
    if not model.is_masked:
        assert torch.isfinite(model.forward(model.new_kv(), model.encode("Once upon a time"))).all()


def assert_transformers_globals_restored(tie_weights, linspace) -> None:
    assert PreTrainedModel.tie_weights is tie_weights and torch.linspace is linspace
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize("names", [
    ["tiny-target"] * 4,
    ["tiny-target", "tiny-draft", "tiny-masked", "tiny-target"],
], ids=["same model", "mixed models"])
def test_four_cold_loads_at_once_all_succeed_and_read_each_model_once(cold, reads, names):
    tie_weights, linspace = PreTrainedModel.tie_weights, torch.linspace
    results = load_at_once(names)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    assert reads == collections.Counter(set(names))
    for name, model in zip(names, results):
        assert model.name == name and model is store.load(name)
        assert_whole(model)
    assert_transformers_globals_restored(tie_weights, linspace)
    assert store.load("tiny-draft").name == "tiny-draft"   # and loading goes on working afterwards


def test_every_spelling_of_a_model_is_one_cache_entry(cold, reads):
    folder = presets.MODELS_DIR / "tiny-target"
    spellings = ["tiny-target", " tiny-target", "tiny-target ", str(folder), str(folder) + "/",
                 str(folder).replace("/models/", "//models//"), str(folder / ".." / "tiny-target")]
    loaded = {id(store.load(s)) for s in spellings}
    assert len(loaded) == 1 and store.MODELS.names() == ["tiny-target"] and reads == {"tiny-target": 1}


def test_the_least_recently_used_model_goes_when_the_budget_is_full(cold, reads):
    masked, draft, target = (store.load(n) for n in ("tiny-masked", "tiny-draft", "tiny-target"))
    assert masked.weight_bytes < draft.weight_bytes < target.weight_bytes
    store.set_memory_budget(draft.weight_bytes + target.weight_bytes)   # target and one smaller model fit
    assert store.MODELS.names() == ["tiny-draft", "tiny-target"]        # the masked LM was used least recently
    store.load("tiny-draft")
    store.load("tiny-masked")            # read again; now the target is the least recently used and goes
    assert store.MODELS.names() == ["tiny-draft", "tiny-masked"] and reads["tiny-masked"] == 2
    freed = weakref.ref(target.model)
    del target
    assert freed() is None, "an evicted model that no run holds is freed"
    store.load("tiny-target")            # the draft is now the least recently used
    assert store.MODELS.names() == ["tiny-masked", "tiny-target"]
    assert store.MODELS.used_bytes <= store.MODELS.budget_bytes


def test_a_model_alone_over_the_budget_still_loads(cold):
    store.set_memory_budget(1)
    assert store.load("tiny-masked").name == "tiny-masked" and store.MODELS.names() == ["tiny-masked"]
    store.load("tiny-draft")
    assert store.MODELS.names() == ["tiny-draft"]


# ----------------------------------------------------------------------------- the conversion folder

def write_marked(marker: str):
    def write(folder: Path) -> None:
        (folder / "config.json").write_text(json.dumps({"writer": marker}))
        (folder / "weights.txt").write_text(marker * 1000)
    return write


def test_a_leftover_tmp_folder_of_a_killed_run_is_removed(tmp_path):
    out = tmp_path / "model"
    old_style, dead, own = (tmp_path / "model.tmp", tmp_path / "model.999999999-abc.tmp",
                            tmp_path / f"model.{os.getpid()}-xyz.tmp")
    for leftover in (old_style, dead, own):
        leftover.mkdir()
    convert.write_atomically(out, write_marked("a"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert json.loads((out / "config.json").read_text()) == {"writer": "a"}


WRITER = """
import sys, time
from pathlib import Path
from engines.models import convert
def write(folder):
    (folder / "config.json").write_text('{"writer": "%s"}' % sys.argv[2])
    time.sleep(1.5)   # both processes are writing at once
    (folder / "weights.txt").write_text(sys.argv[2] * 1000)
convert.write_atomically(Path(sys.argv[1]), write)
"""


def test_two_processes_converting_at_once_never_clobber_each_other(tmp_path):
    out = tmp_path / "model"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(out), marker]) for marker in "ab"]
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    winner = json.loads((out / "config.json").read_text())["writer"]
    assert (out / "weights.txt").read_text() == winner * 1000       # one writer's whole copy, not a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the loser's copy is gone


# ----------------------------------------------------------------------------- no server paths

def refusal(name: str) -> str:
    with pytest.raises(presets.ModelLoadError) as refused:
        store.load(name)
    return str(refused.value)


def assert_says_no_path(message: str, *paths: Path) -> None:
    assert len(message.splitlines()) == 1 and message.endswith(".")
    assert not ABSOLUTE_PATH.search(message), message
    for p in (Path.cwd(), Path.home(), presets.MODELS_DIR, *paths):
        assert str(p) not in message


def test_messages_about_folders_reveal_no_path_nor_what_is_there(tmp_path):
    (tmp_path / "a" / "m").mkdir(parents=True)     # a folder without config.json
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")     # has a config.json, but is no model
    messages = {name: refusal(name) for name in
                ["../../", "..", "/etc", "/etc/", "~", str(tmp_path / "a" / "m"), str(tmp_path / "b" / "m"),
                 str(broken), "no such model", "x" * 500]}
    for message in messages.values():
        assert_says_no_path(message, tmp_path)
    # an empty folder and a missing one get the same sentence: a stranger cannot tell which exists
    assert messages[str(tmp_path / "a" / "m")] == messages[str(tmp_path / "b" / "m")]
    assert messages["../../"] == messages[".."]


def test_a_trace_names_models_without_server_paths(tmp_path):
    mine = tmp_path / "my-model"
    shutil.copytree(presets.MODELS_DIR / "tiny-draft", mine)
    run = Run("speculative", "Once upon a time", {"max_new_tokens": 3, "k": 2},
              target=str(presets.MODELS_DIR / "tiny-target") + "/", draft=str(mine))
    text = run.run().to_json()
    assert json.loads(text)["models"] == {"target": "tiny-target", "draft": "my-model"}
    assert str(tmp_path) not in text and str(presets.MODELS_DIR) not in text and str(Path.home()) not in text
