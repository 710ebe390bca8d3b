"""The one end-of-text rule: a method keeps tokens up to and including the first end-of-text token."""
from __future__ import annotations


def until_eos(ids: list[int], eos_ids: frozenset[int]) -> list[int]:
    """The ids up to and including the first end-of-text token."""
    for i, t in enumerate(ids):
        if t in eos_ids:
            return ids[:i + 1]
    return ids
