"""ZeroGPU Spaces: a GPU exists only inside a function decorated with `spaces.GPU`, for one call at a time.

There a live run cannot hold the GPU between two presses of Step, so one GPU call computes the whole trace and
returns it as plain data (JSON text, which crosses ZeroGPU's process boundary as it is), and Step, Back and the
slider walk the recorded steps. app.py chooses the path once, at launch: `starter()` is the live path unless
the `spaces` package is importable and reports ZeroGPU hardware.
"""
from __future__ import annotations

from typing import Callable

from engines.trace import Trace
from explorer.session import Session, Starter, live_session

# Seconds of GPU one call may ask ZeroGPU for: the largest run the settings allow on a 1.7B target with its
# draft takes a few seconds on a GPU slice; the margin covers loading the pair on the first call.
GPU_SECONDS = 120

GPUDecorator = Callable[[Callable], Callable]


def live_trace(wanted: dict) -> Trace:
    """The whole run the controls ask for, computed here and now (on the GPU when called inside one)."""
    return live_session(wanted).run.run()


def whole_trace_json(wanted: dict) -> str:
    return live_trace(wanted).to_json()


def recorded_starter(gpu: GPUDecorator) -> Starter:
    """Sessions whose whole trace one `gpu`-decorated call computes, then replayed step by step."""
    on_gpu = gpu(whole_trace_json)

    def start(wanted: dict) -> Session:
        return Session.recorded(Trace.from_json(on_gpu(wanted)), wanted)
    return start


def gpu_decorator(seconds: int = GPU_SECONDS) -> GPUDecorator | None:
    """spaces.GPU where ZeroGPU is active (the package installed on a Space with ZeroGPU hardware), else None."""
    try:
        import spaces
    except ImportError:
        return None
    return spaces.GPU(duration=seconds) if spaces.config.Config.zero_gpu else None


def starter() -> Starter:
    """How this host starts a session: recorded on ZeroGPU, live everywhere else."""
    gpu = gpu_decorator()
    return live_session if gpu is None else recorded_starter(gpu)
