"""Pure functions from recorded steps to Plotly figures and sentences, one module per method."""
from explorer.figures import (
    autoregressive,
    jacobi,
    lookahead,
    mask_predict,
    speculative,
    tree,
)
from explorer.figures.common import View

VIEWS: dict[str, View] = {   # in the methods table's order (engines/methods.py); tests/test_imports.py checks
    "autoregressive": autoregressive.VIEW,
    "speculative": speculative.VIEW,
    "tree": tree.VIEW,
    "jacobi": jacobi.VIEW,
    "lookahead": lookahead.VIEW,
    "mask-predict": mask_predict.VIEW,
}
