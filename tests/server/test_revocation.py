"""Revoking a token stops the work the node does on its behalf, on a real ``tierstore serve``.

Its calls are refused at once and its streams end at their next message
(tests/server/test_read_authority.py, test_put_authority.py); the access plans it
declared, which steer the prefetcher and the evictions for as long as their TTL (up to
a week) past the last report, end with the revocation too, and with the token's
lifetime at the latest. A plan another token of the same principal keeps (declared or
reported last) is that token's work, and stays.
"""

from __future__ import annotations

import pytest

from tierstore import errors
from tierstore.client.client import Client
from tierstore.types import Grant, Role, TracedClose

from .conftest import ServerProcess, poll, unique

SHARDS = [f"s{index}" for index in range(4)]
#: the lifetime of a token that is to run out during a test: room for a few calls first
BRIEF_TTL_S = 8.0
#: how long a node may take to end a plan once its token ran out (a prefetch pass)
END_WAIT_S = 60.0


def closed_jobs(admin: Client, dataset: str) -> set[str]:
    """The jobs whose plans over ``dataset`` the node's trace shows ended."""
    return {event.job for event in admin.export_trace(dataset) if isinstance(event, TracedClose)}


def readers(admin: Client, dataset: str) -> tuple[str, list[Grant]]:
    """A fresh principal's name, and the grants of a reader of ``dataset`` (given a few
    shards to plan over)."""
    for name in SHARDS:
        admin.put(dataset, name, b"x" * 100)
    return unique("trainer"), [Grant(dataset, Role.READER)]


def scoped(principal: str, job: str) -> str:
    """The node's id of ``principal``'s ``job`` (tierstore/server/placement.py)."""
    return f"{len(principal)}:{principal}/{job}"


def test_revoking_a_token_ends_the_access_plans_it_keeps(
    server: ServerProcess, admin: Client, dataset: str
) -> None:
    principal, grants = readers(admin, dataset)
    revoked_id, revoked = admin.create_token(principal, grants)
    _, other = admin.create_token(principal, grants)
    with server.connect(token=revoked, local_reads=False) as trainer:
        ended = trainer.declare_plan(dataset, shards=SHARDS, ttl_s=3600)
        handed_over = trainer.declare_plan(dataset, shards=SHARDS, ttl_s=3600)
    with server.connect(token=other, local_reads=False) as colleague:
        kept = colleague.declare_plan(dataset, shards=SHARDS, ttl_s=3600)
        colleague.report_position(handed_over, 1)  # now kept alive by this token

        admin.revoke_token(revoked_id)

        # The same principal's other token sees the revoked token's plan gone...
        with pytest.raises(errors.PlanNotFound):
            colleague.report_position(ended, 1)
        # ...and its own plans, and the one it took over, live on.
        colleague.report_position(kept, 2)
        colleague.report_position(handed_over, 2)
        colleague.close_plan(kept)
        colleague.close_plan(handed_over)
    # The node ended it (its policy no longer steers by it), in the trace's words.
    assert scoped(principal, ended) in closed_jobs(admin, dataset)


def test_a_plan_ends_when_the_token_keeping_it_runs_out(
    server: ServerProcess, admin: Client, dataset: str
) -> None:
    principal, grants = readers(admin, dataset)
    _, brief = admin.create_token(principal, grants, ttl_s=BRIEF_TTL_S)
    with server.connect(token=brief, local_reads=False) as trainer:
        job = trainer.declare_plan(dataset, shards=SHARDS, ttl_s=3600)
        trainer.report_position(job, 1)
    # Its hour of TTL notwithstanding, the plan ends with the token.
    poll(
        lambda: scoped(principal, job) in closed_jobs(admin, dataset),
        END_WAIT_S,
        "the plan to end with its token",
        interval_s=0.5,
    )
    _, lasting = admin.create_token(principal, grants)
    with (
        server.connect(token=lasting, local_reads=False) as colleague,
        pytest.raises(errors.PlanNotFound),
    ):
        colleague.report_position(job, 2)
