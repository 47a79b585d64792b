"""The embedded archive is started again when its process dies on its own.

A node's ``weed`` child killed (SIGKILL, the OOM killer) stayed a zombie: cold reads and
write-through calls failed and the journal grew until someone restarted the node, with
nothing in the log that said why (tierstore/tiers/seaweedkeeper.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from tierstore.errors import ArchiveUnavailable
from tierstore.tiers.s3 import S3Tier
from tierstore.tiers.seaweedfs import SeaweedServer, find_weed_binary
from tierstore.tiers.seaweedkeeper import SeaweedKeeper

pytestmark = pytest.mark.skipif(find_weed_binary() is None, reason="weed binary not installed")


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def held_again(tier: S3Tier, timeout_s: float = 60.0) -> bytes:
    """Object "k" once the restarted weed serves it: its S3 port answers before its
    volume has registered again, and GETs meanwhile answer 500 (polled, with a deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return bytes(tier.get("k") or b"")
        except ArchiveUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def weed_pid(server: SeaweedServer) -> int:
    return int((server.data_dir / "weed.pid").read_text().split()[0])


def test_a_killed_weed_is_started_again_on_its_ports_with_its_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with SeaweedServer(tmp_path / "weed") as server:
        port, first = server.s3_port, weed_pid(server)
        tier = S3Tier(server.s3_settings("kept"))
        keeper = SeaweedKeeper(server, interval_s=0.1).start()
        try:
            tier.ensure_bucket()
            tier.put("k", b"acknowledged before the crash")
            with caplog.at_level(logging.WARNING, logger="tierstore.tiers.seaweedkeeper"):
                os.kill(first, signal.SIGKILL)
                deadline = time.monotonic() + 60
                while keeper.restarts == 0 and time.monotonic() < deadline:
                    time.sleep(0.05)
            assert keeper.restarts == 1 and server.running
            assert server.s3_port == port and weed_pid(server) != first
            assert "the embedded archive (weed) exited with status -9" in caplog.text
            # The node's client reaches it where it was, and finds what it held.
            assert held_again(tier) == b"acknowledged before the crash"
            # Weed's socket folder in /tmp went too (a cleaner): every restart failed.
            second = weed_pid(server)
            socket = next(arg for arg in cmdline(second) if "localSocket=" in arg)
            shutil.rmtree(Path(socket.split("=", 1)[1]).parent)
            os.kill(second, signal.SIGKILL)
            deadline = time.monotonic() + 60
            while keeper.restarts == 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert keeper.restarts == 2 and server.running
            assert held_again(tier) == b"acknowledged before the crash"
        finally:
            keeper.stop()
            tier.close()


def test_a_weed_stopped_with_its_node_is_not_started_again(tmp_path: Path) -> None:
    stopping = threading.Event()
    with SeaweedServer(tmp_path / "weed") as server:
        keeper = SeaweedKeeper(server, interval_s=0.1, until=stopping).start()
        stopping.set()  # the node stops, and weed with it
        os.kill(weed_pid(server), signal.SIGINT)
        deadline = time.monotonic() + 30
        while server.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.running
        time.sleep(0.5)  # five of the keeper's intervals, had it still been watching
        keeper.stop()
        assert keeper.restarts == 0 and not server.running


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_weed_started_again_outlives_the_keepers_thread(tmp_path: Path) -> None:
    """Linux sends weed its parent-death signal when the thread that started it ends (not
    its process): a weed the keeper's thread started again was sent SIGTERM as the keeper
    stopped, at the start of a node's stop, while calls in flight and the store's close
    still needed the archive. A wrapper records each SIGTERM it is sent."""
    terms = tmp_path / "terms"
    binary = tmp_path / "weed"
    binary.write_text(
        "#!/bin/sh\n"
        f"trap 'echo $$ >> {terms}; kill -TERM $child; wait $child; exit 0' TERM\n"
        f'{find_weed_binary()} "$@" &\n'
        "child=$!\n"
        "wait $child\n"
    )
    binary.chmod(0o755)
    with SeaweedServer(tmp_path / "data", binary=binary) as server:
        tier = S3Tier(server.s3_settings("outlives"))
        keeper = SeaweedKeeper(server, interval_s=0.1).start()
        try:
            tier.ensure_bucket()
            tier.put("k", b"kept")
            wrapper = weed_pid(server)
            os.kill(children_of(wrapper)[0], signal.SIGKILL)  # weed itself
            deadline = time.monotonic() + 60
            while keeper.restarts == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert keeper.restarts == 1
        finally:
            keeper.stop()
        restarted = weed_pid(server)
        # A signal sent as the keeper's thread ended reaches the wrapper at once; a few
        # seconds on, none has, and the archive still serves.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert not terms.exists(), f"weed {terms.read_text().split()} was sent SIGTERM"
            time.sleep(0.05)
        assert server.running
        assert held_again(tier) == b"kept"
        tier.close()
    assert terms.read_text().split() == [str(restarted)]  # the server's stop, and only it


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_port_taken_while_weed_was_down_is_replaced_on_restart(tmp_path: Path) -> None:
    """Another program (another node's weed picking ports) may take one of weed's ports
    while it is down: every restart then failed on it, and the archive stayed down until
    the node was restarted. Only the S3 port, where clients reach weed, must stay."""
    with SeaweedServer(tmp_path / "weed") as server:
        tier = S3Tier(server.s3_settings("kept"))
        try:
            tier.ensure_bucket()
            tier.put("k", b"kept")
            s3_port, master_port = server.s3_port, server._ports["master"]
            process = server._process
            assert process is not None
            process.kill()
            process.wait()
            with socket.socket() as holder:
                holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                holder.bind(("127.0.0.1", master_port))
                holder.listen()
                server.restart()
                assert server.running and server.s3_port == s3_port
                assert server._ports["master"] != master_port
                assert held_again(tier) == b"kept"
        finally:
            tier.close()
