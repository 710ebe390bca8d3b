"""REST, the retrieval drafter: the suffix array finds what brute force finds, the trie counts what it should,
greedy tree decoding with it equals transformers' generate, its record follows the schema, its words say it."""
import json
import random

import numpy as np
import pytest
import torch

from engines import schema
from engines.decoding.tree import TreeConfig, tree
from engines.drafting import datastore as D
from engines.drafting.base import RetrievalMatch
from engines.drafting.retrieval import RetrievalDrafter, chosen, nodes, trie
from explorer.figures import tree_words
from tests import synthetic
from tests.conftest import PROMPTS, greedy_reference


def ids_source(name: str, segments: list[list[int]]) -> D.Source:
    return D.Source(name, D.sha(json.dumps(segments).encode()), lambda tok: segments)


def toy_store(segments: list[list[int]]) -> D.Datastore:
    return D.build(None, [ids_source("toy", segments)], "toy")


# ----------------------------------------------------------------------------- the suffix array

def brute_force(tokens: list[int], query: list[int]) -> list[int]:
    return sorted(i for i in range(len(tokens) - len(query) + 1) if tokens[i:i + len(query)] == query)


@pytest.mark.parametrize("seed", range(5))
def test_the_suffix_array_sorts_and_finds_what_brute_force_finds(seed):
    rnd = random.Random(seed)
    segments = [[rnd.randrange(4) for _ in range(rnd.randrange(1, 60))] for _ in range(6)]
    ds = toy_store(segments)
    tokens = ds.tokens.tolist()
    suffixes = [[t if t >= 0 else -1 for t in tokens[i:]] for i in ds.order.tolist()]
    assert suffixes == sorted(suffixes) and sorted(ds.order.tolist()) == list(range(len(tokens)))
    for _ in range(40):
        query = [rnd.randrange(4) for _ in range(rnd.randrange(1, 6))]
        lo, hi = D.find(ds, query)
        assert sorted(ds.order[lo:hi].tolist()) == brute_force(tokens, query), query


def test_continuations_stop_at_a_segment_boundary():
    ds = toy_store([[1, 2, 3, 4], [1, 2, 9]])
    drafter = RetrievalDrafter(ds, max_match=4, min_match=2)
    length, occurrences, conts = drafter.retrieve([7, 1, 2], 3)
    assert (length, occurrences) == (2, 2)
    assert sorted(map(tuple, conts.tolist())) == [(3, 4, -1), (9, -1, -1)]


# ----------------------------------------------------------------------------- the trie and the tree

def test_the_trie_counts_the_continuations_through_each_node_and_keeps_the_most_frequent():
    conts = np.array([[5, 6, 7], [5, 6, 8], [5, 9, -1], [4, -1, -1], [5, 6, 7]])
    counted = trie(conts)
    assert counted == {(5,): 4, (4,): 1, (5, 6): 3, (5, 9): 1, (5, 6, 7): 2, (5, 6, 8): 1}
    kept = chosen(counted, 3)
    assert kept == [(5,), (5, 6), (5, 6, 7)]
    tree_nodes = nodes(chosen(counted, 5), counted, len(conts))
    assert [(n.path, n.token) for n in tree_nodes] == [((0,), 5), ((1,), 4), ((0, 0), 6), ((0, 1), 9),
                                                        ((0, 0, 0), 7)]
    assert [round(n.q, 4) for n in tree_nodes] == [0.8, 0.2, 0.75, 0.25, round(2 / 3, 4)]
    assert tree_nodes[-1].logq == pytest.approx(np.log(2 / 5))


def test_the_longest_matching_suffix_wins():
    ds = toy_store([[1, 2, 3, 4, 5], [9, 2, 3, 6]])
    drafter = RetrievalDrafter(ds, max_match=4, min_match=2)
    cfg = TreeConfig(drafter="retrieval", tree_budget=8, tree_depth=2)
    tree_nodes, _ = drafter.draft_tree([0, 1, 2, 3], cfg, 10)
    assert drafter.match["length"] == 3 and drafter.match["tokens"] == [1, 2, 3]
    assert [n.token for n in tree_nodes] == [4, 5]
    drafter.draft_tree([0, 7, 2, 3], cfg, 10)   # only "2 3" occurs: both continuations, one each
    assert drafter.match["length"] == 2 and drafter.match["occurrences"] == 2
    assert sorted(c["tokens"] for c in drafter.match["continuations"]) == [[4, 5], [6]]


# ----------------------------------------------------------------------------- the cache

def test_the_datastore_is_built_once_and_keyed_by_its_sources(tmp_path, tiny_target):
    tok = tiny_target.tokenizer
    book = tmp_path / "book.txt"
    book.write_text("Once upon a time there was a fox.\n\nThe fox ran\nover the hill.\n")
    D.LOADED.clear()
    first = D.datastore(tok, [D.text_source(book)], tmp_path / "store")
    assert D.datastore(tok, [D.text_source(book)], tmp_path / "store") is first
    folders = list((tmp_path / "store").iterdir())
    assert [f.name for f in folders] == [first.meta["name"]]
    meta = json.loads((folders[0] / "meta.json").read_text())
    assert meta["sources"][0]["name"] == "book.txt" and meta["sources"][0]["tokens"] > 10
    assert meta["bytes"] == first.tokens.nbytes + first.order.nbytes and meta["build_s"] >= 0
    book.write_text("Another text altogether.")
    assert D.datastore(tok, [D.text_source(book)], tmp_path / "store").meta["name"] != first.meta["name"]


# ----------------------------------------------------------------------------- greedy equals generate

def run(target, ids, n, drafter):
    cfg = TreeConfig(drafter="retrieval", tree_budget=16, tree_depth=6, max_new_tokens=n)
    steps = list(tree(target, None, ids, cfg, torch.Generator().manual_seed(0), drafter=drafter))
    return steps, [t for s in steps for t in s.committed_ids]


def test_greedy_equals_generate_on_tiny_target_with_a_small_datastore(tiny_target, tmp_path):
    ids = tiny_target.encode(PROMPTS[0])
    reference = greedy_reference(tiny_target, ids, 16)
    book = tmp_path / "book.txt"
    book.write_text("The quick brown fox jumps over the lazy dog.\n\nA brown fox again.\n")
    sources = [D.text_source(book), ids_source("seen", [ids[-4:] + reference[:12], reference[4:]])]
    drafter = RetrievalDrafter(D.datastore(tiny_target.tokenizer, sources, tmp_path / "store"))
    steps, out = run(tiny_target, ids, 16, drafter)
    assert out == reference
    assert len(steps) < 16   # the datastore held the target's own continuation: paths were accepted
    assert all(s.target_forwards == 1 and s.draft_forwards == 0 for s in steps)


def test_greedy_equals_generate_on_smollm2_with_the_real_datastore(smollm2):
    ids = smollm2.encode("It was the best of times, it was the worst of times, it was the age of")
    steps, out = run(smollm2, ids, 8, RetrievalDrafter(D.target_datastore(smollm2.tokenizer, smollm2.name)))
    assert out == greedy_reference(smollm2, ids, 8)
    assert steps[0].detail["retrieval_match"]["datastore"].startswith("corpus")


# ----------------------------------------------------------------------------- the record and its words

def test_the_record_follows_the_schema(tiny_target, tmp_path):
    ids = tiny_target.encode(PROMPTS[1])
    drafter = RetrievalDrafter(D.datastore(tiny_target.tokenizer, [ids_source("own", [ids + ids])],
                                           tmp_path / "store"))
    steps, _ = run(tiny_target, ids, 6, drafter)
    step_schema = schema.trace_schema()["$defs"]["step-tree"]
    for s in steps:
        d = json.loads(json.dumps(s.to_dict()))
        assert not schema.mismatch(d, step_schema, "step")
        assert set(d["retrieval_match"]) == set(schema.declared_fields(RetrievalMatch))
    broken = json.loads(json.dumps(steps[0].to_dict()))
    broken["retrieval_match"]["occurrences"] = "many"
    assert schema.mismatch(broken, step_schema, "step")


def retrieval_trace(length: int):
    rnd = random.Random(3)
    steps = [synthetic.tree_step(rnd, i, shape="dynamic", budget=8, depth=3, topk=2, room=0 if not length else 3,
                                 greedy=True, produced=i, max_new_tokens=16, drafter="retrieval") for i in range(2)]
    for s in steps:
        s.detail["retrieval_match"] = {
            "length": length, "tokens": [10, 11, 12][:length], "occurrences": 40 if length else 0,
            "read": 20 if length else 0, "continuations": [{"tokens": [13, 14], "count": 9}] if length else [],
            "datastore": "corpus-0123", "datastore_tokens": 1_000_000, "datastore_bytes": 8_000_000}
    config = synthetic.tree_config(shape="dynamic", budget=8, depth=3, topk=2, greedy=True, max_new_tokens=16,
                                   drafter="retrieval")
    return synthetic.trace_of("tree", steps, config)


def test_the_words_say_what_was_retrieved():
    trace = retrieval_trace(3)
    said = tree_words.words(trace, 1)
    assert "last 3 tokens" in said and "occurs 40 times" in said and "20 of them, evenly spaced" in said
    assert "×9" in said and "corpus-0123" in said and "1,000,000 tokens" in said
    missed = tree_words.words(retrieval_trace(0), 1)
    assert "no suffix of the text of 2 or more tokens occurs in the datastore" in missed
