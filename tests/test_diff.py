"""The trace schema (every recorded trace follows it; anything else is refused in one sentence) and the
trace diff, in Python and from the command line."""
import copy
import json

import pytest

from engines.analysis.diff import checked, diff
from engines.methods import METHODS, Run
from engines.schema import SCHEMA_VERSION, trace_schema, validate
from engines.trace import Trace

PROMPT = "The quick brown fox jumps over the lazy dog. The quick brown fox"
RUNS = [("autoregressive", {}), ("autoregressive", {"temperature": 0.8}), ("speculative", {"k": 3}),
        ("speculative", {"k": 3, "temperature": 0.8}), ("speculative", {"drafter": "ngram"}), ("tree", {}),
        ("tree", {"tree": "sparse", "temperature": 0.8}), ("jacobi", {}), ("lookahead", {}),
        ("lookahead", {"temperature": 0.8}), ("mask-predict", {"max_new_tokens": 16, "length": 8}),
        ("mask-predict", {"max_new_tokens": 16, "length": 8, "strategy": "diffusion", "block": 4})]


@pytest.fixture(scope="module")
def recorded(tiny_target, tiny_draft, tiny_masked):
    out = []
    for method, settings in RUNS:
        target = tiny_masked if METHODS[method].model_kind == "masked" else tiny_target
        run = Run(method, PROMPT, {"max_new_tokens": 8, **settings}, target=target.source, draft=tiny_draft.source,
                  seed=3)
        out.append(json.loads(run.run().to_json()))
    return out


def test_every_recorded_trace_follows_the_schema(recorded):
    assert {d["method"] for d in recorded} == set(METHODS)
    for d in recorded:
        assert d["schema_version"] == SCHEMA_VERSION
        validate(d)


def test_the_published_schema_agrees_with_a_standard_validator(recorded):
    jsonschema = pytest.importorskip("jsonschema")
    schema = trace_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for d in recorded:
        jsonschema.validate(d, schema)
    broken = copy.deepcopy(recorded[2])
    del broken["steps"][0]["accepted"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def broken_copies(d):
    """(a trace that breaks the schema, what the sentence must name)."""
    missing = copy.deepcopy(d)
    del missing["steps"][1]["draft_tokens"]
    wrong = copy.deepcopy(d)
    wrong["steps"][0]["accepted"] = "two"
    old = copy.deepcopy(d)
    del old["schema_version"]
    future = dict(d, schema_version=SCHEMA_VERSION + 1)
    unknown = dict(d, method="beam-search")
    return [(missing, "draft_tokens"), (wrong, "steps[0].accepted"), (old, "no schema version"),
            (future, f"version {SCHEMA_VERSION + 1}"), (unknown, "beam-search")]


def test_a_trace_that_breaks_the_schema_is_refused_in_one_sentence(recorded):
    spec = recorded[2]
    for bad, names in broken_copies(spec):
        with pytest.raises(ValueError) as e:
            checked(bad)
        message = str(e.value)
        assert names in message and "\n" not in message and message.count(". ") <= 1, message
    with pytest.raises(ValueError, match="schema version"):   # the Trace reader refuses other versions too
        Trace.from_dict(broken_copies(spec)[2][0])


def test_diff_finds_the_first_differing_step_and_the_most_upstream_field(recorded):
    spec = checked(recorded[3])   # speculative, sampled
    assert diff(spec, spec).difference is None
    moved = copy.deepcopy(recorded[3])
    last = len(moved["steps"]) - 1
    moved["steps"][last]["positions"][0]["p"] += 1e-3
    d = diff(spec, checked(moved)).difference
    assert d.step == last and d.kind == "probabilities" and d.field == "positions[0].p"
    assert diff(spec, checked(moved), tolerance=1e-2).difference is None
    nudged = copy.deepcopy(recorded[3])
    nudged["steps"][1]["positions"][0]["u"] = 0.999999
    nudged["steps"][1]["positions"][0]["status"] = "rejected"
    d = diff(spec, checked(nudged)).difference
    assert d.step == 1 and d.kind == "decisions"
    redrafted = copy.deepcopy(recorded[3])
    redrafted["steps"][0]["draft_tokens"][0] += 1
    redrafted["steps"][0]["positions"][0]["p"] = 0.5
    assert diff(spec, checked(redrafted)).difference.kind == "drafts"   # upstream of the probabilities


def test_diff_refuses_traces_of_different_methods(recorded):
    with pytest.raises(ValueError, match="different methods"):
        diff(checked(recorded[0]), checked(recorded[2]))


def test_diff_from_the_command_line(recorded, tmp_path, cli):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(recorded[2]))
    b.write_text(json.dumps(recorded[4]))   # the same method and prompt, another drafter
    r = cli("diff", a, b, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["difference"]["step"] == 0 and any("drafter" in c for c in out["config_changes"])
    b.write_text("{not json")
    r = cli("diff", a, b)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not JSON" in r.stderr
