"""The app driven as a program: gradio_client against a local launch."""
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from engines.models import store
from tests.conftest import panel_of

TARGET = "tiny-target" if store.available("tiny-target") else "smollm2-135m-instruct"


def settings(prompt="Once upon a time", max_new_tokens=6, method="autoregressive", target=TARGET):
    # Method, Prompt, Target, Draft, Seed, then the shared decode settings and every method's own options
    return [method, prompt, target, "tiny-draft", 0, max_new_tokens, 0.0, 0, 1.0]


@pytest.fixture(scope="module")
def url(app_url):
    return app_url


def call(client: Client, api: str, *args):
    return client.predict(*args, api_name=api)


def screen(client: Client, api: str, *args) -> dict:
    """The results panel an action answers with, by name."""
    return panel_of(call(client, api, *args))


def downloaded(client: Client, method: str) -> dict:
    """The trace the Download button hands over for the tab of `method`."""
    return json.loads(Path(call(client, "/download_trace", method)).read_text())


def full_args(client: Client, base: list) -> list:
    """Fill every method-specific option with its default (the API lists them after the shared ones)."""
    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/step"]["parameters"]
    return base + [p.get("parameter_default") for p in params[len(base):]]


def test_reset_step_back_run(url):
    c = Client(url, verbose=False)
    args = full_args(c, settings())
    out = screen(c, "/reset", *args)
    assert "Before the first iteration" in out["position"]
    for i in range(3):
        out = screen(c, "/step", *args)
        assert f"Iteration {i + 1} of {i + 1}" in out["position"]
    third = out["record"]
    out = screen(c, "/back", "autoregressive")
    assert "Iteration 2 of 3" in out["position"]
    assert out["record"]["index"] == 1 and out["record"] != third
    out = screen(c, "/step", *args)                 # replays the recorded third step
    assert out["record"] == third
    last = panel_of(list(c.submit(*args, api_name="/run"))[-1])
    assert "finished" in last["position"]
    trace = downloaded(c, "autoregressive")
    assert len(trace["output_ids"]) == 6 and trace["steps"][2] == third


def test_two_clients_keep_separate_traces(url):
    def run(prompt):
        c = Client(url, verbose=False)
        args = full_args(c, settings(prompt=prompt, max_new_tokens=3))
        call(c, "/reset", *args)
        for _ in range(3):
            call(c, "/step", *args)
        return downloaded(c, "autoregressive")

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(run, ["Once upon a time", "The capital of France is"])
    assert a["prompt"] == "Once upon a time" and b["prompt"] == "The capital of France is"
    assert len(a["steps"]) == len(b["steps"]) == 3


def test_a_loaded_trace_replays_without_a_model(url, tmp_path):
    c = Client(url, verbose=False)
    args = full_args(c, settings(max_new_tokens=4))
    list(c.submit(*args, api_name="/run"))
    path = call(c, "/download_trace", "autoregressive")
    loaded = call(c, "/load_trace", handle_file(path))
    assert loaded[0] == "autoregressive"           # the controls the trace came from come first, the panel last
    assert "replay of a loaded trace" in panel_of(loaded)["position"]
    back = screen(c, "/back", "autoregressive")
    assert "Iteration 3 of 4" in back["position"]


@pytest.mark.parametrize("change, says", [
    ({1: "   "}, "prompt is empty"),
    ({5: 0}, "max new tokens"),
    ({2: "no-such-model"}, "Unknown model"),
    ({2: "someone/not-reachable"}, "hub"),
])
def test_bad_input_is_one_sentence(url, change, says):
    c = Client(url, verbose=False)
    args = full_args(c, settings())
    for i, v in change.items():
        args[i] = v
    with pytest.raises(Exception) as e:
        call(c, "/reset", *args)
    assert says in str(e.value) and "Traceback" not in str(e.value)


def test_a_file_that_is_not_a_trace_is_refused_in_one_plain_sentence(url, tmp_path):
    """Issue 21: a JSON file that is not a trace was answered "(KeyError: 'method')", a Python exception's name."""
    c = Client(url, verbose=False)
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(Exception) as e:
        call(c, "/load_trace", handle_file(str(bad)))
    message = str(e.value)
    assert "This JSON file is not a trace saved by this app or its CLI: it has no method" in message
    assert "KeyError" not in message and "'method'" not in message and "\n" not in message


def test_showing_a_run_writes_no_file_and_the_download_writes_it_once_per_state(tmp_path, monkeypatch,
                                                                                  tiny_target):
    """render is pure: a Step wrote the whole trace each time (bytes growing with the square of the run's
    length). The file is written when it is downloaded, once per state of the run."""
    from engines.methods import Run
    from engines.trace import Trace
    from explorer import render
    from explorer.session import Session
    monkeypatch.setattr(render, "TRACE_DIR", tmp_path)
    session = Session.start(Run("autoregressive", "Once upon a time", {"max_new_tokens": 3}, target=tiny_target.source))
    for _ in range(2):
        session.step()
        assert render.render(session, "autoregressive").downloadable
    assert list(tmp_path.iterdir()) == []
    first = render.save_trace(session.trace, session.key)
    written = Path(first).stat().st_mtime_ns
    session.back()
    assert render.save_trace(session.trace, session.key) == first and Path(first).stat().st_mtime_ns == written
    session.step()
    session.step()
    last = render.save_trace(session.trace, session.key)
    assert last != first and [p.name for p in tmp_path.iterdir()] == [Path(last).name]
    assert Trace.from_json(Path(last).read_text()).to_json() == session.trace.to_json()


@pytest.mark.parametrize("method, settings", [
    ("autoregressive", {"max_new_tokens": 5}), ("speculative", {"max_new_tokens": 7, "k": 3}),
    ("tree", {"max_new_tokens": 7}), ("jacobi", {"max_new_tokens": 7}), ("lookahead", {"max_new_tokens": 7}),
    ("mask-predict", {"length": 6, "iterations": 3, "max_new_tokens": 8}),
])
def test_exactly_the_last_step_is_final_and_the_run_knows_at_once(method, settings, tiny_target, tiny_draft,
                                                                    tiny_masked):
    from engines.methods import METHODS, Run
    target = tiny_masked if METHODS[method].model_kind == "masked" else tiny_target
    run = Run(method, "Once upon a time", settings, target=target.source, draft=tiny_draft.source)
    finished = []
    while run.step() is not None:
        finished.append(run.finished)
    assert finished[-1] and not any(finished[:-1])
    assert [s.final for s in run.trace.steps] == finished
