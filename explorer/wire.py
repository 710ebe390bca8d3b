"""Outputs made ready for the page inside the handler, so that screens reach the page in the order they were made.

Gradio postprocesses a handler's outputs after the handler returns, one component at a time, each in a worker
thread. Two Step presses take turns on the visitor's lock, but the first one's postprocessing (a Plotly figure
to JSON) could still be under way when the second one's finished, and the page then drew iteration 14 after 15.
The panel's events are therefore wired with `postprocess=False`, and their handlers return what `on_the_wire`
makes of their outputs, while they still hold the lock: the value Gradio's postprocessing would have sent.
"""
from __future__ import annotations

from typing import Any

from gradio.blocks import Block
from gradio.data_classes import GradioModel, GradioRootModel
from gradio.utils import is_prop_update

_NO_VALUE = object()


def on_the_wire(outputs: dict) -> dict:
    """{component: value, a component update, or gr.skip()} -> {component: what the page is sent}."""
    return {component: sent(component, value) for component, value in outputs.items()}


def sent(component: Any, value: Any) -> Any:
    if not isinstance(component, Block):   # a panel of names, as tests and notebooks build one: nothing to send
        return value
    if isinstance(value, Block):   # an update such as gr.Plot(value=..., visible=...): props as given
        update = dict(value.constructor_args)
        new_value = update.pop("value", _NO_VALUE)
        update = {k: v for k, v in update.items() if v is not None}
        if new_value is not _NO_VALUE:
            update["value"] = serialized(component, new_value)
        return {**update, "__type__": "update"}
    if is_prop_update(value):      # gr.skip(), or an update dict
        if "value" not in value:
            return value
        return {**value, "value": serialized(component, value["value"])}
    return serialized(component, value)


def serialized(component: Any, value: Any) -> Any:
    out = component.postprocess(value)
    return out.model_dump() if isinstance(out, (GradioModel, GradioRootModel)) else out
