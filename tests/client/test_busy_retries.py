"""A call the server refused as busy (ServerBusy: its shard streams' places all taken,
nothing of the call done) is made again, paused a little longer each time, until it is
served or BUSY_WAIT_S has passed, even one that must not be made twice, such as a put;
another UNAVAILABLE of such a call is not (the server may have done it). Against a
real server: more gets and puts at once than it has places all complete."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.server.servers import serving
from tierstore import errors
from tierstore.client import failures
from tierstore.client.connect import connect
from tierstore.client.putvalue import OnePassFrames
from tierstore.server.streamslots import ShardStreams
from tierstore.types import DatasetSettings, Role
from tierstore.wire.status import ERROR_HEADER


class Refused(grpc.RpcError):
    """A failed call as grpc raises it: UNAVAILABLE, naming ``name`` in its trailers."""

    def __init__(self, name: str) -> None:
        self._name = name

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return f"refused as {self._name}"

    def trailing_metadata(self) -> Any:
        return ((ERROR_HEADER, self._name),) if self._name else ()


class Clock:
    """``time`` for the retry loop: sleeping moves it on, at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(failures, "time", fake)
    return fake


def refused_then_answered(name: str, refusals: int) -> tuple[list[int], Any]:
    made: list[int] = []

    def attempt() -> str:
        made.append(1)
        if len(made) <= refusals:
            raise Refused(name)
        return "stored"

    return made, attempt


def test_a_put_refused_as_busy_is_made_again_pausing_longer_each_time(clock: Clock) -> None:
    made, attempt = refused_then_answered("ServerBusy", 8)
    assert failures.retried(attempt, False, changes="the put of d/s") == "stored"
    assert len(made) == 9
    assert clock.pauses[-1] > clock.pauses[0]  # backed off (jittered)
    assert max(clock.pauses) <= failures.BUSY_PAUSES_S[1]


def test_a_put_that_failed_otherwise_is_not_made_again(clock: Clock) -> None:
    for name in ("Unavailable", ""):  # the node went away part way: it may have stored it
        made, attempt = refused_then_answered(name, 1)
        with pytest.raises(errors.Unavailable) as caught:
            failures.retried(attempt, False, changes="the put of d/s")
        assert len(made) == 1
        assert type(caught.value) is errors.Unavailable


def test_a_node_busy_past_the_wait_or_the_deadline_says_so(clock: Clock) -> None:
    _, attempt = refused_then_answered("ServerBusy", 10_000)
    with pytest.raises(errors.ServerBusy):
        failures.retried(attempt, False, changes="the put of d/s")
    # To the end, less the time the last attempt is left (with none, it failed
    # DEADLINE_EXCEEDED, "outcome unknown", hiding the refusals before it).
    last = failures._LAST_ATTEMPT_S
    assert clock.now == pytest.approx(failures.BUSY_WAIT_S - last)
    for deadline in (5.0, 1.0):  # a read's own deadline comes first, even a short one
        clock.now, clock.pauses = 0.0, []
        with pytest.raises(errors.ServerBusy):
            failures.retried(attempt, True, deadline=deadline)
        assert clock.now == pytest.approx(deadline - last)
        clock.now, clock.pauses = 0.0, []
        with pytest.raises(errors.ServerBusy):
            failures.retried(attempt, True, busy_deadline=deadline)  # a unary call's
        assert clock.now == pytest.approx(deadline - last)


def test_a_unary_call_s_deadline_does_not_cut_its_pauses_for_an_unreachable_node(
    clock: Clock,
) -> None:
    # Each attempt of a unary call has the whole timeout: its pauses for a node that
    # could not be reached (one restarting) keep their length past the first's deadline;
    # cut, they came back to back, with none of the 1.5 s a restart is given.
    _, attempt = refused_then_answered("Unavailable", 10)
    with pytest.raises(errors.Unavailable):
        failures.retried(attempt, True, busy_deadline=0.1)
    assert clock.pauses == list(failures.RETRY_DELAYS_S)


def test_a_streamed_put_refused_as_busy_says_so() -> None:
    # gRPC takes frames to send before the refusal comes: a reader's put cannot be made
    # again, and its error said it had failed to reach the server.
    frames = OnePassFrames(iter([b"a", b"b"]))
    frames.check_unread("the put of d/s", busy=True)  # nothing taken: may be made again
    assert list(frames) == [b"a", b"b"]
    with pytest.raises(errors.ServerBusy, match="refused by a busy node"):
        frames.check_unread("the put of d/s", busy=True)
    with pytest.raises(errors.Unavailable, match="failed to reach the server") as other:
        frames.check_unread("the put of d/s")
    assert type(other.value) is errors.Unavailable


def test_more_transfers_at_once_than_the_node_has_places_all_complete(tmp_path: Path) -> None:
    # They used to wait in gRPC's queue; refused as busy, they wait in the client's.
    # (A first version gave up after the 1.5 s of retries of other failures.)
    workers = 4
    places = ShardStreams.for_workers(workers).slots
    data = bytes(range(256)) * (8 << 12)  # 8 MiB: 2,048 frames of this node's 4 KiB
    with serving(
        tmp_path, insecure=True, max_workers=workers, datasets={"d": DatasetSettings()}
    ) as running:
        running.store.put("d", "big", data)
        token = running.token("rw", ("d", Role.WRITER))
        start = threading.Barrier(4 * places)

        def get(_: int) -> bool:
            with connect(running.address, token=token, insecure=True, local_reads=False) as c:
                start.wait(30)
                return bytes(c.get("d", "big")) == data

        def put(number: int) -> bool:
            with connect(
                running.address, token=token, insecure=True, local_reads=False, frame_bytes=4096
            ) as c:
                start.wait(30)
                c.put("d", f"new-{number}", data[: 1 << 20])
                return True

        with ThreadPoolExecutor(4 * places) as pool:
            gets = pool.map(get, range(3 * places))
            puts = pool.map(put, range(places))
            assert all(gets) and all(puts)
        for number in range(places):
            assert running.store.get("d", f"new-{number}").to_bytes() == data[: 1 << 20]


def test_a_put_to_a_node_that_stays_busy_ends_at_its_stream_deadline(tmp_path: Path) -> None:
    # The put waited out BUSY_WAIT_S (120 s) whatever its stream_timeout_s: a review's
    # put with a 2 s deadline returned after 60 s, when the node let the held streams go.
    workers = 4
    places = ShardStreams.for_workers(workers).slots
    with serving(
        tmp_path, insecure=True, max_workers=workers, datasets={"d": DatasetSettings()}
    ) as running:
        running.store.put("d", "big", bytes(8 << 20))
        tokens = [running.token(f"t{i}", ("d", Role.WRITER)) for i in range(2)]
        clients = [
            connect(running.address, token=token, insecure=True, local_reads=False)
            for token in tokens
        ]
        share = max(1, int(places * 0.75))
        held = [clients[0].iter_bytes("d", "big") for _ in range(share)]
        held += [clients[1].iter_bytes("d", "big") for _ in range(places - share)]
        try:
            clients[1].stream_timeout_s = 2.0
            started = time.monotonic()
            with pytest.raises(errors.ServerBusy):
                clients[1].put("d", "small", b"x" * 10)
            assert time.monotonic() - started < 20  # its deadline, not the 120 s wait
        finally:
            for stream in held:
                stream.close()
            for client in clients:
                client.close()
