"""Server-rendered SVG charts for the pages: a line chart over time and a bar chart.

The pages draw their charts here rather than with a JavaScript library: the SVG arrives with
the page (nothing to load from anywhere, no script to run), prints, and is read by a screen
reader through its ``<title>`` and ``<desc>``. Colours are presentation attributes, so a page
that links no chart CSS still shows them, and a page's CSS can restyle them through the
``chart-*`` classes. Every text that reaches the SVG is escaped.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from markupsafe import Markup, escape

Point = tuple[datetime, float, bool]
"""One measurement: when, the value, and whether it is flagged (abnormal)."""

Bar = tuple[str, float]
"""One bar: its label and its value."""

_ids = itertools.count(1)

LINE_COLOUR = "#1f5f8b"
FLAG_COLOUR = "#b3261e"
BAND_COLOUR = "#e3f1e6"
BAR_COLOUR = "#3b7ea1"
AXIS_COLOUR = "#8a949c"
GRID_COLOUR = "#e4e8eb"
TEXT_COLOUR = "#4a545c"
FONT = "font-family='system-ui, sans-serif' font-size='11'"


@dataclass(frozen=True)
class _Frame:
    """The plotting area inside the SVG (margins leave room for the axis labels)."""

    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering ``[low, high]``."""
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0, 1.0]
    if high < low:
        low, high = high, low
    if high == low:
        spread = abs(high) * 0.1 or 1.0
        low, high = low - spread, high + spread
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step + 1e-9) * step
    ticks = []
    value = first
    while True:
        ticks.append(round(value, 10))
        if value >= high - step * 1e-9:
            break
        value += step
    return ticks


def format_number(value: float) -> str:
    """A number as short as it can be written (no trailing zeros, thousands unseparated)."""
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    if abs(value) >= 1:
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"


def _time_ticks(start: datetime, end: datetime, count: int = 5) -> list[datetime]:
    if end <= start:
        return [start]
    span = end - start
    return [start + span * i / (count - 1) for i in range(count)]


def _time_label(moment: datetime, span: timedelta) -> str:
    if span >= timedelta(days=2 * 365):
        return moment.strftime("%Y-%m")
    if span >= timedelta(days=2):
        return moment.strftime("%Y-%m-%d")
    return moment.strftime("%m-%d %H:%M")


def _svg_open(width: int, height: int, title: str, desc: str, css_class: str) -> tuple[str, str]:
    """The ``<svg>`` start tag with its title and description; and the chart's id."""
    chart_id = f"chart{next(_ids)}"
    head = (
        f"<svg class='chart {css_class}' xmlns='http://www.w3.org/2000/svg' "
        f"viewBox='0 0 {width} {height}' width='{width}' height='{height}' role='img' "
        f"aria-labelledby='{chart_id}-title {chart_id}-desc' "
        f"preserveAspectRatio='xMidYMid meet'>"
        f"<title id='{chart_id}-title'>{escape(title)}</title>"
        f"<desc id='{chart_id}-desc'>{escape(desc)}</desc>"
    )
    return head, chart_id


def _empty(width: int, height: int, title: str, message: str, css_class: str) -> Markup:
    head, _ = _svg_open(width, height, title, message, css_class)
    return Markup(
        head + f"<text class='chart-empty' x='{width / 2}' y='{height / 2}' text-anchor='middle' "
        f"fill='{TEXT_COLOUR}' {FONT}>{escape(message)}</text></svg>"
    )


def line_chart(
    points: Sequence[Point],
    *,
    low: float | None = None,
    high: float | None = None,
    unit: str = "",
    width: int = 640,
    height: int = 220,
    title: str = "",
    desc: str | None = None,
    y_min: float | None = None,
    y_max: float | None = None,
    empty_text: str = "无数据 / No data",
) -> Markup:
    """A line over time with its points, flagged points in red, and the reference band.

    ``points`` are (time, value, flagged), in any order (drawn by time). ``low``/``high``
    draw the reference band (either may be missing: the band runs to the chart's edge).
    ``y_min``/``y_max`` fix the value axis (e.g. 0–100 for a rate). ``desc`` is the text a
    screen reader gives; by default a summary of the points (count, range, flagged count).
    Each point carries its own ``<title>`` (date, value, unit), shown on hover.
    """
    data = sorted(
        ((when, float(value), bool(flag)) for when, value, flag in points if math.isfinite(value)),
        key=lambda point: point[0],
    )
    if not data:
        return _empty(width, height, title, empty_text, "chart-line-chart")
    values = [value for _, value, _ in data]
    extent = values + [v for v in (low, high) if v is not None]
    domain = nice_ticks(
        min(extent) if y_min is None else y_min,
        max(extent) if y_max is None else y_max,
    )
    v_lo, v_hi = domain[0], domain[-1]
    if v_hi == v_lo:
        v_hi = v_lo + 1
    frame = _Frame(56, 22, width - 14, height - 28)
    start, end = data[0][0], data[-1][0]
    span = end - start
    pad = span * 0.03 if span else timedelta(hours=12)
    t_lo, t_hi = start - pad, end + pad
    t_span = (t_hi - t_lo).total_seconds()

    def x_of(moment: datetime) -> float:
        return frame.left + frame.width * (moment - t_lo).total_seconds() / t_span

    def y_of(value: float) -> float:
        return frame.bottom - frame.height * (value - v_lo) / (v_hi - v_lo)

    parts: list[str] = []
    summary = desc
    if summary is None:
        flagged = sum(1 for *_, flag in data if flag)
        summary = (
            f"{len(data)} points, {start:%Y-%m-%d} – {end:%Y-%m-%d}; "
            f"min {format_number(min(values))} max {format_number(max(values))} {unit}; "
            f"latest {format_number(values[-1])} {unit}; {flagged} flagged"
        )
        if low is not None or high is not None:
            summary += (
                f"; reference {'' if low is None else format_number(low)}–"
                f"{'' if high is None else format_number(high)} {unit}"
            )
    head, _ = _svg_open(width, height, title, summary, "chart-line-chart")
    parts.append(head)
    if low is not None or high is not None:
        band_top = y_of(min(high, v_hi)) if high is not None else frame.top
        band_bottom = y_of(max(low, v_lo)) if low is not None else frame.bottom
        if band_bottom > band_top:
            parts.append(
                f"<rect class='chart-band' x='{frame.left:.1f}' y='{band_top:.1f}' "
                f"width='{frame.width:.1f}' height='{band_bottom - band_top:.1f}' "
                f"fill='{BAND_COLOUR}'><title>"
                f"{escape(_range_text(low, high, unit))}</title></rect>"
            )
    for tick in domain:
        y = y_of(tick)
        parts.append(
            f"<line class='chart-grid' x1='{frame.left:.1f}' x2='{frame.right:.1f}' "
            f"y1='{y:.1f}' y2='{y:.1f}' stroke='{GRID_COLOUR}'/>"
            f"<text class='chart-label' x='{frame.left - 6:.1f}' y='{y + 4:.1f}' "
            f"text-anchor='end' fill='{TEXT_COLOUR}' {FONT}>{escape(format_number(tick))}</text>"
        )
    if unit:
        parts.append(
            f"<text class='chart-unit' x='4' y='12' fill='{TEXT_COLOUR}' "
            f"{FONT}>{escape(unit)}</text>"
        )
    ticks = _time_ticks(start, end) if span else [start]
    for index, moment in enumerate(ticks):
        x = x_of(moment)
        anchor = "middle"
        if len(ticks) > 1 and index == 0:
            anchor = "start"
        elif len(ticks) > 1 and index == len(ticks) - 1:
            anchor = "end"
        parts.append(
            f"<line class='chart-tick' x1='{x:.1f}' x2='{x:.1f}' y1='{frame.bottom:.1f}' "
            f"y2='{frame.bottom + 4:.1f}' stroke='{AXIS_COLOUR}'/>"
            f"<text class='chart-label' x='{x:.1f}' y='{frame.bottom + 17:.1f}' "
            f"text-anchor='{anchor}' fill='{TEXT_COLOUR}' {FONT}>"
            f"{escape(_time_label(moment, span))}</text>"
        )
    parts.append(
        f"<line class='chart-axis' x1='{frame.left:.1f}' x2='{frame.right:.1f}' "
        f"y1='{frame.bottom:.1f}' y2='{frame.bottom:.1f}' stroke='{AXIS_COLOUR}'/>"
    )
    coords = " ".join(f"{x_of(when):.1f},{y_of(value):.1f}" for when, value, _ in data)
    if len(data) > 1:
        parts.append(
            f"<polyline class='chart-line' points='{coords}' fill='none' "
            f"stroke='{LINE_COLOUR}' stroke-width='2' stroke-linejoin='round'/>"
        )
    for when, value, flag in data:
        colour = FLAG_COLOUR if flag else LINE_COLOUR
        label = f"{when:%Y-%m-%d %H:%M} {format_number(value)} {unit}".strip()
        if flag:
            label += " ⚑"
        parts.append(
            f"<circle class='chart-point{' flagged' if flag else ''}' cx='{x_of(when):.1f}' "
            f"cy='{y_of(value):.1f}' r='{4.5 if flag else 3.5}' fill='{colour}' "
            f"stroke='#fff' stroke-width='1'><title>{escape(label)}</title></circle>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _range_text(low: float | None, high: float | None, unit: str) -> str:
    lo = "" if low is None else format_number(low)
    hi = "" if high is None else format_number(high)
    return f"{lo}–{hi} {unit}".strip()


def bar_chart(
    bars: Sequence[Bar],
    *,
    unit: str = "",
    width: int = 640,
    height: int | None = None,
    title: str = "",
    desc: str | None = None,
    horizontal: bool = False,
    value_format: str = "{}",
    empty_text: str = "无数据 / No data",
) -> Markup:
    """Bars with their labels and values written on them.

    Vertical bars (``horizontal=False``) suit a series over months; horizontal bars suit
    ranked categories with long labels (decline reasons, hospitals, items): their height
    grows with the number of bars when ``height`` is not given. ``value_format`` formats the
    number written by each bar (``"{}"`` receives the shortest form, e.g. ``"¥{}"``).
    """
    data = [(str(label), float(value)) for label, value in bars if math.isfinite(value)]
    css_class = "chart-bar-chart" + (" horizontal" if horizontal else "")
    if height is None:
        height = 24 * len(data) + 30 if horizontal else 220
        height = max(height, 80)
    if not data:
        return _empty(width, height, title, empty_text, css_class)
    top_value = max(0.0, max(value for _, value in data))
    bottom_value = min(0.0, min(value for _, value in data))
    ticks = nice_ticks(bottom_value, top_value or 1.0)
    v_lo, v_hi = ticks[0], ticks[-1]
    summary = desc
    if summary is None:
        summary = "; ".join(
            f"{label}: {value_format.format(format_number(value))} {unit}".rstrip()
            for label, value in data
        )
    head, _ = _svg_open(width, height, title, summary, css_class)
    parts = [head]
    if horizontal:
        label_width = min(width * 0.4, 8 + 12 * max(_display_width(label) for label, _ in data))
        frame = _Frame(label_width, 8, width - 60, height - 20)

        def x_of(value: float) -> float:
            return frame.left + frame.width * (value - v_lo) / (v_hi - v_lo)

        slot = frame.height / len(data)
        for tick in ticks:
            x = x_of(tick)
            parts.append(
                f"<line class='chart-grid' x1='{x:.1f}' x2='{x:.1f}' y1='{frame.top:.1f}' "
                f"y2='{frame.bottom:.1f}' stroke='{GRID_COLOUR}'/>"
                f"<text class='chart-label' x='{x:.1f}' y='{frame.bottom + 14:.1f}' "
                f"text-anchor='middle' fill='{TEXT_COLOUR}' {FONT}>"
                f"{escape(format_number(tick))}</text>"
            )
        for index, (label, value) in enumerate(data):
            y = frame.top + slot * index
            bar_h = max(slot * 0.7, 1)
            x0, x1 = sorted((x_of(0.0), x_of(value)))
            text = value_format.format(format_number(value))
            parts.append(
                f"<g class='chart-bar'><title>{escape(label)}: {escape(text)} {escape(unit)}"
                f"</title><text class='chart-label' x='{frame.left - 6:.1f}' "
                f"y='{y + slot / 2 + 4:.1f}' text-anchor='end' fill='{TEXT_COLOUR}' {FONT}>"
                f"{escape(_shorten(label, 28))}</text>"
                f"<rect x='{x0:.1f}' y='{y + (slot - bar_h) / 2:.1f}' "
                f"width='{max(x1 - x0, 1):.1f}' height='{bar_h:.1f}' fill='{BAR_COLOUR}'/>"
                f"<text class='chart-value' x='{x1 + 4:.1f}' y='{y + slot / 2 + 4:.1f}' "
                f"fill='{TEXT_COLOUR}' {FONT}>{escape(text)}</text></g>"
            )
    else:
        frame = _Frame(56, 22, width - 10, height - 30)

        def y_of(value: float) -> float:
            return frame.bottom - frame.height * (value - v_lo) / (v_hi - v_lo)

        slot = frame.width / len(data)
        for tick in ticks:
            y = y_of(tick)
            parts.append(
                f"<line class='chart-grid' x1='{frame.left:.1f}' x2='{frame.right:.1f}' "
                f"y1='{y:.1f}' y2='{y:.1f}' stroke='{GRID_COLOUR}'/>"
                f"<text class='chart-label' x='{frame.left - 6:.1f}' y='{y + 4:.1f}' "
                f"text-anchor='end' fill='{TEXT_COLOUR}' {FONT}>"
                f"{escape(format_number(tick))}</text>"
            )
        if unit:
            parts.append(
                f"<text class='chart-unit' x='4' y='12' fill='{TEXT_COLOUR}' "
                f"{FONT}>{escape(unit)}</text>"
            )
        every = max(1, math.ceil(len(data) / max(int(frame.width // 60), 1)))
        for index, (label, value) in enumerate(data):
            x = frame.left + slot * index
            bar_w = max(min(slot * 0.7, 48), 1)
            y0, y1 = sorted((y_of(0.0), y_of(value)))
            text = value_format.format(format_number(value))
            centre = x + slot / 2
            label_svg = (
                f"<text class='chart-label' x='{centre:.1f}' y='{frame.bottom + 16:.1f}' "
                f"text-anchor='middle' fill='{TEXT_COLOUR}' {FONT}>"
                f"{escape(_shorten(label, 12))}</text>"
                if index % every == 0
                else ""
            )
            parts.append(
                f"<g class='chart-bar'><title>{escape(label)}: {escape(text)} {escape(unit)}"
                f"</title><rect x='{centre - bar_w / 2:.1f}' y='{y0:.1f}' "
                f"width='{bar_w:.1f}' height='{max(y1 - y0, 1):.1f}' fill='{BAR_COLOUR}'/>"
                f"<text class='chart-value' x='{centre:.1f}' y='{y0 - 3:.1f}' "
                f"text-anchor='middle' fill='{TEXT_COLOUR}' {FONT}>{escape(text)}</text>"
                f"{label_svg}</g>"
            )
        parts.append(
            f"<line class='chart-axis' x1='{frame.left:.1f}' x2='{frame.right:.1f}' "
            f"y1='{y_of(0.0):.1f}' y2='{y_of(0.0):.1f}' stroke='{AXIS_COLOUR}'/>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _display_width(text: str) -> float:
    """Roughly how many Latin characters wide ``text`` is (CJK characters count double)."""
    return sum(2 if ord(char) > 0x2E80 else 1 for char in _shorten(text, 28)) * 0.55


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
