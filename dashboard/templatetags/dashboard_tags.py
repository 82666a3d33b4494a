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
    """Plot percentages (0-100) oldest first; gaps (None) break the line."""
    count = len(values)
    segments: list[list[str]] = [[]]
    for i, value in enumerate(values):
        if value is None:
            if segments[-1]:
                segments.append([])
            continue
        x = WIDTH * i / max(count - 1, 1)
        y = HEIGHT - HEIGHT * min(max(value, 0.0), 100.0) / 100.0
        segments[-1].append(f"{x:.1f},{y:.1f}")
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
