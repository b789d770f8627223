"""``labkit.ui.charts.LiveFigure`` builds on private parts of plotly's ``FigureWidget`` (see its docstring for why).
pyproject.toml pins plotly to the release series these were read from; this test fails loudly, naming what moved,
when a plotly release changes any of them, so that raising the bound is a deliberate step."""

from __future__ import annotations

import inspect

import plotly
import plotly.graph_objects as go
import pytest

from labkit.ui.charts import LiveFigure

#: Private methods LiveFigure overrides or calls, with the parameters it relies on.
METHODS = {
    "_send_restyle_msg": ["restyle_data", "trace_indexes", "source_view_id"],
    "_send_addTraces_msg": ["new_traces_data"],
    "_send_deleteTraces_msg": ["delete_inds"],
    "_send_update_msg": ["restyle_data", "relayout_data", "trace_indexes", "source_view_id"],
    "_handler_js2py_traceDeltas": ["change"],
    "_handler_js2py_layoutDelta": ["change"],
    "_normalize_trace_indexes": ["trace_indexes"],
    "_perform_plotly_restyle": ["restyle_data", "trace_indexes"],
    "_perform_plotly_relayout": ["relayout_data"],
}
#: Synced traits it reads, writes or redefines.
TRAITS = ["_widget_data", "_widget_layout", "_py2js_restyle", "_py2js_addTraces", "_py2js_deleteTraces",
          "_py2js_update", "_js2py_traceDeltas", "_js2py_layoutDelta", "_last_trace_edit_id",
          "_last_layout_edit_id"]
#: Plain attributes it reads or sets on a live figure.
ATTRIBUTES = ["_data", "_layout_obj", "_trace_edit_in_process", "_layout_edit_in_process"]


def test_plotly_is_in_the_pinned_series():
    major_minor = tuple(int(p) for p in plotly.__version__.split(".")[:2])
    assert major_minor == (7, 1), f"plotly {plotly.__version__}: LiveFigure was checked against 7.1 only"


@pytest.mark.parametrize("name", METHODS)
def test_private_methods_are_there_with_the_same_parameters(name):
    method = getattr(go.FigureWidget, name, None)
    assert method is not None, f"plotly {plotly.__version__} has no FigureWidget.{name}: LiveFigure must be updated"
    if hasattr(method, "func"):  # an @observe handler: check the function and the trait it observes
        assert name.replace("_handler", "") in method.trait_names, f"FigureWidget.{name} observes {method.trait_names}"
        method = method.func
    params = [p for p in inspect.signature(method).parameters if p != "self"]
    assert params[: len(METHODS[name])] == METHODS[name], f"FigureWidget.{name}{inspect.signature(method)} changed"


def test_private_traits_and_attributes_are_there():
    fig = go.FigureWidget(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])))
    missing = [t for t in TRAITS if not fig.has_trait(t)] + [a for a in ATTRIBUTES if not hasattr(fig, a)]
    assert not missing, f"plotly {plotly.__version__}: FigureWidget lacks {missing}; LiveFigure must be updated"
    assert fig.trait_metadata("_js2py_traceDeltas", "sync") and fig.trait_metadata("_py2js_update", "sync")


def test_the_overrides_still_round_trip_an_update():
    """End to end on the private path: a restyle through LiveFigure lands in the data a reloaded view gets."""
    fig = LiveFigure(go.Figure(go.Scatter(x=[1, 2], y=[3, 4])))
    fig.restyle({"y": [[5, 6]]}, [0], {"xaxis.type": "linear"})
    assert list(fig.data[0].y) == [5, 6] and fig._py2js_update["style_data"]["y"] == [[5, 6]]
    state = fig.get_state()
    assert state["_py2js_update"] is None  # never replayed to a late view
    assert fig.layout.xaxis.type == "linear"
