"""Dashboard template helpers: inline SVG plots (no JavaScript, no build step) and ages."""

from datetime import datetime

from django import template
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

register = template.Library()

WIDTH, HEIGHT = 120, 24


@register.simple_tag
def sparkline(values: list[float | None], label: str, css_class: str = "") -> SafeString:
    """Plot percentages (0-100) oldest first; gaps (None) break the line.

    Drawn for every host card on every sampling tick, so it is kept cheap: a flat run
    (an idle GPU's line, most of the time) keeps only its two ends, which draws the
    same line with a fraction of the points.
    """
    step = WIDTH / max(len(values) - 1, 1)
    scale = HEIGHT / 100.0
    segments: list[list[str]] = [[]]
    run_y = ""  # the y of the flat run the last point belongs to
    run_end = -1  # the index of that run's newest point while it is not kept yet
    for i, value in enumerate(values):
        points = segments[-1]
        if value is None:
            if run_end >= 0:
                points.append(f"{run_end * step:.1f},{run_y}")
            if points:
                segments.append([])
            run_y, run_end = "", -1
            continue
        clamped = 0.0 if value < 0.0 else 100.0 if value > 100.0 else value
        y = f"{HEIGHT - clamped * scale:.1f}"
        if y == run_y:
            run_end = i
            continue
        if run_end >= 0:
            points.append(f"{run_end * step:.1f},{run_y}")
        points.append(f"{i * step:.1f},{y}")
        run_y, run_end = y, -1
    if run_end >= 0:
        segments[-1].append(f"{run_end * step:.1f},{run_y}")
    lines = "".join(
        f'<polyline points="{" ".join(points)}"/>' for points in segments if len(points) > 1
    )
    return format_html(
        '<svg class="sparkline {}" viewBox="0 0 {} {}" role="img" aria-label="{}">'
        "<title>{}</title>{}</svg>",
        css_class,
        WIDTH,
        HEIGHT,
        label,
        label,
        SafeString(lines),  # built only from formatted floats above
    )


@register.filter
def age(moment: datetime | None) -> str:
    """'4 s ago', '3 min ago': sample ages matter to the second."""
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
        from dashboard.roles import close_marker, open_marker, reaches

        if "viewer_level" in context:  # rendered for one person
            allowed = reaches(context["viewer_level"], self.needed)
            return self.nodelist.render(context) if allowed else ""
        # Rendered for every viewer (a push): each socket cuts it for its person.
        return open_marker(self.needed) + self.nodelist.render(context) + close_marker(self.needed)


@register.tag("needs")
def needs(parser: template.base.Parser, token: template.base.Token) -> NeedsNode:
    from dashboard.roles import GATED

    bits = token.split_contents()
    needed = bits[1].strip("\"'") if len(bits) == 2 else ""
    if needed not in GATED:
        raise template.TemplateSyntaxError(f'usage: {{% needs "{GATED[0]}"|"{GATED[1]}" %}}')
    nodelist = parser.parse(("endneeds",))
    parser.delete_first_token()
    return NeedsNode(needed, nodelist)
