"""notebook.ipynb: valid nbformat 4 with no stored outputs, and every code cell runs, in order, in one namespace (as
a kernel would run them; no Jupyter needed), printing the engines' own records: greedy outputs equal generate(),
every drafter is tried, the printed coins are the recorded ones, the saved trace loads back the same."""
from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch

from engines.drafting.registry import DRAFTERS, names
from tests.conftest import greedy_reference

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebook.ipynb"


def cells() -> list[dict]:
    return json.loads(NOTEBOOK.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_the_notebook_is_nbformat_4_with_no_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4 and nb["nbformat_minor"] >= 5
    assert nb["metadata"]["kernelspec"]["language"] == "python"
    kinds = [c["cell_type"] for c in nb["cells"]]
    assert set(kinds) == {"markdown", "code"} and kinds[0] == "markdown"
    ids = [c["id"] for c in nb["cells"]]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", i) for i in ids)
    for c in nb["cells"]:
        assert isinstance(c["source"], list) and all(isinstance(line, str) for line in c["source"])
        assert c["metadata"] == {}
        if c["cell_type"] == "code":
            assert c["outputs"] == [] and c["execution_count"] is None
            compile(source(c), c["id"], "exec")
        else:
            assert "outputs" not in c and "execution_count" not in c


@pytest.fixture(scope="module")
def executed() -> tuple[dict, str]:
    """Every code cell in order in one namespace, on one torch thread (the tiny models' forwards are too small for
    two to help, and on a busy machine two spin against the other work), and what they printed."""
    namespace: dict = {"__name__": "__notebook__"}
    printed = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(printed):
            for c in cells():
                if c["cell_type"] == "code":
                    code = compile(source(c), f"notebook.ipynb:{c['id']}", "exec")
                    exec(code, namespace)  # noqa: S102 - the notebook's own cells, run as a kernel would
    finally:
        torch.set_num_threads(threads)
    return namespace, printed.getvalue()


def test_it_runs_on_the_tiny_models_by_default(executed):
    ns, _ = executed
    assert ns["USE_SMOLLM2"] is False
    assert (ns["TARGET"], ns["DRAFT"], ns["MASKED"]) == ("tiny-target", "tiny-draft", "tiny-masked")
    assert ns["reference"].models == {"target": "tiny-target"}
    assert ns["masked"].models == {"target": "tiny-masked"}


def test_greedy_outputs_equal_generate(executed, tiny_target):
    ns, _ = executed
    reference = ns["reference"]
    assert reference.output_ids == greedy_reference(tiny_target, reference.prompt_ids, ns["N"])
    for trace in (ns["jacobi"], ns["lookahead"]):
        assert trace.output_ids == reference.output_ids, trace.method


def test_every_drafter_that_serves_the_target_runs_and_equals_the_reference(executed):
    ns, printed = executed
    outputs = ns["outputs"]
    for method, kind in (("speculative", "chain"), ("tree", "tree")):
        for name in names(kind):
            if DRAFTERS[name].serves("tiny-target"):
                assert outputs[method, name] == ns["reference"].output_ids, (method, name)
                assert re.search(rf"{method} +{re.escape(name)} +[0-9.]+ tokens per target forward, equals the "
                                 rf"reference: True", printed), (method, name)
            else:
                assert f"no {name} drafter for tiny-target" in printed
    # the tree drafters the issue names are all among them
    assert {"suffix", "heads", "eagle", "recycling", "retrieval", "early-exit"} <= {n for _, n in outputs}


def test_the_printed_decisions_are_the_recorded_p_q_and_coins(executed):
    ns, printed = executed
    sampled = ns["sampled"]
    assert sampled.config["temperature"] == 1.0 and sampled.config["seed"] == 0
    lines = re.findall(r"x_(\d+) = .* p = ([0-9.]+) +q = ([0-9.]+) +u = ([0-9.]+) vs min\(1, p/q\) = ([0-9.]+) +-> "
                       r"(\w+)", printed)
    positions = [pos for s in sampled.steps for pos in s.detail["positions"]]
    assert len(lines) == len(positions) > 0
    for (i, p, q, u, ratio, status), pos in zip(lines, positions):
        assert (float(p), float(q), float(u), float(ratio)) == pytest.approx(
            (pos["p"], pos["q"], pos["u"], pos["ratio"]), abs=6e-4)
        assert status == pos["status"]
    for step in sampled.steps:   # the rule the words explain: kept while u <= min(1, p/q)
        kept = 0
        for pos in step.detail["positions"]:
            if pos["u"] > pos["ratio"]:
                break
            kept += 1
        assert step.detail["accepted"] == kept


def test_block_verification_prints_each_steps_block_and_token_counts(executed):
    ns, printed = executed
    block = ns["block"]
    assert block.config["verification"] == "block"
    said = re.findall(r"block kept (\d+), token verification would keep (\d+)", printed)
    assert [(int(a), int(b)) for a, b in said] == [(s.detail["block"]["accepted"], s.detail["block"]["token_accepted"])
                                                   for s in block.steps]


def test_mask_predict_and_jacobi_print_their_steps(executed):
    ns, printed = executed
    masked = ns["masked"]
    assert masked.method == "mask-predict" and len(masked.steps) == 6 and len(masked.output_ids) == ns["N"]
    assert printed.count("iteration ") >= 6
    assert "Jacobi step 1 read" in printed


def test_the_figure_and_the_saved_trace(executed):
    ns, printed = executed
    assert isinstance(ns["figure"], go.Figure) and ns["figure"].layout.title.text.startswith("Step 1")
    assert ns["loaded"].to_json() == ns["sampled"].to_json()
    assert "same output: True; same trace: True" in printed


def test_every_mask_predict_strategy_runs_and_remdm_prints_its_recorded_coins(executed):
    ns, printed = executed
    from engines.decoding.mask_predict import STRATEGIES
    runs = ns["strategy_runs"]
    assert set(runs) == set(STRATEGIES)
    for strategy, trace in runs.items():
        assert trace.config["strategy"] == strategy and len(trace.output_ids) == ns["N"]
        assert re.search(rf"^{strategy} +{len(trace.steps)} forwards: ", printed, re.M), strategy
    recorded = [[f"{c:.2f}" for c in s.detail["spans"][s.detail["best"]]["remasking"]["coins"]]
                for s in runs["remdm"].steps if s.detail["spans"][s.detail["best"]].get("remasking", {}).get("coins")]
    shown = [re.findall(r"'([0-9.]+)'", line) for line in re.findall(r"sigma_t [0-9.]+, coins (\[.*?\])", printed)]
    assert shown == recorded and len(recorded) >= 2   # eta 0.5 over 6 iterations: coins in the middle ones
