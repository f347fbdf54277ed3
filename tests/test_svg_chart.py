"""The server-drawn SVG charts: scales, bars counted, every label escaped."""

from __future__ import annotations

import re

import pytest

from service.svg_chart import Series, hbars, nice_ceiling, stacked_bars


@pytest.mark.parametrize(("value", "ceiling"), [(0, 1), (0.3, 0.5), (1, 1), (7, 10), (11, 20),
                                                (150, 200), (501, 1000), (4999, 5000)])
def test_the_scale_rounds_up_to_1_2_or_5(value: float, ceiling: float) -> None:
    assert nice_ceiling(value) == ceiling


def test_stacked_bars_draw_one_rect_per_nonzero_value_with_a_tooltip() -> None:
    svg = stacked_bars(label="deliveries", ticks=["10:00", "", "10:02"],
                       series=[Series("processed", [3, 0, 5]), Series("failed", [1, 0, 0])])
    assert 'data-bars="3"' in svg
    assert svg.count("<rect") == 3 + 2  # three bars, two legend keys
    assert "<title>10:00 failed: 1</title>" in svg
    assert "processed 8" in svg and "failed 1" in svg  # legend totals
    heights = [float(h) for h in re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" '
                                            r'height="([\d.]+)"', svg)]
    assert max(heights) == pytest.approx(152 * 5 / 5)  # the tallest stack reaches the top


def test_an_empty_chart_says_so() -> None:
    svg = stacked_bars(label="nothing", ticks=[""] * 4, series=[Series("processed", [0] * 4)])
    assert 'data-bars="0"' in svg


def test_labels_are_escaped() -> None:
    svg = stacked_bars(label='<script>"x"</script>', ticks=["<b>"],
                       series=[Series("<img src=x>", [1])], unit="&")
    bars = hbars(label="<x>", rows=[("<script>", 2)])
    for text in (svg, bars):
        assert "<script" not in text and "<img" not in text and "<b>" not in text
    assert "&lt;img src=x&gt;" in svg and "&amp;" in svg and "&lt;script&gt;" in bars
