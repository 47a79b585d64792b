"""Tokens read from a file: ``read_token_file`` and ``connect(token_file=)``. The CLI's
``--token-file`` against the real server is in tests/server/test_e2e_cli.py."""

from __future__ import annotations

import copy
import logging
import multiprocessing
import os
import pickle
import threading
from pathlib import Path

import pytest

from tierstore.client.connect import connect
from tierstore.client.tokenfile import TokenFile, names_a_descriptor, read_token_file
from tierstore.errors import InvalidArgument
from tierstore.private_files import narrow_mode_hint

TOKEN = "ts_0123456789ab_" + "A" * 43


def token_file(tmp_path: Path, content: bytes | str, mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("content", [TOKEN, TOKEN + "\n", f"  {TOKEN}\r\n"])
def test_the_token_without_surrounding_whitespace(tmp_path: Path, content: str) -> None:
    assert read_token_file(token_file(tmp_path, content)) == TOKEN


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "is empty"),
        (" \n\n", "is empty"),
        (f"{TOKEN}\nsecond line", "more than one line"),
        (b"\xff\xfe token", "not UTF-8 text"),
        ("x" * (64 * 1024 + 1), "over 64 KiB"),
    ],
    ids=["empty", "blank", "two-lines", "binary", "huge"],
)
def test_a_file_that_holds_no_single_token_is_refused(
    tmp_path: Path, content: bytes | str, match: str
) -> None:
    path = token_file(tmp_path, content)
    with pytest.raises(InvalidArgument, match=match) as caught:
        read_token_file(path)
    assert str(path) in str(caught.value)


def test_unreadable_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"cannot read token file .*No such file"):
        read_token_file(tmp_path / "missing")
    with pytest.raises(InvalidArgument, match=r"cannot read token file .*directory"):
        read_token_file(tmp_path)


def fifo_read_once(tmp_path: Path) -> Path:
    """A named FIFO under ``tmp_path`` that a writer thread wrote TOKEN to once, read
    (and checked) through it."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)

    def write() -> None:
        with fifo.open("w") as writer:  # waits for the reader
            writer.write(TOKEN + "\n")

    writing = threading.Thread(target=write)
    writing.start()
    try:
        assert read_token_file(fifo) == TOKEN
    finally:
        writing.join(10)
    return fifo


def test_a_pipe_is_read_like_a_file(tmp_path: Path) -> None:
    # A shell's process substitution (--token-file <(secret-tool lookup ...)) and a
    # token piped to /dev/stdin keep the token out of every file, not only out of the
    # process list: both are pipes, and were refused as "not a regular file".
    fifo_read_once(tmp_path)
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as writer:
        writer.write(TOKEN)
    try:
        assert read_token_file(f"/proc/self/fd/{read_end}") == TOKEN
    finally:
        os.close(read_end)


def test_a_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not a regular file or a pipe"):
        read_token_file("/dev/null")


def test_a_file_every_user_may_read_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="tierstore.client.tokenfile"):
        assert read_token_file(token_file(tmp_path, TOKEN, 0o600)) == TOKEN
        assert not caplog.records
        assert read_token_file(token_file(tmp_path, TOKEN, 0o644)) == TOKEN
    assert "readable by every user (mode 644)" in caplog.text


def test_a_secret_volume_s_open_file_is_told_of_its_default_mode_not_chmod(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A Kubernetes Secret volume: the file is a link into ..data, itself a link to a
    # timestamped directory, all read-only: "chmod 600 it" could not be done there.
    timestamped = tmp_path / "..2026_12_07_04_00_00.000000001"
    timestamped.mkdir()
    (timestamped / "token").write_text(TOKEN)
    (timestamped / "token").chmod(0o444)
    (tmp_path / "..data").symlink_to(timestamped.name)
    (tmp_path / "token").symlink_to("..data/token")
    with caplog.at_level(logging.WARNING, logger="tierstore.client.tokenfile"):
        assert read_token_file(tmp_path / "token") == TOKEN
    assert "set the volume's defaultMode to 0440 with the pod's fsGroup" in caplog.text
    assert "chmod" not in caplog.text.replace("which chmod cannot", "")
    assert "chmod 600 it" in narrow_mode_hint(timestamped / "token")


def test_connect_takes_the_token_from_an_argument_before_a_file_before_the_environment(
    tmp_path: Path,
) -> None:
    path = token_file(tmp_path, TOKEN)
    env = {"TIERSTORE_ADDRESS": "127.0.0.1:1"}

    def token_of(**kwargs: object) -> str | None:
        with connect(**kwargs) as client:  # type: ignore[arg-type]
            return client._channel.settings.token

    assert token_of(token_file=path, environ=env) == TOKEN
    assert token_of(environ={**env, "TIERSTORE_TOKEN_FILE": str(path)}) == TOKEN
    given = {**env, "TIERSTORE_TOKEN": "from-env", "TIERSTORE_TOKEN_FILE": str(path)}
    assert token_of(environ=given) == "from-env"  # the token itself wins over a file
    assert token_of(token="direct", environ=given) == "direct"
    assert token_of(token_file=path, environ=given) == TOKEN  # an argument over the env
    with pytest.raises(InvalidArgument, match="not both"):
        connect(token="direct", token_file=path, environ=env)
    # An empty token (an unset variable in a script) is not "no token": it would run
    # the call as whoever the environment's token is.
    with pytest.raises(InvalidArgument, match="token= is empty"):
        connect(token="", environ=given)
    # Likewise an empty file name: ca="" trusted TIERSTORE_CA's CA instead.
    for name in ("token_file", "ca", "client_cert", "client_key"):
        with pytest.raises(InvalidArgument, match=f"{name}= is empty"):
            connect(token="direct", environ=given, **{name: ""})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="address= is empty"):
        connect("", token="direct", environ=given)
    with pytest.raises(InvalidArgument, match="cannot read token file"):
        connect(environ={**env, "TIERSTORE_TOKEN_FILE": str(tmp_path / "missing")})


def test_a_drained_pipe_gives_its_token_again_here_and_in_forked_children() -> None:
    # TIERSTORE_TOKEN_FILE=/dev/stdin with the token piped in (or <(...)): every
    # connect() reads the file, the dataset's of tierstore.torch in the main process and
    # again in each DataLoader worker. The first read drained the pipe, and every later
    # one failed "token file '/dev/stdin' is empty", so a loader with workers could not
    # read a thing.
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as writer:
        writer.write(TOKEN + "\n")
    path = f"/proc/self/fd/{read_end}"
    try:
        assert read_token_file(path) == TOKEN
        assert read_token_file(path) == TOKEN
        with multiprocessing.get_context("fork").Pool(1) as workers:
            assert workers.apply(read_token_file, (path,)) == TOKEN
    finally:
        os.close(read_end)


def test_a_pipe_that_never_held_a_token_is_still_empty(tmp_path: Path) -> None:
    # Only a pipe read before answers from memory; a regular file is read every time.
    read_end, write_end = os.pipe()
    os.close(write_end)
    try:
        with pytest.raises(InvalidArgument, match="is empty"):
            read_token_file(f"/proc/self/fd/{read_end}")
    finally:
        os.close(read_end)
    path = token_file(tmp_path, TOKEN)
    assert read_token_file(path) == TOKEN
    path.write_text("")
    with pytest.raises(InvalidArgument, match="is empty"):
        read_token_file(path)


def test_another_fifo_given_the_inode_of_one_read_before_is_still_empty(tmp_path: Path) -> None:
    # The token a pipe held was remembered by the pipe's (device, inode) alone; a FIFO
    # made after the first was removed is often given the same inode, and one that a
    # writer opened and closed without a token gave the first FIFO's token.
    def fifo_written(path: Path, content: str) -> threading.Thread:
        os.mkfifo(path, 0o600)

        def write() -> None:
            with path.open("w") as writer:  # waits for the reader
                writer.write(content)

        writing = threading.Thread(target=write)
        writing.start()
        return writing

    first = tmp_path / "first"
    writing = fifo_written(first, TOKEN + "\n")
    try:
        assert read_token_file(first) == TOKEN
    finally:
        writing.join(10)
    inode = first.stat().st_ino
    first.unlink()
    second = tmp_path / "second"
    writing = fifo_written(second, "")
    try:
        if second.stat().st_ino != inode:
            second.open("rb").close()  # let the writer go
            pytest.skip("this file system gave the new FIFO another inode")
        with pytest.raises(InvalidArgument, match="is empty"):
            read_token_file(second)
    finally:
        writing.join(10)


def test_a_named_fifo_read_before_is_read_again_without_waiting_for_a_writer(
    tmp_path: Path,
) -> None:
    # The token in memory was looked up only after the FIFO was opened, and opening a
    # named FIFO waits for a writer: the second connect() with TIERSTORE_TOKEN_FILE
    # naming a FIFO written once (and a torch dataset made after a connect()) hung.
    fifo = fifo_read_once(tmp_path)
    read: list[str | BaseException] = []

    def read_again() -> None:
        try:
            read.append(read_token_file(fifo))
        except BaseException as exc:  # reported below
            read.append(exc)

    reading = threading.Thread(target=read_again, daemon=True)
    reading.start()
    reading.join(10)
    if reading.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # let the reader go
        reading.join(10)
        pytest.fail("a second read of a drained FIFO waited for a writer")
    assert read == [TOKEN]


def test_a_pickled_client_carries_a_file_token_as_its_file_not_the_token(
    tmp_path: Path,
) -> None:
    # A client made with token_file= (the node's admin.token, say), pickled with an
    # application object (torch.save, a checkpoint), wrote the token itself into the
    # pickle: the file's mode 0600 kept it from no one who could read the checkpoint.
    path = token_file(tmp_path, TOKEN)
    env = {"TIERSTORE_ADDRESS": "127.0.0.1:1"}
    for made in (
        lambda: connect(token_file=path, environ=env),
        lambda: connect(environ={**env, "TIERSTORE_TOKEN_FILE": str(path)}),
    ):
        with made() as client:
            pickled = pickle.dumps({"client": client})
        assert TOKEN.encode() not in pickled
        with pickle.loads(pickled)["client"] as loaded:  # read from its file again here
            assert loaded._channel.settings.token == TOKEN
    replaced = "ts_fedcba987654_" + "B" * 43
    path.write_text(replaced)
    assert pickle.loads(pickled)["client"]._channel.settings.token == replaced
    path.unlink()
    with pytest.raises(InvalidArgument, match=r"cannot read token file .*No such file"):
        pickle.loads(pickled)


def test_a_pickled_client_reads_its_token_file_again_by_its_whole_path_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A relative path was read again from wherever the pickle was loaded; and a
    # descriptor's name (/dev/stdin redirected from a file, /proc/self/fd/N) was read
    # again there too, so the loading process's own input became its bearer token.
    path = token_file(tmp_path, TOKEN)
    monkeypatch.chdir(tmp_path)
    with connect("127.0.0.1:1", token_file="token") as client:
        pickled = pickle.dumps(client)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    token_file(elsewhere, "ts_ffffffffffff_" + "F" * 43)
    monkeypatch.chdir(elsewhere)
    assert pickle.loads(pickled)._channel.settings.token == TOKEN
    with path.open("rb") as opened:
        descriptor = f"/proc/self/fd/{opened.fileno()}"
        with connect("127.0.0.1:1", token_file=descriptor) as client:
            with pytest.raises(InvalidArgument, match="read from a pipe or a descriptor"):
                pickle.dumps(client)
            assert copy.deepcopy(client)._channel.settings.token == TOKEN  # no file read
    # A link to a descriptor's name is one too; a file under /dev/shm is a file.
    linked = tmp_path / "linked"
    linked.symlink_to("/dev/stdin")
    assert names_a_descriptor(linked) and names_a_descriptor(Path("/dev/fd/0"))
    assert names_a_descriptor(Path("/proc/self/fd/0"))
    assert not names_a_descriptor(path) and not names_a_descriptor(Path("/dev/shm/token"))
    hop = tmp_path / "hop"
    hop.symlink_to(path)
    assert TokenFile.read(hop)[1] == TokenFile(hop, rereadable=True)


def test_a_client_given_its_token_pickles_it_as_given(tmp_path: Path) -> None:
    with connect("127.0.0.1:1", token=TOKEN) as client:
        loaded = pickle.loads(pickle.dumps(client))
    assert loaded._channel.settings.token == TOKEN


def test_a_client_whose_token_came_from_a_pipe_is_pickled_only_for_a_process_started(
    tmp_path: Path,
) -> None:
    # The pipe was chosen to keep the token out of every file: a pickle could put it in
    # one, and cannot read the pipe again where it is loaded. A process being started
    # (a spawned worker) is given it, as the torch datasets' workers are.
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as writer:
        writer.write(TOKEN + "\n")
    try:
        client = connect("127.0.0.1:1", token_file=f"/proc/self/fd/{read_end}")
        with pytest.raises(InvalidArgument, match="read from a pipe or a descriptor") as caught:
            pickle.dumps(client)
        assert TOKEN not in str(caught.value)
        # A pool's initargs travel with each worker process as it is started.
        spawning = multiprocessing.get_context("spawn")
        with spawning.Pool(1, initializer=_keep, initargs=(client,)) as workers:
            assert workers.apply(_kept_token) == TOKEN
    finally:
        os.close(read_end)


_kept: list[object] = []


def _keep(client: object) -> None:
    _kept.append(client)


def _kept_token() -> str | None:
    return _kept[0]._channel.settings.token  # type: ignore[attr-defined, no-any-return]
