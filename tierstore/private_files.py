"""Owner-only files written atomically: the home of every secret the server keeps on disk.

TLS keys, the token store, the bootstrap admin token and the master key file are
written here, and :func:`exclusive_lock` serializes writers that read a file before
replacing it. A write goes to a temporary file in the same directory (created with mode
0600 from the start, so the secret is never readable by others, whatever the umask), is
fsynced, renamed over the target and the directory fsynced: a reader or a crash sees the
whole old file or the whole new one, never a torn mix.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from tierstore.errors import FailedPrecondition

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "GROUP_READ_BITS",
    "ensure_private_dir",
    "exclusive_lock",
    "hold_lock_or_name_holder",
    "narrow_mode_hint",
    "refuse_dangling_link",
    "restrict_mode",
    "write_private_file",
]

log = logging.getLogger(__name__)

#: Mode of every secret file: read and write for the owner only.
FILE_MODE = 0o600
#: Mode of a directory that holds only secrets.
DIR_MODE = 0o700
#: Group read and search: what a node's data directory may keep for local readers.
GROUP_READ_BITS = stat.S_IRGRP | stat.S_IXGRP


def ensure_private_dir(path: Path, *, keep_group_read: bool = False) -> None:
    """Create ``path`` (and missing parents) with mode 0700, and set an existing one
    to 0700 too; with ``keep_group_read``, an existing one keeps the group read and
    search bits it has (an operator's shared-group setup for local reads), never
    group write or any bit for other users.

    Raises :class:`OSError` if it cannot be created or is not a directory.
    """
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    kept = stat.S_IMODE(path.stat().st_mode) & GROUP_READ_BITS if keep_group_read else 0
    os.chmod(path, DIR_MODE | kept)


def narrow_mode_hint(path: str | Path, *, group_too: bool = True) -> str:
    """How to take other users' permissions off the secret file ``path``: ``chmod 600
    it`` (or 640 for a group, where ``group_too``). A file of a Kubernetes Secret volume
    (a link into its ``..data``; ConfigMap and projected volumes look the same) is
    read-only, so chmod cannot: its volume's ``defaultMode`` sets it."""
    try:
        secret_volume = os.readlink(path).startswith("..data/")
    except OSError:  # not a link
        secret_volume = False
    if secret_volume:
        return (
            "it is a file of a Kubernetes Secret (or ConfigMap, or projected) volume, "
            "which chmod cannot change: set the volume's defaultMode to 0440 with the "
            "pod's fsGroup (its files belong to root: 0400 only for a container that runs "
            "as root)"
        )
    if group_too:
        return "chmod 600 it (or 640 for a group of the node's own)"
    return "chmod 600 it"


def refuse_dangling_link(path: Path, what: str) -> None:
    """Raise :class:`FailedPrecondition` when ``path`` is a symbolic link to nothing.

    For a file whose absence means "first start, make a new one" (the CA, the token
    store): one kept elsewhere and linked in (a secret mount, say) whose target is
    missing for now must not be taken for absent. Else a new one would be written over
    the link, and everything the old one vouched for would stop working, even once the
    target came back."""
    if path.is_symlink() and not path.exists():
        raise FailedPrecondition(
            f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not "
            "exist: bring back what it names, or remove the link to start afresh"
        )


def restrict_mode(path: Path, mode: int = FILE_MODE, *, secret: bool = True) -> None:
    """Take away any permission bit of an existing regular file beyond ``mode``. A
    symbolic link is left alone, and so is what it points to: a file kept elsewhere
    (a key file on a secret mount, say) has its mode set by whoever keeps it there.
    A link whose target others may use is named in a warning when ``secret``.
    Raises FileNotFoundError if ``path`` does not exist, OSError if it cannot be
    changed."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        if secret:  # a certificate is public: its target may be anyone's to read
            _warn_of_an_open_link(path)
        return
    if not stat.S_ISREG(info.st_mode):
        return
    current = stat.S_IMODE(info.st_mode)
    if current & ~mode:
        os.chmod(path, current & mode)


def _warn_of_an_open_link(path: Path) -> None:
    """Log a warning naming link ``path`` when the file it points to may be written by
    its group or used by other users (group read is let be: a mounted secret is read
    through the pod's group)."""
    try:
        target = path.stat()
    except OSError:
        return  # a dangling link: whoever reads it says what is wrong
    mode = stat.S_IMODE(target.st_mode)
    if mode & 0o027:
        log.warning(
            "%s is a link to %s, which users other than its owner and group may use, or "
            "its group write (mode %o): chmod it (the node changes no file outside its "
            "data directory)",
            path,
            path.resolve(),
            mode,
        )


def write_private_file(
    path: Path, data: bytes, *, exclusive: bool = False, group_of: Path | None = None
) -> None:
    """Replace ``path`` with ``data`` atomically; the file has mode 0600. With
    ``exclusive``, create it: FileExistsError (``path`` untouched) if it exists.

    With ``group_of`` (a file, perhaps ``path`` itself) that its group may read, the
    file written gets that group and group read too (never group write, nothing for
    other users): nodes sharing a key file through a group of their own still read it
    after a rotation. Where that group cannot be given (not one of this process's), the
    file is left owner-only, and a warning says so.

    The parent directory must exist. Raises :class:`OSError` on failure, in which case
    ``path`` is unchanged and no temporary file is left behind. Thread-safe (each call
    uses its own temporary file), but concurrent writers of one path race: the last
    rename wins (an exclusive one loses instead).
    """
    # mkstemp creates the file with mode 0600 regardless of umask.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
            shared = _group_read_like(group_of, out.fileno()) if group_of else 0
        os.chmod(tmp, FILE_MODE | shared)
        if exclusive:
            os.link(tmp, path)  # fails if path exists, unlike a rename
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _group_read_like(source: Path, fd: int) -> int:
    """Give the file open at ``fd`` the group of ``source`` if that group may read
    ``source``, and return the group read bit to set; 0 when ``source`` is missing,
    owner-only, or its group cannot be given."""
    try:
        seen = source.stat()
    except FileNotFoundError:
        return 0
    if not seen.st_mode & stat.S_IRGRP:
        return 0
    try:
        os.fchown(fd, -1, seen.st_gid)
    except PermissionError:
        log.warning(
            "%s is readable by its group (gid %d), which this process cannot give the "
            "file it writes: that file is owner-only",
            source,
            seen.st_gid,
        )
        return 0
    return stat.S_IRGRP


@contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (mode 0600, created if missing and
    never removed: removing it would let a waiter and a newcomer lock different files).
    ``flock`` locks belong to an open file, so threads of one process exclude each other
    as processes do. Raises :class:`OSError` if the file cannot be opened or locked."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def hold_lock_or_name_holder(lock_path: Path) -> tuple[int | None, str]:
    """Take an exclusive ``flock`` on ``lock_path`` without waiting, for as long as the
    returned descriptor stays open, and write this process's id into the file.

    Returns ``(descriptor, "")``, or ``(None, holder)`` when another open file holds the
    lock: ``holder`` is the process id the file names (``"?"`` if unreadable). The lock
    goes with the process, however it ends. Raises :class:`OSError` if the file cannot
    be opened; a process id that cannot be written (a full disk) is left out."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder_named_in(fd)
        os.close(fd)
        return None, holder
    except BaseException:
        os.close(fd)
        raise
    # The flock is the lock; the id only names its holder to whoever finds it taken.
    # A full disk (no block for the id) must not stop a node's start: a review's node
    # failed so, and the CLI blamed its stdout. The holder is then named "?".
    with suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, ""


def lock_holder(lock_path: Path) -> str | None:
    """The process id named in ``lock_path`` (``"?"`` if unreadable) while another open
    file holds the lock :func:`hold_lock_or_name_holder` takes; None when nobody holds
    it, or the file does not exist or cannot be opened (whoever takes the lock then
    finds out). Makes and changes nothing."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_named_in(fd)
    finally:
        os.close(fd)  # a shared lock taken goes with it
    return None


def _holder_named_in(fd: int) -> str:
    """The process id a lock file holds (its holder wrote it), ``"?"`` if none."""
    return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
