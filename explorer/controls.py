"""The controls: what each one asks for, read by name and checked in one sentence each; the model and drafter
choices; loading announced. No layout here (explorer/ui.py) and no event handling (explorer/handlers.py)."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import threading
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from engines.config import DecodeConfig, RunSettings, fields
from engines.config import build as build_config
from engines.drafting.registry import DRAFTERS
from engines.methods import METHODS, default_target, method_default_target
from engines.models import chat, locate, presets, store
from engines.trace import Trace
from explorer.limits import model_name, text
from explorer.render import forget_traces
from explorer.session import Session, Sessions, Starter, live_session

DEFAULT_PROMPT = "Once upon a time"
# Offered where the launch allows hub ids beyond the presets (and the hub is reachable).
HUB_MASKED = ["answerdotai/ModernBERT-base"]
COMMON = [f.name for f in fields(DecodeConfig)]
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
    intro: gr.Markdown | None = None      # the method in two sentences, above the fold (explorer/guide.py)
    examples: gr.Dataset | None = None    # example prompts chosen for the method

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


# ----------------------------------------------------------------------------- the tree budget follows the drafter
# The rule: until the person types into a tree budget box, it holds the default of the drafter on screen (auto, 0,
# for a head on the target; the config's fixed default for any other drafter) and follows each drafter they pick.
# Once they have typed into it (during this page visit), picking a drafter never changes it: a value typed by hand
# is kept, even one that happens to equal a default. Only the person's own picks move it (the drafter's `input`
# event): a loaded trace sets drafter and budget together, and its budget stays.


def budget_followers(own: dict[tuple[str, str], Any]) -> list[str]:
    """The methods whose options hold both a drafter and a tree budget (the tree method)."""
    return [m for (m, name) in own if name == "tree_budget" and (m, "drafter") in own]


def tree_budget_default(method: str, drafter: Any) -> int:
    """The tree budget a method's box starts at for this drafter: auto for a head (engines/drafting/registry.py
    says which drafters are heads), else the config's default."""
    if not isinstance(drafter, str) or drafter not in DRAFTERS:
        raise ValueError(f"There is no drafter {str(drafter)[:40]!r}; the drafters are {', '.join(DRAFTERS)}.")
    budget = next(f for f in fields(METHODS[method].config) if f.name == "tree_budget")
    return budget.metadata["auto"] if DRAFTERS[drafter].head else budget.default


def budget_for_drafter(method: str, drafter: Any, typed: Any):
    """The tree budget box once the person picks `drafter`: the drafter's default, or left as it is when they
    have typed into the box (`typed`, the page's flag)."""
    return gr.skip() if typed is True else gr.Number(value=tree_budget_default(method, drafter))


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
