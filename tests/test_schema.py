"""The trace format as a contract: every method's step record, declared as a TypedDict beside its engine, is the
published JSON Schema; real runs of every method and its main settings follow it and emit declared fields only;
a record that breaks it is refused in one sentence; seeded draws do not depend on torch's default dtype."""
import copy
import json
import types
from typing import Union, get_args, get_origin, get_type_hints, is_typeddict

import pytest
import torch

from engines import schema
from engines.analysis.verify_draft import verify_draft
from engines.decoding import mask_predict as mp
from engines.decoding import speculative, tree, verify_tree
from engines.decoding.sampling import Sampling, sample, uniform
from engines.methods import METHODS, Run
from engines.schema import (
    SCHEMA_VERSION,
    declared_fields,
    required_keys,
    step_records,
    trace_schema,
    validate,
)
from engines.trace import Step
from tests.test_heads import head_dir  # noqa: F401  (the fixture: shipped heads for tiny-target, else random ones)
from tests.test_mask_predict import CausalCache

PROMPT = "The quick brown fox jumps over the lazy dog. The quick brown fox"
SAMPLED = {"temperature": 0.8}
RUNS = [("autoregressive", {}), ("autoregressive", {**SAMPLED, "top_k": 20}),
        ("speculative", {"k": 3}), ("speculative", {"k": 3, **SAMPLED}), ("speculative", {"drafter": "ngram"}),
        ("speculative", {"drafter": "heads", "schedule": "adaptive"}), ("speculative", {"drafter": "eagle", **SAMPLED}),
        ("speculative", {"acceptance": "typical", **SAMPLED}),
        ("speculative", {"drafter": "early-exit", "exit_layer": 2, **SAMPLED}), ("tree", {"drafter": "early-exit"}),
        ("speculative", {"k": 3, "verification": "block", **SAMPLED}),
        ("tree", {}), ("tree", {"tree": "sparse", **SAMPLED}), ("tree", {"drafter": "heads", "tree": "chain"}),
        ("tree", {"drafter": "eagle", **SAMPLED}), ("tree", {"drafter": "suffix"}),
        ("tree", {"drafter": "recycling"}), ("tree", {"drafter": "retrieval"}),
        ("tree", {"acceptance": "typical", **SAMPLED}), ("tree", {"tree_budget": 0}),
        ("jacobi", {}), ("jacobi", {"init": "random"}), ("lookahead", {"max_new_tokens": 12}),
        ("lookahead", {"max_new_tokens": 12, "ngram": 2, **SAMPLED}),   # bigrams pool from the first step: draws
        ("mask-predict", {"length": 6}), ("mask-predict", {"length": 6, "strategy": "diffusion", "block": 3}),
        ("mask-predict", {"length": 6, "strategy": "threshold", "threshold": 0.3, "curve": "off"}),
        ("mask-predict", {"length": 6, "strategy": "random", "curve": "off", **SAMPLED}),
        ("mask-predict", {"length": 6, "strategy": "remdm", "remask": 1.0, "remask_schedule": "conf", **SAMPLED}),
        ("mask-predict", {"length": 0, "length_beam": 2, "curve": "off"})]


# ----------------------------------------------------------------------------- the schema itself

def test_the_schema_is_generated_from_the_records():
    """Each method's required keys are its record's (plus the Step counters); every nested record is under $defs
    with its own required keys; every field has its one-line comment as a description; no record reuses a
    counter's name (Step.to_dict would refuse it)."""
    document = trace_schema()
    common = [name for name in get_type_hints(Step) if name != "detail"]
    for method, record in step_records().items():
        step = document["$defs"][f"step-{method}"]
        assert set(step["required"]) == set(common) | required_keys(record)
        assert set(step["properties"]) == set(common) | set(declared_fields(record))
        assert not set(common) & set(declared_fields(record))
    methods = {r: m for m, r in step_records().items()}
    for record in all_records():
        nested = record not in methods
        fields = document["$defs"][record.__name__ if nested else f"step-{methods[record]}"]
        if nested:
            assert set(fields["required"]) == required_keys(record), record.__name__
        missing = [n for n, p in fields["properties"].items() if not p.get("description")]
        assert not missing, f"{record.__name__}: no comment for {missing}"
    assert json.loads(json.dumps(document)) == document
    # the required keys as declared: NotRequired fields are optional, the rest required
    assert "threshold" not in required_keys(speculative.DraftedPosition) and "p" in required_keys(
        speculative.DraftedPosition)
    optional = set(declared_fields(tree.TreeDetail)) - required_keys(tree.TreeDetail)
    assert {"heads", "suffix_match", "recycling", "retrieval_match", "residual_top"} <= optional


# ----------------------------------------------------------------------------- draws and the default dtype

def draws() -> dict[str, list]:
    """Every seeded draw the engines make, with one seed: uniforms, samples, accept/reject and commit orders."""
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1]], dtype=torch.float32)
    q = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.1, 0.1, 0.7]], dtype=torch.float32)
    rng = torch.Generator().manual_seed(5)
    out = {"uniform": [uniform(rng) for _ in range(4)], "sample": [sample(p[0], rng) for _ in range(4)]}
    verdict = speculative.verify(p, q, [0, 3], Sampling(temperature=1.0), rng)
    out["speculative_u"] = verdict.u.tolist()
    v = verify_tree.verify_sampled([-1, -1, 0], [1, 2, 3], torch.cat([p, p[:1]]), rng, draws=3)
    out["tree"] = [v.u.tolist(), v.final.tolist(), v.residual.tolist()]
    span = mp.Span(6, mask_id=9)
    cfg = mp.MaskPredictConfig(length=6, iterations=3, strategy="random", max_new_tokens=6)
    out["random_commit"] = mp.commit_or_remask(span, mp.plan(6, 0, 3)[0], span.masked(mp.plan(6, 0, 3)[0]), cfg,
                                               rng, frozenset())["draws"]
    return out


def test_seeded_draws_do_not_depend_on_the_default_dtype():
    """The app loads some models under a bf16 default dtype; a draw made then must equal the float32 one."""
    assert torch.get_default_dtype() == torch.float32
    reference = draws()
    try:
        torch.set_default_dtype(torch.bfloat16)
        under_bf16 = draws()
    finally:
        torch.set_default_dtype(torch.float32)
    assert json.dumps(under_bf16) == json.dumps(reference)


# ----------------------------------------------------------------------------- real runs

class BidirectionalCache(CausalCache):
    """The causal toy, declared bidirectional: every cached position is then stale, so each iteration is audited."""
    bidirectional = True


def prefix_cache_trace(model, strategy: str) -> dict:
    """mask-predict with cache=prefix (which the tiny masked LM cannot keep) on a toy with a real cache, as JSON."""
    cfg = mp.MaskPredictConfig(length=8, iterations=4, block=4, strategy=strategy, threshold=0.5, cache="prefix",
                               curve="off", max_new_tokens=8)
    steps = list(mp.mask_predict(model, [1, 2, 3], cfg, torch.Generator().manual_seed(0)))
    return json.loads(json.dumps({"method": "mask-predict", "steps": [s.to_dict() for s in steps]}))


@pytest.fixture(scope="module")
def recorded(tiny_target, tiny_draft, tiny_masked, head_dir):  # noqa: F811
    """(method, its steps as JSON) for every run above, the typed draft of 'be the drafter', and the cached prefix."""
    out = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("engines.drafting.heads.HEADS_DIR", head_dir)
        for method, settings in RUNS:
            target = tiny_masked if METHODS[method].model_kind == "masked" else tiny_target
            run = Run(method, PROMPT, {"max_new_tokens": 6, **settings}, target=target.source,
                      draft=tiny_draft.source, seed=3)
            out.append(json.loads(run.run().to_json()))
    ids = tiny_target.encode(PROMPT)
    for s in (Sampling(), Sampling(temperature=1.0)):
        step = verify_draft(tiny_target, ids, ids[-3:], s, torch.Generator().manual_seed(1))
        out.append(json.loads(json.dumps({"method": "speculative", "steps": [step.to_dict()]})))
    out += [prefix_cache_trace(model(), strategy) for model in (CausalCache, BidirectionalCache)
            for strategy in ("diffusion", "threshold", "remdm")]
    return out


def step_errors(d: dict) -> list[str]:
    step = trace_schema()["$defs"][f"step-{d['method']}"]
    return [e for i, s in enumerate(d["steps"]) if (e := schema.mismatch(s, step, f"steps[{i}]"))]


def test_every_method_and_setting_follows_the_schema(recorded):
    assert {d["method"] for d in recorded} == set(METHODS) == set(step_records())
    for d in recorded:
        if "schema_version" in d:   # a whole trace
            validate(d)
        assert step_errors(d) == [], d["method"]


def test_a_standard_validator_agrees(recorded):
    jsonschema = pytest.importorskip("jsonschema")
    document = trace_schema()
    jsonschema.Draft202012Validator.check_schema(document)
    validator = jsonschema.Draft202012Validator(document)
    for d in recorded:
        if "schema_version" in d:
            validator.validate(d)
        else:   # bare steps: each against its method's step schema, with the document's $defs
            step = jsonschema.Draft202012Validator({"$defs": document["$defs"], "$ref": f"#/$defs/step-{d['method']}"})
            for s in d["steps"]:
                step.validate(s)


def records_seen(value, annotation, seen: dict[str, list[set]]) -> None:
    """Walk a value along its declared type; note the keys of every TypedDict instance met, by record name."""
    if is_typeddict(annotation):
        if isinstance(value, dict):
            seen.setdefault(annotation.__name__, []).append(set(value))
            for name, (sub, _) in declared_fields(annotation).items():
                if name in value:
                    records_seen(value[name], sub, seen)
        return
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (list, tuple) and isinstance(value, list):
        items = [args[0]] * len(value) if origin is list or args[-1] is Ellipsis else args
        for item, sub in zip(value, items):
            records_seen(item, sub, seen)
    elif origin in (Union, types.UnionType):
        for option in args:
            records_seen(value, option, seen)


def test_engines_emit_every_declared_field_and_no_other(recorded):
    """Required fields are in every record, no record has an undeclared field, and every declared field, optional
    ones too, is emitted by some run: the declarations cannot drift from what the engines write."""
    common = {name for name in get_type_hints(Step) if name != "detail"}
    seen: dict[str, list[set]] = {}
    for d in recorded:
        record = step_records()[d["method"]]
        for s in d["steps"]:
            assert common <= s.keys()
            records_seen({k: v for k, v in s.items() if k not in common}, record, seen)
    records = {r.__name__: r for r in all_records()}
    assert seen.keys() == records.keys()
    for name, instances in seen.items():
        declared, emitted = set(declared_fields(records[name])), set.union(*instances)
        assert emitted - declared == set(), f"{name} emits fields it does not declare"
        assert declared - emitted == set(), f"{name} declares fields no run emitted"
        assert required_keys(records[name]) <= set.intersection(*instances), f"{name} left out a required field"


def all_records() -> list[type]:
    """Every TypedDict the step records are made of."""
    found: list[type] = []

    def walk(annotation):
        if is_typeddict(annotation):
            if annotation not in found:
                found.append(annotation)
                for sub, _ in declared_fields(annotation).values():
                    walk(sub)
        for arg in get_args(annotation):
            walk(arg)
    for record in step_records().values():
        walk(record)
    return found


def broken(d: dict) -> list[tuple[dict, str]]:
    """(a copy of trace d broken in one place, what the refusal must name)."""
    cases = []

    def edit(change, names):
        bad = copy.deepcopy(d)
        change(bad["steps"][0])
        cases.append((bad, names))
    edit(lambda s: s["positions"][0].update(prob=s["positions"][0].pop("p")), "steps[0].positions[0] has no field 'p'")
    edit(lambda s: s.pop("k_next"), "no field 'k_next'")
    edit(lambda s: s.update(accepted=2.5), "steps[0].accepted should be integer")
    edit(lambda s: s["positions"][0].update(status="maybe"), "steps[0].positions[0].status is 'maybe'")
    edit(lambda s: s["bonus_p_top"][0].append(7), "steps[0].bonus_p_top[0] has 3 items")
    edit(lambda s: s.update(target_cache=None), "steps[0].target_cache should be array")
    return cases


def test_a_broken_record_is_refused_in_one_sentence(recorded):
    spec = next(d for d in recorded if d["method"] == "speculative" and d["config"]["drafter"] == "model")
    for bad, names in broken(spec):
        with pytest.raises(ValueError) as e:
            validate(bad)
        message = str(e.value)
        assert names in message and "\n" not in message, message
        assert message.count(". ") == 0 and message.endswith("."), message
    assert schema.SCHEMA_VERSION == SCHEMA_VERSION == 1
