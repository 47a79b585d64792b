"""Reading a bearer token from a file (``token_file=``, ``TIERSTORE_TOKEN_FILE``).

A token in a file stays out of the process list (``--token`` on a command line does not)
and out of the environment every child process inherits; it is how a Kubernetes Secret or
the node's own ``<data-dir>/admin.token`` (mode 0600) reaches a client. A pipe is read
as a file is: a shell's process substitution (``--token-file <(secret-tool lookup ...)``)
or a token piped to ``/dev/stdin`` keeps the token out of every file too. A pipe can be
read only once, yet each ``connect()`` reads the file, as do the DataLoader workers of
``tierstore.torch``: so the token a pipe held is remembered in memory (inherited by
forked processes), and a later read of the same path that finds that pipe drained gets it
again.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tierstore.errors import InvalidArgument
from tierstore.private_files import narrow_mode_hint

__all__ = ["TokenFile", "read_token_file", "rereadable"]

_log = logging.getLogger(__name__)

#: A token file is a few hundred bytes; anything far larger is the wrong file.
_MAX_TOKEN_FILE_BYTES = 64 * 1024

#: The token each pipe held, by the path read and the pipe's (device, inode), for reads
#: after it drained.
_piped: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True, slots=True)
class TokenFile:
    """Where a client's token was read from: the file's absolute path, and whether it
    may be read again there.

    A client pickles this in place of a token read from a file, so a pickle (a
    checkpoint holding a client, say) carries no token the file's mode kept from its
    readers; where it is loaded, the file is read again. A pipe or a descriptor's name
    (``/dev/stdin``, ``/dev/fd/N``, ``/proc/self/fd/N``) cannot be: read where the
    pickle is loaded, it is that process's own input. And a pipe was chosen to keep the
    token out of every file. A client with such a token is pickled only for a process
    being started (a spawned worker), token and all.
    """

    path: Path
    rereadable: bool

    @classmethod
    def read(cls, path: str | Path) -> tuple[str, TokenFile]:
        """The token in ``path`` (:func:`read_token_file`), and where it came from."""
        token = read_token_file(path)
        where = Path(os.path.abspath(path))  # not resolved: a Secret's links may move on
        return token, cls(where, rereadable(where))


def rereadable(path: str | Path) -> bool:
    """Whether the token file ``path`` may be read again, by another process too: a
    regular file not reached through a descriptor's name. Not a pipe (drained once
    read), nor ``/dev/stdin`` or ``/dev/fd/N`` (another process's are its own), nor a
    file gone or that cannot be looked at."""
    where = Path(os.path.abspath(path))
    try:
        regular = stat.S_ISREG(os.stat(where).st_mode)
    except OSError:
        return False
    return regular and not names_a_descriptor(where)


#: Names that stand for a process's descriptors: read in another process, they are its.
_DESCRIPTOR_DIRECTORIES = ("/proc", "/dev/fd")
_DESCRIPTOR_FILES = ("/dev/stdin", "/dev/stdout", "/dev/stderr")
#: The most links followed before a name counts as a descriptor's (a loop, say).
_MOST_LINKS = 40


def names_a_descriptor(path: Path) -> bool:
    """Whether absolute ``path``, or a link on the way to its file, goes through a
    descriptor's name (``/dev/stdin``, ``/dev/fd/N``, ``/proc/PID/fd/N``): a token file
    ``token -> /dev/stdin`` is the input of whichever process reads it. Each link is
    followed a step at a time (resolving the whole name would follow ``/proc/self/fd/0``
    on to the file the descriptor has open here, and hide it). A file under ``/dev/shm``
    is a file."""
    pending = list(path.parts[1:])
    current = Path("/")
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            current = current.parent
            continue
        current = current / part
        if str(current) in _DESCRIPTOR_DIRECTORIES or str(current) in _DESCRIPTOR_FILES:
            return True
        try:
            target = Path(os.readlink(current))
        except OSError:
            continue  # not a link
        links += 1
        if links > _MOST_LINKS:
            return True
        pending = list(target.parts[1:] if target.is_absolute() else target.parts) + pending
        current = Path("/") if target.is_absolute() else current.parent
    return False


def read_token_file(path: str | Path) -> str:
    """The token in ``path``: its text without surrounding whitespace (a trailing newline
    is usual). Logs a warning when every user may read the file.

    A pipe this process (or the one it was forked from) read a token from already, at
    the same ``path``, and that is drained now, gives that token again. The path is part
    of what names the pipe: a FIFO made after another was removed is often given its
    (device, inode), and is another pipe. Such a read does not wait for a writer to open
    a named FIFO (one that never comes would hang it); a FIFO read for the first time does.

    Raises InvalidArgument when the file cannot be read, is neither a regular file nor a
    pipe (a terminal, a device), is larger than 64 KiB, is not UTF-8 text, or holds no
    token or more than one line.
    """
    where = Path(path)
    try:
        with _opened(where) as file:
            info = os.fstat(file.fileno())
            if not (stat.S_ISREG(info.st_mode) or stat.S_ISFIFO(info.st_mode)):
                raise InvalidArgument(f"token file {str(where)!r} is not a regular file or a pipe")
            raw = _read(file)
    except OSError as exc:
        raise InvalidArgument(
            f"cannot read token file {str(where)!r}: {exc.strerror or exc}"
        ) from None
    if len(raw) > _MAX_TOKEN_FILE_BYTES:
        raise InvalidArgument(f"token file {str(where)!r} is over 64 KiB: not a token file")
    try:
        token = raw.decode().strip()
    except UnicodeDecodeError:
        raise InvalidArgument(f"token file {str(where)!r} is not UTF-8 text") from None
    pipe = _pipe_key(where, info) if stat.S_ISFIFO(info.st_mode) else None
    if not token and pipe is not None and pipe in _piped:
        return _piped[pipe]  # read before, here or in the process this one forked from
    if not token:
        raise InvalidArgument(f"token file {str(where)!r} is empty")
    if any(char in token for char in "\r\n"):
        raise InvalidArgument(f"token file {str(where)!r} holds more than one line")
    if info.st_mode & stat.S_IROTH:
        _log.warning(
            "token file %s is readable by every user (mode %o): %s",
            where,
            stat.S_IMODE(info.st_mode),
            narrow_mode_hint(where, group_too=False),
        )
    if pipe is not None:
        _piped[pipe] = token
    return token


def _pipe_key(where: Path, info: os.stat_result) -> tuple[str, int, int]:
    """What names a pipe in ``_piped``: the path read, and the pipe's (device, inode)."""
    return str(where), info.st_dev, info.st_ino


def _opened(where: Path) -> BinaryIO:
    """``where`` opened for reading; without waiting for a writer when it is a named FIFO
    read before (opening a FIFO waits for one, and a drained one may never get another).
    That FIFO is left non-blocking, for :func:`_read`."""
    try:
        info = os.stat(where)
    except OSError:
        info = None
    if info is None or _pipe_key(where, info) not in _piped:
        return where.open("rb")
    return os.fdopen(os.open(where, os.O_RDONLY | os.O_NONBLOCK), "rb")


def _read(file: BinaryIO) -> bytes:
    """Up to one byte over the limit from ``file``. A non-blocking one (see
    :func:`_opened`) with nothing in it reads as drained (empty); one a writer is
    writing to is read to its end as any other."""
    if os.get_blocking(file.fileno()):
        return file.read(_MAX_TOKEN_FILE_BYTES + 1)
    try:
        first = os.read(file.fileno(), _MAX_TOKEN_FILE_BYTES + 1)
    except BlockingIOError:
        return b""  # a writer has it open and wrote nothing yet: drained
    if not first:
        return b""
    os.set_blocking(file.fileno(), True)  # a writer is there: wait for the rest
    return first + file.read(_MAX_TOKEN_FILE_BYTES + 1 - len(first))
