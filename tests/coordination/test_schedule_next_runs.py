"""Next runs: computed in the job's timezone with cronsim, handed out in UTC.

Europe/Riga is UTC+2 in winter (EET) and UTC+3 in summer (EEST). On 2024-03-31 its
clocks jump from 03:00 to 04:00 (at 01:00 UTC): local 03:xx does not exist. On
2024-10-27 they fall back from 04:00 to 03:00 (at 01:00 UTC): local 03:xx happens
twice. cronsim follows Debian cron: a job at a fixed local time that falls into the
gap runs at the jump (04:00 local), and runs only once in the repeated hour; a job
that runs every hour or more often (`*` in minute or hour) is scheduled normally.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from arbiter.errors import InvalidInput
from coordination.schedules import next_runs, runs_between

RIGA = ZoneInfo("Europe/Riga")


@dataclass
class Job:
    cron: str
    timezone: str = "Europe/Riga"
    job_id: str = "job"


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_it_returns_utc_datetimes_for_a_plain_day():
    runs = next_runs(Job("0 3 * * *"), count=2, after=utc(2024, 1, 10, 12))
    assert runs == [utc(2024, 1, 11, 1), utc(2024, 1, 12, 1)]  # 03:00 EET = 01:00 UTC
    assert all(run.tzinfo is UTC for run in runs)


def test_it_runs_a_job_in_the_spring_gap_at_the_jump():
    runs = next_runs(Job("30 3 * * *"), count=3, after=utc(2024, 3, 29, 12))
    assert runs == [
        utc(2024, 3, 30, 1, 30),  # 03:30 EET
        utc(2024, 3, 31, 1, 0),  # 03:30 does not exist: 04:00 EEST, the moment of the jump
        utc(2024, 4, 1, 0, 30),  # 03:30 EEST
    ]


def test_it_keeps_a_job_before_the_spring_gap_at_its_local_time():
    runs = next_runs(Job("0 2 * * *"), count=3, after=utc(2024, 3, 29, 12))
    assert runs == [
        utc(2024, 3, 30, 0, 0),  # 02:00 EET
        utc(2024, 3, 31, 0, 0),  # 02:00 EET, an hour before the jump
        utc(2024, 3, 31, 23, 0),  # 02:00 EEST on 1 April
    ]


def test_it_skips_the_missing_hour_for_an_hourly_job_in_spring():
    runs = next_runs(Job("0 * * * *"), count=4, after=utc(2024, 3, 30, 23, 30))
    # 02:00 EET, then 04:00 EEST (03:00 never happens), 05:00, 06:00 EEST: one hour apart.
    assert runs == [utc(2024, 3, 31, h) for h in (0, 1, 2, 3)]
    assert [run.astimezone(RIGA).hour for run in runs] == [2, 4, 5, 6]


def test_it_runs_a_fixed_time_job_once_in_the_repeated_autumn_hour():
    runs = next_runs(Job("30 3 * * *"), count=3, after=utc(2024, 10, 26, 12))
    assert runs == [
        utc(2024, 10, 27, 0, 30),  # the first 03:30 (EEST); not again at 01:30 UTC (EET)
        utc(2024, 10, 28, 1, 30),  # 03:30 EET
        utc(2024, 10, 29, 1, 30),
    ]


def test_it_runs_an_hourly_job_in_both_autumn_three_oclocks():
    runs = next_runs(Job("0 * * * *"), count=4, after=utc(2024, 10, 26, 22, 30))
    assert runs == [utc(2024, 10, 26, 23), *(utc(2024, 10, 27, h) for h in (0, 1, 2))]
    assert [run.astimezone(RIGA).strftime("%H:%M%z") for run in runs] == [
        "02:00+0300",
        "03:00+0300",
        "03:00+0200",
        "04:00+0200",
    ]


def test_it_does_not_hand_back_a_past_run_when_asked_inside_the_repeated_hour():
    # 01:15 UTC is the second 03:15 local; the day's 03:30 already ran at 00:30 UTC.
    after = utc(2024, 10, 27, 1, 15)
    assert next_runs(Job("30 3 * * *"), count=1, after=after) == [utc(2024, 10, 28, 1, 30)]


def test_it_keeps_runs_every_fifteen_minutes_through_the_autumn_change():
    start = utc(2024, 10, 26, 23, 50)
    runs = runs_between(Job("*/15 * * * *"), start, utc(2024, 10, 27, 3))
    assert runs == [utc(2024, 10, 27) + timedelta(minutes=15 * i) for i in range(12)]


def test_it_counts_runs_strictly_after_the_given_moment():
    job = Job("0 3 * * *", timezone="UTC")
    assert next_runs(job, 1, after=utc(2024, 5, 1, 3)) == [utc(2024, 5, 2, 3)]
    assert next_runs(job, 1, after=utc(2024, 5, 1, 2, 59, 59, 999999)) == [utc(2024, 5, 1, 3)]


def test_it_finds_a_leap_day_years_ahead():
    runs = next_runs(Job("0 0 29 2 *", timezone="UTC"), count=2, after=utc(2025, 1, 1))
    assert runs == [utc(2028, 2, 29), utc(2032, 2, 29)]


def test_it_reads_weekday_ranges_in_local_time():
    # Monday 2024-06-03, 17:45 EEST = 14:45 UTC is the last run of that day.
    runs = next_runs(Job("*/15 9-17 * * MON-FRI"), count=2, after=utc(2024, 6, 3, 14, 40))
    assert runs == [utc(2024, 6, 3, 14, 45), utc(2024, 6, 4, 6, 0)]


def test_it_walks_forward_from_any_moment_without_repeats():
    job = Job("30 3 * * *")
    start = utc(2024, 10, 26, 22)
    for minutes in range(0, 6 * 60, 5):
        after = start + timedelta(minutes=minutes)
        runs = next_runs(job, 3, after=after)
        assert runs[0] > after
        assert runs == sorted(set(runs))


def test_it_refuses_naive_datetimes():
    with pytest.raises(ValueError):
        next_runs(Job("* * * * *"), 1, after=datetime(2024, 1, 1))


def test_it_reports_a_stored_row_that_no_longer_validates():
    with pytest.raises(InvalidInput) as caught:
        next_runs(Job("* * * * *", timezone="Atlantis/Capital"), 1, after=utc(2024, 1, 1))
    assert caught.value.field == "timezone"
