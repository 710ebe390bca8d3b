"""Layout and event wiring. Handlers are short functions: values in, values out.

Every action has an api_name (reset, step, back, run, stop, seek, load_trace, show_method, download_trace)
and its parameters are named after the controls, so the app can be driven with gradio_client. Per-person
state is a `Sessions` object in gr.State that expires; models live in the process-wide cache of engines.models.store,
never in the state (the store loads each model under its own lock, so two visitors asking for one model at
once load it once). The results panel (`Panel`) belongs to the selected tab's current run: handlers answer
with dicts keyed by its components, and a screen of any other run is dropped. The handlers that take control values read them as sent (preprocess=False) and
check every one themselves, so whatever a raw HTTP call sends is answered in one sentence.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import gradio as gr

from engines.config import DecodeConfig, fields
from engines.methods import METHODS, default_target
from engines.models import chat
from explorer import compare, guide
from explorer.controls import (
    COMMON,
    DEFAULT_PROMPT,
    Controls,
    budget_followers,
    budget_for_drafter,
    chat_for_target,
    control,
    draft_choices,
    draft_visibility,
    free_sessions,
    friendly,
    model_choices,
    own_name,
)
from explorer.figures import VIEWS
from explorer.handlers import Panel, make_handlers
from explorer.limits import ServerLimits, model_work
from explorer.session import Sessions, Starter, live_session

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CSS = (ASSETS / "explorer.css").read_text(encoding="utf-8")
SHORTCUTS_JS = (ASSETS / "shortcuts.js").read_text(encoding="utf-8")
NEXT_PRESS = "() => pdeNextPress()"   # a queued press's screen has come: send the next press (shortcuts.js)
NARROW_PX = 700   # below this page width the figures lay out for a phone
# Hands the trace file the Download button just wrote to the browser as a download.
DOWNLOAD_JS = """(file) => {
  if (!file || !file.url) return;
  const link = document.createElement('a');
  link.href = file.url;
  link.download = file.orig_name || 'trace.json';
  document.body.appendChild(link);
  link.click();
  link.remove();
}"""


def build(start: Starter = live_session, limits: ServerLimits = ServerLimits()) -> gr.Blocks:
    """The app; `start` is how a Step or Reset starts a session (app.py chooses it for the host)."""
    with gr.Blocks(title="Parallel Decoding Explorer", delete_cache=(3600, 3600)) as demo:
        sessions = gr.State(Sessions(), time_to_live=limits.session_ttl_s, delete_callback=free_sessions)
        with gr.Row(elem_classes="header"):
            gr.Markdown("## Parallel Decoding Explorer\nStep through faster-than-autoregressive decoding one "
                        "iteration at a time; every number shown is the engine's recorded internal state. "
                        '<span class="keys">Keys: <b>n</b> step, <b>b</b> back, <b>r</b> run.</span>')
            theme = gr.Button("Light / dark", size="sm", elem_id="theme-toggle", scale=0)
        method = gr.Radio([(m.title, m.name) for m in METHODS.values()], value="autoregressive",
                          label="Method", elem_id="method", elem_classes="method-tabs")
        intro = gr.Markdown(guide.intro("autoregressive"), elem_id="intro")
        with gr.Accordion("Glossary: p, q, u, α, k, c, T(n), τ", open=False, elem_id="glossary"):
            gr.Markdown(guide.GLOSSARY)
        # On a narrow screen (assets/explorer.css) the prompt stays on top, the results come next and the
        # settings after them: the classes below name the three parts for the stylesheet.
        with gr.Row(equal_height=False, elem_classes="workspace"):
            with gr.Column(scale=1, min_width=280, elem_classes="controls"):
                prompt = gr.Textbox(DEFAULT_PROMPT, label="Prompt", lines=3, elem_id="prompt")
                with gr.Column(elem_classes="settings", elem_id="settings"):
                    examples = gr.Dataset(components=[prompt], samples=guide.examples("autoregressive"),
                                          label="Examples for this method", elem_id="examples")
                    target = gr.Dropdown(model_choices("causal"), value=default_target(), label="Target model",
                                         allow_custom_value=True, elem_id="target",
                                         info="a preset, a local folder or a Hugging Face id")
                    # beside the target it follows; among the settings, which a phone shows after the results
                    chat_box = gr.Checkbox(bool(chat.chat_by_default_for(default_target())), label="chat",
                                           elem_id="chat", info="the prompt as a user message in the target's "
                                                                "chat template (instruct models)")
                    draft = gr.Dropdown(draft_choices(), value="tiny-draft", label="Draft model",
                                        allow_custom_value=True, visible=False, elem_id="draft")
                    seed = gr.Number(0, step=1, label="Seed", elem_id="seed")
                    common = {f.name: control(f) for f in fields(DecodeConfig)}
                    own, groups = {}, {}
                    for m in METHODS.values():
                        extra = [f for f in fields(m.config) if f.name not in COMMON]
                        with gr.Group(visible=m.name == "autoregressive") as groups[m.name]:
                            if extra:
                                gr.Markdown(f"**{m.title} options**")
                            for f in extra:
                                own[(m.name, f.name)] = control(f, key=f"{m.name}-{f.name}")
            with gr.Column(scale=3, min_width=320, elem_classes="results"):
                # the buttons and the position line above the text: a growing text pushed Stop down the page
                # during Run to end, away from the pointer about to press it
                with gr.Row(elem_classes="transport"):
                    reset_btn = gr.Button("|<< Reset", elem_id="reset-btn", size="sm")
                    back_btn = gr.Button("< Back", elem_id="back-btn", size="sm")
                    step_btn = gr.Button("Step >", variant="primary", elem_id="step-btn", size="sm")
                    run_btn = gr.Button(">> Run to end", elem_id="run-btn", size="sm")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn", size="sm")
                    step_go = gr.Button(visible="hidden", elem_id="step-go")
                    back_go = gr.Button(visible="hidden", elem_id="back-go")
                position = gr.HTML(elem_id="position")
                # while the controls differ from the run on screen: what changed, and what the next press does
                settings_note = gr.HTML(elem_id="settings-note")
                text = gr.HTML(elem_id="text-so-far")
                history = gr.Slider(0, 1, value=0, step=1, label="History (replays recorded steps)",
                                    elem_id="history")
                main_plot = gr.Plot(elem_id="main-plot", show_label=False)
                # only for runs drafted by heads (Medusa, EAGLE): their own view
                drafter_plot = gr.Plot(elem_id="drafter-plot", show_label=False, visible=False)
                with gr.Row(equal_height=False):
                    side_plot = gr.Plot(elem_id="side-plot", show_label=False)
                    with gr.Column():
                        gr.Markdown("**This step, in words**")
                        words = gr.Markdown(elem_id="words")
                stats = gr.Markdown(elem_id="stats")
                with gr.Accordion("Raw step record (JSON)", open=False):
                    record = gr.JSON(elem_id="record")
                with gr.Row():
                    # the file is written when this is pressed, then handed to the browser (DOWNLOAD_JS)
                    download = gr.Button("Download trace", interactive=False, elem_id="download-btn", size="sm")
                    trace_file = gr.File(visible="hidden", interactive=False, elem_id="trace-file")
                    upload = gr.UploadButton("Load trace", file_types=[".json"], elem_id="upload-btn", size="sm")
                with gr.Accordion("How to read this", open=False, elem_id="help"):
                    help_md = gr.Markdown(f"### Autoregressive\n{VIEWS['autoregressive'].help}")
        compare.build(friendly, limits)   # race, audit, diff: tabs below the explorer, their events wired there

        narrow = gr.Checkbox(False, visible=False, elem_id="narrow")
        controls = Controls(method, prompt, target, draft, seed, common, own, groups, start, help=help_md,
                            chat=chat_box, intro=intro, examples=examples)
        panel = Panel(text=text, main=main_plot, side=side_plot, words=words, stats=stats, position=position,
                      history=history, record=record, download=download, drafter=drafter_plot, state=sessions)
        h = make_handlers(controls, panel, limits)
        screen = panel.components()   # the handlers return dicts keyed by these; the state is changed in place
        method_parts = [*groups.values(), target, draft, help_md, intro, examples]
        named = controls.named()
        # Progress, loading messages and the badge of a failed call go on the position line: one place, not a
        # badge on every panel. Control values arrive as sent; the handlers check each one (see the docstring).
        # Their outputs are sent as the handlers made them (explorer/wire.py): screens reach the page in order.
        one_place = {"show_progress_on": [position], "preprocess": False, "postprocess": False}
        reset_btn.click(h["reset"], [sessions], screen, inputs_kwargs=named, api_name="reset",
                        **model_work(limits), **one_place)
        # Every press is a step, in order: the page queues Step and Back presses and sends the next one when the
        # last one's screen has come (pdePress in assets/shortcuts.js), through the hidden senders below.
        step_btn.click(None, js="() => pdePress('step-go')")
        back_btn.click(None, js="() => pdePress('back-go')")
        step_go.click(h["step"], [sessions], screen, inputs_kwargs=named, api_name="step", trigger_mode="multiple",
                      show_progress="minimal", **model_work(limits), **one_place).then(None, js=NEXT_PRESS)
        back_go.click(h["back"], [sessions, method], screen, api_name="back", show_progress="hidden",
                      trigger_mode="multiple", **one_place).then(None, js=NEXT_PRESS)
        run_press = run_btn.click(h["run"], [sessions], screen, inputs_kwargs=named, api_name="run",
                                  show_progress="minimal", **model_work(limits), **one_place)
        # not queued behind model work, so that it reaches a Run that holds a model worker
        stop_btn.click(h["stop"], [sessions, method], None, api_name="stop", show_progress="hidden",
                       concurrency_limit=None, preprocess=False)
        history.release(h["seek"], [sessions, method, history], screen, api_name="seek", show_progress="hidden",
                        **one_place)
        download.click(h["download_trace"], [sessions, method], trace_file, api_name="download_trace",
                       show_progress="hidden", preprocess=False).success(None, [trace_file], None, js=DOWNLOAD_JS)
        # the trace's controls, its method's options and its replay in the panel, all in one answer
        upload.upload(h["load_trace"], [sessions, upload], [*named.values(), *method_parts, *screen],
                      api_name="load_trace", show_progress_on=[position], postprocess=False)
        # the drafter controls by name: switching methods or drafters shows the draft model only where it is used
        drafter_choice = {own_name(m, name): c for (m, name), c in own.items() if name == "drafter"}
        method.change(h["show_method"], [sessions, method, target], [*method_parts, *screen],
                      inputs_kwargs=drafter_choice, api_name="show_method", **one_place)
        gr.on([c.change for c in drafter_choice.values()], friendly(draft_visibility), [method], draft,
              inputs_kwargs=drafter_choice, api_visibility="private", show_progress="hidden", preprocess=False)
        # the tree budget follows the drafter the person picks (auto for heads) until they type into it; the rule
        # is beside budget_for_drafter in explorer/controls.py
        for m in budget_followers(own):
            budget_box, drafter_box = own[(m, "tree_budget")], own[(m, "drafter")]
            typed = gr.State(False)
            budget_box.input(lambda: True, None, typed, api_visibility="private", show_progress="hidden")
            drafter_box.input(friendly(functools.partial(budget_for_drafter, m)), None, budget_box,
                              inputs_kwargs={"drafter": drafter_box, "typed": typed}, api_visibility="private",
                              show_progress="hidden")
        # the chat box follows the target: on for an instruct model, off for the embedded and masked ones
        target.change(friendly(chat_for_target), [target], chat_box, api_visibility="private",
                      show_progress="hidden", preprocess=False)
        examples.click(lambda sample: sample[0], [examples], [prompt], api_visibility="private",
                       show_progress="hidden")
        theme.click(None, js="() => document.body.classList.toggle('dark')")
        demo.load(h["show_method"], [sessions, method, target], [*method_parts, *screen],
                  inputs_kwargs=drafter_choice, api_visibility="undocumented", **one_place)
        # the settings note follows every control; a press that runs the controls' settings (Step, Reset, Run to
        # end) makes the run on screen theirs, so the page clears the note itself, with no call to the server.
        # The page also clears it when a Run to end ends (a js listener on its button runs again then), so the
        # note is read once more after it: a control changed during the run still says so.
        note = {"fn": h["settings_note"], "inputs": [sessions], "outputs": settings_note, "inputs_kwargs": named,
                "api_visibility": "private", "show_progress": "hidden", "preprocess": False}
        gr.on([c.change for c in named.values()], trigger_mode="always_last", **note)
        for press in (reset_btn, step_go, run_btn):
            press.click(None, None, settings_note, js="() => ''")
        run_press.then(**note)
        # the page says whether it is phone-width; the figures then stack their panels rather than shrink them
        demo.load(None, None, narrow, js=f"() => window.innerWidth < {NARROW_PX}")
        narrow.change(h["set_narrow"], [sessions, narrow], screen, api_visibility="private", show_progress="hidden",
                      preprocess=False, postprocess=False)
    return demo


def queue_kwargs(limits: ServerLimits) -> dict[str, Any]:
    """Blocks.queue: a bounded queue; calls that run a model share `model_workers` (their own group)."""
    return {"max_size": limits.queue_size, "default_concurrency_limit": limits.light_workers}


def launch_kwargs(limits: ServerLimits = ServerLimits()) -> dict[str, Any]:
    return {"css": CSS, "head": f"<script>{SHORTCUTS_JS}</script>", "theme": gr.themes.Soft(),
            "max_file_size": limits.max_upload_bytes, "state_session_capacity": limits.session_capacity}
