"""The on-call home page's charts: :mod:`service.activity`'s series drawn by
:mod:`service.svg_chart`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from service import activity
from service.activity import Window
from service.db import Tx
from service.oncall_html import esc
from service.recent import MinuteCounts
from service.svg_chart import Series, hbars, stacked_bars

HOUR = (60, 60)  # buckets, seconds: the last hour by minute
DAY = (96, 900)  # the last 24 hours by quarter hour


@dataclass(frozen=True, slots=True)
class Charts:
    hour: dict[str, list[int]]
    day: dict[str, list[int]]
    moves: dict[str, list[int]]
    refusals: dict[str, list[int]]
    backlog: list[tuple[str, int]]
    now: datetime
    refusals_since: float


async def read_charts(tx: Tx, now: datetime, recent: MinuteCounts) -> Charts:
    hour, day = Window(now, *HOUR), Window(now, *DAY)
    return Charts(await activity.deliveries(tx, hour), await activity.deliveries(tx, day),
                  await activity.moves(tx, day), activity.refusals(recent, day),
                  await activity.backlog(tx, now), now, recent.started)


def _ticks(window: Window, every: int) -> list[str]:
    return [f"{edge:%H:%M}" if i % every == 0 else "" for i, edge in enumerate(window.edges())]


def _figure(caption: str, svg: str, note: str = "") -> str:
    extra = f' <span class="note">{esc(note)}</span>' if note else ""
    return f"<figure>{svg}<figcaption>{esc(caption)}{extra}</figcaption></figure>"


def render(c: Charts) -> str:
    hour, day = Window(c.now, *HOUR), Window(c.now, *DAY)
    figures = [
        _figure("Deliveries per minute by outcome, last hour", stacked_bars(
            label="deliveries per minute by outcome, last hour", ticks=_ticks(hour, 10),
            series=[Series(k, v) for k, v in c.hour.items()], unit="per min")),
        _figure("Deliveries by outcome, last 24 hours", stacked_bars(
            label="deliveries per quarter hour by outcome, last 24 hours",
            ticks=_ticks(day, 16), series=[Series(k, v) for k, v in c.day.items()],
            unit="per 15 min"), "per quarter hour; the legend totals 24 h"),
        _figure("Refused before storage, by reason, last 24 hours", stacked_bars(
            label="refusals by reason, last 24 hours", ticks=_ticks(day, 16),
            series=[Series(k, v) for k, v in sorted(c.refusals.items())], unit="per 15 min"),
            f"this process since {datetime.fromtimestamp(c.refusals_since, c.now.tzinfo):%H:%M}"
            " UTC; Prometheus has every replica's"),
        _figure("Connection moves by target state, last 24 hours", stacked_bars(
            label="transitions by target state, last 24 hours", ticks=_ticks(day, 16),
            series=[Series(k, v) for k, v in c.moves.items()], unit="per 15 min"),
            "applied moves"),
        _figure("Job backlog by age", hbars(label="pending jobs by how long they are due",
                                            rows=c.backlog), "pending jobs, by how long due"),
    ]
    return f'<h2 id="charts">Over time</h2><div class="charts">{"".join(figures)}</div>'
