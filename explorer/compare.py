"""The views that look across runs: the race, the losslessness auditor, the sampling check, be-the-drafter
(those two in explorer/checks.py) and the trace diff.

`build(friendly, limits)` lays out a row of tabs inside the app's Blocks and wires their events, each with an
api_name and named parameters, so they are scriptable with gradio_client. `friendly` is the app's
error wrapper (explorer.ui), passed in so this module does not import the layout module. The race and the
audit run models, so they share the app's model-work concurrency group, and take their values as sent
(preprocess=False): every one is checked here.
"""
from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from engines.analysis.audit import Audit, audit
from engines.analysis.diff import TOLERANCE, diff, load
from engines.analysis.race import race
from engines.methods import METHODS, default_target
from explorer import checks
from explorer.figures import race as race_figures
from explorer.limits import (
    ServerLimits,
    model_name,
    model_work,
    real_number,
    text,
    uploaded,
    whole_number,
)

TARGETS = ["smollm2-135m-instruct", "tiny-target"]
RACE_MAX_TOKENS = 128      # every lane runs twice (a warm-up lap, then the timed one): keep a call bounded
MAX_PROMPT_CHARS = 2000


def json_record(value: Any) -> Any:
    """A record as gr.JSON takes it: its dicts keyed by strings (token texts and logits are keyed by token id)."""
    if isinstance(value, dict):
        return {str(k): json_record(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_record(v) for v in value]
    return value


def checked_prompt(prompt: str) -> str:
    if not text("The prompt", prompt, MAX_PROMPT_CHARS).strip():
        raise ValueError("The prompt is empty: type a few words for the model to continue.")
    return prompt


def checked_tokens(max_new_tokens: float | None, limit: int) -> int:
    return whole_number("New tokens", max_new_tokens, 1, limit)


def run_race(prompt: str, target: str, max_new_tokens: float):
    """Every causal method on the prompt, greedy: timeline, table, outputs, cost curves, the cost in words."""
    result = race(checked_prompt(prompt), checked_tokens(max_new_tokens, RACE_MAX_TOKENS),
                  target=model_name("The target model", target))
    return (race_figures.timeline_figure(result), race_figures.table_markdown(result),
            race_figures.outputs_html(result), race_figures.cost_figure(result), result.cost.words,
            json_record(result.to_dict()))


def build_race(friendly: Callable, limits: ServerLimits) -> None:
    with gr.Row():
        prompt = gr.Textbox("Once upon a time", label="Prompt", lines=2, scale=3, elem_id="race-prompt")
        target = gr.Dropdown(TARGETS, value=default_target(), label="Target model", allow_custom_value=True,
                             scale=1, min_width=240, elem_id="race-target")
        tokens = gr.Number(48, precision=0, label=f"New tokens (1 to {RACE_MAX_TOKENS})", scale=1,
                           elem_id="race-tokens")
        go = gr.Button("Run race", variant="primary", scale=0, elem_id="race-btn")
    gr.Markdown("Every causal method decodes the prompt greedily to the same number of new tokens on one "
                "target, back to back in this process. Mask-predict is not in the race: it fills a span with "
                "a masked LM and has no greedy causal output to compare.")
    timeline = gr.Plot(elem_id="race-timeline", show_label=False, elem_classes="compare-plot")
    table = gr.Markdown(elem_id="race-table")
    outputs = gr.HTML(elem_id="race-outputs")
    cost = gr.Plot(elem_id="race-cost", show_label=False, elem_classes="compare-plot")
    words = gr.Markdown(elem_id="race-words")
    with gr.Accordion("Race record (JSON)", open=False):
        record = gr.JSON(elem_id="race-record")
    go.click(friendly(run_race), [prompt, target, tokens], [timeline, table, outputs, cost, words, record],
             api_name="race", preprocess=False, **model_work(limits))


AUDITED = [m.name for m in METHODS.values() if m.model_kind == "causal" and m.name != "autoregressive"]
AUDIT_MAX_TOKENS = 256


def audit_markdown(a: Audit) -> str:
    """The verdict, then the target's top-2 logits at the divergence under every computation."""
    d = a.divergence
    if d is None:
        return f"**{'Equal' if a.equal else 'Different'}.** {a.words}"
    head = ["| computation | top-1 (id: logit) | top-2 (id: logit) | margin | reference's token | method's token |",
            "|---|---|---|---:|---:|---:|"]
    for t in (d.reference, d.method, d.reference64, d.method64):
        if t is not None:
            head.append(f"| {t.computation} | {t.ids[0]}: {t.logits[0]:.5f} | {t.ids[1]}: {t.logits[1]:.5f} | "
                        f"{t.margin:.2e} | {t.logit_of[d.reference_token]:.5f} | {t.logit_of[d.method_token]:.5f} |")
    return f"**Verdict: {d.verdict}.** {a.words}\n\n" + "\n".join(head)


def run_audit(prompt: str, method_name: str, target: str, max_new_tokens: float, float64: bool):
    """The method's greedy output against greedy autoregressive; the first divergence explained."""
    if not isinstance(method_name, str) or method_name not in AUDITED:
        raise ValueError(f"Audit one of {', '.join(AUDITED)}: the others have no greedy output to compare.")
    if not isinstance(float64, bool):
        raise ValueError("The float64 re-run is a yes or no (true or false).")
    result = audit(checked_prompt(prompt), method_name, checked_tokens(max_new_tokens, AUDIT_MAX_TOKENS),
                   target=model_name("The target model", target), float64=float64)
    return audit_markdown(result), json_record(result.to_dict())


def build_audit(friendly: Callable, limits: ServerLimits) -> None:
    with gr.Row():
        prompt = gr.Textbox("Once upon a time", label="Prompt", lines=2, scale=3, elem_id="audit-prompt")
        method = gr.Dropdown(AUDITED, value="tree", label="Method", scale=1, elem_id="audit-method")
        target = gr.Dropdown(TARGETS, value=default_target(), label="Target model", allow_custom_value=True,
                             scale=1, min_width=240, elem_id="audit-target")
        tokens = gr.Number(48, precision=0, label=f"New tokens (1 to {AUDIT_MAX_TOKENS})", scale=1,
                           elem_id="audit-tokens")
    with gr.Row():
        float64 = gr.Checkbox(True, label="re-run both computations in float64 at a divergence",
                              elem_id="audit-float64")
        go = gr.Button("Audit", variant="primary", scale=0, elem_id="audit-btn")
    verdict = gr.Markdown(elem_id="audit-verdict")
    with gr.Accordion("Audit record (JSON)", open=False):
        record = gr.JSON(elem_id="audit-record")
    go.click(friendly(run_audit), [prompt, method, target, tokens, float64], [verdict, record], api_name="audit",
             preprocess=False, **model_work(limits))


def diff_traces(trace_a: str | None, trace_b: str | None, tolerance: float,
                max_upload_bytes: int = ServerLimits().max_upload_bytes):
    """The first step where two uploaded traces of the same method and prompt differ."""
    if not trace_a or not trace_b:
        raise ValueError("Upload two trace .json files, saved by this app or the CLI.")
    tolerance = real_number("The tolerance", tolerance, 0, 1)
    result = diff(load(uploaded(trace_a, max_upload_bytes)), load(uploaded(trace_b, max_upload_bytes)), tolerance)
    return result.words, result.to_dict()


def build_diff(friendly: Callable, limits: ServerLimits) -> None:
    with gr.Row():
        a = gr.File(label="Trace A", file_types=[".json"], type="filepath", elem_id="diff-a")
        b = gr.File(label="Trace B", file_types=[".json"], type="filepath", elem_id="diff-b")
    with gr.Row():
        tolerance = gr.Number(TOLERANCE, label="probabilities closer than this count as equal", elem_id="diff-tol")
        go = gr.Button("Diff", variant="primary", scale=0, elem_id="diff-btn")
    words = gr.Markdown(elem_id="diff-words")
    with gr.Accordion("Diff record (JSON)", open=False):
        record = gr.JSON(elem_id="diff-record")
    def diff_uploads(trace_a: str | None, trace_b: str | None, tolerance: float):
        return diff_traces(trace_a, trace_b, tolerance, limits.max_upload_bytes)

    go.click(friendly(diff_uploads), [a, b, tolerance], [words, record], api_name="diff_traces")


def build(friendly: Callable, limits: ServerLimits = ServerLimits()) -> None:
    """The comparison tabs, below the method explorer, under their own heading."""
    gr.Markdown("## Compare methods\nEvery causal method raced on one prompt, an audit of one method against "
                "`generate()`, the sampling rules checked against the target's distribution, your own draft "
                "verified, and two traces side by side.", elem_id="compare-heading")
    with gr.Tabs(elem_id="compare-tabs"):
        with gr.Tab("Race", elem_id="tab-race"):
            build_race(friendly, limits)
        with gr.Tab("Audit", elem_id="tab-audit"):
            build_audit(friendly, limits)
        with gr.Tab("Sampling check", elem_id="tab-check"):
            checks.build_sampling_check(friendly, **model_work(limits))
        with gr.Tab("Be the drafter", elem_id="tab-drafter"):
            checks.build_verify_draft(friendly, **model_work(limits))
        with gr.Tab("Trace diff", elem_id="tab-diff"):
            build_diff(friendly, limits)
