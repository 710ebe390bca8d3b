"""Errors leave everything usable, and the controls describe the run on screen.

The session rules are checked on stub runs (no model), the handlers as the UI calls them (no server):
a run whose construction or first step fails is discarded, a failed step changes no recorded step, a
trace that does not fit its method is refused before it replaces anything, and changed controls start
a new run that says so.
"""
from __future__ import annotations

import random

import gradio as gr
import pytest

from engines.config import DecodeConfig, fields
from engines.methods import METHODS, method_default_target
from engines.trace import Step, Trace
from explorer import controls as ui_controls
from explorer import handlers as ui_handlers
from explorer import render
from explorer.limits import ServerLimits
from explorer.session import Session, Sessions
from tests import synthetic as syn


@pytest.fixture(autouse=True)
def trace_files_in_a_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(render, "TRACE_DIR", tmp_path)


class StubRun:
    """A Run as Session uses it: a trace that grows by one step per call, failing at step `fail_at`."""

    def __init__(self, fail_at: int | None = None, steps: int = 5):
        self.trace = syn.trace_of("autoregressive", [], syn.sampling_config(True, steps))
        self.fail_at, self.steps = fail_at, steps

    @property
    def finished(self) -> bool:
        return self.trace.finished

    def step(self) -> Step | None:
        index = len(self.trace.steps)
        if index == self.fail_at:
            raise ValueError("The engine could not go on.")
        if self.finished:
            return None
        step = syn.autoregressive_step(random.Random(index), index, greedy=True, final=index == self.steps - 1)
        self.trace.steps.append(step)
        self.trace.finished = step.final
        return step


WANTED = {"method": "autoregressive", "prompt": "Once upon a time", "target": "tiny-target", "draft": None,
          "seed": 0, "settings": {"max_new_tokens": 5, "temperature": 0.0, "top_k": 0, "top_p": 1.0}}


def starter(**run):
    return lambda: Session.start(StubRun(**run), WANTED)


# ----------------------------------------------------------------------------- sessions on stub runs

def test_a_run_whose_first_step_fails_is_discarded_and_the_next_step_starts_fresh():
    sessions = Sessions()
    with pytest.raises(ValueError):
        sessions.advance("autoregressive", WANTED, starter(fail_at=0))
    assert sessions.get("autoregressive") is None
    session, moved = sessions.advance("autoregressive", WANTED, starter())
    assert moved and session.cursor == 0 and len(session.trace.steps) == 1 and not session.failed


def test_a_failed_first_step_leaves_the_run_on_screen_as_it_was():
    sessions = Sessions()
    shown, _ = sessions.advance("autoregressive", WANTED, starter())
    changed = {**WANTED, "prompt": "It was a dark night"}
    with pytest.raises(ValueError):
        sessions.advance("autoregressive", changed, starter(fail_at=0))
    assert sessions.get("autoregressive") is shown and shown.cursor == 0 and not shown.failed


def test_a_failed_step_keeps_the_recorded_steps_and_the_next_step_starts_a_new_run():
    sessions = Sessions()
    for _ in range(2):
        session, _ = sessions.advance("autoregressive", WANTED, starter(fail_at=2))
    with pytest.raises(ValueError):
        sessions.advance("autoregressive", WANTED, starter(fail_at=2))
    assert len(session.trace.steps) == 2 and session.cursor == 1 and session.failed
    assert not session.trace.finished          # a dead engine must not read as a finished run
    assert "stopped at an error" in render.render(session, "autoregressive").position
    session.back()
    assert session.step() and session.cursor == 1   # the recorded steps still replay
    fresh, moved = sessions.advance("autoregressive", WANTED, starter())
    assert fresh is not session and moved and fresh.cursor == 0
    assert "stopped at an error" in render.render(fresh, "autoregressive").position


def test_the_same_controls_continue_the_run():
    sessions = Sessions()
    first, _ = sessions.advance("autoregressive", WANTED, starter())
    again, moved = sessions.advance("autoregressive", dict(WANTED), starter())
    assert again is first and moved and again.cursor == 1 and again.note == ""


def test_changed_controls_start_a_new_run_and_say_which():
    sessions = Sessions()
    first, _ = sessions.advance("autoregressive", WANTED, starter())
    changed = {**WANTED, "prompt": "It was a dark night", "settings": {**WANTED["settings"], "temperature": 0.7}}
    second, moved = sessions.advance("autoregressive", changed, lambda: Session.start(StubRun(), changed))
    assert second is not first and moved and second.cursor == 0
    assert second.note == "New run: the prompt and temperature changed."
    assert "New run: the prompt and temperature changed." in render.render(second, "autoregressive").position
    third, _ = sessions.advance("autoregressive", changed, starter())
    assert third is second and third.note == ""      # said once


def test_run_to_end_again_starts_a_new_run_and_step_does_not():
    sessions = Sessions()
    for _ in range(5):
        session, _ = sessions.advance("autoregressive", WANTED, starter())
    assert session.at_end
    same, moved = sessions.advance("autoregressive", WANTED, starter())
    assert same is session and not moved
    fresh, moved = sessions.advance("autoregressive", WANTED, starter(), again=True)
    assert fresh is not session and moved


# ----------------------------------------------------------------------------- loading a trace

def speculative_trace() -> Trace:
    rnd = random.Random(1)
    steps = [syn.speculative_step(rnd, 0, k=4, drafted=4, accepted=2, greedy=True, drafter="model")]
    return syn.trace_of("speculative", steps, syn.speculative_config(k=4, greedy=True, drafter="model",
                                                                     schedule="constant", max_new_tokens=16))


def tree_trace() -> Trace:
    rnd = random.Random(2)
    steps = [syn.tree_step(rnd, 0, shape="sparse", budget=16, depth=4, topk=3, room=8, greedy=True)]
    return syn.trace_of("tree", steps, syn.tree_config(shape="sparse", budget=16, depth=4, topk=3, greedy=True,
                                                       max_new_tokens=16))


def test_a_trace_whose_steps_are_of_another_method_is_refused_in_one_sentence():
    mislabelled = speculative_trace()
    mislabelled.method = "tree"
    with pytest.raises(ValueError) as e:
        render.check_trace(Trace.from_json(mislabelled.to_json()))
    message = str(e.value)
    assert "'tree'" in message and "step 1" in message and "\n" not in message and "KeyError" not in message
    assert render.check_trace(Trace.from_json(tree_trace().to_json())).method == "tree"


def test_a_step_that_does_not_draw_refuses_the_trace():
    broken = tree_trace()
    broken.steps[0].detail["nodes"][0] = {"id": 0}       # every field present, a node without its numbers
    with pytest.raises(ValueError, match="cannot be replayed: its step 1 does not draw"):
        render.check_trace(Trace.from_json(broken.to_json()))


# ----------------------------------------------------------------------------- the handlers, as the UI calls them

def controls() -> ui_controls.Controls:
    """Controls whose values are passed in by hand: the handlers read only the names of the settings."""
    common = {f.name: None for f in fields(DecodeConfig)}
    own = {(m.name, f.name): None for m in METHODS.values() for f in fields(m.config) if f.name not in ui_controls.COMMON}
    return ui_controls.Controls(None, None, None, None, None, common, own, {})


# a panel whose components are their own names: a handler's answer reads out["position"]
PANEL = ui_handlers.Panel(**{name: name for name in ui_handlers.Panel.names()})


def values(c: ui_controls.Controls, method: str, prompt: str, target: str, **settings) -> dict:
    """The control values by the names the handlers receive them under, each setting at its default."""
    defaults = {**{f.name: f.default for f in fields(DecodeConfig)}, **settings}
    own = {(m.name, f.name): f.default for m in METHODS.values() for f in fields(m.config)}
    own.update({(method, name): v for name, v in settings.items()})
    return {"method": method, "prompt": prompt, "target": target, "draft": "tiny-draft", "seed": 0,
            **{n: defaults[n] for n in c.common}, **{ui_controls.own_name(*key): own[key] for key in c.own}}


def test_load_trace_refuses_a_mismatched_trace_and_changes_nothing(tmp_path):
    h = ui_handlers.make_handlers(controls(), PANEL)
    sessions = Sessions()
    before = sessions.put("tree", Session.replay(tree_trace()))
    before.seek(-1)
    mislabelled = speculative_trace()
    mislabelled.method = "tree"
    path = tmp_path / "mislabelled.json"
    path.write_text(mislabelled.to_json())
    with pytest.raises(gr.Error, match="'tree'"):
        list(h["load_trace"](sessions, str(path)))
    assert sessions.by_method == {"tree": before} and before.cursor == -1
    h["back"](sessions, "tree")                        # the Tree tab still works
    good = tmp_path / "tree.json"
    good.write_text(tree_trace().to_json())
    list(h["load_trace"](sessions, str(good)))   # the figures cleared, then the replay
    assert sessions.get("tree") is not before and sessions.get("tree").trace.method == "tree"


def test_a_first_step_that_fails_is_discarded_and_a_fixed_prompt_then_steps(tiny_masked):
    """Issue 15: mask-predict with a prompt longer than the model's positions left a 'finished' run of 0 steps,
    and the corrected prompt was answered with 'press Reset'."""
    c = controls()
    h = ui_handlers.make_handlers(c, PANEL)
    sessions = Sessions()
    settings = {"length": 6, "iterations": 2, "max_new_tokens": 8}
    with pytest.raises(gr.Error, match="prompt"):
        h["step"](sessions, **values(c, "mask-predict", "Once upon a time. " * 200, tiny_masked.source, **settings))
    assert sessions.get("mask-predict") is None
    out = h["step"](sessions, **values(c, "mask-predict", "Once upon a time", tiny_masked.source, **settings))
    assert "Iteration 1 of 1 recorded" in out["position"] and "running" in out["position"]
    assert len(sessions.get("mask-predict").trace.steps) == 1


def test_switching_method_keeps_the_chosen_target_where_it_fits():
    assert ui_handlers.target_for(None, "speculative", "smollm2-135m-instruct") == "smollm2-135m-instruct"
    assert ui_handlers.target_for(None, "tree", "/models/my-llama") == "/models/my-llama"
    # a causal preset gives way to mask-predict's default: the SmolLM2 diffusion adapter where it loads
    masked_default = method_default_target("mask-predict")
    assert ui_handlers.target_for(None, "mask-predict", "smollm2-135m-instruct") == masked_default
    assert masked_default in ui_controls.model_choices("masked")
    assert ui_handlers.target_for(None, "speculative", "tiny-masked") in ui_controls.model_choices("causal")
    on_screen = Session.start(StubRun(), {**WANTED, "target": "tiny-target"})
    assert ui_handlers.target_for(on_screen, "autoregressive", "smollm2-135m-instruct") == "tiny-target"


def test_token_texts_that_look_like_html_tags_stay_visible_in_the_words():
    from explorer.render import markdown_words
    shown = markdown_words('The target chose "<|im_end|>" and <empty_output>; <b>kept</b><br>next')
    assert "&lt;|im_end|>" in shown and "&lt;empty_output>" in shown and "<b>kept</b><br>" in shown


# ----------------------------------------------------------------------------- who owns the results panel (issue 21)

def stub_handlers(steps: int = 20) -> tuple[dict, ui_controls.Controls]:
    """The handlers on stub runs of `steps` steps: no model, so the order of events is all that is tested."""
    c = controls()
    c.start = lambda wanted: Session.start(StubRun(steps=steps), wanted)
    return ui_handlers.make_handlers(c, PANEL, ServerLimits(render_interval_s=0.0)), c


def switch(h: dict, sessions: Sessions, method: str) -> dict:
    """A tab switch's last answer (the first clears the figures)."""
    return list(h["show_method"](sessions, method))[-1]


def stub_values(c: ui_controls.Controls) -> dict:
    return values(c, "autoregressive", "Once upon a time", "tiny-target", max_new_tokens=20)


def dropped(out: dict) -> bool:
    return all(value is gr.skip() or value == gr.skip() for value in out.values())


def test_a_screen_of_a_run_whose_tab_is_not_selected_is_dropped_and_its_tab_shows_it_again():
    h, c = stub_handlers()
    sessions = Sessions()
    switch(h, sessions, "autoregressive")
    assert "Iteration 1 of 1" in h["step"](sessions, **stub_values(c))["position"]
    jacobi = switch(h, sessions, "jacobi")
    assert 'data-run="jacobi:none"' in jacobi["position"] and "No run yet" in jacobi["position"]
    assert dropped(h["step"](sessions, **stub_values(c)))      # answered after the switch: not shown
    assert dropped(h["back"](sessions, "autoregressive"))
    again = switch(h, sessions, "autoregressive")
    run_id = sessions.get("autoregressive").run_id
    assert f'data-run="{run_id}"' in again["position"] and "Iteration 1 of 2 recorded" in again["position"]


def test_run_to_end_on_a_tab_left_behind_writes_nothing_to_the_panel():
    h, c = stub_handlers()
    sessions = Sessions()
    switch(h, sessions, "autoregressive")
    stream = h["run"](sessions, **stub_values(c))
    assert "Iteration 1 of 1" in next(stream)["position"]
    switch(h, sessions, "tree")
    rest = list(stream)
    # the first screen was made before the switch: the tree tab's own screen is sent again after it, in case it
    # reached the page after the switch; every later screen is dropped
    assert 'data-run="tree:none"' in rest[0]["position"] and rest[1:] and all(dropped(out) for out in rest[1:])
    back = switch(h, sessions, "autoregressive")
    assert "Iteration 20 of 20 recorded" in back["position"] and "finished" in back["position"]


def test_a_loaded_trace_owns_the_panel_at_once(tmp_path):
    h, c = stub_handlers()
    sessions = Sessions()
    switch(h, sessions, "speculative")
    path = tmp_path / "autoregressive.json"
    path.write_text(trace_of_steps(3).to_json())
    cleared, out = h["load_trace"](sessions, str(path))
    assert cleared["main"] is None and cleared["side"] is None and cleared["position"] == gr.skip()
    assert sessions.shown == "autoregressive"
    assert "replay of a loaded trace" in out["position"] and "Iteration 3 of 3" in out["position"]
    assert 'data-run="autoregressive:' in out["position"]


def trace_of_steps(n: int) -> Trace:
    run = StubRun(steps=n)
    while run.step() is not None:
        pass
    return run.trace


def test_stop_ends_run_to_end_and_the_position_says_stopped():
    h, c = stub_handlers()
    sessions = Sessions()
    stream = h["run"](sessions, **stub_values(c))
    next(stream)
    h["stop"](sessions, "autoregressive")
    last = list(stream)[-1]
    assert "stopped" in last["position"] and "running" not in last["position"]
    assert "Iteration 1 of 1 recorded" in last["position"]        # Stop came before the next step
    assert not sessions.get("autoregressive").running
    after = h["step"](sessions, **stub_values(c))               # Step goes on from there, running again
    assert "Iteration 2 of 2" in after["position"] and "running" in after["position"]
    h["stop"](sessions, "autoregressive")                       # no Run to end going: nothing to stop
    assert "running" in h["back"](sessions, "autoregressive")["position"]


def test_step_presses_at_once_are_each_a_step():
    from concurrent.futures import ThreadPoolExecutor
    h, c = stub_handlers()
    sessions = Sessions()
    with ThreadPoolExecutor(10) as pool:
        outs = list(pool.map(lambda _: h["step"](sessions, **stub_values(c)), range(10)))
    assert len(sessions.get("autoregressive").trace.steps) == 10 and sessions.get("autoregressive").cursor == 9
    shown = sorted(int(out["position"].split("Iteration ")[1].split(" ")[0]) for out in outs)
    assert shown == list(range(1, 11))                          # each answer shows its own step


def test_a_phone_width_page_gets_the_figures_laid_out_for_it(monkeypatch):
    """The page says on load whether it is phone-width (the hidden `narrow` box); every screen after it is rendered
    with narrow figures, and before any tab is selected nothing is drawn."""
    seen = []
    real = ui_handlers.render
    monkeypatch.setattr(ui_handlers, "render", lambda session, method, narrow=False: seen.append(narrow) or
                        real(session, method, narrow))
    h, c = stub_handlers()
    sessions = Sessions()
    assert dropped(h["set_narrow"](sessions, True))   # no tab selected yet
    switch(h, sessions, "autoregressive")
    h["step"](sessions, **stub_values(c))
    assert sessions.narrow is True and seen and all(seen)
    h["set_narrow"](sessions, "yes")                  # only a true boolean says phone-width
    assert sessions.narrow is False and seen[-1] is False


def test_a_loaded_trace_keeps_its_own_target_when_its_tab_is_shown():
    """Loading a trace switches the tab, and the switch asks which target to show: the trace's, not the one the
    page showed before (the page used to put SmolLM2 back over a tiny-target trace, and the chat box with it)."""
    trace = syn.trace_of("speculative", [], {"max_new_tokens": 4})
    trace.models = {"target": "tiny-target", "draft": "tiny-draft"}
    replay = Session.replay(trace)
    assert ui_handlers.target_for(replay, "speculative", "smollm2-135m-instruct") == "tiny-target"
    assert ui_handlers.target_for(None, "speculative", "smollm2-135m-instruct") == "smollm2-135m-instruct"
