"""The host cards' plots: a flat run keeps only its ends, and the line drawn is the same.

Every original point must lie on the polyline that is drawn (flat runs are collinear, so
dropping their middle points changes nothing visible); gaps still break the line.
"""

import random
import re

from dashboard.templatetags.dashboard_tags import HEIGHT, WIDTH, sparkline


def polylines(svg: str) -> list[list[tuple[float, float]]]:
    return [
        [tuple(map(float, pair.split(","))) for pair in points.split()]  # type: ignore[misc]
        for points in re.findall(r'<polyline points="([^"]*)"/>', str(svg))
    ]


def y_on(lines: list[list[tuple[float, float]]], x: float) -> float | None:
    """The drawn line's y at x (linear between its points), None where nothing is drawn."""
    for line in lines:
        for (x0, y0), (x1, y1) in zip(line, line[1:], strict=False):
            if x0 - 1e-6 <= x <= x1 + 1e-6:
                return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def test_it_draws_an_idle_gpus_flat_line_with_two_points() -> None:
    lines = polylines(sparkline([0.0] * 150, "utilisation"))
    assert lines == [[(0.0, float(HEIGHT)), (float(WIDTH), float(HEIGHT))]]


def test_a_gap_breaks_the_line_and_a_lone_point_draws_nothing() -> None:
    lines = polylines(sparkline([10, 10, 10, None, 50, None, 70, 80], "x"))
    assert len(lines) == 2  # 10-10-10, then 70-80; the lone 50 has no segment
    assert lines[0][0][1] == lines[0][-1][1] == HEIGHT - HEIGHT * 0.1


def test_every_point_lies_on_the_line_drawn() -> None:
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
        lines = polylines(sparkline(values, "x"))
        step = WIDTH / max(count - 1, 1)
        for i, value in enumerate(values):
            neighbours = values[max(0, i - 1) : i + 2]
            if value is None or sum(v is not None for v in neighbours) < 2:
                continue  # a lone point between gaps is not drawn, as before
            expected = round(HEIGHT - HEIGHT * min(max(value, 0.0), 100.0) / 100.0, 1)
            drawn = y_on(lines, round(i * step, 1))
            assert drawn is not None and abs(drawn - expected) < 0.06, (values, i)
