"""Parallel Decoding Explorer: `python app.py` serves the UI on http://127.0.0.1:7860.

Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, as for any Gradio app. Configuration enters
here and nowhere deeper:

    EXPLORER_HUB_MAX_PARAMS   allow Hugging Face ids beyond the presets, up to this many parameters (e.g. 2e9);
                              unset: presets only. Every such id is checked before download (safetensors only,
                              no remote code, the cap).

On a ZeroGPU Space (the `spaces` package with ZeroGPU hardware) one GPU call computes a whole trace and
stepping replays it; elsewhere each Step runs the engine.
"""
import os

from engines.models import locate
from engines.models.hub import HubPolicy
from explorer import zerogpu
from explorer.limits import ServerLimits, cap_malloc_arenas
from explorer.controls import preload
from explorer.ui import build, launch_kwargs, queue_kwargs

locate.set_hub_policy(HubPolicy(max_parameters=int(float(os.environ.get("EXPLORER_HUB_MAX_PARAMS") or 0))))
# per call, per session, per upload, and how many calls at once: explorer/limits.py
LIMITS = ServerLimits()
cap_malloc_arenas(LIMITS.malloc_arenas)   # before the worker threads allocate: memory per session stays small
demo = build(zerogpu.starter(), limits=LIMITS)

if __name__ == "__main__":
    preload()   # SmolLM2's one-time conversion starts now, in the background, not at the first Step
    demo.queue(**queue_kwargs(LIMITS)).launch(**launch_kwargs(LIMITS))
