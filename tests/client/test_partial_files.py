"""The partial file a download or a trace is written through before it is whole."""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.permissions import bound_by_permissions
from tests.server.conftest import ServerProcess
from tests.server.servers import serving
from tierstore.client.channel import ChannelSettings
from tierstore.client.client import Client
from tierstore.client.download import output_target, partial_file
from tierstore.errors import ShardNotFound
from tierstore.types import DatasetSettings, Role


def _tree(root: Path) -> dict[str, bytes | str]:
    """Each entry under ``root``: a link's target, or a file's bytes."""
    return {
        p.name: os.readlink(p) if p.is_symlink() else p.read_bytes() for p in sorted(root.iterdir())
    }


def test_files_and_links_already_there_are_left_alone(tmp_path: Path) -> None:
    """A user's ``FILE.part``, or a link of that name, is neither written, followed
    nor removed (a fixed ``FILE.part`` was: a security review), whether the write
    completes or fails."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours")
    target, other = tmp_path / "out.bin", tmp_path / "other.bin"
    (tmp_path / "out.bin.part").write_bytes(b"the user's own")
    (tmp_path / "other.bin.part").symlink_to(victim)
    before = _tree(tmp_path)
    with partial_file(other) as file:
        file.write(b"other")
    assert _tree(tmp_path) == {**before, "other.bin": b"other"}
    before = _tree(tmp_path)

    with partial_file(target) as file:
        file.write(b"whole")
    assert target.read_bytes() == b"whole"
    assert _tree(tmp_path) == {**before, "out.bin": b"whole"}

    with pytest.raises(RuntimeError), partial_file(target) as file:
        file.write(b"half")
        raise RuntimeError("the stream broke")
    assert _tree(tmp_path) == {**before, "out.bin": b"whole"}  # as it was


def test_modes(tmp_path: Path) -> None:
    """A private file is 0600; another gets what ``open`` would give a new file."""
    mask = os.umask(0o027)
    try:
        with partial_file(tmp_path / "shared") as file:
            file.write(b"x")
        with partial_file(tmp_path / "private", private=True) as file:
            file.write(b"x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600


def test_links_are_followed_and_devices_written_in_place(tmp_path: Path) -> None:
    real, link = tmp_path / "real", tmp_path / "link"
    link.symlink_to(real)
    assert output_target(link) == (real, True)
    assert output_target(tmp_path / "new") == (tmp_path / "new", True)
    assert output_target(Path("/dev/null")) == (Path("/dev/null"), False)


def test_a_directory_is_refused_before_anything_is_fetched(tmp_path: Path) -> None:
    # It was taken for a device and written in place: the whole shard was fetched
    # into memory first, then open() failed on the directory.
    with pytest.raises(IsADirectoryError, match="name a file to write") as refused:
        output_target(tmp_path)
    assert refused.value.filename == str(tmp_path)
    link = tmp_path / "to-a-directory"
    link.symlink_to(tmp_path)
    with pytest.raises(IsADirectoryError):
        output_target(link)
    # Named as a directory that does not exist: a file named "out" was written (Path
    # drops the slash), where open() refuses.
    with pytest.raises(IsADirectoryError, match="name a file to write"):
        output_target(f"{tmp_path}/out/")
    assert not (tmp_path / "out").exists()


def test_a_file_in_no_directory_is_named_as_given_not_by_its_partial_file(
    tmp_path: Path,
) -> None:
    # The error named ".x.<random>.part", a file the caller never asked for.
    target = tmp_path / "missing" / "x"
    with pytest.raises(FileNotFoundError) as refused, partial_file(target):
        pass
    assert refused.value.filename == str(target)
    assert ".part" not in str(refused.value)


def test_a_download_over_a_file_keeps_its_mode(admin: Client, dataset: str, tmp_path: Path) -> None:
    """A file written again keeps its permissions, as ``open(path, "wb")`` keeps them:
    a private file (0600) downloaded over became 0644, readable by every user."""
    admin.put(dataset, "secret", b"the new secret")
    target = tmp_path / "secret.bin"
    target.write_bytes(b"the old secret")
    target.chmod(0o600)
    assert admin.download(dataset, "secret", target) == 14
    assert target.read_bytes() == b"the new secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    target.chmod(0o640)  # through a link, the file it names keeps its own
    link = tmp_path / "link"
    link.symlink_to(target)
    admin.download(dataset, "secret", link, offset=4)
    assert target.read_bytes() == b"new secret"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


@pytest.mark.parametrize("local_reads", [True, False], ids=["local read", "streamed"])
def test_a_new_file_for_an_encrypted_shard_is_the_owners_alone(
    server: ServerProcess, admin: Client, any_dataset: str, tmp_path: Path, local_reads: bool
) -> None:
    """The plaintext of an encrypted shard went into a file the umask left readable by
    every user (0644): a new one is 0600 now, whichever path reads it (each tells the
    encryption its own way). A plaintext shard's new file gets the umask's mode, as
    ``open`` gives it, and a file written over keeps its own."""
    admin.put(any_dataset, "s", b"kept encrypted at rest")
    encrypted = admin.stat(any_dataset, "s").encrypted
    with server.connect(local_reads=local_reads) as client:
        mask = os.umask(0o022)
        try:
            client.download(any_dataset, "s", tmp_path / "new.bin")
        finally:
            os.umask(mask)
        counts = client.read_counts
        assert (counts.local, counts.grpc) == ((1, 0) if local_reads else (0, 1))
        assert (tmp_path / "new.bin").read_bytes() == b"kept encrypted at rest"
        expected = 0o600 if encrypted else 0o644
        assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == expected
        (tmp_path / "new.bin").chmod(0o640)
        client.download(any_dataset, "s", tmp_path / "new.bin")
        assert stat.S_IMODE((tmp_path / "new.bin").stat().st_mode) == 0o640


def test_a_descriptor_of_this_process_is_written_in_place(tmp_path: Path) -> None:
    # /dev/stdout, /dev/fd/N and /proc/self/fd/N name one of the process's descriptors
    # (and so do /proc/thread-self/fd/N and the task directories of its threads).
    # Through the links, a pipe's resolved to "/proc/<pid>/fd/pipe:[...]", a path to
    # nothing, so a partial file was made in /proc; a file's to that file, which was
    # then replaced by rename, whatever the descriptor's mode (a shell's >> appends).
    read_end, write_end = os.pipe()
    names = [f"/proc/self/fd/{write_end}", f"/dev/fd/{write_end}"]
    names += [f"/proc/thread-self/fd/{write_end}"]
    names += [f"/proc/{os.getpid()}/task/{threading.get_native_id()}/fd/{write_end}"]
    try:
        for named in names:
            assert output_target(named) == (Path(named), False)
    finally:
        os.close(read_end)
        os.close(write_end)
    with (tmp_path / "log").open("ab") as log:
        named = f"/proc/self/fd/{log.fileno()}"
        assert output_target(named) == (Path(named), False)


def test_a_download_to_a_pipe_named_by_its_descriptor_reaches_the_pipe(
    admin: Client, dataset: str
) -> None:
    data = os.urandom(9 << 20)  # three frames
    admin.put(dataset, "piped", data)
    read_end, write_end = os.pipe()
    received = bytearray()

    def drain() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            while chunk := pipe.read(1 << 16):
                received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        assert admin.download(dataset, "piped", f"/dev/fd/{write_end}") == len(data)
    finally:
        os.close(write_end)
        reader.join(timeout=60)
    assert bytes(received) == data


def test_a_download_to_a_descriptor_open_for_appending_appends(
    admin: Client, dataset: str, tmp_path: Path
) -> None:
    # As `tierstore get DS SHARD -o /dev/stdout >> log` would: the log was replaced.
    admin.put(dataset, "entry", b"the shard's bytes\n")
    log = tmp_path / "log"
    log.write_bytes(b"kept\n")
    with log.open("ab") as appending:
        named = f"/proc/self/fd/{appending.fileno()}"
        assert admin.download(dataset, "entry", named, offset=4) == 14
        assert admin.download(dataset, "entry", named) == 18
    assert log.read_bytes() == b"kept\nshard's bytes\nthe shard's bytes\n"


def test_a_download_of_no_shard_to_a_named_pipe_is_refused_without_waiting_for_a_reader(
    admin: Client, dataset: str, tmp_path: Path
) -> None:
    # The pipe was opened first, which waits for a reader: with none, the call hung.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ShardNotFound):
        admin.download(dataset, "no-such-shard", fifo)


def test_a_download_to_a_named_pipe_whose_reader_comes_late_is_whole(tmp_path: Path) -> None:
    # The shard's stream was opened before the pipe, whose open waits for a reader: the
    # server, taking each message within stream_message_s (2 s here, 60 s by default),
    # gave up on a reader that came later, and the pipe got part of the shard.
    with serving(
        tmp_path, insecure=True, datasets={"d": DatasetSettings()}, stream_message_s=2.0
    ) as node:
        settings = ChannelSettings(address=node.address, token=node.token("t", ("d", Role.ADMIN)))
        with Client(dataclasses.replace(settings, insecure=True), frame_bytes=4096) as client:
            data = os.urandom(8 << 20)  # in the node's 4 KiB frames: more than its window holds
            client.put("d", "s", data)
            fifo = tmp_path / "fifo"
            os.mkfifo(fifo)
            with ThreadPoolExecutor(1) as pool:
                came = threading.Event()

                def late_reader() -> bytes:
                    came.wait(6.0)  # never set: the reader comes 6 s late
                    return fifo.read_bytes()

                received = pool.submit(late_reader)
                assert client.download("d", "s", fifo) == len(data)
                assert received.result(timeout=60) == data


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a link to another user")
def test_a_link_another_user_planted_in_a_shared_sticky_directory_is_not_followed(
    tmp_path: Path,
) -> None:
    # Resolved and renamed over, such a link had root's get -o /tmp/out replace a file
    # only root may write, where the kernel (fs.protected_symlinks) refuses > /tmp/out.
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    precious = tmp_path / "precious"
    precious.write_bytes(b"root's")
    link = shared / "out"
    link.symlink_to(precious)
    os.lchown(link, 65534, 65534)
    with pytest.raises(PermissionError, match=r"link of another user's \(uid 65534\)"):
        output_target(link)
    assert precious.read_bytes() == b"root's"
    # ...and so is one reached through one's own link (the kernel checks each link).
    own = shared / "own"
    own.symlink_to(link)
    with pytest.raises(PermissionError, match=f"leads through {link}, a link of another"):
        output_target(own)
    os.lchown(link, 0, 0)  # one's own link there is followed
    assert output_target(link) == (precious, True)
    assert output_target(own) == (precious, True)
    shared.chmod(0o777)  # and so is anyone's where the directory is not sticky
    os.lchown(link, 65534, 65534)
    assert output_target(link) == (precious, True)


def _syncs_and_renames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Each ``os.fsync`` (with the path its descriptor names) and ``os.replace`` made
    from now on, in order."""
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def synced(descriptor: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        fsync(descriptor)

    def renamed(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        events.append(("rename", os.fspath(source)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", synced)
    monkeypatch.setattr(os, "replace", renamed)
    return events


def _assert_made_durable(events: list[tuple[str, str]], target: Path) -> None:
    """The partial file was synced before its rename over ``target``, and the
    directory after it."""
    renames = [i for i, (kind, _) in enumerate(events) if kind == "rename"]
    assert len(renames) == 1, events
    (at,) = renames
    partial = events[at][1]
    assert Path(partial).parent == target.parent
    assert ("fsync", partial) in events[:at], events
    assert ("fsync", str(target.parent)) in events[at + 1 :], events


def test_a_partial_file_is_made_durable_before_and_after_its_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file was renamed over its target with its bytes still only in memory (and
    the rename itself not synced): a crash after the write returned could leave the
    target empty or torn, its old contents gone."""
    target = tmp_path / "out.bin"
    target.write_bytes(b"old contents")
    events = _syncs_and_renames(monkeypatch)
    with partial_file(target) as file:
        file.write(b"written through the buffer")  # not flushed by the block
    assert target.read_bytes() == b"written through the buffer"
    _assert_made_durable(events, target)
    # A block that closes the file itself (a text wrapper closes what it wraps), as
    # the CLI's trace export does: it is synced all the same.
    events.clear()
    with partial_file(target, private=True) as file, io.TextIOWrapper(file) as text:
        text.write("written through a wrapper")
    assert target.read_text() == "written through a wrapper"
    _assert_made_durable(events, target)


@pytest.mark.parametrize("errno_code", [errno.EACCES, errno.EOPNOTSUPP, errno.EINVAL])
def test_a_directory_that_cannot_be_synced_fails_no_write_that_replaced_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, errno_code: int
) -> None:
    # The file was synced and renamed over its target: a directory that cannot be
    # opened (write and search only) or synced (some network and FUSE mounts) raised
    # from a write that had replaced the target all the same.
    target = tmp_path / "out.bin"
    target.write_bytes(b"old contents")
    real_open = os.open

    def refusing_directories(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_DIRECTORY:
            raise OSError(errno_code, os.strerror(errno_code))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_directories)
    with partial_file(target) as file:
        file.write(b"new contents")
    assert target.read_bytes() == b"new contents"


@pytest.mark.parametrize("local_reads", [True, False], ids=["local read", "streamed"])
def test_a_download_is_durable_before_it_replaces_the_file(
    server: ServerProcess,
    admin: Client,
    dataset: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    local_reads: bool,
) -> None:
    """A download's bytes, written through a shared mapping of its partial file, are
    synced before the rename over the target, and the rename after it: a download
    that returned is written whole or not at all, whatever happens to the host next."""
    data = os.urandom(100_000)
    admin.put(dataset, "durable", data)
    target = tmp_path / "out.bin"
    target.write_bytes(b"old contents")
    with server.connect(local_reads=local_reads) as client:
        events = _syncs_and_renames(monkeypatch)
        assert client.download(dataset, "durable", target) == len(data)
        counts = client.read_counts
        assert (counts.local, counts.grpc) == ((1, 0) if local_reads else (0, 1))
    assert target.read_bytes() == data
    _assert_made_durable(events, target)


def _as_an_ordinary_user(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a new interpreter that files' permission bits bind."""
    command = bound_by_permissions([sys.executable, "-c", code])
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_a_file_this_user_may_not_write_is_refused_before_anything_is_fetched(
    tmp_path: Path,
) -> None:
    # The rename over it needs only the directory's write: get -o replaced a
    # read-only file, where the shell's > and cp refuse it (a filesystem review).
    kept = tmp_path / "kept"
    kept.write_bytes(b"read-only")
    kept.chmod(0o444)
    refused = _as_an_ordinary_user(
        "import sys; from tierstore.client.download import output_target\n"
        f"try: output_target({str(kept)!r})\n"
        "except PermissionError as exc: print(exc.filename, exc.strerror); sys.exit(3)"
    )
    assert refused.returncode == 3, refused.stderr
    assert refused.stdout.strip() == f"{kept} is a file this user may not write: not replaced"
    assert kept.read_bytes() == b"read-only" and stat.S_IMODE(kept.stat().st_mode) == 0o444
    kept.chmod(0o644)  # once writable, it is written through a partial file
    allowed = _as_an_ordinary_user(
        "from tierstore.client.download import output_target\n"
        f"print(output_target({str(kept)!r})[1])"
    )
    assert allowed.stdout.strip() == "True", allowed.stderr
