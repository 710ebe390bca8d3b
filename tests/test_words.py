"""What the explorer says and shows is true of the recorded steps (issue 21, "Say what is true", "Tokens as text").

Each test builds the situation (synthetic steps from tests/synthetic.py, or a tiny model from tests/conftest.py)
and reads the words, figures and chips the explorer makes of it.
"""
from __future__ import annotations

import json

from engines.__main__ import main as cli_main
from engines.schema import trace_schema


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
