"""Parallel Decoding Explorer: `python app.py` serves the UI on http://127.0.0.1:7860.

Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, as for any Gradio app.
"""
from explorer.ui import build, launch_kwargs

demo = build()

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=4).launch(**launch_kwargs())
