"""Revoking a token stops the work the node does on its behalf, on a real ``tierstore serve``.

Its calls are refused at once and its streams end at their next message
(tests/server/test_read_authority.py, test_put_authority.py); the access plans it
declared, which steer the prefetcher and the evictions for as long as their TTL (up to
a week) past the last report, end with the revocation too. A plan another token of the
same principal keeps (declared or reported last) is that token's work, and stays.
"""

from __future__ import annotations

import pytest

from tierstore import errors
from tierstore.client.client import Client
from tierstore.types import Grant, Role, TracedClose

from .conftest import ServerProcess, unique

SHARDS = [f"s{index}" for index in range(4)]


def test_revoking_a_token_ends_the_access_plans_it_keeps(
    server: ServerProcess, admin: Client, dataset: str
) -> None:
    for name in SHARDS:
        admin.put(dataset, name, b"x" * 100)
    principal = unique("trainer")
    grants = [Grant(dataset, Role.READER)]
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
    closed = {event.job for event in admin.export_trace(dataset) if isinstance(event, TracedClose)}
    assert f"{len(principal)}:{principal}/{ended}" in closed
