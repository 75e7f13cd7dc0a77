"""Plots a person reads without the code: the ANN in the legend, T labels that do not
overprint each other, short layer names, and a y-range that does not zoom onto noise."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from hypothesis import given, settings
from hypothesis import strategies as st

from ann2snn import report

percents = st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=20)


@given(percents)
def test_percent_range_holds_every_value_and_is_never_zoomed_onto_noise(values):
    low, high = report._percent_range(values)
    assert 0 <= low <= min(values) and max(values) <= high <= 100
    assert high - low >= 20  # a 0.07-point drift cannot fill the axis
    assert low % 10 == 0 and high % 10 == 0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 64), st.floats(0.01, 10), st.floats(0, 100)),
                min_size=1, max_size=40))  # fmt: skip
def test_t_labels_never_overprint_each_other(points):
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.set_xscale("log")
    ax.set_xlim(0.005, 20)
    ax.set_ylim(0, 100)
    report._label_points(ax, [(t, x, y, "k") for t, x, y in points])
    boxes = [ax.transData.transform(a.xy) for a in ax.texts]
    plt.close(fig)
    assert ax.texts and ax.texts[0].get_text().startswith("T=")
    for i, (x1, y1) in enumerate(boxes):
        for x2, y2 in boxes[i + 1 :]:
            assert abs(x1 - x2) >= 22 or abs(y1 - y2) >= 14


def test_ann_references_are_in_the_legend_with_their_value():
    rows = [
        {"label": "qcfs+if", "ann_accuracy": 0.8888},
        {"label": "qcfs+gn", "ann_accuracy": 0.8888},  # the same ANN: one line
        {"label": "casc", "ann_accuracy": 0.8793},
    ]
    fig, ax = plt.subplots()
    drawn = report._ann_lines(ax, rows, "accuracy")
    labels = [line.get_label() for line in ax.get_lines()]
    plt.close(fig)
    assert sorted(drawn) == [87.93, 88.88]
    assert labels == ["ANN of casc (87.93 %)", "ANN of qcfs+if (88.88 %)"]


def test_layer_labels_are_short_and_numbered_in_network_order():
    names = ["features.2.neuron", "layer1.0.act1", "classifier.2"]
    assert report._short_names(names) == ["1 features.2", "2 0.act1", "3 classifier.2"]


def test_written_plots_are_pngs(tmp_path):
    row = {
        "label": "qcfs+if",
        "ann_accuracy": 0.9,
        "accuracy_by_wake": {"1": 0.5, "2": 0.8, "4": 0.89},
        "energy_ratio_by_wake": {"1": 0.1, "2": 0.2, "4": 0.4},
        "layer_firing_rates": {"features.2": 0.1, "classifier.1": 0.2},
    }
    paths = {"plot": report.plot_accuracy([row], tmp_path / "a.png", title="t")}
    paths.update(report.plot_cost([row], tmp_path, title="t"))
    for path in paths.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
