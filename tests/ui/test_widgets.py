"""Pure helpers of the panels: sparkline bucketing and the untrusted-text gate."""

from __future__ import annotations

from hypothesis import given, strategies as st

from popwatch.ui.widgets import SPARK, safe, sparkline


@given(st.integers(1, 300), st.integers(3, 60))
def test_sparkline_of_a_rising_series_rises_and_fits(n, width):
    bars = sparkline([float(i + 1) for i in range(n)], width, 120)
    assert len(bars) == width
    levels = [SPARK.index(c) for c in bars.strip()]
    assert levels == sorted(levels)  # oldest left, newest right, never a repeated stretch
    assert bars.rstrip()[-1] == SPARK[-1]


def test_sparkline_buckets_are_means_over_the_span():
    assert sparkline([1.0] * 60 + [4.0] * 60, 12, 120) == SPARK[1] * 6 + SPARK[-1] * 6
    assert sparkline([0.0, 1.0, 2.0], 5) == "   " + SPARK[3] + SPARK[7]  # a gap is exactly 0


def test_safe_escapes_what_the_parse_gate_would_have():
    assert safe("\x1b]0;PWNED\x07") == "\\x1b]0;PWNED\\x07"
    assert safe("[/x]") == "[/x]"  # markup is left as text: only Text/Segments ever render it
    assert len(safe("A" * 5000, 40)) < 60
