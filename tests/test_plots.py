"""The lab figures' point plot: labels stay readable whether or not rows share an x value."""

from __future__ import annotations

import pytest

import nondeep.plots as plots


@pytest.fixture
def drawn(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    return figures


ROWS = [{"model": "snn labels", "params": 2284010, "test_accuracy": 90.6, "ci95": 0.3},
        {"model": "snn mimic", "params": 2284010, "test_accuracy": 90.7, "ci95": None},
        {"model": "cnn labels", "params": 8360000, "test_accuracy": 91.0, "ci95": 0.5}]


def test_rows_sharing_an_x_value_get_a_column_each_named_on_the_axis(drawn, tmp_path):
    plots.plot_errorbars(ROWS, x="params", y="test_accuracy", yerr="ci95", path=tmp_path / "p.png", logx=True)
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["snn labels\nparams 2,284,010",
                                                            "snn mimic\nparams 2,284,010", "cnn labels\nparams 8,360,000"]
    assert ax.get_xscale() == "linear" and not ax.texts  # no labels printed over each other
    points = [line.get_xydata()[0].tolist() for line in ax.lines if line.get_marker() == "o"]
    assert points == [[0, 90.6], [1, 90.7], [2, 91.0]]


def test_rows_at_distinct_x_values_are_placed_by_x_and_labelled_beside_their_points(drawn, tmp_path):
    rows = [ROWS[0], ROWS[2]]
    plots.plot_errorbars(rows, x="params", y="test_accuracy", yerr="ci95", path=tmp_path / "p.png", logx=True)
    ax = drawn[0].axes[0]
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.texts] == ["snn labels", "cnn labels"]
    assert [line.get_xydata()[0].tolist() for line in ax.lines if line.get_marker() == "o"] == [
        [2284010, 90.6], [8360000, 91.0]]
