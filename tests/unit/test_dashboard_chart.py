"""The dashboard's server-rendered charts: readable axes, bars where the traffic is, nothing when there is none."""
import re
from datetime import datetime, timedelta, timezone

from webhook_app.admin.chart import LEFT, PLOT_W, WIDTH, _nice_ceiling, seconds_in_words, traffic_charts
from webhook_app.admin.dashboard import MinuteTraffic, age_in_words

START = datetime(2026, 11, 24, 22, 1, tzinfo=timezone.utc)
MINUTES = 24 * 60


def _bars(svg: str, css: str) -> list[tuple[float, float]]:
    return [(float(x), float(w)) for x, w in
            re.findall(rf'<rect class="{css}" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', svg)]


def test_an_empty_day_draws_axes_and_no_bars():
    charts = traffic_charts(MinuteTraffic(start=START), MINUTES)
    assert "<rect" not in charts["events_svg"] and "<rect" not in charts["lag_svg"]
    assert charts["received_total"] == charts["processed_total"] == 0
    assert charts["mean_lag"] == "no events processed"
    assert ">22:01<" in charts["events_svg"] and ">now<" in charts["events_svg"]


def test_bars_sit_at_their_minute_and_stay_inside_the_plot():
    traffic = MinuteTraffic(start=START, received={0: 3, MINUTES - 1: 7}, processed={MINUTES - 1: 7},
                            lag_avg={MINUTES - 1: 0.2}, lag_max={MINUTES - 1: 1.5})
    charts = traffic_charts(traffic, MINUTES)
    received = _bars(charts["events_svg"], "received")
    assert len(received) == 2
    (first_x, _), (last_x, last_w) = sorted(received)
    assert first_x == LEFT
    assert last_x + last_w <= LEFT + PLOT_W + 3 < WIDTH  # the last minute ends at the plot's right edge
    assert charts["received_total"] == 10 and charts["processed_total"] == 7
    assert charts["mean_lag"] == "200 ms" and charts["max_lag"] == "1.5 s"
    assert ">10<" in charts["events_svg"] and ">5<" in charts["events_svg"]  # an even axis: whole-number midline


def test_axis_maxima_and_durations_read_like_a_person_would_write_them():
    assert [_nice_ceiling(v) for v in (0.3, 1, 3, 7, 42)] == [0.5, 1, 5, 10, 50]
    assert [_nice_ceiling(v, (2, 4, 10, 20)) for v in (1, 3, 5, 11)] == [2, 4, 10, 20]
    assert [seconds_in_words(s) for s in (0.05, 2.345, 42, 600, 7200)] == ["50 ms", "2.3 s", "42 s", "10 min", "2.0 h"]
    assert [age_in_words(timedelta(seconds=s)) for s in (5, 125, 3 * 3600 + 60, 3 * 86400)] == \
        ["5 s", "2 min", "3 h 1 min", "3 days"]
    assert age_in_words(None) == "none waiting"
