"""Training checkpoints written whole or not at all."""
from __future__ import annotations

import os
from pathlib import Path

import torch


def save(state: dict, path: Path) -> None:
    """Write `state` beside `path`, then rename it over `path`: a run killed mid-write (a session's end, a
    person's Ctrl-C) leaves the previous checkpoint intact instead of a truncated file that cannot resume."""
    part = Path(path).with_name(Path(path).name + ".part")
    torch.save(state, part)
    os.replace(part, path)
