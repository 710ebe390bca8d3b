"""Two Compare tabs that check a rule rather than a run: the sampling check and be-the-drafter.

`build_sampling_check(friendly, **events)` and `build_verify_draft(friendly, **events)` lay out a tab's
contents and wire its button with an api_name and named parameters; `events` are extra options for the
click (the app's concurrency group for model work).
"""
from __future__ import annotations

import math
from typing import Callable

import gradio as gr

from engines.analysis.sampling_check import DRAWS, MAX_DRAWS, RULES, sampling_check
from engines.analysis.verify_draft import verify_draft_trace
from engines.methods import Run, default_target
from explorer.figures import speculative as speculative_figures
from explorer.figures.sampling_check import histogram_figure

TARGETS = ["smollm2-135m-instruct", "tiny-target"]
CHECKED = ("speculative", "tree")
MAX_STEP = 16          # steps run to reach the checked one: keep a call bounded


def whole(label: str, value, low: int, high: int) -> int:
    """A whole number in [low, high] from a loosely typed value, else one sentence."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or not low <= value <= high:
        raise ValueError(f"{label} must be a whole number from {low:,} to {high:,}.")
    return int(value)


def run_to_step(prompt: str, method: str, target: str | None, draft: str | None, settings: dict, seed: int,
                step: int) -> Run:
    """A run of the method stepped until `step` steps are recorded."""
    run = Run(method, prompt, {**settings, "max_new_tokens": 4 * MAX_STEP}, target=target, draft=draft, seed=seed)
    while len(run.trace.steps) < step and run.step() is not None:
        pass
    if len(run.trace.steps) < step:
        raise ValueError(f"The run ended after {len(run.trace.steps)} steps; choose a step up to that.")
    return run


def run_sampling_check(prompt: str, method: str, target: str, draft: str, temperature: float, top_k: float,
                       seed: float, step: float, position: float, rule: str, draws: float):
    """Resample one position of a recorded speculative or tree step under a rule: histogram, words, record."""
    if method not in CHECKED:
        raise ValueError(f"The sampling check is for {' and '.join(CHECKED)} decoding, not '{method}'.")
    if rule not in RULES:
        raise ValueError(f"Choose a rule among {', '.join(RULES)}.")
    step_n = whole("The step", step, 1, MAX_STEP)
    settings = {"temperature": temperature, "top_k": top_k, "drafter": "model"}
    run = run_to_step(prompt, method, target or default_target(), draft or None, settings,
                      whole("The seed", seed, 0, 2 ** 63 - 1), step_n)
    result = sampling_check(run.trace, step_n - 1, whole("The position", position, 1, 17) - 1, rule, run.target,
                            run.draft, whole("Draws", draws, 1_000, MAX_DRAWS), seed=int(seed))
    texts = {i: run.target.token_text(i) for i in result.token_ids}
    return histogram_figure(result, texts), result.words, result.to_dict()


def build_sampling_check(friendly: Callable, **events) -> None:
    gr.Markdown("Resample one recorded position of a sampled speculative or tree step many times, from the full p "
                "and q recomputed by one target (and draft) forward over that position's recorded prefix, and "
                "compare the emitted token with p. The exact rule lands within the noise floor; the broken rules "
                "and typical acceptance do not.")
    with gr.Row():
        prompt = gr.Textbox("Once upon a time", label="Prompt", lines=2, scale=3, elem_id="check-prompt")
        method = gr.Dropdown(list(CHECKED), value="speculative", label="Method", scale=1, elem_id="check-method")
        target = gr.Dropdown(TARGETS, value=default_target(), label="Target model", allow_custom_value=True,
                             scale=1, elem_id="check-target")
        draft = gr.Dropdown(["tiny-draft"], value="tiny-draft", label="Draft model", allow_custom_value=True,
                            scale=1, elem_id="check-draft")
    with gr.Row():
        temperature = gr.Number(1.0, label="Temperature (above 0)", elem_id="check-temperature")
        top_k = gr.Number(20, precision=0, label="Top-k (0: off; a small support keeps the noise floor low)",
                          elem_id="check-topk")
        seed = gr.Number(0, precision=0, label="Seed", elem_id="check-seed")
        step = gr.Number(1, precision=0, label=f"Step (1 to {MAX_STEP})", elem_id="check-step")
        position = gr.Number(1, precision=0, label="Position (drafted token, or tree depth + 1)",
                             elem_id="check-position")
        draws = gr.Number(DRAWS, precision=0, label=f"Draws (1,000 to {MAX_DRAWS:,})", elem_id="check-draws")
    with gr.Row():
        rule = gr.Radio([(words, name) for name, words in RULES.items()], value="exact", label="Rule",
                        elem_id="check-rule")
        go = gr.Button("Check", variant="primary", scale=0, elem_id="check-btn")
    histogram = gr.Plot(elem_id="check-plot", show_label=False, elem_classes="compare-plot")
    words = gr.Markdown(elem_id="check-words")
    with gr.Accordion("Check record (JSON)", open=False):
        record = gr.JSON(elem_id="check-record")
    go.click(friendly(run_sampling_check),
             [prompt, method, target, draft, temperature, top_k, seed, step, position, rule, draws],
             [histogram, words, record], api_name="sampling_check", **events)


def run_verify_draft(prompt: str, continuation: str, target: str, temperature: float, seed: float):
    """The typed continuation verified as a draft in one target forward, drawn by the speculative figures."""
    trace = verify_draft_trace(prompt, continuation, target or None, temperature=temperature,
                               seed=whole("The seed", seed, 0, 2 ** 63 - 1))
    return (speculative_figures.draft_check(trace, 0), speculative_figures.next_token_and_stats(trace, 0),
            speculative_figures.words(trace, 0), trace.steps[0].to_dict())


def build_verify_draft(friendly: Callable, **events) -> None:
    gr.Markdown("Be the drafter: type what you think comes next. The target verifies your tokens as a draft in one "
                "forward, keeps them while it agrees (greedy: each is its argmax; sampled: each passes u <= p(x), "
                "your q being one-hot) and adds its own token at the first rejection.")
    with gr.Row():
        prompt = gr.Textbox("Once upon a time", label="Prompt", lines=2, scale=2, elem_id="typed-prompt")
        continuation = gr.Textbox(" there was a little girl", label="Your draft (at most 16 tokens)", lines=2,
                                  scale=2, elem_id="typed-draft")
        target = gr.Dropdown(TARGETS, value=default_target(), label="Target model", allow_custom_value=True,
                             scale=1, elem_id="typed-target")
    with gr.Row():
        temperature = gr.Number(0.0, label="Temperature (0: greedy)", elem_id="typed-temperature")
        seed = gr.Number(0, precision=0, label="Seed", elem_id="typed-seed")
        go = gr.Button("Verify my draft", variant="primary", scale=0, elem_id="typed-btn")
    main = gr.Plot(elem_id="typed-plot", show_label=False, elem_classes="compare-plot")
    with gr.Row(equal_height=False):
        side = gr.Plot(elem_id="typed-side", show_label=False, elem_classes="compare-plot")
        words = gr.Markdown(elem_id="typed-words")
    with gr.Accordion("Step record (JSON)", open=False):
        record = gr.JSON(elem_id="typed-record")
    go.click(friendly(run_verify_draft), [prompt, continuation, target, temperature, seed],
             [main, side, words, record], api_name="verify_draft", **events)
