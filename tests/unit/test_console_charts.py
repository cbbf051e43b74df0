# ruff: noqa: RUF001  (the chart writes a typographic minus sign, U+2212)
"""The temperature chart: an accessible inline SVG of a shipment's readings, its limit a line, excursions a
distinct shape labelled in words, times in the site's zone."""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo

from services.console.charts import temperature_chart

BOSTON = ZoneInfo("America/New_York")
CRYO = [
    {"at": "2026-12-01T14:00:00Z", "celsius": -182.0},
    {"at": "2026-12-01T16:00:00Z", "celsius": -140.5},
    {"at": "2026-12-01T15:00:00Z", "celsius": -180.0},
]


def test_the_chart_is_an_image_with_a_title_and_a_summary_in_words() -> None:
    svg = str(temperature_chart(CRYO, max_celsius=-150.0, zone=BOSTON, title="Return leg temperatures"))
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg" class="temperature-chart"')
    assert 'role="img"' in svg
    assert '<title id="temperature-chart-title">Return leg temperatures</title>' in svg
    [desc] = re.findall(r'<desc id="temperature-chart-desc">([^<]*)</desc>', svg)
    assert desc == (
        "3 readings from 2026-12-01 09:00 EST to 2026-12-01 11:00 EST (America/New_York); lowest −182 °C, "
        "highest −140.5 °C; limit −150 °C. 1 excursion: the first −140.5 °C at 2026-12-01 11:00 EST "
        "(above the limit)."
    )
    assert "Time (America/New_York, EST)" in svg
    assert ">12-01 09:00</text>" in svg and ">12-01 11:00</text>" in svg  # 14:00 and 16:00 UTC


def test_an_excursion_is_a_triangle_labelled_in_words_not_a_colour_alone() -> None:
    svg = str(temperature_chart(CRYO, max_celsius=-150.0, zone=BOSTON))
    assert svg.count('class="excursion"') == 1
    assert svg.count('class="reading"') == 2
    assert svg.count('<text class="excursion-label"') == 1
    assert "−140.5 °C above limit</text>" in svg
    assert svg.count('<line class="limit"') == 1 and "limit −150 °C</text>" in svg
    assert 'class="minimum"' not in svg


def test_a_fresh_leg_draws_its_band_and_marks_both_sides() -> None:
    fresh = [
        {"at": "2026-12-01T14:00:00Z", "celsius": 5.0},
        {"at": "2026-12-01T15:00:00Z", "celsius": 9.5},
        {"at": "2026-12-01T16:00:00Z", "celsius": 1.0},
    ]
    svg = str(temperature_chart(fresh, max_celsius=8.0, min_celsius=2.0, zone=BOSTON, chart_id="leg-1"))
    assert 'id="leg-1"' in svg and 'aria-labelledby="leg-1-title leg-1-desc"' in svg
    assert "limit 8 °C</text>" in svg and "minimum 2 °C</text>" in svg
    assert "9.5 °C above limit</text>" in svg and "1 °C below minimum</text>" in svg
    assert "2 excursions: the first 9.5 °C at 2026-12-01 10:00 EST (above the limit)." in svg
    on_limit = [
        {"at": "2026-12-01T14:00:00Z", "celsius": 8.0},
        {"at": "2026-12-01T15:00:00Z", "celsius": 2.0},
    ]
    assert "No excursions." in str(temperature_chart(on_limit, max_celsius=8.0, min_celsius=2.0, zone=BOSTON))


def test_no_readings_is_said_in_words_and_text_is_escaped() -> None:
    svg = str(temperature_chart([], max_celsius=-150.0, zone=BOSTON, title="<b>leg</b>"))
    assert '<desc id="temperature-chart-desc">No temperature readings yet; limit −150 °C.</desc>' in svg
    assert "No readings yet</text>" in svg
    assert "&lt;b&gt;leg&lt;/b&gt;" in svg and "<b>" not in svg
