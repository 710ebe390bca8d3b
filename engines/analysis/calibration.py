"""Where a run's cost-model calibration comes from, without making its first step wait for a sweep.

A run of a costed method (speculative, tree) first looks for a calibration an earlier run left on disk for the
same machine and model pair (~/.cache/parallel-decoding-explorer/calibrations/, one JSON file per key: target
and draft names, device, dtype, torch version and the CPU or GPU model). When there is none, `LiveCalibration`
measures while the run goes: each verify forward of the run (from its second step; the first also reads the
prompt) is a T(n) point at the size it fed, and between steps one short piece of the sweep is timed at a time
(first a target and a draft forward over one token, the unit T(n) is counted in, then each verify size the run
did not feed itself). Once every size is in, the calibration is complete and written to disk for the next run.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from engines.analysis import cost
from engines.analysis.theory import DISK, OWN, SWEEP, VERIFY_N, Calibration
from engines.models import presets
from engines.models.adapter import LM
from engines.trace import Step

ENV_DIR = "PDE_CALIBRATIONS"   # another folder for the files (the tests point it at a temporary one)


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_DIR) or presets.CACHE_DIR / "calibrations")


def processor(device: torch.device) -> str:
    """The GPU's name on CUDA, else the CPU's model name (from /proc/cpuinfo where there is one)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_key(target: LM, draft: LM | None) -> dict[str, str | None]:
    """What a calibration depends on: the models, where and how they run, and the hardware."""
    return {"target": target.name, "draft": draft.name if draft is not None else None, "device": str(target.device),
            "dtype": str(target.dtype).removeprefix("torch."), "torch": torch.__version__,
            "processor": processor(target.device)}


def cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / f"{digest}.json"


def load_cached(target: LM, draft: LM | None) -> Calibration | None:
    """The complete calibration an earlier run saved for this key, as a disk-cache one; None when there is none
    (or the file is unreadable, or was written for another key that happens to share the digest)."""
    key = machine_key(target, draft)
    try:
        saved = json.loads(cache_path(key).read_text())
        if saved.get("key") != key:
            return None
        cal = Calibration.from_dict(saved["calibration"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return replace(cal, source=DISK, complete=True, at_step=None) if cal.complete else None


def save(target: LM, draft: LM | None, cal: Calibration) -> None:
    """Write the calibration for the key, atomically (a temporary file renamed over the old one), so two
    processes never read half a file. A folder that cannot be written only costs the next run its cache."""
    key = machine_key(target, draft)
    path = cache_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".calibration-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"key": key, "calibration": asdict(cal)}, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        pass


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class LiveCalibration:
    """A calibration measured during a run: the run's own verify forwards, and the sweep one piece at a time."""

    def __init__(self, target: LM, draft: LM | None, prompt_ids: Sequence[int], ns: Sequence[int] = VERIFY_N):
        self.target, self.draft, self.prompt_ids = target, draft, list(prompt_ids)
        self.sizes = cost.sizes_that_fit(target, len(prompt_ids), ns)
        self.own: dict[int, list[float]] = {}     # tokens fed -> seconds of the run's verify forwards over them
        self.swept: dict[int, float] = {}         # n -> median seconds of the sweep's forwards over n tokens
        self.draft_s: float | None = None
        self.started_at: str | None = None

    def note(self, step: Step) -> None:
        """Take a step's verify forward as a point. The first step's forward also read the prompt, so not it."""
        seconds = step.detail.get("target_forward_s")
        if step.index >= 1 and seconds is not None and step.target_forwards == 1 and step.tokens_fed > 0:
            self.own.setdefault(step.tokens_fed, []).append(seconds)
            self.started_at = self.started_at or now()

    def missing(self) -> list[int]:
        """The sizes still to sweep: 1 (the unit) always, then the verify sizes the run did not feed itself."""
        return [n for n in self.sizes if n not in self.swept and (n == 1 or n not in self.own)]

    @property
    def complete(self) -> bool:
        return not self.missing() and (self.draft is None or self.draft_s is not None)

    def measure_next(self) -> bool:
        """Time one piece of the sweep (the one-token forwards first, then one verify size); False when nothing
        is left or another session is timing right now (its forwards would skew both), so it waits a step."""
        todo = self.missing()
        if not todo and self.complete:
            return False
        if not cost._CALIBRATING.acquire(blocking=False):
            return False
        try:
            self.started_at = self.started_at or now()
            if 1 not in self.swept or (self.draft is not None and self.draft_s is None):
                self.swept[1] = cost.forward_seconds(self.target, self.prompt_ids, 1, cost.CALIBRATION_REPEATS)
                if self.draft is not None:
                    self.draft_s = cost.forward_seconds(self.draft, self.prompt_ids, 1, cost.CALIBRATION_REPEATS)
            else:
                n = todo[0]
                self.swept[n] = cost.forward_seconds(self.target, self.prompt_ids, n, cost.CALIBRATION_REPEATS)
        finally:
            cost._CALIBRATING.release()
        return True

    def source(self) -> str:
        own, swept = any(n not in self.swept for n in self.own), bool(self.swept)
        return f"{OWN} and a {SWEEP}" if own and swept else SWEEP if swept else OWN   # nothing yet: the run's own

    def record(self, at_step: int | None) -> dict[str, Any]:
        """What is measured so far, as Trace.cost: a Calibration's fields once the one-token forward is timed;
        before that the seconds of the run's own forwards by size (`forward_s`, empty after the first step),
        marked incomplete, so a view can say the run is measuring rather than that it never did."""
        seconds = {n: statistics.median(s) for n, s in self.own.items()} | self.swept
        if 1 not in self.swept:
            return {"source": self.source(), "complete": False, "at_step": at_step, "measured_at": self.started_at,
                    "forward_s": {str(n): seconds[n] for n in sorted(seconds)}}
        one = self.swept[1]
        ns = sorted(seconds)
        c = self.draft_s / one if self.draft_s is not None else None
        return asdict(Calibration(one, self.draft_s, c, ns, [seconds[n] / one for n in ns], self.started_at or now(),
                                  self.source(), self.complete, at_step))

    def finish(self, at_step: int | None) -> Calibration | None:
        """The complete calibration, saved for the next run on this machine; None while sizes are missing."""
        if not self.complete:
            return None
        cal = Calibration.from_dict(self.record(at_step))
        save(self.target, self.draft, cal)
        return cal
