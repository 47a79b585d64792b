"""One caller's share of the node's workers, whatever its calls do.

Shard streams and the calls that wait on the archive each take a place of a bound of
their own (:mod:`tierstore.server.streamslots`, :mod:`tierstore.server.archivecalls`);
a caller's other calls took none. A review held a node with one reader's token, and
with a token of no grant at all: 64 ListDatasets calls that sent their headers and
never their request, each opened again as the node ended it (``request_arrival_s``,
10 s), kept all 32 workers, and every other caller's calls timed out, the admin's
RevokeToken (the way to stop it) too. So every authenticated call holds one of
:class:`CallerWorkers`'s places, one per worker, for as long as it runs (its request
read, its handler, its response stream sent), and one caller (a principal, by name)
holds at most its share of them (three quarters by default: 24 of 32; ``serve
--caller-share``, where 1 bounds nothing); past it a call is refused at once with
ServerBusy, which clients retry after a pause. A caller that stalls its calls then
holds up only its own: the node's other callers, the admin among them, have the
rest. Two callers that each take their share could still hold every worker between
them, the admin's way in too, so a few workers (:data:`KEPT_FOR_ADMINS`; a sixteenth
of a smaller pool than 32, none below 16) are kept for the node's admins (callers
with the admin role on every dataset): the calls of all other callers together hold
the rest at most, and one more of theirs is refused at once with ServerBusy. An admin
can then always revoke the tokens that hold the others, and see the node while they
do.

Thread safety: one bound serves every handler thread of a server.
"""

from __future__ import annotations

from tierstore.server.places import CALLER_SHARE, Places

__all__ = ["KEPT_FOR_ADMINS", "CallerWorkers"]

#: the workers kept for the node's admins' calls (in a pool of at least 32)
KEPT_FOR_ADMINS = 2


class CallerWorkers(Places):
    """A place per worker (``slots``: the server's pool), ``per_caller`` of them for one
    caller, and all but ``kept_for_admins`` of them (``group_bound``) for the calls of
    callers who are not the node's admins (the group: taken ``in_group``); taken by
    each authenticated call while it runs."""

    calls = "calls in progress"

    def __init__(self, slots: int, share: float = CALLER_SHARE) -> None:
        kept = min(KEPT_FOR_ADMINS, slots // 16)
        super().__init__(slots, share, group_bound=slots - kept)
        self.kept_for_admins = kept

    def _group_full(self) -> str:
        return (
            f"the node's callers hold {self.group_bound} of its {self.slots} calls in "
            f"progress, all but the {self.kept_for_admins} kept for its admins"
        )

    def _all_taken(self) -> str:
        # Not reached while places match workers: a call runs only on a free worker.
        return f"the node runs {self.slots} calls at once, and every worker is busy"
