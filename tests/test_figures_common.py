"""The dict-built subplot grid lays axes out exactly where Plotly's make_subplots puts them."""
import pytest
from plotly.subplots import make_subplots

from explorer.figures.common import empty, figure, grid


@pytest.mark.parametrize("rows, cols, kwargs, theirs", [
    (2, 5, {"row_heights": [0.74, 0.26], "vspace": 0.2, "hspace": 0.04},
     {"row_heights": [0.74, 0.26], "vertical_spacing": 0.2, "horizontal_spacing": 0.04}),
    (1, 2, {"col_widths": [0.58, 0.42], "hspace": 0.12}, {"column_widths": [0.58, 0.42], "horizontal_spacing": 0.12}),
    (3, 2, {}, {}),
])
def test_grid_matches_make_subplots(rows, cols, kwargs, theirs):
    titles = [f"t{i}" for i in range(rows * cols)]
    ours = grid(rows, cols, titles=titles, **kwargs).layout
    ref = make_subplots(rows=rows, cols=cols, subplot_titles=titles, **theirs).layout
    for n in range(1, rows * cols + 1):
        suffix = n if n > 1 else ""
        for axis in (f"xaxis{suffix}", f"yaxis{suffix}"):
            assert ours[axis]["domain"] == pytest.approx(list(ref[axis].domain)), axis
            assert ours[axis]["anchor"] == ref[axis].anchor
    for a, b in zip(ours["annotations"], ref.annotations):
        assert (a["text"], a["x"], a["y"]) == (b.text, pytest.approx(b.x), pytest.approx(b.y))


def test_secondary_y_overlays_its_cell_like_make_subplots():
    g = grid(2, 1, row_heights=[0.5, 0.5], vspace=0.22, secondary_y=((2, 1),))
    ref = make_subplots(rows=2, cols=1, row_heights=[0.5, 0.5], vertical_spacing=0.22,
                        specs=[[{}], [{"secondary_y": True}]]).layout
    assert g.cell(2, 1, secondary_y=True) == {"xaxis": "x2", "yaxis": "y3"}
    assert g.yaxis(2, 1, secondary_y=True)["overlaying"] == ref.yaxis3.overlaying == "y2"
    assert g.layout["xaxis2"]["domain"] == pytest.approx(list(ref.xaxis2.domain))


def test_traces_land_in_their_cells_and_the_shared_look_applies():
    g = grid(1, 2, titles=["left", "right"])
    fig = figure([{"type": "bar", **g.cell(1, 2), "x": ["a"], "y": [1]}], g, "title", height=300,
                 annotations=[{"text": "note", "x": 0, "y": 0}])
    assert (fig.data[0].xaxis, fig.data[0].yaxis) == ("x2", "y2")
    assert fig.layout.height == 300 and fig.layout.title.text == "title" and fig.layout.uirevision == "keep"
    assert [a.text for a in fig.layout.annotations] == ["left", "right", "note"]
    assert empty("nothing yet").layout.annotations[0].text == "nothing yet"


@pytest.mark.parametrize("cols", range(1, 66))
def test_grid_domains_stay_inside_the_unit_interval(cols):
    """Summing floats put the 12th, 16th and 17th column's right edge at 1.0000000000000002 (issue 15)."""
    g = grid(2, cols, row_heights=[0.74, 0.26], vspace=0.2, hspace=min(0.04, 0.4 / cols),
             titles=[str(i) for i in range(cols)])
    for name, axis in g.layout.items():
        if name.startswith(("xaxis", "yaxis")):
            lo, hi = axis["domain"]
            assert 0.0 <= lo <= hi <= 1.0, (name, axis["domain"])
    assert g.xaxis(1, cols)["domain"][1] == 1.0
    figure([], g, "every column")   # Plotly's own validation


def test_spacing_too_wide_for_the_cells_still_leaves_each_cell_room():
    g = grid(1, 30, hspace=0.2)
    widths = [hi - lo for lo, hi in (a["domain"] for a in g.xaxes())]
    assert min(widths) > 0 and g.xaxis(1, 30)["domain"][1] == 1.0
