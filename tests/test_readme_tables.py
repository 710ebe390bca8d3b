"""The README's drafter table lists every drafter the registry has, so a new drafter cannot land undocumented."""
import re
from pathlib import Path

from engines.drafting.registry import DRAFTERS

README = Path(__file__).resolve().parents[1] / "README.md"


def drafter_rows() -> set[str]:
    """The first cell of each row of the README's drafter table (the table whose header starts '| drafter |')."""
    text = README.read_text()
    table = text[text.index("| drafter | drafts from |"):]
    table = table[:table.index("\n\n")]
    return {m.group(1) for m in re.finditer(r"^\| `([\w-]+)", table, re.M)}


def test_every_registered_drafter_has_a_row_with_its_paper_and_no_row_names_a_missing_one():
    rows = drafter_rows()
    assert rows == set(DRAFTERS), (sorted(set(DRAFTERS) - rows), sorted(rows - set(DRAFTERS)))
