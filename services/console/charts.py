"""Charts the console draws on the server: inline SVG, no JavaScript, pure functions of what a service answered.

`temperature_chart(readings, max_celsius=..., min_celsius=..., zone=..., title=...)` is the one the case page
and the QA page use: a shipment's readings over time, its limit drawn as a line (and a fresh leg's minimum),
every reading outside them drawn as a distinct shape AND labelled in words (never colour alone), the time axis
in the site's zone (named). The limits are the shipment's own (`storage_limit_celsius`, `min_celsius` of COI
tracking's shipment view): the console draws them, it never decides them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from cgt_contracts.events import QuarantineReasonCode
from markupsafe import Markup, escape

from services.coi_tracking.domain import Problem, Reading, TemperaturePolicy, range_problems

WIDTH, HEIGHT = 720, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 28, 64
"""The plot's margins: room for the axes' labels and titles."""
TIME_TICKS = 5
TEMPERATURE_TICKS = 5
MINUS = "\u2212"
"""A typographic minus sign in the labels (read as "minus" by screen readers, unlike a hyphen)."""


@dataclass(frozen=True)
class Point:
    at: datetime
    celsius: float
    outside: str | None
    """"above" the limit, "below" the minimum, or None."""


def _instant(value: Any) -> datetime:
    at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _celsius(value: float) -> str:
    return f"{value:g} °C".replace("-", MINUS)


def _local(at: datetime, zone: ZoneInfo) -> str:
    here = at.astimezone(zone)
    return f"{here:%Y-%m-%d %H:%M} {here.tzname()}"


def points_of(
    readings: Iterable[Mapping[str, Any]], max_celsius: float, min_celsius: float | None
) -> list[Point]:
    """The readings (`at`, `celsius`, as `GET /shipments/{id}/readings` answers them), oldest first, each
    marked outside the shipment's given limits or not."""
    policy = TemperaturePolicy(max_celsius=max_celsius, min_celsius=min_celsius)
    found = []
    for reading in readings:
        celsius, at = float(reading["celsius"]), _instant(reading["at"])
        # COI tracking's own rule (I2), not a second copy: above the limit, or below a fresh leg's minimum
        codes = {p.code for p in range_problems(policy, Reading(at, celsius)) if isinstance(p, Problem)}
        outside = (
            "above"
            if QuarantineReasonCode.TEMPERATURE_EXCURSION in codes
            else "below"
            if QuarantineReasonCode.BELOW_MINIMUM_TEMPERATURE in codes
            else None
        )
        found.append(Point(at, celsius, outside))
    return sorted(found, key=lambda p: p.at)


def summary(points: list[Point], max_celsius: float, min_celsius: float | None, zone: ZoneInfo) -> str:
    """The chart's `<desc>` in words: how many readings, when, lowest and highest, the limits, excursions."""
    limits = f"limit {_celsius(max_celsius)}" + (
        f", minimum {_celsius(min_celsius)}" if min_celsius is not None else ""
    )
    if not points:
        return f"No temperature readings yet; {limits}."
    low = min(points, key=lambda p: p.celsius)
    high = max(points, key=lambda p: p.celsius)
    outside = [p for p in points if p.outside]
    text = (
        f"{len(points)} readings from {_local(points[0].at, zone)} to {_local(points[-1].at, zone)} "
        f"({zone.key}); lowest {_celsius(low.celsius)}, highest {_celsius(high.celsius)}; {limits}. "
    )
    if not outside:
        return text + "No excursions."
    first = outside[0]
    return text + (
        f"{len(outside)} excursion{'s' if len(outside) != 1 else ''}: the first "
        f"{_celsius(first.celsius)} at {_local(first.at, zone)} ({first.outside} the "
        f"{'limit' if first.outside == 'above' else 'minimum'})."
    )


@dataclass(frozen=True)
class _Scale:
    """Where the chart puts a reading: the plot's size, its time span and its temperature range."""

    points: list[Point]
    start: datetime
    end: datetime
    low: float
    high: float
    plot_w: int = WIDTH - LEFT - RIGHT
    plot_h: int = HEIGHT - TOP - BOTTOM

    def x(self, at: datetime) -> float:
        span = (self.end - self.start).total_seconds() or 1.0
        if len(self.points) > 1:
            return LEFT + (at - self.start).total_seconds() / span * self.plot_w
        return LEFT + self.plot_w / 2

    def y(self, celsius: float) -> float:
        return TOP + (self.high - celsius) / (self.high - self.low) * self.plot_h


def _scale(points: list[Point], max_celsius: float, min_celsius: float | None) -> _Scale:
    """The readings' and the limits' range, padded, and the readings' time span (now, if there are none)."""
    values = [p.celsius for p in points] + [max_celsius] + ([min_celsius] if min_celsius is not None else [])
    low, high = min(values), max(values)
    pad = max((high - low) * 0.1, 2.0)
    if points:
        start, end = points[0].at, points[-1].at
    else:
        start = end = datetime.now(UTC)
    return _Scale(points, start, end, low - pad, high + pad)


def _frame(scale: _Scale, chart_id: str, title: str, desc: str) -> list[str]:
    """The `<svg>` opening, its `<title>` and `<desc>`, and the plot's box."""
    title_id, desc_id = f"{chart_id}-title", f"{chart_id}-desc"
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="temperature-chart" id="{escape(chart_id)}" '
        f'role="img" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" '
        f'aria-labelledby="{escape(title_id)} {escape(desc_id)}">',
        f'<title id="{escape(title_id)}">{escape(title)}</title>',
        f'<desc id="{escape(desc_id)}">{escape(desc)}</desc>',
        f'<rect x="{LEFT}" y="{TOP}" width="{scale.plot_w}" height="{scale.plot_h}" fill="#ffffff" '
        f'stroke="#595959"/>',
    ]


def _temperature_axis(scale: _Scale) -> list[str]:
    """The temperature axis: ticks and their values, and its title."""
    parts = []
    low, high, plot_h = scale.low, scale.high, scale.plot_h
    for i in range(TEMPERATURE_TICKS + 1):
        value = low + (high - low) * i / TEMPERATURE_TICKS
        ty = scale.y(value)
        parts.append(f'<line x1="{LEFT - 4}" y1="{ty:.1f}" x2="{LEFT}" y2="{ty:.1f}" stroke="#595959"/>')
        parts.append(
            f'<text x="{LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end" font-size="11" fill="#222">'
            f"{escape(f'{value:.0f}'.replace('-', MINUS))}</text>"
        )
    parts.append(
        f'<text x="14" y="{TOP + plot_h / 2:.1f}" transform="rotate(-90 14 {TOP + plot_h / 2:.1f})" '
        f'text-anchor="middle" font-size="12" fill="#222">Temperature (°C)</text>'
    )
    return parts


def _time_axis(scale: _Scale, zone: ZoneInfo) -> list[str]:
    """The time axis, in the site's zone: ticks (one, for a single reading), and its title naming the zone."""
    parts = []
    points, start, end, plot_w, plot_h = scale.points, scale.start, scale.end, scale.plot_w, scale.plot_h
    if points:
        for i in range(TIME_TICKS + 1):
            at = start + (end - start) * i / TIME_TICKS
            tx = scale.x(at) if len(points) > 1 else LEFT + plot_w / 2
            here = at.astimezone(zone)
            parts.append(
                f'<line x1="{tx:.1f}" y1="{TOP + plot_h}" x2="{tx:.1f}" y2="{TOP + plot_h + 4}" stroke="#595959"/>'
            )
            parts.append(
                f'<text x="{tx:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle" font-size="10" fill="#222">'
                f"{here:%m-%d %H:%M}</text>"
            )
            if len(points) == 1:
                break
    parts.append(
        f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 22}" text-anchor="middle" font-size="12" '
        f'fill="#222" class="time-axis">Time ({escape(zone.key)}, '
        f"{escape(start.astimezone(zone).tzname() or '')})</text>"
    )
    return parts


def _limit_lines(scale: _Scale, max_celsius: float, min_celsius: float | None) -> list[str]:
    """The limits: dashed lines, each named in words at its end."""
    parts = []
    limits: list[tuple[float | None, str]] = [(max_celsius, "limit"), (min_celsius, "minimum")]
    for limit, name in limits:
        if limit is None:
            continue
        ly = scale.y(limit)
        parts.append(
            f'<line class="{name}" x1="{LEFT}" y1="{ly:.1f}" x2="{LEFT + scale.plot_w}" y2="{ly:.1f}" '
            f'stroke="#b00020" stroke-width="1.5" stroke-dasharray="6 4"/>'
        )
        parts.append(
            f'<text x="{LEFT + scale.plot_w - 4}" y="{ly - 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#8a0018">{name} {escape(_celsius(limit))}</text>'
        )
    return parts


def _excursion(scale: _Scale, p: Point, zone: ZoneInfo) -> list[str]:
    """A reading outside the limits: a triangle (pointing the way it went) and its value in words."""
    px, py = scale.x(p.at), scale.y(p.celsius)
    words = "above limit" if p.outside == "above" else "below minimum"
    tip = py - 7 if p.outside == "above" else py + 7
    base = py + 5 if p.outside == "above" else py - 5
    label_y = py - 10 if p.outside == "above" else py + 18
    return [
        f'<polygon class="excursion" points="{px:.1f},{tip:.1f} {px - 6:.1f},{base:.1f} '
        f'{px + 6:.1f},{base:.1f}" fill="#b00020" stroke="#000" stroke-width="0.8">'
        f"<title>{escape(_celsius(p.celsius))} at {escape(_local(p.at, zone))}: {words}</title></polygon>",
        f'<text class="excursion-label" x="{px + 8:.1f}" y="{label_y:.1f}" font-size="11" '
        f'font-weight="bold" fill="#8a0018">{escape(_celsius(p.celsius))} {words}</text>',
    ]


def _readings(scale: _Scale, zone: ZoneInfo) -> list[str]:
    """The readings: a line through them, a dot each; outside the limits a triangle with its words."""
    parts = []
    points = scale.points
    if len(points) > 1:
        path = " ".join(f"{scale.x(p.at):.1f},{scale.y(p.celsius):.1f}" for p in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#1f4e9a" stroke-width="1.5"/>')
    for p in points:
        if p.outside is None:
            px, py = scale.x(p.at), scale.y(p.celsius)
            parts.append(f'<circle class="reading" cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="#1f4e9a"/>')
        else:
            parts.extend(_excursion(scale, p, zone))
    return parts


def _legend(scale: _Scale) -> list[str]:
    """The legend, in words and shapes; and, with no readings, a word saying so in the plot."""
    ly = HEIGHT - 8
    parts = [
        f'<circle cx="{LEFT + 4}" cy="{ly - 4}" r="2.5" fill="#1f4e9a"/>'
        f'<text x="{LEFT + 12}" y="{ly}" font-size="11" fill="#222">reading</text>'
        f'<polygon points="{LEFT + 84},{ly - 10} {LEFT + 78},{ly} {LEFT + 90},{ly}" fill="#b00020" stroke="#000" '
        f'stroke-width="0.8"/><text x="{LEFT + 96}" y="{ly}" font-size="11" fill="#222">excursion</text>'
        f'<line x1="{LEFT + 170}" y1="{ly - 4}" x2="{LEFT + 196}" y2="{ly - 4}" stroke="#b00020" '
        f'stroke-width="1.5" stroke-dasharray="6 4"/>'
        f'<text x="{LEFT + 202}" y="{ly}" font-size="11" fill="#222">limit</text>'
    ]
    if not scale.points:
        parts.append(
            f'<text x="{LEFT + scale.plot_w / 2:.1f}" y="{TOP + scale.plot_h / 2:.1f}" text-anchor="middle" '
            f'font-size="13" fill="#222">No readings yet</text>'
        )
    return parts


def temperature_chart(
    readings: Iterable[Mapping[str, Any]],
    *,
    max_celsius: float,
    min_celsius: float | None = None,
    zone: ZoneInfo,
    title: str = "Temperature record",
    chart_id: str = "temperature-chart",
) -> Markup:
    """An accessible inline SVG of a shipment's temperatures.

    readings: what `GET /shipments/{id}/readings` answers (each a mapping with `at`, an ISO 8601 instant or
      a datetime, and `celsius`), in any order.
    max_celsius: the shipment's limit (`storage_limit_celsius`: -150 cryopreserved, 8 fresh), a line.
    min_celsius: the shipment's minimum, if it has one (`min_celsius`: 2 on a fresh leg), a second line.
    zone: the site's time zone; the time axis is labelled in it and names it.
    title: the `<title>` (and visible heading) of the chart; chart_id: unique per page (ids in the SVG).

    Returns safe markup: `<svg role="img" aria-labelledby=...>` with `<title>` and a `<desc>` summarising
    the readings, lowest and highest, and the excursions; each reading outside the limits is a triangle
    (not a dot) with its value and "above limit"/"below minimum" written beside it.
    """
    points = points_of(readings, max_celsius, min_celsius)
    scale = _scale(points, max_celsius, min_celsius)
    parts = [
        *_frame(scale, chart_id, title, summary(points, max_celsius, min_celsius, zone)),
        *_temperature_axis(scale),
        *_time_axis(scale, zone),
        *_limit_lines(scale, max_celsius, min_celsius),
        *_readings(scale, zone),
        *_legend(scale),
        "</svg>",
    ]
    return Markup("".join(parts))
