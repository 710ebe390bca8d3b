"""explorer/wire.py: the panel's outputs, made ready in the handler, are what Gradio's own postprocessing sends."""
import asyncio

import gradio as gr
import plotly.graph_objects as go

from explorer.wire import on_the_wire


def sent_by_gradio(outputs: dict, postprocess: bool) -> list:
    with gr.Blocks() as demo:
        for component in outputs:
            component.render()
        trigger = gr.Button()
        trigger.click(lambda: outputs, None, list(outputs), postprocess=postprocess)
    block_fn = demo.fns[max(demo.fns)]
    return asyncio.run(demo.postprocess_data(block_fn, outputs, None))


def test_outputs_on_the_wire_are_sent_as_gradio_would_have_sent_them():
    figure = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))
    parts = dict(md=gr.Markdown(render=False), plot=gr.Plot(render=False), drafter=gr.Plot(render=False),
                 html=gr.HTML(render=False), slider=gr.Slider(0, 1, render=False), record=gr.JSON(render=False),
                 button=gr.Button(render=False), target=gr.Dropdown(choices=["a"], render=False),
                 left=gr.Markdown(render=False), number=gr.Number(render=False))
    outputs = {parts["md"]: "**Iteration 3** of 4", parts["plot"]: figure,
               parts["drafter"]: gr.Plot(value=figure, visible=True), parts["html"]: '<span data-run="x">3</span>',
               parts["slider"]: gr.Slider(minimum=0, maximum=5, value=3), parts["record"]: {"accepted": [1, 2]},
               parts["button"]: gr.Button(interactive=False),
               parts["target"]: gr.Dropdown(choices=["a", "b"], value="b"), parts["left"]: gr.skip(),
               parts["number"]: 7}
    expected = sent_by_gradio(outputs, postprocess=True)
    wired = sent_by_gradio(on_the_wire(outputs), postprocess=False)
    assert wired == expected
    assert isinstance(wired[1], dict) and wired[1]["type"] == "plotly"    # the figure went as JSON, not as itself


def test_the_wire_is_not_what_an_unprocessed_figure_would_send():
    """The check above can fail: a figure handed over as it is reaches the page as a Python object."""
    figure = go.Figure(go.Scatter(x=[1], y=[2]))
    plot = gr.Plot(render=False)
    assert sent_by_gradio({plot: figure}, postprocess=False) != sent_by_gradio({plot: figure}, postprocess=True)
