"""Business calendars: a tenant's opening hours, public holidays and closed dates, in its zone."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as holidays_lib

SECONDS_PER_DAY = 86_400
MONDAY_TO_FRIDAY = frozenset(range(5))
# A calendar with no opening at all for this many consecutive days is a configuration
# mistake (every date closed), not a long weekend: stop instead of looping forever.
_MAX_CLOSED_RUN_DAYS = 3 * 366
_SPAN_CACHE_SIZE = 4096
_HOURS_SPEC_RE = re.compile(r"^\s*(\d{1,2})\s*[x×]\s*(\d{1,2})\s*$", re.IGNORECASE)

Span = tuple[datetime, datetime]
OpeningHours = Mapping[int, Iterable[tuple[time, time]]]


def require_aware(at: datetime, name: str = "at") -> datetime:
    """`at` in UTC; a naive datetime is refused because its zone would be a guess."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {at.isoformat()}")
    return at.astimezone(UTC)


def _seconds_of_day(value: time) -> int:
    return value.hour * 3600 + value.minute * 60 + value.second


def _local_naive(at_utc: datetime, zone: ZoneInfo) -> datetime:
    return at_utc.astimezone(zone).replace(tzinfo=None)


def resolve_wall_time(day: date, offset: timedelta, zone: ZoneInfo) -> datetime:
    """The first instant (UTC) at which the clock in `zone` reads `day` + `offset` or later.

    Ordinary times map to themselves; a time repeated when clocks go back maps to its first
    occurrence; a time skipped when clocks go forward maps to the moment of the jump.
    """
    naive = datetime.combine(day, time()) + offset
    first_guess = naive.replace(tzinfo=zone).astimezone(UTC)
    if _local_naive(first_guess, zone) == naive:
        return first_guess
    # In a DST gap fold=0 reads the wall time with the old offset (too late) and fold=1 with
    # the new one (too early); the jump lies between. Transitions fall on whole seconds.
    low = int(naive.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    high = int(first_guess.timestamp()) + 1
    while high - low > 1:
        middle = (low + high) // 2
        if _local_naive(datetime.fromtimestamp(middle, UTC), zone) >= naive:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def parse_hours_spec(spec: str) -> tuple[int, int]:
    """`"7x24"`, `"5x8"`, `"13x6"` → (days per week, hours per day).

    Plans are written days×hours ("7x24", "5x8") or hours×days ("24x7", "15x7"): a number
    above 7 can only be hours; when both are 7 or less the days×hours reading is used.
    """
    match = _HOURS_SPEC_RE.match(spec)
    if match is None:
        raise ValueError(f"hours must look like '7x24' or '5x8' (days x hours), got {spec!r}")
    first, second = int(match.group(1)), int(match.group(2))
    days, hours = (second, first) if first > 7 and second <= 7 else (first, second)
    if not 1 <= days <= 7:
        raise ValueError(f"{spec!r}: a week has 1 to 7 opening days, not {days}")
    if not 1 <= hours <= 24:
        raise ValueError(f"{spec!r}: a day has 1 to 24 opening hours, not {hours}")
    return days, hours


def _normalise_hours(weekly_hours: OpeningHours) -> dict[int, tuple[tuple[int, int], ...]]:
    """Per weekday (0 = Monday) sorted, merged (start, end) second-of-day intervals.

    An end of 00:00 means midnight; an end before its start runs past midnight and its tail
    belongs to the next weekday.
    """
    pieces: dict[int, list[tuple[int, int]]] = {weekday: [] for weekday in range(7)}
    for weekday, intervals in weekly_hours.items():
        if weekday not in pieces:
            raise ValueError(f"weekday must be 0 (Monday) to 6 (Sunday), got {weekday!r}")
        for start_time, end_time in intervals:
            start, end = _seconds_of_day(start_time), _seconds_of_day(end_time)
            if end == 0:
                end = SECONDS_PER_DAY
            if start == end:
                raise ValueError(f"empty opening interval {start_time}–{end_time}")
            if end > start:
                pieces[weekday].append((start, end))
            else:
                pieces[weekday].append((start, SECONDS_PER_DAY))
                pieces[(weekday + 1) % 7].append((0, end))
    merged: dict[int, tuple[tuple[int, int], ...]] = {}
    for weekday, day_pieces in pieces.items():
        out: list[tuple[int, int]] = []
        for piece_start, piece_end in sorted(day_pieces):
            if out and piece_start <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], piece_end))
            else:
                out.append((piece_start, piece_end))
        merged[weekday] = tuple(out)
    return merged


class BusinessCalendar:
    """When a tenant's desk is open, in the tenant's zone; every answer is an aware UTC datetime.

    Business time is real elapsed time inside opening intervals: an interval runs from the
    first moment the local clock reads its start to the first moment it reads its end, so a
    DST jump neither gains nor loses a second of service.

    Public holidays (`country`, optionally `subdivision`) and `closed_dates` close a whole
    local date when `holidays_close` is true (office-hours plans). A plan that is always open
    (7x24) keeps its hours on holidays: pass `holidays_close=False`, as `always_open()` and
    `from_spec("7x24", ...)` do.

    Business *days* are a separate notion, used by rules counted in "días laborables": a
    date is a business day when its weekday is a Monday–Friday on which the calendar has
    opening hours (or is in `business_weekdays` when given) and it is neither a public
    holiday nor a closed date. This holds for 7x24 calendars too: their hours ignore
    holidays, but "3 días laborables" still skips weekends and holidays.
    """

    def __init__(
        self,
        zone: str | ZoneInfo,
        weekly_hours: OpeningHours,
        *,
        country: str | None = None,
        subdivision: str | None = None,
        closed_dates: Iterable[date] = (),
        holidays_close: bool = True,
        business_weekdays: Iterable[int] | None = None,
    ) -> None:
        try:
            self.zone = zone if isinstance(zone, ZoneInfo) else ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {zone!r} (use an IANA name)") from exc
        self.hours = _normalise_hours(weekly_hours)
        if not any(self.hours.values()):
            raise ValueError("a business calendar needs at least one opening interval")
        self.country = country.upper() if country else None
        self.subdivision = subdivision
        self.closed_dates = frozenset(closed_dates)
        self.holidays_close = holidays_close
        self._public_holidays: holidays_lib.HolidayBase | None = None
        if self.country:
            try:
                self._public_holidays = holidays_lib.country_holidays(
                    self.country, subdiv=subdivision
                )
            except NotImplementedError as exc:
                raise ValueError(
                    f"no public holidays known for country {country!r}"
                    + (f" subdivision {subdivision!r}" if subdivision else "")
                ) from exc
        if business_weekdays is None:
            self.business_weekdays = frozenset(
                weekday for weekday in MONDAY_TO_FRIDAY if self.hours[weekday]
            )
        else:
            self.business_weekdays = frozenset(business_weekdays)
        if not self.business_weekdays or not self.business_weekdays <= set(range(7)):
            raise ValueError("business_weekdays must name at least one weekday, 0 to 6")
        self._span_cache: dict[date, tuple[Span, ...]] = {}

    # Constructors -----------------------------------------------------------------------

    @classmethod
    def always_open(
        cls,
        zone: str | ZoneInfo,
        *,
        country: str | None = None,
        subdivision: str | None = None,
        closed_dates: Iterable[date] = (),
    ) -> BusinessCalendar:
        """A 7x24 calendar: always open; holidays only matter for business-day counts."""
        whole_day = ((time(0), time(0)),)
        return cls(
            zone,
            dict.fromkeys(range(7), whole_day),
            country=country,
            subdivision=subdivision,
            closed_dates=closed_dates,
            holidays_close=False,
        )

    @classmethod
    def from_spec(
        cls,
        spec: str,
        zone: str | ZoneInfo,
        *,
        opening: time | str = time(9),
        country: str | None = None,
        subdivision: str | None = None,
        closed_dates: Iterable[date] = (),
    ) -> BusinessCalendar:
        """A calendar from a plan's hours: "7x24" always open; "5x8" Mon–Fri from `opening`.

        The first `days` weekdays starting Monday are open for `hours` hours from `opening`
        (a 24-hour day starts at midnight). Only a 7x24 plan stays open on holidays.
        """
        days, hours = parse_hours_spec(spec)
        if days == 7 and hours == 24:
            return cls.always_open(
                zone, country=country, subdivision=subdivision, closed_dates=closed_dates
            )
        start = time.fromisoformat(opening) if isinstance(opening, str) else opening
        if hours == 24:
            start = time(0)
        end_seconds = (_seconds_of_day(start) + hours * 3600) % SECONDS_PER_DAY
        end = time(end_seconds // 3600, end_seconds % 3600 // 60, end_seconds % 60)
        return cls(
            zone,
            {weekday: [(start, end)] for weekday in range(days)},
            country=country,
            subdivision=subdivision,
            closed_dates=closed_dates,
        )

    def __repr__(self) -> str:
        return (
            f"BusinessCalendar(zone={self.zone.key!r}, country={self.country!r}, "
            f"holidays_close={self.holidays_close}, open_weekdays="
            f"{[weekday for weekday, spans in self.hours.items() if spans]})"
        )

    # Dates ------------------------------------------------------------------------------

    def is_holiday(self, day: date) -> bool:
        """A public holiday of the calendar's country, or one of its extra closed dates."""
        if day in self.closed_dates:
            return True
        return self._public_holidays is not None and day in self._public_holidays

    def is_business_day(self, day: date) -> bool:
        """Whether `day` counts as a "día laborable" (see the class docstring)."""
        return day.weekday() in self.business_weekdays and not self.is_holiday(day)

    # Opening intervals ------------------------------------------------------------------

    def _day_spans(self, day: date) -> tuple[Span, ...]:
        cached = self._span_cache.get(day)
        if cached is not None:
            return cached
        spans: list[Span] = []
        if not (self.holidays_close and self.is_holiday(day)):
            for start, end in self.hours[day.weekday()]:
                span_start = resolve_wall_time(day, timedelta(seconds=start), self.zone)
                span_end = resolve_wall_time(day, timedelta(seconds=end), self.zone)
                if span_end > span_start:  # an interval inside a DST gap lasts nothing
                    spans.append((span_start, span_end))
        if len(self._span_cache) >= _SPAN_CACHE_SIZE:
            self._span_cache.clear()
        result = self._span_cache[day] = tuple(spans)
        return result

    def _spans_from(self, at_utc: datetime) -> Iterator[Span]:
        """Open spans in time order, the first clipped to start at `at_utc`; never ends."""
        # Start a day early: when clocks go back across midnight, an instant can carry the
        # previous local date while the spans around it belong to either day.
        day = at_utc.astimezone(self.zone).date() - timedelta(days=1)
        closed_run = 0
        while True:
            spans = self._day_spans(day)
            for span_start, span_end in spans:
                if span_end > at_utc:
                    yield max(span_start, at_utc), span_end
            closed_run = 0 if spans else closed_run + 1
            if closed_run > _MAX_CLOSED_RUN_DAYS:
                raise ValueError(f"{self!r} has no opening hours for {closed_run} days")
            day += timedelta(days=1)

    def is_open(self, at: datetime) -> bool:
        """Whether the desk is open at `at` (opening instant included, closing excluded)."""
        at_utc = require_aware(at)
        return self.next_opening(at_utc) == at_utc

    def next_opening(self, at: datetime) -> datetime:
        """`at` itself (in UTC) when open, otherwise the next moment the desk opens."""
        span_start, _ = next(self._spans_from(require_aware(at)))
        return span_start

    def add_business_time(self, start: datetime, delta: timedelta) -> datetime:
        """The instant by which `delta` of opening time has passed since `start`.

        Time outside opening hours does not count, so a start outside hours begins at the
        next opening; a result that lands exactly on a closing time stays there.
        """
        if delta < timedelta(0):
            raise ValueError(f"delta must not be negative, got {delta}")
        remaining = delta
        for span_start, span_end in self._spans_from(require_aware(start, "start")):
            length = span_end - span_start
            if remaining <= length:
                return span_start + remaining
            remaining -= length
        raise AssertionError("unreachable: _spans_from never ends")  # pragma: no cover

    def business_time_between(self, a: datetime, b: datetime) -> timedelta:
        """Opening time between `a` and `b`; negative when `b` is before `a`."""
        a_utc, b_utc = require_aware(a, "a"), require_aware(b, "b")
        if b_utc < a_utc:
            return -self.business_time_between(b_utc, a_utc)
        total = timedelta(0)
        for span_start, span_end in self._spans_from(a_utc):
            if span_start >= b_utc:
                break
            total += min(span_end, b_utc) - span_start
        return total

    def add_business_days(self, start: datetime, days: int) -> datetime:
        """The same local clock time `days` business days after `start`, in UTC.

        A start on a non-business day (weekend, holiday) counts from midnight of the next
        business day: Saturday + 1 business day is Tuesday 00:00, once Monday has passed.
        """
        if days < 0:
            raise ValueError(f"days must not be negative, got {days}")
        local = require_aware(start, "start").astimezone(self.zone)
        day = local.date()
        time_of_day = local.replace(tzinfo=None) - datetime.combine(day, time())
        if not self.is_business_day(day):
            day = self._next_business_day(day)
            time_of_day = timedelta(0)
        for _ in range(days):
            day = self._next_business_day(day)
        return resolve_wall_time(day, time_of_day, self.zone)

    def _next_business_day(self, day: date) -> date:
        for _ in range(_MAX_CLOSED_RUN_DAYS):
            day += timedelta(days=1)
            if self.is_business_day(day):
                return day
        raise ValueError(f"{self!r} has no business day for {_MAX_CLOSED_RUN_DAYS} days")
