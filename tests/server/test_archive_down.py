"""A node whose archive went away: it still starts and serves its hot tier, and a cold
read fails once, with ArchiveUnavailable.

The server retries the archive itself (the S3 client's attempts), so when its answer is
ArchiveUnavailable the client must not send the read again: against an archive that
accepts connections and never answers, each try costs the whole of the server's retry
budget. (The client retried it as if the server were down: 5 tries of one read.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.tiers.test_seaweedkeeper import cmdline
from tierstore import errors
from tierstore.cli.startcheck import through_embedded_restarts
from tierstore.crypto import LocalKeyring
from tierstore.tiers.s3 import S3Tier
from tierstore.tiers.seaweedfs import SeaweedServer
from tierstore.tiers.seaweedkeeper import SeaweedKeeper
from tierstore.types import Grant, Role

from .conftest import (
    ServerProcess,
    archived_keys,
    children,
    endpoint,
    free_port,
    poll,
    silent_archive,
    unique,
    with_flag,
)


def scrape_metrics(node: ServerProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def test_a_cold_read_of_a_node_whose_archive_is_gone_is_tried_once(
    tmp_path: Path,
    seaweedfs: SeaweedServer,
    s3_bucket: str,
    spawn_server: Callable[..., ServerProcess],
) -> None:
    # (The archive is taken away behind a proxy: an embedded one killed is started again.)
    node, proxy = node_behind_a_switch(tmp_path, seaweedfs, s3_bucket, spawn_server, "gone")
    dataset = unique()
    with node.connect(local_reads=False) as client:
        client.create_dataset(dataset, encrypted=False, durability="write-through")
        client.put(dataset, "s", os.urandom(3 << 20))
        client.evict(dataset, "s")
        assert not client.stat(dataset, "s").hot
        proxy.down()
        with pytest.raises(errors.ArchiveUnavailable):
            client.get(dataset, "s")
    node.stop()
    reads = [
        line
        for line in node.errors().splitlines()
        if "method=/tierstore.v1.ShardService/GetShard" in line
    ]
    assert len(reads) == 1 and "outcome=UNAVAILABLE" in reads[0], reads


def test_an_embedded_archive_that_dies_is_started_again(
    tmp_path: Path, spawn_server: Callable[..., ServerProcess]
) -> None:
    # Killed on its own, it stayed a zombie: cold reads and write-through calls failed
    # until the node was restarted, with nothing in the log that said why.
    node = spawn_server(tmp_path / "node", embedded=True)
    dataset = unique()
    data = os.urandom(3 << 20)
    with node.connect(local_reads=False) as client:
        client.create_dataset(dataset, encrypted=False, durability="write-through")
        client.put(dataset, "s", data)
        client.evict(dataset, "s")
        (archive,) = children(node.pid)  # the embedded SeaweedFS
        os.kill(archive, signal.SIGKILL)
        poll(lambda: "the embedded archive is running again" in node.errors(), 60, "a restart")
        assert "the embedded archive (weed) exited with status -9" in node.errors()
        # One new weed, once the restart's short-lived processes are gone (a CI run once
        # saw two children here, right after the restart's log line).
        poll(
            lambda: len(children(node.pid)) == 1 and archive not in children(node.pid),
            30,
            "one archive process, a new one",
        )
        assert client.get(dataset, "s").to_pybytes() == data  # a cold read, from it
        assert client.put(dataset, "t", b"archived again").archived


def test_a_start_whose_embedded_archive_died_is_tried_again_once_it_answers(
    tmp_path: Path,
) -> None:
    # A new node refused to start when its weed died in its first second: the start's
    # archive calls failed before the keeper had started weed again.
    stopping = threading.Event()
    with SeaweedServer(tmp_path / "weed") as server:
        tier = S3Tier(server.s3_settings("made-by-the-start"))
        # Slow to restart: the start's own S3 retries (about 2 s) give up first.
        keeper = SeaweedKeeper(server, interval_s=3, until=stopping).start()
        try:
            kill_weed(server)
            calls: list[float] = []

            def start() -> int:
                calls.append(time.monotonic())
                tier.ensure_bucket()
                return server.launches

            assert through_embedded_restarts(start, server, stopping) == 2
            assert len(calls) >= 2
            poll(lambda: keeper.restarts == 1, 10, "the keeper's count")
            tier.put("k", b"after the restart")
            assert tier.get("k") == b"after the restart"

            # With weed running throughout, or an external archive, a failure is final.
            def refused() -> int:
                calls.append(time.monotonic())
                raise errors.ArchiveUnavailable("refused")

            for embedded in (server, None):
                calls.clear()
                with pytest.raises(errors.ArchiveUnavailable, match="refused"):
                    through_embedded_restarts(refused, embedded, stopping)
                assert len(calls) == 1

            # A node told to stop meanwhile: its weed is not started again, and the
            # start gives up at once rather than waiting out the minute.
            stopping.set()
            keeper.stop()
            kill_weed(server)
            began = time.monotonic()
            with pytest.raises(errors.ArchiveUnavailable):
                through_embedded_restarts(start, server, stopping)
            assert time.monotonic() - began < 30  # (the S3 retries' own time)
        finally:
            keeper.stop()


def kill_weed(server: SeaweedServer) -> None:
    """SIGKILL ``server``'s weed and wait until it is gone."""
    process = server._process
    assert process is not None
    process.kill()
    poll(lambda: not server.running, 10, "weed gone")


def test_a_new_node_whose_embedded_archive_is_killed_as_it_starts_starts_all_the_same(
    tmp_path: Path,
) -> None:
    # The node's first weed killed as soon as it runs: the node starts on a second one,
    # and serves from it.
    node = ServerProcess(tmp_path / "node")
    killed: list[int] = []
    done = threading.Event()

    def kill_the_first_weed() -> None:
        while not done.is_set() and not killed:
            process = node.process
            for pid in children(process.pid) if process is not None else []:
                if is_weed(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_the_first_weed, daemon=True)
    killer.start()
    try:
        node.start()
    finally:
        done.set()
        killer.join(10)
    try:
        assert len(killed) == 1, str(node)
        assert "weed was stopped (status -9) before S3 answered" in node.errors()
        dataset = unique()
        with node.connect(local_reads=False) as client:
            client.create_dataset(dataset, encrypted=False, durability="write-through")
            assert client.put(dataset, "s", b"archived").archived
            client.evict(dataset, "s")
            assert client.get(dataset, "s").to_pybytes() == b"archived"
    finally:
        node.stop()


def is_weed(pid: int) -> bool:
    """Whether process ``pid`` runs ``weed mini`` (not, say, a child not yet exec'd)."""
    try:
        words = cmdline(pid)
    except OSError:
        return False
    return bool(words) and Path(words[0]).name == "weed" and "mini" in words


def node_behind_a_switch(
    tmp_path: Path,
    seaweedfs: SeaweedServer,
    s3_bucket: str,
    spawn_server: Callable[..., ServerProcess],
    name: str,
) -> tuple[ServerProcess, SwitchableProxy]:
    """A node whose archive is reached through a proxy the test can take down (up now)."""
    s3 = seaweedfs.s3_settings(s3_bucket, prefix=f"{unique(name)}/")
    target = urlsplit(s3.endpoint_url)
    proxy = SwitchableProxy((target.hostname or "127.0.0.1", target.port or 80))
    proxy.up()
    node = spawn_server(
        tmp_path / "node",
        *("--s3-endpoint", proxy.url, "--bucket", s3.bucket, "--prefix", s3.prefix),
        *("--s3-access-key", s3.access_key_id, "--s3-secret-key", s3.secret_access_key),
        embedded=True,  # (no archive flags of the fixture's own)
    )
    return node, proxy


class SwitchableProxy:
    """A TCP forwarder on 127.0.0.1 to ``target`` that can be taken down (connections
    refused, those open cut) and brought up again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            listener.close()
        with self._lock:
            for connection in self._open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # taken down
            server = socket.create_connection(self.target)
            with self._lock:
                self._open += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def test_a_node_whose_archive_is_unreachable_starts_and_serves_its_hot_tier(
    tmp_path: Path,
    seaweedfs: SeaweedServer,
    s3_bucket: str,
    spawn_server: Callable[..., ServerProcess],
) -> None:
    # It refused to start ("HEAD bucket: unreachable"), though every shard was on its disk.
    s3 = seaweedfs.s3_settings(s3_bucket, prefix=f"{unique('down')}/")
    target = urlsplit(s3.endpoint_url)
    proxy = SwitchableProxy((target.hostname or "127.0.0.1", target.port or 80))
    proxy.up()
    archive = (
        *("--s3-endpoint", proxy.url, "--bucket", s3.bucket, "--prefix", s3.prefix),
        *("--s3-access-key", s3.access_key_id, "--s3-secret-key", s3.secret_access_key),
    )
    node = spawn_server(tmp_path / "node", *archive, embedded=True)
    dataset, through = unique(), unique()
    with node.connect(local_reads=False) as client:
        client.create_dataset(dataset, encrypted=False)
        client.create_dataset(through, encrypted=False, durability="write-through")
        client.put(through, "first", b"archived as it is put")
        client.put(dataset, "archived", b"in both tiers")
        poll(lambda: client.stat(dataset, "archived").archived, 30, "the first upload")
        proxy.down()
        client.put(dataset, "local", b"acknowledged while the archive was down")
    node.stop()

    node.start()  # the archive still down
    assert "the archive is unreachable" in node.output(), node.output()
    with node.connect(local_reads=False) as client:
        assert client.get(dataset, "archived").to_pybytes() == b"in both tiers"
        assert (
            client.get(dataset, "local").to_pybytes() == b"acknowledged while the archive was down"
        )
        assert not client.stat(dataset, "local").archived
        # Operators see why the backlog does not drain, not only its size: the reason for
        # a caller with a role on "*", that there is one for others; and /metrics.
        poll(lambda: client.stats()["archive_error"], 30, "the held upload to be reported")
        assert "not checked against the archive" in client.stats()["archive_error"]
        _, token = client.create_token("stats-reader", [Grant(dataset, Role.READER)])
        with node.connect(token=token, local_reads=False) as reader:
            assert "shown to a caller with a role on '*'" in reader.stats()["archive_error"]
        assert "tierstore_archive_failing 1.0" in scrape_metrics(node)
        proxy.up()
        poll(
            lambda: client.stat(dataset, "local").archived, 60, "the mover once the archive is back"
        )
        assert client.put(through, "second", b"archived again").archived
        assert client.stats()["archive_error"] is None
        assert "tierstore_archive_failing 0.0" in scrape_metrics(node)
    assert "uploads run" in node.errors(), node.errors()[-2000:]
    node.stop()

    # Under other keys nothing reaches the archive, sealed under them, before the check
    # has passed (write-through puts and deletes included: they ran their journal
    # entries themselves), nor after it failed; the journal keeps what waits.
    proxy.down()
    LocalKeyring.generate_file(tmp_path / "other.keys", key_id="k1")
    node.extra_args = (*node.extra_args, "--master-key-file", str(tmp_path / "other.keys"))
    node.start()
    before = archived_keys(s3)
    with node.connect(local_reads=False) as client:
        client.put(dataset, "later", b"waits for the right keys")
        proxy.up()
        held = "not checked against the archive|uploads stay held"  # before, or once it failed
        # Done here, not in the archive yet: said so, for a caller to count them done.
        with pytest.raises(errors.NotArchivedYet, match=held):
            client.put(through, "unchecked", b"not under these keys")
        poll(lambda: "uploads stay held" in node.errors(), 60, "the check to fail")
        with pytest.raises(errors.NotArchivedYet, match="uploads stay held"):
            client.put(through, "refused", b"not under these keys")
        assert not client.stat(through, "refused").archived  # stored here
        with pytest.raises(errors.NotArchivedYet, match="uploads stay held"):
            client.delete(through, "first")
        with pytest.raises(errors.ShardNotFound):
            client.stat(through, "first")  # deleted here
        assert not client.stat(dataset, "later").archived
        assert client.stats()["journal_entries"] >= 1
    assert archived_keys(s3) == before  # nothing written, nothing deleted
    node.stop()
    proxy.down()


@pytest.mark.timeout(180)
def test_a_node_whose_archive_answers_nothing_serves_its_hot_tier_at_once(
    tmp_path: Path, spawn_server: Callable[..., ServerProcess]
) -> None:
    # An archive that takes connections and answers nothing held the start for each of
    # its calls' time-outs and retries (5 minutes for the bucket, 5 for the keys).
    data_dir = tmp_path / "node"
    first = spawn_server(data_dir)
    with first.connect() as client:
        client.create_dataset("ds", encrypted=False)
        client.put("ds", "hot", b"on the node's own disk")
    assert first.stop() == 0
    with silent_archive() as silent:
        node = with_flag(first, "--s3-endpoint", endpoint(silent))
        try:
            node.start()  # within START_TIMEOUT_S
            assert "the archive is unreachable" in node.output(), node.output()
            with node.connect() as client:
                assert client.get("ds", "hot").to_pybytes() == b"on the node's own disk"
            assert node.stop() == 0
        finally:
            node.kill()


def test_a_node_restarted_with_keys_its_archive_refuses_says_it_is_refused(
    tmp_path: Path, spawn_server: Callable[..., ServerProcess]
) -> None:
    # Its archive's keys changed (a Secret updated, say), the node restarted with the
    # old ones served its hot tier, saying the archive was "unreachable": it answers,
    # and refuses, and only a restart with the right keys ends it.
    first = spawn_server(tmp_path / "node")
    with first.connect() as client:
        client.create_dataset("ds", encrypted=False)
        client.put("ds", "hot", b"on the node's own disk")
    assert first.stop() == 0
    node = with_flag(first, "--s3-secret-key", "not-the-archive-s-secret")
    try:
        node.start()
        assert "the archive refuses this node" in node.output(), node.output()
        assert "refused access key" in node.output()
        assert "restart the node once its archive settings are right" in node.output()
        assert "unreachable" not in node.output()
        with node.connect() as client:
            assert client.get("ds", "hot").to_pybytes() == b"on the node's own disk"
        assert node.stop() == 0
    finally:
        node.kill()


def test_a_new_node_whose_archive_is_unreachable_does_not_start(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    node = ServerProcess(tmp_path / "node", ("--s3-endpoint", dead, "--bucket", "bkt"))
    with pytest.raises(AssertionError, match="exited with 5"):
        node.start()
    assert "ArchiveUnavailable" in node.errors()
