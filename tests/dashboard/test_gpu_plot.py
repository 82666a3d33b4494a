"""The GPU plots: large enough to read, both series on one labelled 0-100 % scale and
one time axis, the newest readings shown, and cheap to draw.

Every original point must lie on the polyline that is drawn (flat runs are collinear, so
dropping their middle points changes nothing visible); gaps still break the line.
"""

import random
import re

from django.template.loader import render_to_string

from dashboard.panels.history import GpuHistory
from dashboard.templatetags.dashboard_tags import PLOT_SIZES, gpu_plot, polylines

FIGURE = "dashboard/partials/gpu_plot.html"
CARD = PLOT_SIZES["card"]
LEFT, RIGHT = CARD.left, CARD.width - CARD.right
TOP, BOTTOM = CARD.top, CARD.height - CARD.bottom


def lines_of(svg: str, series: str) -> list[list[tuple[float, float]]]:
    group = re.search(rf'<g class="series series-{series}">(.*?)</g>', str(svg))
    assert group, svg
    return [
        [tuple(map(float, pair.split(","))) for pair in points.split()]  # type: ignore[misc]
        for points in re.findall(r'<polyline points="([^"]*)"/>', group.group(1))
    ]


def y_on(lines: list[list[tuple[float, float]]], x: float) -> float | None:
    """The drawn line's y at x (linear between its points), None where nothing is drawn."""
    for line in lines:
        for (x0, y0), (x1, y1) in zip(line, line[1:], strict=False):
            if x0 - 1e-6 <= x <= x1 + 1e-6:
                return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def history(
    util: list[float | None], mem: list[float | None] | None = None, step: float = 2.0
) -> GpuHistory:
    """Readings `step` seconds apart, the newest now."""
    count = len(util)
    return GpuHistory(
        ages_s=[step * (count - 1 - i) for i in range(count)],
        utilization_pct=util,
        memory_pct=mem if mem is not None else [None] * count,
    )


def test_it_draws_a_card_plot_large_enough_to_read():
    svg = str(gpu_plot(history([10.0, 20.0]), 0))
    assert f'viewBox="0 0 {CARD.width} {CARD.height}"' in svg
    assert f'width="{CARD.width}" height="{CARD.height}"' in svg
    assert CARD.width >= 240 and CARD.height - CARD.top - CARD.bottom >= 80  # was 120 x 24
    wide = PLOT_SIZES["wide"]
    assert f'viewBox="0 0 {wide.width} {wide.height}"' in str(gpu_plot(None, 0, 900, "wide"))


def test_it_labels_the_percent_scale_and_the_time_axis():
    svg = str(gpu_plot(history([50.0, 50.0]), 3))
    y_labels = re.findall(r'<text class="axis axis-y"[^>]*>([^<]*)</text>', svg)
    assert y_labels == ["0 %", "50 %", "100 %"]
    x_labels = re.findall(r'<text class="axis axis-x[^"]*"[^>]*>([^<]*)</text>', svg)
    assert x_labels == ["now", "−1", "−2", "−3", "−4", "−5 min"]
    assert "<title>GPU 3: utilisation (blue) and memory use (purple), last 5 minutes</title>" in svg
    assert 'aria-label="GPU 3: utilisation and memory use, last 5 minutes"' in svg
    long = str(gpu_plot(history([1.0]), 0, 3600, "wide"))
    x_labels = re.findall(r'<text class="axis axis-x[^"]*"[^>]*>([^<]*)</text>', long)
    assert x_labels[0] == "now" and x_labels[-1] == "−60 min" and len(x_labels) == 13
    # 15 minutes wide: the label next to the longer "−15 min" would run into it.
    wide = str(gpu_plot(history([1.0]), 0, 900, "wide"))
    x_labels = re.findall(r'<text class="axis axis-x[^"]*"[^>]*>([^<]*)</text>', wide)
    # 16 minute lines (the gridline stays where its label went) and the 25 % and 75 % lines.
    assert x_labels[-3:] == ["−12", "−13", "−15 min"] and wide.count('class="grid"') == 16 + 2
    assert 'font-size="12"' in wide and 'font-size="10"' in svg


def test_it_draws_both_series_apart_at_their_values():
    svg = str(gpu_plot(history([0.0, 100.0], [50.0, 50.0]), 0))
    (util,) = lines_of(svg, "util")
    (mem,) = lines_of(svg, "mem")
    assert util == [(round(RIGHT - (RIGHT - LEFT) * 2 / 300, 1), BOTTOM), (RIGHT, TOP)]
    middle = (TOP + BOTTOM) / 2
    assert [y for _, y in mem] == [middle, middle]
    # The newest reading of each series is marked at the right edge ("now").
    markers = re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', svg)
    assert markers == [(f"{RIGHT:.1f}", f"{TOP:.1f}"), (f"{RIGHT:.1f}", f"{middle:.1f}")]


def test_it_places_points_by_time_so_a_short_history_sits_at_the_right():
    one_minute = GpuHistory(ages_s=[60.0, 0.0], utilization_pct=[10.0, 10.0], memory_pct=[])
    ((first, _), (last, _)) = lines_of(str(gpu_plot(one_minute, 0)), "util")[0]
    assert last == RIGHT
    assert abs(first - (RIGHT - (RIGHT - LEFT) / 5)) < 0.06


def test_it_draws_an_idle_gpus_flat_line_with_two_points():
    lines, last = polylines([f"{x}.0" for x in range(150)], [0.0] * 150, 100.0, 100.0)
    assert lines == ["0.0,100.0 149.0,100.0"]
    assert last == ("149.0", "100.0")


def test_it_breaks_the_line_at_a_gap_and_draws_nothing_for_a_lone_point():
    values = [10, 10, 10, None, 50, None, 70, 80]
    lines, _ = polylines([f"{x}.0" for x in range(len(values))], values, 100.0, 100.0)
    assert lines == ["0.0,90.0 2.0,90.0", "6.0,30.0 7.0,20.0"]  # the lone 50 has no segment
    _, last = polylines(["0.0", "1.0"], [30.0, None], 100.0, 100.0)
    assert last is None  # the GPU stopped reporting: no marker at an old reading


def test_it_draws_a_line_that_every_point_lies_on():
    rng = random.Random(7)
    for _ in range(200):
        count = rng.randint(2, 160)
        values: list[float | None] = []
        for _ in range(count):
            roll = rng.random()
            if roll < 0.05:
                values.append(None)
            elif roll < 0.6 and values and values[-1] is not None:
                values.append(values[-1])  # flat runs, as an idle or steady GPU gives
            else:
                values.append(rng.uniform(-5, 105))
        lines = lines_of(str(gpu_plot(history(values, step=1.8), 0)), "util")
        for i, value in enumerate(values):
            neighbours = values[max(0, i - 1) : i + 2]
            if value is None or sum(v is not None for v in neighbours) < 2:
                continue  # a lone point between gaps is not drawn
            height = BOTTOM - TOP
            expected = round(BOTTOM - height * min(max(value, 0.0), 100.0) / 100.0, 1)
            x = RIGHT - (RIGHT - LEFT) * 1.8 * (count - 1 - i) / 300
            drawn = y_on(lines, round(x, 1))
            assert drawn is not None and abs(drawn - expected) < 0.06, (values, i)


def test_it_names_each_series_and_its_current_reading_in_the_figure():
    gpu = {
        "index": 1,
        "name": "H100",
        "utilization_pct": 63.4,
        "memory_pct": 41.6,
        "history": history([12.0, 63.4], [40.0, 41.6]),
    }
    html = render_to_string(FIGURE, {"host": {"name": "h"}, "gpu": gpu})
    assert 'id="plot-h-1"' in html and "GPU 1" in html
    assert re.search(r'class="key key-util">utilisation <b class="now-util">63 %</b>', html)
    assert re.search(r'class="key key-mem">memory <b class="now-mem">42 %</b>', html)
    empty = {"index": 0, "history": history([None], [None])}
    html = render_to_string(FIGURE, {"host": {"name": "h"}, "gpu": empty})
    assert html.count(">n/a</b>") == 2
