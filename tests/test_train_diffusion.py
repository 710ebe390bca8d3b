"""The adapted diffusion LM on a toy Llama: training lowers the masked-diffusion loss, the adapter loads over its
base as a masked LM (refused by causal methods, taken by mask-predict), and the cached prefix's recorded drift
is the true difference to the exact forward."""
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from engines.decoding.mask_predict import MaskPredictConfig, mask_predict
from engines.methods import Run
from engines.models import locate, presets, store
from engines.training import common
from engines.training import diffusion as td
from engines.training import lora
from engines.training.__main__ import main as training_cli
from tests.conftest import PROMPTS


def toy_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(cfg)


def pattern(rows: int, n: int = 24) -> torch.Tensor:
    """Windows of a repeating 7-token pattern, each starting anywhere in it: learnable from the neighbours."""
    return (torch.arange(n)[None, :] + torch.arange(rows)[:, None]) % 7 + 100


def test_a_few_training_steps_lower_the_diffusion_loss():
    model = td.adapt(toy_llama(), mask_id=16, rank=4)
    data, held = pattern(64), pattern(8)
    before = td.held_out_loss(model, held, 16)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    td.train_steps(model, data, 16, steps=40, batch=8, lr=2e-2, generator=torch.Generator().manual_seed(0), opt=opt)
    after = td.held_out_loss(model, held, 16)
    assert after < 0.98 * before, (before, after)   # 40 steps, all in the warm-up: a small but real drop


def test_the_loss_reads_token_i_at_position_i_minus_1_under_bidirectional_attention():
    model = toy_llama(1).eval()
    x = pattern(2)
    masked, t = td.noise(x, torch.Generator().manual_seed(3))
    assert not masked[:, 0].any() and ((0 < t) & (t <= 1)).all()
    loss = td.diffusion_loss(model, x, 16, torch.Generator().manual_seed(3))
    noisy = x.masked_fill(masked, 16)
    logits = model(input_ids=noisy, attention_mask=td.all_visible(2, x.shape[1], model.dtype)).logits
    target = masked[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits[:, :-1][target], x[:, 1:][target], reduction="none")
    want = (ce * (1 / t).expand_as(target)[target]).sum() / target.numel()
    assert loss.item() == pytest.approx(want.item(), rel=1e-4)


@pytest.fixture(scope="module")
def toy_base(tmp_path_factory) -> str:
    """A toy causal base folder with SmolLM2's tokenizer (whose <empty_output>, the mask token, is id 16)."""
    base = tmp_path_factory.mktemp("toy-base")
    toy_llama(2).save_pretrained(base)
    AutoTokenizer.from_pretrained(locate.resolve("smollm2-135m-instruct")).save_pretrained(base)
    return str(base)


@pytest.fixture(scope="module")
def toy_diffusion(tmp_path_factory, toy_base) -> str:
    """A (briefly trained) adapter over the toy base, as `train` exports it."""
    peft_model = td.fresh_adapter(toy_base, rank=4)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    td.train_steps(peft_model, pattern(16), 16, steps=3, batch=4, lr=1e-2, generator=torch.Generator(), opt=opt)
    out = td.export(peft_model, tmp_path_factory.mktemp("toy-diffusion"), toy_base, {"step": 3})
    return str(out)


def test_the_adapter_loads_over_its_base_as_a_masked_lm(toy_diffusion):
    model = store.load(toy_diffusion)
    assert model.is_masked and model.can_cache and model.mask_id == 16
    assert json.loads((Path(toy_diffusion) / locate.DIFFUSION_FILE).read_text())["mask_token"] == td.MASK_TOKEN
    with pytest.raises(presets.ModelLoadError, match="needs a causal LM"):
        Run("autoregressive", PROMPTS[0], {"max_new_tokens": 4}, target=toy_diffusion)
    trace = Run("mask-predict", PROMPTS[0], {"length": 6, "iterations": 3, "curve": "off"}, target=toy_diffusion).run()
    assert trace.finished and len(trace.steps) == 3


def test_rows_are_bidirectional_and_shifted(toy_diffusion):
    model = store.load(toy_diffusion)
    row = model.encode(PROMPTS[1]) + [16] * 4
    logits = model.masked_logits_rows([row])[0]
    changed = row[:-1] + [17]
    later = model.masked_logits_rows([changed])[0]
    assert not torch.allclose(logits[:3], later[:3])       # early positions see the last token
    raw = model.model(input_ids=torch.tensor([row]), attention_mask=torch.zeros(1, 1, len(row), len(row))).logits[0]
    assert torch.allclose(logits[1:], raw[:-1], atol=1e-5)  # token i is read at i - 1


def test_a_fresh_prefix_cache_equals_the_exact_forward(toy_diffusion):
    model = store.load(toy_diffusion)
    row = model.encode(PROMPTS[2]) + [16] * 6
    start = len(row) - 6
    exact = model.masked_logits_rows([row])[0][start:]
    kv = model.new_kv()
    model.masked_logits_cached(kv, row, start)
    model.crop(kv, model.cacheable(start))
    assert torch.allclose(model.masked_logits_cached(kv, row, start), exact, atol=1e-4)


def test_recorded_drift_is_the_true_difference(toy_diffusion):
    model = store.load(toy_diffusion)
    prompt = model.encode(PROMPTS[0])
    n, cfg = 8, MaskPredictConfig(length=8, iterations=4, strategy="diffusion", cache="prefix", curve="off")
    steps = list(mask_predict(model, prompt, cfg, torch.Generator().manual_seed(0)))
    first = steps[0].detail["spans"][0]
    assert first["drift"] is None and set(first["kv_state"]) == {"fresh"}
    for s in steps[1:]:
        r = s.detail["spans"][0]
        assert r["kv_state"][:len(prompt) - 1] == ["stale"] * (len(prompt) - 1)
        assert s.tokens_fed == n + 1 and r["audit_tokens_fed"] == len(prompt) + n
        # recompute: the prompt's keys and values as iteration 0 computed them, then this iteration's row
        kv = model.new_kv()
        model.masked_logits_cached(kv, prompt + [16] * n, len(prompt))
        model.crop(kv, len(prompt) - 1)
        row = prompt + r["input_tokens"]
        cached = model.masked_logits_cached(kv, row, len(prompt))
        exact = model.masked_logits_rows([row])[0][len(prompt):]
        rows = r["masked_before"]
        assert r["drift"] == pytest.approx(float((cached[rows] - exact[rows]).abs().max()), abs=1e-5)
        assert r["drift"] > 0


def test_tiny_masked_refuses_the_cache_in_one_sentence(tiny_masked):
    with pytest.raises(ValueError, match="keeps no key-value cache") as e:
        Run("mask-predict", PROMPTS[0], {"cache": "prefix"}, target=tiny_masked.source)
    assert str(e.value).count(". ") == 0


# ----------------------------------------------------------------------------- issue 13: export, bench, default

def test_a_checkpoint_exports_without_training_and_loads_as_the_trained_weights(tmp_path, toy_base):
    """diffusion-export's path: the adapter of a checkpoint (written as `train` writes it) equals, once loaded
    through store.load, the adapter that `export` writes from the live model."""
    from peft import get_peft_model_state_dict
    peft_model = td.fresh_adapter(toy_base, rank=4)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    td.train_steps(peft_model, pattern(16), 16, steps=2, batch=4, lr=1e-2, generator=torch.Generator(), opt=opt)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"adapter": get_peft_model_state_dict(peft_model), "opt": opt.state_dict(), "step": 2,
                "tokens": 192, "curve": [{"step": 2, "tokens": 192, "held_out_loss": 9.0}]}, ckpt)
    live = td.export(peft_model, tmp_path / "live", toy_base, {"step": 2})
    made = td.export_checkpoint(ckpt, tmp_path / "from-ckpt", toy_base)
    info = json.loads((made / locate.DIFFUSION_FILE).read_text())
    assert info["step"] == 2 and info["tokens_seen"] == 192 and info["curve"][0]["held_out_loss"] == 9.0
    a, b = store.load(str(live)).model.state_dict(), store.load(str(made)).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"][16],   # the trained mask row came through
                           store.load(toy_base).model.state_dict()["model.embed_tokens.weight"][16])
    from safetensors.torch import load_file
    stored = load_file(live / "adapter_model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}   # the delta is kept in git at half size


def test_diffusion_export_says_in_one_line_when_there_is_no_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "WORK_DIR", tmp_path)
    with pytest.raises(SystemExit) as e:
        training_cli(["diffusion-export", "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_diffusion_bench_gives_every_figure(tiny_masked, toy_diffusion, tiny_target):
    """tiny-masked (no cache) and the toy adapter (cache) over one prompt, quick settings, scored by tiny-target."""
    from engines.analysis.bench_diffusion import bench_diffusion
    from engines.analysis.bench_runs import Models
    models = Models(target=tiny_target.source, tiny_target=tiny_target.source, draft="", device=None,
                    masked=(tiny_masked.source, toy_diffusion))
    rows = bench_diffusion(models, [PROMPTS[0]], quick=True)
    by = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)
    scored = ["ar:greedy", "dlm:diffusion T=8", "dlm:diffusion T=2", "dlm:threshold 0.9"]
    for method in scored:
        for r in by[method]:
            assert r["gen_ppl"] > 1 and 0 < r["distinct2"] <= 1 and r["scored_tokens"] > 0
    assert [r["iterations"] for r in by["dlm:diffusion T=2"]] == [2, 2, 2, 2]   # 2 models x 2 prompt sets
    # both prompt sets, the suite's in the chat family, for the scorer's text and every masked LM's
    for method in scored:
        assert {r["prompt_set"] for r in by[method]} == {"bench", "suite"}
        assert {r["family"] for r in by[method] if r["prompt_set"] == "suite"} == {"multi_turn"}
    from engines.analysis.bench_diffusion import ITERATED
    assert all(f"dlm:{s} T={t}" in by for s in ITERATED for t in (8, 4, 2))
    assert len(by["dlm:masked top-1"]) == 2
    for r in by["dlm:masked top-1"]:
        assert all(0 <= r[k] <= 1 for k in ("top1_at_15pct", "top1_at_50pct", "commonest_at_15pct",
                                            "commonest_at_50pct"))
    [cache] = by["dlm:block 2 prefix cache vs off"]   # the toy adapter only: ModernBERT keeps no cache
    assert cache["fed_per_token_prefix"] < cache["fed_per_token_off"]
    assert cache["wall_ratio_prefix_vs_off"] > 0 and cache["run_wall_ratio_prefix_vs_off"] > 0


def test_mask_predict_defaults_to_the_diffusion_lm_where_it_is_installed(monkeypatch):
    from engines import methods
    monkeypatch.setattr(store, "available", lambda name: name != "smollm2-135m-diffusion")
    assert methods.method_default_target("mask-predict") == "tiny-masked"
    monkeypatch.setattr(store, "available", lambda name: True)
    assert methods.method_default_target("mask-predict") == "smollm2-135m-diffusion"
    assert methods.method_default_target("speculative") == methods.DEFAULT_TARGET


def test_a_checkpoint_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """A run killed while writing (the session ends, Ctrl-C) must leave the last checkpoint loadable."""
    from engines.training import checkpoint
    ckpt = tmp_path / "ckpt.pt"
    checkpoint.save({"step": 1}, ckpt)

    def killed_mid_write(state, path):
        Path(path).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"step": 2}, ckpt)
    monkeypatch.undo()
    assert torch.load(ckpt)["step"] == 1
    checkpoint.save({"step": 3}, ckpt)
    assert torch.load(ckpt)["step"] == 3 and lora.read_checkpoint(ckpt)["step"] == 3
