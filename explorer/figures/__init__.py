"""Pure functions from recorded steps to Plotly figures and sentences, one module per method."""
from explorer.figures import autoregressive
from explorer.figures import jacobi
from explorer.figures import lookahead
from explorer.figures import mask_predict
from explorer.figures import speculative
from explorer.figures import tree
from explorer.figures.common import View

VIEWS: dict[str, View] = {
    "autoregressive": autoregressive.VIEW,
    "jacobi": jacobi.VIEW,
    "lookahead": lookahead.VIEW,
    "speculative": speculative.VIEW,
    "mask-predict": mask_predict.VIEW,
    "tree": tree.VIEW,
}
