"""Token trees from rank paths: order, parents, depths, masks, positions, leaves, graphs (hand-checked)."""
import pytest
import torch

from engines.decoding import trees
from engines.decoding.trees import ROOT

# Medusa's example order, deliberately not breadth-first
PATHS = [(0,), (0, 0), (1,), (0, 1)]


def test_paths_are_put_in_breadth_first_order():
    assert trees.ordered(PATHS) == [(0,), (1,), (0, 0), (0, 1)]


def test_parents_depths_children_by_hand():
    paths = trees.ordered(PATHS)
    assert trees.parents(paths) == [ROOT, ROOT, 0, 0]
    assert trees.depths(paths) == [1, 1, 2, 2]
    assert trees.children(trees.parents(paths)) == {ROOT: [0, 1], 0: [2, 3], 1: [], 2: [], 3: []}


def test_attention_mask_by_hand():
    paths = trees.ordered(PATHS)        # nodes: 0=(0,) 1=(1,) 2=(0,0) 3=(0,1)
    expected = torch.tensor([[1, 0, 0, 0],
                             [0, 1, 0, 0],
                             [1, 0, 1, 0],
                             [1, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(trees.attend(paths), expected)


def test_mask_behind_pending_tokens_by_hand():
    mask = trees.behind(2, trees.attend([(0,), (1,), (0, 0)]))
    expected = torch.tensor([[1, 0, 0, 0, 0],    # pending token 1
                             [1, 1, 0, 0, 0],    # pending token 2 = the root
                             [1, 1, 1, 0, 0],    # (0,)
                             [1, 1, 0, 1, 0],    # (1,)
                             [1, 1, 1, 0, 1]],   # (0, 0)
                            dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_attend_across_levels_for_a_growing_draft():
    cached = [(0,), (1,)]
    level = [(0, 0), (1, 0), (1, 1)]
    expected = torch.tensor([[1, 0, 1, 0, 0],
                             [0, 1, 0, 1, 0],
                             [0, 1, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(trees.attend(level, cached + level), expected)


def test_positions_are_root_position_plus_depth():
    paths = trees.ordered(PATHS)
    assert trees.positions(paths, root_position=10) == [11, 11, 12, 12]


def test_leaf_paths_by_hand():
    paths = trees.ordered([(0,), (1,), (0, 0), (0, 1), (0, 0, 0)])
    assert trees.leaf_paths(trees.parents(paths)) == [[1], [0, 3], [0, 2, 4]]


def test_graph_is_the_tree_with_children_in_rank_order():
    g = trees.graph(trees.parents(trees.ordered(PATHS)))
    assert set(g.edges) == {(ROOT, 0), (ROOT, 1), (0, 2), (0, 3)}
    assert list(g.successors(0)) == [2, 3]
    assert g.in_degree(ROOT) == 0 and all(g.in_degree(n) == 1 for n in range(4))


@pytest.mark.parametrize("name, size, depth", [("chain", 4, 4), ("balanced", 14, 3), ("sparse", 17, 5)])
def test_shipped_shapes_are_valid_trees(name, size, depth):
    shape = trees.SHAPES[name]
    assert trees.ordered(shape) == list(shape)
    assert len(shape) == size and max(trees.depths(shape)) == depth
    mask = trees.attend(list(shape))
    assert torch.equal(mask.sum(1), torch.tensor(trees.depths(shape)))   # a node sees exactly its path


def test_a_balanced_tree_has_every_binary_path():
    assert set(trees.SHAPES["balanced"]) == {p for d in (1, 2, 3) for p in
                                             [tuple(int(b) for b in f"{i:0{d}b}") for i in range(2 ** d)]}


@pytest.mark.parametrize("paths, says", [
    ([(0,), (0, 0, 1)], "needs its parent"),
    ([(0,), (0,)], "only once"),
    ([(0,), (-1,)], "ranks"),
    ([()], "non-empty"),
])
def test_bad_paths_are_refused_in_one_sentence(paths, says):
    with pytest.raises(ValueError, match=says):
        trees.ordered(paths)
