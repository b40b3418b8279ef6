"""The board's chart: mail received and acknowledgement latency over the last hours.

Computed from the database at each view (correct across workers and restarts): mails
received per interval from the spool (`inbound.received_at`), and for the
acknowledgements sent in each interval their latency from the inbound 250 to the relay
taking ours (`outbox.sent_at - trigger_received_at`, as mailbridge_ack_latency_seconds),
average and worst. Grouped in SQL, so a busy day costs one row per interval. Drawn as
inline SVG on the server: no script, no library in the browser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.orm import Session

from mailbridge.outbound.outbox import STATE_SENT, OutboxMail
from mailbridge.spool import InboundMail

WIDTH, HEIGHT = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 52, 14, 30  # margins for the axes' labels


def _epoch(column: Any, dialect: str) -> Any:
    if dialect == "sqlite":  # stored as UTC text: julianday reads it
        return (func.julianday(column) - 2440587.5) * 86400.0
    return func.extract("epoch", column)


def _bucket(column: Any, dialect: str, start: datetime, size: int) -> Any:
    offset = (_epoch(column, dialect) - start.timestamp()) / size
    return cast(offset, Integer) if dialect == "sqlite" else cast(func.floor(offset), Integer)


@dataclass
class Figures:
    start: datetime
    size: int  # seconds per interval
    intake: list[int]
    latency_avg: list[float | None]
    latency_max: list[float | None]

    @property
    def total_intake(self) -> int:
        return sum(self.intake)


def figures(session: Session, now: datetime, *, hours: int = 6, size: int = 900) -> Figures:
    """Intake and acknowledgement latency per `size` seconds over the last `hours`."""
    count = hours * 3600 // size
    start = now - timedelta(seconds=count * size)
    dialect = session.get_bind().dialect.name
    intake = [0] * count
    received = _bucket(InboundMail.received_at, dialect, start, size)
    for bucket, n in session.execute(
            select(received, func.count()).where(InboundMail.received_at >= start)
            .group_by(received)):
        if bucket is not None and 0 <= int(bucket) < count:
            intake[int(bucket)] = int(n)
    avg: list[float | None] = [None] * count
    worst: list[float | None] = [None] * count
    sent = _bucket(OutboxMail.sent_at, dialect, start, size)
    latency = _epoch(OutboxMail.sent_at, dialect) - _epoch(OutboxMail.trigger_received_at, dialect)
    for bucket, mean, most in session.execute(
            select(sent, func.avg(latency), func.max(latency))
            .where(OutboxMail.kind == "ack", OutboxMail.state == STATE_SENT,
                   OutboxMail.sent_at >= start, OutboxMail.trigger_received_at.is_not(None))
            .group_by(sent)):
        if bucket is not None and 0 <= int(bucket) < count:
            avg[int(bucket)] = max(0.0, float(mean))
            worst[int(bucket)] = max(0.0, float(most))
    return Figures(start, size, intake, avg, worst)


@dataclass
class Chart:
    """The SVG's geometry, ready for the template."""

    width: int = WIDTH
    height: int = HEIGHT
    bars: list[dict[str, Any]] = field(default_factory=list)
    avg_points: str = ""
    max_dots: list[dict[str, Any]] = field(default_factory=list)
    x_labels: list[dict[str, Any]] = field(default_factory=list)
    left_labels: list[dict[str, Any]] = field(default_factory=list)
    right_labels: list[dict[str, Any]] = field(default_factory=list)
    summary: str = ""


def _nice_top(value: float) -> float:
    """The axis' top: 1, 2, 5 or 10 times a power of ten, at or above `value` (at least 1)."""
    if value <= 1:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= value)


def draw(figs: Figures, zone: ZoneInfo) -> Chart:
    chart = Chart()
    n = len(figs.intake)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(n, 1)
    top_count = _nice_top(max(figs.intake, default=0))
    latencies = [v for v in figs.latency_max if v is not None]
    top_latency = _nice_top(max(latencies, default=0.0))
    base = TOP + plot_h

    def y_count(v: float) -> float:
        return base - plot_h * v / top_count

    def y_latency(v: float) -> float:
        return base - plot_h * min(v, top_latency) / top_latency

    points = []
    for i, received in enumerate(figs.intake):
        x = LEFT + i * slot
        at = figs.start + timedelta(seconds=i * figs.size)
        label = f"{at.astimezone(zone):%H:%M}"
        h = plot_h * received / top_count
        chart.bars.append({"x": round(x + 1, 1), "y": round(base - h, 1),
                           "w": round(max(slot - 2, 1), 1), "h": round(h, 1),
                           "title": f"{label}: {received} correos recibidos"})
        mean, most = figs.latency_avg[i], figs.latency_max[i]
        cx = round(x + slot / 2, 1)
        if mean is not None:
            points.append(f"{cx},{round(y_latency(mean), 1)}")
        if most is not None:
            chart.max_dots.append({"x": cx, "y": round(y_latency(most), 1),
                                   "title": f"{label}: acuse más lento {most:.1f} s, "
                                   f"promedio {mean or 0:.1f} s"})
        if i % max(1, n // 6) == 0:
            chart.x_labels.append({"x": round(x, 1), "text": label})
    chart.avg_points = " ".join(points)
    for fraction in (0.0, 0.5, 1.0):
        y = round(base - plot_h * fraction, 1)
        chart.left_labels.append({"y": y, "text": f"{top_count * fraction:g}"})
        chart.right_labels.append({"y": y, "text": f"{top_latency * fraction:g} s"})
    worst = max(latencies, default=None)
    chart.summary = (f"{figs.total_intake} correos recibidos en las últimas "
                     f"{len(figs.intake) * figs.size // 3600} horas; "
                     + (f"acuse de recibo más lento: {worst:.1f} s" if worst is not None
                        else "ningún acuse enviado en ese tiempo"))
    return chart
