"""Layout and event wiring. Handlers are short functions: values in, values out.

Every action has an api_name (reset, step, back, run, seek, load_trace, show_method), so the
app can be driven with gradio_client. Per-person state is a `Sessions` object in gr.State;
models live in the process-wide cache of engines.lm, never in the state.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from engines import lm
from engines.config import DecodeConfig, build as build_config, fields
from engines.methods import METHODS, default_target, method_default_target
from engines.trace import Trace
from explorer import compare
from explorer.figures import VIEWS
from explorer.render import Screen, check_trace, render
from explorer.session import Session, Sessions, Starter, live_session

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CSS = (ASSETS / "explorer.css").read_text(encoding="utf-8")
SHORTCUTS_JS = (ASSETS / "shortcuts.js").read_text(encoding="utf-8")
EXAMPLES = [
    ["Once upon a time"],
    ["Alice was beginning to get very tired of sitting by her sister on the bank, and"],
    ["It is a truth universally acknowledged, that a single man in possession of a good fortune"],
    ["The quick brown fox jumps over the lazy dog. The quick brown fox"],
    ["def fibonacci(n):\n    "],
]
# Offered where the launch allows hub ids beyond the presets (and the hub is reachable).
HUB_MASKED = ["answerdotai/ModernBERT-base"]
COMMON = [f.name for f in fields(DecodeConfig)]
log = logging.getLogger(__name__)


def friendly(fn: Callable) -> Callable:
    """Errors a person can cause become one sentence in a gr.Error; nothing else leaks a traceback."""
    def report(e: Exception):
        if isinstance(e, (ValueError, lm.ModelLoadError)):
            return gr.Error(str(e))
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"Something went wrong inside the app ({type(e).__name__}); the run so far is kept.")

    if inspect.isgeneratorfunction(fn):   # Gradio streams a generator's yields, so the wrapper must yield too
        @functools.wraps(fn)
        def gen(*args):
            try:
                yield from fn(*args)
            except gr.Error:
                raise
            except Exception as e:  # noqa: BLE001 - turned into one sentence for the person
                raise report(e) from None
        return gen

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            return fn(*args)
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001
            raise report(e) from None
    return wrapper


@dataclasses.dataclass
class Controls:
    """The components whose values make a run, in the order handlers receive them."""
    method: gr.Radio
    prompt: gr.Textbox
    target: gr.Dropdown
    draft: gr.Dropdown
    seed: gr.Number
    common: dict[str, gr.components.Component]
    own: dict[tuple[str, str], gr.components.Component]   # (method, field) -> control
    groups: dict[str, gr.Group]
    start: Starter = live_session   # live here; on ZeroGPU a whole trace computed in one call (explorer.zerogpu)

    def inputs(self) -> list:
        return [self.method, self.prompt, self.target, self.draft, self.seed, *self.common.values(),
                *self.own.values()]

    def wanted(self, values: tuple) -> dict:
        """What the control values ask to run, checked and in a form that two Steps can compare: the method's
        own settings only, and the draft model only where it is used."""
        method, prompt, target, draft, seed, *rest = values
        settings = dict(zip(self.common, rest[:len(self.common)]))
        settings.update({name: v for (m, name), v in zip(self.own, rest[len(self.common):]) if m == method})
        if seed is None or not math.isfinite(float(seed)) or float(seed) != int(seed) or \
                not 0 <= int(seed) < 2 ** 63:
            raise ValueError("The seed must be a whole number of 0 or more.")
        if method not in METHODS:
            raise ValueError(f"Unknown method '{method}': choose one of {', '.join(METHODS)}.")
        cfg = build_config(METHODS[method].config, settings)
        uses_draft = METHODS[method].uses_draft and getattr(cfg, "drafter", "model") == "model"
        return {"method": method, "prompt": prompt, "target": target or None,
                "draft": (draft or None) if uses_draft else None, "seed": int(seed),
                "settings": dataclasses.asdict(cfg)}

    def session(self, values: tuple) -> Session:
        """A new session running what these control values ask for."""
        return self.start(self.wanted(values))


def model_choices(kind: str) -> list[str]:
    """The presets of one kind (causal or masked) that load here: the hub presets only where the hub is
    reachable; the listed hub ids only where the launch allows hub ids."""
    presets = [p.name for p in lm.PRESETS.values() if p.kind == kind and lm.available(p.name)]
    hub_ids = HUB_MASKED if kind == "masked" and lm.hub_policy().allows_any_id and lm.hub_reachable() else []
    return presets + hub_ids


def draft_choices() -> list[str]:
    """Every preset that drafts for another, then the embedded causal models, where they load."""
    drafts = dict.fromkeys([*(p.draft for p in lm.PRESETS.values() if p.draft), "tiny-draft", "tiny-target"])
    return [name for name in drafts if lm.available(name)]


def control(f: dataclasses.Field, key: str | None = None) -> gr.components.Component:
    m = f.metadata
    label = m.get("label") or f.name.replace("_", " ")
    elem_id = f"opt-{key or f.name}"
    if m.get("choices"):
        return gr.Dropdown(list(m["choices"]), value=f.default, label=label, info=m["help"], key=key,
                           elem_id=elem_id)
    if f.type in ("float", float):
        step = 0.01 if (m["high"] or 1) <= 1 else 0.05
        return gr.Slider(m["low"], m["high"], value=f.default, step=step, label=label, info=m["help"], key=key,
                         elem_id=elem_id)
    # No minimum/maximum here: the config's own check names the setting in its error sentence.
    return gr.Number(value=f.default, precision=0, label=label, key=key, elem_id=elem_id,
                     info=f"{m['help']} ({m['low']:g} to {m['high']:g})")


# ----------------------------------------------------------------------------- handlers

def outputs_of(sessions: Sessions, screen: Screen) -> tuple:
    return (sessions, screen.text, screen.main, screen.side, screen.words, screen.stats, screen.position,
            gr.Slider(minimum=0, maximum=max(screen.history_max, 1), value=screen.history_value),
            screen.record, gr.DownloadButton(value=screen.trace_file, interactive=screen.trace_file is not None))


def make_handlers(controls: Controls):
    def reset(sessions: Sessions, *values):
        method, session = values[0], controls.session(values)
        sessions = sessions or Sessions()
        sessions.put(method, session)
        return outputs_of(sessions, render(session, method))

    def step(sessions: Sessions, *values):
        sessions = sessions or Sessions()
        method = values[0]
        session, moved = sessions.advance(method, controls.wanted(values), lambda: controls.session(values))
        if not moved and session.at_end:
            gr.Info("This run has finished; press Reset to start another.")
        return outputs_of(sessions, render(session, method))

    def back(sessions: Sessions, method: str):
        session = (sessions or Sessions()).get(method)
        if session is not None:
            session.back()
        return outputs_of(sessions, render(session, method))

    def seek(sessions: Sessions, method: str, value: float):
        session = (sessions or Sessions()).get(method)
        if session is not None:
            session.seek(int(value) - 1)
        return outputs_of(sessions, render(session, method))

    def run(sessions: Sessions, *values):
        sessions = sessions or Sessions()
        method = values[0]
        session, _ = sessions.advance(method, controls.wanted(values), lambda: controls.session(values), again=True)
        yield outputs_of(sessions, render(session, method))
        while session.step():
            yield outputs_of(sessions, render(session, method))

    def load_trace(sessions: Sessions, path: str | None):
        if not path:
            raise ValueError("No file was uploaded; choose a trace .json file saved by this app or the CLI.")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError("This file could not be read as text; choose a trace .json file.") from e
        trace = check_trace(Trace.from_json(text))
        sessions = sessions or Sessions()
        session = sessions.put(trace.method, Session.replay(trace))
        return (gr.Radio(value=trace.method), *outputs_of(sessions, render(session, trace.method)))

    def show_method(sessions: Sessions, method: str, target: str | None = None):
        m = METHODS[method]
        targets = model_choices(m.model_kind)
        visibility = [gr.Group(visible=name == method) for name in controls.groups]
        help_text = f"### {m.title}\n{VIEWS[method].help}"
        chosen = target_for((sessions or Sessions()).get(method), method, target)
        return (*visibility, gr.Dropdown(choices=targets, value=chosen),
                gr.Dropdown(visible=m.uses_draft), help_text,
                *outputs_of(sessions, render((sessions or Sessions()).get(method), method)))

    return {name: friendly(fn) for name, fn in dict(reset=reset, step=step, back=back, seek=seek, run=run,
                                                     load_trace=load_trace, show_method=show_method).items()}


def target_for(session: Session | None, method: str, current: str | None) -> str:
    """The target model control on switching to a method: the model of that method's run on screen, else the
    current choice unless it is a preset of the other kind (causal or masked), else the method's default."""
    if session is not None and session.wanted and session.wanted["target"]:
        return session.wanted["target"]
    other = model_choices("causal" if METHODS[method].model_kind == "masked" else "masked")
    return current if current and current not in other else method_default_target(method)


# ----------------------------------------------------------------------------- layout

def build(start: Starter = live_session) -> gr.Blocks:
    """The app; `start` is how a Step or Reset starts a session (app.py chooses it for the host)."""
    with gr.Blocks(title="Parallel Decoding Explorer", delete_cache=(3600, 3600)) as demo:
        sessions = gr.State(Sessions())
        with gr.Row(elem_classes="header"):
            gr.Markdown("## Parallel Decoding Explorer\nStep through faster-than-autoregressive decoding one "
                        "iteration at a time; every number shown is the engine's recorded internal state. "
                        "Keys: **n** step, **b** back, **r** run.")
            theme = gr.Button("Light / dark", size="sm", elem_id="theme-toggle", scale=0)
        method = gr.Radio([(m.title, m.name) for m in METHODS.values()], value="autoregressive",
                          label="Method", elem_id="method", elem_classes="method-tabs")
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=280, elem_classes="controls"):
                prompt = gr.Textbox(EXAMPLES[0][0], label="Prompt", lines=3, elem_id="prompt")
                gr.Examples(EXAMPLES, inputs=[prompt], label="Examples")
                target = gr.Dropdown(model_choices("causal"), value=default_target(), label="Target model",
                                     allow_custom_value=True, elem_id="target",
                                     info="a preset, a local folder or a Hugging Face id")
                draft = gr.Dropdown(draft_choices(), value="tiny-draft", label="Draft model", allow_custom_value=True,
                                    visible=False, elem_id="draft")
                seed = gr.Number(0, precision=0, label="Seed", elem_id="seed")
                common = {f.name: control(f) for f in fields(DecodeConfig)}
                own, groups = {}, {}
                for m in METHODS.values():
                    extra = [f for f in fields(m.config) if f.name not in COMMON]
                    with gr.Group(visible=m.name == "autoregressive") as groups[m.name]:
                        if extra:
                            gr.Markdown(f"**{m.title} options**")
                        for f in extra:
                            own[(m.name, f.name)] = control(f, key=f"{m.name}-{f.name}")
            with gr.Column(scale=3, min_width=320):
                text = gr.HTML(elem_id="text-so-far")
                with gr.Row(elem_classes="transport"):
                    reset_btn = gr.Button("|<< Reset", elem_id="reset-btn", size="sm")
                    back_btn = gr.Button("< Back", elem_id="back-btn", size="sm")
                    step_btn = gr.Button("Step >", variant="primary", elem_id="step-btn", size="sm")
                    run_btn = gr.Button(">> Run to end", elem_id="run-btn", size="sm")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop-btn", size="sm")
                position = gr.HTML(elem_id="position")
                history = gr.Slider(0, 1, value=0, step=1, label="History (replays recorded steps)",
                                    elem_id="history")
                main_plot = gr.Plot(elem_id="main-plot", show_label=False)
                with gr.Row(equal_height=False):
                    side_plot = gr.Plot(elem_id="side-plot", show_label=False)
                    with gr.Column():
                        gr.Markdown("**This step, in words**")
                        words = gr.Markdown(elem_id="words")
                stats = gr.Markdown(elem_id="stats")
                with gr.Accordion("Raw step record (JSON)", open=False):
                    record = gr.JSON(elem_id="record")
                with gr.Row():
                    download = gr.DownloadButton("Download trace", interactive=False, elem_id="download-btn",
                                                 size="sm")
                    upload = gr.UploadButton("Load trace", file_types=[".json"], elem_id="upload-btn", size="sm")
                with gr.Accordion("How to read this", open=False, elem_id="help"):
                    help_md = gr.Markdown(f"### Autoregressive\n{VIEWS['autoregressive'].help}")
        compare.build(friendly)   # race, audit, diff: tabs below the explorer, their events wired there

        controls = Controls(method, prompt, target, draft, seed, common, own, groups, start)
        h = make_handlers(controls)
        screen = [sessions, text, main_plot, side_plot, words, stats, position, history, record, download]
        run_inputs = [sessions, *controls.inputs()]
        reset_btn.click(h["reset"], run_inputs, screen, api_name="reset")
        step_btn.click(h["step"], run_inputs, screen, api_name="step", trigger_mode="once",
                       show_progress="minimal")
        back_btn.click(h["back"], [sessions, method], screen, api_name="back", show_progress="hidden")
        run_evt = run_btn.click(h["run"], run_inputs, screen, api_name="run", show_progress="hidden")
        stop_btn.click(None, None, None, cancels=[run_evt], api_name="stop")
        history.release(h["seek"], [sessions, method, history], screen, api_name="seek", show_progress="hidden")
        upload.upload(h["load_trace"], [sessions, upload], [method, *screen], api_name="load_trace")
        method.change(h["show_method"], [sessions, method, target], [*groups.values(), target, draft, help_md, *screen],
                      api_name="show_method")
        theme.click(None, js="() => document.body.classList.toggle('dark')")
        demo.load(h["show_method"], [sessions, method, target], [*groups.values(), target, draft, help_md, *screen],
                  api_visibility="undocumented")
    return demo


def launch_kwargs() -> dict[str, Any]:
    return {"css": CSS, "head": f"<script>{SHORTCUTS_JS}</script>", "theme": gr.themes.Soft()}
