"""What the explorer says and shows is true of the recorded steps (issue 21, "Say what is true", "Tokens as text").

Each test builds the situation (synthetic steps from tests/synthetic.py, or a tiny model from tests/conftest.py)
and reads the words, figures and chips the explorer makes of it.
"""
from __future__ import annotations

import json
import random

from engines.__main__ import main as cli_main
from engines.schema import trace_schema
from explorer.figures import tree as tree_figures
from tests import synthetic


# ----------------------------------------------------------------------------- the command line

def test_tree_trace_with_the_suffix_drafter_is_accepted_from_the_command_line(tiny_target, capsys):
    code = cli_main(["trace", "--method", "tree", "--drafter", "suffix", "--prompt", "Once upon a time",
                     "--max-new-tokens", "4", "--target", tiny_target.source])
    out, err = capsys.readouterr()
    assert code == 0, err
    trace = json.loads(out)
    assert trace["method"] == "tree" and trace["config"]["drafter"] == "suffix"


def test_a_drafter_the_method_lacks_is_refused_in_one_sentence(tiny_target, capsys):
    code = cli_main(["trace", "--method", "speculative", "--drafter", "suffix", "--prompt", "Once upon a time",
                     "--max-new-tokens", "4", "--target", tiny_target.source])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("error: ") and "suffix" in err and "Traceback" not in err


def test_schema_command_prints_the_published_trace_schema(capsys):
    assert cli_main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == trace_schema()


# ----------------------------------------------------------------------------- 1. a suffix tree that matched nothing

def suffix_miss_trace():
    """A tree run with the suffix drafter, 16 new tokens: three one-token steps, then a step whose suffix tree
    held no continuation of the text (13 tokens still to generate)."""
    rnd = random.Random(1)
    steps = [synthetic.tree_step(rnd, i, shape="dynamic", budget=16, depth=4, topk=3, room=0, greedy=True,
                                 produced=i, max_new_tokens=16, drafter="suffix") for i in range(4)]
    for s in steps:
        s.detail["suffix_match"] = {"length": 0, "tokens": [], "occurrences": 0}
    config = synthetic.tree_config(shape="dynamic", budget=16, depth=4, topk=3, greedy=True, max_new_tokens=16,
                                   drafter="suffix")
    return synthetic.trace_of("tree", steps, config)


def test_a_suffix_tree_that_matched_nothing_is_called_so_not_a_spent_budget():
    trace = suffix_miss_trace()
    said = tree_figures.words(trace, 3)
    assert "Only one token was left" not in said
    assert "13 tokens were left" in said and "suffix tree matched nothing" in said
    assert "plain target forward" in said
    title = tree_figures.draft_tree(trace, 3).layout.title.text
    assert "0 nodes" not in title and "suffix tree matched nothing" in title and "plain target forward" in title


def test_the_last_token_of_the_budget_is_still_called_the_last():
    rnd = random.Random(2)
    steps = [synthetic.tree_step(rnd, i, shape="dynamic", budget=16, depth=4, topk=3, room=0, greedy=True,
                                 produced=i, max_new_tokens=2) for i in range(2)]
    trace = synthetic.trace_of("tree", steps, synthetic.tree_config(shape="dynamic", budget=16, depth=4, topk=3,
                                                                    greedy=True, max_new_tokens=2))
    assert "Only one token was left to generate" in tree_figures.words(trace, 1)
    assert "one token left" in tree_figures.draft_tree(trace, 1).layout.title.text
