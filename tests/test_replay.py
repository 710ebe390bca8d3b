"""A saved trace replays with no model at all: a fresh interpreter reads the JSON, draws every view of every step
and writes its words, and never imports torch (DESIGN: the UI can load a saved trace and replay it)."""
from __future__ import annotations

import json
import subprocess
import sys

from engines.methods import METHODS, Run

REPLAY = """
import json, sys
from engines.trace import Trace
from explorer.figures import VIEWS
drawn = 0
for path in sys.argv[1:]:
    trace = Trace.from_json(open(path, encoding="utf-8").read())
    view = VIEWS[trace.method]
    for i in range(len(trace.steps)):
        view.main(trace, i).to_json(), view.side(trace, i).to_json(), view.words(trace, i), view.chips(trace, i)
        drawn += 1
print(json.dumps({"drawn": drawn, "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


def test_every_method_replays_without_torch(tmp_path, tiny_target, tiny_draft, tiny_masked):
    paths = []
    for name in METHODS:
        target = tiny_masked if METHODS[name].model_kind == "masked" else tiny_target
        settings = {"max_new_tokens": 6, "length": 6, "iterations": 3} if name == "mask-predict" else \
            {"max_new_tokens": 6}
        trace = Run(name, "Once upon a time", settings, target=target.source, draft=tiny_draft.source).run()
        path = tmp_path / f"{name}.json"
        path.write_text(trace.to_json())
        paths.append(str(path))
    r = subprocess.run([sys.executable, "-c", REPLAY, *paths], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["drawn"] >= len(METHODS)
    assert result == {"drawn": result["drawn"], "torch": False, "transformers": False}


def test_the_replay_check_sees_torch_when_it_is_imported(tmp_path):
    """The check above can fail: the same probe reports torch once something imports it."""
    r = subprocess.run([sys.executable, "-c", "import sys, torch; print('torch' in sys.modules)"],
                       capture_output=True, text=True, timeout=300)
    assert r.stdout.strip() == "True"
