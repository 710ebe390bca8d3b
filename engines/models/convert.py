"""SmolLM2's packaged GGUF turned into a save_pretrained folder once, written atomically."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers import logging as hf_logging

from engines.models import locks

hf_logging.disable_progress_bar()  # a CLI that prints JSON must not print progress bars


def convert_smollm2(gguf: Path, out_dir: Path) -> Path:
    """Dequantise the packaged GGUF once into a save_pretrained folder (about 30 s)."""
    with locks.FROM_PRETRAINED:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are now plain float tensors; the marker would make transformers expect GGUF again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return write_atomically(out_dir, save)


def write_atomically(out_dir: Path, write: Callable[[Path], None]) -> Path:
    """Fill `out_dir` with `write(folder)` so that no reader ever sees it half-written.

    `write` fills a folder of its own, `<name>.<pid>-<random>.tmp`, which is then renamed into place in one
    step. A killed run leaves only such a folder, removed by the next call; of two writers at once (two
    processes) the first rename wins and the other's copy is discarded, so neither clobbers the other."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with locks.model_lock(str(out_dir.resolve())):   # one writer per folder in this process
        remove_stale_conversions(out_dir)
        return rename_into_place(out_dir, write)


def rename_into_place(out_dir: Path, write: Callable[[Path], None]) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.{os.getpid()}-", suffix=".tmp", dir=out_dir.parent))
    try:
        write(tmp)
        if out_dir.exists() and not (out_dir / "config.json").is_file():
            shutil.rmtree(out_dir)    # an unusable folder under the final name (left by hand)
        os.rename(tmp, out_dir)
    except OSError:
        if not (out_dir / "config.json").is_file():   # not merely a lost race: a real failure
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # gone after the rename; else the loser's or a failed copy
    return out_dir


def remove_stale_conversions(out_dir: Path) -> None:
    """Remove `<name>.<pid>-<random>.tmp` folders whose process is gone (and the unnumbered `<name>.tmp` of
    earlier versions); a living process's conversion is left alone."""
    for tmp in out_dir.parent.glob(f"{out_dir.name}.*tmp"):
        pid = tmp.name[len(out_dir.name) + 1:].split("-", 1)[0]
        # This process writes one folder at a time (under its model lock), so its own number marks a leftover
        # of an earlier process that had the same number (containers reuse them).
        if not (pid.isdigit() and int(pid) != os.getpid() and process_alive(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, under another user
        return True
    return True


