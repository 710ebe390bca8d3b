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

import dataclasses
import functools
import inspect
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from engines.config import DecodeConfig, RunSettings, fields
from engines.config import build as build_config
from engines.drafting.registry import DRAFTERS
from engines.methods import METHODS, default_target, method_default_target
from engines.models import chat, locate, presets, store
from engines.trace import Trace
from explorer import compare
from explorer.figures import VIEWS
from explorer.limits import ServerLimits, model_name, model_work, read_upload, text, whole_number
from explorer.render import Screen, check_trace, forget_traces, render, save_trace
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
MAX_PROMPT_CHARS = 16_000    # checked before tokenising; Run then caps the prompt's tokens
log = logging.getLogger(__name__)


def friendly(fn: Callable) -> Callable:
    """Errors a person can cause become one sentence in a gr.Error; nothing else leaks a traceback."""
    def report(e: Exception):
        # Gradio prints the traceback of every gr.Error unless told not to: an expected error gets one log line,
        # an unexpected one its traceback, logged here once.
        if isinstance(e, (ValueError, presets.ModelLoadError)):
            log.info("%s refused: %s", fn.__name__, e)
            return gr.Error(str(e), print_exception=False)
        log.exception("unexpected error in %s", fn.__name__)
        return gr.Error(f"Something went wrong inside the app ({type(e).__name__}); the run so far is kept.",
                        print_exception=False)

    if inspect.isgeneratorfunction(fn):   # Gradio streams a generator's yields, so the wrapper must yield too
        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:  # noqa: BLE001 - turned into one sentence for the person
                raise report(e) from None
        return gen

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
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
    help: gr.Markdown | None = None   # the method's help text, which changes with the method
    chat: gr.Checkbox | None = None   # the prompt in the target's chat template; without it Run decides

    def named(self) -> dict[str, Any]:
        """Every control under the name the API gives its parameter: method, prompt, target, draft, seed, the
        shared settings, then each method's own as <method>_<setting> (speculative_k, mask_predict_length), then
        chat."""
        return {"method": self.method, "prompt": self.prompt, "target": self.target, "draft": self.draft,
                "seed": self.seed, **self.common,
                **{own_name(m, name): c for (m, name), c in self.own.items()},
                **chat_control(self.chat)}   # last, so that calls by position made before it still fit

    def wanted(self, values: dict[str, Any]) -> dict:
        """What the control values (by name, as sent) ask to run, each checked, in a form that two Steps can
        compare: the method's own settings only, and the draft model only where it is used."""
        method = checked_method(values.get("method"))
        settings = {name: values.get(name) for name in self.common}
        settings.update({name: values.get(own_name(m, name)) for (m, name) in self.own if m == method})
        for name, value in settings.items():
            if value is None:   # a cleared box: the config would quietly take its default
                raise ValueError(f"{name.replace('_', ' ')} is empty; type a number.")
        if values.get("seed") is None:
            raise ValueError("The seed is empty; type a whole number of 0 or more.")
        seed = build_config(RunSettings, {"seed": values["seed"]}).seed
        cfg = build_config(METHODS[method].config, settings)
        uses_draft = uses_draft_model(method, getattr(cfg, "drafter", None))
        return {"method": method, "prompt": text("The prompt", values.get("prompt"), MAX_PROMPT_CHARS),
                "chat": checked_chat(values.get("chat")),
                "target": model_name("The target model", values.get("target")),
                "draft": model_name("The draft model", values.get("draft")) if uses_draft else None,
                "seed": seed, "settings": dataclasses.asdict(cfg)}

    def from_trace(self, trace: Trace) -> list:
        """The control values a loaded trace came from, in `named()` order; gr.skip() where it says nothing
        (another method's options, a draft it did not use)."""
        config, skip = trace.config, gr.skip()
        return [trace.method, trace.prompt, trace.models.get("target", skip), trace.models.get("draft", skip),
                config.get("seed", skip), *(config.get(name, skip) for name in self.common),
                *(config.get(name, skip) if m == trace.method else skip for (m, name) in self.own),
                *([trace.chat] if self.chat is not None else [])]

    def session(self, values: tuple) -> Session:
        """A new session running what these control values ask for."""
        return self.start(self.wanted(values))


# ----------------------------------------------------------------------------- the chat template control

def chat_control(chat: gr.Checkbox | None) -> dict[str, gr.Checkbox]:
    return {} if chat is None else {"chat": chat}


def checked_chat(value: Any) -> bool | None:
    """The chat box as sent: on, off, or absent (None: Run wraps the prompt where the target is an instruct
    model)."""
    if value is not None and not isinstance(value, bool):
        raise ValueError("The chat box is on or off (true or false).")
    return value


def chat_for_target(target: Any):
    """The chat box on choosing a target: on for an instruct preset, off for the embedded and masked ones; left
    as it is for a folder or hub id, whose template is known only once it loads."""
    default = chat.chat_by_default_for(target) if isinstance(target, str) else None
    return gr.skip() if default is None else gr.Checkbox(value=default)


def model_choices(kind: str) -> list[str]:
    """The presets of one kind (causal or masked) that load here: the hub presets only where the hub is
    reachable; the listed hub ids only where the launch allows hub ids."""
    loadable = [p.name for p in presets.PRESETS.values() if p.kind == kind and store.available(p.name)]
    hub_ids = HUB_MASKED if kind == "masked" and locate.hub_policy().allows_any_id and locate.hub_reachable() else []
    return loadable + hub_ids


def draft_choices() -> list[str]:
    """Every preset that drafts for another, then the embedded causal models, where they load."""
    drafts = dict.fromkeys([*(p.draft for p in presets.PRESETS.values() if p.draft), "tiny-draft", "tiny-target"])
    return [name for name in drafts if store.available(name)]


def uses_draft_model(method: str, drafter: str | None) -> bool:
    """Whether a run of `method` with this drafter reads the draft model: only the model drafter does; prompt
    lookup, heads, EAGLE and the suffix tree draft without one (None: a method with no drafter setting)."""
    return METHODS[method].uses_draft and DRAFTERS[drafter or "model"].draft_model


def draft_visibility(method: str, **drafters) -> gr.Dropdown:
    """The draft model control, shown only while the method on screen drafts with it. `drafters`: the drafter
    controls' values by name (speculative_drafter, tree_drafter)."""
    method = checked_method(method)
    return gr.Dropdown(visible=uses_draft_model(method, drafters.get(own_name(method, "drafter"))))


def own_name(method: str, setting: str) -> str:
    return f"{method.replace('-', '_')}_{setting}"


def checked_method(method: Any) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"Unknown method {str(method)[:40]!r}: choose one of {', '.join(METHODS)}.")
    return method


def first_load(name: str) -> str:
    """What loading `name` will do, in words, if this process has not loaded it yet ('' if it has, or if the
    name is unknown: Run then says why in one sentence)."""
    try:
        ref = locate.identify(name)
    except presets.ModelLoadError:
        return ""
    if ref.label in store.MODELS.names():
        return ""
    if ref.gguf is not None and not (Path(ref.key) / "config.json").is_file():
        return f"Converting {ref.label} from its packaged GGUF file, once on this server (about 30 s)"
    return f"Loading {ref.label} (its first use on this server)"


def announce_loading(wanted: dict, progress: gr.Progress) -> None:
    """Put the first load of a model, and SmolLM2's one-time conversion, in the page while it happens."""
    names = [wanted["target"] or method_default_target(wanted["method"]), wanted["draft"]]
    said = [words for words in (first_load(n) for n in names if n) if words]
    if said:
        progress(0, desc="; ".join(said) + "...")


def free_sessions(sessions: "Sessions | None") -> None:
    """Gradio calls this when a person's state expires: their runs (engines, KV caches) and trace files go."""
    if sessions is not None:
        for session in sessions.by_method.values():
            forget_traces(session.trace, session.key)
        sessions.by_method.clear()


def preload(name: str | None = None) -> threading.Thread:
    """Start in the background what the first Step on the default target would wait for: SmolLM2's one-time
    conversion from its GGUF file (the folder is written, the model is not loaded). A failure is logged in one
    line; the first Step that needs the model says why in one sentence."""
    def convert() -> None:
        try:
            locate.resolve(name or default_target())
        except presets.ModelLoadError as e:
            log.warning("preparing the default model failed: %s", e)

    thread = threading.Thread(target=convert, name="preload", daemon=True)
    thread.start()
    return thread


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
    # No minimum/maximum and no precision: the config's own check names the setting in its error sentence
    # (Gradio's rounding would turn 2.5 into 2 silently, and fail on NaN before the handler could say why).
    return gr.Number(value=f.default, step=1, label=label, key=key, elem_id=elem_id,
                     info=f"{m['help']} ({m['low']:g} to {m['high']:g})")


# ----------------------------------------------------------------------------- handlers

@dataclasses.dataclass
class Panel:
    """The results panel: every component that Step, Run, Back, the slider, a loaded trace or a tab switch
    writes. Handlers return `Panel.show` or `Panel.unchanged`, dicts keyed by these components, so no output is
    wired by its place in a list. An API client receives them in `Panel.client_names()` order."""
    text: Any
    main: Any
    side: Any
    words: Any
    stats: Any
    position: Any       # its data-run attribute names the run the panel shows
    history: Any
    record: Any
    drafter: Any
    download: Any       # last: a button, whose update (enabled or not) gradio_client does not return

    @staticmethod
    def names() -> list[str]:
        return [f.name for f in dataclasses.fields(Panel)]

    @staticmethod
    def client_names() -> list[str]:
        """The outputs gradio_client returns for the panel, in order: all but the Download button."""
        return [name for name in Panel.names() if name != "download"]

    def components(self) -> list:
        return [getattr(self, name) for name in self.names()]

    def show(self, screen: Screen) -> dict:
        return {self.text: screen.text, self.main: screen.main, self.side: screen.side, self.words: screen.words,
                self.stats: screen.stats, self.position: screen.position,
                self.history: gr.Slider(minimum=0, maximum=max(screen.history_max, 1), value=screen.history_value),
                self.record: screen.record, self.download: gr.Button(interactive=screen.downloadable),
                self.drafter: gr.Plot(value=screen.drafter, visible=screen.drafter is not None)}

    def unchanged(self) -> dict:
        return {c: gr.skip() for c in self.components()}


def make_handlers(controls: Controls, panel: Panel, limits: ServerLimits = ServerLimits()):
    """The handlers by api name. Those that take control values take them by name (`Controls.named`).

    Every screen goes through `screen_of`: it is rendered only while its run owns the panel (the selected tab's
    current run, `Sessions.owns`), else the panel is left as it is. So a Run to end on a tab left behind, or a
    Step answered after a tab switch, never writes over the tab on screen."""
    def screen_of(sessions: Sessions, method: str, session: Session | None) -> dict:
        with sessions.panel:
            if not sessions.owns(method, session):
                return panel.unchanged()
            return panel.show(render(session, method))

    def sent(sessions: Sessions, owner: int):
        """Run to end's next screen may only be asked for once its last one was sent (Gradio sends each yield
        before asking for the next). If the panel changed owner after that screen was made and before it was
        sent, it may have reached the page after the new owner's own: the new owner's screen is sent again."""
        with sessions.panel:
            if sessions.owner == owner or sessions.shown is None:
                return
            screen = panel.show(render(sessions.get(sessions.shown), sessions.shown))
        yield screen

    def reset(sessions: Sessions, progress=gr.Progress(), **values):
        wanted = controls.wanted(values)
        announce_loading(wanted, progress)
        session = controls.session(values)
        with sessions.work:
            sessions.put(wanted["method"], session)
            return screen_of(sessions, wanted["method"], session)

    def step(sessions: Sessions, progress=gr.Progress(), **values):
        """Presses take turns (`Sessions.work`): ten presses are ten steps, each screen made before the next
        step, so the screens reach the page in order."""
        wanted = controls.wanted(values)
        announce_loading(wanted, progress)
        with sessions.work:
            session, moved = sessions.advance(wanted["method"], wanted, lambda: controls.session(values))
            if not moved and session.at_end:
                gr.Info("This run has finished; press Reset to start another.")
            return screen_of(sessions, wanted["method"], session)

    def back(sessions: Sessions, method: str):
        method = checked_method(method)
        with sessions.work:
            session = sessions.get(method)
            if session is not None:
                session.back()
            return screen_of(sessions, method, session)

    def seek(sessions: Sessions, method: str, value: float):
        method = checked_method(method)
        index = whole_number("The history position", value, 0, 10 ** 9)
        with sessions.work:
            session = sessions.get(method)
            if session is not None:
                session.seek(index - 1)
            return screen_of(sessions, method, session)

    def run(sessions: Sessions, progress=gr.Progress(), **values):
        """Steps until the end, Stop, the time budget or the run's replacement (Reset, a loaded trace), whichever
        comes first. The page is sent a screen at most every `render_interval_s` (a browser cannot draw faster,
        and a backlog of screens made the page show iteration 26 while the engine was at 170); the last screen
        sent is the engine's true position. While another tab is selected, its screens are not sent; the run
        goes on, and its tab shows where it is when selected again."""
        wanted = controls.wanted(values)
        method = wanted["method"]
        announce_loading(wanted, progress)
        with sessions.work, sessions.panel:
            session, _ = sessions.advance(method, wanted, lambda: controls.session(values), again=True)
            session.running, session.stopped = True, False
            first, owner = screen_of(sessions, method, session), sessions.owner
        try:
            yield first
            yield from sent(sessions, owner)
            started = shown = time.monotonic()
            while True:
                with sessions.work:   # Step, Back and Stop get their turn between two steps
                    if session.stopped or sessions.get(method) is not session or not session.step():
                        break
                    if time.monotonic() - started > limits.call_budget_s:
                        session.note = (f"Stopped after {limits.call_budget_s:g} s, this server's limit for one "
                                        f"call; press Run to end again to go on.")
                        break
                    due = time.monotonic() - shown >= limits.render_interval_s
                    with sessions.panel:
                        screen = screen_of(sessions, method, session) if due else None
                        owner = sessions.owner
                if screen is not None:
                    shown = time.monotonic()
                    yield screen
                    yield from sent(sessions, owner)
        finally:
            session.running = False
        with sessions.work, sessions.panel:
            last, owner = screen_of(sessions, method, session), sessions.owner
        yield last
        yield from sent(sessions, owner)

    def stop(sessions: Sessions, method: str):
        """Run to end sees this before its next step: it stops within one iteration, and its last screen shows
        where the engine is, 'stopped'."""
        session = sessions.get(checked_method(method))
        if session is not None and session.running:
            session.stopped = True

    def load_trace(sessions: Sessions, path: str | None):
        """The trace's controls and its replay, in this one answer: the panel shows the loaded run at once."""
        trace = check_trace(Trace.from_json(read_upload(path, limits.max_upload_bytes)))
        session = Session.replay(trace)
        with sessions.work, sessions.panel:
            sessions.put(trace.method, session)
            if sessions.shown is not None:   # the page selects the trace's tab (its method control, below)
                sessions.show(trace.method)
            screen = screen_of(sessions, trace.method, session)
        return {**dict(zip(controls.named().values(), controls.from_trace(trace))),
                **method_view(sessions, trace.method, trace.models.get("target"), **{
                    own_name(trace.method, "drafter"): trace.config.get("drafter")}), **screen}

    def method_view(sessions: Sessions, method: str, target: str | None, **drafters) -> dict:
        """What changes with the method besides the panel: its options, its target, the draft model, its help."""
        m = METHODS[method]
        return {**{group: gr.Group(visible=name == method) for name, group in controls.groups.items()},
                controls.target: gr.Dropdown(choices=model_choices(m.model_kind),
                                             value=target_for(sessions.get(method), method, target)),
                controls.draft: draft_visibility(method, **drafters),
                controls.help: f"### {m.title}\n{VIEWS[method].help}"}

    def show_method(sessions: Sessions, method: str, target: str | None = None, **drafters):
        """Switch the screen to `method`: its options, its target, its run (or its empty state), at once; from
        now on only that run's screens reach the panel. `drafters` are the drafter controls' values by name
        (speculative_drafter, tree_drafter): the draft model shows only where it is used."""
        method = checked_method(method)
        with sessions.panel:
            sessions.show(method)
            screen = screen_of(sessions, method, sessions.get(method))
        return {**method_view(sessions, method, target, **drafters), **screen}

    def download_trace(sessions: Sessions, method: str) -> str:
        """Write the run on screen to a file, now that it is asked for (a Step never writes one)."""
        session = sessions.get(checked_method(method))
        if session is None or not session.trace.steps:
            raise ValueError("There is no run to download yet; press Step or Run to end first.")
        with sessions.work:   # not while a Run to end appends a step
            return save_trace(session.trace, session.key)

    return {name: friendly(fn) for name, fn in dict(reset=reset, step=step, back=back, seek=seek, run=run,
                                                     stop=stop, load_trace=load_trace, show_method=show_method,
                                                     download_trace=download_trace).items()}


def target_for(session: Session | None, method: str, current: str | None) -> str:
    """The target model control on switching to a method: the model of that method's run on screen, else the
    current choice unless it is a preset of the other kind (causal or masked), else the method's default."""
    if session is not None and session.wanted and session.wanted["target"]:
        return session.wanted["target"]
    other = model_choices("causal" if METHODS[method].model_kind == "masked" else "masked")
    return current if current and current not in other else method_default_target(method)


# ----------------------------------------------------------------------------- layout

def build(start: Starter = live_session, limits: ServerLimits = ServerLimits()) -> gr.Blocks:
    """The app; `start` is how a Step or Reset starts a session (app.py chooses it for the host)."""
    with gr.Blocks(title="Parallel Decoding Explorer", delete_cache=(3600, 3600)) as demo:
        sessions = gr.State(Sessions(), time_to_live=limits.session_ttl_s, delete_callback=free_sessions)
        with gr.Row(elem_classes="header"):
            gr.Markdown("## Parallel Decoding Explorer\nStep through faster-than-autoregressive decoding one "
                        "iteration at a time; every number shown is the engine's recorded internal state. "
                        "Keys: **n** step, **b** back, **r** run.")
            theme = gr.Button("Light / dark", size="sm", elem_id="theme-toggle", scale=0)
        method = gr.Radio([(m.title, m.name) for m in METHODS.values()], value="autoregressive",
                          label="Method", elem_id="method", elem_classes="method-tabs")
        # On a narrow screen (assets/explorer.css) the prompt stays on top, the results come next and the
        # settings after them: the classes below name the three parts for the stylesheet.
        with gr.Row(equal_height=False, elem_classes="workspace"):
            with gr.Column(scale=1, min_width=280, elem_classes="controls"):
                prompt = gr.Textbox(EXAMPLES[0][0], label="Prompt", lines=3, elem_id="prompt")
                chat_box = gr.Checkbox(bool(chat.chat_by_default_for(default_target())), label="chat",
                                       elem_id="chat", info="the prompt as a user message in the target's chat "
                                                            "template (instruct models)")
                with gr.Column(elem_classes="settings", elem_id="settings"):
                    gr.Examples(EXAMPLES, inputs=[prompt], label="Examples")
                    target = gr.Dropdown(model_choices("causal"), value=default_target(), label="Target model",
                                         allow_custom_value=True, elem_id="target",
                                         info="a preset, a local folder or a Hugging Face id")
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

        controls = Controls(method, prompt, target, draft, seed, common, own, groups, start, help=help_md,
                            chat=chat_box)
        panel = Panel(text=text, main=main_plot, side=side_plot, words=words, stats=stats, position=position,
                      history=history, record=record, download=download, drafter=drafter_plot)
        h = make_handlers(controls, panel, limits)
        screen = panel.components()   # the handlers return dicts keyed by these; the state is changed in place
        method_parts = [*groups.values(), target, draft, help_md]
        named = controls.named()
        # Progress, loading messages and the badge of a failed call go on the position line: one place, not a
        # badge on every panel. Control values arrive as sent; the handlers check each one (see the docstring).
        one_place = {"show_progress_on": [position], "preprocess": False}
        reset_btn.click(h["reset"], [sessions], screen, inputs_kwargs=named, api_name="reset",
                        **model_work(limits), **one_place)
        # every press is a step: they wait their turn (Sessions.work) instead of being dropped while one runs
        step_btn.click(h["step"], [sessions], screen, inputs_kwargs=named, api_name="step", trigger_mode="multiple",
                       show_progress="minimal", **model_work(limits), **one_place)
        back_btn.click(h["back"], [sessions, method], screen, api_name="back", show_progress="hidden",
                       trigger_mode="multiple", **one_place)
        run_btn.click(h["run"], [sessions], screen, inputs_kwargs=named, api_name="run", show_progress="minimal",
                      **model_work(limits), **one_place)
        # not queued behind model work, so that it reaches a Run that holds a model worker
        stop_btn.click(h["stop"], [sessions, method], None, api_name="stop", show_progress="hidden",
                       concurrency_limit=None, preprocess=False)
        history.release(h["seek"], [sessions, method, history], screen, api_name="seek", show_progress="hidden",
                        **one_place)
        download.click(h["download_trace"], [sessions, method], trace_file, api_name="download_trace",
                       show_progress="hidden", preprocess=False).success(None, [trace_file], None, js=DOWNLOAD_JS)
        # the trace's controls, its method's options and its replay in the panel, all in one answer
        upload.upload(h["load_trace"], [sessions, upload], [*named.values(), *method_parts, *screen],
                      api_name="load_trace", show_progress_on=[position])
        # the drafter controls by name: switching methods or drafters shows the draft model only where it is used
        drafter_choice = {own_name(m, name): c for (m, name), c in own.items() if name == "drafter"}
        method.change(h["show_method"], [sessions, method, target], [*method_parts, *screen],
                      inputs_kwargs=drafter_choice, api_name="show_method", **one_place)
        gr.on([c.change for c in drafter_choice.values()], friendly(draft_visibility), [method], draft,
              inputs_kwargs=drafter_choice, api_visibility="private", show_progress="hidden", preprocess=False)
        # the chat box follows the target: on for an instruct model, off for the embedded and masked ones
        target.change(friendly(chat_for_target), [target], chat_box, api_visibility="private",
                      show_progress="hidden", preprocess=False)
        theme.click(None, js="() => document.body.classList.toggle('dark')")
        demo.load(h["show_method"], [sessions, method, target], [*method_parts, *screen],
                  inputs_kwargs=drafter_choice, api_visibility="undocumented", **one_place)
    return demo


def queue_kwargs(limits: ServerLimits) -> dict[str, Any]:
    """Blocks.queue: a bounded queue; calls that run a model share `model_workers` (their own group)."""
    return {"max_size": limits.queue_size, "default_concurrency_limit": limits.light_workers}


def launch_kwargs(limits: ServerLimits = ServerLimits()) -> dict[str, Any]:
    return {"css": CSS, "head": f"<script>{SHORTCUTS_JS}</script>", "theme": gr.themes.Soft(),
            "max_file_size": limits.max_upload_bytes, "state_session_capacity": limits.session_capacity}
