"""The drafter's own figure under a step's main one, for the drafters that have one: the head drafters
(explorer/figures/heads.py), the early exit (early_exit.py) and, in tree decoding, Token Recycling's adjacency
table (recycling.py). Each reads its own record in the step's detail and returns None for any other step."""
from __future__ import annotations

import plotly.graph_objects as go

from engines.trace import Trace
from explorer.figures import early_exit, heads, recycling


def first(*figures) -> go.Figure | None:
    return next((f for f in figures if f is not None), None)


def for_speculative(trace: Trace, index: int, narrow: bool = False) -> go.Figure | None:
    return first(heads.for_speculative(trace, index, narrow), early_exit.drafter_figure(trace, index, narrow))


def for_tree(trace: Trace, index: int, narrow: bool = False) -> go.Figure | None:
    return first(heads.for_tree(trace, index, narrow), early_exit.drafter_figure(trace, index, narrow),
                 recycling.table_figure(trace, index, narrow))
