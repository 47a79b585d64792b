"""Holding ``fork()`` until no call of ours is inside gRPC.

gRPC's fork support prepares the library for ``fork()`` only when no other thread is
inside a gRPC call at that moment; otherwise it logs "Other threads are currently calling
into gRPC, skipping fork() handlers" and the child inherits gRPC state in the middle of an
operation — and its first channel can hang (seen here: a DataLoader forking its workers
while the main process's read-ahead threads were streaming shards hung 1 time in ~10).

(The child hangs in gRPC's own after-fork handler, cancelling the calls it inherited.)

So every call the client makes runs inside :data:`GATE` — each unary call, put and
whole shard read of :class:`tierstore.client.Client` (and the making, closing and
dropping of its channel, and of its stubs: they call into gRPC's core as well) — and a
``before`` fork handler waits until the calls in flight have finished (new ones wait until
the fork is done), at most ``MAX_WAIT_S`` — a call stalled longer than that does not hold
a fork forever; the fork then goes ahead as it would have without the gate, and the
parent logs a warning once it is made (so a child that hangs then is explained). The child
starts with an open gate: the threads that held it do not exist there. (The gate once
covered shard reads only; a thread listing shards or declaring a plan while a DataLoader
forked still hung a worker now and then. Then the DataLoader plugin's reads were gated
but not the client's own: a thread making a dataset, which reads a shard's first frame
for its schema, while a loader forked left a worker hung in the after-fork handler,
waiting for a channel lock that the parent's reading thread held at the fork — 2 runs
in 4.) The streams left outside are :meth:`~tierstore.client.Client.export_trace`'s and
:meth:`~tierstore.client.Client.iter_bytes`'s (after its first piece), which the caller
iterates: do not fork while one is open.

Order matters: gRPC's own ``before`` handler pauses its polling threads, after which our
calls in flight could never finish. ``before`` handlers run in the reverse order of
registration and gRPC registers its handlers when its first channel is made, so this
module makes (and closes) a channel first, and registers its handlers after gRPC's: ours
run first, while gRPC still moves the bytes.

The same goes for the standard library's ``before`` handlers that take a lock a call
in the gate may want: ``concurrent.futures.thread``'s (a local read starts its
verify-ahead thread with ``ThreadPoolExecutor.submit``, which takes that lock) and
``logging``'s. Registered after ours, they would run first, and the fork would hold
the lock a call in flight waits for, then wait for that call (seen: 40 s a fork,
when ``concurrent.futures.thread`` was first loaded by a read). This module imports
them before it registers, so their handlers run after ours. Running after ours, they
still wait for those locks: so nothing may wait for the gate while holding one. Garbage
collection does not choose where it runs: a dropped client's channel is closed by a
finalizer, on whatever thread allocates at that moment, once inside
``ThreadPoolExecutor.submit`` (which holds ``concurrent.futures``' global lock) while a
DataLoader forked, and the fork hung for good (1 run in about 80). Finalizers go through
:meth:`ForkGate.run_or_defer`, which never waits: while a fork is being prepared, the
channel is closed after it.

What the gate cannot hold is a thread starting or ending: pyarrow's default allocator,
mimalloc, takes a process-wide lock then and has no fork handlers, so a child forked at
that moment hung at its first Arrow allocation on a new thread. Importing this module
makes a fork-safe allocator pyarrow's default (:mod:`tierstore.client.arrowpool`).

Fork-safe by construction; thread-safe. Calls may nest (a shard read that asks for a data
key inside it); a thread must not fork while inside the gate (it would wait for itself
until ``MAX_WAIT_S``).
"""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401  (its fork handler must run after ours)
import logging  # (the same)
import os
from collections.abc import Callable

import grpc

from tierstore.client.arrowpool import use_fork_safe_pool
from tierstore.client.forklocks import ForkGate

__all__ = ["GATE", "MAX_WAIT_S", "ForkGate", "while_held_at_fork"]

log = logging.getLogger(__name__)

#: The longest a fork waits for calls in flight, in seconds.
MAX_WAIT_S = 30.0


#: The gate every call of the client passes through.
GATE = ForkGate()

ForkHandler = Callable[[], None]
#: Fork handlers run while the gate is held: ``(before, after_in_parent, after_in_child)``.
_held_handlers: list[tuple[ForkHandler, ForkHandler, ForkHandler]] = []


def while_held_at_fork(
    before: ForkHandler, after_in_parent: ForkHandler, after_in_child: ForkHandler
) -> None:
    """Register fork handlers of a part of the client whose work runs inside calls of
    the gate: ``before`` runs once the gate is held (so those calls have ended) and the
    ``after_*`` handlers before it opens again. The hot-tier map (a local shard read
    takes its lock) must not be held before the gate: a read already in the gate would
    wait for it, and the fork for the read — until ``MAX_WAIT_S``, measured at 30 s a
    fork. ``before`` handlers run in the reverse order of registration, the others in
    order, as with :func:`os.register_at_fork`."""
    _held_handlers.append((before, after_in_parent, after_in_child))


#: Calls still in flight when the last fork's wait (MAX_WAIT_S) expired; 0: none.
_left_at_fork = 0


def _before_fork() -> None:
    global _left_at_fork
    _left_at_fork = GATE.hold(MAX_WAIT_S)
    for before, _, _ in reversed(_held_handlers):
        before()


def _after_fork_in_parent() -> None:
    for _, after_in_parent, _ in _held_handlers:
        after_in_parent()
    left = _left_at_fork  # read while held: another fork may set it once released
    GATE.release()
    GATE.run_deferred()  # channels garbage collection closed while the fork was made
    if left:
        # Said here, not before the fork: a stalled call may hold a log handler's lock.
        log.warning(
            "fork() went ahead with %d client call%s still in flight after %g s (stalled; "
            "gRPC skipped its fork handlers): the child may hang in gRPC's after-fork "
            "handler or on its first channel",
            left,
            "" if left == 1 else "s",
            MAX_WAIT_S,
        )


def _after_fork_in_child() -> None:
    GATE.reset()
    for _, _, after_in_child in _held_handlers:
        after_in_child()


use_fork_safe_pool()  # a child forked as a thread starts or ends must allocate (above)

# gRPC's fork handlers first (a channel's creation registers them; it connects nowhere).
grpc.insecure_channel("127.0.0.1:1").close()
os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
