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

VIEWS: dict[str, View] = {
    "autoregressive": autoregressive.VIEW,
    "jacobi": jacobi.VIEW,
    "lookahead": lookahead.VIEW,
    "speculative": speculative.VIEW,
    "mask-predict": mask_predict.VIEW,
    "tree": tree.VIEW,
}
