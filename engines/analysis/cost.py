"""The cost model of drafting and verifying, measured on this machine (paper notation: p target, q draft).

Two numbers, timed in this process: c, the cost of a draft forward relative to a target forward, and T(n),
a target forward over n tokens relative to one token. With acceptance rate alpha and k drafts, speculative
decoding expects (1 - alpha^(k+1)) / (1 - alpha) tokens per iteration (Leviathan et al. 2023, eq. 1) for a
cost of k*c + T(k+1) target forwards, so its expected speedup over plain decoding is their ratio.

`measure` times the forwards; `calibrate` does so once per model pair in the process (every session of a
Space shares it) and is what a run records in its trace. The acceptance counts of each method (accepted and
examined drafts) live here too: they are the alpha the model reads.
"""
from __future__ import annotations

import statistics
import threading
import time
import weakref
from collections import OrderedDict
from typing import Sequence

from engines.analysis.theory import VERIFY_N, Calibration
from engines.models import devices
from engines.models.adapter import LM

CALIBRATION_REPEATS = 3                  # a median of 3 per size keeps calibrating SmolLM2 on a CPU near 1-2 s
CACHED = 8                               # model pairs whose calibration the process remembers


def forward_seconds(model: LM, prompt_ids: Sequence[int], n: int, repeats: int = 5) -> float:
    """Median time of one forward over n new tokens after the prompt, the cache cropped back each time."""
    kv = model.new_kv()
    model.forward(kv, prompt_ids)
    filler = [prompt_ids[-1]] * n
    times = []
    for _ in range(repeats):
        start = devices.clock(model.device)
        model.forward(kv, filler)
        times.append(devices.clock(model.device) - start)
        model.crop(kv, len(prompt_ids))
    return statistics.median(times)


def sizes_that_fit(model: LM, prompt_tokens: int, ns: Sequence[int] = VERIFY_N) -> list[int]:
    """The verify sizes the model has positions for after this prompt (1 always)."""
    room = (model.max_positions or 10 ** 9) - prompt_tokens
    return [n for n in ns if n == 1 or n <= room]


def measure(target: LM, draft: LM | None, prompt_ids: Sequence[int], repeats: int = CALIBRATION_REPEATS,
            ns: Sequence[int] = VERIFY_N) -> Calibration:
    """Time a target forward over each n tokens and a draft forward over one, after the prompt. The forwards
    run on caches of their own: no run's cache, counter or random draw is touched."""
    ns = sizes_that_fit(target, len(prompt_ids), ns)
    one = forward_seconds(target, prompt_ids, 1, repeats)
    costs = [1.0] + [forward_seconds(target, prompt_ids, n, repeats) / one for n in ns[1:]]
    draft_s = forward_seconds(draft, prompt_ids, 1, repeats) if draft is not None else None
    return Calibration(one, draft_s, draft_s / one if draft_s is not None else None, ns, costs,
                       time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


# A model object is one (model, device, dtype) of engines.models.store's cache, so its identity is the key. The cache
# holds weak references and a few entries only: an evicted model must be freed, and a new object that reuses
# a dead one's id finds the reference dead and is measured afresh.
_CALIBRATIONS: OrderedDict[tuple[int, int], tuple[weakref.ref, weakref.ref | None, Calibration]] = OrderedDict()
_CALIBRATING = threading.Lock()   # also keeps two sessions' timings from running at once and skewing each other


def calibrate(target: LM, draft: LM | None, prompt_ids: Sequence[int]) -> Calibration:
    """The pair's calibration, measured on first use in this process and remembered."""
    key = (id(target), id(draft))
    with _CALIBRATING:
        found = _CALIBRATIONS.get(key)
        if found is not None and found[0]() is target and (found[1]() if found[1] else None) is draft:
            _CALIBRATIONS.move_to_end(key)
            return found[2]
        cal = measure(target, draft, prompt_ids)
        _CALIBRATIONS[key] = (weakref.ref(target), weakref.ref(draft) if draft is not None else None, cal)
        while len(_CALIBRATIONS) > CACHED:
            _CALIBRATIONS.popitem(last=False)
        return cal


def forget_calibrations() -> None:
    with _CALIBRATING:
        _CALIBRATIONS.clear()


# ----------------------------------------------------------------------------- theory





