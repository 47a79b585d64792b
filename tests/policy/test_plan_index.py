"""The plan book: last-entry flags, reference hand-back, positions and rates."""

from __future__ import annotations

import numpy as np

from tierstore.policy.plan_index import PlanBook


def book() -> tuple[PlanBook, list[list[int]]]:
    done: list[list[int]] = []
    return PlanBook(lambda slots: done.append(sorted(slots.tolist()))), done


def test_last_entries_and_done_slots() -> None:
    plans, done = book()
    job = plans.declare("job", np.array([4, 5, 4, 6], dtype=np.int32), 0.0)
    assert job.last.tolist() == [False, True, True, True]
    assert sorted(job.remaining().tolist()) == [4, 5, 6]
    plans.report("job", 2, 1.0)
    assert done == [[5]]  # 5 will not be read again; 4 will
    plans.observe(4)  # the next entry is 4: the read moves the job on
    assert job.position == 3
    assert done == [[5], [4]]
    plans.close("job")
    assert done == [[5], [4], [6]]
    assert len(plans) == 0


def test_redeclaring_hands_back_the_old_plan() -> None:
    plans, done = book()
    plans.declare("job", np.array([1, 2], dtype=np.int32), 0.0)
    plans.declare("job", np.array([3], dtype=np.int32), 0.0)
    assert done == [[1, 2]]
    assert len(plans) == 1


def test_reports_set_smoothed_rates_and_never_go_back() -> None:
    plans, _ = book()
    job = plans.declare("job", np.arange(100, dtype=np.int32), 0.0)
    plans.report("job", 10, 1.0)
    assert job.rate == 10.0
    plans.report("job", 30, 2.0)
    assert 10.0 < job.rate < 20.0
    plans.report("job", 5, 3.0)  # behind: position kept
    assert job.position == 30
    plans.report("job", 1000, 4.0)  # past the end: clamped
    assert job.position == 100


def test_unmeasured_jobs_borrow_the_mean_rate() -> None:
    plans, _ = book()
    measured = plans.declare("a", np.arange(50, dtype=np.int32), 0.0)
    fresh = plans.declare("b", np.arange(50, dtype=np.int32), 0.0)
    assert plans.rate(fresh) == 1.0
    plans.report("a", 8, 2.0)
    assert plans.rate(measured) == plans.rate(fresh) == 4.0
    plans.close("a")  # the rates are kept, not worked out per call: closing updates them
    assert plans.rate(fresh) == 1.0


def test_expiry_and_next_use() -> None:
    plans, done = book()
    plans.declare("old", np.array([1, 2], dtype=np.int32), 0.0)
    plans.declare("new", np.array([3, 1], dtype=np.int32), 5.0)
    due = plans.next_use(np.array([1, 2, 3, 9]))
    assert due.tolist() == [0.0, 1.0, 0.0, np.inf]
    plans.expire(now=12.0, ttl=10.0)
    assert done == [[1, 2]]
    assert plans.next_use(np.array([1, 2])).tolist() == [1.0, np.inf]
