"""Draft heads on the target's own hidden states (Medusa / blockwise, Hydra, EAGLE-3) and the suffix-tree drafter:
exact under greedy, lossless under sampling, no extra target forward, refused by any other target."""
import dataclasses

import pytest
import torch

from engines.decoding.speculative import SpeculativeConfig, speculative
from engines.decoding.tree import TreeConfig, tree
from engines.drafting import heads as drafters
from engines.drafting.suffix import SuffixDrafter
from engines.methods import Run
from engines.models import heads as H
from engines.training import heads as train_heads
from tests.conftest import PROMPTS, greedy_reference

KINDS = ("heads", "hydra", "eagle")


@pytest.fixture(scope="module")
def head_dir(tiny_target, tmp_path_factory):
    """The shipped heads for tiny-target where they are in assets; randomly initialised ones for the kinds that
    are not (the exactness tests hold for any head, so they stay meaningful)."""
    import shutil
    shipped = drafters.HEADS_DIR
    kinds = ("medusa", "hydra", "eagle")
    if all((shipped / f"{tiny_target.name}-{k}" / H.HEAD_FILE).exists() for k in kinds):
        return shipped
    folder = tmp_path_factory.mktemp("heads")
    torch.manual_seed(0)
    for kind in kinds:
        if (shipped / f"{tiny_target.name}-{kind}" / H.HEAD_FILE).exists():
            shutil.copytree(shipped / f"{tiny_target.name}-{kind}", folder / f"{tiny_target.name}-{kind}")
            continue
        head = train_heads.new_head(kind, tiny_target, torch.arange(4096))
        for p in head.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.02)
        H.save(head, folder / f"{tiny_target.name}-{kind}")
    return folder


@pytest.fixture(autouse=True)
def heads_here(head_dir, monkeypatch):
    monkeypatch.setattr(drafters, "HEADS_DIR", head_dir)   # a test seam: where drafters look for heads


def decode(engine, target, ids, cfg, seed=0):
    steps = list(engine(target, None, ids, cfg, torch.Generator().manual_seed(seed)))
    return steps, [t for s in steps for t in s.committed_ids]


# ----------------------------------------------------------------------------- greedy equals generate

@pytest.mark.parametrize("drafter", KINDS)
@pytest.mark.parametrize("k, n", [(4, 24), (3, 13), (16, 9)])     # 13 and 9: the budget ends mid-draft
def test_chain_drafting_from_heads_equals_greedy_generate(drafter, k, n, tiny_target):
    ids = tiny_target.encode(PROMPTS[0])
    steps, out = decode(speculative, tiny_target, ids, SpeculativeConfig(k=k, drafter=drafter, max_new_tokens=n))
    assert out == greedy_reference(tiny_target, ids, n)
    assert steps[0].detail["draft_tokens"] == []          # nothing to read before the first verification
    assert all(s.target_forwards == 1 for s in steps)


@pytest.mark.parametrize("drafter", KINDS + ("suffix",))
@pytest.mark.parametrize("shape", ["dynamic", "sparse", "balanced"])
def test_tree_drafting_from_heads_and_suffix_equals_greedy_generate(drafter, shape, tiny_target):
    ids = tiny_target.encode(PROMPTS[1] + " " + PROMPTS[1])
    steps, out = decode(tree, tiny_target, ids, TreeConfig(drafter=drafter, tree=shape, max_new_tokens=20))
    assert out == greedy_reference(tiny_target, ids, 20)


@pytest.mark.parametrize("engine, cfg", [(speculative, SpeculativeConfig(k=4, drafter="eagle", max_new_tokens=12)),
                                         (tree, TreeConfig(drafter="heads", tree="chain", max_new_tokens=12))])
def test_stops_at_an_eos_inside_an_accepted_draft(engine, cfg, tiny_target):
    ids = tiny_target.encode(PROMPTS[3])
    ref = greedy_reference(tiny_target, ids, 12)
    eos = ref[5]
    as_eos = dataclasses.replace(tiny_target, eos_ids=frozenset({eos}))
    steps, out = decode(engine, as_eos, ids, cfg)
    assert out == ref[:ref.index(eos) + 1]
    assert steps[-1].final


def test_heads_read_the_verification_forward_and_cost_no_target_forward(tiny_target):
    """One call of the target model per step, counted by a forward hook on the model itself."""
    calls = []
    hook = tiny_target.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        for engine, cfg in ((speculative, SpeculativeConfig(k=4, drafter="eagle", max_new_tokens=16)),
                            (tree, TreeConfig(drafter="heads", max_new_tokens=16))):
            calls.clear()
            steps, _ = decode(engine, tiny_target, tiny_target.encode(PROMPTS[2]), cfg)
            assert len(calls) == len(steps)
            assert all(s.draft_forwards >= 1 for s in steps)   # head forwards, counted apart: reading is one
    finally:
        hook.remove()


# ----------------------------------------------------------------------------- what the heads record

def test_steps_record_which_head_drafted_and_what_it_could_draft(tiny_target):
    steps, _ = decode(speculative, tiny_target, tiny_target.encode(PROMPTS[0]),
                      SpeculativeConfig(k=3, drafter="eagle", max_new_tokens=10))
    d = steps[1].detail
    assert d["heads"]["kind"] == "eagle" and d["heads"]["trained_on"] == tiny_target.name
    assert len(d["heads"]["layers"]) == 3 and max(d["heads"]["layers"]) <= d["heads"]["target_layers"]
    assert len(d["heads"]["target_in_vocab"]) == len(d["draft_tokens"]) + 1
    head = drafters.load_head(tiny_target, "eagle")
    vocab = set(head.vocab.tolist())
    assert d["heads"]["target_in_vocab"] == [t in vocab for t in [p["target_token"] for p in d["positions"]]] + \
        [d["heads"]["target_in_vocab"][-1]]
    assert all(t in vocab for t in d["draft_tokens"])     # a head can only draft its own vocabulary


def test_a_head_refuses_a_target_it_was_not_trained_on(tiny_target, tiny_draft, head_dir):
    with pytest.raises(H.HeadMismatchError, match="trained on 'tiny-target'"):
        H.load(head_dir / f"{tiny_target.name}-eagle", tiny_draft.model, tiny_draft.device, tiny_draft.dtype)


def test_cached_heads_go_with_their_model_and_never_pass_to_a_later_one(tiny_target):
    """The head cache holds its model weakly: dropping the model (as the model cache's eviction does) frees the
    model and its cached heads, and a model loaded afterwards gets heads loaded for it, never the freed one's."""
    import copy
    import gc
    import weakref

    def fresh():   # a copy of tiny-target's weights outside the model cache, which would keep it alive
        return dataclasses.replace(tiny_target, model=copy.deepcopy(tiny_target.model))

    target = fresh()
    head = drafters.load_head(target, "eagle")
    assert drafters.load_head(target, "eagle") is head                 # cached for its model
    model, first = weakref.ref(target.model), weakref.ref(head)
    assert model() in drafters._loaded
    before = len(drafters._loaded)
    del target, head
    gc.collect()
    assert model() is None and first() is None                         # the cache kept neither alive
    assert len(drafters._loaded) == before - 1
    later = fresh()                   # may reuse the freed model's address: an id() key handed it the old heads
    assert later.model not in drafters._loaded
    drafters.load_head(later, "eagle")
    assert len(drafters._loaded[later.model]) == 1


def test_a_target_without_heads_is_told_which_targets_have_them(tiny_draft):
    with pytest.raises(ValueError, match="No eagle head was trained for 'tiny-draft'"):
        Run("speculative", "Once upon a time", {"drafter": "eagle"}, target="tiny-draft").step()


# ----------------------------------------------------------------------------- sampling stays lossless

def test_sampled_head_drafts_are_distributed_as_the_target(tiny_target):
    """Exact acceptance with the heads' one-hot q: the token emitted where the heads drafted (the second step's
    first token, given the first step's token) follows the target's own distribution."""
    ids = tiny_target.encode(PROMPTS[2])
    cfg = SpeculativeConfig(k=2, drafter="heads", max_new_tokens=3, temperature=1.0, top_k=4)
    firsts, seconds = [], []
    for seed in range(300):
        steps, _ = decode(speculative, tiny_target, ids, cfg, seed)
        firsts.append(steps[0].committed_ids[0])
        seconds.append(steps[1].committed_ids[0])
    common = max(set(firsts), key=firsts.count)
    drawn = torch.tensor([s for f, s in zip(firsts, seconds) if f == common])
    from engines.decoding.sampling import probabilities
    p = probabilities(tiny_target.forward(tiny_target.new_kv(), ids + [common])[-1], cfg.sampling)
    from tests.test_speculative import chi_square_p_value
    assert len(drawn) > 60 and chi_square_p_value(drawn, p) > 1e-3


# ----------------------------------------------------------------------------- suffix tree and training

def test_suffix_tree_matches_the_longest_suffix_and_scores_continuations_by_frequency():
    s = SuffixDrafter(depth=8)
    nodes = s.grow([1, 2, 3, 4, 1, 2, 3, 9, 1, 2], budget=4, depth=5)
    assert s.match == {"length": 2, "tokens": [1, 2], "occurrences": 3}    # [9, 1, 2] never continued
    assert [(n.path, n.token, n.q) for n in nodes] == [((0,), 3, 1.0), ((0, 0), 4, 0.5), ((0, 1), 9, 0.5),
                                                       ((0, 0, 0), 1, 1.0)]


def test_suffix_tree_grows_incrementally_as_a_rebuild_would():
    def counts(node):
        return {t: (c["count"], counts(c)) for t, c in node["next"].items()}
    text = [1, 2, 3, 1, 2, 4, 1, 2, 3, 3, 1]
    grown = SuffixDrafter(depth=5)
    grown.extend(text[:4])
    grown.extend(text)
    fresh = SuffixDrafter(depth=5)
    fresh.extend(text)
    assert counts(grown.root) == counts(fresh.root)


def test_a_few_training_steps_lower_the_head_losses(tiny_target):
    torch.manual_seed(0)
    ids = torch.tensor([tiny_target.encode(" ".join(PROMPTS * 3))[:64]])
    layers = (1, 2, 3)
    batch = train_heads.target_features(tiny_target, ids, layers)
    vocab = torch.unique(torch.cat([ids.flatten(), batch["top_ids"].flatten().long()]))
    embed, readout, index = train_heads.frozen_target_matrices(tiny_target, vocab)
    for kind in ("medusa", "hydra", "eagle"):
        head = train_heads.new_head(kind, tiny_target, vocab)
        if kind == "eagle":
            head = H.build(dataclasses.replace(head.spec, layers=layers)).train()
        opt = torch.optim.AdamW(head.parameters(), lr=3e-3)

        def loss(kind=kind, head=head):
            if kind == "medusa":
                return train_heads.medusa_loss(head, batch, readout, index)[0]
            if kind == "hydra":
                return train_heads.hydra_loss(head, batch, embed, readout, index)[0]
            return train_heads.eagle_loss(head, batch, embed, readout, index)[0]

        before = float(loss())
        for _ in range(15):
            opt.zero_grad()
            loss().backward()
            opt.step()
        assert float(loss()) < 0.8 * before


@pytest.mark.parametrize("engine, cfg", [
    (speculative, SpeculativeConfig(k=4, drafter="eagle", max_new_tokens=14)),
    (speculative, SpeculativeConfig(k=3, drafter="heads", max_new_tokens=14)),
    (tree, TreeConfig(drafter="eagle", tree_budget=24, tree_depth=6, tree_topk=4, max_new_tokens=14)),
    (tree, TreeConfig(drafter="heads", tree="sparse", max_new_tokens=14)),
    (speculative, SpeculativeConfig(k=4, drafter="hydra", max_new_tokens=14)),
    (tree, TreeConfig(drafter="hydra", tree_budget=24, tree_depth=4, tree_topk=4, max_new_tokens=14)),
    (tree, TreeConfig(drafter="suffix", max_new_tokens=14))], ids=["spec-eagle", "spec-heads", "tree-eagle",
                                                                    "tree-heads", "spec-hydra", "tree-hydra",
                                                                    "tree-suffix"])
def test_smollm2_with_its_own_heads_equals_greedy_generate(engine, cfg, smollm2):
    kind = {"heads": "medusa"}.get(cfg.drafter, cfg.drafter)
    if cfg.drafter != "suffix" and not (drafters.HEADS_DIR / f"smollm2-135m-instruct-{kind}" / H.HEAD_FILE).exists():
        pytest.skip(f"SmolLM2's {kind} heads are not in assets/models/heads")
    ids = smollm2.encode("User: Give me three tips for staying focused.\nAssistant:")
    steps, out = decode(engine, smollm2, ids, cfg)
    assert out == greedy_reference(smollm2, ids, 14)
    assert len(steps) < 14 or cfg.drafter == "suffix"    # the heads draft tokens the target keeps


# ----------------------------------------------------------------------------- Hydra: sequentially dependent

def test_hydra_nodes_of_one_level_get_their_own_guesses_and_medusa_nodes_share_one(tiny_target):
    """A Hydra head reads the tokens on its node's path, so two parents at the same depth get different
    distributions; a Medusa level is one head's distribution whatever the parent."""
    ids = tiny_target.encode(PROMPTS[1])
    steps, _ = decode(tree, tiny_target, ids, TreeConfig(drafter="hydra", tree="sparse", max_new_tokens=6))
    assert steps[1].detail["heads"]["kind"] == "hydra"
    hydra = drafters.head_drafter(tiny_target, "hydra")
    medusa = drafters.head_drafter(tiny_target, "heads")
    features = tiny_target.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][:, -1:]
    for d in (hydra, medusa):
        d.begin()
        d.observe(features, len(ids) - 1, ids + [5])
    from engines.decoding.trees import Node
    level = [Node((0,), 7, 0.5, 0.0), Node((1,), 11, 0.3, 0.0)]
    h, m = hydra.expand(list(level)), medusa.expand([Node(n.path, n.token, n.q, n.logq) for n in level])
    assert not torch.allclose(h[0], h[1]) and torch.equal(m[0], m[1])
    assert hydra.forwards == 2 and hydra.node_tokens[(1,)] == [5, 11]   # the pending token, then the draft
    other = drafters.head_drafter(tiny_target, "hydra")
    other.begin()
    other.observe(features, len(ids) - 1, ids + [9])                    # another pending token
    assert not torch.allclose(other.root(ids), hydra.root(ids))


def test_a_hydra_head_refuses_the_wrong_number_of_drafted_tokens(tiny_target):
    head = train_heads.new_head("hydra", tiny_target, torch.arange(64))
    d = head.spec.hidden
    assert head(2, torch.zeros(1, d), torch.zeros(1, 3, d)).shape == (1, d)
    with pytest.raises(ValueError, match="Hydra head 2 reads 3 drafted tokens, not 2"):
        head(2, torch.zeros(1, d), torch.zeros(1, 2, d))
