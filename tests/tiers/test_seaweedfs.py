"""SeaweedServer: loopback-only listeners, authentication, clean start and stop."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import random
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import tierstore.tiers.seaweedfs as seaweedfs
from tierstore.errors import ArchiveUnavailable
from tierstore.tiers.s3 import S3Tier
from tierstore.tiers.seaweedfs import SeaweedServer, _alive, find_weed_binary

needs_weed = pytest.mark.skipif(find_weed_binary() is None, reason="weed binary not installed")


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket ``pid`` listens on, read from /proc (Linux)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                assert len(address) == width
                if width == 8:
                    text = socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1])
                else:
                    words = [bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, 32, 8)]
                    text = socket.inet_ntop(socket.AF_INET6, b"".join(words))
                found.append((text, int(port, 16)))
    return found


@needs_weed
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_listens_on_loopback_only_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "weed").mkdir(mode=0o755)  # as an older release, or an operator, left it
    # A node given its master key, or its archive's secret, by environment variable.
    monkeypatch.setenv("TIERSTORE_MASTER_KEY_B64", "master-key-marker")
    monkeypatch.setenv("TIERSTORE_S3_SECRET_KEY", "archive-secret-marker")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-marker")
    server = SeaweedServer(tmp_path / "weed")
    with server:
        # The archive is not trusted with the node's secrets: weed's environment (and
        # so anything weed starts) holds none of them; the rest it keeps.
        assert server._process is not None
        environment = Path(f"/proc/{server._process.pid}/environ").read_bytes()
        assert b"marker" not in environment and b"TIERSTORE_" not in environment
        assert b"PATH=" in environment
        # Owner only: the archive holds plaintext datasets' objects, whatever weed's own
        # file modes (0644) and a group's search right on the node's data directory.
        assert stat.S_IMODE((tmp_path / "weed").stat().st_mode) == 0o700
        process = server._process
        assert process is not None
        listeners = listening_addresses(process.pid)
        assert ("127.0.0.1", server.s3_port) in listeners
        assert len(listeners) >= 5
        assert {address for address, _ in listeners} == {"127.0.0.1"}, listeners
        # Only the ports it was given: no Iceberg (8181) or Lance (9101) catalog, no
        # WebDAV, no metrics port of weed's own.
        given = {n for port in server._ports.values() for n in (port, port + 10_000)}
        assert {port for _, port in listeners} <= given, listeners
        command = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert b"-master.telemetry=false" in command  # weed mini's only telemetry flag
        grpc_ports = [port for _, port in listeners if port >= 30_000]
        assert_round_trip(server, "lifecycle")
    assert process.poll() is not None
    assert not server.running
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", listeners[0][1])) != 0
    for port in grpc_ports:
        leftovers = list(Path("/tmp").glob(f"seaweedfs-*-{port}.sock"))
        assert leftovers == []
    assert (tmp_path / "weed" / "weed.log").stat().st_size > 0  # a given data dir is kept
    identities = tmp_path / "weed" / "config" / "s3-identities.json"
    assert stat.S_IMODE(identities.stat().st_mode) == 0o600


@needs_weed
def test_a_server_dropped_without_stop_takes_its_weed_and_thread_along(tmp_path: Path) -> None:
    # The thread that starts weed held the server (its last call's closure), so the
    # finalizer that ends weed never ran: weed and the thread outlived the object.
    def launchers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "tierstore-weed-launcher"}

    others = launchers()  # the session server's
    server = SeaweedServer(tmp_path / "weed").start()
    assert server._process is not None
    process = server._process
    own = launchers() - others
    assert len(own) == 1
    del server
    gc.collect()
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is not None, "weed outlived its server"
    for thread in own:
        thread.join(10)
        assert not thread.is_alive(), "the launcher thread outlived its server"


@needs_weed
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_s3_port_another_weed_serves_is_not_taken_for_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    # Another node's weed took the S3 port between the check and weed's bind: its answer
    # was taken for this weed's, which had exited for the clash. The start "succeeded"
    # on no weed at all, and a client would have reached the other node's archive.
    picks = 0
    real_pick = seaweedfs._pick_ports

    def pick_a_taken_port(rng: random.Random) -> dict[str, int]:
        nonlocal picks
        picks += 1
        ports = real_pick(rng)
        if picks == 1:
            ports["s3"] = other.s3_port
        return ports

    other: SeaweedServer = request.getfixturevalue("seaweedfs")  # the session's weed
    monkeypatch.setattr(seaweedfs, "_pick_ports", pick_a_taken_port)
    with SeaweedServer(tmp_path / "weed") as server:
        assert server.launches == 2 and server.s3_port != other.s3_port
        assert "Port allocation failed" in server.log_path.read_text()
        assert_round_trip(server, "own-port")  # our credentials: the other weed refuses them
        assert server.running


def assert_round_trip(server: SeaweedServer, bucket: str) -> None:
    """A put and a get through a tier on ``server``, ``bucket`` made first."""
    tier = S3Tier(server.s3_settings(bucket))
    try:
        tier.ensure_bucket()
        tier.put("k", b"v")
        assert bytes(tier.get("k") or b"") == b"v"
    finally:
        tier.close()


def plant_stale_socket(path: Path) -> None:
    """Leave a socket file nobody listens on, as a weed killed outright does."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))


@needs_weed
def test_stale_sockets_named_by_its_ports_are_removed_before_weed_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A killed weed whose volume gRPC port is this server's master gRPC port left
    # its socket; before, it outlived this server and read as this server's leftover.
    planted: list[Path] = []
    pick_ports = seaweedfs._pick_ports

    def pick_and_plant(rng: random.Random) -> dict[str, int]:
        ports = pick_ports(rng)
        grpc = ports["master"] + seaweedfs._GRPC_OFFSET
        path = Path(f"/tmp/seaweedfs-volume-grpc-{grpc}.sock")
        plant_stale_socket(path)
        planted.append(path)
        return ports

    monkeypatch.setattr(seaweedfs, "_pick_ports", pick_and_plant)
    try:
        with SeaweedServer(tmp_path / "weed"):
            assert planted and not any(path.exists() for path in planted)
    finally:
        for path in planted:
            path.unlink(missing_ok=True)


def test_only_stale_sockets_of_the_given_ports_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(seaweedfs, "_WEED_SOCKET_DIR", tmp_path)
    stale = tmp_path / "seaweedfs-s3-grpc-30001.sock"
    other_port = tmp_path / "seaweedfs-s3-grpc-30002.sock"
    plain_file = tmp_path / "seaweedfs-admin-grpc-30001.sock"
    served = tmp_path / "seaweedfs-filer-20001.sock"
    plant_stale_socket(stale)
    plant_stale_socket(other_port)
    plain_file.write_bytes(b"")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(served))
        listener.listen()
        seaweedfs._remove_stale_sockets([20001])
    assert not stale.exists()
    assert other_port.exists() and plain_file.exists() and served.exists()


def test_weed_is_out_of_reach_of_a_terminals_ctrl_c(seaweedfs: SeaweedServer) -> None:
    # A terminal sends Ctrl-C's SIGINT to its foreground process group: weed, in its
    # node's group, stopped at once, while the node's stop still needed the archive
    # (write-through puts in flight, the store's close). Its node stops it in turn; the
    # parent-death signal still ends it if the node dies first.
    weed = int((seaweedfs.data_dir / "weed.pid").read_text().split()[0])
    assert os.getpgid(weed) != os.getpgrp()
    assert os.getpgid(weed) == weed  # a group of its own, not another process's


def test_requests_need_the_servers_credentials(seaweedfs: SeaweedServer, s3_bucket: str) -> None:
    good = seaweedfs.s3_settings(s3_bucket, prefix="auth-check/")
    for wrong in (
        dataclasses.replace(good, secret_access_key="not-the-secret"),
        dataclasses.replace(good, access_key_id="someone-else"),
    ):
        tier = S3Tier(wrong)
        try:
            with pytest.raises(ArchiveUnavailable, match="403"):
                tier.get("k")
            with pytest.raises(ArchiveUnavailable, match="403"):
                tier.put("k", b"v")
        finally:
            tier.close()
    tier = S3Tier(good)
    try:
        assert tier.get("k") is None  # nothing was written by the impostors
    finally:
        tier.close()


def fake_weed(tmp_path: Path, script: str) -> Path:
    path = tmp_path / "weed"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return path


def test_a_binary_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    binary = fake_weed(tmp_path, "echo 'fatal: disk on fire' >&2; exit 3")
    server = SeaweedServer(tmp_path / "data", binary=binary, startup_timeout_s=30)
    with pytest.raises(ArchiveUnavailable, match="disk on fire") as caught:
        server.start()
    assert "status 3" in str(caught.value)
    assert not server.running


def test_a_log_that_cannot_be_written_is_named(tmp_path: Path) -> None:
    """A full disk under the data directory is an error naming the file weed's start
    could not write (the write's own error named none: the CLI blamed its stdout);
    weed is not run."""
    ran = tmp_path / "ran"
    binary = fake_weed(tmp_path, f"touch {ran}; exec sleep 60")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "weed.log").symlink_to("/dev/full")  # every write: ENOSPC
    server = SeaweedServer(data_dir, binary=binary, startup_timeout_s=30)
    with pytest.raises(ArchiveUnavailable) as caught:
        server.start()
    assert str(caught.value) == f"cannot write {data_dir / 'weed.log'}: No space left on device"
    assert not ran.exists() and not server.running


def test_a_weed_whose_pid_file_cannot_be_written_is_stopped(tmp_path: Path) -> None:
    # It was left running: its finalizer was made only after the pid file was written,
    # and without a pid file no later start could find it.
    marker = f"0.{random.randrange(10**8, 10**9)}"  # sleep adds it up: a name of its own
    binary = fake_weed(tmp_path, f"exec sleep 60 {marker}")
    data_dir = tmp_path / "data"
    (data_dir / "weed.pid").mkdir(parents=True)  # writing it fails (EISDIR)
    server = SeaweedServer(data_dir, binary=binary, startup_timeout_s=30, stop_timeout_s=2)
    with pytest.raises(ArchiveUnavailable, match=f"cannot write {data_dir / 'weed.pid'}"):
        server.start()
    assert not server.running
    assert not processes_naming(marker) and not processes_naming(str(binary))


def processes_naming(word: str) -> list[int]:
    """The processes whose command line holds ``word``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if word.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


@needs_weed
def test_a_weed_killed_before_it_answered_is_started_again(tmp_path: Path) -> None:
    # A node refused to start when its weed was stopped (from outside) in its first
    # second: killed, or stopped by SIGTERM or SIGINT, on which weed exits 0. A weed
    # that exits with an error status of its own still fails the start at once.
    weed = find_weed_binary()
    killed, stopped = tmp_path / "killed-once", tmp_path / "stopped-once"
    binary = fake_weed(
        tmp_path,
        f"[ -e {killed} ] || {{ touch {killed}; kill -9 $$; }}\n"
        f"[ -e {stopped} ] || {{ touch {stopped}; exit 0; }}\n"
        f'exec {weed} "$@"',
    )
    with SeaweedServer(tmp_path / "data", binary=binary) as server:
        assert killed.exists() and stopped.exists() and server.launches == 3
        tier = S3Tier(server.s3_settings("after-a-kill"))
        tier.ensure_bucket()
        tier.put("k", b"served")
        assert tier.get("k") == b"served"
    refusing = fake_weed(tmp_path, "exit 3")
    server = SeaweedServer(tmp_path / "refused", binary=refusing, startup_timeout_s=30)
    with pytest.raises(ArchiveUnavailable, match="status 3"):
        server.start()
    assert server.launches == 1


@pytest.mark.parametrize("on_sigterm", ["exits", "ignored"])
def test_a_server_that_never_answers_times_out_and_is_killed(
    tmp_path: Path, on_sigterm: str
) -> None:
    # A weed ignored SIGTERM for over 15 s (DESIGN.md, section 5): SIGKILL follows.
    pid_file = tmp_path / "pid"
    trap = "trap '' TERM; " if on_sigterm == "ignored" else ""
    binary = fake_weed(tmp_path, f"{trap}echo started; echo $$ > {pid_file}; exec sleep 60")
    server = SeaweedServer(
        tmp_path / "data", binary=binary, startup_timeout_s=0.5, stop_timeout_s=2
    )
    with pytest.raises(ArchiveUnavailable, match="did not answer") as caught:
        server.start()
    assert "started" in str(caught.value)
    assert not server.running
    with pytest.raises(ProcessLookupError):  # stopped and reaped, not left behind
        os.kill(int(pid_file.read_text()), 0)


@needs_weed
def test_a_restarted_weed_takes_writes_and_reads_once_restart_returns(tmp_path: Path) -> None:
    # restart() returned once S3 answered its port, before the volume server was back
    # with the master: S3 answered 500 for seconds after it (most restarts, not all), and
    # a node's call right after the keeper's restart used up its retries on them.
    with SeaweedServer(tmp_path / "weed") as server:
        settings = dataclasses.replace(server.s3_settings("restarted"), max_attempts=1)
        tier = S3Tier(settings)
        try:
            tier.ensure_bucket()
            tier.put("old", os.urandom(1 << 20))
            for round_ in range(8):
                process = server._process
                assert process is not None
                process.kill()
                process.wait()
                server.restart()
                # One attempt each: no retry hides a 500.
                assert len(bytes(tier.get("old") or b"")) == 1 << 20
                tier.put(f"new-{round_}", b"after the restart")
                assert bytes(tier.get(f"new-{round_}") or b"") == b"after the restart"
        finally:
            tier.close()


@needs_weed
def test_a_weed_that_takes_no_write_is_served_all_the_same_after_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As on a disk too full for weed's volume server, which then takes no write: the
    # archive's reads still work, and a node must start on it (a start that waited for
    # a write to pass refused to).
    monkeypatch.setattr(seaweedfs, "_stores_and_reads", lambda port: False)
    monkeypatch.setattr(seaweedfs, "_WRITABLE_WAIT_S", 0.5)
    with SeaweedServer(tmp_path / "weed", startup_timeout_s=10) as server:
        assert server.running
    assert "takes no write" in caplog.text


@needs_weed
def test_a_run_leaves_no_master_directory_of_its_own_in_the_data_dir(tmp_path: Path) -> None:
    # weed keeps its master's metadata in <dir>/m<master port>, and the master port is
    # drawn anew at each start: each run left one more there, for good.
    data_dir = tmp_path / "weed"

    def master_dirs() -> set[str]:
        return {p.name for p in data_dir.iterdir() if p.name[:1] == "m" and p.is_dir()}

    with SeaweedServer(data_dir) as server:
        assert master_dirs() == {f"m{server._ports['master']}"}
        tier = S3Tier(server.s3_settings("kept"))
        tier.ensure_bucket()
        tier.put("k", b"stored")
        tier.close()
    assert master_dirs() == set()
    # As a run killed outright leaves it: the next start removes it.
    for part in ("conf", "log", "snapshot"):
        (data_dir / "m29999" / part).mkdir(parents=True)
    (data_dir / "mine").mkdir()  # not weed's: kept
    with SeaweedServer(data_dir) as server:
        assert master_dirs() == {"mine", f"m{server._ports['master']}"}
        tier = S3Tier(server.s3_settings("kept"))
        assert bytes(tier.get("k") or b"") == b"stored"  # the archive's data is kept
        tier.close()
    assert master_dirs() == {"mine"}


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    server = SeaweedServer(tmp_path / "data", binary=tmp_path / "no-such-weed")
    with pytest.raises(ArchiveUnavailable, match="cannot run"):
        server.start()
    server.stop()  # idempotent after a failed start


#: A parent that starts weed on ``argv[1]``, prints its process id, and waits to be killed;
#: with ``argv[2] == "no-death-signal"`` weed is not told to stop with it (as on systems
#: without PR_SET_PDEATHSIG).
_PARENT = """
import sys, time
from pathlib import Path
import tierstore.tiers.seaweedfs as seaweedfs
if sys.argv[2] == "no-death-signal":
    seaweedfs._PRCTL = None
server = seaweedfs.SeaweedServer(Path(sys.argv[1])).start()
print(server._process.pid, flush=True)
time.sleep(600)
"""


def weed_of_a_killed_parent(data_dir: Path, mode: str) -> int:
    """Start weed from a parent process, SIGKILL the parent; weed's process id."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(data_dir), mode], stdout=subprocess.PIPE
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the parent printed {line!r}"
        return int(line)
    finally:
        parent.kill()
        parent.wait()


def recorded_ports(data_dir: Path) -> list[int]:
    """The HTTP ports a weed.pid file records after the process id."""
    first_line = (data_dir / "weed.pid").read_text().splitlines()[0]
    _, *ports = (int(word) for word in first_line.split())
    assert len(ports) == 5
    return ports


def sockets_of(ports: list[int]) -> list[Path]:
    """weed's socket files in /tmp named by ``ports`` or their gRPC ports."""
    return [
        path
        for port in ports
        for number in (port, port + 10_000)
        for path in Path("/tmp").glob(f"seaweedfs-*-{number}.sock")
    ]


def wait_until_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@needs_weed
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_weed_goes_with_a_parent_killed_outright(tmp_path: Path) -> None:
    weed = weed_of_a_killed_parent(tmp_path / "data", "death-signal")
    try:
        assert wait_until_gone(weed, 30), "weed outlived its parent"
        # Stopped by the signal, weed leaves some of its /tmp sockets; the next start
        # in its data directory removes them, by the ports the pid file records.
        ports = recorded_ports(tmp_path / "data")
        # And the directory of the sockets it was told to place (it stayed in /tmp).
        log = (tmp_path / "data" / "weed.log").read_text()
        socket_dir = Path(re.findall(r"-s3\.localSocket=(\S+)/s3\.sock", log)[-1])
        assert socket_dir.is_dir()
        seaweedfs._stop_leftover(tmp_path / "data", 5.0)
        assert sockets_of(ports) == []
        assert not socket_dir.exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(weed, signal.SIGKILL)


@needs_weed
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_weed_left_serving_the_data_dir_is_stopped_before_a_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    leftover = weed_of_a_killed_parent(data_dir, "no-death-signal")
    try:
        assert _alive(leftover)  # an orphan, holding the store's lock
        ports = recorded_ports(data_dir)
        with SeaweedServer(data_dir) as server:  # before: "weed exited with status 255"
            assert not _alive(leftover)
            assert sockets_of(ports) == []  # what it left in /tmp went with it
            assert server._process is not None and server._process.pid != leftover
            pid, *_ = (data_dir / "weed.pid").read_text().split()
            assert pid == str(server._process.pid)
        assert not (data_dir / "weed.pid").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(leftover, signal.SIGKILL)


def test_a_pid_file_naming_another_process_leaves_it_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nor is that process waited on: its threads are its own (a 5 s stall at start).
    def never(pid: int, timeout_s: float) -> None:
        raise AssertionError("waited on the threads of a process that is not weed")

    monkeypatch.setattr(seaweedfs, "_wait_for_its_threads", never)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "weed.pid").write_text(f"{os.getpid()}\n")  # reused by a process not weed
    binary = fake_weed(tmp_path, "exit 3")
    with pytest.raises(ArchiveUnavailable, match="status 3"):
        SeaweedServer(data_dir, binary=binary, startup_timeout_s=30).start()
    assert _alive(os.getpid())


#: A process whose main thread exits first (it shows as a zombie with an empty command
#: line, as a weed stopped by a signal may while it tears down) while another thread
#: keeps its listening socket ``argv[1]`` open for ``argv[2]`` seconds.
_EXITING = """
import ctypes, socket, sys, threading, time
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen()
threading.Thread(target=time.sleep, args=(float(sys.argv[2]),)).start()
print("listening", flush=True)
ctypes.CDLL(None).pthread_exit(None)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sockets_of_a_weed_still_tearing_down_are_removed_once_it_is_gone(
    tmp_path: Path,
) -> None:
    # The CI failure: the leftover's main thread was a zombie, its sockets still open;
    # they were probed (answered: kept) before its last thread had gone.
    port = random.randrange(40_000, 60_000)  # outside weed's 20000-29999, unshared
    path = Path(f"/tmp/seaweedfs-test-{port}.sock")
    exiting = subprocess.Popen(
        [sys.executable, "-c", _EXITING, str(path), "1.0"], stdout=subprocess.PIPE
    )
    try:
        assert exiting.stdout is not None and exiting.stdout.readline() == b"listening\n"
        deadline = time.monotonic() + 10
        while _alive(exiting.pid):  # until the main thread is a zombie
            assert time.monotonic() < deadline, "the main thread did not exit"
            time.sleep(0.01)
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        (data_dir / "weed.pid").write_text(f"{exiting.pid} {port}\n")
        seaweedfs._stop_leftover(data_dir, 5.0)
        assert not path.exists()
        assert not (data_dir / "weed.pid").exists()
    finally:
        exiting.kill()
        exiting.wait()
        path.unlink(missing_ok=True)
