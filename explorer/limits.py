"""What the server allows one caller, enforced on the server whatever the widgets allow.

`ServerLimits` is built once where the app is launched (app.py) and handed to the layout; the checks
here turn anything a person or a raw HTTP call can send (NaN, 1e400, a negative count, 2.5 for a whole
number, a string for a number, a huge file) into one sentence.
"""
from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ServerLimits:
    call_budget_s: float = 60.0      # wall clock of one Run to end; it stops there and says so
    model_workers: int = 2           # calls that run a model at once (a 2-core CPU Space); the rest wait
    light_workers: int = 8           # calls that only replay recorded steps or read a trace
    queue_size: int = 64             # calls waiting at once; more are refused with "queue is full"
    session_ttl_s: float = 1800.0    # a person's runs are freed this long after their last call
    # Gradio keeps, per browser session, a copy of every output it sent (figures included) until the
    # session is one of the `session_capacity` most recent ones: this bounds that memory.
    session_capacity: int = 500
    max_upload_bytes: int = 8 * 2 ** 20   # a trace of 512 tokens of tree decoding is well under this
    render_interval_s: float = 0.25  # Run to end shows at most about 4 screens a second, so the page keeps up
    malloc_arenas: int = 2           # glibc heap arenas the server's threads share (see cap_malloc_arenas)


MAX_NAME_CHARS = 300   # a preset, a folder or a hub id
MODEL_WORK = "model"   # the concurrency group of every call that may run a model
M_ARENA_MAX = -8       # mallopt's parameter number for the arena cap (glibc malloc.h)


def cap_malloc_arenas(arenas: int) -> bool:
    """Let the server's threads share `arenas` glibc heap arenas. glibc gives every thread that allocates an arena
    of its own (up to 8 per core) and keeps what a thread freed for that arena: with Gradio's pool of worker
    threads each running model forwards, 40 fresh sessions grew the server by 366 MB, and by 67 MB with two
    arenas (measured here, tiny-target, reset + step each). The same as MALLOC_ARENA_MAX, set from the process
    itself; it binds the arenas made from now on. False where the C library is not glibc (nothing changes)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.mallopt(M_ARENA_MAX, arenas) == 1
    except (OSError, AttributeError):
        return False


def model_work(limits: ServerLimits) -> dict[str, Any]:
    """Event arguments that put a call in the model-work group: at most `model_workers` of them at once."""
    return {"concurrency_id": MODEL_WORK, "concurrency_limit": limits.model_workers}


def whole_number(label: str, value: Any, low: int, high: int) -> int:
    """`value` as an int in [low, high], or one sentence that names the control and the range."""
    ranged = f"{label} must be a whole number from {low} to {high}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{ranged}, not {shown(value)}.")
    if value != int(value) or not low <= value <= high:
        raise ValueError(f"{ranged}, not {shown(value)}.")
    return int(value)


def real_number(label: str, value: Any, low: float, high: float) -> float:
    """`value` as a finite float in [low, high], or one sentence."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{label} must be a number from {low:g} to {high:g}, not {shown(value)}.")
    return float(value)


def text(label: str, value: Any, limit: int) -> str:
    """`value` as a string of at most `limit` characters (a prompt, a model name), or one sentence."""
    if not isinstance(value, str):
        raise ValueError(f"{label} must be text, not {shown(value)}.")
    if len(value) > limit:
        raise ValueError(f"{label} is {len(value)} characters long; keep it under {limit}.")
    return value


def model_name(label: str, name: Any) -> str | None:
    """A model control's value: None when left empty (the method's default), else text of a sane length."""
    if name is None:
        return None
    return text(label, name, MAX_NAME_CHARS).strip() or None


def shown(value: Any) -> str:
    """A value as a sentence may echo it: short, and JSON's words for what Python calls None and nan."""
    if value is None:
        return "empty"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "infinite"
    s = repr(value)
    return s if len(s) <= 40 else s[:37] + "..."


def uploaded(path: Any, limit: int) -> str:
    """The path of an uploaded trace, refused (before anything reads it) when missing or over `limit` bytes."""
    if not path or not isinstance(path, str):
        raise ValueError("No file was uploaded; choose a trace .json file saved by this app or the CLI.")
    try:
        size = Path(path).stat().st_size
    except OSError as e:
        raise ValueError("This file could not be read; choose a trace .json file.") from e
    if size > limit:
        raise ValueError(f"This file is {size / 2 ** 20:.1f} MB; this server reads traces of up to "
                         f"{limit / 2 ** 20:.0f} MB.")
    return path


def read_upload(path: Any, limit: int) -> str:
    """The text of an uploaded trace, refused before it is read if it is larger than `limit` bytes."""
    try:
        return Path(uploaded(path, limit)).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError("This file could not be read as text; choose a trace .json file.") from e
