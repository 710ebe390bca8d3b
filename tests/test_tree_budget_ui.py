"""The tree budget box follows the drafter the person picks (auto for heads on the target) until they type into it."""
import gradio as gr
import pytest

from engines.decoding.tree import AUTO, TreeConfig
from engines.drafting import registry
from explorer import controls
from explorer.ui import build


def test_heads_come_from_the_registry_and_draw_trees():
    assert registry.heads() and set(registry.heads()) <= set(registry.names("tree"))
    assert {"hydra", "eagle"} <= set(registry.heads())                  # the drafters among them
    assert not {"model", "early-exit", "recycling", "retrieval"} & set(registry.heads())


@pytest.mark.parametrize("drafter", registry.names("tree"))
def test_a_head_starts_at_auto_and_any_other_drafter_at_the_fixed_default(drafter):
    expected = AUTO if drafter in registry.heads() else TreeConfig().tree_budget
    assert controls.tree_budget_default("tree", drafter) == expected


def test_an_unknown_drafter_is_one_sentence():
    with pytest.raises(ValueError, match="There is no drafter 'medusa2'"):
        controls.tree_budget_default("tree", "medusa2")


def test_a_typed_budget_is_never_replaced():
    assert controls.budget_for_drafter("tree", "hydra", typed=True) == gr.skip()
    assert controls.budget_for_drafter("tree", "hydra", typed=False).value == AUTO
    assert controls.budget_for_drafter("tree", "model", typed=False).value == TreeConfig().tree_budget


def by_elem_id(demo: gr.Blocks, elem_id: str):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def listeners(demo: gr.Blocks, component, event: str) -> list:
    return [f for f in demo.fns.values() if (component._id, event) in f.targets]


def test_the_page_wires_the_drafter_pick_to_the_budget_box_by_name():
    demo = build()
    drafter, budget = by_elem_id(demo, "opt-tree-drafter"), by_elem_id(demo, "opt-tree-tree_budget")
    assert budget.value == controls.tree_budget_default("tree", drafter.value)    # the page opens consistent
    assert not listeners(demo, drafter, "change") or all(budget not in f.outputs
                                                         for f in listeners(demo, drafter, "change"))
    [follow] = [f for f in listeners(demo, drafter, "input") if f.outputs == [budget]]   # the person's pick only
    named = dict(zip(follow.input_parameter_names, follow.inputs))
    assert named["drafter"] is drafter and isinstance(named["typed"], gr.State)
    [typing] = [f for f in listeners(demo, budget, "input") if f.outputs == [named["typed"]]]
    assert typing.fn() is True                                                   # typing sets the page's flag
    assert follow.fn(drafter="eagle", typed=False).value == AUTO
    assert follow.fn(drafter="recycling", typed=False).value == TreeConfig().tree_budget
    assert follow.fn(drafter="eagle", typed=typing.fn()) == gr.skip()


# ----------------------------------------------------------------------------- the settings note: never a stale run

def test_the_note_says_when_the_controls_no_longer_describe_the_run_on_screen():
    from explorer import handlers
    from explorer.session import Session, Sessions
    from tests.test_session import PANEL, tree_trace, values
    from tests.test_session import controls as by_hand
    c = by_hand()
    h = handlers.make_handlers(c, PANEL)
    asked = values(c, "tree", "Once upon a time", "tiny-target", drafter="hydra", tree_budget=0)
    sessions = Sessions()
    assert h["settings_note"](sessions, **asked) == ""                        # no run yet: nothing to say
    session = sessions.put("tree", Session.recorded(tree_trace(), c.wanted(asked)))
    assert h["settings_note"](sessions, **asked) == ""                        # the controls made this run
    note = h["settings_note"](sessions, **{**asked, "tree_drafter": "eagle", "tree_tree_budget": 64})
    assert "drafter and tree budget" in note and "next Step or Run to end starts a new run" in note
    session.running = True
    assert "keeps the settings it began with, to its end or Stop" in h["settings_note"](sessions, **{**asked, "tree_drafter": "eagle"})
    assert h["settings_note"](sessions, **{**asked, "tree_tree_budget": None}) == ""   # half typed: Step says why
    assert h["settings_note"](sessions, **{**asked, "method": "nonsense"}) == ""


def test_a_one_node_tree_is_one_node_in_the_words():
    import random

    from explorer.figures.tree import VIEW as TREE
    from tests import synthetic as syn
    step = syn.tree_step(random.Random(3), 0, shape="dynamic", budget=1, depth=1, topk=1, room=6, greedy=True)
    trace = syn.trace_of("tree", [step], syn.tree_config(shape="dynamic", budget=1, depth=1, topk=1, greedy=True,
                                                         max_new_tokens=64))
    assert len(step.detail["nodes"]) == 1 and "+ 1 node) under the tree mask" in TREE.words(trace, 0)


def test_the_note_follows_the_controls_and_a_run_press_clears_it_in_the_page():
    demo = build()
    note = by_elem_id(demo, "settings-note")
    drafter = by_elem_id(demo, "opt-tree-drafter")
    [follow] = [f for f in listeners(demo, drafter, "change") if f.outputs == [note]]
    assert "tree_drafter" in follow.input_parameter_names and "method" in follow.input_parameter_names
    for press in ("reset-btn", "step-go", "run-btn"):   # the page clears it; no call to the server
        [clear] = [f for f in listeners(demo, by_elem_id(demo, press), "click") if f.outputs == [note]]
        assert clear.fn is None and clear.js
