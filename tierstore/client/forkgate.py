"""Holding ``fork()`` until no call of ours is inside gRPC.

gRPC's fork support prepares the library for ``fork()`` only when no other thread is
inside a gRPC call at that moment; otherwise it logs "Other threads are currently calling
into gRPC, skipping fork() handlers" and the child inherits gRPC state in the middle of an
operation — and its first channel can hang (seen here: a DataLoader forking its workers
while the main process's read-ahead threads were streaming shards hung 1 time in ~10).

(The child hangs in gRPC's own after-fork handler, cancelling the calls it inherited.)

So every call the client makes runs inside :data:`GATE` — each unary call and put in
:class:`tierstore.client.Client`, each whole shard read of the DataLoader plugin — and a
``before`` fork handler waits until the calls in flight have finished (new ones wait until
the fork is done), at most ``MAX_WAIT_S`` — a call stalled longer than that does not hold
a fork forever; the fork then goes ahead as it would have without the gate. The child
starts with an open gate: the threads that held it do not exist there. (The gate once
covered shard reads only; a thread listing shards or declaring a plan while a DataLoader
forked still hung a worker now and then.)

Order matters: gRPC's own ``before`` handler pauses its polling threads, after which our
calls in flight could never finish. ``before`` handlers run in the reverse order of
registration and gRPC registers its handlers when its first channel is made, so this
module makes (and closes) a channel first, and registers its handlers after gRPC's: ours
run first, while gRPC still moves the bytes.

Fork-safe by construction; thread-safe. Calls may nest (a shard read that asks for a data
key inside it); a thread must not fork while inside the gate (it would wait for itself
until ``MAX_WAIT_S``).
"""

from __future__ import annotations

import os
from functools import partial

import grpc

from tierstore.client.forklocks import ForkGate

__all__ = ["GATE", "MAX_WAIT_S", "ForkGate"]

#: The longest a fork waits for calls in flight, in seconds.
MAX_WAIT_S = 30.0


#: The gate every call of the client passes through.
GATE = ForkGate()

# gRPC's fork handlers first (a channel's creation registers them; it connects nowhere).
grpc.insecure_channel("127.0.0.1:1").close()
os.register_at_fork(
    before=partial(GATE.hold, MAX_WAIT_S), after_in_parent=GATE.release, after_in_child=GATE.reset
)
