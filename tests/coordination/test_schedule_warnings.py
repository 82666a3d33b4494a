"""Dashboard warnings: a job that fires while the lock is held; two jobs that collide."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from coordination.schedules import schedule_warnings

NOW = datetime(2024, 6, 3, 12, 0, tzinfo=UTC)  # a Monday


@dataclass
class Job:
    job_id: str
    cron: str
    timezone: str = "UTC"


def test_it_warns_about_a_job_that_fires_while_the_lock_is_held():
    jobs = [Job("soon", "30 12 * * *"), Job("later", "0 15 * * *")]
    warnings = schedule_warnings(jobs, NOW + timedelta(hours=1), now=NOW)
    assert [(w.kind, w.job_ids, w.runs) for w in warnings] == [
        ("lock_held", ("soon",), (datetime(2024, 6, 3, 12, 30, tzinfo=UTC),))
    ]
    assert warnings[0].message == (
        "soon fires at 2024-06-03 12:30 UTC while the lock is held (until 2024-06-03 13:00 UTC)"
    )


def test_it_reads_the_lock_window_against_local_run_times():
    # 15:30 in Riga (EEST, UTC+3) is 12:30 UTC: inside a lock held until 13:00 UTC.
    jobs = [Job("riga", "30 15 * * *", "Europe/Riga"), Job("utc", "30 15 * * *")]
    warnings = schedule_warnings(jobs, NOW + timedelta(hours=1), now=NOW)
    assert [w.job_ids for w in warnings] == [("riga",)]


def test_it_does_not_warn_when_the_lock_is_free_or_expired():
    jobs = [Job("soon", "30 12 * * *")]
    assert schedule_warnings(jobs, None, now=NOW) == []
    assert schedule_warnings(jobs, NOW - timedelta(minutes=1), now=NOW) == []


def test_it_does_not_warn_about_a_run_exactly_at_expiry():
    jobs = [Job("on-the-dot", "0 13 * * *")]
    assert schedule_warnings(jobs, NOW + timedelta(hours=1), now=NOW) == []


def test_it_warns_about_two_jobs_colliding_within_the_window():
    jobs = [Job("eval", "0 3 * * *"), Job("embed", "5 3 * * *"), Job("far", "0 9 * * *")]
    warnings = schedule_warnings(jobs, None, now=NOW)
    assert [(w.kind, w.job_ids, w.runs) for w in warnings] == [
        (
            "collision",
            ("eval", "embed"),
            (datetime(2024, 6, 4, 3, 0, tzinfo=UTC), datetime(2024, 6, 4, 3, 5, tzinfo=UTC)),
        )
    ]
    assert warnings[0].message == (
        "eval (2024-06-04 03:00 UTC) and embed (2024-06-04 03:05 UTC) fire within "
        "10 minutes of each other"
    )


def test_it_compares_jobs_in_different_timezones_in_utc():
    # 06:00 in Riga is 03:00 UTC in summer: the same moment as the UTC job.
    jobs = [Job("riga", "0 6 * * *", "Europe/Riga"), Job("utc", "0 3 * * *")]
    warnings = schedule_warnings(jobs, None, now=NOW)
    assert [(w.job_ids, w.runs[0] == w.runs[1]) for w in warnings] == [(("riga", "utc"), True)]


def test_it_honours_the_window_and_the_horizon():
    jobs = [Job("a", "0 3 * * *"), Job("b", "15 3 * * *")]
    assert schedule_warnings(jobs, None, now=NOW) == []
    assert len(schedule_warnings(jobs, None, timedelta(minutes=15), now=NOW)) == 1
    # Both fire at 03:00/03:15 tomorrow, 15 hours away: outside a 12-hour horizon.
    assert schedule_warnings(jobs, None, timedelta(minutes=15), timedelta(hours=12), now=NOW) == []


def test_it_warns_once_per_pair_and_never_about_a_job_with_itself():
    jobs = [Job("every-minute", "* * * * *"), Job("quarterly", "*/15 * * * *")]
    warnings = schedule_warnings(jobs, None, now=NOW)
    assert [w.job_ids for w in warnings] == [("every-minute", "quarterly")]
    assert all(len(set(w.job_ids)) == 2 for w in warnings)


def test_it_reports_both_kinds_together():
    jobs = [Job("eval", "30 12 * * *"), Job("embed", "35 12 * * *")]
    warnings = schedule_warnings(jobs, NOW + timedelta(hours=1), now=NOW)
    assert sorted((w.kind, w.job_ids) for w in warnings) == [
        ("collision", ("eval", "embed")),
        ("lock_held", ("embed",)),
        ("lock_held", ("eval",)),
    ]


def test_it_has_no_warnings_for_well_spaced_jobs_and_a_free_lock():
    jobs = [Job("a", "0 1 * * *"), Job("b", "0 5 * * *"), Job("c", "0 9 * * MON-FRI")]
    assert schedule_warnings(jobs, None, now=NOW) == []
    assert schedule_warnings([], NOW + timedelta(hours=5), now=NOW) == []


def test_it_skips_a_job_whose_stored_cron_no_longer_validates():
    jobs = [Job("broken", "61 * * * *"), Job("fine", "30 12 * * *")]
    warnings = schedule_warnings(jobs, NOW + timedelta(hours=1), now=NOW)
    assert [w.job_ids for w in warnings] == [("fine",)]
