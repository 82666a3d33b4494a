"""Dashboard template helpers: inline SVG plots (no JavaScript, no build step) and ages."""

from datetime import datetime
from functools import lru_cache
from typing import NamedTuple

from django import template
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from dashboard.panels.history import WINDOW, GpuHistory
from dashboard.roles import GATED, close_marker, open_marker, reaches

register = template.Library()


class PlotSize(NamedTuple):
    """A plot's viewBox, the margins around its 0-100 % area (for the axis labels) and
    the labels' font size. Drawn about one unit to one CSS pixel (static/css/arbiter.css),
    so the labels read at that size."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    font: int


PLOT_SIZES = {
    "card": PlotSize(300, 120, 34, 8, 8, 18, 10),  # a host card's 5 minutes, two to a row
    "wide": PlotSize(960, 280, 40, 12, 10, 22, 12),  # the host's history page
}
# Minutes between the time gridlines: the first that leaves at most 15 of them.
TICK_STEPS_S = (60, 120, 300, 600, 900, 1800, 3600)


def polylines(
    xs: list[str], values: list[float | None], bottom: float, height: float
) -> tuple[list[str], tuple[str, str] | None]:
    """The `points` of each polyline for percentages (0-100) at `xs` (formatted), and the
    newest point drawn (for its marker); gaps (None) break the line.

    Drawn for every host card on every sampling tick, so it is kept cheap: a flat run
    (an idle GPU's line, most of the time) keeps only its two ends, which draws the
    same line with a fraction of the points.
    """
    scale = height / 100.0
    segments: list[list[str]] = [[]]
    run_y = ""  # the y of the flat run the last point belongs to
    run_end = -1  # the index of that run's newest point while it is not kept yet
    newest: tuple[str, str] | None = None
    for i, value in enumerate(values):
        points = segments[-1]
        if value is None:
            if run_end >= 0:
                points.append(f"{xs[run_end]},{run_y}")
            if points:
                segments.append([])
            run_y, run_end = "", -1
            newest = None
            continue
        clamped = 0.0 if value < 0.0 else 100.0 if value > 100.0 else value
        y = f"{bottom - clamped * scale:.1f}"
        newest = (xs[i], y)
        if y == run_y:
            run_end = i
            continue
        if run_end >= 0:
            points.append(f"{xs[run_end]},{run_y}")
        points.append(f"{xs[i]},{y}")
        run_y, run_end = y, -1
    if run_end >= 0:
        segments[-1].append(f"{xs[run_end]},{run_y}")
    return [" ".join(points) for points in segments if len(points) > 1], newest


def text_width(text: str, font: int) -> float:
    """About how wide a label is drawn (system-ui's digits are near 0.6 em)."""
    return 0.62 * font * len(text)


def span_text(span_s: float) -> str:
    minutes = span_s / 60
    return f"{minutes:g} minutes" if minutes < 120 else f"{minutes / 60:g} hours"


@lru_cache(maxsize=64)
def plot_frame(size: str, span_s: float, index: int) -> str:
    """The `<svg>` opening, its title, gridlines and axis labels: the same for every
    plot of one size, span and GPU, so drawn once."""
    label = f"GPU {index}"
    box = PLOT_SIZES[size]
    left, right = box.left, box.width - box.right
    top, bottom = box.top, box.height - box.bottom
    parts = [
        f'<svg class="plot plot-{size}" viewBox="0 0 {box.width} {box.height}" '
        f'width="{box.width}" height="{box.height}" font-size="{box.font}" role="img" '
        f'aria-label="{escape(label)}: utilisation and memory use, last {span_text(span_s)}">'
        f"<title>{escape(label)}: utilisation (blue) and memory use (purple), "
        f"last {span_text(span_s)}</title>"
    ]
    for pct in (0, 25, 50, 75, 100):
        y = bottom - (bottom - top) * pct / 100
        grid = "grid grid-major" if pct % 50 == 0 else "grid"
        parts.append(f'<line class="{grid}" x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        if pct % 50 == 0:
            parts.append(
                f'<text class="axis axis-y" x="{left - 4}" y="{y + 3.5:.1f}">{pct} %</text>'
            )
    step = next((s for s in TICK_STEPS_S if span_s / s <= 15), TICK_STEPS_S[-1])
    ticks = int(span_s // step)
    tick_width = (right - left) * step / span_s
    oldest = f"−{ticks * step // 60} min"
    for n in range(ticks + 1):
        x = right - tick_width * n
        parts.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}"/>')
        text = "now" if n == 0 else oldest if n == ticks else f"−{n * step // 60}"
        if (
            n == ticks - 1
            and n
            and text_width(oldest, box.font) + text_width(text, box.font) / 2 > tick_width - 4
        ):
            continue  # the oldest label, longer, would run into this one
        anchor = " axis-end" if n == 0 else " axis-start" if n == ticks and x <= left + 1 else ""
        parts.append(
            f'<text class="axis axis-x{anchor}" x="{x:.1f}" y="{box.height - 5}">{text}</text>'
        )
    return "".join(parts)


@register.simple_tag
def gpu_plot(
    history: GpuHistory | None, index: int, span_s: float | None = None, size: str = "card"
) -> SafeString:
    """GPU `index`'s utilisation and memory use (0-100 %) over the last `span_s` seconds
    (the card's five minutes unless given), on one time axis ("now" at the right edge),
    with gridlines and labelled axes."""
    span_s = float(span_s or WINDOW.total_seconds())
    parts = [plot_frame(size, span_s, int(index))]
    if history:
        box = PLOT_SIZES[size]
        left, right = box.left, box.width - box.right
        top, bottom = box.top, box.height - box.bottom
        per_s = (right - left) / span_s
        xs = [f"{max(left, right - per_s * age):.1f}" for age in history["ages_s"]]
        for values, short in ((history["utilization_pct"], "util"), (history["memory_pct"], "mem")):
            lines, last = polylines(xs, values, bottom, bottom - top)
            parts.append(f'<g class="series series-{short}">')
            parts.extend(f'<polyline points="{points}"/>' for points in lines)
            if last is not None:  # the newest reading, so a lone one shows too
                parts.append(f'<circle cx="{last[0]}" cy="{last[1]}" r="2.5"/>')
            parts.append("</g>")
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 -- numbers formatted here, label escaped


@register.filter
def pct(value: float | None) -> str:
    """A reading in percent, "63 %"; "n/a" when the GPU did not report it."""
    return "n/a" if value is None or value == "" else f"{value:.0f} %"


@register.filter
def age(moment: datetime | str | None) -> str:
    """'4 s ago', '3 min ago': sample ages matter to the second. Takes an ISO string too
    (times kept inside JSON fields, e.g. a host's memory_not_returned)."""
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return moment
    if moment is None:
        return "never"
    seconds = max(0, int((timezone.now() - moment).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


class NeedsNode(template.Node):
    """`{% needs "operator" %}…{% endneeds %}`: see dashboard/roles.py."""

    def __init__(self, needed: str, nodelist: template.NodeList) -> None:
        self.needed = needed
        self.nodelist = nodelist

    def render(self, context: template.Context) -> str:
        if "viewer_level" in context:  # rendered for one person
            allowed = reaches(context["viewer_level"], self.needed)
            return self.nodelist.render(context) if allowed else ""
        # Rendered for every viewer (a push): each socket cuts it for its person.
        return open_marker(self.needed) + self.nodelist.render(context) + close_marker(self.needed)


@register.tag("needs")
def needs(parser: template.base.Parser, token: template.base.Token) -> NeedsNode:
    bits = token.split_contents()
    needed = bits[1].strip("\"'") if len(bits) == 2 else ""
    if needed not in GATED:
        raise template.TemplateSyntaxError(f'usage: {{% needs "{GATED[0]}"|"{GATED[1]}" %}}')
    nodelist = parser.parse(("endneeds",))
    parser.delete_first_token()
    return NeedsNode(needed, nodelist)
