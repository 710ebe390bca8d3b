"""The command line: JSON on stdout; bad input -> one line on stderr and exit code 2. One test runs the real
`python -m engines` process; the rest call its main() in this process, which is the same code without the
7-11 s a fresh interpreter spends importing torch and transformers."""
import json
import subprocess
import sys

import pytest
import torch

from engines.__main__ import main
from engines.drafting.registry import names
from tests.conftest import greedy_reference


def test_the_installed_command_prints_the_json_trace_and_refuses_in_one_line(tiny_target):
    """The one real process: the module entry point, its stdout, its exit codes."""
    def command(*args):
        return subprocess.run([sys.executable, "-m", "engines", *args], capture_output=True, text=True, timeout=300)
    r = command("trace", "--method", "autoregressive", "--prompt", "Once upon a time", "--max-new-tokens", "5",
                "--target", tiny_target.source)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["method"] == "autoregressive" and len(d["output_ids"]) == 5
    assert d["models"]["target"] == tiny_target.name == "tiny-target"   # its name, not the server folder
    bad = command("trace", "--method", "autoregressive", "--prompt", "")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_tree_takes_every_tree_drafter_and_speculative_refuses_one_it_cannot_use(cli, tiny_target):
    r = cli("trace", "--method", "tree", "--drafter", "suffix", "--prompt", "a b a b a b a b", "--max-new-tokens",
            "6", "--target", "tiny-target")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["config"]["drafter"] == "suffix"
    r = cli("trace", "--method", "speculative", "--drafter", "suffix", "--prompt", "x", "--target", "tiny-target")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: drafter must be one of {', '.join(names('chain'))}, not 'suffix'."]
    assert "suffix" not in names("chain") and "suffix" in names("tree")


@pytest.mark.parametrize("which", ["tiny_target", "smollm2"])
def test_greedy_trace_from_the_command_line_equals_generate(which, request, cli):
    model = request.getfixturevalue(which)
    r = cli("trace", "--method", "autoregressive", "--prompt", "It is a truth universally acknowledged, that",
            "--max-new-tokens", "12", "--target", model.source)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["output_ids"] == greedy_reference(model, d["prompt_ids"], 12)


@pytest.mark.parametrize("args, says", [
    (["--prompt", "", "--method", "autoregressive"], "prompt is empty"),
    (["--prompt", "x", "--method", "autoregressive", "--max-new-tokens", "0"], "max new tokens"),
    (["--prompt", "x", "--method", "autoregressive", "--max-new-tokens", "100000"], "max new tokens"),
    (["--prompt", "x", "--method", "autoregressive", "--temperature", "-1"], "temperature"),
    (["--prompt", "x", "--method", "no-such-method"], "invalid choice"),
    (["--prompt", "x", "--method", "autoregressive", "--target", "no-such-model"], "Unknown model"),
    (["--prompt", "x", "--method", "autoregressive", "--top-p", "abc"], "invalid float"),
    (["--prompt", "x", "--method", "autoregressive", "--device", "banana"], "Unknown device"),
    (["--prompt", "x", "--method", "autoregressive", "--dtype", "int3"], "invalid choice"),
    (["--prompt", "x", "--method", "jacobi", "--k", "4"], "--k is a setting of speculative, not of jacobi"),
    (["--prompt", "x", "--method", "autoregressive", "--window", "3", "--target", "tiny-target"],
     "--window is a setting of lookahead"),
    (["--prompt", "x", "--method", "jacobi", "--draft", "tiny-draft"], "jacobi uses no draft model"),
    (["--prompt", "x", "--method", "autoregressive", "--seed", "-1"], "seed must be between 0 and"),
    (["--prompt", "x", "--method", "autoregressive", "--target", "../../"], "Unknown model '..'"),
])
def test_bad_input_gives_one_line_and_exit_code_2(args, says, cli):
    r = cli("trace", *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in r.stderr


def test_models_lists_every_preset(cli):
    r = cli("models")
    assert r.returncode == 0
    for name in ("smollm2-135m-instruct", "tiny-target", "tiny-draft", "tiny-masked"):
        assert name in r.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_that_is_not_there_is_one_sentence(cli):
    r = cli("trace", "--prompt", "x", "--method", "autoregressive", "--target", "tiny-target", "--device", "cuda")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: This machine has no 'cuda' device; use cpu, or leave the device unset to take a GPU when there is one."]


def test_the_seed_is_a_setting_like_the_others(tiny_target, capsys):
    assert main(["trace", "--method", "autoregressive", "--prompt", "Once", "--temperature", "1",
                 "--max-new-tokens", "3", "--seed", "5", "--target", "tiny-target"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["seed"] == 5


def test_settings_of_the_chosen_method_are_accepted(capsys):
    """The refusal is about other methods' flags only: shared and own flags pass (block is jacobi's and
    mask-predict's)."""
    assert main(["trace", "--method", "jacobi", "--prompt", "Once", "--block", "3", "--max-new-tokens", "3",
                 "--temperature", "0", "--target", "tiny-target"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["block"] == 3


def test_tree_budget_takes_the_word_auto_and_refuses_other_words_in_one_line(cli, tiny_target):
    r = cli("trace", "--method", "tree", "--tree-budget", "auto", "--prompt", "Once upon a time",
            "--max-new-tokens", "4", "--target", "tiny-target")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["config"]["tree_budget"] == 0 and all("sizing" in s for s in d["steps"])
    bad = cli("trace", "--method", "tree", "--tree-budget", "lots", "--prompt", "x", "--target", "tiny-target")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "whole number or 'auto'" in bad.stderr
