"""The layout's promises, read from the code's own imports: no import circle among the project's modules, no
module much over 450 lines, and each package importing only what sits below it."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engines", "explorer")
MAX_LINES = 460


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every project module `path` imports, at any depth of the file (a function-level import is an import)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports mod; `from mod import name` imports mod
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def import_graph() -> nx.DiGraph:
    mods = modules()
    graph = nx.DiGraph()
    for name, path in mods.items():
        graph.add_node(name)
        for target in imports_of(path, set(mods)):
            # importing engines.models.store also runs engines.models/__init__: packages are not edges of a cycle
            if target != name and not name.startswith(target + "."):
                graph.add_edge(name, target)
    return graph


def test_no_import_circle():
    cycles = list(nx.simple_cycles(import_graph()))
    assert cycles == [], f"import circles: {cycles[:5]}"


def test_the_circle_test_finds_a_circle():
    graph = import_graph()
    graph.add_edge("engines.trace", "engines.methods")   # a lower module reaching up, as schema once did
    assert list(nx.simple_cycles(graph))


def test_no_module_over_the_line_budget():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


# From the bottom up. A module may import its own layer and the layers below, never one above; the most specific
# prefix names a module's layer (so the decoding rules sit below the drafters, the decoding engines above them).
LAYERS = [
    ["engines.trace"],
    ["engines.models"],
    ["engines.decoding", "engines.decoding.sampling", "engines.decoding.acceptance", "engines.decoding.trees",
     "engines.decoding.stop", "engines.decoding.verify_tree", "engines.config"],
    ["engines.drafting"],
    ["engines.decoding.autoregressive", "engines.decoding.speculative", "engines.decoding.tree",
     "engines.decoding.jacobi", "engines.decoding.lookahead", "engines.decoding.mask_predict",
     "engines.analysis.cost", "engines.analysis.theory", "engines.analysis.calibration"],
    ["engines.schema", "engines.methods"],
    ["engines.analysis", "engines.training"],
    ["engines.__main__", "explorer"],
]


def layer(name: str) -> int | None:
    matches = [(len(prefix), i) for i, group in enumerate(LAYERS) for prefix in group
               if name == prefix or name.startswith(prefix + ".")]
    return max(matches)[1] if matches else None


def test_packages_import_only_downwards():
    """models know no engine; engines know no drafter module by name (they ask the registry); analysis and
    training sit above the engines; nothing in engines imports the explorer."""
    upward = [(a, b) for a, b in import_graph().edges
              if layer(a) is not None and layer(b) is not None and layer(b) > layer(a)]
    assert upward == []


def test_every_method_of_the_table_has_a_view_and_a_record():
    """The methods table is the one list of methods: the explorer draws each, the schema types each."""
    from engines.methods import METHODS
    from engines.schema import step_records
    from explorer.figures import VIEWS
    assert list(VIEWS) == list(METHODS) and list(step_records()) == list(METHODS)
