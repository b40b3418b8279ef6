"""Business calendars: hours, holidays, DST and business days, with time driven explicitly."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.service_levels.calendars import (
    BusinessCalendar,
    parse_hours_spec,
    resolve_wall_time,
)

BOGOTA = ZoneInfo("America/Bogota")
MADRID = ZoneInfo("Europe/Madrid")
SANTIAGO = ZoneInfo("America/Santiago")
MANAGUA = ZoneInfo("America/Managua")

# 5x8 = Monday–Friday 09:00–17:00 local, with the tenant's country holidays.
OFFICE_CO = BusinessCalendar.from_spec("5x8", BOGOTA, opening="09:00", country="CO")
OFFICE_NI = BusinessCalendar.from_spec("5x8", MANAGUA, country="NI")
OFFICE_ES = BusinessCalendar.from_spec("5x8", MADRID, country="ES", subdivision="MD")
PREMIUM_CO = BusinessCalendar.from_spec("7x24", BOGOTA, country="CO")
PREMIUM_ES = BusinessCalendar.always_open(MADRID, country="ES")
PREMIUM_CL = BusinessCalendar.always_open(SANTIAGO, country="CL")
# A night desk 22:00–06:00 every day: its shifts straddle midnight and the DST jumps.
NIGHTS_ES = BusinessCalendar(MADRID, dict.fromkeys(range(7), ((time(22), time(6)),)))
NIGHTS_CL = BusinessCalendar(SANTIAGO, dict.fromkeys(range(7), ((time(22), time(6)),)))
# Split shift with a lunch break, and a Saturday morning.
SPLIT_CO = BusinessCalendar(
    BOGOTA,
    {
        **dict.fromkeys(range(5), ((time(8), time(12)), (time(14), time(18)))),
        5: [(time(9), time(13))],
    },
    country="CO",
)


def local(zone: ZoneInfo, y: int, m: int, d: int, hh: int = 0, mm: int = 0, fold: int = 0):
    return datetime(y, m, d, hh, mm, tzinfo=zone, fold=fold)


def test_seed_holidays_are_the_ones_the_package_knows() -> None:
    # Reyes Magos (6 Jan) moves to Monday 12 Jan 2026 in Colombia; Semana Santa is 2–3 Apr.
    for day in (date(2026, 1, 12), date(2026, 4, 2), date(2026, 4, 3)):
        assert OFFICE_CO.is_holiday(day)
        assert not OFFICE_CO.is_business_day(day)
    assert not OFFICE_CO.is_holiday(date(2026, 1, 6))  # the original date is a working day
    assert OFFICE_NI.is_holiday(date(2026, 9, 14)) and OFFICE_NI.is_holiday(date(2026, 9, 15))


@pytest.mark.parametrize(
    ("calendar", "moment", "is_open"),
    [
        # 5x8: opening instant included, closing instant excluded.
        (OFFICE_CO, local(BOGOTA, 2026, 1, 13, 9, 0), True),
        (OFFICE_CO, local(BOGOTA, 2026, 1, 13, 8, 59), False),
        (OFFICE_CO, local(BOGOTA, 2026, 1, 13, 16, 59), True),
        (OFFICE_CO, local(BOGOTA, 2026, 1, 13, 17, 0), False),
        (OFFICE_CO, local(BOGOTA, 2026, 1, 13, 23, 0), False),  # night
        (OFFICE_CO, local(BOGOTA, 2026, 1, 10, 11, 0), False),  # Saturday
        (OFFICE_CO, local(BOGOTA, 2026, 1, 12, 11, 0), False),  # Reyes Magos (moved Monday)
        # Premium 7x24 ignores nights, weekends and holidays.
        (PREMIUM_CO, local(BOGOTA, 2026, 1, 12, 3, 0), True),
        (PREMIUM_CO, local(BOGOTA, 2026, 1, 10, 23, 59), True),
        # Split shift: closed over lunch, open on Saturday morning only.
        (SPLIT_CO, local(BOGOTA, 2026, 1, 13, 12, 30), False),
        (SPLIT_CO, local(BOGOTA, 2026, 1, 13, 14, 0), True),
        (SPLIT_CO, local(BOGOTA, 2026, 1, 10, 12, 59), True),
        (SPLIT_CO, local(BOGOTA, 2026, 1, 10, 13, 0), False),
        # The night desk is open past midnight on the next weekday.
        (NIGHTS_ES, local(MADRID, 2026, 1, 13, 5, 59), True),
        (NIGHTS_ES, local(MADRID, 2026, 1, 13, 6, 0), False),
    ],
)
def test_is_open(calendar: BusinessCalendar, moment: datetime, is_open: bool) -> None:
    assert calendar.is_open(moment) is is_open


def test_any_input_zone_gives_the_same_answer_in_utc() -> None:
    in_bogota = local(BOGOTA, 2026, 1, 16, 16, 30)
    for same_moment in (in_bogota, in_bogota.astimezone(UTC), in_bogota.astimezone(MADRID)):
        due = OFFICE_CO.add_business_time(same_moment, timedelta(hours=1))
        assert due == local(BOGOTA, 2026, 1, 19, 9, 30)
        assert due.tzinfo is UTC


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        OFFICE_CO.is_open(datetime(2026, 1, 13, 10, 0))


@pytest.mark.parametrize(
    ("calendar", "moment", "opens"),
    [
        (OFFICE_CO, local(BOGOTA, 2026, 1, 13, 10, 0), local(BOGOTA, 2026, 1, 13, 10, 0)),
        (OFFICE_CO, local(BOGOTA, 2026, 1, 13, 7, 0), local(BOGOTA, 2026, 1, 13, 9, 0)),
        (OFFICE_CO, local(BOGOTA, 2026, 1, 16, 17, 0), local(BOGOTA, 2026, 1, 19, 9, 0)),
        # A case arriving Saturday on 5x8 starts Monday 09:00…
        (OFFICE_CO, local(BOGOTA, 2026, 1, 17, 11, 0), local(BOGOTA, 2026, 1, 19, 9, 0)),
        # …unless Monday is a holiday: Saturday 10 Jan → Tuesday 13 Jan.
        (OFFICE_CO, local(BOGOTA, 2026, 1, 10, 11, 0), local(BOGOTA, 2026, 1, 13, 9, 0)),
        (PREMIUM_CO, local(BOGOTA, 2026, 1, 10, 23, 0), local(BOGOTA, 2026, 1, 10, 23, 0)),
        (SPLIT_CO, local(BOGOTA, 2026, 1, 13, 12, 15), local(BOGOTA, 2026, 1, 13, 14, 0)),
        (NIGHTS_ES, local(MADRID, 2026, 1, 13, 12, 0), local(MADRID, 2026, 1, 13, 22, 0)),
    ],
)
def test_next_opening(calendar: BusinessCalendar, moment: datetime, opens: datetime) -> None:
    assert calendar.next_opening(moment) == opens


@pytest.mark.parametrize(
    ("calendar", "start", "delta", "due"),
    [
        # Friday 16:30 + 1 h on 5x8 → Monday 09:30.
        (OFFICE_CO, local(BOGOTA, 2026, 1, 16, 16, 30), timedelta(hours=1),
         local(BOGOTA, 2026, 1, 19, 9, 30)),
        # The same on the Friday before Reyes Magos → Tuesday 09:30.
        (OFFICE_CO, local(BOGOTA, 2026, 1, 9, 16, 30), timedelta(hours=1),
         local(BOGOTA, 2026, 1, 13, 9, 30)),
        # Landing exactly on closing time stays on that day.
        (OFFICE_CO, local(BOGOTA, 2026, 1, 13, 16, 0), timedelta(hours=1),
         local(BOGOTA, 2026, 1, 13, 17, 0)),
        # Overnight: 16:00 + 2 h → next morning 10:00.
        (OFFICE_CO, local(BOGOTA, 2026, 1, 13, 16, 0), timedelta(hours=2),
         local(BOGOTA, 2026, 1, 14, 10, 0)),
        # Semana Santa: Wednesday 1 Apr 16:00 + 3 h skips Thu/Fri holidays and the weekend.
        (OFFICE_CO, local(BOGOTA, 2026, 4, 1, 16, 0), timedelta(hours=3),
         local(BOGOTA, 2026, 4, 6, 11, 0)),
        # Nicaragua: 14–15 Sep are holidays; Friday 16:00 + 4 h → Wednesday 12:00.
        (OFFICE_NI, local(MANAGUA, 2026, 9, 11, 16, 0), timedelta(hours=4),
         local(MANAGUA, 2026, 9, 16, 12, 0)),
        # A 40-hour week from Monday 09:00 ends Friday 17:00.
        (OFFICE_CO, local(BOGOTA, 2026, 1, 19, 9, 0), timedelta(hours=40),
         local(BOGOTA, 2026, 1, 23, 17, 0)),
        # Premium 7x24 counts the night and the holiday.
        (PREMIUM_CO, local(BOGOTA, 2026, 1, 11, 23, 30), timedelta(hours=2),
         local(BOGOTA, 2026, 1, 12, 1, 30)),
        # Lunch break and Saturday morning.
        (SPLIT_CO, local(BOGOTA, 2026, 1, 13, 11, 30), timedelta(hours=1),
         local(BOGOTA, 2026, 1, 13, 14, 30)),
        (SPLIT_CO, local(BOGOTA, 2026, 1, 16, 17, 0), timedelta(hours=2),
         local(BOGOTA, 2026, 1, 17, 10, 0)),
        # Starting outside hours with no time to add gives the next opening.
        (OFFICE_CO, local(BOGOTA, 2026, 1, 17, 11, 0), timedelta(0),
         local(BOGOTA, 2026, 1, 19, 9, 0)),
    ],
)  # fmt: skip
def test_add_business_time(
    calendar: BusinessCalendar, start: datetime, delta: timedelta, due: datetime
) -> None:
    assert calendar.add_business_time(start, delta) == due


@pytest.mark.parametrize(
    ("calendar", "start", "delta", "due", "shown_as"),
    [
        # Madrid springs forward at 02:00 on 29 Mar 2026: one real hour reads as two.
        (PREMIUM_ES, local(MADRID, 2026, 3, 29, 1, 30), timedelta(hours=1),
         datetime(2026, 3, 29, 1, 30, tzinfo=UTC), "2026-03-29 03:30+02:00"),
        # Madrid falls back at 03:00 on 25 Oct 2026: 02:30 happens twice, an hour apart.
        (PREMIUM_ES, local(MADRID, 2026, 10, 25, 1, 30), timedelta(hours=1),
         datetime(2026, 10, 25, 0, 30, tzinfo=UTC), "2026-10-25 02:30+02:00"),
        (PREMIUM_ES, local(MADRID, 2026, 10, 25, 1, 30), timedelta(hours=2),
         datetime(2026, 10, 25, 1, 30, tzinfo=UTC), "2026-10-25 02:30+01:00"),
        # Office hours on the Monday after the change keep their local 09:00.
        (OFFICE_ES, local(MADRID, 2026, 3, 27, 16, 30), timedelta(hours=1),
         datetime(2026, 3, 30, 7, 30, tzinfo=UTC), "2026-03-30 09:30+02:00"),
        (OFFICE_ES, local(MADRID, 2026, 10, 23, 16, 30), timedelta(hours=1),
         datetime(2026, 10, 26, 8, 30, tzinfo=UTC), "2026-10-26 09:30+01:00"),
        # Santiago skips Sunday 6 Sep 00:00–01:00 and repeats Saturday 4 Apr 23:00–24:00.
        (PREMIUM_CL, local(SANTIAGO, 2026, 9, 5, 23, 30), timedelta(hours=1),
         datetime(2026, 9, 6, 4, 30, tzinfo=UTC), "2026-09-06 01:30-03:00"),
        (PREMIUM_CL, local(SANTIAGO, 2026, 4, 4, 22, 30), timedelta(hours=1),
         datetime(2026, 4, 5, 2, 30, tzinfo=UTC), "2026-04-04 23:30-03:00"),
        (PREMIUM_CL, local(SANTIAGO, 2026, 4, 4, 22, 30), timedelta(hours=2),
         datetime(2026, 4, 5, 3, 30, tzinfo=UTC), "2026-04-04 23:30-04:00"),
    ],
)  # fmt: skip
def test_dst_changes_neither_gain_nor_lose_time(
    calendar: BusinessCalendar, start: datetime, delta: timedelta, due: datetime, shown_as: str
) -> None:
    result = calendar.add_business_time(start, delta)
    assert result == due
    assert result.astimezone(calendar.zone).isoformat(" ", "minutes") == shown_as
    assert calendar.business_time_between(start, result) == delta


@pytest.mark.parametrize(
    ("calendar", "night_of", "shift_length"),
    [
        (NIGHTS_ES, date(2026, 3, 28), timedelta(hours=7)),  # clocks go forward in the shift
        (NIGHTS_ES, date(2026, 10, 24), timedelta(hours=9)),  # clocks go back in the shift
        (NIGHTS_ES, date(2026, 1, 10), timedelta(hours=8)),
        (NIGHTS_CL, date(2026, 9, 5), timedelta(hours=7)),  # Santiago jumps at midnight
        (NIGHTS_CL, date(2026, 4, 4), timedelta(hours=9)),
        (PREMIUM_ES, date(2026, 3, 28), timedelta(hours=23)),
        (PREMIUM_ES, date(2026, 10, 24), timedelta(hours=25)),
    ],
)
def test_a_shift_across_a_dst_change_lasts_its_real_length(
    calendar: BusinessCalendar, night_of: date, shift_length: timedelta
) -> None:
    # The night desk's service time from noon to the next noon is one whole shift.
    noon = datetime.combine(night_of, time(12), tzinfo=calendar.zone)
    next_noon = datetime.combine(night_of + timedelta(days=1), time(12), tzinfo=calendar.zone)
    assert calendar.business_time_between(noon, next_noon) == shift_length


def test_wall_times_in_a_dst_gap_resolve_to_the_jump() -> None:
    # Santiago, Sunday 6 Sep 2026: the clock goes from 23:59:59 Saturday to 01:00 Sunday.
    jump = datetime(2026, 9, 6, 4, 0, tzinfo=UTC)
    assert resolve_wall_time(date(2026, 9, 6), timedelta(0), SANTIAGO) == jump
    assert resolve_wall_time(date(2026, 9, 5), timedelta(hours=24), SANTIAGO) == jump
    assert resolve_wall_time(date(2026, 9, 6), timedelta(minutes=30), SANTIAGO) == jump
    # Madrid, 29 Mar 2026: 02:30 does not exist; the desk's clock reads 03:00 at 01:00 UTC.
    madrid_jump = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert resolve_wall_time(date(2026, 3, 29), timedelta(hours=2, minutes=30), MADRID) == (
        madrid_jump
    )
    # A repeated wall time resolves to its first occurrence.
    assert resolve_wall_time(date(2026, 10, 25), timedelta(hours=2, minutes=30), MADRID) == (
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    )


@pytest.mark.parametrize(
    ("calendar", "a", "b", "between"),
    [
        # Friday 17:00 to Monday 09:00: nothing counts.
        (OFFICE_CO, local(BOGOTA, 2026, 1, 16, 17), local(BOGOTA, 2026, 1, 19, 9), timedelta(0)),
        # A whole week of 5x8 with Monday a holiday is four days.
        (OFFICE_CO, local(BOGOTA, 2026, 1, 10), local(BOGOTA, 2026, 1, 17), timedelta(hours=32)),
        (PREMIUM_CO, local(BOGOTA, 2026, 1, 10), local(BOGOTA, 2026, 1, 17), timedelta(days=7)),
        # Reversed arguments give a negative figure.
        (OFFICE_CO, local(BOGOTA, 2026, 1, 14, 11), local(BOGOTA, 2026, 1, 14, 10),
         timedelta(hours=-1)),
    ],
)  # fmt: skip
def test_business_time_between(
    calendar: BusinessCalendar, a: datetime, b: datetime, between: timedelta
) -> None:
    assert calendar.business_time_between(a, b) == between


@pytest.mark.parametrize(
    ("calendar", "start", "days", "result"),
    [
        # Wednesday 10:00 + 3 días laborables → Monday 10:00.
        (OFFICE_CO, local(BOGOTA, 2026, 1, 14, 10), 3, local(BOGOTA, 2026, 1, 19, 10)),
        # Thursday 8 Jan + 3 skips the weekend and Reyes Magos → Wednesday 14 Jan.
        (OFFICE_CO, local(BOGOTA, 2026, 1, 8, 10), 3, local(BOGOTA, 2026, 1, 14, 10)),
        # Outside hours the clock time is kept: business days are dates, not hours.
        (OFFICE_CO, local(BOGOTA, 2026, 1, 14, 22), 1, local(BOGOTA, 2026, 1, 15, 22)),
        # Saturday counts from the next business day: + 1 is over once Monday has passed.
        (OFFICE_CO, local(BOGOTA, 2026, 1, 17, 10), 1, local(BOGOTA, 2026, 1, 20, 0)),
        (OFFICE_CO, local(BOGOTA, 2026, 1, 17, 10), 0, local(BOGOTA, 2026, 1, 19, 0)),
        # 7x24 is always open, but its business days still skip weekends and holidays.
        (PREMIUM_CO, local(BOGOTA, 2026, 1, 8, 10), 3, local(BOGOTA, 2026, 1, 14, 10)),
        (PREMIUM_CO, local(BOGOTA, 2026, 1, 5, 10), 5, local(BOGOTA, 2026, 1, 13, 10)),
        # The split-shift desk opens Saturdays, but a Saturday is not a día laborable.
        (SPLIT_CO, local(BOGOTA, 2026, 1, 16, 10), 1, local(BOGOTA, 2026, 1, 19, 10)),
        # Across Madrid's spring-forward weekend the local time is kept.
        (OFFICE_ES, local(MADRID, 2026, 3, 27, 10), 1, local(MADRID, 2026, 3, 30, 10)),
    ],
)
def test_add_business_days(
    calendar: BusinessCalendar, start: datetime, days: int, result: datetime
) -> None:
    assert calendar.add_business_days(start, days) == result


def test_premium_hours_ignore_holidays_but_business_days_do_not() -> None:
    reyes = date(2026, 1, 12)
    assert PREMIUM_CO.is_open(local(BOGOTA, 2026, 1, 12, 10))
    assert PREMIUM_CO.is_holiday(reyes)
    assert not PREMIUM_CO.is_business_day(reyes)
    assert not PREMIUM_CO.is_business_day(date(2026, 1, 10))  # Saturday


def test_extra_closed_dates_close_an_office_day() -> None:
    closed = BusinessCalendar.from_spec(
        "5x8", BOGOTA, country="CO", closed_dates=[date(2026, 1, 13)]
    )
    assert not closed.is_open(local(BOGOTA, 2026, 1, 13, 10))
    assert closed.next_opening(local(BOGOTA, 2026, 1, 10, 10)) == local(BOGOTA, 2026, 1, 14, 9)
    assert closed.add_business_days(local(BOGOTA, 2026, 1, 9, 10), 1) == local(
        BOGOTA, 2026, 1, 14, 10
    )


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [("7x24", (7, 24)), ("24x7", (7, 24)), ("5x8", (5, 8)), ("5 × 8", (5, 8)),
     ("15x7", (7, 15)), ("13x6", (6, 13))],
)  # fmt: skip
def test_parse_hours_spec(spec: str, parsed: tuple[int, int]) -> None:
    assert parse_hours_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["8x8", "0x8", "5x25", "5x0", "24/7", "", "cinco por ocho"])
def test_bad_hours_spec_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match=r"7x24|week|day"):
        parse_hours_spec(spec)


def test_from_spec_shapes() -> None:
    late = BusinessCalendar.from_spec("13x6", BOGOTA, opening=time(8))
    assert late.is_open(local(BOGOTA, 2026, 1, 17, 20, 59))  # Saturday, 08:00–21:00
    assert not late.is_open(local(BOGOTA, 2026, 1, 18, 10))  # Sunday
    overnight = BusinessCalendar.from_spec("5x8", BOGOTA, opening="20:00")
    assert overnight.is_open(local(BOGOTA, 2026, 1, 17, 3))  # Friday's shift ends Sat 04:00
    assert not overnight.is_open(local(BOGOTA, 2026, 1, 19, 3))  # nothing from Sunday night


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"zone": "America/Bogotá"}, "unknown time zone"),
        ({"country": "XX"}, "no public holidays"),
        ({"weekly_hours": {}}, "at least one opening"),
        ({"weekly_hours": {7: [(time(9), time(17))]}}, "weekday"),
        ({"weekly_hours": {0: [(time(9), time(9))]}}, "empty"),
    ],
)
def test_bad_calendars_are_refused(kwargs: dict, message: str) -> None:
    arguments: dict = {"zone": BOGOTA, "weekly_hours": {0: [(time(9), time(17))]}} | kwargs
    with pytest.raises(ValueError, match=message):
        BusinessCalendar(arguments.pop("zone"), arguments.pop("weekly_hours"), **arguments)


def test_negative_delta_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        OFFICE_CO.add_business_time(local(BOGOTA, 2026, 1, 13, 10), timedelta(hours=-1))


# Property: adding business time then measuring it gives the same figure back.
CALENDARS = [OFFICE_CO, OFFICE_NI, OFFICE_ES, PREMIUM_ES, PREMIUM_CL, NIGHTS_ES, NIGHTS_CL,
             SPLIT_CO]  # fmt: skip
instants = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
)
deltas = st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=300))


@settings(max_examples=300, deadline=None)
@given(calendar=st.sampled_from(CALENDARS), start=instants, delta=deltas)
def test_business_time_between_inverts_add_business_time(
    calendar: BusinessCalendar, start: datetime, delta: timedelta
) -> None:
    due = calendar.add_business_time(start, delta)
    assert due >= start
    assert calendar.business_time_between(start, due) == delta
    # The due time is inside opening hours or exactly at a closing time.
    assert calendar.is_open(due) or (
        delta > timedelta(0) and calendar.is_open(due - timedelta(microseconds=1))
    )


@settings(max_examples=200, deadline=None)
@given(calendar=st.sampled_from(CALENDARS), a=instants, b=instants, c=instants)
def test_business_time_adds_up_over_consecutive_periods(
    calendar: BusinessCalendar, a: datetime, b: datetime, c: datetime
) -> None:
    a, b, c = sorted((a, b, c))
    b_span = timedelta(days=20)
    b, c = min(b, a + b_span), min(c, a + 2 * b_span)  # keep examples fast
    assert calendar.business_time_between(a, b) + calendar.business_time_between(
        b, c
    ) == calendar.business_time_between(a, c)
    assert timedelta(0) <= calendar.business_time_between(a, c) <= c - a
